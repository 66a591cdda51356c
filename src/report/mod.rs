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
//!
//! A run's journal is streamed (`read`): every query leaves a small `Brief`, and only the queries
//! a page lists are held whole, so building the report of a 25,000-query run costs about as much
//! memory as that of a 1,000-query one.

use std::collections::HashMap;

use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::config::Stage;
use crate::datasets::ImageKey;
use crate::record::{QueryRecord, RoundRecord, Status};

mod read;
pub use read::{ReportError, from_run_folder};

/// Most queries on one page.
pub const PAGE: usize = 300;

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::S1 => "s1",
        Stage::S2 => "s2",
        Stage::S3 => "s3",
    }
}

/// Everything a report is made from. A run's report holds a small brief of every query and the
/// whole record only of the queries some page shows, so its size does not grow with the run's
/// length beyond a few dozen bytes a query (see `read`).
pub struct ReportInput {
    /// Page title (dataset, split, run).
    pub title: String,
    /// Stages run, in order.
    pub stages: Vec<Stage>,
    /// Metric tables per stage, in order.
    pub metrics: Vec<(Stage, Vec<(String, f64)>)>,
    /// Gallery key → image file.
    pub paths: HashMap<ImageKey, PathBuf>,
    /// One brief per query, in natural id order.
    briefs: Vec<Brief>,
    /// Whole records of the queries a page shows, by id.
    details: HashMap<String, QueryRecord>,
}

impl ReportInput {
    /// A report of records already in memory (the `search` page, tests): each is briefed and kept.
    /// A later record of an id replaces an earlier one, as in a resumed journal.
    pub fn from_records(
        title: String,
        stages: Vec<Stage>,
        metrics: Vec<(Stage, Vec<(String, f64)>)>,
        paths: HashMap<ImageKey, PathBuf>,
        records: impl IntoIterator<Item = QueryRecord>,
    ) -> Self {
        let mut stages = stages;
        stages.sort();
        let mut briefs = HashMap::new();
        let mut details = HashMap::new();
        for r in records {
            briefs.insert(r.id.clone(), Brief::of(&r, &stages));
            details.insert(r.id.clone(), r);
        }
        ReportInput {
            title,
            stages,
            metrics,
            paths,
            briefs: read::in_natural_order(briefs),
            details,
        }
    }
}

/// What the report keeps of every query: enough for the curve, the counts and the choice of
/// which queries each page shows.
#[derive(Debug, Clone)]
struct Brief {
    id: String,
    /// The failure kind, when the query failed.
    failed: Option<String>,
    /// The query has ground truth, so it counts in the curve.
    scored: bool,
    /// Rank of the first target found after each stage of `ReportInput::stages`.
    ranks: Box<[Option<u32>]>,
    misses: bool,
    changed: bool,
    fallbacks: usize,
}

impl Brief {
    fn of(r: &QueryRecord, stages: &[Stage]) -> Self {
        let ranks = stages
            .iter()
            .map(|&s| {
                r.rounds
                    .last()
                    .and_then(|round| rank(round, s, &r.targets))
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            })
            .collect();
        Brief {
            id: r.id.clone(),
            failed: (r.status == Status::Failed)
                .then(|| r.failure_kind.clone().unwrap_or_else(|| "other".into())),
            scored: !r.targets.is_empty(),
            ranks,
            misses: keep(r, View::Misses, stages),
            changed: keep(r, View::Changed, stages),
            fallbacks: r.fallbacks.len(),
        }
    }

    fn shown_in(&self, view: View) -> bool {
        match view {
            View::All => true,
            View::Misses => self.misses,
            View::Changed => self.changed,
        }
    }
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

/// The rank of the query's primary target, the one Recall@K counts (`metrics::primary_target`).
fn rank(round: &RoundRecord, stage: Stage, targets: &[ImageKey]) -> Option<usize> {
    let primary = crate::metrics::primary_target(targets)?;
    round
        .ranking_after(stage)?
        .iter()
        .position(|k| k == primary)
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
    let scored: Vec<&Brief> = input.briefs.iter().filter(|b| b.scored).collect();
    let mut lines = Vec::new();
    if !scored.is_empty() {
        for (i, stage) in input.stages.iter().enumerate() {
            let points: Vec<String> = (1..=50u32)
                .map(|k| {
                    let hits = scored
                        .iter()
                        .filter(|b| b.ranks.get(i).copied().flatten().is_some_and(|r| r <= k))
                        .count();
                    let recall = hits as f64 / scored.len() as f64;
                    let x = pad + f64::from(k - 1) / 49.0 * (w - pad - 10.0);
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
                        let class = if crate::metrics::primary_target(&r.targets) == Some(key) {
                            "hit"
                        } else if r.targets.contains(key) {
                            "gt"
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
    let metric_rows: Vec<serde_json::Value> = crate::metrics::rows_by_name(&input.metrics)
        .into_iter()
        .map(|(name, values)| {
            let values: Vec<String> = values
                .iter()
                .map(|v| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}")))
                .collect();
            serde_json::json!({"name": name, "values": values})
        })
        .collect();
    let failed_briefs = || input.briefs.iter().filter(|b| b.failed.is_some());
    let failed: Vec<serde_json::Value> = failed_briefs()
        .take(PAGE)
        .map(|b| {
            let error = input.details.get(&b.id).and_then(|r| r.error.as_deref());
            serde_json::json!({
                "id": b.id,
                "kind": b.failed.as_deref().unwrap_or("other"),
                "error": error.unwrap_or(""),
            })
        })
        .collect();
    let mut by_kind: std::collections::BTreeMap<&str, usize> = Default::default();
    for kind in failed_briefs().filter_map(|b| b.failed.as_deref()) {
        *by_kind.entry(kind).or_default() += 1;
    }
    let failed_by_kind: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let fallbacks: Vec<serde_json::Value> = input
        .briefs
        .iter()
        .filter(|b| b.fallbacks > 0)
        .filter_map(|b| input.details.get(&b.id))
        .flat_map(|r| r.fallbacks.iter().map(move |f| (r, f)))
        .take(PAGE)
        .map(|(r, f)| {
            serde_json::json!({"id": r.id, "step": f.step, "round": f.round, "reason": f.reason, "action": f.action})
        })
        .collect();
    let shown = || input.briefs.iter().filter(|b| b.shown_in(view));
    let queries: Vec<QueryView> = shown()
        .take(PAGE)
        .filter_map(|b| input.details.get(&b.id))
        .map(|r| query_view(r, input))
        .collect();
    let ctx = serde_json::json!({
        "title": input.title,
        "nav": nav,
        "metric_stages": input.metrics.iter().map(|(s, _)| stage_name(*s)).collect::<Vec<_>>(),
        "metric_rows": metric_rows,
        "curve": curve(input),
        "failed": failed,
        "failed_total": failed_briefs().count(),
        "failed_by_kind": failed_by_kind,
        "fallbacks_total": input.briefs.iter().map(|b| b.fallbacks).sum::<usize>(),
        "fallbacks": fallbacks,
        "queries_total": shown().count(),
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
            crate::files::write_atomic(&path, render(input, v))?;
            Ok(path)
        })
        .collect()
}
