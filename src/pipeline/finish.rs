//! Finishing a run (`imagescope run`, part 3 of 3): the journal is read back one record at a
//! time (the last record of a query counts), and only what scoring needs is kept: each query's
//! ranking after each stage, its status and its fallback steps. Then every stage is scored,
//! `metrics.json`, `metrics.txt`, submissions (test splits) and `summary.json` are written.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{DatasetName, Profile, Stage};
use crate::metrics::predictions::{Prediction, Predictions};
use crate::metrics::protocol::{self, ScoreOptions, Scored};
use crate::record::Status;
use crate::runs::folder::read_journal;
use crate::runs::submission::{self, CirrMetric};
use crate::serving::StatsSnapshot;
use crate::serving::server_metrics::ServerFigures;

use super::prepare::Prepared;
use super::run::RunError;

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
    /// Per role, what its servers' `/metrics` pages say of this invocation's work (empty where
    /// no server exports them): `serving::server_metrics`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, ServerFigures>,
    /// The most gallery images (or their decoded pixels) held in memory at once.
    pub peak_images_in_memory: usize,
    /// The bound on it: `IMAGES_PER_SLOT` × the verifier's request slots and twice that per
    /// evaluator slot (`ImagePools::new`).
    pub images_in_memory_bound: usize,
    /// Fallbacks taken, by step.
    pub fallbacks: BTreeMap<String, usize>,
    /// Submission files written (test splits).
    pub submissions: Vec<PathBuf>,
    /// Stopped by a signal (Ctrl-C, SIGTERM, SIGHUP).
    pub interrupted: bool,
    /// Set when some queries have no answer (failed, or not reached): the counts, and why the
    /// metrics are marked.
    pub partial: Option<Partial>,
    /// What a reader of the numbers must know (the parity profile's CIRR val cap, ...).
    pub notes: Vec<String>,
}

/// How much of a run was answered, when not all of it was.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Partial {
    /// Queries with an answer (done).
    pub answered: usize,
    /// Queries that failed.
    pub failed: usize,
    /// Queries never finished (the run was interrupted).
    pub unanswered: usize,
    /// Queries in the run.
    pub total: usize,
}

/// The suffix of a metric scored over the answered queries only: never mistaken for the
/// full-split number.
pub const ANSWERED_ONLY: &str = " (answered only)";

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

/// The metrics table of `metrics.txt` and the end-of-run summary: one column per stage.
pub fn metrics_table(metrics: &[(Stage, Vec<(String, f64)>)]) -> String {
    if metrics.is_empty() {
        return "no metrics (no ground truth on this split)\n".into();
    }
    let rows = crate::metrics::rows_by_name(metrics);
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{:<width$}", "metric");
    for (stage, _) in metrics {
        out.push_str(&format!("  {:>8}", stage.as_str()));
    }
    out.push('\n');
    for (name, values) in rows {
        out.push_str(&format!("{name:<width$}"));
        for v in values {
            match v {
                Some(v) => out.push_str(&format!("  {v:>8.2}")),
                None => out.push_str(&format!("  {:>8}", "-")),
            }
        }
        out.push('\n');
    }
    out
}

/// The table with a first line saying the run is partial, when it is.
pub fn metrics_text(metrics: &[(Stage, Vec<(String, f64)>)], partial: Option<&Partial>) -> String {
    let table = metrics_table(metrics);
    match partial {
        None => table,
        Some(p) => format!(
            "PARTIAL RUN: {} of {} queries answered ({} failed, {} not reached). Rows marked{ANSWERED_ONLY} are over the answered queries only;{}\n{table}",
            p.answered,
            p.total,
            p.failed,
            p.unanswered,
            if p.unanswered > 0 {
                " resume the run to complete it"
            } else {
                " the other rows are the whole split, failures counted as misses"
            }
        ),
    }
}

/// What the journal says of one query, without its record.
struct Outcome {
    status: Status,
    error: Option<String>,
    kind: Option<String>,
    fallbacks: Vec<String>,
}

/// The journal read back: the outcome of each query and the predictions after each stage.
struct ReadBack {
    outcomes: HashMap<String, Outcome>,
    preds: Vec<(Stage, Predictions)>,
}

fn read_back(p: &Prepared) -> Result<ReadBack, RunError> {
    let dialogue = p.dataset.name == DatasetName::Visdial;
    // Only the part of each ranking the protocol (and a submission) can look at is kept, so what
    // scoring holds per query is small and fixed, not the whole kept ranking.
    let submission = p.queries.iter().all(|q| q.targets.is_empty());
    let depth = protocol::scoring_depth(p.dataset.name, score_options(p), submission);
    let mut stages = p.params.stages.clone();
    stages.sort();
    let mut preds: Vec<(Stage, Predictions)> = stages
        .iter()
        .map(|&s| (s, Predictions::default()))
        .collect();
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    // A dialogue's rounds keep only the target's rank in each list and the list's length.
    let targets: HashMap<&str, &crate::datasets::ImageKey> = p
        .queries
        .iter()
        .filter_map(|q| Some((q.id.as_str(), crate::metrics::primary_target(&q.targets)?)))
        .collect();
    let journal = p.folder.path().join("queries.jsonl");
    read_journal(&journal, |r| {
        for (stage, pred) in &mut preds {
            let mut one = crate::record::predictions([&r], *stage, dialogue);
            if let (Some(d), Some(Prediction::Ranking(ranking))) =
                (depth, one.entries.get_mut(&r.id))
            {
                ranking.truncate(d);
                ranking.shrink_to_fit();
            }
            let one_entry = one
                .entries
                .remove(&r.id)
                .map(|x| x.listed(targets.get(r.id.as_str()).copied()));
            match one_entry {
                Some(x) => pred.entries.insert(r.id.clone(), x),
                None => pred.entries.remove(&r.id),
            };
            match one.gallery_ranks.remove(&r.id) {
                Some(g) => pred.gallery_ranks.insert(r.id.clone(), g),
                None => pred.gallery_ranks.remove(&r.id),
            };
        }
        outcomes.insert(
            r.id.clone(),
            Outcome {
                status: r.status,
                error: r.error,
                kind: r.failure_kind,
                fallbacks: r.fallbacks.into_iter().map(|f| f.step).collect(),
            },
        );
    })
    .map_err(|e| {
        RunError::Other(format!(
            "cannot read the journal {}: {e}",
            journal.display()
        ))
    })?;
    Ok(ReadBack { outcomes, preds })
}

/// A split without ground truth whose predictions go to an evaluation server.
fn is_submission_split(p: &Prepared) -> bool {
    p.queries.iter().all(|q| q.targets.is_empty())
        && matches!(
            p.dataset.name,
            DatasetName::Cirr | DatasetName::CirrSubset | DatasetName::Circo
        )
}

fn write_submission(
    p: &Prepared,
    stage: Stage,
    preds: &Predictions,
    suffix: &str,
) -> Result<Option<PathBuf>, RunError> {
    let name = p.dataset.name;
    if !is_submission_split(p) {
        return Ok(None);
    }
    let pairs = || {
        p.queries
            .iter()
            .filter_map(|q| match preds.entries.get(&q.id) {
                Some(Prediction::Ranking(r)) => Some((q, r.as_slice())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let sub = match name {
        DatasetName::Cirr => submission::cirr_submission(pairs(), CirrMetric::Recall),
        DatasetName::CirrSubset => submission::cirr_submission(pairs(), CirrMetric::RecallSubset),
        DatasetName::Circo => submission::circo_submission(pairs()),
        _ => return Ok(None),
    };
    let file = format!("submission_{name}_{}{suffix}.json", stage.as_str());
    p.folder.write_json(&file, &sub)?;
    Ok(Some(p.folder.path().join(file)))
}

/// The per-role counters an earlier invocation of this run wrote to `summary.json` (none for a
/// new run; a summary that cannot be read is said once and counted as none).
fn earlier_roles(p: &Prepared) -> BTreeMap<String, StatsSnapshot> {
    // A new folder has no summary yet; a resumed one has the earlier invocations' totals (the
    // one a SIGKILL ended wrote none: its traffic is not counted).
    let path = p.folder.path().join("summary.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return BTreeMap::new();
    };
    let read = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("roles").cloned())
        .and_then(|r| serde_json::from_value(r).ok());
    read.unwrap_or_else(|| {
        tracing::warn!(
            "{} is not readable; this run's counters start from this invocation",
            path.display()
        );
        BTreeMap::new()
    })
}

fn score_options(p: &Prepared) -> ScoreOptions {
    ScoreOptions {
        keep_reference: !p.params.exclude_reference,
        original_ks: p.params.profile == Profile::Parity,
    }
}

/// Scores the run from its journal and writes the metrics, submissions and summary. It closes the
/// request cache the clients share (every queued answer written, or counted in the summary's
/// notes), so nothing may be asked through `p.clients` after it.
///
/// A run where every query is answered is scored over the whole split. Otherwise it is
/// `partial`: `metrics.json` carries `"partial": {answered, failed, unanswered, total}`, every
/// stage also gets the metrics over the answered queries under names ending in
/// `ANSWERED_ONLY`, and the plain names (the whole split, failures as misses) are kept only when
/// nothing is unanswered. Test-split submissions are written only for a complete run, or with
/// `--allow-partial` under a name that carries the answered count.
pub fn finish(
    p: &Prepared,
    interrupted: bool,
    allow_partial: bool,
    servers: BTreeMap<String, ServerFigures>,
) -> Result<RunReport, RunError> {
    let ReadBack { outcomes, preds } = read_back(p)?;
    let in_run: std::collections::HashSet<&str> = p.queries.iter().map(|q| q.id.as_str()).collect();
    let score_opts = score_options(p);
    let status = |id: &str| outcomes.get(id).map(|o| o.status);
    let answered: Vec<crate::datasets::Query> = p
        .queries
        .iter()
        .filter(|q| status(&q.id) == Some(Status::Done))
        .cloned()
        .collect();
    let failed_n = p
        .queries
        .iter()
        .filter(|q| status(&q.id) == Some(Status::Failed))
        .count();
    let partial = (answered.len() < p.queries.len()).then(|| Partial {
        answered: answered.len(),
        failed: failed_n,
        unanswered: p.queries.len() - answered.len() - failed_n,
        total: p.queries.len(),
    });
    let mut metrics: Vec<(Stage, Vec<(String, f64)>)> = Vec::new();
    let mut submissions = Vec::new();
    for (stage, mut pred) in preds {
        pred.entries
            .retain(|id, _| outcomes.get(id).is_some_and(|o| o.status == Status::Done));
        let mut rows = Vec::new();
        if partial.as_ref().is_none_or(|x| x.unanswered == 0) {
            match protocol::score(p.dataset.name, &p.queries, &pred, score_opts) {
                Ok(Scored { metrics: m, .. }) => rows.extend(m),
                Err(protocol::ScoreError::NoGroundTruth { .. }) => {}
                Err(e) => return Err(RunError::Other(e.to_string())),
            }
        }
        if partial.is_some() && !answered.is_empty() {
            match protocol::score(p.dataset.name, &answered, &pred, score_opts) {
                Ok(Scored { metrics: m, .. }) => rows.extend(
                    m.into_iter()
                        .map(|(name, v)| (format!("{name}{ANSWERED_ONLY}"), v)),
                ),
                Err(protocol::ScoreError::NoGroundTruth { .. }) => {}
                Err(e) => return Err(RunError::Other(e.to_string())),
            }
        }
        if !rows.is_empty() {
            metrics.push((stage, rows));
        }
        let suffix = match &partial {
            None => Some(String::new()),
            Some(x) if allow_partial => Some(format!("_partial-{}-of-{}", x.answered, x.total)),
            Some(_) => None,
        };
        if let Some(suffix) = suffix {
            submissions.extend(write_submission(p, stage, &pred, &suffix)?);
        } else if is_submission_split(p) {
            tracing::warn!(
                "no submission file for {}: the run is partial; resume it, or pass --allow-partial",
                stage.as_str()
            );
        }
    }
    let mut metrics_json = stage_metrics_object(&metrics);
    if let (Some(x), serde_json::Value::Object(m)) = (&partial, &mut metrics_json) {
        m.insert(
            "partial".into(),
            serde_json::to_value(x).unwrap_or_default(),
        );
    }
    p.folder.write_json("metrics.json", &metrics_json)?;
    p.folder
        .write_text("metrics.txt", &metrics_text(&metrics, partial.as_ref()))?;

    let mut fallbacks: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    for q in &p.queries {
        match outcomes.get(&q.id) {
            Some(o) => {
                for step in &o.fallbacks {
                    *fallbacks.entry(step.clone()).or_default() += 1;
                }
                if o.status == Status::Failed {
                    let kind = o.kind.clone().unwrap_or_else(|| "other".into());
                    *failures_by_kind.entry(kind).or_default() += 1;
                    failed.push((q.id.clone(), o.error.clone().unwrap_or_default()));
                }
            }
            None if !interrupted => failed.push((q.id.clone(), "no record".into())),
            None => {}
        }
    }
    let stray = outcomes
        .keys()
        .filter(|id| !in_run.contains(id.as_str()))
        .count();
    if stray > 0 {
        tracing::info!("{stray} journal records are for queries outside this run's selection");
    }
    // Counters add up over every invocation of the run (a resume starts its clients at zero).
    let earlier = earlier_roles(p);
    let roles: BTreeMap<String, StatsSnapshot> = p
        .clients
        .all()
        .map(|c| {
            let role = c.role().to_string();
            let now = c.stats().snapshot();
            let total = match earlier.get(&role) {
                Some(e) => now.plus(e),
                None => now,
            };
            (role, total)
        })
        .collect();
    // Every answer queued for the request cache is stored (or counted as not) before the summary
    // says so: no request is in flight once the run is finishing.
    let mut notes = p.notes.clone();
    if let Some(cache) = p.clients.cache() {
        cache.close();
        let n = cache.unstored();
        if n > 0 {
            notes.push(format!(
                "{n} answer(s) could not be stored in the request cache {} (output.log says why): this run's results are whole, a rerun asks for those again",
                cache.path().display()
            ));
        }
    }
    let report = RunReport {
        folder: p.folder.path().to_path_buf(),
        queries: p.queries.len(),
        resumed: p.done.len(),
        failed,
        failures_by_kind,
        metrics,
        roles,
        servers,
        peak_images_in_memory: p.ctx.images.peak.load(std::sync::atomic::Ordering::Relaxed),
        images_in_memory_bound: p.ctx.images.bound,
        fallbacks,
        submissions,
        interrupted,
        partial,
        notes,
    };
    p.folder.write_json("summary.json", &report)?;
    tracing::info!(interrupted, "run finished");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circo_aspect_rows_keep_their_names_when_stages_order_them_differently() {
        let row = |n: &str, v: f64| (format!("semantic_mAP@10/{n}"), v);
        // Aspects are sorted by value within each stage, so the orders differ.
        let metrics = vec![
            (
                Stage::S1,
                vec![
                    ("mAP@5".to_string(), 10.0),
                    row("colour", 30.0),
                    row("shape", 20.0),
                ],
            ),
            (
                Stage::S3,
                vec![
                    ("mAP@5".to_string(), 12.0),
                    row("shape", 50.0),
                    row("colour", 5.0),
                ],
            ),
        ];
        let table = metrics_table(&metrics);
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name}: {table}"))
                .split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(line("semantic_mAP@10/colour"), ["30.00", "5.00"], "{table}");
        assert_eq!(line("semantic_mAP@10/shape"), ["20.00", "50.00"], "{table}");
        let partial = Partial {
            answered: 3,
            failed: 1,
            unanswered: 0,
            total: 4,
        };
        let text = metrics_text(&metrics, Some(&partial));
        assert!(
            text.starts_with("PARTIAL RUN: 3 of 4 queries answered (1 failed, 0 not reached)"),
            "{text}"
        );
    }
}
