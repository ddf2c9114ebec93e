//! What both tiers share at start-up and shutdown: binding listeners, logging the end of
//! a serving task, and the start-up error.

use tokio::net::TcpListener;

use crate::exporter::BuildError;

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
    #[error("{0}")]
    SpanMetrics(String),
    #[error("otlp {protocol} receiver TLS or auth: {message}")]
    Security {
        protocol: &'static str,
        message: String,
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

pub async fn log_exit<E: std::fmt::Display>(
    what: &'static str,
    task: impl std::future::Future<Output = Result<(), E>>,
) {
    if let Err(e) = task.await {
        tracing::error!(task = what, error = %e, "task failed");
    }
}
