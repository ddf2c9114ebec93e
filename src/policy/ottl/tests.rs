use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tokio::time::Instant;

use super::*;
use crate::otlp::{chunks_of, TraceSpans};
use crate::policy::{Batch, StatusCodes};
use tailgate_testkit::{kv, trace_id};

fn attr(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn fixture() -> TraceSpans {
    let span = Span {
        trace_id: trace_id(1).to_vec(),
        span_id: vec![0xab; 8],
        parent_span_id: vec![],
        name: "GET /checkout".into(),
        kind: 2,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 5_000,
        trace_state: "vendor=gold".into(),
        status: Some(Status {
            code: 2,
            message: "boom".into(),
        }),
        attributes: vec![
            kv("http.route", "/checkout"),
            attr("http.status_code", any_value::Value::IntValue(503)),
            attr("retry.ratio", any_value::Value::DoubleValue(0.25)),
            attr("cache.hit", any_value::Value::BoolValue(true)),
            attr("list", any_value::Value::ArrayValue(Default::default())),
        ],
        events: vec![Event {
            name: "exception".into(),
            time_unix_nano: 3_000,
            attributes: vec![kv("exception.type", "TimeoutError")],
            ..Default::default()
        }],
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "checkout"),
                    kv("deployment.environment", "prod"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.http".into(),
                    version: "1.2".into(),
                    ..Default::default()
                }),
                spans: vec![span],
                schema_url: String::new(),
            }],
            ..Default::default()
        }],
    };
    chunks_of(&request).unwrap()
}

fn run(span: &[&str], event: &[&str], mode: ErrorMode) -> Result<Decision, EvalError> {
    let mut errors = Errors::default();
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let c = OttlCondition::compile(mode, &owned(span), &owned(event), "p", &mut errors)
        .unwrap_or_else(|| panic!("{:?}", errors.check()));
    let trace = fixture();
    let batches = [Batch::of(trace.chunks().next().unwrap())];
    let id = trace_id(1);
    c.evaluate(&TraceView {
        trace_id: &id,
        span_count: 1,
        bytes: 0,
        earliest_start: 0,
        latest_end: 0,
        status_codes: StatusCodes::NONE,
        randomness: 0,
        fleet_size: 1,
        attributes: None,
        batches: &batches,
        now: Instant::now(),
    })
}

fn holds(condition: &str) -> bool {
    run(&[condition], &[], ErrorMode::Propagate).unwrap() == Decision::Sampled
}

#[test]
fn span_paths_resolve_to_the_span() {
    for c in [
        r#"name == "GET /checkout""#,
        "kind == SPAN_KIND_SERVER",
        "kind == 2",
        "status.code == STATUS_CODE_ERROR",
        r#"status.message == "boom""#,
        r#"attributes["http.route"] == "/checkout""#,
        r#"attributes["http.status_code"] >= 500"#,
        r#"attributes["retry.ratio"] < 0.5"#,
        r#"attributes["cache.hit"] == true"#,
        r#"attributes["cache.hit"]"#,
        r#"attributes["missing"] == nil"#,
        r#"resource.attributes["service.name"] == "checkout""#,
        r#"instrumentation_scope.name == "io.opentelemetry.http""#,
        r#"instrumentation_scope.version == "1.2""#,
        "start_time_unix_nano == 1000",
        "end_time_unix_nano > start_time_unix_nano",
    ] {
        assert!(holds(c), "{c} should hold");
    }
    let hex = crate::otlp::trace_id_hex(&trace_id(1));
    assert!(holds(&format!(r#"trace_id.string == "{hex}""#)));
    assert!(holds(&format!("trace_id == 0x{hex}")));
    assert!(holds(r#"span_id.string == "abababababababab""#));
    assert!(holds(r#"parent_span_id.string == """#));
    assert!(holds(r#"trace_state == "vendor=gold""#));
}

#[test]
fn operators_types_and_precedence() {
    for (c, want) in [
        (r#"name != "GET /checkout""#, false),
        ("kind == SPAN_KIND_CLIENT", false),
        // Different types are unequal, never an error.
        (r#"attributes["http.status_code"] == "503""#, false),
        (r#"attributes["http.status_code"] != "503""#, true),
        (r#"attributes["http.status_code"] == 503.0"#, true),
        (r#"name < "H""#, true),
        (r#"name > 5"#, false),
        ("not kind == 3", true),
        ("kind == 3 or kind == 2 and status.code == 1", false),
        ("(kind == 3 or kind == 2) and status.code == 2", true),
        ("not (kind == 2 and status.code == 2)", false),
        (r#"attributes["missing"] != nil"#, false),
        ("true", true),
        ("false or nil == nil", true),
    ] {
        assert_eq!(holds(c), want, "{c}");
    }
}

#[test]
fn is_match_is_unanchored_and_string_like() {
    assert!(holds(r#"IsMatch(name, "checkout")"#));
    assert!(holds(
        r#"IsMatch(attributes["http.status_code"], "^5\\d\\d$")"#
    ));
    assert!(!holds(r#"IsMatch(attributes["missing"], ".*")"#));
    assert!(holds(
        r#"not IsMatch(resource.attributes["deployment.environment"], "^stag")"#
    ));
}

#[test]
fn conditions_in_a_list_are_ored_and_events_are_checked() {
    assert_eq!(
        run(&["kind == 3", "kind == 2"], &[], ErrorMode::Propagate),
        Ok(Decision::Sampled)
    );
    assert_eq!(
        run(&["kind == 3"], &[], ErrorMode::Propagate),
        Ok(Decision::NotSampled)
    );
    assert_eq!(
        run(
            &[],
            &[r#"name == "exception" and attributes["exception.type"] == "TimeoutError""#],
            ErrorMode::Propagate
        ),
        Ok(Decision::Sampled)
    );
    // In the event context, `span.` reaches the span.
    assert_eq!(
        run(
            &[],
            &[r#"span.name == "GET /checkout" and time_unix_nano > 2000"#],
            ErrorMode::Propagate
        ),
        Ok(Decision::Sampled)
    );
    assert_eq!(
        run(&[], &[r#"name == "retry""#], ErrorMode::Propagate),
        Ok(Decision::NotSampled)
    );
}

#[test]
fn error_modes() {
    let bad = r#"IsMatch(attributes["list"], "x")"#;
    assert_eq!(
        run(&[bad], &[], ErrorMode::Propagate),
        Err(EvalError::Condition)
    );
    assert_eq!(
        run(&[bad, "kind == 2"], &[], ErrorMode::Ignore),
        Ok(Decision::Sampled)
    );
    assert_eq!(
        run(&[bad], &[], ErrorMode::Silent),
        Ok(Decision::NotSampled)
    );
    assert_eq!(
        run(&["name"], &[], ErrorMode::Propagate),
        Err(EvalError::Condition)
    );
}

#[test]
fn syntax_errors_and_unknown_paths_carry_their_column() {
    let cases = [
        (r#"name == "x"#, 9, "unterminated string"),
        ("kind === 2", 8, "unknown operator '='"),
        ("kind == ", 9, "expected a value, found end of condition"),
        (
            "kind == 0xabc",
            9,
            "a byte literal needs an even number of hex digits",
        ),
        ("kind = 2", 6, "unknown operator"),
        ("nmae == 1", 1, "unknown path \"nmae\" for span conditions"),
        (r#"attributes[0] == 1"#, 12, "a key in [ ] must be a string"),
        ("(kind == 2", 11, "expected RParen, found end of condition"),
        (
            "kind == SPAN_KIND_SIDEWAYS",
            9,
            "unknown enum SPAN_KIND_SIDEWAYS",
        ),
        (r#"IsMatch(name, "(")"#, 15, "invalid regex"),
        ("kind == 2 kind", 11, "unexpected \"kind\""),
        ("$", 1, "unexpected character"),
    ];
    for (src, column, message) in cases {
        let mut errors = Errors::default();
        assert!(OttlCondition::compile(
            ErrorMode::Propagate,
            &[src.to_string()],
            &[],
            "p",
            &mut errors
        )
        .is_none());
        let text = errors.check().unwrap_err().to_string();
        assert!(
            text.contains(&format!("p.span[0]: column {column}: {message}")),
            "{src}: {text}"
        );
    }
    let mut errors = Errors::default();
    assert!(OttlCondition::compile(
        ErrorMode::Propagate,
        &[],
        &["kind == 2".into()],
        "p",
        &mut errors
    )
    .is_none());
    let text = errors.check().unwrap_err().to_string();
    assert!(
        text.contains("p.spanevent[0]: column 1: unknown path \"kind\" for spanevent conditions"),
        "{text}"
    );
}

proptest::proptest! {
    /// Any text, however broken, parses or fails with a positioned error; never a panic.
    #[test]
    fn arbitrary_conditions_never_panic(src in ".{0,80}") {
        for ctx in [Ctx::Span, Ctx::SpanEvent] {
            if let Err(e) = parse::parse(&src, ctx) {
                proptest::prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1);
            }
        }
    }

    /// Conditions built from the grammar's own pieces parse.
    #[test]
    fn well_formed_conditions_parse(
        path in proptest::sample::select(vec!["name", "kind", "status.code", "attributes[\"k\"]", "resource.attributes[\"service.name\"]"]),
        op in proptest::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]),
        value in proptest::sample::select(vec!["\"x\"", "1", "2.5", "true", "nil", "SPAN_KIND_SERVER"]),
        negate in proptest::bool::ANY,
    ) {
        let src = format!("{}{path} {op} {value}", if negate { "not " } else { "" });
        proptest::prop_assert!(parse::parse(&src, Ctx::Span).is_ok(), "{}", src);
    }
}
