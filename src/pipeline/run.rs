//! `imagescope run`: the driving loop (part 2 of 3, between `prepare` and `finish`).
//!
//! The queries still to answer stream through their stages, at most `queries_in_flight` at once
//! (`buffer_unordered`); each finished query is appended to the journal and then dropped, so
//! memory holds only the queries in flight. Ctrl-C stops taking new results; what is in the
//! journal stays, and `--resume` picks up from it. The `run` command (`cli/run.rs`) chains
//! `prepare`, `drive` and `finish`, drawing progress and rendering the summary and the report.

use std::path::PathBuf;

use futures::StreamExt as _;

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

/// Answers the queries of `p` not answered yet, appending each to the journal as it finishes and
/// handing it to `on_done` (progress) before dropping it. Returns whether Ctrl-C stopped it.
pub async fn drive(p: &Prepared, mut on_done: impl FnMut(&QueryRecord)) -> Result<bool, RunError> {
    let ctx = &p.ctx;
    let mut stream = futures::stream::iter(p.todo())
        .map(|q| query::run(ctx, q))
        .buffer_unordered(p.params.queries_in_flight);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(record) => {
                    p.folder.append_async(&record).await?;
                    on_done(&record);
                }
                None => return Ok(false),
            },
            _ = &mut ctrl_c => return Ok(true),
        }
    }
}
