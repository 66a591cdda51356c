//! `imagescope run`: the driving loop (part 2 of 3, between `prepare` and `finish`).
//!
//! The queries still to answer run each in its own task (a `JoinSet`, so their CPU work spreads
//! over the runtime's threads), at most `queries_in_flight` at once; each finished record is
//! handed to the journal's writer task (a bounded channel: back-pressure only when the disk is
//! that far behind) and dropped, so memory holds only the queries in flight and no query waits
//! for a journal write. Ctrl-C, SIGTERM (docker, Slurm, systemd) and SIGHUP
//! stop taking new results; what is in the journal stays, and `--resume` picks up from it. A
//! second signal exits at once (`stop_signals`). The `run` command (`cli/run.rs`) chains
//! `prepare`, `drive` and `finish`, drawing progress and rendering the summary and the report.

use std::path::PathBuf;

use crate::config::Stage;
use crate::record::QueryRecord;
use crate::runs::folder::FolderError;
use crate::serving::CacheMode;

use super::prepare::Prepared;
use super::query;

/// Command-line choices of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Split override.
    pub split: Option<String>,
    /// Answer only the first N queries.
    pub limit: Option<usize>,
    /// Answer only these query ids.
    pub queries: Option<Vec<String>>,
    /// Stages override.
    pub stages: Option<Vec<Stage>>,
    /// Run name (folder).
    pub run_name: String,
    /// Resume this run folder.
    pub resume: Option<PathBuf>,
    /// Request-cache mode.
    pub cache: CacheMode,
    /// Write test-split submissions even when some queries are unanswered.
    pub allow_partial: bool,
}

/// A run that could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Dataset.
    #[error(transparent)]
    Dataset(#[from] crate::datasets::DatasetError),
    /// Image database.
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    /// Prompts.
    #[error(transparent)]
    Prompt(#[from] crate::prompts::PromptError),
    /// Run folder.
    #[error(transparent)]
    Folder(#[from] FolderError),
    /// Request cache.
    #[error(transparent)]
    Cache(#[from] crate::serving::cache::CacheError),
    /// Anything else, said plainly.
    #[error("{0}")]
    Other(String),
}

/// Listens for Ctrl-C, SIGTERM and SIGHUP for the rest of the process. The first sets the
/// returned flag (the run stops taking results and finishes its journal and metrics); a second
/// exits at once with status 130. The journal is then still readable: lines are whole or, cut by
/// the exit, skipped and closed off by `--resume`; the cache's last transaction is rolled back.
pub fn stop_signals() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut seen = 0;
        let _keep_open = tx.clone();
        while next_signal().await {
            seen += 1;
            if seen == 1 {
                tracing::warn!(
                    "stopping: finishing the journal and the metrics (a second signal exits at once)"
                );
                let _ = tx.send(true);
            } else {
                eprintln!(
                    "second signal: exiting now; the journal is intact, resume with --resume"
                );
                std::process::exit(130);
            }
        }
        // No signal can be listened for: the run is never stopped by this task (the sender is
        // kept, so the flag does not read as closed).
        std::future::pending::<()>().await;
    });
    rx
}

/// Waits for the next stop signal; false when none can be listened for.
#[cfg(unix)]
async fn next_signal() -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ];
    let mut streams = Vec::new();
    for k in kinds {
        match signal(k) {
            Ok(s) => streams.push(s),
            Err(e) => tracing::warn!("cannot listen for signal {k:?}: {e}"),
        }
    }
    if streams.is_empty() {
        return false;
    }
    let waits = streams.iter_mut().map(|s| Box::pin(s.recv()));
    futures::future::select_all(waits).await;
    true
}

#[cfg(not(unix))]
async fn next_signal() -> bool {
    tokio::signal::ctrl_c().await.is_ok()
}

/// Records queued for the journal writer before `drive` waits for the disk.
const JOURNAL_QUEUE: usize = 256;

/// Answers the queries of `p` not answered yet, each in its own task (so their CPU work, from
/// base64 to parsing, spreads over the runtime's threads), at most `queries_in_flight` at once.
/// Each finished record goes to `on_done` (progress) and then to the journal's writer task, and
/// is dropped; nothing awaited here waits for the disk unless the writer is `JOURNAL_QUEUE`
/// records behind. Returns whether `stop` (see `stop_signals`) ended it early; the records
/// finished by then are all in the journal when it returns.
pub async fn drive(
    p: &Prepared,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut on_done: impl FnMut(&QueryRecord),
) -> Result<bool, RunError> {
    let journal = p.folder.journal_writer(JOURNAL_QUEUE);
    let mut todo = p.todo().into_iter().enumerate();
    let mut running: tokio::task::JoinSet<QueryRecord> = tokio::task::JoinSet::new();
    let mut ids: std::collections::HashMap<tokio::task::Id, &crate::datasets::Query> =
        std::collections::HashMap::new();
    let limit = p.params.queries_in_flight.max(1);
    let mut stopped = *stop.borrow();
    while !stopped {
        while running.len() < limit {
            let Some((order, q)) = todo.next() else {
                break;
            };
            let (ctx, query) = (p.ctx.clone(), q.clone());
            // Earlier queries' requests wait ahead of later ones' for a server slot.
            let handle = running.spawn(crate::serving::in_order(order, async move {
                query::run(&ctx, &query).await
            }));
            ids.insert(handle.id(), q);
        }
        tokio::select! {
            joined = running.join_next_with_id() => {
                let record = match joined {
                    None => break,
                    Some(Ok((id, record))) => {
                        ids.remove(&id);
                        record
                    }
                    Some(Err(e)) => match ids.remove(&e.id()) {
                        // A query task that panicked is a failed query, not a lost run.
                        Some(q) => query::lost(q, &e.to_string()),
                        None => continue,
                    },
                };
                on_done(&record);
                if journal.send(record).await.is_err() {
                    // The writer stopped: its own error says why.
                    journal.finish().await?;
                    return Err(RunError::Other("the journal writer stopped".into()));
                }
            }
            // The `Ref` that `wait_for` returns is dropped inside, so `drive` stays `Send`
            // (`serve` runs it on a task of its own).
            Ok(()) = async { stop.wait_for(|s| *s).await.map(drop) } => stopped = true,
        }
    }
    // Queries that finished while the stop came in are kept, not redone on resume.
    while let Some(joined) = running.try_join_next_with_id() {
        if let Ok((_, record)) = joined {
            on_done(&record);
            if journal.send(record).await.is_err() {
                break;
            }
        }
    }
    running.abort_all();
    // Wait for every task to end: an aborted one may be mid-poll on another thread, and none may
    // use the clients or the request cache once the run is finishing. One that finished
    // meanwhile is kept like the others.
    let mut journal_open = true;
    while let Some(joined) = running.join_next().await {
        if let Ok(record) = joined
            && journal_open
        {
            on_done(&record);
            journal_open = journal.send(record).await.is_ok();
        }
    }
    journal.finish().await?;
    Ok(stopped)
}
