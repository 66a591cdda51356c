//! `imagescope run`: the orchestrator.
//!
//! How it works:
//! 1. resolve the experiment with the command-line overrides (split, limit, stages);
//! 2. load the split's queries and gallery;
//! 3. open the image database the configuration names (by fingerprint, or `index_dir`) and check
//!    that its vectors came from the configured embedder;
//! 4. build the role clients, all reading and writing the request cache (`<runs>/cache.sqlite`);
//! 5. create the run folder (or reopen it with `--resume`, skipping finished queries), write the
//!    resolved config, copy the prompts, start `output.log`;
//! 6. stream the queries through their stages, at most `queries_in_flight` at once, appending each
//!    finished query to the journal; Ctrl-C stops taking new results and says how to resume;
//! 7. score every stage, write metrics, submissions (test splits) and a per-role summary.
//!
//! The HTML report is written by the `run` command from the finished folder (`report`), not here.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt as _;
use serde::Serialize;

use crate::config::{
    DatasetName, DatasetSection, ExperimentConfig, IndexSection, PipelineParams, Role,
    ServersConfig, Stage,
};
use crate::datasets::{self, DatasetSpec, ImageKey, Query};
use crate::index::{self, ImageDb};
use crate::metrics::predictions::Prediction;
use crate::metrics::protocol::{self, ScoreOptions, Scored};
use crate::prompts::{Family, PromptSet};
use crate::runs::folder::{FolderError, RunFolder};
use crate::runs::submission::{self, CirrMetric};
use crate::serving::{Cache, CacheMode, Clients, StatsSnapshot};

use super::context::Ctx;
use super::query;
use crate::record::{QueryRecord, Status};

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
    /// Draw progress bars.
    pub progress: bool,
}

/// A run's outcome.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The run folder.
    pub folder: PathBuf,
    /// Queries in the run.
    pub queries: usize,
    /// Queries finished before this invocation (resume).
    pub resumed: usize,
    /// Failed queries with their reasons.
    pub failed: Vec<(String, String)>,
    /// Failed queries counted by kind (`context-length`, `connect`, `media-load`, ...).
    pub failures_by_kind: BTreeMap<String, usize>,
    /// Metrics after each stage; serialised as `{"s1": {"R@1": 12.5, ...}, ...}`, the shape of
    /// the run folder's `metrics.json`.
    #[serde(serialize_with = "serialize_stage_metrics")]
    pub metrics: Vec<(Stage, Vec<(String, f64)>)>,
    /// Traffic per role.
    pub roles: BTreeMap<String, StatsSnapshot>,
    /// Fallbacks taken, by step.
    pub fallbacks: BTreeMap<String, usize>,
    /// Submission files written (test splits).
    pub submissions: Vec<PathBuf>,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
    /// What a reader of the numbers must know (the parity profile's CIRR val cap, ...).
    pub notes: Vec<String>,
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

#[derive(Serialize)]
struct Resolved<'a> {
    dataset: &'a DatasetSection,
    pipeline: &'a PipelineParams,
    prompts: String,
    image_db: String,
    index: &'a IndexSection,
    servers: &'a ServersConfig,
}

fn open_db(
    exp: &ExperimentConfig,
    prompts: &PromptSet,
    family: Family,
) -> Result<ImageDb, RunError> {
    let dir = match &exp.index_dir {
        Some(d) => d.clone(),
        None => {
            let captions_hash = match &exp.captions {
                Some(file) => Some(index::build::load_captions(file)?.1),
                None => None,
            };
            let fp = index::expected_fingerprint(&exp.servers, &exp.servers_path, prompts, family, captions_hash).map_err(|e| {
                RunError::Other(format!(
                    "cannot tell which image database to use ({e}); configure the captioner that built it, or set index_dir in {}",
                    exp.path.display()
                ))
            })?;
            index::db_dir(
                &exp.image_db_root,
                &index::db_name(exp.dataset.name, &exp.dataset.root),
                &fp,
            )
        }
    };
    if !dir.join(index::STORE_FILE).exists() {
        return Err(RunError::Other(format!(
            "no image database at {} for this configuration; build it with `imagescope index --config {}`",
            dir.display(),
            exp.path.display()
        )));
    }
    let db = ImageDb::open(&dir, exp.index.vector_options())?;
    db.set_ef_search(exp.index.ef_search);
    let embedder = exp.servers.role(Role::Embedder, &exp.servers_path)?;
    if let Some(fp) = db.fingerprint()
        && (fp.embedder.model != embedder.model || fp.embedder.normalize != embedder.normalize)
    {
        return Err(RunError::Other(format!(
            "the image database {} was embedded by {:?} (normalize = {}), but the configured embedder is {:?} (normalize = {}); queries must be embedded by the same model",
            dir.display(),
            fp.embedder.model,
            fp.embedder.normalize,
            embedder.model,
            embedder.normalize
        )));
    }
    Ok(db)
}

/// Metrics after each stage as one JSON object, `{"s1": {"R@1": 12.5, ...}, "s2": ...}`: the one
/// shape of `run --json` and of the run folder's `metrics.json`. Metric names keep the protocol's
/// order.
pub fn stage_metrics_object(metrics: &[(Stage, Vec<(String, f64)>)]) -> serde_json::Value {
    let stages: serde_json::Map<String, serde_json::Value> = metrics
        .iter()
        .map(|(stage, m)| {
            let values: serde_json::Map<String, serde_json::Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                .collect();
            (
                stage.as_str().to_string(),
                serde_json::Value::Object(values),
            )
        })
        .collect();
    serde_json::Value::Object(stages)
}

fn serialize_stage_metrics<S: serde::Serializer>(
    metrics: &[(Stage, Vec<(String, f64)>)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    stage_metrics_object(metrics).serialize(serializer)
}

fn table(metrics: &[(Stage, Vec<(String, f64)>)]) -> String {
    let Some((_, first)) = metrics.first() else {
        return "no metrics (no ground truth on this split)\n".into();
    };
    let width = first.iter().map(|(n, _)| n.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{:<width$}", "metric");
    for (stage, _) in metrics {
        out.push_str(&format!("  {:>8}", stage.as_str()));
    }
    out.push('\n');
    for (i, (name, _)) in first.iter().enumerate() {
        out.push_str(&format!("{name:<width$}"));
        for (_, m) in metrics {
            out.push_str(&format!("  {:>8.2}", m.get(i).map_or(f64::NAN, |x| x.1)));
        }
        out.push('\n');
    }
    out
}

/// A bar of finished queries and one bar per stage counting rounds through it (a dialogue has one
/// round per turn, plus round 0 outside the parity profile, which runs stage 1 only).
fn progress_bars(
    todo: &[&Query],
    params: &PipelineParams,
    draw: bool,
) -> (
    Option<[indicatif::ProgressBar; 3]>,
    Option<indicatif::ProgressBar>,
) {
    if !draw || todo.is_empty() {
        return (None, None);
    }
    let round0 = u64::from(params.profile != crate::config::Profile::Parity);
    let turns: u64 = todo
        .iter()
        .map(|q| match &q.instruction {
            crate::datasets::Instruction::Text { .. } => 1,
            crate::datasets::Instruction::Dialogue { turns, .. } => turns.len() as u64,
        })
        .sum();
    let dialogues = todo
        .iter()
        .filter(|q| matches!(q.instruction, crate::datasets::Instruction::Dialogue { .. }))
        .count() as u64;
    let multi = indicatif::MultiProgress::new();
    let make = |len: u64, name: &str| {
        let b = multi.add(indicatif::ProgressBar::new(len));
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "{name:>7} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{msg}}"
        )) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    };
    let has = |s: Stage| params.stages.contains(&s);
    let stages = [
        make(turns + round0 * dialogues, "s1"),
        make(if has(Stage::S2) { turns } else { 0 }, "s2"),
        make(if has(Stage::S3) { turns } else { 0 }, "s3"),
    ];
    let queries = make(todo.len() as u64, "queries");
    (Some(stages), Some(queries))
}

/// Runs (or resumes) an experiment.
pub async fn run(exp: &ExperimentConfig, opts: RunOptions) -> Result<RunReport, RunError> {
    let mut dataset = exp.dataset.clone();
    if let Some(s) = &opts.split {
        dataset.split = s.clone();
    }
    if opts.limit.is_some() {
        dataset.limit = opts.limit;
    }
    let mut params = exp.pipeline.clone();
    if let Some(stages) = &opts.stages {
        if !stages.contains(&Stage::S1) {
            return Err(RunError::Other(
                "--stages must include s1; stages 2 and 3 refine its ranking".into(),
            ));
        }
        params.stages = stages.clone();
    }
    let spec = DatasetSpec {
        name: dataset.name,
        root: dataset.root.clone(),
        split: dataset.split.clone(),
        image_ext: dataset.image_ext.clone(),
    };
    let mut queries: Vec<Query> = datasets::load_queries(&spec)?;
    let mut notes = Vec::new();
    if let Some(note) = parity_cap(&mut queries, dataset.name, &dataset.split, params.profile) {
        notes.push(note);
    }
    if let Some(ids) = &opts.queries {
        let known: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
        let unknown: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !known.contains(id))
            .collect();
        if !unknown.is_empty() {
            let first: Vec<&str> = queries.iter().take(5).map(|q| q.id.as_str()).collect();
            return Err(RunError::Other(format!(
                "--queries: {} not in the {} {} split (its first ids: {})",
                unknown.join(", "),
                dataset.name.as_str(),
                dataset.split,
                first.join(", ")
            )));
        }
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        queries.retain(|q| wanted.contains(q.id.as_str()));
    }
    if let Some(n) = dataset.limit {
        queries.truncate(n);
    }
    let gallery = datasets::load_gallery(&spec)?;
    let family = Family::for_dataset(dataset.name);
    let prompts = Arc::new(PromptSet::load(&exp.prompts_dir)?);
    let db = Arc::new(open_db(exp, &prompts, family)?);
    let missing = gallery.iter().filter(|g| !db.contains(&g.key)).count();
    if missing > 0 {
        tracing::warn!(
            "{missing} of {} gallery images are not in the image database and cannot be retrieved",
            gallery.len()
        );
    }
    let gallery_keys: HashSet<ImageKey> = gallery.iter().map(|g| g.key.clone()).collect();
    let allowed = (db.len() != gallery_keys.len() || missing > 0).then(|| gallery_keys.clone());

    let mut servers = exp.servers.clone();
    Ctx::needed_roles(&mut servers, &params.stages);
    let cache = Arc::new(Cache::open(&exp.runs_dir.join("cache.sqlite"), opts.cache)?);
    let clients = Clients::new(&servers, &exp.servers_path)?.with_cache(cache);

    let resolved = Resolved {
        dataset: &dataset,
        pipeline: &params,
        prompts: exp.prompts_dir.display().to_string(),
        image_db: db.dir().display().to_string(),
        index: &exp.index,
        servers: &servers,
    };
    let resolved_toml = toml::to_string(&resolved).map_err(|e| RunError::Other(e.to_string()))?;
    let hash = blake3::hash(resolved_toml.as_bytes()).to_hex().to_string();
    let profile = format!("{:?}", params.profile).to_lowercase();
    let info = RunFolder::info(hash, dataset.name.as_str(), &dataset.split, &profile);
    let (folder, finished) = match &opts.resume {
        Some(path) => {
            let (f, _, records) = RunFolder::resume(path, &info)?;
            (f, records)
        }
        None => {
            let f = RunFolder::create(&exp.runs_dir, dataset.name.as_str(), &opts.run_name)?;
            f.write_json("run.json", &info)?;
            f.write_text("config.resolved.toml", &resolved_toml)?;
            f.copy_prompts(prompts.files())?;
            (f, vec![])
        }
    };
    if let Err(e) = crate::logging::log_to_file(&folder.path().join("output.log")) {
        tracing::warn!("cannot write output.log: {e}");
    }
    tracing::info!(folder = %folder.path().display(), queries = queries.len(), "run started");

    let done_ids: HashSet<String> = finished
        .iter()
        .filter(|r| r.status == Status::Done)
        .map(|r| r.id.clone())
        .collect();
    let resumed = done_ids.len();
    let todo: Vec<&Query> = queries
        .iter()
        .filter(|q| !done_ids.contains(&q.id))
        .collect();
    let (progress, bar) = progress_bars(&todo, &params, opts.progress);
    let ctx = Ctx::new(
        params.clone(),
        dataset.name,
        prompts,
        &clients,
        db,
        gallery,
        allowed,
        progress,
    )?;

    let mut records: BTreeMap<String, QueryRecord> = finished
        .into_iter()
        .filter(|r| r.status == Status::Done)
        .map(|r| (r.id.clone(), r))
        .collect();
    let ctx_ref = &ctx;
    let mut stream = futures::stream::iter(todo)
        .map(|q| query::run(ctx_ref, q))
        .buffer_unordered(params.queries_in_flight);
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            next = stream.next() => match next {
                Some(record) => {
                    folder.append(&record)?;
                    if let Some(b) = &bar {
                        b.inc(1);
                        if record.status == Status::Failed {
                            b.set_message("(some failed)");
                        }
                    }
                    records.insert(record.id.clone(), record);
                }
                None => break,
            },
            _ = &mut ctrl_c => {
                interrupted = true;
                break;
            }
        }
    }
    drop(stream);
    if let Some(b) = &bar {
        b.finish();
    }
    if let Some(bars) = &ctx.progress {
        bars.iter().for_each(indicatif::ProgressBar::finish);
    }

    let ordered: Vec<QueryRecord> = queries
        .iter()
        .filter_map(|q| records.get(&q.id).cloned())
        .collect();
    let dialogue = dataset.name == DatasetName::Visdial;
    let score_opts = ScoreOptions {
        keep_reference: !params.exclude_reference,
        original_ks: params.profile == crate::config::Profile::Parity,
    };
    let mut metrics: Vec<(Stage, Vec<(String, f64)>)> = Vec::new();
    let mut submissions = Vec::new();
    let mut stages = params.stages.clone();
    stages.sort();
    for stage in stages {
        let preds = crate::record::predictions(&ordered, stage, dialogue);
        match protocol::score(dataset.name, &queries, &preds, score_opts) {
            Ok(Scored { metrics: m, .. }) => metrics.push((stage, m)),
            Err(protocol::ScoreError::NoGroundTruth { .. }) => {}
            Err(e) => return Err(RunError::Other(e.to_string())),
        }
        let name = stage.as_str();
        let pairs = || {
            queries
                .iter()
                .filter_map(|q| match preds.entries.get(&q.id) {
                    Some(Prediction::Ranking(r)) => Some((q, r.as_slice())),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let sub = match (dataset.name, queries.iter().all(|q| q.targets.is_empty())) {
            (DatasetName::Cirr, true) => {
                Some(submission::cirr_submission(pairs(), CirrMetric::Recall))
            }
            (DatasetName::CirrSubset, true) => Some(submission::cirr_submission(
                pairs(),
                CirrMetric::RecallSubset,
            )),
            (DatasetName::Circo, true) => Some(submission::circo_submission(pairs())),
            _ => None,
        };
        if let Some(v) = sub {
            let file = format!("submission_{}_{name}.json", dataset.name);
            folder.write_json(&file, &v)?;
            submissions.push(folder.path().join(file));
        }
    }
    folder.write_json("metrics.json", &stage_metrics_object(&metrics))?;
    folder.write_text("metrics.txt", &table(&metrics))?;

    let mut fallbacks: BTreeMap<String, usize> = BTreeMap::new();
    for r in &ordered {
        for f in &r.fallbacks {
            *fallbacks.entry(f.step.clone()).or_default() += 1;
        }
    }
    let failed: Vec<(String, String)> = ordered
        .iter()
        .filter(|r| r.status == Status::Failed)
        .map(|r| (r.id.clone(), r.error.clone().unwrap_or_default()))
        .chain(
            queries
                .iter()
                .filter(|q| !records.contains_key(&q.id) && !interrupted)
                .map(|q| (q.id.clone(), "no record".into())),
        )
        .collect();
    let failures_by_kind = crate::record::failures_by_kind(&ordered);
    let roles: BTreeMap<String, StatsSnapshot> = clients
        .all()
        .map(|c| (c.role().to_string(), c.stats().snapshot()))
        .collect();
    let report = RunReport {
        folder: folder.path().to_path_buf(),
        queries: queries.len(),
        resumed,
        failed,
        failures_by_kind,
        metrics,
        roles,
        fallbacks,
        submissions,
        interrupted,
        notes,
    };
    folder.write_json("summary.json", &report)?;
    tracing::info!(interrupted, "run finished");
    Ok(report)
}

/// The original code's data loader keeps only the first 2,400 CIRR val queries (of 4,181, "only
/// for testing"); the parity profile does the same and says so. Returns the note.
pub fn parity_cap(
    queries: &mut Vec<Query>,
    dataset: DatasetName,
    split: &str,
    profile: crate::config::Profile,
) -> Option<String> {
    const CIRR_VAL_CAP: usize = 2400;
    let cirr = matches!(dataset, DatasetName::Cirr | DatasetName::CirrSubset);
    if profile != crate::config::Profile::Parity || !cirr || split != "val" {
        return None;
    }
    let all = queries.len();
    if all <= CIRR_VAL_CAP {
        return None;
    }
    queries.truncate(CIRR_VAL_CAP);
    Some(format!(
        "parity profile: CIRR val cut to its first {CIRR_VAL_CAP} of {all} queries, as the original's data loader does; use profile = \"default\" for the full split"
    ))
}

/// The human-readable end-of-run summary.
pub fn render(report: &RunReport, config: &std::path::Path) -> String {
    let mut out = String::new();
    for n in &report.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&table(&report.metrics));
    out.push_str(&format!(
        "\n{} queries ({} finished earlier), {} failed\n",
        report.queries,
        report.resumed,
        report.failed.len()
    ));
    if !report.failures_by_kind.is_empty() {
        let kinds: Vec<String> = report
            .failures_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!("  failed by kind: {}\n", kinds.join(", ")));
    }
    for (id, e) in report.failed.iter().take(20) {
        out.push_str(&format!("  failed {id}: {e}\n"));
    }
    out.push_str("\nrole          sent  cached  tokens in/out      p50 ms  p95 ms  errors\n");
    for (role, s) in &report.roles {
        let errors: u64 = s.errors.values().sum();
        out.push_str(&format!(
            "{role:<10}  {:>6}  {:>6}  {:>8}/{:<8}  {:>6}  {:>6}  {:>6}\n",
            s.attempts,
            s.cache_hits,
            s.prompt_tokens,
            s.completion_tokens,
            s.latency_p50_ms.map_or("-".into(), |v| format!("{v:.0}")),
            s.latency_p95_ms.map_or("-".into(), |v| format!("{v:.0}")),
            errors
        ));
    }
    if !report.fallbacks.is_empty() {
        let f: Vec<String> = report
            .fallbacks
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!("fallbacks: {}\n", f.join(", ")));
    }
    for s in &report.submissions {
        out.push_str(&format!("submission: {}\n", s.display()));
    }
    out.push_str(&format!("run folder: {}\n", report.folder.display()));
    out.push_str(&format!(
        "report: {}\n",
        report.folder.join("report.html").display()
    ));
    if report.interrupted {
        out.push_str(&format!(
            "interrupted; finished queries are saved. Resume with:\n  imagescope run --config {} --resume {}\n",
            config.display(),
            report.folder.display()
        ));
    }
    out
}
