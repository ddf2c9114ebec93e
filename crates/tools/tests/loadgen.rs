//! The load generator against a real worker, and the completeness check catching loss,
//! duplicates and split traces.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tailgate::policy::parse_policies;
use tailgate::worker::config::parse_worker;
use tailgate::worker::Worker;
use tailgate_testkit::request;
use tailgate_tools::{
    drive, progress_bar, Expectations, Generator, Pace, Protocol, Sender, VerifySink,
    WorkloadConfig, TIMELINE_SECONDS, WORKER_HEADER,
};

const POLICIES: &str = r#"
- name: health-checks
  type: drop
  drop:
    drop_sub_policy:
      - {name: probes, type: string_attribute, string_attribute: {key: url.path, values: [/healthz]}}
- {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
- {name: slow, type: latency, latency: {threshold_ms: 500}}
- {name: ten-percent, type: probabilistic, probabilistic: {sampling_percentage: 10}}
"#;

fn worker_config(sink: std::net::SocketAddr, name: &str) -> String {
    let policies: String = POLICIES.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}, http: {{endpoint: "127.0.0.1:0"}}}}}}}}
tail_sampling:
  decision_wait: 1s
  record_policy: true
  policies:
{policies}
exporters:
  otlp:
    endpoint: "{sink}"
    tls: {{insecure: true}}
    headers: {{{WORKER_HEADER}: {name}}}
    retry_on_failure: {{initial_interval: 10ms, max_interval: 100ms}}
admin: {{endpoint: "127.0.0.1:0"}}
"#
    )
}

/// The verifier's report once every must-keep trace has arrived and nothing arrived for
/// half a second (or after 30 s).
async fn settled_report(sink: &VerifySink, expected: &Expectations) -> tailgate_tools::Report {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !sink.settled(expected, Duration::from_millis(500))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sink.report(expected)
}

fn workload(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        late_rate: 0.05,
        batch_size: 64,
        ..WorkloadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kept_trace_comes_back_whole_from_a_real_worker() {
    let sink = VerifySink::start("127.0.0.1:0").await.unwrap();
    let worker = Worker::start(parse_worker(&worker_config(sink.addr, "w0")).unwrap())
        .await
        .unwrap();
    let policies = parse_policies(POLICIES, "test", false).unwrap();
    for protocol in [Protocol::Grpc, Protocol::Http] {
        let mut generator = Generator::new(workload(protocol as u64 + 11), 6_000, None)
            .with_expectations(Expectations::new(policies.clone()));
        let endpoint = match protocol {
            Protocol::Grpc => worker.grpc_addr,
            Protocol::Http => worker.http_addr,
        }
        .unwrap()
        .to_string();
        let sender = Sender::start(&endpoint, protocol, 6).unwrap();
        let handed = drive(
            generator.by_ref(),
            &sender,
            &Pace::UNLIMITED,
            Duration::from_millis(2500),
            &progress_bar(None),
        )
        .await;
        let stats = sender.finish().await;
        assert_eq!(
            stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
            handed
        );
        let expected = generator.expectations.take().unwrap();
        let report = settled_report(&sink, &expected).await;
        assert!(report.passed(), "{protocol:?}:\n{}", report.render());
        assert!(report.kept_traces > 10, "{}", report.render());
        assert_eq!(report.complete_traces, report.kept_traces);
        assert_eq!(report.must_keep_missing, 0);
        // No budget policy: the prediction is exact, trace by trace.
        assert_eq!(report.kept_by_budget, 0);
        for p in &report.policies {
            assert_eq!(p.should_keep, p.kept_of_those, "{}", report.render());
        }
        let errors = report.policies.iter().find(|p| p.name == "errors").unwrap();
        assert!(errors.should_keep > 0 && errors.decided > 0);
        // The second run's traces are new; the first run's stay counted as not generated.
        if protocol == Protocol::Http {
            assert!(report.unexpected_spans > 0);
        }
    }
    worker.shutdown().await;
    sink.stop().await;
}

#[tokio::test]
async fn the_check_catches_lost_duplicated_and_split_traces() {
    let sink = VerifySink::start("127.0.0.1:0").await.unwrap();
    let policies = parse_policies("[{name: all, type: always_sample}]", "test", false).unwrap();
    let mut expected = Expectations::new(policies);
    let mut workload = tailgate_tools::Workload::new(WorkloadConfig {
        health_check_rate: 0.0,
        late_rate: 0.0,
        ..WorkloadConfig::default()
    });
    let traces: Vec<_> = (0..3).map(|_| workload.next_trace()).collect();
    for t in &traces {
        expected.record(t, workload.resources());
    }
    let mut client = TraceServiceClient::connect(format!("http://{}", sink.addr))
        .await
        .unwrap();
    let mut export = async |worker: &str, spans: Vec<_>| {
        let mut r = tonic::Request::new(request("svc", spans));
        r.metadata_mut()
            .insert(WORKER_HEADER, worker.parse().unwrap());
        client.export(r).await.unwrap();
    };
    let spans = |i: usize| -> Vec<_> { traces[i].spans.iter().map(|s| s.span.clone()).collect() };
    // Trace 0 whole; trace 1 missing one span; trace 2 from two workers, one span twice.
    export("a", spans(0)).await;
    export("a", spans(1)[1..].to_vec()).await;
    let whole = spans(2);
    export("a", whole[..1].to_vec()).await;
    export("b", whole).await;

    let report = sink.report(&expected);
    assert_eq!(report.kept_traces, 3);
    assert_eq!(report.complete_traces, 2);
    assert_eq!(report.lost_spans, 1);
    assert_eq!(report.duplicate_spans, 1);
    assert_eq!(report.split_traces, 1);
    assert_eq!(report.workers, 2);
    assert!(!report.passed());
    assert!(report.render().contains("FAIL"));
    // After a reset (the bench's, after its warm-up) nothing received before counts.
    sink.reset();
    assert_eq!(sink.spans(), 0);
    let report = sink.report(&expected);
    assert_eq!((report.kept_traces, report.workers), (0, 0));
    assert_eq!(report.duplicate_spans + report.split_traces, 0);
    export("a", spans(0)).await;
    assert_eq!(sink.report(&expected).complete_traces, 1);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_verifies_a_worker_and_exits_zero() {
    let sink = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let worker = Worker::start(parse_worker(&worker_config(sink, "w0")).unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.yaml");
    std::fs::write(&policies, POLICIES).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tailgate-tools"))
        .args([
            "loadgen",
            "--spans",
            "3000",
            "--verify",
            "--late-after",
            "2500ms",
        ])
        .args(["--endpoint", &worker.grpc_addr.unwrap().to_string()])
        .args([
            "--sink",
            &sink.to_string(),
            "--seed",
            "42",
            "--batch-size",
            "50",
        ])
        .arg("--policies")
        .arg(&policies)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("PASS: every span accounted for"),
        "{stdout}"
    );
    assert!(stdout.contains("refused 0"), "{stdout}");
    worker.shutdown().await;
}

/// Over a generated workload with a share of head-sampled traces, the adjusted counts of
/// the kept spans estimate, per service, the spans the traffic represents within the
/// estimate's statistical error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjusted_counts_of_kept_spans_estimate_the_traffic_per_service() {
    const SAMPLING: &str = r#"
- {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
- {name: ten-percent, type: probabilistic, probabilistic: {sampling_percentage: 10}}
- {name: quarter, type: probabilistic, probabilistic: {sampling_percentage: 25, mode: equalizing}}
"#;
    let sink = VerifySink::start("127.0.0.1:0").await.unwrap();
    let policies: String = SAMPLING.lines().map(|l| format!("    {l}\n")).collect();
    let config = worker_config(sink.addr, "w0").replace(
        &POLICIES
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>(),
        &policies,
    );
    let worker = Worker::start(parse_worker(&config).unwrap()).await.unwrap();
    let workload = WorkloadConfig {
        head_sampled_rate: 0.4,
        head_sampling_percentage: 50.0,
        late_rate: 0.0,
        ..workload(29)
    };
    let mut generator = Generator::new(workload, 40_000, None).with_expectations(
        Expectations::new(parse_policies(SAMPLING, "test", false).unwrap()),
    );
    let endpoint = worker.grpc_addr.unwrap().to_string();
    let sender = Sender::start(&endpoint, Protocol::Grpc, 6).unwrap();
    drive(
        generator.by_ref(),
        &sender,
        &Pace::UNLIMITED,
        Duration::from_millis(100),
        &progress_bar(None),
    )
    .await;
    sender.finish().await;
    let expected = generator.expectations.take().unwrap();
    let report = settled_report(&sink, &expected).await;
    eprintln!("{}", report.render());
    assert!(report.passed(), "{}", report.render());
    assert_eq!(report.unweighted_spans, 0, "{}", report.render());
    assert!(report.estimates.len() > 5);
    for e in &report.estimates {
        assert!(
            e.deviation().abs() < 4.0,
            "{} estimated {:.0} for {:.0} ({:.1} standard errors)\n{}",
            e.service,
            e.estimated,
            e.represented,
            e.deviation(),
            report.render()
        );
    }
    worker.shutdown().await;
    sink.stop().await;
}

/// Two workers that know each other behind a router, an `ema_throughput` goal for the
/// fleet, and the load generator's skewed workload at three times the goal, then nine
/// times, then three again: the fleet total meets the goal at both rates, every busy
/// endpoint keeps traces, every kept span carries its probability, and the adjusted counts
/// estimate each service's spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_goal_holds_for_a_fleet_of_two_behind_a_router() {
    const GOAL: f64 = 400.0;
    let sink = VerifySink::start("127.0.0.1:0").await.unwrap();
    let endpoints = [tailgate_testkit::free_port(), tailgate_testkit::free_port()]
        .map(|p| format!("127.0.0.1:{p}"));
    let mut workers = Vec::new();
    for (i, me) in endpoints.iter().enumerate() {
        let text = format!(
            r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "{me}"}}}}}}}}
tail_sampling:
  decision_wait: 2s
  policies:
    - name: adaptive
      type: ema_throughput
      ema_throughput: {{goal_throughput_per_sec: {GOAL}, field_list: [root.service.name, root.http.route], adjustment_interval: 1s}}
membership:
  advertise: "{me}"
  resolver: {{static: {{hostnames: ["{}", "{}"]}}}}
  handover_window: 2s
  protocol: {{otlp: {{tls: {{insecure: true}}}}}}
exporters:
  otlp:
    endpoint: "{}"
    tls: {{insecure: true}}
    headers: {{{WORKER_HEADER}: w{i}}}
admin: {{endpoint: "127.0.0.1:0"}}
shutdown: {{grace_period: 3s}}
"#,
            endpoints[0], endpoints[1], sink.addr
        );
        workers.push(Worker::start(parse_worker(&text).unwrap()).await.unwrap());
    }
    let router = tailgate::router::Router::start(
        tailgate::router::config::parse_router(&format!(
            r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters:
  loadbalancing:
    protocol: {{otlp: {{tls: {{insecure: true}}}}}}
    resolver: {{static: {{hostnames: ["{}", "{}"]}}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#,
            endpoints[0], endpoints[1]
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    let policies = parse_policies(
        &format!("[{{name: adaptive, type: ema_throughput, ema_throughput: {{goal_throughput_per_sec: {GOAL}}}}}]"),
        "test",
        false,
    )
    .unwrap();
    let workload = WorkloadConfig {
        late_rate: 0.0,
        skew: 1.0,
        ..workload(41)
    };
    // 20 s at 1 000 spans/s, 30 s at 3 000, 30 s at 1 000: past a whole minute, over which
    // busy keys are judged.
    let pace: Pace = "1000:20s,3000:30s,1000".parse().unwrap();
    let mut generator = Generator::new(workload, 1000 * 20 + 3000 * 30 + 1000 * 30, None)
        .with_expectations(Expectations::new(policies));
    let sender = Sender::start(&router.grpc_addr.unwrap().to_string(), Protocol::Grpc, 4).unwrap();
    drive(
        generator.by_ref(),
        &sender,
        &pace,
        Duration::from_millis(100),
        &progress_bar(None),
    )
    .await;
    sender.finish().await;
    let expected = generator.expectations.take().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = sink.report(&expected);
    eprintln!("{}", report.render());
    // The kept rate per phase, from the sink's 10 s windows classified by what was sent in
    // them (a loaded machine may stretch the phases and send a phase unevenly: the high
    // phase's windows are those sending 2 000 to 4 000 spans/s): the first window of each phase (the
    // change) and the last of the run are left out; a worker keeps some 15 traces a second
    // of very different sizes, so shorter windows vary by more than the bound.
    let timeline = &report.timeline;
    let rate = |w: &tailgate_tools::Window| w.kept_spans as f64 / TIMELINE_SECONDS as f64;
    let sent = |i: usize| timeline[i].sent_spans as f64 / TIMELINE_SECONDS as f64;
    let high: Vec<usize> = (0..timeline.len() - 1)
        .filter(|&i| (2000.0..=4000.0).contains(&sent(i)))
        .collect();
    let after = high.last().copied().unwrap_or(0) + 2;
    let low: Vec<usize> = (after..timeline.len() - 1)
        .filter(|&i| (800.0..=1200.0).contains(&sent(i)))
        .collect();
    assert!(high.len() >= 3 && !low.is_empty(), "{}", report.render());
    for (input, windows) in [("3 000", &high[1..]), ("1 000", &low[..])] {
        let kept = windows.iter().map(|&i| rate(&timeline[i])).sum::<f64>() / windows.len() as f64;
        assert!(
            (GOAL * 0.75..=GOAL * 1.25).contains(&kept),
            "the fleet kept {kept:.0} spans/s of {input} for a goal of {GOAL}\n{}",
            report.render()
        );
    }
    assert_eq!(report.split_traces, 0);
    assert!(report.busy_keys > 20, "{}", report.render());
    assert_eq!(report.busy_keys_not_kept, Vec::<String>::new());
    assert_eq!(report.unweighted_spans, 0);
    // Per service, within the estimate's statistical error (a service keeps a hundred
    // traces or so in the run, some of them hundreds of spans: about a tenth).
    for e in &report.estimates {
        assert!(
            e.deviation().abs() < 5.0,
            "{}: {:.0} for {:.0}",
            e.service,
            e.estimated,
            e.represented
        );
    }
    for w in workers {
        let text = tailgate_testkit::scrape(w.admin_addr).await.unwrap();
        assert_eq!(
            tailgate_testkit::metric(&text, "tailgate_adaptive_goal", &[("policy", "adaptive")]),
            GOAL / 2.0
        );
        w.shutdown().await;
    }
    router.shutdown().await;
    sink.stop().await;
}
