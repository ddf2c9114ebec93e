//! `tailgate-tools bench`: the end-to-end benchmark. Runs the decode-only baseline (this
//! binary) and a prost decode of the same requests in this process, then a router and
//! workers (the `tailgate` binary) as child processes, drives both with the same generated
//! requests, and reports spans per CPU-second of each process (from /proc) against both
//! baselines, resident memory per buffered span against wire bytes, decision lateness and
//! the completeness check.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::{
    drive, progress_bar, Expectations, Generator, Pace, Protocol, Report, Sender, VerifySink,
};
use crate::{Outgoing, WorkloadConfig, WORKER_HEADER};
use tailgate::policy::{parse_policies, PolicySet};
use tailgate::process::resident_bytes_of;
use tailgate::telemetry::{self, LATENESS_BUCKETS_S};
use tailgate::worker::config::parse_worker;
use tailgate_testkit::{free_addr, metric, scrape};

/// What `tailgate bench` runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `tailgate` binary the router and workers run.
    pub tailgate: PathBuf,
    pub spans: u64,
    pub workers: usize,
    pub workload: WorkloadConfig,
    pub connections: usize,
    pub decision_wait: Duration,
    /// Where the child processes' configs and logs go.
    pub dir: PathBuf,
    /// Also run the workers with storage (`Some(fsync)`), against the same run without, and
    /// measure a replay.
    pub storage: Option<bool>,
    /// Also run this Rotel binary forwarding the same requests, for the router's ratio.
    pub rotel: Option<PathBuf>,
}

/// The benchmark's policy set (issue 7's "realistic" set).
pub const POLICIES: &str = r#"
    - name: health-checks
      type: drop
      drop:
        drop_sub_policy:
          - name: probe-routes
            type: string_attribute
            string_attribute: {key: url.path, values: ['^/(healthz?|readyz|livez)$'], enabled_regex_matching: true}
    - name: errors
      type: status_code
      status_code: {status_codes: [ERROR]}
    - name: slow
      type: latency
      latency: {threshold_ms: 500}
    - name: ten-percent
      type: probabilistic
      probabilistic: {sampling_percentage: 10}
    - name: volume-cap
      type: rate_limiting
      rate_limiting: {spans_per_second: 2000}
"#;

const LATENESS_QUANTILES: [f64; 2] = [0.5, 0.99];

/// How often the benchmark samples the workers' buffered spans and memory (their own
/// metrics, on the admin endpoint).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How often the benchmark scrapes the workers' span metrics (their `prometheus`
/// exporter's endpoint), as a Prometheus server would.
const SPAN_METRICS_SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// The workers' live heap (jemalloc's allocated bytes), from their process metrics.
const HEAP_ALLOC: &str = "otelcol_process_runtime_heap_alloc_bytes";

/// Serves OTLP/gRPC and only decodes each request: the baseline process.
pub async fn decode_sink(endpoint: &str) -> anyhow::Result<()> {
    struct Decode;
    #[tonic::async_trait]
    impl TraceService for Decode {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            std::hint::black_box(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }
    let listener = tokio::net::TcpListener::bind(endpoint).await?;
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Decode).max_decoding_message_size(64 << 20))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}

/// Passes over the requests for the in-process decode: enough CPU time that the clock's
/// 10 ms ticks are a small part of it.
const DECODE_PASSES: usize = 3;

/// Spans per CPU-second of prost decoding the same requests in this process, on one
/// thread, with no network, HTTP/2 or server around it: the floor of what reading the
/// requests costs, beside the decode-only process. CPU time is the thread's own, from
/// `/proc/<pid>/task/<tid>/stat`.
pub(crate) fn prost_decode_spans_per_cpu_second(requests: &[Outgoing]) -> anyhow::Result<f64> {
    use prost::Message;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // `/proc/thread-self` links to `<pid>/task/<tid>`.
                let link = std::fs::read_link("/proc/thread-self")?;
                let tid: i32 = link
                    .file_name()
                    .and_then(|t| t.to_str()?.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("unreadable {}", link.display()))?;
                let thread = procfs::process::Process::myself()?.task_from_tid(tid)?;
                let ticks = procfs::ticks_per_second() as f64;
                let cpu = || -> anyhow::Result<f64> {
                    let stat = thread.stat()?;
                    Ok((stat.utime + stat.stime) as f64 / ticks)
                };
                let before = cpu()?;
                let mut spans = 0u64;
                for _ in 0..DECODE_PASSES {
                    for r in requests {
                        let request = ExportTraceServiceRequest::decode(r.body.clone())?;
                        spans += std::hint::black_box(request)
                            .resource_spans
                            .iter()
                            .flat_map(|rs| &rs.scope_spans)
                            .map(|ss| ss.spans.len() as u64)
                            .sum::<u64>();
                    }
                }
                let seconds = cpu()? - before;
                Ok(spans as f64 / seconds.max(1.0 / ticks))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the decode thread panicked"))?
    })
}

/// Spans per CPU-second of Rotel receiving the requests over OTLP/gRPC and forwarding them
/// (OTLP/gRPC without compression, as the benchmark's router sends to its workers) to a
/// sink in this process, counted until every span arrived, after the warm-up went through
/// as it does for tailgate.
async fn rotel(
    path: &Path,
    options: &BenchOptions,
    requests: &[Outgoing],
    spans: u64,
    warm_up: &WarmUp,
) -> anyhow::Result<f64> {
    let sink = tailgate_testkit::Sink::start(vec![]).await;
    let addr = free_addr();
    let rotel = Proc::spawn(
        "rotel",
        path,
        &[
            "start",
            "--otlp-grpc-endpoint",
            &addr.to_string(),
            "--exporter",
            "otlp",
            "--otlp-exporter-endpoint",
            &format!("http://{}", sink.addr),
            "--otlp-exporter-protocol",
            "grpc",
            "--otlp-exporter-compression",
            "none",
        ],
        &options.dir,
    )
    .await?;
    wait_listening(addr, "rotel").await?;
    eprintln!("rotel: forwarding");
    send_all(&warm_up.requests, addr, options.connections, Duration::ZERO).await?;
    let warm = warm_up.spans as usize;
    let warmed = sink.wait_for_spans(warm, Duration::from_secs(60)).await;
    anyhow::ensure!(
        warmed >= warm,
        "rotel forwarded {warmed} of {warm} warm-up spans"
    );
    let before = rotel.cpu()?;
    send_all(requests, addr, options.connections, Duration::ZERO).await?;
    let arrived = sink
        .wait_for_spans(warm + spans as usize, Duration::from_secs(60))
        .await
        .saturating_sub(warm);
    let cpu = rotel.cpu()? - before;
    rotel.stop().await;
    sink.stop().await;
    anyhow::ensure!(
        arrived as u64 >= spans,
        "rotel forwarded {arrived} of {spans} spans"
    );
    Ok(spans as f64 / cpu.as_secs_f64().max(1e-9))
}

/// A child process and its CPU time and memory from /proc.
struct Proc {
    name: String,
    child: Child,
    pid: i32,
}

impl Proc {
    async fn spawn(name: &str, program: &Path, args: &[&str], dir: &Path) -> anyhow::Result<Proc> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow::anyhow!("{name} exited at once"))?;
        Ok(Proc {
            name: name.into(),
            child,
            pid,
        })
    }

    /// User plus system CPU time so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = procfs::process::Process::new(self.pid)?.stat()?;
        let ticks = stat.utime + stat.stime;
        Ok(Duration::from_secs_f64(
            ticks as f64 / procfs::ticks_per_second() as f64,
        ))
    }

    fn rss(&self) -> anyhow::Result<u64> {
        rss_of(self.pid)
    }

    async fn stop(mut self) {
        // SIGTERM first so the process drains; the kill is the backstop.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(process = %self.name, "did not stop in time; killing it");
            let _ = self.child.kill().await;
        }
    }
}

fn rss_of(pid: i32) -> anyhow::Result<u64> {
    resident_bytes_of(procfs::process::Process::new(pid)?)
        .ok_or_else(|| anyhow::anyhow!("no resident memory for process {pid}"))
}

async fn wait_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn send_all(
    requests: &[Outgoing],
    endpoint: SocketAddr,
    connections: usize,
    late_after: Duration,
) -> anyhow::Result<(u64, std::sync::Arc<crate::SendStats>)> {
    let sender = Sender::start(&endpoint.to_string(), Protocol::Grpc, connections)?;
    let total = requests.iter().map(|r| u64::from(r.spans)).sum();
    let bar = progress_bar(Some(total));
    let handed = drive(
        requests.iter().cloned(),
        &sender,
        &Pace::UNLIMITED,
        late_after,
        &bar,
    )
    .await;
    bar.finish_and_clear();
    Ok((handed, sender.finish().await))
}

/// What the benchmark measured.
pub struct Results {
    pub spans: u64,
    pub wire_bytes_per_span: f64,
    pub baseline_spans_per_cpu_second: f64,
    /// Decoding the same requests with prost in this process (no network).
    pub prost_decode_spans_per_cpu_second: f64,
    /// Rotel forwarding the same requests (with `--rotel`).
    pub rotel_spans_per_cpu_second: Option<f64>,
    pub router_spans_per_cpu_second: f64,
    pub worker_spans_per_cpu_second: f64,
    pub peak_buffered_spans: u64,
    /// Resident memory at the peak beyond a warmed-up idle worker's, per buffered span.
    pub rss_bytes_per_buffered_span: f64,
    /// The same beyond the workers' resident memory before any request.
    pub cold_rss_bytes_per_buffered_span: f64,
    /// Live allocations (jemalloc's allocated bytes) per buffered span at the same peak:
    /// what resident memory has beyond it is allocator pages not in use.
    pub heap_bytes_per_buffered_span: f64,
    pub lateness_ms: [f64; 2],
    pub decision_wait: Duration,
    pub report: Report,
    pub storage: Option<StorageResults>,
}

/// The same workers on a log, and a replay.
pub struct StorageResults {
    pub fsync: bool,
    pub worker_spans_per_cpu_second: f64,
    pub rss_bytes_per_buffered_span: f64,
    pub report: Report,
    /// One worker killed with every span pending, and started again on its log.
    pub replayed_spans: u64,
    pub replay_seconds: f64,
}

/// Runs the benchmark.
pub async fn run(options: BenchOptions) -> anyhow::Result<Results> {
    std::fs::create_dir_all(&options.dir)?;
    let policies = parse_policies(POLICIES, "bench policies", false)?;
    let warm_up = WarmUp::generate(&options, &policies);
    eprintln!("generating {} spans ...", options.spans);
    let mut generator = Generator::new(options.workload.clone(), options.spans, None)
        .with_expectations(Expectations::new(policies));
    let requests: Vec<Outgoing> = generator.by_ref().collect();
    let expectations = generator.expectations.take().expect("set above");
    let spans: u64 = requests.iter().map(|r| u64::from(r.spans)).sum();
    let wire: u64 = requests.iter().map(|r| r.body.len() as u64).sum();

    // 1. The decode-only baseline on the same requests.
    let addr = free_addr();
    let baseline = Proc::spawn(
        "baseline",
        &std::env::current_exe()?,
        &["decode-sink", "--endpoint", &addr.to_string()],
        &options.dir,
    )
    .await?;
    wait_listening(addr, "the baseline").await?;
    eprintln!("baseline: decode only");
    // Warmed up as the fleet is, so every figure is of a process that served traffic before.
    send_all(&warm_up.requests, addr, options.connections, Duration::ZERO).await?;
    let before = baseline.cpu()?;
    let (_, stats) = send_all(&requests, addr, options.connections, Duration::ZERO).await?;
    let baseline_cpu = baseline.cpu()? - before;
    baseline.stop().await;
    let delivered = crate::SendStats::get(&stats.delivered);
    anyhow::ensure!(
        delivered == spans,
        "the baseline took {delivered} of {spans} spans"
    );
    eprintln!("baseline: prost decode in this process");
    let prost_decode = prost_decode_spans_per_cpu_second(&requests)?;
    let rotel = match &options.rotel {
        Some(path) => Some(rotel(path, &options, &requests, spans, &warm_up).await?),
        None => None,
    };

    // 2. Router and workers, exporting to the verify sink; then, with storage, the same
    // again on a log, and a replay.
    let plain = fleet(&options, &requests, &expectations, &warm_up, None).await?;
    let storage = match options.storage {
        Some(fsync) => {
            let dir = options.dir.join("storage");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let fleet = fleet(
                &options,
                &requests,
                &expectations,
                &warm_up,
                Some((&dir, fsync)),
            )
            .await?;
            let replay_dir = options.dir.join("replay");
            let _ = std::fs::remove_dir_all(&replay_dir);
            std::fs::create_dir_all(&replay_dir)?;
            let (replayed_spans, replay_seconds) =
                replay(&options, &requests, &replay_dir, fsync).await?;
            Some(StorageResults {
                fsync,
                worker_spans_per_cpu_second: fleet.worker_spans_per_cpu_second,
                rss_bytes_per_buffered_span: fleet.rss_bytes_per_buffered_span,
                report: fleet.report,
                replayed_spans,
                replay_seconds,
            })
        }
        None => None,
    };
    Ok(Results {
        spans,
        wire_bytes_per_span: wire as f64 / spans as f64,
        baseline_spans_per_cpu_second: spans as f64 / baseline_cpu.as_secs_f64().max(1e-9),
        prost_decode_spans_per_cpu_second: prost_decode,
        rotel_spans_per_cpu_second: rotel,
        router_spans_per_cpu_second: plain.router_spans_per_cpu_second,
        worker_spans_per_cpu_second: plain.worker_spans_per_cpu_second,
        peak_buffered_spans: plain.peak_buffered_spans,
        rss_bytes_per_buffered_span: plain.rss_bytes_per_buffered_span,
        cold_rss_bytes_per_buffered_span: plain.cold_rss_bytes_per_buffered_span,
        heap_bytes_per_buffered_span: plain.heap_bytes_per_buffered_span,
        lateness_ms: plain.lateness_ms,
        decision_wait: options.decision_wait,
        report: plain.report,
        storage,
    })
}

/// What one run of the router and workers measured.
struct Fleet {
    router_spans_per_cpu_second: f64,
    worker_spans_per_cpu_second: f64,
    peak_buffered_spans: u64,
    rss_bytes_per_buffered_span: f64,
    cold_rss_bytes_per_buffered_span: f64,
    heap_bytes_per_buffered_span: f64,
    lateness_ms: [f64; 2],
    report: Report,
}

/// A small load of its own that every measured process serves before it is measured.
struct WarmUp {
    requests: Vec<Outgoing>,
    expectations: Expectations,
    spans: u64,
}

impl WarmUp {
    /// A twentieth of the load (at least 2 000 spans), from another seed so that none of
    /// its traces is one of the load's.
    fn generate(options: &BenchOptions, policies: &PolicySet) -> WarmUp {
        let mut workload = options.workload.clone();
        workload.seed = workload.seed.wrapping_add(1);
        let mut generator = Generator::new(workload, (options.spans / 20).max(2_000), None)
            .with_expectations(Expectations::new(policies.clone()));
        let requests: Vec<Outgoing> = generator.by_ref().collect();
        let expectations = generator.expectations.take().expect("set above");
        let spans = requests.iter().map(|r| u64::from(r.spans)).sum();
        WarmUp {
            requests,
            expectations,
            spans,
        }
    }
}

/// Adds a worker's decision lateness buckets (cumulative, as exposed) to `buckets`.
fn add_lateness(text: &str, buckets: &mut [f64]) {
    let name = format!("{}_seconds_bucket", telemetry::DECISION_LATENESS);
    for (i, le) in LATENESS_BUCKETS_S.iter().enumerate() {
        buckets[i] += metric(text, &name, &[("le", &le.to_string())]);
    }
    buckets[LATENESS_BUCKETS_S.len()] += metric(text, &name, &[("le", "+Inf")]);
}

/// Runs the router and workers (on a log in `storage` when given, with fsync or not) on
/// `requests`, exporting to a verify sink.
async fn fleet(
    options: &BenchOptions,
    requests: &[Outgoing],
    expectations: &Expectations,
    warm_up: &WarmUp,
    storage: Option<(&Path, bool)>,
) -> anyhow::Result<Fleet> {
    let spans: u64 = requests.iter().map(|r| u64::from(r.spans)).sum();
    // 2. Router and workers, exporting to the verify sink.
    let sink = VerifySink::start("127.0.0.1:0").await?;
    let mut workers = Vec::new();
    let mut worker_admins = Vec::new();
    let mut worker_span_metrics = Vec::new();
    let mut worker_endpoints = Vec::new();
    for i in 0..options.workers {
        let (grpc, admin, span_metrics) = (free_addr(), free_addr(), free_addr());
        let storage = storage.map(|(dir, fsync)| (dir.join(format!("worker-{i}")), fsync));
        if let Some((dir, _)) = &storage {
            std::fs::create_dir_all(dir)?;
        }
        let config = worker_config(
            i,
            grpc,
            (admin, span_metrics),
            sink.addr,
            options.decision_wait,
            storage.as_ref().map(|(d, f)| (d.as_path(), *f)),
        );
        parse_worker(&config)?;
        let path = options.dir.join(format!("worker-{i}.yaml"));
        std::fs::write(&path, config)?;
        let path = path.display().to_string();
        workers.push(
            Proc::spawn(
                &format!("worker-{i}"),
                &options.tailgate,
                &["worker", "--config", &path],
                &options.dir,
            )
            .await?,
        );
        worker_admins.push(admin);
        worker_span_metrics.push(span_metrics);
        worker_endpoints.push(grpc);
    }
    let (router_grpc, router_admin) = (free_addr(), free_addr());
    let router_path = options.dir.join("router.yaml");
    std::fs::write(
        &router_path,
        router_config(router_grpc, router_admin, &worker_endpoints),
    )?;
    let router = Proc::spawn(
        "router",
        &options.tailgate,
        &["router", "--config", &router_path.display().to_string()],
        &options.dir,
    )
    .await?;
    for (i, addr) in worker_endpoints.iter().enumerate() {
        wait_listening(*addr, &format!("worker-{i}")).await?;
    }
    wait_listening(router_grpc, "the router").await?;

    // Memory per buffered span is what buffering adds to an idle worker that has served
    // traffic before: the warm-up's traces go through every step (code paged in,
    // connections and their buffers set up, span metrics series created, the allocator's
    // pages for requests in flight) and are all decided before the idle figures are read.
    // The figure from a cold start is printed beside it.
    let cold_rss: u64 = workers.iter().map(Proc::rss).sum::<anyhow::Result<u64>>()?;
    eprintln!("warming up with {} spans ...", warm_up.spans);
    send_all(
        &warm_up.requests,
        router_grpc,
        options.connections,
        Duration::ZERO,
    )
    .await?;
    let deadline = Instant::now() + options.decision_wait + Duration::from_secs(60);
    loop {
        let mut buffered = 0.0;
        for admin in &worker_admins {
            buffered += metric(&scrape(*admin).await?, telemetry::BUFFERED_SPANS, &[]);
        }
        if buffered == 0.0 && sink.settled(&warm_up.expectations, Duration::from_secs(2)) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the warm-up was not all decided");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sink.reset();
    let idle_rss: u64 = workers.iter().map(Proc::rss).sum::<anyhow::Result<u64>>()?;
    let mut idle_heap = 0.0;
    let mut lateness_before = vec![0.0; LATENESS_BUCKETS_S.len() + 1];
    for admin in &worker_admins {
        let text = scrape(*admin).await?;
        idle_heap += metric(&text, HEAP_ALLOC, &[]);
        add_lateness(&text, &mut lateness_before);
    }
    let router_before = router.cpu()?;
    let workers_before: Duration = workers.iter().map(Proc::cpu).sum::<anyhow::Result<_>>()?;
    eprintln!("router and {} worker(s)", options.workers);

    // Memory is sampled while the load runs: the peak of buffered spans, and the resident
    // memory the workers had then, from the workers' own metrics. Their span metrics (about
    // 1.7 MB of text per worker at the default workload) are scraped as Prometheus would.
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let admins = worker_admins.clone();
        let span_metrics = worker_span_metrics.clone();
        let pids: Vec<i32> = workers.iter().map(|w| w.pid).collect();
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            let mut peak = (0u64, 0u64, 0.0);
            let mut span_metrics_scraped: Option<Instant> = None;
            while !stop.is_cancelled() {
                if span_metrics_scraped.is_none_or(|t| t.elapsed() >= SPAN_METRICS_SCRAPE_EVERY) {
                    span_metrics_scraped = Some(Instant::now());
                    for endpoint in &span_metrics {
                        let _ = scrape(*endpoint).await;
                    }
                }
                let (mut buffered, mut heap) = (0.0, 0.0);
                for admin in &admins {
                    if let Ok(text) = scrape(*admin).await {
                        buffered += metric(&text, telemetry::BUFFERED_SPANS, &[]);
                        heap += metric(&text, HEAP_ALLOC, &[]);
                    }
                }
                let rss: u64 = pids.iter().filter_map(|p| rss_of(*p).ok()).sum();
                if buffered as u64 > peak.0 {
                    peak = (buffered as u64, rss, heap);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            peak
        })
    };
    let late_after = options.decision_wait + Duration::from_secs(2);
    let (_, stats) = send_all(requests, router_grpc, options.connections, late_after).await?;
    let refused = crate::SendStats::get(&stats.refused);

    // Wait for every decision and export, then read the books.
    eprintln!("waiting for decisions ...");
    let deadline = Instant::now() + options.decision_wait + Duration::from_secs(60);
    while !sink.settled(expectations, Duration::from_secs(2)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop_sampling.cancel();
    let (peak_buffered, peak_rss, peak_heap) = sampler.await?;
    let router_cpu = router.cpu()? - router_before;
    let workers_cpu = workers
        .iter()
        .map(Proc::cpu)
        .sum::<anyhow::Result<Duration>>()?
        - workers_before;

    let mut lateness = vec![0.0; LATENESS_BUCKETS_S.len() + 1];
    for admin in &worker_admins {
        add_lateness(&scrape(*admin).await?, &mut lateness);
    }
    // The main load's decisions only.
    for (bucket, before) in lateness.iter_mut().zip(&lateness_before) {
        *bucket -= before;
    }
    let report = sink.report(expectations);
    sink.stop().await;
    router.stop().await;
    for w in workers {
        w.stop().await;
    }
    anyhow::ensure!(refused == 0, "the router refused {refused} spans");

    let per_cpu = |cpu: Duration| spans as f64 / cpu.as_secs_f64().max(1e-9);
    Ok(Fleet {
        router_spans_per_cpu_second: per_cpu(router_cpu),
        worker_spans_per_cpu_second: per_cpu(workers_cpu),
        peak_buffered_spans: peak_buffered,
        rss_bytes_per_buffered_span: peak_rss.saturating_sub(idle_rss) as f64
            / peak_buffered.max(1) as f64,
        cold_rss_bytes_per_buffered_span: peak_rss.saturating_sub(cold_rss) as f64
            / peak_buffered.max(1) as f64,
        heap_bytes_per_buffered_span: (peak_heap - idle_heap).max(0.0)
            / peak_buffered.max(1) as f64,
        lateness_ms: LATENESS_QUANTILES.map(|q| quantile(&lateness, q) * 1000.0),
        report,
    })
}

/// One worker on a log: every request sent to it with a decision_wait long enough that
/// all of it is pending, then SIGKILL, and a new worker on the same directory: the spans it
/// replayed and how long that took.
async fn replay(
    options: &BenchOptions,
    requests: &[Outgoing],
    dir: &Path,
    fsync: bool,
) -> anyhow::Result<(u64, f64)> {
    let (grpc, admin, sink) = (free_addr(), free_addr(), free_addr());
    let config = worker_config(
        0,
        grpc,
        (admin, free_addr()),
        sink,
        Duration::from_secs(600),
        Some((dir, fsync)),
    );
    let path = options.dir.join("replay.yaml");
    std::fs::write(&path, config)?;
    let path = path.display().to_string();
    let args = ["worker", "--config", path.as_str()];
    let mut first = Proc::spawn("replay-first", &options.tailgate, &args, &options.dir).await?;
    wait_listening(grpc, "the worker").await?;
    eprintln!("replay: filling one worker's log");
    let (_, stats) = send_all(requests, grpc, options.connections, Duration::ZERO).await?;
    let delivered = crate::SendStats::get(&stats.delivered);
    first.child.kill().await?;
    let second = Proc::spawn("replay-second", &options.tailgate, &args, &options.dir).await?;
    wait_listening(grpc, "the restarted worker").await?;
    let text = scrape(admin).await?;
    let replayed = metric(&text, "tailgate_storage_replayed_spans_total", &[]) as u64;
    let seconds = metric(&text, "tailgate_storage_replay_duration_seconds", &[]);
    anyhow::ensure!(
        replayed == delivered,
        "the restarted worker replayed {replayed} of the {delivered} spans it had acknowledged"
    );
    second.stop().await;
    Ok((replayed, seconds))
}

/// The q-quantile of a cumulative histogram (counts per `LATENESS_BUCKETS_S` bound, then
/// +Inf), interpolated linearly inside the bucket as Prometheus' histogram_quantile does.
pub(super) fn quantile(cumulative: &[f64], q: f64) -> f64 {
    let total = *cumulative.last().unwrap_or(&0.0);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (i, &upper) in LATENESS_BUCKETS_S.iter().enumerate() {
        if cumulative[i] >= rank {
            let in_bucket = cumulative[i] - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                0.0
            };
            return lower.0 + (upper - lower.0) * share;
        }
        lower = (upper, cumulative[i]);
    }
    lower.0
}

/// A worker's config, with its admin endpoint and its span metrics' (a
/// `prometheus` exporter, as a collector serves them).
fn worker_config(
    i: usize,
    grpc: SocketAddr,
    (admin, span_metrics): (SocketAddr, SocketAddr),
    sink: SocketAddr,
    decision_wait: Duration,
    storage: Option<(&Path, bool)>,
) -> String {
    let (extensions, tail_storage) = match storage {
        Some((dir, fsync)) => (
            format!(
                "extensions:\n  file_storage: {{directory: \"{}\", fsync: {fsync}}}\n",
                dir.display()
            ),
            "\n  tail_storage: file_storage",
        ),
        None => (String::new(), ""),
    };
    format!(
        r#"# Written by `tailgate bench`.
{extensions}receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "{grpc}", max_recv_msg_size_mib: 64}}
tail_sampling:
  decision_wait: {wait}ms
  num_traces: 2000000
  max_buffered_bytes: 4294967296
  decision_cache: {{sampled_cache_size: 200000, non_sampled_cache_size: 1000000}}
  record_policy: true{tail_storage}
  policies:{POLICIES}
spanmetrics:
  instance_id: worker-{i}
  dimensions: [{{name: http.request.method}}]
exporters:
  otlp:
    endpoint: "{sink}"
    tls: {{insecure: true}}
    headers: {{{WORKER_HEADER}: worker-{i}}}
    sending_queue: {{queue_size: 10000, num_consumers: 4}}
  prometheus:
    endpoint: "{span_metrics}"
admin:
  endpoint: "{admin}"
shutdown:
  grace_period: 10s
"#,
        wait = decision_wait.as_millis(),
    )
}

fn router_config(grpc: SocketAddr, admin: SocketAddr, workers: &[SocketAddr]) -> String {
    let hostnames: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
    format!(
        r#"# Written by `tailgate bench`.
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "{grpc}", max_recv_msg_size_mib: 64}}
exporters:
  loadbalancing:
    routing_key: traceID
    protocol:
      otlp:
        tls: {{insecure: true}}
        compression: none
        sending_queue: {{queue_size: 10000, num_consumers: 4}}
    resolver:
      static: {{hostnames: [{}]}}
admin:
  endpoint: "{admin}"
"#,
        hostnames.join(", ")
    )
}

impl Results {
    /// The ratios a run is judged by: (name, value).
    fn ratios(&self) -> Vec<(&'static str, f64)> {
        let mut ratios = vec![
            (
                "worker(s) x decode-only process",
                self.worker_spans_per_cpu_second / self.baseline_spans_per_cpu_second,
            ),
            (
                "worker(s) x prost decode in process",
                self.worker_spans_per_cpu_second / self.prost_decode_spans_per_cpu_second,
            ),
            (
                "router x decode-only process",
                self.router_spans_per_cpu_second / self.baseline_spans_per_cpu_second,
            ),
        ];
        if let Some(rotel) = self.rotel_spans_per_cpu_second {
            ratios.push(("router x Rotel", self.router_spans_per_cpu_second / rotel));
        }
        ratios.push((
            "resident memory per buffered span x wire",
            self.rss_bytes_per_buffered_span / self.wire_bytes_per_span,
        ));
        ratios
    }

    /// Every ratio's lowest and highest value over several runs of the same command: a
    /// target is met only when every run meets it.
    pub fn across(runs: &[Results]) -> String {
        let mut out = format!(
            "
across {} runs:
",
            runs.len()
        );
        let Some(first) = runs.first() else {
            return out;
        };
        for (i, (name, _)) in first.ratios().iter().enumerate() {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| Some(r.ratios().get(i)?.1))
                .collect();
            let low = values.iter().copied().fold(f64::INFINITY, f64::min);
            let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(out, "  {name:<44}{low:>8.2} to {high:.2}");
        }
        out
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let ratio = |x: f64| x / self.baseline_spans_per_cpu_second;
        let _ = writeln!(
            out,
            "spans: {}, wire bytes per span: {:.0}\n",
            self.spans, self.wire_bytes_per_span
        );
        let _ = writeln!(
            out,
            "  {:<32}{:>16}{:>10}{:>10}{:>16}",
            "process", "spans/CPU-s", "ratio", "target", "x prost decode"
        );
        let prost = |x: f64| x / self.prost_decode_spans_per_cpu_second;
        for (name, value, target) in [
            (
                "prost decode, in process",
                self.prost_decode_spans_per_cpu_second,
                None,
            ),
            (
                "decode-only baseline",
                self.baseline_spans_per_cpu_second,
                None,
            ),
            ("router", self.router_spans_per_cpu_second, Some(1.0)),
            ("worker(s)", self.worker_spans_per_cpu_second, Some(0.5)),
        ] {
            let target = target.map_or_else(String::new, |t| {
                format!("{}{t}", if ratio(value) >= t { ">= " } else { "MISS " })
            });
            let _ = writeln!(
                out,
                "  {name:<32}{value:>16.0}{:>10.2}{target:>10}{:>16.2}",
                ratio(value),
                prost(value)
            );
        }
        if let Some(rotel) = self.rotel_spans_per_cpu_second {
            let vs = self.router_spans_per_cpu_second / rotel;
            let _ = writeln!(
                out,
                "  {:<32}{rotel:>16.0}{:>10.2}{:>10}{:>16.2}\n  router / rotel: {vs:.2} ({}3)",
                "rotel, forwarding",
                ratio(rotel),
                "",
                prost(rotel),
                if vs >= 3.0 { ">= " } else { "MISS " },
            );
        }
        let memory_ratio = self.rss_bytes_per_buffered_span / self.wire_bytes_per_span;
        let _ = writeln!(
            out,
            "\n  resident memory per buffered span: {:.0} B = {:.2} x wire ({} spans buffered at peak; {}1.25 x)",
            self.rss_bytes_per_buffered_span,
            memory_ratio,
            self.peak_buffered_spans,
            if memory_ratio <= 1.25 { "<= " } else { "MISS " },
        );
        let _ = writeln!(
            out,
            "  from a cold start instead of a warmed-up idle: {:.0} B = {:.2} x wire",
            self.cold_rss_bytes_per_buffered_span,
            self.cold_rss_bytes_per_buffered_span / self.wire_bytes_per_span
        );
        let _ = writeln!(
            out,
            "  of which live heap: {:.0} B = {:.2} x wire",
            self.heap_bytes_per_buffered_span,
            self.heap_bytes_per_buffered_span / self.wire_bytes_per_span
        );
        let _ = writeln!(
            out,
            "  decision lateness: p50 {:.1} ms, p99 {:.1} ms after a decision_wait of {:?} (target p99 <= 50 ms)\n",
            self.lateness_ms[0], self.lateness_ms[1], self.decision_wait
        );
        out.push_str(&self.report.render());
        if let Some(s) = &self.storage {
            let ratio = s.worker_spans_per_cpu_second / self.worker_spans_per_cpu_second;
            let _ = writeln!(
                out,
                "\n  with storage (fsync: {}): worker(s) {:.0} spans/CPU-s = {:.2} x the baseline, {:.2} x the same workers without storage ({}0.7); {:.0} B resident per buffered span = {:.2} x wire",
                s.fsync,
                s.worker_spans_per_cpu_second,
                s.worker_spans_per_cpu_second / self.baseline_spans_per_cpu_second,
                ratio,
                if ratio >= 0.7 { ">= " } else { "MISS " },
                s.rss_bytes_per_buffered_span,
                s.rss_bytes_per_buffered_span / self.wire_bytes_per_span,
            );
            let _ = writeln!(
                out,
                "  replay: {} spans in {:.2} s = {:.0} spans/s\n",
                s.replayed_spans,
                s.replay_seconds,
                s.replayed_spans as f64 / s.replay_seconds.max(1e-9)
            );
            out.push_str(&s.report.render());
        }
        out
    }
}
