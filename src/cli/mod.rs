//! Command-line interface: clap definitions and the dispatch from each command to the library.
//!
//! Commands print their results on stdout and diagnostics (tracing) on stderr. The exit code is
//! 0 on success, 1 when a check the command performs fails (doctor), and 2 for bad input or
//! configuration.

mod compare;
mod fashioniq;
mod index;
mod prompt;
mod run;
mod search;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::DatasetName;
use crate::datasets::{self, DatasetSpec};
use crate::metrics::{predictions, protocol};
use crate::runs::submission;

/// `doctor --timeout` as a duration: a positive number of seconds up to a day.
fn doctor_timeout(secs: f64) -> anyhow::Result<Duration> {
    let max = crate::config::MAX_TIMEOUT_SECS;
    if secs.is_finite() && secs > 0.0 && secs <= max {
        Ok(Duration::from_secs_f64(secs))
    } else {
        anyhow::bail!("--timeout {secs}: give a positive number of seconds, at most {max}")
    }
}

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
    /// Score a predictions file with the benchmark's official protocol.
    Score {
        /// cirr, cirr-subset, circo, fashioniq-dress, fashioniq-shirt, fashioniq-toptee, flickr30k,
        /// mscoco or visdial.
        #[arg(long)]
        dataset: DatasetName,
        /// Split (val, test, test1).
        #[arg(long, default_value = "val")]
        split: String,
        /// Dataset root (default: data/<CIRR|CIRCO|FashionIQ|Flickr30K|MSCOCO|VisDial>).
        #[arg(long)]
        data: Option<PathBuf>,
        /// `{query_id: [ranked image keys]}`, a CIRR/CIRCO submission, or for visdial
        /// `{dialogue_id: {round: [ranked keys]}}`.
        #[arg(long)]
        predictions: PathBuf,
        /// Print one JSON object of metric name → percentage.
        #[arg(long)]
        json: bool,
        /// CIRR: keep the reference image in the ranking (ImageScope's behaviour; the official
        /// protocol removes it).
        #[arg(long)]
        keep_reference: bool,
    },
    /// Answer a benchmark's queries with the ImageScope method, score them and keep a run folder.
    Run {
        /// Experiment file (configs/*.toml).
        #[arg(long)]
        config: PathBuf,
        /// Split (overrides the experiment file).
        #[arg(long)]
        split: Option<String>,
        /// Answer only the first N queries.
        #[arg(long)]
        limit: Option<usize>,
        /// Answer only these queries (ids, comma-separated), e.g. to try a prompt variant on a
        /// fixed subset.
        #[arg(long, value_delimiter = ',')]
        queries: Option<Vec<String>>,
        /// Prompt templates folder (overrides the experiment file), e.g. an edited copy of prompts/.
        /// Requests whose bodies it does not change are answered from the request cache.
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Stages to run, e.g. s1,s2 (overrides the experiment file).
        #[arg(long, value_delimiter = ',')]
        stages: Option<Vec<crate::config::Stage>>,
        /// Name of the run (a folder under runs/<dataset>/).
        #[arg(long, default_value = "default")]
        run_name: String,
        /// Continue this run folder: finished queries are kept, cached answers reused.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Request cache: on, off, read-only or write-only.
        #[arg(long, default_value = "on")]
        cache: crate::serving::CacheMode,
        /// Test splits: write submission files even when some queries are unanswered (their
        /// file names then carry the answered count); by default only a complete run writes them.
        #[arg(long)]
        allow_partial: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search an indexed folder: by text, or by an image of it plus an edit.
    Search {
        /// What you are looking for (with --image: how the wanted photo differs from it).
        text: String,
        /// A reference photo from the folder.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Where and how to search.
        #[command(flatten)]
        target: crate::session::SearchTarget,
        /// Print JSON: {"query": ..., "results": [{"rank", "key", "path", "score"}]}.
        #[arg(long)]
        json: bool,
        /// Also write an HTML page with thumbnails (path printed on stderr).
        #[arg(long)]
        open: bool,
    },
    /// Search an indexed folder by dialogue: describe the photo, then refine it turn by turn.
    Chat {
        /// Where and how to search.
        #[command(flatten)]
        target: crate::session::SearchTarget,
    },
    /// Serve a page and an HTTP API over an indexed folder: results that sharpen as stages end.
    Serve(crate::serve::ServeArgs),
    /// The paper's FashionIQ table from the three category runs: R@10 and R@50 of each category
    /// and their average, after each stage.
    Fashioniq {
        /// Run folders of fashioniq-dress, fashioniq-shirt and fashioniq-toptee, in any order.
        #[arg(num_args = 3, required = true)]
        runs: Vec<PathBuf>,
        /// Print JSON: {stage: {category: {"R@10", "R@50"}, "average": {...}}}.
        #[arg(long)]
        json: bool,
    },
    /// Write HTML pages (metrics, recall curves, every query with its images) for a run folder.
    Report {
        /// The run folder.
        run_dir: PathBuf,
    },
    /// Caption and embed a gallery (or a folder of your images) into a local image database.
    Index(index::IndexCmd),
    /// Build one role's request from the prompt templates: print it, or send it.
    Prompt {
        /// render or try.
        #[command(subcommand)]
        action: PromptAction,
    },
    /// Compare two runs of the same dataset and split: metrics per stage with paired bootstrap
    /// intervals and McNemar's test, per-query rank moves, cost per role, prompt and config diffs.
    Compare(compare::CompareArgs),
    /// Validate a CIRR or CIRCO test-server submission; exits non-zero at the first problem.
    CheckSubmission {
        /// cirr (or cirr-subset) or circo.
        #[arg(long)]
        dataset: DatasetName,
        /// test1 for CIRR, test for CIRCO.
        #[arg(long)]
        split: String,
        /// Dataset root (default: data/CIRR or data/CIRCO).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The submission file.
        file: PathBuf,
    },
}

/// `prompt` subcommands.
#[derive(Debug, Subcommand)]
pub enum PromptAction {
    /// Print the exact JSON request body (images as hashes); needs no server.
    Render(prompt::PromptArgs),
    /// Send the request to the configured server; print the raw answer and the parsed result.
    Try(prompt::PromptArgs),
}

/// The conventional dataset root under `data/`.
pub fn default_root(dataset: DatasetName) -> PathBuf {
    PathBuf::from("data").join(dataset.conventional_folder())
}

/// The spec of a benchmark split named on the command line.
fn spec_of(dataset: DatasetName, data: Option<PathBuf>, split: String) -> DatasetSpec {
    DatasetSpec {
        name: dataset,
        root: data.unwrap_or_else(|| default_root(dataset)),
        split,
        image_ext: None,
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

/// Runs the parsed command and returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor {
            config,
            timeout,
            json,
        } => doctor(config, timeout, json).await,
        Command::Score {
            dataset,
            split,
            data,
            predictions,
            json,
            keep_reference,
        } => score(dataset, split, data, predictions, json, keep_reference),
        Command::Index(cmd) => index::run(cmd).await,
        Command::Search {
            text,
            image,
            target,
            json,
            open,
        } => search::search(target, text, image, json, open).await,
        Command::Chat { target } => search::chat(target).await,
        Command::Serve(args) => crate::serve::run(args).await,
        Command::Compare(args) => compare::run(args),
        Command::Report { run_dir } => report(run_dir),
        Command::Fashioniq { runs, json } => fashioniq::run(&runs, json),
        Command::Run {
            config,
            split,
            limit,
            queries,
            prompts,
            stages,
            run_name,
            resume,
            cache,
            allow_partial,
            json,
        } => {
            let mut exp = crate::config::ExperimentConfig::load(&config)?;
            if let Some(dir) = prompts {
                if !dir.is_dir() {
                    anyhow::bail!(
                        "--prompts {}: no such folder; copy prompts/ and edit the copy",
                        dir.display()
                    );
                }
                // Absolute, so config.resolved.toml says which folder whatever the working folder.
                exp.prompts_dir = std::path::absolute(&dir)?;
            }
            let opts = crate::pipeline::run::RunOptions {
                split,
                limit,
                queries,
                stages,
                run_name,
                resume,
                cache,
                allow_partial,
            };
            run::run(&exp, &config, opts, json).await
        }
        Command::Prompt { action } => {
            let out = match action {
                PromptAction::Render(args) => prompt::render(&args)?,
                PromptAction::Try(args) => prompt::try_it(&args).await?,
            };
            print(&(serde_json::to_string_pretty(&out)? + "\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckSubmission {
            dataset,
            split,
            data,
            file,
        } => check_submission(dataset, split, data, file),
    }
}

async fn doctor(config: PathBuf, timeout: f64, json: bool) -> anyhow::Result<ExitCode> {
    let timeout = doctor_timeout(timeout)?;
    let (servers, path) = crate::doctor::load_servers(&config)?;
    let reports = crate::doctor::run(&servers, &path, timeout).await?;
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

fn score(
    dataset: DatasetName,
    split: String,
    data: Option<PathBuf>,
    file: PathBuf,
    json: bool,
    keep_reference: bool,
) -> anyhow::Result<ExitCode> {
    let spec = spec_of(dataset, data, split);
    let queries = datasets::load_queries(&spec)?;
    let preds = predictions::read(dataset, &file)?;
    let scored = protocol::score(
        dataset,
        &queries,
        &preds,
        protocol::ScoreOptions {
            keep_reference,
            original_ks: false,
        },
    )?;
    if !scored.missing.is_empty() {
        tracing::warn!(
            "{} of {} queries have no prediction and count as misses (first: {})",
            scored.missing.len(),
            queries.len(),
            scored.missing[0]
        );
    }
    if !scored.unknown.is_empty() {
        tracing::warn!(
            "{} predictions name no query of {} {} (first: {}); they are ignored",
            scored.unknown.len(),
            dataset,
            spec.split,
            scored.unknown[0]
        );
    }
    if json {
        print(&(serde_json::to_string_pretty(&scored.to_json())? + "\n"))?;
    } else {
        let mut out = format!(
            "{dataset} {}: {} queries, {} without a prediction\n",
            spec.split,
            queries.len(),
            scored.missing.len()
        );
        let width = scored
            .metrics
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(0);
        for (name, v) in &scored.metrics {
            out.push_str(&format!("{name:<width$}  {v:>8.4}\n"));
        }
        print(&out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check_submission(
    dataset: DatasetName,
    split: String,
    data: Option<PathBuf>,
    file: PathBuf,
) -> anyhow::Result<ExitCode> {
    let spec = spec_of(dataset, data, split);
    let queries = datasets::load_queries(&spec)?;
    if !submission::has_test_server(dataset) {
        anyhow::bail!(
            "{dataset} has no test server; check-submission takes cirr, cirr-subset or circo"
        );
    }
    let bytes =
        std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let verdict = submission::check_file(dataset, &bytes, &queries);
    match verdict {
        Ok(what) => {
            print(&format!(
                "ok: {what} for {} queries: {}\n",
                queries.len(),
                file.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(p) => {
            let _ = writeln!(
                std::io::stderr(),
                "invalid submission {}: {p}",
                file.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn report(run_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let input = crate::report::from_run_folder(&run_dir)?;
    let pages = crate::report::write_all(&input, &run_dir)?;
    let list: Vec<String> = pages.iter().map(|p| p.display().to_string()).collect();
    print(&format!("{}\n", list.join("\n")))?;
    Ok(ExitCode::SUCCESS)
}
