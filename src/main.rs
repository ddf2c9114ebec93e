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
    /// Validate a config file and print every error with its path, or what it configures.
    CheckConfig {
        file: PathBuf,
        /// The process the file is for; found from the file when not given (a
        /// `tail_sampling` makes it a worker's, a `loadbalancing` exporter a router's).
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Role {
    Local,
    Worker,
    Router,
}

fn main() -> ExitCode {
    tailgate::telemetry::init_logging();
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
        Command::Worker { config } => {
            serve(tailgate::worker::config::load_worker(&config), |c| async {
                tracing::info!("worker configuration\n{}", c.summary);
                Ok(tailgate::worker::Worker::start(c).await?)
            })
        }
        Command::Router { config } => serve(
            read(&config).and_then(|t| tailgate::router::config::parse_router(&t)),
            |c| async {
                tracing::info!("router configuration\n{}", c.summary);
                Ok(tailgate::router::Router::start(c).await?)
            },
        ),
        Command::CheckConfig { file, role } => match load(&file, role) {
            Ok((kind, summary)) => {
                println!("{}: ok ({kind} config)", file.display());
                print!("{summary}");
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

/// Reads a config file, as a config error when it cannot be read.
fn read(path: &Path) -> Result<String, tailgate::config::ConfigError> {
    std::fs::read_to_string(path).map_err(|e| tailgate::config::ConfigError {
        errors: vec![tailgate::config::FieldError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }],
    })
}

/// Validates a config for `role`, or for the role the file shows: local (it has `local`),
/// a worker's or a router's. Returns the role and what the file configures.
fn load(
    path: &Path,
    role: Option<Role>,
) -> Result<(&'static str, String), tailgate::config::ConfigError> {
    use tailgate::config::collector::{detect_tier, Tier};
    let text = read(path)?;
    let yaml = tailgate::config::read_yaml(&text)?;
    let role = match role {
        Some(role) => role,
        None if yaml.get("local").is_some() => Role::Local,
        None => match detect_tier(&yaml) {
            Some(Tier::Worker) => Role::Worker,
            Some(Tier::Router) => Role::Router,
            None => {
                return Err(tailgate::config::ConfigError {
                    errors: vec![tailgate::config::FieldError {
                        path: String::new(),
                        message: "cannot tell which process this config is for: no tail_sampling (a worker's) and no loadbalancing exporter (a router's); pass --role".into(),
                    }],
                })
            }
        },
    };
    match role {
        Role::Local => tailgate::local::parse_local(&text).map(|_| ("local", String::new())),
        Role::Worker => tailgate::worker::config::worker_from_yaml(yaml)
            .map(|c| ("worker", c.summary.to_string())),
        Role::Router => tailgate::router::config::router_from_yaml(yaml)
            .map(|c| ("router", c.summary.to_string())),
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
