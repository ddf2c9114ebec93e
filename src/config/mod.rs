//! Loading and validating config files. Text is parsed as YAML, its scalar values
//! env-expanded, each section deserialized on its own into the serde types of [`types`]
//! (unknown keys are errors), then checked; every problem is collected with its dotted path
//! and reported together as one [`ConfigError`].

mod env;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::memory_limiter::MemoryLimiterConfig;
use crate::policy::PolicySet;
use crate::spanmetrics::SpanMetricsConfig;
pub use types::*;

/// One problem in a config, with the dotted path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// Collects errors while a config is checked.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records an error unless `min <= value <= max`: the bounds on settings that size
    /// memory, threads or time.
    pub fn within<T: PartialOrd + fmt::Display>(
        &mut self,
        path: impl Into<String>,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.push(path, format!("{value} is not between {min} and {max}"));
        }
    }

    /// [`Errors::within`] for durations, shown as in the config (`1s`, `24h`).
    pub fn within_duration(
        &mut self,
        path: impl Into<String>,
        value: Duration,
        min: Duration,
        max: Duration,
    ) {
        if value < min || value > max {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            self.push(
                path,
                format!(
                    "{} is not between {} and {}",
                    show(value),
                    show(min),
                    show(max)
                ),
            );
        }
    }

    /// Deserializes `value` as `T`, recording a failure under `path`.
    pub fn parse<T: DeserializeOwned>(
        &mut self,
        path: &str,
        value: serde_yaml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match (path.is_empty(), inner.as_str()) {
                    (_, ".") => path.to_owned(),
                    (true, _) => inner,
                    (false, _) if inner.starts_with('[') => format!("{path}{inner}"),
                    (false, _) => format!("{path}.{inner}"),
                };
                self.push(full, e.into_inner().to_string());
                None
            }
        }
    }

    /// Like [`Errors::parse`], treating a missing or null section as its default.
    pub fn parse_section<T: DeserializeOwned + Default>(
        &mut self,
        path: &str,
        value: Option<serde_yaml::Value>,
    ) -> Option<T> {
        match value {
            None | Some(serde_yaml::Value::Null) => Some(T::default()),
            Some(v) => self.parse(path, v),
        }
    }

    /// `Err` with everything recorded, if anything was.
    pub fn check(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { errors: self.0 })
        }
    }
}

/// A validated worker config.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub receivers: ReceiversConfig,
    pub tail_sampling: TailSamplingConfig,
    pub policies: PolicySet,
    pub exporters: Vec<(String, ExporterConfig)>,
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    /// Span metrics; off when the section is absent.
    pub spanmetrics: Option<SpanMetricsConfig>,
    /// Off when the section is absent.
    pub memory_limiter: Option<MemoryLimiterConfig>,
}

/// One configured exporter, by type.
#[derive(Debug, Clone)]
pub enum ExporterConfig {
    Otlp(OtlpExporterConfig),
    OtlpHttp(OtlpHttpExporterConfig),
    File(FileExporterConfig),
    Debug(DebugExporterConfig),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkerConfig {
    receivers: Option<serde_yaml::Value>,
    tail_sampling: Option<serde_yaml::Value>,
    #[serde(default)]
    exporters: BTreeMap<String, serde_yaml::Value>,
    admin: Option<serde_yaml::Value>,
    shutdown: Option<serde_yaml::Value>,
    spanmetrics: Option<serde_yaml::Value>,
    memory_limiter: Option<serde_yaml::Value>,
    #[serde(default)]
    extensions: BTreeMap<String, serde_yaml::Value>,
}

/// Reads, expands and validates a worker config file.
pub fn load_worker(path: &Path) -> Result<WorkerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![FieldError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }],
    })?;
    parse_worker(&text)
}

/// Loads a policy list file (`tail_sampling.policies_file`); errors carry paths such as
/// `policies/default.yaml[2].latency.threshold_ms`.
pub fn load_policies(path: &Path, sample_on_first_match: bool) -> Result<PolicySet, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![FieldError {
            path: shown.clone(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse_policies(&text, &shown, sample_on_first_match)
}

/// Compiles a policy list given as YAML text; `shown` prefixes error paths.
pub fn parse_policies(
    text: &str,
    shown: &str,
    sample_on_first_match: bool,
) -> Result<PolicySet, ConfigError> {
    let fail = |message: String| ConfigError {
        errors: vec![FieldError {
            path: shown.to_owned(),
            message,
        }],
    };
    let serde_yaml::Value::Sequence(values) = read_yaml(text)? else {
        return Err(fail("must be a YAML list of policies".into()));
    };
    if values.is_empty() {
        return Err(fail("at least one policy is required".into()));
    }
    let mut errors = Errors::default();
    let set = PolicySet::compile(&values, shown, sample_on_first_match, &mut errors);
    errors.check()?;
    Ok(set)
}

/// Parses YAML into a value, then expands `${VAR}` in its scalar values from the process
/// environment (see [`env`]): a variable's value is never read as YAML.
pub fn read_yaml(text: &str) -> Result<serde_yaml::Value, ConfigError> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError {
        errors: vec![FieldError {
            path: String::new(),
            message: format!("invalid YAML: {e}"),
        }],
    })?;
    env::expand_value(&mut value, &|k| std::env::var(k).ok()).map_err(|missing| ConfigError {
        errors: missing
            .into_iter()
            .map(|(path, message)| FieldError { path, message })
            .collect(),
    })?;
    Ok(value)
}

/// Parses and validates worker config text.
pub fn parse_worker(text: &str) -> Result<WorkerConfig, ConfigError> {
    worker_from_yaml(read_yaml(text)?)
}

/// Validates an already expanded and parsed worker config.
pub fn worker_from_yaml(value: serde_yaml::Value) -> Result<WorkerConfig, ConfigError> {
    let mut errors = Errors::default();
    let Some(raw) = errors.parse::<RawWorkerConfig>("", value) else {
        return Err(errors.check().expect_err("a parse failure is recorded"));
    };
    let mut receivers: Option<ReceiversConfig> = errors.parse_section("receivers", raw.receivers);
    if let Some(r) = &mut receivers {
        validate_receivers(r, &raw.extensions, &mut errors);
    }
    let tail_sampling: Option<TailSamplingConfig> = match raw.tail_sampling {
        None | Some(serde_yaml::Value::Null) => {
            errors.push("tail_sampling", "is required");
            None
        }
        Some(v) => errors.parse("tail_sampling", v),
    };
    let policies = tail_sampling.as_ref().and_then(|ts| {
        validate_tail_sampling(ts, &mut errors);
        match &ts.policies_file {
            Some(file) => match load_policies(file, ts.sample_on_first_match) {
                Ok(set) => Some(set),
                Err(e) => {
                    for err in e.errors {
                        errors.push(
                            format!("tail_sampling.policies_file: {}", err.path),
                            err.message,
                        );
                    }
                    None
                }
            },
            None => Some(PolicySet::compile(
                &ts.policies,
                "tail_sampling.policies",
                ts.sample_on_first_match,
                &mut errors,
            )),
        }
    });
    let exporters = parse_exporters(raw.exporters, &mut errors);
    let admin: Option<AdminConfig> = errors.parse_section("admin", raw.admin);
    if let Some(a) = &admin {
        check_endpoint(&a.endpoint, "admin.endpoint", &mut errors);
    }
    let shutdown: Option<ShutdownConfig> = errors.parse_section("shutdown", raw.shutdown);
    if let Some(s) = &shutdown {
        s.validate(&mut errors);
    }
    let spanmetrics: Option<SpanMetricsConfig> = raw.spanmetrics.and_then(|v| {
        let v = if v.is_null() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            v
        };
        errors.parse("spanmetrics", v)
    });
    if let Some(sm) = &spanmetrics {
        sm.validate(&mut errors);
    }
    let memory_limiter = parse_memory_limiter(raw.memory_limiter, &mut errors);
    errors.check()?;
    let parsed = "every section parsed, or an error was recorded";
    Ok(WorkerConfig {
        receivers: receivers.expect(parsed),
        tail_sampling: tail_sampling.expect(parsed),
        policies: policies.expect(parsed),
        exporters,
        admin: admin.expect(parsed),
        shutdown: shutdown.expect(parsed),
        spanmetrics,
        memory_limiter,
    })
}

/// The optional `memory_limiter` section, parsed and checked.
pub fn parse_memory_limiter(
    value: Option<serde_yaml::Value>,
    errors: &mut Errors,
) -> Option<MemoryLimiterConfig> {
    let config: MemoryLimiterConfig =
        errors.parse("memory_limiter", value.filter(|v| !v.is_null())?)?;
    config.validate(errors);
    Some(config)
}

/// Checks the receivers and attaches the `bearertokenauth` extensions their `auth`
/// blocks name.
pub(crate) fn validate_receivers(
    r: &mut ReceiversConfig,
    extensions: &BTreeMap<String, serde_yaml::Value>,
    errors: &mut Errors,
) {
    for (name, value) in extensions {
        let path = format!("extensions.{name}");
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

/// A listen address must be `host:port`.
pub fn check_endpoint(endpoint: &str, path: &str, errors: &mut Errors) {
    match endpoint.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => {}
        _ => errors.push(path, format!("{endpoint:?} is not host:port")),
    }
}

/// Bounds shared by the settings below: time from a millisecond to a day, counts and
/// sizes well past any real deployment but short of exhausting memory or overflowing.
pub const MS: Duration = Duration::from_millis(1);
pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86_400);
/// 1 TiB, in MiB.
pub const MAX_MIB: u64 = 1024 * 1024;
const MAX_COUNT: u64 = 100_000_000;

fn validate_tail_sampling(ts: &TailSamplingConfig, errors: &mut Errors) {
    let p = "tail_sampling";
    errors.within_duration(format!("{p}.decision_wait"), ts.decision_wait, MS, DAY);
    errors.within(format!("{p}.num_traces"), ts.num_traces, 1, MAX_COUNT);
    errors.within(
        format!("{p}.expected_new_traces_per_sec"),
        ts.expected_new_traces_per_sec,
        0,
        10_000_000,
    );
    for (key, value) in [
        ("max_buffered_bytes", ts.max_buffered_bytes),
        ("maximum_trace_size_bytes", ts.maximum_trace_size_bytes),
    ] {
        errors.within(format!("{p}.{key}"), value, 0, MAX_MIB * 1024 * 1024);
    }
    for (key, value) in [
        ("sampled_cache_size", ts.decision_cache.sampled_cache_size),
        (
            "non_sampled_cache_size",
            ts.decision_cache.non_sampled_cache_size,
        ),
    ] {
        errors.within(format!("{p}.decision_cache.{key}"), value, 0, MAX_COUNT);
    }
    if ts.decision_wait_after_root_received > ts.decision_wait {
        errors.push(
            "tail_sampling.decision_wait_after_root_received",
            "must not exceed decision_wait",
        );
    }
    match (ts.policies.is_empty(), &ts.policies_file) {
        (true, None) => errors.push("tail_sampling.policies", "at least one policy is required"),
        (false, Some(_)) => errors.push(
            "tail_sampling.policies_file",
            "set policies or policies_file, not both",
        ),
        _ => {}
    }
}

fn parse_exporters(
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
            out.push((id, config));
        }
    }
    out
}

pub(crate) fn validate_exporter(config: &ExporterConfig, path: &str, errors: &mut Errors) {
    let timeout = match config {
        ExporterConfig::Otlp(c) => Some(c.timeout),
        ExporterConfig::OtlpHttp(c) => Some(c.timeout),
        ExporterConfig::File(_) | ExporterConfig::Debug(_) => None,
    };
    let (queue, retry) = match config {
        ExporterConfig::Otlp(c) => {
            if c.endpoint.is_empty() {
                errors.push(format!("{path}.endpoint"), "must not be empty");
            }
            (&c.sending_queue, Some(&c.retry_on_failure))
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
            (&c.sending_queue, Some(&c.retry_on_failure))
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
            (&c.sending_queue, None)
        }
        ExporterConfig::Debug(c) => (&c.sending_queue, None),
    };
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

#[cfg(test)]
mod tests;
