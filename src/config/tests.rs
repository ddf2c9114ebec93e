use std::collections::HashMap;
use std::time::Duration;

use super::env::expand;
use super::*;
use crate::exporter::config::{Compression, ExporterConfig};
use crate::policy::PolicySet;
use crate::worker::config::parse_worker;

const MINIMAL: &str = r#"
receivers:
  otlp:
    protocols:
      grpc:
tail_sampling:
  policies: [{name: all, type: always_sample}]
exporters:
  debug:
"#;

fn errors_of(text: &str) -> String {
    parse_worker(text).unwrap_err().to_string()
}

#[test]
fn defaults_are_the_collectors() {
    let c = parse_worker(MINIMAL).unwrap();
    let grpc = c.receivers.otlp.protocols.grpc.as_ref().unwrap();
    assert_eq!(grpc.endpoint, "0.0.0.0:4317");
    assert_eq!(grpc.max_recv_msg_size_mib, 4);
    assert!(c.receivers.otlp.protocols.http.is_none());
    let ts = &c.tail_sampling;
    assert_eq!(ts.decision_wait, Duration::from_secs(30));
    assert_eq!(ts.num_traces, 50_000);
    assert_eq!(ts.decision_wait_after_root_received, Duration::ZERO);
    assert_eq!(ts.decision_cache.sampled_cache_size, 0);
    assert!(
        !ts.block_on_overflow && !ts.sample_on_first_match && !ts.drop_pending_traces_on_shutdown
    );
    assert_eq!(ts.maximum_trace_size_bytes, 0);
    assert_eq!(ts.max_buffered_bytes, 512 * 1024 * 1024);
    assert_eq!(c.admin.endpoint, "0.0.0.0:8888");
    assert_eq!(c.exporters.len(), 1);
}

#[test]
fn exporters_of_one_type_may_be_named() {
    let c = parse_worker(
        r#"
receivers: {otlp: {protocols: {http: {endpoint: "127.0.0.1:4318"}}}}
tail_sampling: {policies: [{name: all, type: always_sample}]}
exporters:
  otlp/a: {endpoint: "a:4317"}
  otlp/b: {endpoint: "b:4317", compression: none, timeout: 2s}
  otlphttp: {endpoint: "https://backend:4318"}
"#,
    )
    .unwrap();
    let names: Vec<&str> = c.exporters.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["otlp/a", "otlp/b", "otlphttp"]);
    let ExporterConfig::Otlp(b) = &c.exporters[1].1 else {
        panic!("otlp/b is otlp")
    };
    assert_eq!(b.compression, Compression::None);
    assert_eq!(b.timeout, Duration::from_secs(2));
    assert_eq!(b.sending_queue.queue_size, 1000);
    assert_eq!(b.retry_on_failure.initial_interval, Duration::from_secs(5));
}

#[test]
fn every_error_is_reported_with_its_path() {
    let err = errors_of(
        r#"
receivers:
  otlp:
    protocols:
      http: {endpont: "x:1"}
tail_sampling:
  decision_wait: 0s
  num_traces: 0
  policies:
    - {name: ok, type: always_sample}
    - {name: bad, type: probabilistic, probabilistic: {sampling_percentage: -1}}
exporters:
  otlp/a: {endpoint: "a:4317", sending_queue: {queue_size: 0}}
  kafka: {}
  otlphttp: {endpoint: "backend:4318"}
admin: {endpoint: "8888"}
"#,
    );
    for want in [
        "receivers.otlp.protocols.http.endpont: unknown field `endpont`",
        "tail_sampling.decision_wait: 0s is not between 1ms and 1day",
        "tail_sampling.num_traces: 0 is not between 1 and 100000000",
        "tail_sampling.policies[1].probabilistic.sampling_percentage: -1 is not between 0 and 100",
        "exporters.otlp/a.sending_queue.queue_size: 0 is not between 1 and 1000000",
        "exporters.kafka: unknown exporter type \"kafka\"",
        "exporters.otlphttp.endpoint: \"backend:4318\" is not an http(s) URL",
        "admin.endpoint: \"8888\" is not host:port",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // A section that does not parse is not also checked as if it were empty.
    assert!(!err.contains("enable grpc, http or both"), "{err}");
}

#[test]
fn receiver_settings_are_checked() {
    let err = errors_of(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "nowhere", max_recv_msg_size_mib: 0}
      http: {traces_url_path: "v1/traces"}
tail_sampling: {policies: [{name: all, type: always_sample}]}
exporters: {debug: {}}
"#,
    );
    for want in [
        "receivers.otlp.protocols.grpc.endpoint: \"nowhere\" is not host:port",
        "receivers.otlp.protocols.grpc.max_recv_msg_size_mib: 0 is not between 1 and 1024",
        "receivers.otlp.protocols.http.traces_url_path: must start with /",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(errors_of("receivers: {otlp: {protocols: {}}}\ntail_sampling: {policies: [{name: a, type: always_sample}]}\nexporters: {debug: {}}")
        .contains("receivers.otlp.protocols: enable grpc, http or both"));
}

#[test]
fn unknown_keys_are_errors_at_every_level() {
    let err = errors_of(&format!("{MINIMAL}\nprocessors: {{}}\n"));
    assert!(
        err.contains("tail_sampling: tailgate's own section, in a file in the collector's shape"),
        "{err}"
    );
    let err = errors_of(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
tail_sampling: {policies: [{name: a, type: always_sample}], decison_wait: 1s}
exporters: {otlp: {endpoint: "x:1", tls: {insecure: true, verify: false}}}
"#,
    );
    assert!(
        err.contains("tail_sampling.decison_wait: unknown field `decison_wait`"),
        "{err}"
    );
    assert!(
        err.contains("exporters.otlp.tls.verify: unknown field `verify`"),
        "{err}"
    );
}

#[test]
fn a_missing_tail_sampling_or_exporter_is_an_error() {
    let err = errors_of("receivers: {otlp: {protocols: {grpc: {}}}}\n");
    assert!(err.contains("tail_sampling: is required"), "{err}");
    assert!(
        err.contains("exporters: at least one exporter is required"),
        "{err}"
    );
}

#[test]
fn variables_are_expanded_with_defaults() {
    let vars: HashMap<&str, &str> = [("HOST", "tempo"), ("PORT", "4317")].into();
    let lookup = |k: &str| vars.get(k).map(|v| v.to_string());
    assert_eq!(expand("${HOST}:${PORT}", lookup).unwrap(), "tempo:4317");
    assert_eq!(expand("${env:HOST}", lookup).unwrap(), "tempo");
    assert_eq!(expand("${NOPE:-fallback}", lookup).unwrap(), "fallback");
    assert_eq!(expand("${HOST:-unused}", lookup).unwrap(), "tempo");
    assert_eq!(
        expand("cost: $$5 and $x", lookup).unwrap(),
        "cost: $5 and $x"
    );
    assert_eq!(
        expand("${A} ${B} ${A}", lookup).unwrap_err(),
        vec![
            "environment variable A is not set",
            "environment variable B is not set"
        ]
    );
}

/// Expands `text`'s values with `vars` as the environment.
fn expanded(text: &str, vars: &[(&str, &str)]) -> Result<serde_yaml::Value, Vec<(String, String)>> {
    let vars: HashMap<&str, &str> = vars.iter().copied().collect();
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    super::env::expand_value(&mut value, &|k| vars.get(k).map(|v| v.to_string()))?;
    Ok(value)
}

#[test]
fn a_variable_with_a_hash_is_not_cut_as_a_comment() {
    let v = expanded(
        "extensions:\n  bearertokenauth:\n    token: ${OTLP_TOKEN}\n",
        &[("OTLP_TOKEN", "abc #def")],
    )
    .unwrap();
    assert_eq!(
        v["extensions"]["bearertokenauth"]["token"].as_str(),
        Some("abc #def")
    );
}

#[test]
fn a_variable_with_newlines_cannot_inject_keys() {
    let injected = "x\nexporters:\n  debug: {}\nadmin: {endpoint: 0.0.0.0:1}";
    let v = expanded("token: ${T}\nother: 1\n", &[("T", injected)]).unwrap();
    let map = v.as_mapping().unwrap();
    assert_eq!(map.len(), 2, "{v:?}");
    assert_eq!(v["token"].as_str(), Some(injected));
    assert!(v.get("exporters").is_none() && v.get("admin").is_none());
}

#[test]
fn whole_references_take_the_type_of_plain_numbers_and_booleans() {
    let v = expanded(
        "a: ${N}\nb: ${F}\nc: ${B}\nd: x${N}\ne: ${S}\nf: ${NEG}\ng: \"${N}\"\nh: ['${N}']",
        &[
            ("N", "400"),
            ("F", "1.5"),
            ("B", "true"),
            ("S", "4 0"),
            ("NEG", "-3"),
        ],
    )
    .unwrap();
    assert_eq!(v["a"].as_u64(), Some(400));
    assert_eq!(v["b"].as_f64(), Some(1.5));
    assert_eq!(v["c"].as_bool(), Some(true));
    assert_eq!(v["d"].as_str(), Some("x400"));
    assert_eq!(v["e"].as_str(), Some("4 0"));
    assert_eq!(v["f"].as_i64(), Some(-3));
    assert_eq!(v["g"].as_u64(), Some(400));
    assert_eq!(v["h"][0].as_u64(), Some(400));
}

#[test]
fn keys_are_not_expanded_and_missing_variables_name_their_path() {
    let v = expanded("${K}: 1", &[("K", "x")]).unwrap();
    assert_eq!(v["${K}"].as_u64(), Some(1));
    let missing = expanded("a: {b: [ok, '${NOPE}']}", &[]).unwrap_err();
    assert_eq!(
        missing,
        vec![(
            "a.b[1]".to_owned(),
            "environment variable NOPE is not set".to_owned()
        )]
    );
}

#[test]
fn a_token_from_the_environment_authenticates_only_whole() {
    std::env::set_var("TAILGATE_TEST_TOKEN_WITH_HASH", "abc #def");
    let config = parse_worker(
        "extensions:
  bearertokenauth:
    token: ${TAILGATE_TEST_TOKEN_WITH_HASH}
receivers: {otlp: {protocols: {grpc: {auth: {authenticator: bearertokenauth}}}}}
tail_sampling: {policies: [{name: all, type: always_sample}]}
exporters: {debug: {}}
",
    )
    .unwrap();
    let token = config.receivers.authenticators["bearertokenauth"]
        .token
        .clone();
    assert_eq!(token.as_deref(), Some("abc #def"));
}

#[test]
fn example_configs_and_policy_sets_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let result = if name.starts_with("router") {
                crate::router::config::parse_router(&text).map(drop)
            } else if name.starts_with("local") {
                crate::local::parse_local(&text).map(drop)
            } else {
                parse_worker(&text).map(drop)
            };
            result.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 3);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let values: Vec<serde_yaml::Value> =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut errors = Errors::default();
        PolicySet::compile(&values, "policies", false, &mut errors);
        errors
            .check()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The settings of the issue's row that took 2.6 GB, a busy loop and a decision never
/// taken, and their kin: each refused with its path and range.
#[test]
fn settings_that_size_memory_threads_or_time_are_bounded() {
    let err = errors_of(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {max_concurrent_streams: 0, keepalive: {server_parameters: {max_connection_idle: 20d}}}
      http: {read_header_timeout: 2h, max_request_body_size: 2000000000000}
    admission: {request_limit_mib: 4}
tail_sampling:
  decision_wait: 9999999999h
  decision_cache: {sampled_cache_size: 1000000000000}
  policies: [{name: all, type: always_sample}]
exporters:
  otlp: {endpoint: "b:4317", timeout: 0s, sending_queue: {num_consumers: 1000000}, retry_on_failure: {max_interval: 30d}}
  file: {path: /tmp/x, rotation: {max_megabytes: 99999999999}}
memory_limiter: {check_interval: 1ns, limit_mib: 100}
shutdown: {grace_period: 2h}
"#,
    );
    for want in [
        "receivers.otlp.protocols.grpc.max_concurrent_streams: 0 is not between 1 and 10000",
        "receivers.otlp.protocols.grpc.keepalive.server_parameters.max_connection_idle: 20days is not between 0s and 1day",
        "receivers.otlp.protocols.http.read_header_timeout: 2h is not between 0s and 1h",
        "receivers.otlp.protocols.http.max_request_body_size: 2000000000000 is not between 1 and 1073741824",
        "receivers.otlp.admission.request_limit_mib: 4 cannot hold the largest request",
        "tail_sampling.decision_wait: 1140771years 1month 28days 10h 26m 24s is not between 1ms and 1day",
        "tail_sampling.decision_cache.sampled_cache_size: 1000000000000 is not between 0 and 100000000",
        "exporters.otlp.timeout: 0s is not between 1ms and 1h",
        "exporters.otlp.sending_queue.num_consumers: 1000000 is not between 1 and 1000",
        "exporters.otlp.retry_on_failure.max_interval: 30days is not between 1ms and 1h",
        "exporters.file.rotation.max_megabytes: 99999999999 is not between 1 and 1048576",
        "memory_limiter.check_interval: 1ns is not between 10ms and 1h",
        "shutdown.grace_period: 2h is not between 0s and 1h",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn the_routers_backend_settings_are_bounded_too() {
    let err = crate::router::config::parse_router(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
exporters:
  loadbalancing:
    protocol: {otlp: {sending_queue: {num_consumers: 1000000}}}
    resolver: {dns: {hostname: workers, interval: 1ns}}
"#,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "exporters.loadbalancing.protocol.otlp.sending_queue.num_consumers: 1000000 is not between 1 and 1000",
        "exporters.loadbalancing.resolver.dns.interval: 1ns is not between 100ms and 1h",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn a_policy_list_that_is_not_a_list_is_an_error() {
    let err = errors_of(
        "receivers: {otlp: {protocols: {grpc: {}}}}\ntail_sampling: {policies: {name: all}}\nexporters: {debug: {}}\n",
    );
    assert!(
        err.contains("tail_sampling.policies: must be a list of policies"),
        "{err}"
    );
}

#[test]
fn storage_keys_name_one_file_storage_extension() {
    let config = |extra_ts: &str, queue: &str, extensions: &str| {
        format!(
            r#"
receivers: {{otlp: {{protocols: {{grpc: {{}}}}}}}}
extensions: {{{extensions}}}
tail_sampling:
  policies: [{{name: all, type: always_sample}}]
  {extra_ts}
exporters:
  otlp: {{endpoint: "backend:4317", sending_queue: {{{queue}}}}}
  otlp/second: {{endpoint: "other:4317"}}
"#
        )
    };
    let ok = parse_worker(&config(
        "tail_storage: file_storage/wal",
        "storage: file_storage/wal",
        r#"file_storage/wal: {directory: /var/lib/tailgate, fsync: true}"#,
    ))
    .unwrap();
    let storage = ok.storage.unwrap();
    assert_eq!(storage.directory, std::path::Path::new("/var/lib/tailgate"));
    assert!(storage.fsync);
    // The exporter's key alone turns it on too.
    let queue_only = parse_worker(&config(
        "",
        "storage: file_storage",
        "file_storage: {directory: /data}",
    ))
    .unwrap();
    assert!(queue_only.storage.is_some());
    assert!(parse_worker(MINIMAL).unwrap().storage.is_none());

    let err = errors_of(&config(
        "tail_storage: file_storage/a",
        "storage: file_storage/b",
        "file_storage/a: {directory: /a}, file_storage/b: {directory: /b}",
    ));
    assert!(
        err.contains("exporters.otlp.sending_queue.storage: names \"file_storage/b\", but tail_sampling.tail_storage names \"file_storage/a\""),
        "{err}"
    );
    let err = errors_of(&config("tail_storage: file_storage", "", ""));
    assert!(
        err.contains("tail_sampling.tail_storage: extension \"file_storage\" is not configured"),
        "{err}"
    );
    let err = errors_of(&config("tail_storage: redis", "", "redis: {}"));
    assert!(
        err.contains("tail_sampling.tail_storage: \"redis\" is not a file_storage extension"),
        "{err}"
    );
    let err = errors_of(&config(
        "tail_storage: file_storage\n  max_buffered_bytes: 0",
        "",
        "file_storage: {directory: /d, compaction: {}}",
    ));
    assert!(
        err.contains("tail_sampling.max_buffered_bytes: must be set with storage"),
        "{err}"
    );
    assert!(
        err.contains("extensions.file_storage.compaction: unknown field `compaction`"),
        "{err}"
    );
}

#[test]
fn a_router_refuses_storage() {
    let err = crate::router::config::parse_router(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
extensions: {file_storage: {directory: /data}}
exporters:
  loadbalancing:
    protocol: {otlp: {sending_queue: {storage: file_storage}}}
    resolver: {static: {hostnames: ["w:4317"]}}
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("extensions.file_storage: file_storage is a worker's"),
        "{err}"
    );
    assert!(
        err.contains("exporters.loadbalancing.protocol.otlp.sending_queue.storage"),
        "{err}"
    );
}

#[test]
fn only_a_router_waits_for_results() {
    let router = crate::router::config::parse_router(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
exporters:
  loadbalancing:
    protocol: {otlp: {sending_queue: {wait_for_result: true}}}
    resolver: {static: {hostnames: ["w:4317"]}}
"#,
    )
    .unwrap();
    assert!(router.routes[0].otlp.sending_queue.wait_for_result);
    let err = parse_worker(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
tail_sampling: {policies: [{name: all, type: always_sample}]}
exporters:
  otlp: {endpoint: "b:4317", sending_queue: {wait_for_result: true}}
membership:
  advertise: "w:4317"
  resolver: {static: {hostnames: ["w:4317"]}}
  protocol: {otlp: {sending_queue: {wait_for_result: true}}}
"#,
    )
    .unwrap_err()
    .to_string();
    for path in [
        "exporters.otlp.sending_queue.wait_for_result",
        "membership.protocol.otlp.sending_queue.wait_for_result",
    ] {
        assert!(err.contains(&format!("{path}: only a router's")), "{err}");
    }
}

#[test]
fn the_newest_collector_keys_are_known() {
    let config = |extra: &str| {
        format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{}}}}}}}}\ntail_sampling:\n  policies: [{{name: all, type: always_sample}}]\n{extra}exporters: {{debug: {{}}}}\n"
        )
    };
    parse_worker(&config(
        "  num_shards: 4\n  sampling_strategy: trace-complete\n",
    ))
    .unwrap();
    for (extra, want) in [
        (
            "  num_shards: 0\n",
            "tail_sampling.num_shards: 0 is not between 1 and 256",
        ),
        (
            "  sampling_strategy: span-ingest\n",
            "tail_sampling.sampling_strategy: span-ingest is not supported",
        ),
        (
            "  sampling_strategy: eager\n",
            "tail_sampling.sampling_strategy: invalid sampling_strategy \"eager\"",
        ),
    ] {
        let err = parse_worker(&config(extra)).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn span_metrics_accept_the_collectors_no_op_keys() {
    let config = |extra: &str| {
        format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{}}}}}}}}\ntail_sampling:\n  policies: [{{name: all, type: always_sample}}]\nexporters: {{debug: {{}}}}\nspanmetrics:\n{extra}"
        )
    };
    parse_worker(&config(
        "  aggregation_temporality: AGGREGATION_TEMPORALITY_CUMULATIVE\n  metrics_flush_interval: 15s\n",
    ))
    .unwrap();
    let err = parse_worker(&config(
        "  aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spanmetrics.aggregation_temporality: delta is not supported"),
        "{err}"
    );
}

#[test]
fn k8s_resolver_errors_carry_their_paths() {
    let err = crate::router::config::parse_router(
        r#"
receivers: {otlp: {protocols: {grpc: {}}}}
exporters:
  loadbalancing:
    resolver: {k8s: {service: "", ports: [], api_server: "ftp://x"}}
"#,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "exporters.loadbalancing.resolver.k8s.service: is required",
        "exporters.loadbalancing.resolver.k8s.ports: needs at least one port",
        "exporters.loadbalancing.resolver.k8s.api_server: \"ftp://x\" is not an http(s) URL",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn exemplars_need_the_sampled_decision_cache() {
    let with = |cache: &str| {
        format!("{MINIMAL}spanmetrics: {{exemplars: {{enabled: true}}}}\n").replace(
            "tail_sampling:\n",
            &format!("tail_sampling:\n  decision_cache: {{sampled_cache_size: {cache}}}\n"),
        )
    };
    let err = errors_of(&with("0"));
    assert!(
        err.contains(
            "spanmetrics.exemplars.enabled: needs tail_sampling.decision_cache.sampled_cache_size"
        ),
        "{err}"
    );
    assert!(parse_worker(&with("100")).is_ok());
}
