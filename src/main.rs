//! The `imagescope` binary: parse arguments, set up logging, run, map errors to exit codes.
//!
//! The allocator is mimalloc: a run moves megabyte image buffers and request bodies through many
//! threads, and glibc's per-thread arenas kept the freed ones resident (peak RSS grew with the
//! length of a run; BENCHMARKS.md "Scale").

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = imagescope::cli::Cli::parse();
    imagescope::logging::init();
    match imagescope::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(2)
        }
    }
}
