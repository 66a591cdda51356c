//! `imagescope report RUN_DIR`: HTML pages for people, built from a run folder's journal and
//! metrics — no JavaScript, images linked (not copied), every string that came from a model or a
//! data file escaped.
//!
//! Pages: `report.html` (every query), `report-misses.html` (queries whose target is not at rank 1
//! after the last stage) and `report-changed.html` (queries whose top 10 stages 2 or 3 changed).
//! Each holds the metrics table per stage, a Recall@K curve per stage (inline SVG), failed queries
//! and fallbacks, and per query the reference, the instruction, the target descriptions, the top 10
//! after each stage with the ground truth marked, the verifier's questions and answers and the
//! evaluator's decisions. A page shows at most `PAGE` queries and says how many it left out.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::Stage;
use crate::datasets::ImageKey;
use crate::record::{QueryRecord, RoundRecord, Status};

/// Most queries on one page.
pub const PAGE: usize = 300;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

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

fn img(paths: &HashMap<ImageKey, PathBuf>, key: &ImageKey, class: &str, label: &str) -> String {
    let src = paths
        .get(key)
        .and_then(|p| std::path::absolute(p).ok())
        .map(|p| format!("file://{}", p.display()))
        .unwrap_or_default();
    format!(
        "<figure class=\"{class}\"><img loading=\"lazy\" src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
        esc(&src),
        esc(key.as_str()),
        esc(label)
    )
}

/// Recall@K for K = 1..=50, per stage, as an inline SVG.
fn curve(input: &ReportInput) -> String {
    let (w, h, pad) = (520.0, 240.0, 34.0);
    let colours = ["#1f77b4", "#d62728", "#2ca02c"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"Recall at K\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#444\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\">K (1 to 50)</text><text x=\"4\" y=\"{}\" font-size=\"11\">100%</text><text x=\"10\" y=\"{}\" font-size=\"11\">0%</text>",
        h - pad,
        w - 10.0,
        h - pad,
        h - pad,
        w / 2.0,
        h - 8.0,
        pad + 4.0,
        h - pad
    );
    let scored: Vec<&QueryRecord> = input
        .records
        .iter()
        .filter(|r| !r.targets.is_empty())
        .collect();
    if scored.is_empty() {
        svg.push_str(
            "<text x=\"60\" y=\"120\" font-size=\"13\">no ground truth on this split</text></svg>",
        );
        return svg;
    }
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
        let c = colours[i % colours.len()];
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{c}\">{}</text>",
            points.join(" "),
            w - 60.0,
            pad + 14.0 * i as f64,
            stage_name(*stage)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn query_html(r: &QueryRecord, input: &ReportInput) -> String {
    let mut out = String::new();
    let status = if r.status == Status::Done {
        "done"
    } else {
        "FAILED"
    };
    let _ = write!(
        out,
        "<section class=\"query\" id=\"q{0}\"><h3>query {0} <small>{1}</small></h3>",
        esc(&r.id),
        status
    );
    if let Some(e) = &r.error {
        let _ = write!(out, "<p class=\"error\">{}</p>", esc(e));
    }
    let Some(round) = r.rounds.last() else {
        out.push_str("</section>");
        return out;
    };
    out.push_str("<div class=\"head\">");
    if let Some(reference) = &r.reference {
        out.push_str(&img(&input.paths, reference, "ref", "reference"));
    }
    let _ = write!(
        out,
        "<div><p><b>instruction</b> {}</p><p><b>reasoned from</b> {}</p>",
        esc(&round.instruction),
        esc(&round.reference_description)
    );
    if r.rounds.len() > 1 {
        let _ = write!(
            out,
            "<p>dialogue: {} rounds; the last is shown</p>",
            r.rounds.len()
        );
    }
    if let Some(s1) = &round.s1 {
        out.push_str("<p><b>target descriptions</b></p><ol>");
        for d in &s1.descriptions {
            let _ = write!(out, "<li>{}</li>", esc(d));
        }
        out.push_str("</ol>");
    }
    out.push_str("</div></div>");
    for stage in &input.stages {
        let Some(ranking) = round.ranking_after(*stage) else {
            continue;
        };
        let _ = write!(
            out,
            "<p class=\"stage\">top 10 after {}</p><div class=\"row\">",
            stage_name(*stage)
        );
        for (i, key) in ranking.iter().take(10).enumerate() {
            let class = if r.targets.contains(key) {
                "hit"
            } else {
                "cand"
            };
            out.push_str(&img(
                &input.paths,
                key,
                class,
                &format!("{} {}", i + 1, key.as_str()),
            ));
        }
        out.push_str("</div>");
    }
    if let Some(s2) = &round.s2 {
        if let Some(why) = &s2.skipped {
            let _ = write!(
                out,
                "<p class=\"note\">stage 2 kept the order: {}</p>",
                esc(why)
            );
        } else {
            out.push_str("<table class=\"verify\"><tr><th>question (expected)</th>");
            for c in s2.candidates.iter().take(5) {
                let _ = write!(out, "<th>{}</th>", esc(c.as_str()));
            }
            out.push_str("</tr>");
            for (qi, p) in s2.propositions.iter().enumerate() {
                let _ = write!(out, "<tr><td>{} ({:?})</td>", esc(&p.question), p.expected);
                for row in s2.verdicts.iter().take(5) {
                    let cell = match row.get(qi).and_then(|v| v.yes) {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "error",
                    };
                    let _ = write!(out, "<td>{cell}</td>");
                }
                out.push_str("</tr>");
            }
            out.push_str("</table>");
        }
    }
    if let Some(s3) = &round.s3 {
        out.push_str("<ul class=\"decisions\">");
        for d in &s3.decisions {
            let verdict = match d.accepted {
                Some(true) => "accepted",
                Some(false) => "rejected",
                None => "error",
            };
            let _ = write!(
                out,
                "<li>turn {}: {} <b>{verdict}</b> — {}</li>",
                d.turn,
                esc(d.candidate.as_str()),
                esc(&d.explanation)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
    out
}

/// One page of the report.
pub fn render(input: &ReportInput, view: View) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;margin:1.5em;max-width:1400px}} table{{border-collapse:collapse;margin:.5em 0}}\
         td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}} .row{{display:flex;gap:6px;flex-wrap:wrap}}\
         figure{{margin:0;width:112px;font-size:11px;overflow:hidden}} figure img{{width:108px;height:108px;object-fit:cover;border:2px solid #ddd}}\
         figure.hit img{{border:4px solid #2ca02c}} figure.ref img{{border:2px solid #1f77b4}} .head{{display:flex;gap:1em}}\
         .query{{border-top:1px solid #aaa;padding-top:.5em}} .error{{color:#b00}} .note{{color:#666}} nav a{{margin-right:1em}}\
         </style></head><body>",
        esc(&input.title)
    );
    let _ = write!(out, "<h1>{}</h1><nav>", esc(&input.title));
    for v in [View::All, View::Misses, View::Changed] {
        let label = match v {
            View::All => "all queries",
            View::Misses => "only misses",
            View::Changed => "only changed by stage 2 or 3",
        };
        let _ = write!(
            out,
            "<a href=\"{}\">{}{label}</a>",
            v.file(),
            if v == view { "▶ " } else { "" }
        );
    }
    out.push_str("</nav><h2>Metrics</h2>");
    if input.metrics.is_empty() {
        out.push_str("<p>no metrics (no ground truth on this split)</p>");
    } else {
        out.push_str("<table class=\"metrics\"><tr><th>metric</th>");
        for (s, _) in &input.metrics {
            let _ = write!(out, "<th>{}</th>", stage_name(*s));
        }
        out.push_str("</tr>");
        for (i, (name, _)) in input.metrics[0].1.iter().enumerate() {
            let _ = write!(out, "<tr><td>{}</td>", esc(name));
            for (_, m) in &input.metrics {
                let _ = write!(out, "<td>{:.2}</td>", m.get(i).map_or(f64::NAN, |x| x.1));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
    }
    let _ = write!(out, "<h2>Recall@K after each stage</h2>{}", curve(input));
    let failed: Vec<&QueryRecord> = input
        .records
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    let _ = write!(out, "<h2>Failed queries ({})</h2>", failed.len());
    let by_kind = crate::record::failures_by_kind(failed.iter().copied());
    if !by_kind.is_empty() {
        let kinds: Vec<String> = by_kind
            .iter()
            .map(|(k, n)| format!("{} {n}", esc(k)))
            .collect();
        let _ = write!(out, "<p>by kind: {}</p>", kinds.join(", "));
    }
    out.push_str("<ul>");
    for r in &failed {
        let _ = write!(
            out,
            "<li><a href=\"#q{0}\">{0}</a> [{1}]: {2}</li>",
            esc(&r.id),
            esc(r.failure_kind.as_deref().unwrap_or("other")),
            esc(r.error.as_deref().unwrap_or(""))
        );
    }
    let fallbacks: Vec<(&QueryRecord, &crate::record::Fallback)> = input
        .records
        .iter()
        .flat_map(|r| r.fallbacks.iter().map(move |f| (r, f)))
        .collect();
    let _ = write!(out, "</ul><h2>Fallbacks ({})</h2><ul>", fallbacks.len());
    for (r, f) in fallbacks.iter().take(PAGE) {
        let _ = write!(
            out,
            "<li><a href=\"#q{0}\">{0}</a> {1} round {2}: {3} → {4}</li>",
            esc(&r.id),
            esc(&f.step),
            f.round,
            esc(&f.reason),
            esc(&f.action)
        );
    }
    let shown: Vec<&QueryRecord> = input
        .records
        .iter()
        .filter(|r| keep(r, view, &input.stages))
        .collect();
    let _ = write!(
        out,
        "</ul><h2>Queries ({} of {})</h2>",
        shown.len().min(PAGE),
        shown.len()
    );
    if shown.len() > PAGE {
        let _ = write!(
            out,
            "<p class=\"note\">{} more not shown on this page.</p>",
            shown.len() - PAGE
        );
    }
    for r in shown.iter().take(PAGE) {
        out.push_str(&query_html(r, input));
    }
    out.push_str("</body></html>\n");
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_and_controls() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\"\u{1b}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
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
