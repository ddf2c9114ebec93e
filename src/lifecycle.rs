//! What both tiers share at start-up and shutdown: the start-up error, gathering every
//! component's, and the `shutdown` section (the drain's grace period). The tasks they start are owned by
//! [`crate::supervisor`].

use std::time::Duration;

use serde::Deserialize;

use crate::config::{Errors, Section};
use crate::exporter::BuildError;
use crate::net::BindError;
use crate::receiver::ReceiverError;
use crate::spanmetrics::NoIdentity;

/// Why a worker or router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Receiver(#[from] ReceiverError),
    #[error(transparent)]
    Exporter(#[from] BuildError),
    #[error(transparent)]
    SpanMetrics(#[from] NoIdentity),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// `shutdown`: how long draining may take after SIGTERM before what is left is counted
/// as abandoned.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: default_grace_period(),
        }
    }
}

impl Section for ShutdownConfig {
    const KEY: &'static str = "shutdown";

    fn validate(&self, errors: &mut Errors) {
        errors.within_duration(
            "shutdown.grace_period",
            self.grace_period,
            Duration::ZERO,
            crate::config::HOUR,
        );
    }
}

fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}
