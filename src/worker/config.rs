//! The worker's config: the `tail_sampling` section (the collector's processor keys plus
//! `max_buffered_bytes`), and the whole worker file assembled from every component's
//! section, each parsed and validated by its owner. A collector-shaped file is rewritten
//! into those sections first (`config::collector`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::collector::{read_for, Summary, Tier};
use crate::config::{read_yaml, ConfigError, Errors, FieldError, DAY, MAX_COUNT, MAX_MIB, MS};
use crate::exporter::config::{parse_exporters, ExporterConfig};
use crate::lifecycle::ShutdownConfig;
use crate::membership::config::{parse_membership, MembershipConfig};
use crate::memory_limiter::{parse_memory_limiter, MemoryLimiterConfig};
use crate::policy::{load_policies, PolicySet};
use crate::receiver::config::{validate_receivers, ReceiversConfig};
use crate::spanmetrics::SpanMetricsConfig;
use crate::storage::config::{is_file_storage, storage_extension, FileStorageConfig};
use crate::telemetry::{
    take_health_check, take_prometheus_exporter, AdminConfig, HealthCheckConfig,
    PrometheusExporterConfig,
};

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
    /// Kept spans carry their sampling probability as the W3C tracestate `ot=th` entry;
    /// tailgate's addition, on by default.
    #[serde(default = "yes")]
    pub write_sampling_threshold: bool,
    /// The `file_storage` extension holding pending traces (and, with them, kept spans
    /// until exported): the write-ahead log.
    #[serde(default)]
    pub tail_storage: Option<String>,
    /// The collector's sharding of its single decision loop: accepted (1 to 256) and
    /// otherwise unused, tailgate's buffer and decision loops being sharded already.
    #[serde(default = "one_shard")]
    pub num_shards: u32,
    /// The collector's `trace-complete` (decide on the whole trace) is what tailgate does;
    /// `span-ingest` is refused.
    #[serde(default)]
    pub sampling_strategy: Option<String>,
}

fn one_shard() -> u32 {
    1
}

fn yes() -> bool {
    true
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
    /// The fleet this worker shares traces with; alone (as a worker behind routers that
    /// never change) when absent.
    pub membership: Option<MembershipConfig>,
    /// Where the write-ahead log lives (`tail_storage`, or an exporter's
    /// `sending_queue.storage`); in memory only when absent.
    pub storage: Option<FileStorageConfig>,
    /// The `health_check` extension's listener, when configured.
    pub health_check: Option<HealthCheckConfig>,
    /// A `prometheus` exporter serving the span metrics on its own endpoint; on the admin
    /// endpoint when absent.
    pub span_metrics_exporter: Option<PrometheusExporterConfig>,
    /// What the file configured, as said at start-up.
    pub summary: Summary,
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
    membership: Option<serde_yaml::Value>,
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

/// Parses and validates worker config text.
pub fn parse_worker(text: &str) -> Result<WorkerConfig, ConfigError> {
    worker_from_yaml(read_yaml(text)?)
}

/// Validates an already expanded and parsed worker config, in tailgate's shape or the
/// collector's.
pub fn worker_from_yaml(value: serde_yaml::Value) -> Result<WorkerConfig, ConfigError> {
    let (config, summary) = read_for(value, Tier::Worker, worker_sections)?;
    Ok(WorkerConfig { summary, ..config })
}

fn worker_sections(value: serde_yaml::Value) -> Result<WorkerConfig, ConfigError> {
    let mut errors = Errors::default();
    let Some(mut raw) = errors.parse::<RawWorkerConfig>("", value) else {
        return errors.finish(None);
    };
    let health_check = take_health_check(&mut raw.extensions, &mut errors);
    let span_metrics_exporter =
        take_prometheus_exporter(&mut raw.exporters, raw.spanmetrics.is_some(), &mut errors);
    let mut receivers: Option<ReceiversConfig> = errors.parse_section("receivers", raw.receivers);
    if let Some(r) = &mut receivers {
        // file_storage extensions are the storage's (below), the rest the receivers'.
        let auth: BTreeMap<String, serde_yaml::Value> = raw
            .extensions
            .iter()
            .filter(|(name, _)| !is_file_storage(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        validate_receivers(r, &auth, &mut errors);
    }
    // The policy list is taken out before the section is read: each policy is compiled on
    // its own (every bad one reported with its index), into the `PolicySet` the worker runs.
    let mut policy_list = Vec::new();
    let tail_sampling: Option<TailSamplingConfig> = match raw.tail_sampling {
        None | Some(serde_yaml::Value::Null) => {
            errors.push("tail_sampling", "is required");
            None
        }
        Some(mut v) => {
            match v.as_mapping_mut().and_then(|m| m.remove("policies")) {
                None | Some(serde_yaml::Value::Null) => {}
                Some(serde_yaml::Value::Sequence(list)) => policy_list = list,
                Some(_) => errors.push("tail_sampling.policies", "must be a list of policies"),
            }
            errors.parse("tail_sampling", v)
        }
    };
    let policies = tail_sampling.as_ref().and_then(|ts| {
        validate_tail_sampling(ts, !policy_list.is_empty(), &mut errors);
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
                &policy_list,
                "tail_sampling.policies",
                ts.sample_on_first_match,
                &mut errors,
            )),
        }
    });
    let exporters = parse_exporters(raw.exporters, &mut errors);
    let storage = tail_sampling
        .as_ref()
        .and_then(|ts| storage_of(ts, &exporters, &raw.extensions, &mut errors));
    let admin: Option<AdminConfig> = errors.section(raw.admin);
    let shutdown: Option<ShutdownConfig> = errors.section(raw.shutdown);
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
        let no_sampled_cache = tail_sampling
            .as_ref()
            .is_some_and(|ts| ts.decision_cache.sampled_cache_size == 0);
        if sm.exemplars.enabled && no_sampled_cache {
            errors.push(
                "spanmetrics.exemplars.enabled",
                "needs tail_sampling.decision_cache.sampled_cache_size: exemplars come from kept traces, which the sampled decision cache remembers",
            );
        }
    }
    let memory_limiter = parse_memory_limiter(raw.memory_limiter, &mut errors);
    let membership = match (raw.membership, &tail_sampling, &shutdown) {
        (Some(value), Some(ts), Some(shutdown)) => {
            parse_membership(value, ts.decision_wait, shutdown.grace_period, &mut errors)
        }
        _ => None,
    };
    let config = || {
        Some(WorkerConfig {
            receivers: receivers?,
            tail_sampling: tail_sampling?,
            policies: policies?,
            exporters,
            admin: admin?,
            shutdown: shutdown?,
            spanmetrics,
            memory_limiter,
            membership,
            storage,
            health_check,
            span_metrics_exporter,
            summary: Summary::default(),
        })
    };
    errors.finish(config())
}

/// The one `file_storage` extension the `storage:` keys name: `tail_sampling.tail_storage`
/// and the exporters' `sending_queue.storage` all name it, or none does. Either puts the
/// whole pipeline on it: pending traces, and kept spans until exported.
fn storage_of(
    ts: &TailSamplingConfig,
    exporters: &[(String, ExporterConfig)],
    extensions: &BTreeMap<String, serde_yaml::Value>,
    errors: &mut Errors,
) -> Option<FileStorageConfig> {
    let mut named: Vec<(String, &str)> = Vec::new();
    if let Some(name) = &ts.tail_storage {
        named.push(("tail_sampling.tail_storage".into(), name));
    }
    for (exporter, config) in exporters {
        if let Some(name) = config.sending_queue().storage.as_deref() {
            named.push((format!("exporters.{exporter}.sending_queue.storage"), name));
        }
    }
    let (first_path, first) = named.first()?;
    for (path, name) in &named[1..] {
        if name != first {
            errors.push(
                path.clone(),
                format!("names {name:?}, but {first_path} names {first:?}: one log holds pending traces and the export queue, so every storage key must name the same extension"),
            );
        }
    }
    if ts.max_buffered_bytes == 0 {
        errors.push(
            "tail_sampling.max_buffered_bytes",
            "must be set with storage: it bounds the log on disk",
        );
    }
    storage_extension(extensions, first, first_path, errors)
}

fn validate_tail_sampling(ts: &TailSamplingConfig, has_policies: bool, errors: &mut Errors) {
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
    errors.within(format!("{p}.num_shards"), u64::from(ts.num_shards), 1, 256);
    match ts.sampling_strategy.as_deref() {
        None | Some("trace-complete") => {}
        Some("span-ingest") => errors.push(
            format!("{p}.sampling_strategy"),
            "span-ingest is not supported: tailgate decides each trace on all its spans (trace-complete)",
        ),
        Some(other) => errors.push(
            format!("{p}.sampling_strategy"),
            format!("invalid sampling_strategy {other:?}; expected trace-complete or span-ingest"),
        ),
    }
    match (has_policies, &ts.policies_file) {
        (false, None) => errors.push("tail_sampling.policies", "at least one policy is required"),
        (true, Some(_)) => errors.push(
            "tail_sampling.policies_file",
            "set policies or policies_file, not both",
        ),
        _ => {}
    }
}
