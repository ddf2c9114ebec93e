//! Receiver security: TLS termination with rustls (server certificate, optional client CA
//! for mTLS) and the `bearertokenauth` check, with certificate, key, CA and token files
//! re-read when they change, without a restart.

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::config::{BearerTokenConfig, ServerTlsConfig};
use super::conn::{IdleLimited, Incoming};
use crate::supervisor::{Group, Supervisor};

/// How often certificate files are checked for changes when `reload_interval` is not set.
const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// How often a token file is checked for changes.
const TOKEN_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A value loaded from files, replaced when they change.
pub struct Reloading<T> {
    current: RwLock<Arc<T>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads now (an error fails the start), then every `interval` re-loads when any of
    /// `files` changed; a failed reload keeps the previous value and is logged.
    fn watch(
        what: &'static str,
        files: Vec<PathBuf>,
        interval: Duration,
        load: impl Fn() -> Result<T, SecurityError> + Send + 'static,
        tasks: &mut Tasks<'_>,
    ) -> Result<Arc<Self>, SecurityError> {
        let reloading = Arc::new(Reloading {
            current: RwLock::new(Arc::new(load()?)),
        });
        if files.is_empty() {
            return Ok(reloading);
        }
        let target = reloading.clone();
        let mut seen = modified(&files);
        let stop = tasks.supervisor.token(tasks.group);
        tasks.supervisor.spawn(tasks.group, what, async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok::<_, Infallible>(()),
                    _ = tick.tick() => {}
                }
                let now = modified(&files);
                if now == seen {
                    continue;
                }
                match load() {
                    Ok(value) => {
                        *target.current.write().expect("reload lock") = Arc::new(value);
                        seen = now;
                        tracing::info!(what, "reloaded");
                    }
                    Err(error) => {
                        tracing::error!(what, %error, "reload failed; keeping the previous one")
                    }
                }
            }
        });
        Ok(reloading)
    }

    pub fn get(&self) -> Arc<T> {
        self.current.read().expect("reload lock").clone()
    }
}

fn modified(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// A receiver's TLS and authentication, both optional.
#[derive(Clone, Default)]
pub struct Security {
    pub tls: Option<Arc<Reloading<ServerConfig>>>,
    pub auth: Option<BearerAuth>,
}

/// Where the reload watchers run: a group of the process's supervisor.
pub struct Tasks<'a> {
    pub supervisor: &'a mut Supervisor,
    pub group: Group,
}

impl Security {
    pub fn new(
        tls: Option<&ServerTlsConfig>,
        auth: Option<&BearerTokenConfig>,
        tasks: &mut Tasks<'_>,
    ) -> Result<Security, SecurityError> {
        let tls = match tls {
            Some(config) => Some(load_tls(config, tasks)?),
            None => None,
        };
        let auth = match auth {
            Some(config) => Some(BearerAuth::new(config, tasks)?),
            None => None,
        };
        Ok(Security { tls, auth })
    }
}

fn load_tls(
    config: &ServerTlsConfig,
    tasks: &mut Tasks<'_>,
) -> Result<Arc<Reloading<ServerConfig>>, SecurityError> {
    let mut files = vec![config.cert_file.clone(), config.key_file.clone()];
    files.extend(config.client_ca_file.clone());
    let config = config.clone();
    Reloading::watch(
        "receiver TLS certificate",
        files,
        config.reload_interval.unwrap_or(DEFAULT_RELOAD_INTERVAL),
        move || server_config(&config),
        tasks,
    )
}

/// Why TLS or a bearer token could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Rustls {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("{}: {source}", path.display())]
    TokenFile { path: PathBuf, source: io::Error },
    #[error("the bearer token is empty")]
    EmptyToken,
}

fn server_config(config: &ServerTlsConfig) -> Result<ServerConfig, SecurityError> {
    let rustls_error = |path: &Path| {
        let path = path.to_owned();
        move |source| SecurityError::Rustls { path, source }
    };
    let certs = read_certs(&config.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(&config.key_file).map_err(|source| SecurityError::Pem {
            path: config.key_file.clone(),
            source,
        })?;
    let builder =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(rustls_error(&config.cert_file))?;
    let builder = match &config.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(rustls_error(ca))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .map_err(|source| SecurityError::ClientCa {
                path: ca.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(rustls_error(&config.cert_file))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|source| SecurityError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(SecurityError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A TLS connection, handshake done, over a connection with the idle limit.
pub type TlsConn = TlsStream<IdleLimited<TcpStream>>;

/// Accepts from `incoming` and completes TLS handshakes concurrently (a slow client does
/// not hold up others), handing finished connections to the receiver. The channel closes
/// when `stop` is cancelled or the listener fails (its error is in `incoming`'s [`Fatal`]).
pub fn tls_incoming(
    mut incoming: Incoming,
    tls: Arc<Reloading<ServerConfig>>,
    stop: CancellationToken,
) -> mpsc::Receiver<TlsConn> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = incoming.next() => match accepted {
                    Some(Ok(tcp)) => tcp,
                    Some(Err(_)) => continue,
                    None => return,
                },
            };
            let acceptor = TlsAcceptor::from(tls.get());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(stream).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// `bearertokenauth`: requests must carry `authorization: <scheme> <token>`.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Arc<Reloading<Vec<u8>>>,
}

impl BearerAuth {
    fn new(config: &BearerTokenConfig, tasks: &mut Tasks<'_>) -> Result<BearerAuth, SecurityError> {
        let scheme = config.scheme.clone();
        let (files, token) = match (&config.filename, &config.token) {
            (Some(file), _) => (vec![file.clone()], None),
            (None, token) => (Vec::new(), token.clone()),
        };
        let file = config.filename.clone();
        let expected = Reloading::watch(
            "bearer token",
            files,
            TOKEN_RELOAD_INTERVAL,
            move || {
                let token = match (&file, &token) {
                    (Some(file), _) => std::fs::read_to_string(file)
                        .map_err(|source| SecurityError::TokenFile {
                            path: file.clone(),
                            source,
                        })?
                        .trim()
                        .to_owned(),
                    (None, Some(token)) => token.clone(),
                    (None, None) => String::new(),
                };
                if token.is_empty() {
                    return Err(SecurityError::EmptyToken);
                }
                Ok(format!("{scheme} {token}").into_bytes())
            },
            tasks,
        )?;
        Ok(BearerAuth { expected })
    }

    /// Whether the `authorization` header carries the token (compared in constant time).
    pub fn allows(&self, header: Option<&HeaderValue>) -> bool {
        let Some(given) = header.map(HeaderValue::as_bytes) else {
            return false;
        };
        let expected = self.expected.get();
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}
