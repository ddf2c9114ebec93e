//! The serde shapes of the worker config, key for key the collector's component blocks.
//! Every struct rejects unknown fields; defaults are the collector's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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

/// `tail_sampling`, the collector's processor keys plus `max_buffered_bytes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailSamplingConfig {
    #[serde(default = "default_decision_wait", with = "humantime_serde")]
    pub decision_wait: Duration,
    #[serde(default, with = "humantime_serde")]
    pub decision_wait_after_root_received: Duration,
    #[serde(default = "default_num_traces")]
    pub num_traces: u64,
    #[serde(default)]
    pub expected_new_traces_per_sec: u64,
    #[serde(default)]
    pub decision_cache: DecisionCacheConfig,
    #[serde(default)]
    pub sample_on_first_match: bool,
    #[serde(default)]
    pub drop_pending_traces_on_shutdown: bool,
    #[serde(default)]
    pub block_on_overflow: bool,
    #[serde(default)]
    pub maximum_trace_size_bytes: u64,
    /// Bound on the span bytes held by pending traces (0 = no bound); tailgate's addition.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: u64,
    /// Kept as YAML here; each policy is parsed on its own so that every bad policy is
    /// reported, with its index, in one run.
    #[serde(default)]
    pub policies: Vec<serde_yaml::Value>,
    /// A YAML file holding the policy list instead of `policies`; reloaded on SIGHUP and
    /// when it changes.
    #[serde(default)]
    pub policies_file: Option<PathBuf>,
    /// Kept spans carry the deciding policy as scope attributes.
    #[serde(default)]
    pub record_policy: bool,
    /// Keep every trace, marking the decision that would have been made.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_decision_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_num_traces() -> u64 {
    50_000
}
fn default_max_buffered_bytes() -> u64 {
    512 * 1024 * 1024
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionCacheConfig {
    #[serde(default)]
    pub sampled_cache_size: u64,
    #[serde(default)]
    pub non_sampled_cache_size: u64,
}

/// `tls` of a client, the collector's `configtls` keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub server_name_override: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendingQueueConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_num_consumers")]
    pub num_consumers: usize,
    /// Capacity in export requests (the collector's default `requests` sizer).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
}

impl Default for SendingQueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            num_consumers: default_num_consumers(),
            queue_size: default_queue_size(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_num_consumers() -> usize {
    10
}
fn default_queue_size() -> usize {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_initial_interval", with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(default = "default_max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
    /// 0 retries forever.
    #[serde(default = "default_max_elapsed", with = "humantime_serde")]
    pub max_elapsed_time: Duration,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    #[serde(default = "default_randomization")]
    pub randomization_factor: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: default_initial_interval(),
            max_interval: default_max_interval(),
            max_elapsed_time: default_max_elapsed(),
            multiplier: default_multiplier(),
            randomization_factor: default_randomization(),
        }
    }
}

fn default_initial_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_max_elapsed() -> Duration {
    Duration::from_secs(300)
}
fn default_multiplier() -> f64 {
    1.5
}
fn default_randomization() -> f64 {
    0.5
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `exporters.otlp[/name]`: OTLP over gRPC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    pub endpoint: String,
    #[serde(default)]
    pub tls: ClientTlsConfig,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub sending_queue: SendingQueueConfig,
    #[serde(default)]
    pub retry_on_failure: RetryConfig,
}

/// `exporters.otlphttp[/name]`: OTLP over HTTP with protobuf bodies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpHttpExporterConfig {
    /// Base URL; traces go to `<endpoint>/v1/traces` unless `traces_endpoint` is set.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub traces_endpoint: Option<String>,
    #[serde(default)]
    pub tls: ClientTlsConfig,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub sending_queue: SendingQueueConfig,
    #[serde(default)]
    pub retry_on_failure: RetryConfig,
}

/// `exporters.file[/name]`: OTLP JSON, one request per line, rotated by size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExporterConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub rotation: RotationConfig,
    #[serde(default)]
    pub sending_queue: SendingQueueConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    #[serde(default = "default_max_megabytes")]
    pub max_megabytes: u64,
    #[serde(default = "default_max_backups")]
    pub max_backups: usize,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            max_megabytes: default_max_megabytes(),
            max_backups: default_max_backups(),
        }
    }
}

fn default_max_megabytes() -> u64 {
    100
}
fn default_max_backups() -> usize {
    100
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    #[default]
    Basic,
    Normal,
    Detailed,
}

/// `exporters.debug[/name]`: logs a summary of each export.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugExporterConfig {
    #[serde(default)]
    pub verbosity: Verbosity,
    #[serde(default)]
    pub sending_queue: SendingQueueConfig,
}

/// `admin`: the listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_endpoint")]
    pub endpoint: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            endpoint: default_admin_endpoint(),
        }
    }
}

fn default_admin_endpoint() -> String {
    "0.0.0.0:8888".into()
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

impl ShutdownConfig {
    pub fn validate(&self, errors: &mut super::Errors) {
        errors.within_duration(
            "shutdown.grace_period",
            self.grace_period,
            Duration::ZERO,
            super::HOUR,
        );
    }
}

fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}
