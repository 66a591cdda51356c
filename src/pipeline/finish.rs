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
    /// The most gallery images (or their decoded pixels) held in memory at once.
    pub peak_images_in_memory: usize,
    /// The bound on it: `IMAGES_PER_SLOT` × the verifier's and evaluator's request slots.
    pub images_in_memory_bound: usize,
    /// Fallbacks taken, by step.
    pub fallbacks: BTreeMap<String, usize>,
    /// Submission files written (test splits).
    pub submissions: Vec<PathBuf>,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
    /// What a reader of the numbers must know (the parity profile's CIRR val cap, ...).
    pub notes: Vec<String>,
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

/// The metrics table of `metrics.txt` and the end-of-run summary: one column per stage.
pub fn metrics_table(metrics: &[(Stage, Vec<(String, f64)>)]) -> String {
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
            match one.entries.remove(&r.id) {
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

fn write_submission(
    p: &Prepared,
    stage: Stage,
    preds: &Predictions,
) -> Result<Option<PathBuf>, RunError> {
    let name = p.dataset.name;
    if !p.queries.iter().all(|q| q.targets.is_empty()) {
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
    let file = format!("submission_{name}_{}.json", stage.as_str());
    p.folder.write_json(&file, &sub)?;
    Ok(Some(p.folder.path().join(file)))
}

fn score_options(p: &Prepared) -> ScoreOptions {
    ScoreOptions {
        keep_reference: !p.params.exclude_reference,
        original_ks: p.params.profile == Profile::Parity,
    }
}

/// Scores the run from its journal and writes the metrics, submissions and summary.
pub fn finish(p: &Prepared, interrupted: bool) -> Result<RunReport, RunError> {
    let ReadBack { outcomes, preds } = read_back(p)?;
    let in_run: std::collections::HashSet<&str> = p.queries.iter().map(|q| q.id.as_str()).collect();
    let score_opts = score_options(p);
    let mut metrics: Vec<(Stage, Vec<(String, f64)>)> = Vec::new();
    let mut submissions = Vec::new();
    for (stage, mut pred) in preds {
        pred.entries
            .retain(|id, _| outcomes.get(id).is_some_and(|o| o.status == Status::Done));
        match protocol::score(p.dataset.name, &p.queries, &pred, score_opts) {
            Ok(Scored { metrics: m, .. }) => metrics.push((stage, m)),
            Err(protocol::ScoreError::NoGroundTruth { .. }) => {}
            Err(e) => return Err(RunError::Other(e.to_string())),
        }
        submissions.extend(write_submission(p, stage, &pred)?);
    }
    p.folder
        .write_json("metrics.json", &stage_metrics_object(&metrics))?;
    p.folder
        .write_text("metrics.txt", &metrics_table(&metrics))?;

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
    let roles: BTreeMap<String, StatsSnapshot> = p
        .clients
        .all()
        .map(|c| (c.role().to_string(), c.stats().snapshot()))
        .collect();
    let report = RunReport {
        folder: p.folder.path().to_path_buf(),
        queries: p.queries.len(),
        resumed: p.done.len(),
        failed,
        failures_by_kind,
        metrics,
        roles,
        peak_images_in_memory: p.ctx.peak_images.load(std::sync::atomic::Ordering::Relaxed),
        images_in_memory_bound: p.ctx.image_permits,
        fallbacks,
        submissions,
        interrupted,
        notes: p.notes.clone(),
    };
    p.folder.write_json("summary.json", &report)?;
    tracing::info!(interrupted, "run finished");
    Ok(report)
}
