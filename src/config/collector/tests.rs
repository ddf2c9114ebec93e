use super::*;
use crate::router::config::router_from_yaml;
use crate::worker::config::worker_from_yaml;

const WORKER: &str = include_str!("../../../config/collector/worker.yaml");
const ROUTER: &str = include_str!("../../../config/collector/router.yaml");

fn yaml(text: &str) -> Value {
    crate::config::read_yaml(text).unwrap()
}

/// The shipped worker example with `edit` applied to its YAML.
fn worker_with(
    edit: impl FnOnce(&mut Value),
) -> Result<crate::worker::config::WorkerConfig, ConfigError> {
    let mut v = yaml(WORKER);
    edit(&mut v);
    worker_from_yaml(v)
}

fn errors_with(edit: impl FnOnce(&mut Value)) -> String {
    worker_with(edit).unwrap_err().to_string()
}

fn set(v: &mut Value, path: &str, value: &str) {
    let mut at = v;
    for key in path.split('.') {
        at = at
            .as_mapping_mut()
            .unwrap()
            .entry(Value::String(key.into()))
            .or_insert(Value::Null);
    }
    *at = serde_yaml::from_str(value).unwrap();
}

fn entry<'a>(list: &'a [(String, String)], path: &str) -> Option<&'a str> {
    list.iter()
        .find(|(p, _)| p == path)
        .map(|(_, note)| note.as_str())
}

#[test]
fn a_pasted_gateway_config_becomes_a_worker() {
    let c = worker_from_yaml(yaml(WORKER)).unwrap();
    let names: Vec<&str> = c.policies.policies().iter().map(|p| &*p.name).collect();
    assert_eq!(names, ["errors", "slow", "ten-percent"]);
    assert_eq!(
        c.tail_sampling.decision_wait,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(c.tail_sampling.num_traces, 100_000);
    assert_eq!(c.memory_limiter.as_ref().unwrap().limit_mib, 4000);
    let sm = c.spanmetrics.as_ref().expect("the spanmetrics connector");
    assert_eq!(sm.dimensions[0].name, "http.request.method");
    // Only the exporters of the sampled pipeline get kept traces: not debug, which is in
    // no pipeline, and not prometheus, which serves span metrics.
    let names: Vec<&str> = c.exporters.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["otlp"]);
    assert_eq!(c.span_metrics_exporter.unwrap().endpoint, "0.0.0.0:8889");
    assert_eq!(c.health_check.unwrap().endpoint, "0.0.0.0:13133");
    assert_eq!(c.admin.endpoint, "0.0.0.0:8888");
    let s = &c.summary;
    assert!(entry(&s.used, "processors.tail_sampling").is_some(), "{s}");
    assert!(entry(&s.used, "connectors.spanmetrics").is_some(), "{s}");
    for no_op in [
        "processors.batch",
        "connectors.forward",
        "extensions.pprof",
        "extensions.zpages",
        "processors.tail_sampling.num_shards",
        "connectors.spanmetrics.aggregation_temporality",
        "connectors.spanmetrics.metrics_flush_interval",
    ] {
        assert!(entry(&s.no_ops, no_op).is_some(), "{no_op} missing:\n{s}");
    }
    assert_eq!(entry(&s.off, "exporters.debug"), Some("in no pipeline"));
}

#[test]
fn a_pasted_load_balancing_config_becomes_a_router() {
    let c = router_from_yaml(yaml(ROUTER)).unwrap();
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].name, "loadbalancing");
    assert!(c.memory_limiter.is_some());
    assert_eq!(c.health_check.unwrap().endpoint, "0.0.0.0:13133");
    assert_eq!(c.admin.endpoint, "0.0.0.0:8888");
    assert!(entry(&c.summary.no_ops, "processors.batch").is_some());
}

#[test]
fn the_tier_is_found_from_the_file() {
    assert_eq!(detect_tier(&yaml(WORKER)), Some(Tier::Worker));
    assert_eq!(detect_tier(&yaml(ROUTER)), Some(Tier::Router));
    assert_eq!(
        detect_tier(&yaml("tail_sampling: {policies: []}")),
        Some(Tier::Worker)
    );
    assert_eq!(
        detect_tier(&yaml("exporters: {loadbalancing/a: {}}")),
        Some(Tier::Router)
    );
    assert_eq!(detect_tier(&yaml("receivers: {}")), None);
    // Each file is refused by the other tier, saying why.
    let e = router_from_yaml(yaml(WORKER)).unwrap_err().to_string();
    assert!(
        e.contains(
            "service.pipelines.traces/sampled.processors[0]: tail_sampling is the worker tier's"
        ),
        "{e}"
    );
    let e = worker_from_yaml(yaml(ROUTER)).unwrap_err().to_string();
    assert!(
        e.contains("service.pipelines.traces.exporters[0]: loadbalancing is the router tier's"),
        "{e}"
    );
}

#[test]
fn errors_in_a_component_are_reported_under_its_place_in_the_file() {
    let e = errors_with(|v| {
        set(
            v,
            "processors.tail_sampling.policies",
            "[{name: p, type: probabilistic, probabilistic: {sampling_percentage: 200}}]",
        );
        set(v, "connectors.spanmetrics.histogram.unit", "minutes");
        set(v, "processors.memory_limiter.limit_mib", "0");
    });
    assert!(
        e.contains("processors.tail_sampling.policies[0].probabilistic.sampling_percentage"),
        "{e}"
    );
    assert!(e.contains("connectors.spanmetrics.histogram.unit"), "{e}");
    assert!(e.contains("processors.memory_limiter"), "{e}");
    assert!(
        !e.contains("\ntail_sampling") && !e.starts_with("tail_sampling"),
        "{e}"
    );
    let e = errors_with(|v| {
        set(
            v,
            "service.telemetry.metrics.readers",
            "[{periodic: {exporter: {otlp: {}}}}]",
        )
    });
    assert!(
        e.contains(
            "service.telemetry.metrics.readers[0]: tailgate serves its metrics for scraping"
        ),
        "{e}"
    );
    let e = errors_with(|v| {
        set(
            v,
            "service.telemetry.metrics.readers",
            "[{pull: {exporter: {prometheus: {host: '0.0.0.0', port: 99999}}}}]",
        )
    });
    assert!(
        e.contains("service.telemetry.metrics.readers[0].pull.exporter.prometheus: \"0.0.0.0:99999\" is not host:port"),
        "{e}"
    );
}

#[test]
fn what_tailgate_cannot_do_is_refused_with_its_path() {
    let e = errors_with(|v| {
        set(v, "processors.k8sattributes", "{}");
        set(
            v,
            "service.pipelines.traces/in.processors",
            "[memory_limiter, k8sattributes]",
        );
    });
    assert!(
        e.contains("service.pipelines.traces/in.processors[1]: k8sattributes: the k8sattributes processor is not supported"),
        "{e}"
    );
    // Span metrics after sampling would count kept spans only.
    let e = errors_with(|v| {
        set(
            v,
            "service.pipelines.traces/sampled.exporters",
            "[otlp, spanmetrics]",
        );
        set(v, "service.pipelines.traces/in.exporters", "[forward]");
    });
    assert!(
        e.contains("service.pipelines.traces/sampled.exporters[1]: after tail_sampling it would count kept spans only"),
        "{e}"
    );
    // An exporter before sampling would get every span.
    let e = errors_with(|v| {
        set(
            v,
            "service.pipelines.traces/in.exporters",
            "[spanmetrics, forward, debug]",
        );
    });
    assert!(
        e.contains("service.pipelines.traces/in.exporters[2]: debug would get every span before tail_sampling"),
        "{e}"
    );
    let e = errors_with(|v| {
        set(
            v,
            "service.pipelines.logs",
            "{receivers: [otlp], exporters: [debug]}",
        );
        set(
            v,
            "service.pipelines.traces/sampled.receivers",
            "[forward, nowhere]",
        );
        set(v, "receivers.zipkin", "{}");
        set(v, "service.pipelines.traces/in.receivers", "[otlp, zipkin]");
        set(v, "service.extensions", "[health_check, oauth2client]");
        set(v, "extensions.oauth2client", "{}");
    });
    for expected in [
        "service.pipelines.logs: tailgate handles traces",
        "service.pipelines.traces/sampled.receivers[1]: \"nowhere\" is not defined under receivers or connectors",
        "service.pipelines.traces/in.receivers[1]: zipkin: the zipkin receiver is not supported",
        "service.extensions[1]: oauth2client: the oauth2client extension is not supported",
    ] {
        assert!(e.contains(expected), "{expected} missing:\n{e}");
    }
}

#[test]
fn sampling_twice_or_mixing_sampled_and_unsampled_spans_is_refused() {
    let e = errors_with(|v| {
        set(
            v,
            "service.pipelines.traces/in.processors",
            "[memory_limiter, tail_sampling]",
        );
    });
    assert!(e.contains("a worker samples once"), "{e}");
    let e = errors_with(|v| {
        set(v, "connectors.forward/raw", "{}");
        set(
            v,
            "service.pipelines.traces/in.exporters",
            "[spanmetrics, forward, forward/raw]",
        );
        set(
            v,
            "service.pipelines.traces/sampled.exporters",
            "[otlp, forward/raw]",
        );
        set(
            v,
            "service.pipelines.traces/out",
            "{receivers: [forward/raw], exporters: [otlp]}",
        );
    });
    assert!(
        e.contains("service.pipelines.traces/out.receivers: gets spans both before and after tail_sampling"),
        "{e}"
    );
}

#[test]
fn kept_traces_follow_forward_connectors_to_every_exporter_downstream() {
    let c = worker_with(|v| {
        set(v, "connectors.forward/kept", "{}");
        set(
            v,
            "exporters.otlphttp/archive",
            "{endpoint: 'http://archive:4318'}",
        );
        set(
            v,
            "service.pipelines.traces/sampled.exporters",
            "[otlp, forward/kept]",
        );
        set(
            v,
            "service.pipelines.traces/archive",
            "{receivers: [forward/kept], exporters: [otlphttp/archive, debug]}",
        );
    })
    .unwrap();
    let mut names: Vec<&str> = c.exporters.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["debug", "otlp", "otlphttp/archive"]);
}

#[test]
fn tailgates_own_sections_sit_beside_the_collectors() {
    let c = worker_with(|v| {
        set(v, "shutdown", "{grace_period: 7s}");
        set(v, "admin", "{endpoint: '127.0.0.1:9999'}");
        v.as_mapping_mut()
            .unwrap()
            .get_mut("service")
            .unwrap()
            .as_mapping_mut()
            .unwrap()
            .remove("telemetry");
    })
    .unwrap();
    assert_eq!(c.shutdown.grace_period, std::time::Duration::from_secs(7));
    assert_eq!(c.admin.endpoint, "127.0.0.1:9999");
    // Said twice, the admin endpoint is an error at the second place.
    let e = errors_with(|v| set(v, "admin", "{endpoint: '127.0.0.1:9999'}"));
    assert!(
        e.contains("service.telemetry.metrics.readers[0].pull.exporter.prometheus: sets admin.endpoint, which the file already sets elsewhere"),
        "{e}"
    );
    let e = errors_with(|v| set(v, "tail_sampling", "{}"));
    assert!(
        e.contains("tail_sampling: tailgate's own section, in a file in the collector's shape (it has service, processors or connectors): define it under processors"),
        "{e}"
    );
    let e = errors_with(|v| set(v, "colour", "blue"));
    assert!(
        e.contains("colour: unknown section in a collector config; beside the collector's sections a worker takes admin, shutdown and membership"),
        "{e}"
    );
}

#[test]
fn a_native_config_passes_unchanged_with_its_no_ops_said() {
    let v = yaml(
        "tail_sampling: {num_shards: 2, policies: [{name: a, type: always_sample}]}\nexporters: {debug: {}}",
    );
    let t = translate(v.clone(), Tier::Worker).unwrap();
    assert_eq!(t.value, v);
    assert!(entry(&t.summary.no_ops, "tail_sampling.num_shards").is_some());
}

#[test]
fn component_names_may_hold_dots() {
    let c = worker_with(|v| {
        let exporters = v.get_mut("exporters").unwrap().as_mapping_mut().unwrap();
        let otlp = exporters.remove("otlp").unwrap();
        exporters.insert("otlp/eu.backend".into(), otlp);
        set(
            v,
            "service.pipelines.traces/sampled.exporters",
            "[otlp/eu.backend]",
        );
    })
    .unwrap();
    let names: Vec<&str> = c.exporters.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["otlp/eu.backend"]);
}

/// Found by the config fuzzer: a metrics pipeline exporting to a connector that is named
/// like the prometheus exporter is an error, not a panic.
#[test]
fn a_metrics_pipeline_exporting_to_a_connector_is_refused() {
    let e = errors_with(|v| {
        let exporters = v.get_mut("exporters").unwrap().as_mapping_mut().unwrap();
        let prometheus = exporters.remove("prometheus").unwrap();
        set(
            v,
            "connectors.prometheus",
            &serde_yaml::to_string(&prometheus).unwrap(),
        );
    });
    assert!(
        e.contains("service.pipelines.metrics/spanmetrics.exporters[0]: prometheus: span metrics are served for scraping, through one prometheus exporter"),
        "{e}"
    );
}
