//! `imagescope report RUN_DIR`: HTML pages for people, built from a run folder's journal and
//! metrics — no JavaScript, images linked (not copied) by `file://` URLs. The pages are one
//! minijinja template, `report/page.html`, rendered with HTML auto-escaping, so every string that
//! came from a model, a data file or a path is escaped by the engine; this module only prepares
//! plain view data (rows, figures, the curve's points).
//!
//! Pages: `report.html` (every query), `report-misses.html` (queries whose target is not at rank 1
//! after the last stage) and `report-changed.html` (queries whose top 10 stages 2 or 3 changed).
//! Each holds the metrics table per stage, a Recall@K curve per stage (inline SVG), failed queries
//! and fallbacks, and per query the reference, the instruction, the target descriptions, the top 10
//! after each stage with the ground truth marked, the verifier's questions and answers and the
//! evaluator's decisions. A page shows at most `PAGE` queries and says how many it left out.

use std::collections::HashMap;

use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::config::Stage;
use crate::datasets::ImageKey;
use crate::record::{QueryRecord, RoundRecord, Status};

/// Most queries on one page.
pub const PAGE: usize = 300;

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::S1 => "s1",
        Stage::S2 => "s2",
        Stage::S3 => "s3",
    }
}

/// Everything a report is made from.
pub struct ReportInput {
    /// Page title (dataset, split, run).
    pub title: String,
    /// Stages run.
    pub stages: Vec<Stage>,
    /// Metric tables per stage, in order.
    pub metrics: Vec<(Stage, Vec<(String, f64)>)>,
    /// Journal records in query order.
    pub records: Vec<QueryRecord>,
    /// Gallery key → image file.
    pub paths: HashMap<ImageKey, PathBuf>,
}

/// Which queries a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Every query.
    All,
    /// Queries whose first target is not at rank 1 after the last stage.
    Misses,
    /// Queries whose top 10 changed in stage 2 or 3.
    Changed,
}

impl View {
    /// File name of the page.
    pub fn file(self) -> &'static str {
        match self {
            View::All => "report.html",
            View::Misses => "report-misses.html",
            View::Changed => "report-changed.html",
        }
    }
}

fn rank(round: &RoundRecord, stage: Stage, targets: &[ImageKey]) -> Option<usize> {
    round
        .ranking_after(stage)?
        .iter()
        .position(|k| targets.contains(k))
        .map(|p| p + 1)
}

fn last_stage(stages: &[Stage]) -> Stage {
    stages.iter().copied().max().unwrap_or(Stage::S1)
}

fn keep(r: &QueryRecord, view: View, stages: &[Stage]) -> bool {
    let Some(round) = r.rounds.last() else {
        return view == View::All;
    };
    match view {
        View::All => true,
        View::Misses => rank(round, last_stage(stages), &r.targets) != Some(1),
        View::Changed => {
            let top = |s| {
                round
                    .ranking_after(s)
                    .map(|k| k.iter().take(10).cloned().collect::<Vec<_>>())
            };
            top(Stage::S1) != top(Stage::S2) || top(Stage::S2) != top(Stage::S3)
        }
    }
}

#[derive(Serialize)]
struct Figure {
    src: String,
    alt: String,
    class: &'static str,
    label: String,
}

/// A gallery image as a `file://` URL (percent-encoded; empty when the image is unknown).
fn figure(
    paths: &HashMap<ImageKey, PathBuf>,
    key: &ImageKey,
    class: &'static str,
    label: String,
) -> Figure {
    let src = paths
        .get(key)
        .and_then(|p| std::path::absolute(p).ok())
        .and_then(|p| url::Url::from_file_path(p).ok())
        .map(String::from)
        .unwrap_or_default();
    Figure {
        src,
        alt: key.as_str().to_string(),
        class,
        label,
    }
}

#[derive(Serialize)]
struct Line {
    colour: &'static str,
    points: String,
    stage: &'static str,
    label_y: f64,
}

#[derive(Serialize)]
struct Curve {
    w: f64,
    h: f64,
    pad: f64,
    bottom: f64,
    right: f64,
    lines: Vec<Line>,
}

/// Recall@K for K = 1..=50, per stage: the polylines of the inline SVG.
fn curve(input: &ReportInput) -> Curve {
    let (w, h, pad) = (520.0, 240.0, 34.0);
    let colours = ["#1f77b4", "#d62728", "#2ca02c"];
    let scored: Vec<&QueryRecord> = input
        .records
        .iter()
        .filter(|r| !r.targets.is_empty())
        .collect();
    let mut lines = Vec::new();
    if !scored.is_empty() {
        for (i, stage) in input.stages.iter().enumerate() {
            let ranks: Vec<Option<usize>> = scored
                .iter()
                .map(|r| {
                    r.rounds
                        .last()
                        .and_then(|round| rank(round, *stage, &r.targets))
                })
                .collect();
            let points: Vec<String> = (1..=50)
                .map(|k| {
                    let recall = ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64
                        / ranks.len() as f64;
                    let x = pad + (k - 1) as f64 / 49.0 * (w - pad - 10.0);
                    let y = h - pad - recall * (h - 2.0 * pad);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            lines.push(Line {
                colour: colours[i % colours.len()],
                points: points.join(" "),
                stage: stage_name(*stage),
                label_y: pad + 14.0 * i as f64,
            });
        }
    }
    Curve {
        w,
        h,
        pad,
        bottom: h - pad,
        right: w - 10.0,
        lines,
    }
}

#[derive(Serialize)]
struct StageRow {
    stage: &'static str,
    figures: Vec<Figure>,
}

#[derive(Serialize)]
struct VerifyRow {
    question: String,
    expected: String,
    cells: Vec<&'static str>,
}

#[derive(Serialize)]
struct Verify {
    skipped: Option<String>,
    candidates: Vec<String>,
    rows: Vec<VerifyRow>,
}

#[derive(Serialize)]
struct Decision {
    turn: usize,
    candidate: String,
    verdict: &'static str,
    explanation: String,
}

#[derive(Serialize)]
struct RoundView {
    reference: Option<Figure>,
    instruction: String,
    reasoned_from: String,
    rounds: usize,
    descriptions: Option<Vec<String>>,
    stages: Vec<StageRow>,
    verify: Option<Verify>,
    decisions: Option<Vec<Decision>>,
}

#[derive(Serialize)]
struct QueryView {
    id: String,
    status: &'static str,
    error: Option<String>,
    round: Option<RoundView>,
}

fn verify_view(s2: &crate::record::S2Record) -> Verify {
    let rows = s2
        .propositions
        .iter()
        .enumerate()
        .map(|(qi, p)| VerifyRow {
            question: p.question.clone(),
            expected: format!("{:?}", p.expected),
            cells: s2
                .verdicts
                .iter()
                .take(5)
                .map(|row| match row.get(qi).and_then(|v| v.yes) {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "error",
                })
                .collect(),
        })
        .collect();
    Verify {
        skipped: s2.skipped.clone(),
        candidates: s2
            .candidates
            .iter()
            .take(5)
            .map(|c| c.as_str().to_string())
            .collect(),
        rows,
    }
}

fn query_view(r: &QueryRecord, input: &ReportInput) -> QueryView {
    let round = r.rounds.last().map(|round| RoundView {
        reference: r
            .reference
            .as_ref()
            .map(|k| figure(&input.paths, k, "ref", "reference".into())),
        instruction: round.instruction.clone(),
        reasoned_from: round.reference_description.clone(),
        rounds: r.rounds.len(),
        descriptions: round.s1.as_ref().map(|s1| s1.descriptions.clone()),
        stages: input
            .stages
            .iter()
            .filter_map(|stage| {
                let ranking = round.ranking_after(*stage)?;
                let figures = ranking
                    .iter()
                    .take(10)
                    .enumerate()
                    .map(|(i, key)| {
                        let class = if r.targets.contains(key) {
                            "hit"
                        } else {
                            "cand"
                        };
                        figure(
                            &input.paths,
                            key,
                            class,
                            format!("{} {}", i + 1, key.as_str()),
                        )
                    })
                    .collect();
                Some(StageRow {
                    stage: stage_name(*stage),
                    figures,
                })
            })
            .collect(),
        verify: round.s2.as_ref().map(verify_view),
        decisions: round.s3.as_ref().map(|s3| {
            s3.decisions
                .iter()
                .map(|d| Decision {
                    turn: d.turn,
                    candidate: d.candidate.as_str().to_string(),
                    verdict: match d.accepted {
                        Some(true) => "accepted",
                        Some(false) => "rejected",
                        None => "error",
                    },
                    explanation: d.explanation.clone(),
                })
                .collect()
        }),
    });
    QueryView {
        id: r.id.clone(),
        status: if r.status == Status::Done {
            "done"
        } else {
            "FAILED"
        },
        error: r.error.clone(),
        round,
    }
}

const TEMPLATE: &str = include_str!("page.html");

/// One page of the report, rendered from `report/page.html` with HTML auto-escaping: every
/// string from a model, a data file or a path is escaped by the template engine.
pub fn render(input: &ReportInput, view: View) -> String {
    let nav: Vec<serde_json::Value> = [View::All, View::Misses, View::Changed]
        .into_iter()
        .map(|v| {
            let label = match v {
                View::All => "all queries",
                View::Misses => "only misses",
                View::Changed => "only changed by stage 2 or 3",
            };
            serde_json::json!({"file": v.file(), "label": label, "current": v == view})
        })
        .collect();
    let metric_rows: Vec<serde_json::Value> = input
        .metrics
        .first()
        .map(|(_, first)| {
            first
                .iter()
                .enumerate()
                .map(|(i, (name, _))| {
                    let values: Vec<String> = input
                        .metrics
                        .iter()
                        .map(|(_, m)| format!("{:.2}", m.get(i).map_or(f64::NAN, |x| x.1)))
                        .collect();
                    serde_json::json!({"name": name, "values": values})
                })
                .collect()
        })
        .unwrap_or_default();
    let failed: Vec<serde_json::Value> = input
        .records
        .iter()
        .filter(|r| r.status == Status::Failed)
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "kind": r.failure_kind.as_deref().unwrap_or("other"),
                "error": r.error.as_deref().unwrap_or(""),
            })
        })
        .collect();
    let failed_by_kind: Vec<String> = crate::record::failures_by_kind(&input.records)
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let fallbacks: Vec<serde_json::Value> = input
        .records
        .iter()
        .flat_map(|r| r.fallbacks.iter().map(move |f| (r, f)))
        .map(|(r, f)| {
            serde_json::json!({"id": r.id, "step": f.step, "round": f.round, "reason": f.reason, "action": f.action})
        })
        .collect();
    let shown: Vec<&QueryRecord> = input
        .records
        .iter()
        .filter(|r| keep(r, view, &input.stages))
        .collect();
    let queries: Vec<QueryView> = shown
        .iter()
        .take(PAGE)
        .map(|r| query_view(r, input))
        .collect();
    let ctx = serde_json::json!({
        "title": input.title,
        "nav": nav,
        "metric_stages": input.metrics.iter().map(|(s, _)| stage_name(*s)).collect::<Vec<_>>(),
        "metric_rows": metric_rows,
        "curve": curve(input),
        "failed": failed,
        "failed_by_kind": failed_by_kind,
        "fallbacks_total": fallbacks.len(),
        "fallbacks": fallbacks.into_iter().take(PAGE).collect::<Vec<_>>(),
        "queries_total": shown.len(),
        "queries": queries,
    });
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // The name ends in .html: the engine escapes every value for HTML.
    let rendered = env
        .add_template("page.html", TEMPLATE)
        .and_then(|()| env.get_template("page.html"))
        .and_then(|t| t.render(minijinja::value::Serde(&ctx)));
    rendered.unwrap_or_else(|e| {
        // A template bug, not bad data; say so on the page rather than losing the run's output.
        format!(
            "<!doctype html><p>report template error: {}</p>\n",
            e.to_string().replace('&', "&amp;").replace('<', "&lt;")
        )
    })
}

/// Writes every page into `dir`; returns their paths.
pub fn write_all(input: &ReportInput, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    [View::All, View::Misses, View::Changed]
        .into_iter()
        .map(|v| {
            let path = dir.join(v.file());
            std::fs::write(&path, render(input, v))?;
            Ok(path)
        })
        .collect()
}

/// A report problem, naming the run folder.
#[derive(Debug, thiserror::Error)]
#[error("report for {dir}: {message}")]
pub struct ReportError {
    /// The run folder.
    pub dir: PathBuf,
    /// What is wrong.
    pub message: String,
}

#[derive(serde::Deserialize)]
struct Resolved {
    dataset: crate::config::DatasetSection,
    pipeline: crate::config::PipelineParams,
}

/// Reads a run folder (journal, metrics, resolved config) and the gallery it ran on.
pub fn from_run_folder(dir: &Path) -> Result<ReportInput, ReportError> {
    let bad = |message: String| ReportError {
        dir: dir.to_path_buf(),
        message,
    };
    let config = std::fs::read_to_string(dir.join("config.resolved.toml")).map_err(|e| {
        bad(format!(
            "no config.resolved.toml ({e}); is this a run folder?"
        ))
    })?;
    let resolved: Resolved =
        toml::from_str(&config).map_err(|e| bad(format!("config.resolved.toml: {e}")))?;
    let journal = std::fs::read_to_string(dir.join("queries.jsonl")).unwrap_or_default();
    let mut records: Vec<QueryRecord> = journal
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    records.sort_by_key(|r| natural(&r.id));
    let metrics_json: serde_json::Map<String, serde_json::Value> =
        std::fs::read_to_string(dir.join("metrics.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    let mut metrics = Vec::new();
    for (stage_name, table) in &metrics_json {
        let Ok(stage) = stage_name.parse::<Stage>() else {
            continue;
        };
        let rows = table
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                    .collect()
            })
            .unwrap_or_default();
        metrics.push((stage, rows));
    }
    let d = &resolved.dataset;
    let spec = crate::datasets::DatasetSpec {
        name: d.name,
        root: d.root.clone(),
        split: d.split.clone(),
        image_ext: d.image_ext.clone(),
    };
    let paths = crate::datasets::load_gallery(&spec)
        .map(|g| g.into_iter().map(|i| (i.key, i.path)).collect())
        .unwrap_or_else(|e| {
            tracing::warn!("images will not show: {e}");
            HashMap::new()
        });
    let mut stages = resolved.pipeline.stages.clone();
    stages.sort();
    Ok(ReportInput {
        title: format!(
            "imagescope: {} {} — {}",
            d.name,
            d.split,
            dir.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        stages,
        metrics,
        records,
        paths,
    })
}

/// Sort key putting "9" before "10".
fn natural(id: &str) -> (u64, String) {
    (id.parse().unwrap_or(u64::MAX), id.to_string())
}
