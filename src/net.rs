//! Binding listeners, for the receivers and the admin listener, with an error that says
//! what was being bound where.

use tokio::net::TcpListener;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {endpoint} ({what}): {source}")]
pub struct BindError {
    pub what: &'static str,
    pub endpoint: String,
    #[source]
    pub source: std::io::Error,
}

/// Binds `endpoint` (`host:port`) for `what`, and reads back the address it got.
pub async fn bind(
    what: &'static str,
    endpoint: &str,
) -> Result<(TcpListener, std::net::SocketAddr), BindError> {
    let error = |source| BindError {
        what,
        endpoint: endpoint.to_owned(),
        source,
    };
    let listener = TcpListener::bind(endpoint).await.map_err(error)?;
    let addr = listener.local_addr().map_err(error)?;
    Ok((listener, addr))
}
