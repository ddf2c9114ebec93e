//! The receivers' config (`receivers.otlp` and the `bearertokenauth` extensions their
//! `auth` blocks name), key for key the collector's, with its defaults and validation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::{check_endpoint, Errors, DAY, HOUR, MAX_MIB, MS};
use crate::storage::config::is_file_storage;

/// `receivers.otlp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiversConfig {
    #[serde(default)]
    pub otlp: OtlpReceiverConfig,
    /// The `bearertokenauth` extensions of the config's `extensions:` section, by name,
    /// for the protocols' `auth.authenticator` to refer to.
    #[serde(skip)]
    pub authenticators: BTreeMap<String, BearerTokenConfig>,
}

impl ReceiversConfig {
    /// The most one request can hold of the request bytes budget: the largest request
    /// size, twice (gzip: compressed and inflated).
    pub fn largest_request_in_flight(&self) -> u64 {
        let p = &self.otlp.protocols;
        let grpc = p
            .grpc
            .as_ref()
            .map_or(0, |g| g.max_recv_msg_size_mib * 1024 * 1024);
        let http = p.http.as_ref().map_or(0, |h| h.max_request_body_size);
        2 * grpc.max(http)
    }
}

/// `extensions.bearertokenauth[/name]`: the token a client must present, given inline
/// (`${ENV}` works) or read from a file that is re-read when it changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerTokenConfig {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub filename: Option<PathBuf>,
    #[serde(default = "default_bearer_scheme")]
    pub scheme: String,
}

fn default_bearer_scheme() -> String {
    "Bearer".into()
}

/// A protocol's `tls:` block: the server certificate, and a client CA for mTLS. Files
/// are re-read every `reload_interval` when they changed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
}

/// A protocol's `auth:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverAuthConfig {
    pub authenticator: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    #[serde(default)]
    pub protocols: ProtocolsConfig,
    #[serde(default)]
    pub admission: AdmissionConfig,
}

/// `receivers.otlp.admission` (the key of the collector's OTel Arrow receiver): the budget
/// for request bytes in flight across both protocols.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Default: the memory limiter's spike limit, or 128 MiB without a memory limiter;
    /// never less than twice the largest request.
    #[serde(default)]
    pub request_limit_mib: Option<u64>,
}

/// Without a memory limiter, the request bytes budget (the OTel Arrow receiver's default).
pub const DEFAULT_REQUEST_LIMIT_MIB: u64 = 128;

/// A protocol block that is absent is off; one that is present, even empty
/// (`grpc:`), is on with its defaults, as in the collector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolsConfig {
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub grpc: Option<GrpcReceiverConfig>,
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub http: Option<HttpReceiverConfig>,
}

fn present_means_enabled<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcReceiverConfig {
    #[serde(default = "default_grpc_endpoint")]
    pub endpoint: String,
    /// Largest accepted request, in MiB (the collector's key).
    #[serde(default = "default_max_request_mib")]
    pub max_recv_msg_size_mib: u64,
    /// Concurrent calls per connection (HTTP/2 streams).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    #[serde(default)]
    pub keepalive: GrpcKeepaliveConfig,
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    #[serde(default)]
    pub auth: Option<ReceiverAuthConfig>,
}

impl Default for GrpcReceiverConfig {
    fn default() -> Self {
        Self {
            endpoint: default_grpc_endpoint(),
            max_recv_msg_size_mib: default_max_request_mib(),
            max_concurrent_streams: default_max_concurrent_streams(),
            keepalive: GrpcKeepaliveConfig::default(),
            tls: None,
            auth: None,
        }
    }
}

/// `grpc.keepalive`, the collector's (grpc-go's) keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcKeepaliveConfig {
    #[serde(default)]
    pub server_parameters: ServerParametersConfig,
}

/// `grpc.keepalive.server_parameters`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerParametersConfig {
    /// A connection with no bytes either way for this long is closed (0: never).
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub max_connection_idle: Duration,
    /// A connection is asked to go away after this long (0: never).
    #[serde(default, with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// How long calls may finish after `max_connection_age` (0: as long as they take).
    #[serde(default, with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
    /// Ping an idle client this often (0: never).
    #[serde(default, with = "humantime_serde")]
    pub time: Duration,
    /// Close the connection when a ping is not answered this fast.
    #[serde(default = "default_ping_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ServerParametersConfig {
    fn default() -> Self {
        Self {
            max_connection_idle: default_idle(),
            max_connection_age: Duration::ZERO,
            max_connection_age_grace: Duration::ZERO,
            time: Duration::ZERO,
            timeout: default_ping_timeout(),
        }
    }
}

fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_ping_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_read_header_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpReceiverConfig {
    #[serde(default = "default_http_endpoint")]
    pub endpoint: String,
    /// Largest accepted body in bytes, after decompression (the collector's key).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_body_size: u64,
    /// Path of the trace endpoint.
    #[serde(default = "default_traces_url_path")]
    pub traces_url_path: String,
    /// A client must send a request's headers within this time (0: no limit).
    #[serde(default = "default_read_header_timeout", with = "humantime_serde")]
    pub read_header_timeout: Duration,
    /// A connection with no bytes either way for this long is closed (0: never).
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    #[serde(default)]
    pub auth: Option<ReceiverAuthConfig>,
}

impl Default for HttpReceiverConfig {
    fn default() -> Self {
        Self {
            endpoint: default_http_endpoint(),
            max_request_body_size: default_max_request_bytes(),
            traces_url_path: default_traces_url_path(),
            read_header_timeout: default_read_header_timeout(),
            idle_timeout: default_idle(),
            tls: None,
            auth: None,
        }
    }
}

fn default_grpc_endpoint() -> String {
    "0.0.0.0:4317".into()
}
fn default_http_endpoint() -> String {
    "0.0.0.0:4318".into()
}
fn default_max_request_mib() -> u64 {
    4
}
fn default_max_request_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_traces_url_path() -> String {
    "/v1/traces".into()
}

/// Checks the receivers and attaches the `bearertokenauth` extensions their `auth`
/// blocks name.
pub fn validate_receivers(
    r: &mut ReceiversConfig,
    extensions: &BTreeMap<String, serde_yaml::Value>,
    errors: &mut Errors,
) {
    for (name, value) in extensions {
        let path = format!("extensions.{name}");
        if is_file_storage(name) {
            errors.push(
                path,
                "file_storage is a worker's (tail_storage); a router keeps nothing on disk",
            );
            continue;
        }
        if name != "bearertokenauth" && !name.starts_with("bearertokenauth/") {
            errors.push(path, "unsupported extension; tailgate has bearertokenauth");
            continue;
        }
        let Some(config) = errors.parse::<BearerTokenConfig>(&path, value.clone()) else {
            continue;
        };
        match (&config.token, &config.filename) {
            (Some(t), None) if t.is_empty() => errors.push(format!("{path}.token"), "is empty"),
            (Some(_), None) | (None, Some(_)) => {
                r.authenticators.insert(name.clone(), config);
            }
            _ => errors.push(path, "set exactly one of token and filename"),
        }
    }
    let p = &r.otlp.protocols;
    let protocols = [
        ("grpc", p.grpc.as_ref().map(|g| (&g.tls, &g.auth))),
        ("http", p.http.as_ref().map(|h| (&h.tls, &h.auth))),
    ];
    for (protocol, (tls, auth)) in protocols
        .into_iter()
        .filter_map(|(name, blocks)| Some((name, blocks?)))
    {
        let path = format!("receivers.otlp.protocols.{protocol}");
        if let Some(auth) = auth {
            if !extensions.contains_key(&auth.authenticator) {
                errors.push(
                    format!("{path}.auth.authenticator"),
                    format!("no extension {:?} is configured", auth.authenticator),
                );
            }
        }
        if tls
            .as_ref()
            .and_then(|t| t.reload_interval)
            .is_some_and(|i| i.is_zero())
        {
            errors.push(format!("{path}.tls.reload_interval"), "must be positive");
        }
    }
    if p.grpc.is_none() && p.http.is_none() {
        errors.push("receivers.otlp.protocols", "enable grpc, http or both");
    }
    if let Some(mib) = r.otlp.admission.request_limit_mib {
        let path = "receivers.otlp.admission.request_limit_mib";
        errors.within(path, mib, 1, MAX_MIB);
        let least = r.largest_request_in_flight().div_ceil(1024 * 1024);
        if mib < least {
            errors.push(
                path,
                format!(
                    "{mib} cannot hold the largest request, compressed and inflated: set at least {least}"
                ),
            );
        }
    }
    if let Some(g) = &p.grpc {
        let path = "receivers.otlp.protocols.grpc";
        check_endpoint(&g.endpoint, &format!("{path}.endpoint"), errors);
        errors.within(
            format!("{path}.max_recv_msg_size_mib"),
            g.max_recv_msg_size_mib,
            1,
            1024,
        );
        errors.within(
            format!("{path}.max_concurrent_streams"),
            g.max_concurrent_streams,
            1,
            10_000,
        );
        let k = &g.keepalive.server_parameters;
        let kp = format!("{path}.keepalive.server_parameters");
        for (key, value) in [
            ("max_connection_idle", k.max_connection_idle),
            ("max_connection_age", k.max_connection_age),
            ("max_connection_age_grace", k.max_connection_age_grace),
            ("time", k.time),
        ] {
            errors.within_duration(format!("{kp}.{key}"), value, Duration::ZERO, DAY);
        }
        errors.within_duration(format!("{kp}.timeout"), k.timeout, MS, HOUR);
    }
    if let Some(h) = &p.http {
        let path = "receivers.otlp.protocols.http";
        check_endpoint(&h.endpoint, &format!("{path}.endpoint"), errors);
        errors.within(
            format!("{path}.max_request_body_size"),
            h.max_request_body_size,
            1,
            1024 * 1024 * 1024,
        );
        errors.within_duration(
            format!("{path}.read_header_timeout"),
            h.read_header_timeout,
            Duration::ZERO,
            HOUR,
        );
        errors.within_duration(
            format!("{path}.idle_timeout"),
            h.idle_timeout,
            Duration::ZERO,
            DAY,
        );
        if !h.traces_url_path.starts_with('/') {
            errors.push(
                "receivers.otlp.protocols.http.traces_url_path",
                "must start with /",
            );
        }
    }
}
