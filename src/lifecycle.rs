//! What both tiers share at start-up: binding listeners, and the start-up error. The
//! tasks they start are owned by [`crate::supervisor`].

use tokio::net::TcpListener;

use crate::exporter::BuildError;
use crate::receiver::SecurityError;
use crate::spanmetrics::NoIdentity;

/// Why a worker or router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {endpoint} ({what}): {source}")]
    Bind {
        what: &'static str,
        endpoint: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Exporter(#[from] BuildError),
    #[error(transparent)]
    SpanMetrics(#[from] NoIdentity),
    #[error("otlp {protocol} receiver TLS or auth: {source}")]
    Security {
        protocol: &'static str,
        source: SecurityError,
    },
}

pub async fn bind(what: &'static str, endpoint: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(endpoint)
        .await
        .map_err(|source| StartError::Bind {
            what,
            endpoint: endpoint.to_owned(),
            source,
        })
}
