//! The exporters' config (`exporters.<type>[/<name>]`), key for key the collector's, with
//! defaults and validation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Errors, DAY, HOUR, MAX_MIB, MS};

/// One configured exporter, by type.
#[derive(Debug, Clone)]
pub enum ExporterConfig {
    Otlp(OtlpExporterConfig),
    OtlpHttp(OtlpHttpExporterConfig),
    File(FileExporterConfig),
    Debug(DebugExporterConfig),
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
    /// A `file_storage` extension: kept spans stay in the worker's log until exported.
    #[serde(default)]
    pub storage: Option<String>,
    /// The request is acknowledged only once this queue delivered it: honoured by a
    /// router's backends, refused elsewhere.
    #[serde(default)]
    pub wait_for_result: bool,
}

impl Default for SendingQueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            num_consumers: default_num_consumers(),
            queue_size: default_queue_size(),
            storage: None,
            wait_for_result: false,
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

impl OtlpExporterConfig {
    /// Sending to `endpoint` with every other key at its default.
    pub fn to(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: ClientTlsConfig::default(),
            headers: BTreeMap::new(),
            compression: Compression::default(),
            timeout: default_timeout(),
            sending_queue: SendingQueueConfig::default(),
            retry_on_failure: RetryConfig::default(),
        }
    }
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

pub fn parse_exporters(
    raw: BTreeMap<String, serde_yaml::Value>,
    errors: &mut Errors,
) -> Vec<(String, ExporterConfig)> {
    if raw.is_empty() {
        errors.push("exporters", "at least one exporter is required");
    }
    let mut out = Vec::new();
    for (id, value) in raw {
        let path = format!("exporters.{id}");
        let (kind, name) = id.split_once('/').unwrap_or((id.as_str(), ""));
        if id.contains('/') && name.is_empty() {
            errors.push(&path, "the name after / must not be empty");
            continue;
        }
        let value = if value.is_null() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            value
        };
        let config = match kind {
            "otlp" => errors.parse(&path, value).map(ExporterConfig::Otlp),
            "otlphttp" => errors.parse(&path, value).map(ExporterConfig::OtlpHttp),
            "file" => errors.parse(&path, value).map(ExporterConfig::File),
            "debug" => errors.parse(&path, value).map(ExporterConfig::Debug),
            other => {
                errors.push(
                    &path,
                    format!(
                        "unknown exporter type {other:?}; expected otlp, otlphttp, file or debug"
                    ),
                );
                None
            }
        };
        if let Some(config) = config {
            validate_exporter(&config, &path, errors);
            refuse_waiting(config.sending_queue(), &path, errors);
            out.push((id, config));
        }
    }
    out
}

impl ExporterConfig {
    pub fn sending_queue(&self) -> &SendingQueueConfig {
        match self {
            ExporterConfig::Otlp(c) => &c.sending_queue,
            ExporterConfig::OtlpHttp(c) => &c.sending_queue,
            ExporterConfig::File(c) => &c.sending_queue,
            ExporterConfig::Debug(c) => &c.sending_queue,
        }
    }
}

pub fn validate_exporter(config: &ExporterConfig, path: &str, errors: &mut Errors) {
    let timeout = match config {
        ExporterConfig::Otlp(c) => Some(c.timeout),
        ExporterConfig::OtlpHttp(c) => Some(c.timeout),
        ExporterConfig::File(_) | ExporterConfig::Debug(_) => None,
    };
    let retry = match config {
        ExporterConfig::Otlp(c) => {
            if c.endpoint.is_empty() {
                errors.push(format!("{path}.endpoint"), "must not be empty");
            }
            Some(&c.retry_on_failure)
        }
        ExporterConfig::OtlpHttp(c) => {
            if c.endpoint.is_none() && c.traces_endpoint.is_none() {
                errors.push(
                    format!("{path}.endpoint"),
                    "endpoint or traces_endpoint is required",
                );
            }
            for (key, url) in [
                ("endpoint", &c.endpoint),
                ("traces_endpoint", &c.traces_endpoint),
            ] {
                if let Some(url) = url {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        errors.push(
                            format!("{path}.{key}"),
                            format!("{url:?} is not an http(s) URL"),
                        );
                    }
                }
            }
            Some(&c.retry_on_failure)
        }
        ExporterConfig::File(c) => {
            errors.within(
                format!("{path}.rotation.max_megabytes"),
                c.rotation.max_megabytes,
                1,
                MAX_MIB,
            );
            errors.within(
                format!("{path}.rotation.max_backups"),
                c.rotation.max_backups,
                0,
                10_000,
            );
            None
        }
        ExporterConfig::Debug(_) => None,
    };
    let queue = config.sending_queue();
    errors.within(
        format!("{path}.sending_queue.queue_size"),
        queue.queue_size,
        1,
        1_000_000,
    );
    errors.within(
        format!("{path}.sending_queue.num_consumers"),
        queue.num_consumers,
        1,
        1_000,
    );
    if let Some(timeout) = timeout {
        errors.within_duration(format!("{path}.timeout"), timeout, MS, HOUR);
    }
    if let Some(r) = retry {
        if r.multiplier < 1.0 || !r.multiplier.is_finite() {
            errors.push(
                format!("{path}.retry_on_failure.multiplier"),
                "must be at least 1",
            );
        }
        if !(0.0..=1.0).contains(&r.randomization_factor) {
            errors.push(
                format!("{path}.retry_on_failure.randomization_factor"),
                "must be between 0 and 1",
            );
        }
        let rp = format!("{path}.retry_on_failure");
        errors.within_duration(
            format!("{rp}.initial_interval"),
            r.initial_interval,
            MS,
            HOUR,
        );
        errors.within_duration(format!("{rp}.max_interval"), r.max_interval, MS, HOUR);
        errors.within_duration(
            format!("{rp}.max_elapsed_time"),
            r.max_elapsed_time,
            Duration::ZERO,
            DAY,
        );
    }
}

/// `wait_for_result` where nobody waits: a worker acknowledges a request once its spans
/// are buffered (and logged, with storage), long before any export.
fn refuse_waiting(queue: &SendingQueueConfig, path: &str, errors: &mut Errors) {
    if queue.wait_for_result {
        errors.push(
            format!("{path}.sending_queue.wait_for_result"),
            "only a router's loadbalancing exporter waits for results; a worker acknowledges what it buffered, before any export",
        );
    }
}

/// An `otlp` exporter config every member of a fleet shares (a `loadbalancing` exporter's
/// `protocol.otlp`, whose queues `may_wait` for results, or a worker's
/// `membership.protocol.otlp`), at `path`: each member's endpoint replaces the placeholder,
/// so the template may not set one.
pub fn parse_otlp_template(
    value: Option<serde_yaml::Value>,
    path: &str,
    may_wait: bool,
    errors: &mut Errors,
) -> Option<OtlpExporterConfig> {
    let mut template = match value {
        Some(serde_yaml::Value::Mapping(m)) => m,
        None | Some(serde_yaml::Value::Null) => Default::default(),
        Some(_) => {
            errors.push(path, "must be a mapping");
            return None;
        }
    };
    if template.contains_key("endpoint") {
        errors.push(
            format!("{path}.endpoint"),
            "is set per member by the resolver",
        );
    }
    template.insert("endpoint".into(), "placeholder:4317".into());
    let otlp: OtlpExporterConfig = errors.parse(path, serde_yaml::Value::Mapping(template))?;
    validate_exporter(&ExporterConfig::Otlp(otlp.clone()), path, errors);
    if !may_wait {
        refuse_waiting(&otlp.sending_queue, path, errors);
    }
    if otlp.sending_queue.storage.is_some() {
        errors.push(
            format!("{path}.sending_queue.storage"),
            "queues to fleet members need no storage of their own: a router can wait for its workers' results instead (wait_for_result: true), and a worker's log keeps what it relays until the peer has it",
        );
    }
    Some(otlp)
}

/// The address a fleet member is dialled at: the ring string, with `:4317` when it has no
/// port (the collector's `endpointWithPort`; the ring keeps the string as resolved).
pub fn endpoint_with_port(endpoint: &str) -> String {
    if endpoint.contains(':') {
        endpoint.to_owned()
    } else {
        format!("{endpoint}:4317")
    }
}
