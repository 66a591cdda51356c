//! Command-line interface: clap definitions and the dispatch from each command to the library.
//!
//! Commands print their results on stdout and diagnostics (tracing) on stderr. The exit code is
//! 0 on success, 1 when a check the command performs fails (doctor), and 2 for bad input or
//! configuration.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Language-guided image retrieval (ImageScope) as a client of OpenAI-compatible model servers.
#[derive(Debug, Parser)]
#[command(name = "imagescope", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every role's servers: reachable, serving the configured model, one real round trip.
    Doctor {
        /// A servers file (configs/servers/*.toml) or an experiment file that names one.
        #[arg(long)]
        config: PathBuf,
        /// Per-request time limit for the checks, in seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command and returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor {
            config,
            timeout,
            json,
        } => {
            let (servers, path) = crate::doctor::load_servers(&config)?;
            if !(timeout.is_finite() && timeout > 0.0) {
                anyhow::bail!("--timeout must be a positive number of seconds, got {timeout}");
            }
            let reports =
                crate::doctor::run(&servers, &path, Duration::from_secs_f64(timeout)).await?;
            let text = if json {
                serde_json::to_string_pretty(&reports)? + "\n"
            } else {
                crate::doctor::render(&reports)
            };
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(if reports.iter().any(|r| r.failed()) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
