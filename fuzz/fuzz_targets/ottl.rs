//! OTTL conditions as a policy config carries them: the input, split at its first newline,
//! is a span condition and a span-event condition of an `ottl_condition` policy. A
//! condition that parses is evaluated on a generated trace.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_yaml::{Mapping, Value};
use tailgate::policy::parse_policies;
use tailgate_tools::{PolicyInput, Workload, WorkloadConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (span, event) = text.split_once('\n').unwrap_or((text, ""));
    let mut ottl = Mapping::new();
    ottl.insert("error_mode".into(), "ignore".into());
    ottl.insert("span".into(), Value::Sequence(vec![span.into()]));
    if !event.is_empty() {
        ottl.insert("spanevent".into(), Value::Sequence(vec![event.into()]));
    }
    let mut policy = Mapping::new();
    policy.insert("name".into(), "fuzz".into());
    policy.insert("type".into(), "ottl_condition".into());
    policy.insert("ottl_condition".into(), Value::Mapping(ottl));
    let yaml = serde_yaml::to_string(&Value::Sequence(vec![Value::Mapping(policy)])).unwrap();
    let Ok(policies) = parse_policies(&yaml, "policies", false) else {
        return;
    };
    let mut workload = Workload::new(WorkloadConfig::default());
    for _ in 0..4 {
        let trace = workload.next_trace();
        let input = PolicyInput::on_time(&trace, workload.resources());
        let batches = input.batches();
        let now = tokio::time::Instant::now();
        policies.decide(&input.view(&trace.trace_id, &batches, now), |_| {});
    }
});
