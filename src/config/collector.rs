//! The collector's file shape, so a gateway's config can be pasted as it is: `receivers`,
//! `processors`, `connectors`, `exporters`, `extensions` and `service` (its `pipelines`,
//! `extensions` and `telemetry`) are read as the collector reads them, and what applies to
//! one tier is rewritten into tailgate's own sections. Every component the pipelines use is
//! taken, accepted as a no-op, or refused with its path; a [`Summary`] says which, and
//! what the file defines that no pipeline uses (off, as in the collector).
//!
//! This works on YAML values only: each component still parses and checks its own section
//! afterwards, and [`read_for`] reports what it finds under the pasted file's
//! paths. A file in tailgate's own shape passes through unchanged, with its summary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::{ConfigError, Errors};

/// The process a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Worker,
    Router,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Worker => "worker",
            Tier::Router => "router",
        }
    }
}

/// What a process takes from its config file, said once at start-up and by `check-config`.
/// Each entry is a path in the file and a note.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub used: Vec<(String, String)>,
    pub no_ops: Vec<(String, String)>,
    pub off: Vec<(String, String)>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (title, entries) in [
            ("uses", &self.used),
            ("accepts with no effect", &self.no_ops),
            ("leaves off", &self.off),
        ] {
            if entries.is_empty() {
                continue;
            }
            writeln!(f, "{title}:")?;
            for (path, note) in entries {
                writeln!(f, "  {path}: {note}")?;
            }
        }
        Ok(())
    }
}

/// A config in tailgate's shape, with where its sections came from.
#[derive(Debug, Clone)]
pub struct Translated {
    pub value: Value,
    pub summary: Summary,
    /// (tailgate's path, the pasted file's path) of each section that moved.
    renames: Vec<(String, String)>,
}

/// `path` in tailgate's shape as the pasted file has it, by the longest section that moved.
fn original_path(renames: &[(String, String)], path: &str) -> String {
    renames
        .iter()
        .filter(|(native, _)| {
            path == native
                || path
                    .strip_prefix(native.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[', ':']))
        })
        .max_by_key(|(native, _)| native.len())
        .map_or_else(
            || path.to_owned(),
            |(native, original)| format!("{original}{}", &path[native.len()..]),
        )
}

/// Keys a collector user's config may carry that tailgate accepts and ignores, each with
/// why (in tailgate's paths; `*` matches any one key).
const NO_OP_KEYS: &[(&[&str], &str)] = &[
    (
        &["tail_sampling", "num_shards"],
        "tailgate's buffer and decision loops are sharded already and use every core",
    ),
    (
        &["spanmetrics", "aggregation_temporality"],
        "span metrics are cumulative, as a scrape reads them",
    ),
    (
        &["spanmetrics", "metrics_flush_interval"],
        "span metrics are rendered at each scrape, not pushed",
    ),
    (
        &["exporters", "*", "enable_open_metrics"],
        "the format follows the scraper's Accept header",
    ),
    (
        &["exporters", "*", "metric_expiration"],
        "span metrics expire after spanmetrics.metrics_expiration",
    ),
    (
        &["exporters", "*", "resource_to_telemetry_conversion"],
        "span metrics carry service_name and the configured dimensions as labels already",
    ),
    (
        &["extensions", "*", "check_collector_pipeline"],
        "deprecated in the collector; health follows the process's readiness",
    ),
];

/// Whether `value` is in the collector's shape rather than tailgate's.
pub fn is_collector_shape(value: &Value) -> bool {
    ["service", "processors", "connectors"]
        .iter()
        .any(|k| value.get(k).is_some())
}

/// The tier a file is for, when it says: a `tail_sampling` (section or processor in a
/// pipeline) makes it a worker's, a `loadbalancing` exporter a router's.
pub fn detect_tier(value: &Value) -> Option<Tier> {
    if is_collector_shape(value) {
        let pipelines = value
            .get("service")
            .and_then(|s| s.get("pipelines"))
            .and_then(Value::as_mapping);
        let uses = |list: &str, kind: &str| {
            pipelines.is_some_and(|p| {
                p.values().any(|pipeline| {
                    pipeline
                        .get(list)
                        .and_then(Value::as_sequence)
                        .is_some_and(|ids| {
                            ids.iter().any(|id| id.as_str().map(type_of) == Some(kind))
                        })
                })
            })
        };
        if uses("processors", "tail_sampling") {
            Some(Tier::Worker)
        } else if uses("exporters", "loadbalancing") {
            Some(Tier::Router)
        } else {
            None
        }
    } else if value.get("tail_sampling").is_some() {
        Some(Tier::Worker)
    } else if value
        .get("exporters")
        .and_then(Value::as_mapping)
        .is_some_and(|m| {
            m.keys()
                .filter_map(Value::as_str)
                .any(|k| type_of(k) == "loadbalancing")
        })
    {
        Some(Tier::Router)
    } else {
        None
    }
}

/// The part of a component id before `/`: its type.
fn type_of(id: &str) -> &str {
    let kind = id.split_once('/').map_or(id, |(kind, _)| kind);
    match kind {
        "load_balancing" => "loadbalancing",
        "otlp_http" => "otlphttp",
        other => other,
    }
}

/// Rewrites a config for `tier`: a collector-shaped one into tailgate's sections, one in
/// tailgate's shape unchanged. Every refused component is an error with its path.
pub fn translate(value: Value, tier: Tier) -> Result<Translated, ConfigError> {
    if !is_collector_shape(&value) {
        let mut summary = Summary::default();
        if let Some(top) = value.as_mapping() {
            for key in top.keys().filter_map(Value::as_str) {
                summary.used.push((key.to_owned(), "as configured".into()));
            }
        }
        no_op_keys(&value, &[], &mut summary);
        return Ok(Translated {
            value,
            summary,
            renames: Vec::new(),
        });
    }
    let mut errors = Errors::default();
    let translated = Translation::new(tier, &mut errors).run(value);
    errors.check()?;
    Ok(translated)
}

/// Reads `value` for `tier`: rewritten into tailgate's shape, then built by `sections`
/// (the tier's own reader), whose errors are reported under the pasted file's paths.
pub fn read_for<T>(
    value: Value,
    tier: Tier,
    sections: impl FnOnce(Value) -> Result<T, ConfigError>,
) -> Result<(T, Summary), ConfigError> {
    let Translated {
        value,
        summary,
        renames,
    } = translate(value, tier)?;
    match sections(value) {
        Ok(config) => Ok((config, summary)),
        Err(mut e) => {
            for field in &mut e.errors {
                field.path = original_path(&renames, &field.path);
            }
            Err(e)
        }
    }
}

/// Adds the no-op keys present in `value` to the summary, under their original paths.
fn no_op_keys(value: &Value, renames: &[(String, String)], summary: &mut Summary) {
    for (path, why) in NO_OP_KEYS {
        let mut found = Vec::new();
        find(value, path, String::new(), &mut found);
        for p in found {
            summary
                .no_ops
                .push((original_path(renames, &p), (*why).into()));
        }
    }
}

/// Every dotted path in `value` matching `pattern`.
fn find(value: &Value, pattern: &[&str], prefix: String, out: &mut Vec<String>) {
    let Some((first, rest)) = pattern.split_first() else {
        out.push(prefix);
        return;
    };
    let Some(map) = value.as_mapping() else {
        return;
    };
    for (k, v) in map {
        let Some(k) = k.as_str() else { continue };
        if *first == "*" || *first == k {
            let path = if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            };
            find(v, rest, path, out);
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pipeline {
    #[serde(default)]
    receivers: Vec<String>,
    #[serde(default)]
    processors: Vec<String>,
    #[serde(default)]
    exporters: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    #[serde(default)]
    extensions: Vec<String>,
    #[serde(default)]
    pipelines: BTreeMap<String, Option<Pipeline>>,
    #[serde(default)]
    telemetry: Option<Mapping>,
}

/// Sections of the collector's shape, by component id.
#[derive(Default)]
struct Components {
    receivers: BTreeMap<String, Value>,
    processors: BTreeMap<String, Value>,
    connectors: BTreeMap<String, Value>,
    exporters: BTreeMap<String, Value>,
    extensions: BTreeMap<String, Value>,
}

/// Tailgate's own sections, which may sit beside the collector's.
const OWN_SECTIONS: &[&str] = &["admin", "shutdown", "membership"];

struct Translation<'e> {
    tier: Tier,
    errors: &'e mut Errors,
    out: Mapping,
    summary: Summary,
    renames: Vec<(String, String)>,
    /// Component paths (`processors.batch`) the pipelines took, for the off list.
    touched: BTreeSet<String>,
}

impl<'e> Translation<'e> {
    fn new(tier: Tier, errors: &'e mut Errors) -> Self {
        Self {
            tier,
            errors,
            out: Mapping::new(),
            summary: Summary::default(),
            renames: Vec::new(),
            touched: BTreeSet::new(),
        }
    }

    fn run(mut self, value: Value) -> Translated {
        let Value::Mapping(top) = value else {
            self.errors.push("", "a config must be a mapping");
            return self.finish();
        };
        let mut components = Components::default();
        let mut service = None;
        for (key, value) in top {
            let Some(key) = key.as_str().map(str::to_owned) else {
                self.errors.push("", "section names must be strings");
                continue;
            };
            let section = match key.as_str() {
                "receivers" => &mut components.receivers,
                "processors" => &mut components.processors,
                "connectors" => &mut components.connectors,
                "exporters" => &mut components.exporters,
                "extensions" => &mut components.extensions,
                "service" => {
                    service = self.errors.parse_section::<Service>("service", Some(value));
                    continue;
                }
                own if OWN_SECTIONS.contains(&own)
                    && (own != "membership" || self.tier == Tier::Worker) =>
                {
                    self.summary
                        .used
                        .push((key.clone(), "tailgate's section".into()));
                    self.out.insert(Value::String(key), value);
                    continue;
                }
                "tail_sampling" | "memory_limiter" | "spanmetrics" => {
                    let (kind, list) = if key == "spanmetrics" {
                        ("connectors", "exporters")
                    } else {
                        ("processors", "processors")
                    };
                    self.errors.push(
                        &key,
                        format!("tailgate's own section, in a file in the collector's shape (it has service, processors or connectors): define it under {kind} and name it in a traces pipeline's {list}"),
                    );
                    continue;
                }
                _ => {
                    self.errors.push(
                        &key,
                        format!(
                            "unknown section in a collector config; beside the collector's sections a {} takes {}",
                            self.tier.name(),
                            own_sections(self.tier),
                        ),
                    );
                    continue;
                }
            };
            match value {
                Value::Null => {}
                Value::Mapping(m) => {
                    for (id, v) in m {
                        match id.as_str() {
                            Some(id) => {
                                section.insert(id.to_owned(), v);
                            }
                            None => self.errors.push(&key, "component ids must be strings"),
                        }
                    }
                }
                _ => self.errors.push(&key, "must be a mapping of components"),
            }
        }
        let Some(service) = service else {
            return self.finish();
        };
        self.pipelines(&components, &service);
        self.extensions(&components, &service.extensions);
        if let Some(telemetry) = service.telemetry {
            self.telemetry(telemetry);
        }
        for (kind, section) in [
            ("receivers", &components.receivers),
            ("processors", &components.processors),
            ("connectors", &components.connectors),
            ("exporters", &components.exporters),
        ] {
            for id in section.keys() {
                let path = format!("{kind}.{id}");
                if !self.touched.contains(&path) {
                    self.summary.off.push((path, "in no pipeline".into()));
                }
            }
        }
        self.finish()
    }

    fn finish(mut self) -> Translated {
        let value = Value::Mapping(self.out);
        no_op_keys(&value, &self.renames, &mut self.summary);
        Translated {
            value,
            summary: self.summary,
            renames: self.renames,
        }
    }

    /// Moves a component's config to tailgate's `target` keys, remembering where it came
    /// from. An empty component (`batch:`) is an empty mapping.
    fn place(&mut self, target: &[&str], from: &str, value: &Value) {
        let dotted = target.join(".");
        let value = if value.is_null() {
            Value::Mapping(Mapping::new())
        } else {
            value.clone()
        };
        let mut at = &mut self.out;
        let mut keys = target.iter().peekable();
        while let Some(key) = keys.next() {
            let key = Value::String((*key).to_owned());
            if keys.peek().is_none() {
                if at.contains_key(&key) {
                    self.errors.push(
                        from,
                        format!("sets {dotted}, which the file already sets elsewhere"),
                    );
                } else {
                    at.insert(key, value);
                }
                break;
            }
            let next = at
                .entry(key)
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            match next {
                Value::Mapping(m) => at = m,
                _ => {
                    self.errors.push(from, format!("{dotted} is set twice"));
                    break;
                }
            }
        }
        if dotted != from {
            self.renames.push((dotted, from.to_owned()));
        }
    }

    /// Places a component that serves on its `endpoint` (or `default`) at its own keys, and
    /// records it as used for `what`.
    fn use_serving(&mut self, section: &str, id: &str, value: &Value, default: &str, what: &str) {
        let endpoint = value
            .get("endpoint")
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned();
        let path = format!("{section}.{id}");
        self.place(&[section, id], &path, value);
        self.use_component(path, format!("serves {what} on {endpoint}"));
    }

    fn use_component(&mut self, path: String, note: impl Into<String>) {
        if self.touched.insert(path.clone()) {
            self.summary.used.push((path, note.into()));
        }
    }

    fn no_op_component(&mut self, path: String, note: &str) {
        if self.touched.insert(path.clone()) {
            self.summary.no_ops.push((path, note.into()));
        }
    }

    /// Walks the pipelines as spans flow: from the receivers through each traces
    /// pipeline's processors to its exporters, and through `forward` connectors into the
    /// pipelines they feed, knowing at each point whether spans were sampled yet.
    fn pipelines(&mut self, c: &Components, service: &Service) {
        let mut pipelines: BTreeMap<&str, (&str, &Pipeline)> = BTreeMap::new();
        let empty = Pipeline::default();
        for (name, pipeline) in &service.pipelines {
            let path = format!("service.pipelines.{name}");
            let pipeline = pipeline.as_ref().unwrap_or(&empty);
            if !self.references_exist(c, &path, pipeline) {
                continue;
            }
            match type_of(name) {
                kind @ ("traces" | "metrics") => {
                    pipelines.insert(name.as_str(), (kind, pipeline));
                }
                "logs" | "profiles" => self.errors.push(
                    path,
                    "tailgate handles traces; run a collector for logs and profiles",
                ),
                other => self.errors.push(
                    path,
                    format!("unknown signal {other:?}; expected traces, metrics or logs"),
                ),
            }
        }
        if service.pipelines.is_empty() {
            self.errors.push(
                "service.pipelines",
                "at least one traces pipeline is required",
            );
        }
        // Each traces pipeline's input: sampled or not, once known.
        let mut input: BTreeMap<&str, bool> = BTreeMap::new();
        let mut work: Vec<&str> = Vec::new();
        for (&name, (kind, p)) in &pipelines {
            if *kind == "traces" && p.receivers.iter().any(|r| c.receivers.contains_key(r)) {
                input.insert(name, false);
                work.push(name);
            }
        }
        let mut sampler: Option<String> = None;
        let mut metrics_from: BTreeSet<String> = BTreeSet::new();
        let mut routed = false;
        let mut otlp: Option<String> = None;
        while let Some(name) = work.pop() {
            let (_, p) = pipelines[&name];
            let path = format!("service.pipelines.{name}");
            for (i, id) in p.receivers.iter().enumerate() {
                if c.receivers.contains_key(id) {
                    self.receiver(c, id, &format!("{path}.receivers[{i}]"), &mut otlp);
                }
            }
            let mut sampled = input[&name];
            for (i, id) in p.processors.iter().enumerate() {
                let at = format!("{path}.processors[{i}]");
                if self.processor(c, id, &at, sampled, &mut sampler) {
                    sampled = true;
                }
            }
            for (i, id) in p.exporters.iter().enumerate() {
                let at = format!("{path}.exporters[{i}]");
                if c.connectors.contains_key(id) {
                    match type_of(id) {
                        "forward" => {
                            self.no_op_component(
                                format!("connectors.{id}"),
                                "joins pipelines; spans pass through",
                            );
                            for (&next, (kind, q)) in &pipelines {
                                if *kind != "traces" || !q.receivers.contains(id) {
                                    continue;
                                }
                                match input.get(next) {
                                    None => {
                                        input.insert(next, sampled);
                                        work.push(next);
                                    }
                                    Some(&was) if was != sampled => self.errors.push(
                                        format!("service.pipelines.{next}.receivers"),
                                        "gets spans both before and after tail_sampling",
                                    ),
                                    Some(_) => {}
                                }
                            }
                        }
                        "spanmetrics" => {
                            self.spanmetrics(c, id, &at, sampled);
                            metrics_from.insert(id.clone());
                        }
                        other => self.errors.push(
                            at,
                            format!("{id}: the {other} connector is not supported; tailgate has forward and spanmetrics"),
                        ),
                    }
                } else if self.exporter(c, id, &at, sampled) {
                    routed = true;
                }
            }
        }
        for (&name, (kind, p)) in &pipelines {
            let path = format!("service.pipelines.{name}");
            match *kind {
                "metrics" => self.metrics_pipeline(c, &path, p, &metrics_from),
                _ if !input.contains_key(name) => {
                    self.summary.off.push((path, "no receiver feeds it".into()))
                }
                _ => {}
            }
        }
        match self.tier {
            Tier::Worker if sampler.is_none() => self.errors.push(
                "service.pipelines",
                "no traces pipeline has a tail_sampling processor, which a worker needs (a file whose pipelines export to loadbalancing is a router's)",
            ),
            Tier::Router if !routed => self.errors.push(
                "service.pipelines",
                "no traces pipeline exports to a loadbalancing exporter, which a router needs (a file with a tail_sampling processor is a worker's)",
            ),
            _ => {}
        }
    }

    /// Whether every id a pipeline names is defined; each missing one is an error.
    fn references_exist(&mut self, c: &Components, path: &str, p: &Pipeline) -> bool {
        let mut ok = true;
        for (list, ids, defined) in [
            ("receivers", &p.receivers, [&c.receivers, &c.connectors]),
            ("processors", &p.processors, [&c.processors, &c.processors]),
            ("exporters", &p.exporters, [&c.exporters, &c.connectors]),
        ] {
            for (i, id) in ids.iter().enumerate() {
                if !defined.iter().any(|d| d.contains_key(id)) {
                    let sections = if list == "processors" {
                        "processors".to_owned()
                    } else {
                        format!("{list} or connectors")
                    };
                    self.errors.push(
                        format!("{path}.{list}[{i}]"),
                        format!("{id:?} is not defined under {sections}"),
                    );
                    ok = false;
                }
            }
        }
        ok
    }

    fn receiver(&mut self, c: &Components, id: &str, at: &str, otlp: &mut Option<String>) {
        if type_of(id) != "otlp" {
            self.errors.push(
                at,
                format!(
                    "{id}: the {} receiver is not supported; tailgate receives OTLP",
                    type_of(id)
                ),
            );
            return;
        }
        match otlp {
            Some(first) if first != id => self.errors.push(
                at,
                format!(
                    "{id}: tailgate has one OTLP receiver, and the pipelines use {first} already"
                ),
            ),
            Some(_) => {}
            None => {
                *otlp = Some(id.to_owned());
                self.place(
                    &["receivers", "otlp"],
                    &format!("receivers.{id}"),
                    &c.receivers[id],
                );
                self.use_component(format!("receivers.{id}"), "receives OTLP");
            }
        }
    }

    /// Takes a traces pipeline's processor; true when it is the sampler.
    fn processor(
        &mut self,
        c: &Components,
        id: &str,
        at: &str,
        sampled: bool,
        sampler: &mut Option<String>,
    ) -> bool {
        let path = format!("processors.{id}");
        match (type_of(id), self.tier) {
            ("batch", _) => {
                self.no_op_component(
                    path,
                    "spans are batched per backend and per export request already",
                );
                false
            }
            ("memory_limiter", _) => {
                if !self.touched.contains(&path) {
                    self.place(&["memory_limiter"], &path, &c.processors[id]);
                    self.use_component(path, "refuses and sheds above its limits");
                }
                false
            }
            ("tail_sampling", Tier::Worker) => {
                if sampled || sampler.is_some() {
                    self.errors.push(
                        at,
                        "a worker samples once: one tail_sampling processor in one pipeline",
                    );
                    return false;
                }
                *sampler = Some(id.to_owned());
                self.place(&["tail_sampling"], &path, &c.processors[id]);
                self.use_component(path, "decides each trace");
                true
            }
            ("tail_sampling", Tier::Router) => {
                self.errors.push(
                    at,
                    "tail_sampling is the worker tier's: run this file with `tailgate worker`",
                );
                false
            }
            (other, _) => {
                self.errors.push(
                    at,
                    format!("{id}: the {other} processor is not supported; tailgate passes spans on unchanged (run it in a collector before tailgate)"),
                );
                false
            }
        }
    }

    fn spanmetrics(&mut self, c: &Components, id: &str, at: &str, sampled: bool) {
        let path = format!("connectors.{id}");
        match self.tier {
            Tier::Router => self.errors.push(
                at,
                "span metrics are counted by the workers; a router only routes",
            ),
            Tier::Worker if sampled => self.errors.push(
                at,
                "after tail_sampling it would count kept spans only; tailgate counts every span on arrival, so export to spanmetrics from the pipeline before tail_sampling",
            ),
            Tier::Worker => {
                if !self.touched.contains(&path) {
                    self.place(&["spanmetrics"], &path, &c.connectors[id]);
                    self.use_component(path, "counts every span on arrival");
                }
            }
        }
    }

    /// Takes a traces pipeline's exporter; true when it is a router's route.
    fn exporter(&mut self, c: &Components, id: &str, at: &str, sampled: bool) -> bool {
        let path = format!("exporters.{id}");
        match (type_of(id), self.tier) {
            ("otlp" | "otlphttp" | "file" | "debug", Tier::Worker) if sampled => {
                if !self.touched.contains(&path) {
                    self.place(&["exporters", id], &path, &c.exporters[id]);
                    self.use_component(path, "gets kept traces");
                }
                false
            }
            ("otlp" | "otlphttp" | "file" | "debug", Tier::Worker) => {
                self.errors.push(
                    at,
                    format!("{id} would get every span before tail_sampling; a worker exports kept traces only"),
                );
                false
            }
            ("loadbalancing", Tier::Router) => {
                if !self.touched.contains(&path) {
                    self.place(&["exporters", id], &path, &c.exporters[id]);
                    self.use_component(path, "sends each trace to one worker");
                }
                true
            }
            ("loadbalancing", Tier::Worker) => {
                self.errors.push(
                    at,
                    "loadbalancing is the router tier's: run that pipeline with `tailgate router`",
                );
                false
            }
            (_, Tier::Router) => {
                self.errors.push(
                    at,
                    format!("{id}: a router sends every span through loadbalancing exporters only"),
                );
                false
            }
            (other, Tier::Worker) => {
                self.errors.push(
                    at,
                    format!("{id}: the {other} exporter is not supported for traces; tailgate has otlp, otlphttp, file and debug"),
                );
                false
            }
        }
    }

    /// A metrics pipeline may carry span metrics from the spanmetrics connector to one
    /// prometheus exporter, which serves them for scraping.
    fn metrics_pipeline(
        &mut self,
        c: &Components,
        path: &str,
        p: &Pipeline,
        metrics_from: &BTreeSet<String>,
    ) {
        if self.tier == Tier::Router {
            self.errors.push(
                path,
                "a router carries traces only; span metrics are the workers'",
            );
            return;
        }
        for (i, id) in p.receivers.iter().enumerate() {
            if !metrics_from.contains(id) {
                self.errors.push(
                    format!("{path}.receivers[{i}]"),
                    format!("{id}: tailgate's metrics pipelines carry span metrics only, from a spanmetrics connector a traces pipeline exports to"),
                );
            }
        }
        for (i, id) in p.processors.iter().enumerate() {
            match type_of(id) {
                "batch" => self.no_op_component(
                    format!("processors.{id}"),
                    "spans are batched per backend and per export request already",
                ),
                other => self.errors.push(
                    format!("{path}.processors[{i}]"),
                    format!("{id}: the {other} processor is not supported on span metrics"),
                ),
            }
        }
        for (i, id) in p.exporters.iter().enumerate() {
            let from = format!("exporters.{id}");
            // The id may name a connector as well: only an exporter serves scrapes.
            match c.exporters.get(id) {
                Some(exporter) if type_of(id) == "prometheus" => {
                    if !self.touched.contains(&from) {
                        self.use_serving("exporters", id, exporter, "(no endpoint)", "span metrics");
                    }
                }
                _ => self.errors.push(
                    format!("{path}.exporters[{i}]"),
                    format!("{id}: span metrics are served for scraping, through one prometheus exporter"),
                ),
            }
        }
    }

    fn extensions(&mut self, c: &Components, listed: &[String]) {
        for (i, id) in listed.iter().enumerate() {
            let at = format!("service.extensions[{i}]");
            let path = format!("extensions.{id}");
            let Some(value) = c.extensions.get(id) else {
                self.errors
                    .push(at, format!("{id:?} is not defined under extensions"));
                continue;
            };
            match (type_of(id), self.tier) {
                ("health_check", _) => {
                    self.use_serving("extensions", id, value, "localhost:13133", "health")
                }
                ("bearertokenauth", _) | ("file_storage", Tier::Worker) => {
                    self.place(&["extensions", id], &path, value);
                    self.use_component(path, "as the components naming it");
                }
                ("file_storage", Tier::Router) => self.errors.push(
                    at,
                    "file_storage is a worker's (tail_storage); a router keeps nothing on disk",
                ),
                ("pprof" | "zpages", _) => {
                    self.no_op_component(path, "not served; tailgate's own metrics are on the admin endpoint")
                }
                (other, _) => self.errors.push(
                    at,
                    format!("{id}: the {other} extension is not supported; tailgate has health_check, bearertokenauth and file_storage (pprof and zpages are accepted and not served)"),
                ),
            }
        }
        for id in c.extensions.keys() {
            if !listed.contains(id) {
                self.summary.off.push((
                    format!("extensions.{id}"),
                    "not listed in service.extensions".into(),
                ));
            }
        }
    }

    /// `service.telemetry`: where self-metrics are served becomes the admin endpoint.
    fn telemetry(&mut self, telemetry: Mapping) {
        for (key, value) in telemetry {
            let key = key.as_str().unwrap_or_default().to_owned();
            let path = format!("service.telemetry.{key}");
            match key.as_str() {
                "metrics" => self.telemetry_metrics(&path, &value),
                "logs" => self.summary.no_ops.push((
                    path,
                    "tailgate logs to stderr; RUST_LOG sets the level".into(),
                )),
                "resource" | "traces" => self
                    .summary
                    .no_ops
                    .push((path, "tailgate does not export its own telemetry".into())),
                _ => self.errors.push(
                    path,
                    "unknown telemetry section; expected metrics, logs, traces or resource",
                ),
            }
        }
    }

    fn telemetry_metrics(&mut self, path: &str, value: &Value) {
        let Some(metrics) = value.as_mapping() else {
            return;
        };
        for (key, value) in metrics {
            let key = key.as_str().unwrap_or_default();
            let at = format!("{path}.{key}");
            match key {
                "address" => match value.as_str() {
                    Some(address) => self.admin_endpoint(&at, address.to_owned()),
                    None => self.errors.push(at, "must be host:port"),
                },
                "readers" => {
                    let readers = value.as_sequence().map(Vec::as_slice).unwrap_or_default();
                    for (i, reader) in readers.iter().enumerate() {
                        let at = format!("{at}[{i}]");
                        let prometheus = reader
                            .get("pull")
                            .and_then(|p| p.get("exporter"))
                            .and_then(|e| e.get("prometheus"));
                        let host = prometheus
                            .and_then(|p| p.get("host"))
                            .and_then(Value::as_str);
                        let port = prometheus
                            .and_then(|p| p.get("port"))
                            .and_then(Value::as_u64);
                        match (host, port) {
                            (Some(host), Some(port)) => {
                                self.admin_endpoint(&format!("{at}.pull.exporter.prometheus"), format!("{host}:{port}"))
                            }
                            _ => self.errors.push(
                                at,
                                "tailgate serves its metrics for scraping: a pull reader with a prometheus exporter's host and port",
                            ),
                        }
                    }
                }
                "level" => self.summary.no_ops.push((
                    at,
                    "every self-metric is served; the level does not change them".into(),
                )),
                _ => self
                    .errors
                    .push(at, "unknown key; expected address, readers or level"),
            }
        }
    }

    fn admin_endpoint(&mut self, from: &str, endpoint: String) {
        self.place(
            &["admin", "endpoint"],
            from,
            &Value::String(endpoint.clone()),
        );
        self.summary.used.push((
            from.to_owned(),
            format!("self-metrics, /healthz and /readyz on {endpoint}"),
        ));
    }
}

fn own_sections(tier: Tier) -> &'static str {
    match tier {
        Tier::Worker => "admin, shutdown and membership",
        Tier::Router => "admin and shutdown",
    }
}

#[cfg(test)]
mod tests;
