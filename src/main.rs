//! The `tailgate` command line: `local` (the default), `worker --config FILE`,
//! `router --config FILE` and `check-config FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tailgate::supervisor::TaskFailure;

/// Exit status for a config error (EX_USAGE), as `check-config` documents.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "tailgate",
    version,
    about = "Tail sampling for OpenTelemetry traces"
)]
struct Cli {
    /// What to run; without one, `local` with the embedded config.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a router and two workers in this process, on this machine (the default).
    Local {
        /// A local-mode config instead of the embedded one.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a worker: receive OTLP, buffer, decide, export kept traces.
    Worker {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a router: receive OTLP and send each trace to one worker of a hash ring.
    Router {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a worker or router config file and print every error with its path.
    CheckConfig { file: PathBuf },
    /// Send generated traces to a router or worker; with --verify, check what comes back.
    Loadgen(Box<LoadgenArgs>),
    /// The end-to-end benchmark: decode-only baseline, router and workers under the same
    /// generated load; spans per CPU-second, memory per buffered span, decision lateness.
    Bench(BenchArgs),
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
}

impl WorkloadArgs {
    fn config(&self) -> anyhow::Result<tailgate::loadgen::WorkloadConfig> {
        for (name, share) in [
            ("--error-rate", self.error_rate),
            ("--slow-rate", self.slow_rate),
            ("--health-check-rate", self.health_check_rate),
            ("--late-rate", self.late_rate),
            ("--out-of-order-rate", self.out_of_order_rate),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&share), "{name} must be in [0, 1]");
        }
        anyhow::ensure!(
            self.services > 0 && self.instances > 0,
            "--services and --instances must be positive"
        );
        Ok(tailgate::loadgen::WorkloadConfig {
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
    protocol: tailgate::loadgen::Protocol,
    /// Spans per second; without it, as fast as the target takes them.
    #[arg(long)]
    rate: Option<f64>,
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
    #[command(flatten)]
    workload: WorkloadArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Local { config: None }) {
        Command::Local { config } => {
            let text = match &config {
                Some(path) => read(path),
                None => Ok(tailgate::local::DEFAULT_CONFIG.to_owned()),
            };
            serve(
                text.and_then(|t| tailgate::local::parse_local(&t)),
                |c| async {
                    let local = tailgate::local::Local::start(c).await?;
                    print!("{}", local.banner());
                    Ok(local)
                },
            )
        }
        Command::Worker { config } => serve(tailgate::config::load_worker(&config), |c| async {
            Ok(tailgate::worker::Worker::start(c).await?)
        }),
        Command::Router { config } => serve(
            read(&config).and_then(|t| tailgate::router::config::parse_router(&t)),
            |c| async { Ok(tailgate::router::Router::start(c).await?) },
        ),
        Command::Loadgen(args) => run_tool(async move {
            let outcome = tailgate::loadgen::run(loadgen_options(*args)?).await?;
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
            let results = tailgate::loadgen::bench::run(tailgate::loadgen::bench::BenchOptions {
                spans: args.spans,
                workers: args.workers,
                workload: args.workload.config()?,
                connections: args.connections,
                decision_wait: args.decision_wait,
                dir: args.dir,
            })
            .await?;
            print!("{}", results.render());
            Ok(results.report.passed())
        }),
        Command::DecodeSink { endpoint } => run_tool(async move {
            tailgate::loadgen::bench::decode_sink(&endpoint).await?;
            Ok(true)
        }),
        Command::CheckConfig { file } => match load(&file) {
            Ok(kind) => {
                println!("{}: ok ({kind} config)", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// What `serve` runs: stopped on SIGTERM or SIGINT, or when one of its tasks fails.
trait Service {
    async fn failed(&mut self) -> TaskFailure;
    async fn shutdown(self);
}

impl Service for tailgate::local::Local {
    async fn failed(&mut self) -> TaskFailure {
        tailgate::local::Local::failed(self).await
    }
    async fn shutdown(self) {
        tailgate::local::Local::shutdown(self).await
    }
}

impl Service for tailgate::worker::Worker {
    async fn failed(&mut self) -> TaskFailure {
        tailgate::worker::Worker::failed(self).await
    }
    async fn shutdown(self) {
        tailgate::worker::Worker::shutdown(self).await
    }
}

impl Service for tailgate::router::Router {
    async fn failed(&mut self) -> TaskFailure {
        tailgate::router::Router::failed(self).await
    }
    async fn shutdown(self) {
        tailgate::router::Router::shutdown(self).await
    }
}

/// Starts a service from its config (exit 64 on a config error) and runs it until SIGTERM or
/// SIGINT, then shuts it down. When one of its tasks fails instead, it is no longer ready;
/// it drains what it can, logs the cause and exits non-zero, so an orchestrator restarts it.
fn serve<C, S: Service, F: std::future::Future<Output = anyhow::Result<S>>>(
    config: Result<C, tailgate::config::ConfigError>,
    start: impl FnOnce(C) -> F,
) -> ExitCode {
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                let mut service = start(config).await?;
                let failure = tokio::select! {
                    signal = shutdown_signal() => {
                        signal?;
                        None
                    }
                    failure = service.failed() => Some(failure),
                };
                match &failure {
                    None => tracing::info!("shutting down"),
                    Some(f) => tracing::error!(error = %f, "a task failed; draining and exiting"),
                }
                service.shutdown().await;
                match failure {
                    None => Ok(()),
                    Some(f) => Err(anyhow::Error::new(f)),
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
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

fn loadgen_options(args: LoadgenArgs) -> anyhow::Result<tailgate::loadgen::LoadgenOptions> {
    let workload = args.workload.config()?;
    let verify = if args.verify {
        let policies = match &args.policies {
            None => tailgate::config::parse_policies(
                tailgate::local::DEFAULT_POLICIES,
                "policies/default.yaml",
                false,
            )?,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if tailgate::config::read_yaml(&text)?.is_sequence() {
                    tailgate::config::parse_policies(&text, &path.display().to_string(), false)?
                } else {
                    tailgate::config::parse_worker(&text)?.policies
                }
            }
        };
        Some(tailgate::loadgen::VerifyOptions {
            sink: args.sink,
            policies,
            settle: args.settle,
        })
    } else {
        None
    };
    Ok(tailgate::loadgen::LoadgenOptions {
        endpoint: args.endpoint,
        protocol: args.protocol,
        rate: args.rate,
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

/// Reads a config file, as a config error when it cannot be read.
fn read(path: &Path) -> Result<String, tailgate::config::ConfigError> {
    std::fs::read_to_string(path).map_err(|e| tailgate::config::ConfigError {
        errors: vec![tailgate::config::FieldError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }],
    })
}

/// Validates a config as a local one (it has `local`), a worker's (`tail_sampling`) or a
/// router's.
fn load(path: &Path) -> Result<&'static str, tailgate::config::ConfigError> {
    let text = read(path)?;
    let yaml = tailgate::config::read_yaml(&text)?;
    if yaml.get("local").is_some() {
        tailgate::local::parse_local(&text).map(|_| "local")
    } else if yaml.get("tail_sampling").is_some() {
        tailgate::config::parse_worker(&text).map(|_| "worker")
    } else {
        tailgate::router::config::parse_router(&text).map(|_| "router")
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
