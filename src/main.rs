//! The `tailgate` command line: `worker --config FILE`, `router --config FILE` and
//! `check-config FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Exit status for a config error (EX_USAGE), as `check-config` documents.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "tailgate",
    version,
    about = "Tail sampling for OpenTelemetry traces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
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
        Command::Worker { config } => match tailgate::config::load_worker(&config) {
            Ok(c) => exit(run(async move {
                let worker = tailgate::worker::Worker::start(c).await?;
                shutdown_signal().await?;
                tracing::info!("shutting down");
                worker.shutdown().await;
                Ok(())
            })),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Router { config } => {
            match read(&config).and_then(|t| tailgate::router::config::parse_router(&t)) {
                Ok(c) => exit(run(async move {
                    let router = tailgate::router::Router::start(c).await?;
                    shutdown_signal().await?;
                    tracing::info!("shutting down");
                    router.shutdown().await;
                    Ok(())
                })),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
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

/// Validates a config as a worker's (it has `tail_sampling`) or a router's.
fn load(path: &Path) -> Result<&'static str, tailgate::config::ConfigError> {
    let text = read(path)?;
    let is_worker = tailgate::config::read_yaml(&text)?
        .get("tail_sampling")
        .is_some();
    if is_worker {
        tailgate::config::parse_worker(&text).map(|_| "worker")
    } else {
        tailgate::router::config::parse_router(&text).map(|_| "router")
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(task)
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
