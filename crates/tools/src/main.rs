//! The `tailgate-tools` command line: `loadgen` (generated traces against a router or
//! worker, with `--verify` the completeness check), `bench` (the end-to-end benchmark) and
//! the benchmark's hidden `decode-sink` baseline process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tailgate-tools",
    version,
    about = "Load generator and end-to-end benchmark for tailgate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send generated traces to a router or worker; with --verify, check what comes back.
    Loadgen(Box<LoadgenArgs>),
    /// The end-to-end benchmark: decode-only baseline, router and workers under the same
    /// generated load; spans per CPU-second, memory per buffered span, decision lateness.
    Bench(Box<BenchArgs>),
    /// The benchmark's baseline process: an OTLP/gRPC server that only decodes.
    #[command(hide = true)]
    DecodeSink {
        #[arg(long)]
        endpoint: String,
    },
}

/// The generated workload's shape.
#[derive(clap::Args, Clone)]
struct WorkloadArgs {
    /// Same seed, same traces.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 12)]
    services: usize,
    /// Instances per service; each sends from its own resource over its own connection.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    #[arg(long, default_value_t = 12.0)]
    median_spans_per_trace: f64,
    /// Share of traces with an error span.
    #[arg(long, default_value_t = 0.02)]
    error_rate: f64,
    /// Share of traces slower than 500 ms.
    #[arg(long, default_value_t = 0.03)]
    slow_rate: f64,
    /// Share of single-span health-check traces (url.path /healthz).
    #[arg(long, default_value_t = 0.05)]
    health_check_rate: f64,
    /// Share of traces with one span sent after --late-after.
    #[arg(long, default_value_t = 0.01)]
    late_rate: f64,
    /// Share of traces whose spans leave in random order (others: completion order).
    #[arg(long, default_value_t = 0.1)]
    out_of_order_rate: f64,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    /// Share of traces sent head-sampled (tracestate `ot=th` and a matching `rv`).
    #[arg(long, default_value_t = 0.0)]
    head_sampled_rate: f64,
    /// The head sampler's probability for those traces, in percent.
    #[arg(long, default_value_t = 50.0)]
    head_sampling_percentage: f64,
    /// How skewed traffic is over services and their operations: the k-th is chosen with
    /// weight 1/k^skew (1.0: a Zipf law, a few hot endpoints and a long rare tail).
    #[arg(long, default_value_t = 0.0)]
    skew: f64,
}

impl WorkloadArgs {
    fn config(&self) -> anyhow::Result<tailgate_tools::WorkloadConfig> {
        for (name, share) in [
            ("--error-rate", self.error_rate),
            ("--slow-rate", self.slow_rate),
            ("--health-check-rate", self.health_check_rate),
            ("--late-rate", self.late_rate),
            ("--out-of-order-rate", self.out_of_order_rate),
            ("--head-sampled-rate", self.head_sampled_rate),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&share), "{name} must be in [0, 1]");
        }
        anyhow::ensure!(
            self.head_sampling_percentage > 0.0 && self.head_sampling_percentage <= 100.0,
            "--head-sampling-percentage must be in (0, 100]"
        );
        anyhow::ensure!(
            self.skew >= 0.0 && self.skew.is_finite(),
            "--skew must be a non-negative number"
        );
        anyhow::ensure!(
            self.services > 0 && self.instances > 0,
            "--services and --instances must be positive"
        );
        Ok(tailgate_tools::WorkloadConfig {
            seed: self.seed,
            services: self.services,
            instances: self.instances,
            median_spans_per_trace: self.median_spans_per_trace,
            error_rate: self.error_rate,
            slow_rate: self.slow_rate,
            health_check_rate: self.health_check_rate,
            late_rate: self.late_rate,
            out_of_order_rate: self.out_of_order_rate,
            batch_size: self.batch_size,
            head_sampled_rate: self.head_sampled_rate,
            head_sampling_percentage: self.head_sampling_percentage,
            skew: self.skew,
            start_unix_nano: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        })
    }
}

#[derive(clap::Args)]
struct LoadgenArgs {
    /// Router or worker OTLP endpoint (host:port, or a URL).
    #[arg(long, default_value = "localhost:4317")]
    endpoint: String,
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: tailgate_tools::Protocol,
    /// Spans per second (`3000`), or steps of rates each held for a while, the last until
    /// the spans run out (`3000:40s,9000:40s,3000`); without it, as fast as the target
    /// takes them.
    #[arg(long)]
    rate: Option<tailgate_tools::Pace>,
    /// Stop after this many spans.
    #[arg(long, default_value_t = 100_000)]
    spans: u64,
    /// Stop after this long instead of a span count.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Connections to open; default: one per service instance.
    #[arg(long)]
    connections: Option<usize>,
    /// When late spans leave: set it above the workers' decision_wait.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "12s")]
    late_after: std::time::Duration,
    /// Run an OTLP/gRPC sink for the workers' exporters and check completeness.
    #[arg(long)]
    verify: bool,
    /// Where the verify sink listens.
    #[arg(long, default_value = "127.0.0.1:4417")]
    sink: String,
    /// The workers' policies, for --verify: a worker config or a policy list file;
    /// default: the embedded policies/default.yaml.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// How long --verify waits after the last span for the kept traces.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    settle: std::time::Duration,
    #[command(flatten)]
    workload: WorkloadArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, default_value_t = 400_000)]
    spans: u64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The workers' decision_wait.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    decision_wait: std::time::Duration,
    /// Connections from the load generator.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Where the processes' configs and logs go.
    #[arg(long, default_value = "target/bench-e2e")]
    dir: PathBuf,
    /// The `tailgate` binary to run the router and workers with; by default the one next
    /// to this binary (`cargo build --release` builds both into `target/release`).
    #[arg(long)]
    tailgate: Option<PathBuf>,
    /// Also run the workers with storage (`on`, or `fsync` for fsync on every record),
    /// against the same run without, and time a replay.
    #[arg(long, value_enum, default_value = "off")]
    storage: StorageArg,
    /// Also run Rotel (the `rotel-agent` binary, e.g. from its PyPI package's wheel)
    /// forwarding the same requests over OTLP/gRPC (uncompressed, as the router here), for
    /// the router's ratio to it.
    #[arg(long)]
    rotel: Option<PathBuf>,
    /// Runs of the whole benchmark; after the last, every ratio's range over them.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    #[command(flatten)]
    workload: WorkloadArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StorageArg {
    Off,
    On,
    Fsync,
}

fn main() -> ExitCode {
    tailgate::telemetry::init_logging();
    match Cli::parse().command {
        Command::Loadgen(args) => run_tool(async move {
            let outcome = tailgate_tools::run(loadgen_options(*args)?).await?;
            print!("{}", outcome.summary);
            Ok(match outcome.report {
                Some(report) => {
                    print!("{}", report.render());
                    report.passed()
                }
                None => true,
            })
        }),
        Command::Bench(args) => run_tool(async move {
            let tailgate = match args.tailgate {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("tailgate"),
            };
            let options = tailgate_tools::bench::BenchOptions {
                tailgate,
                spans: args.spans,
                workers: args.workers,
                workload: args.workload.config()?,
                connections: args.connections,
                decision_wait: args.decision_wait,
                dir: args.dir,
                storage: match args.storage {
                    StorageArg::Off => None,
                    StorageArg::On => Some(false),
                    StorageArg::Fsync => Some(true),
                },
                rotel: args.rotel,
            };
            let mut runs = Vec::new();
            let mut passed = true;
            for run in 1..=args.runs.max(1) {
                if args.runs > 1 {
                    println!("== run {run} of {}", args.runs);
                }
                let results = tailgate_tools::bench::run(options.clone()).await?;
                print!("{}", results.render());
                passed &= results.report.passed()
                    && results.storage.as_ref().is_none_or(|s| s.report.passed());
                runs.push(results);
            }
            if runs.len() > 1 {
                print!("{}", tailgate_tools::bench::Results::across(&runs));
            }
            Ok(passed)
        }),
        Command::DecodeSink { endpoint } => run_tool(async move {
            tailgate_tools::bench::decode_sink(&endpoint).await?;
            Ok(true)
        }),
    }
}

/// Runs a tool to completion: exit 0 when it passed, 1 when it did not or failed.
fn run_tool(tool: impl std::future::Future<Output = anyhow::Result<bool>>) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(tool));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn loadgen_options(args: LoadgenArgs) -> anyhow::Result<tailgate_tools::LoadgenOptions> {
    let workload = args.workload.config()?;
    let verify = if args.verify {
        let policies = match &args.policies {
            None => tailgate::policy::parse_policies(
                tailgate::local::DEFAULT_POLICIES,
                "policies/default.yaml",
                false,
            )?,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if tailgate::config::read_yaml(&text)?.is_sequence() {
                    tailgate::policy::parse_policies(&text, &path.display().to_string(), false)?
                } else {
                    tailgate::worker::config::parse_worker(&text)?.policies
                }
            }
        };
        Some(tailgate_tools::VerifyOptions {
            sink: args.sink,
            policies,
            settle: args.settle,
        })
    } else {
        None
    };
    Ok(tailgate_tools::LoadgenOptions {
        endpoint: args.endpoint,
        protocol: args.protocol,
        pace: args.rate.unwrap_or(tailgate_tools::Pace::UNLIMITED),
        spans: if args.duration.is_some() {
            u64::MAX
        } else {
            args.spans
        },
        duration: args.duration,
        connections: args
            .connections
            .unwrap_or(workload.services * workload.instances),
        late_after: args.late_after,
        workload,
        verify,
    })
}
