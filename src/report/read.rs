//! Reading a run folder into a `ReportInput` without holding the run: the journal is streamed
//! twice. The first pass keeps a brief of every query (its ranks, failure kind, page flags; the
//! last record of an id wins, as in scoring); the briefs, in natural id order, decide which
//! queries the pages list (at most `PAGE` per page, failure list and fallback list); the second
//! pass keeps the whole records of only those queries.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::{Brief, PAGE, ReportInput, View};
use crate::config::Stage;
use crate::record::QueryRecord;
use crate::runs::folder::read_journal;

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

/// Sort key putting "9" before "10".
fn natural(id: &str) -> (u64, &str) {
    (id.parse().unwrap_or(u64::MAX), id)
}

/// The briefs sorted by natural id order.
pub(super) fn in_natural_order(briefs: HashMap<String, Brief>) -> Vec<Brief> {
    let mut v: Vec<Brief> = briefs.into_values().collect();
    v.sort_by(|a, b| natural(&a.id).cmp(&natural(&b.id)));
    v
}

/// The ids whose whole records some page shows: the first `PAGE` of each view, the first `PAGE`
/// failed queries, and the queries holding the first `PAGE` fallbacks.
fn wanted(briefs: &[Brief]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for view in [View::All, View::Misses, View::Changed] {
        let shown = briefs.iter().filter(|b| b.shown_in(view)).take(PAGE);
        ids.extend(shown.map(|b| b.id.clone()));
    }
    let failed = briefs.iter().filter(|b| b.failed.is_some()).take(PAGE);
    ids.extend(failed.map(|b| b.id.clone()));
    let mut lines = 0;
    for b in briefs.iter().filter(|b| b.fallbacks > 0) {
        if lines >= PAGE {
            break;
        }
        lines += b.fallbacks;
        ids.insert(b.id.clone());
    }
    ids
}

/// Streams the journal into briefs, then into the records the pages show.
fn read_queries(
    dir: &Path,
    stages: &[Stage],
) -> Result<(Vec<Brief>, HashMap<String, QueryRecord>), ReportError> {
    let journal = dir.join("queries.jsonl");
    if !journal.exists() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let cannot = |e: std::io::Error| ReportError {
        dir: dir.to_path_buf(),
        message: format!("cannot read the journal {}: {e}", journal.display()),
    };
    let mut briefs = HashMap::new();
    let skipped = read_journal(&journal, |r| {
        briefs.insert(r.id.clone(), Brief::of(&r, stages));
    })
    .map_err(cannot)?;
    if skipped > 0 {
        tracing::warn!(
            "{}: {skipped} line(s) are not query records and are left out of the report",
            journal.display()
        );
    }
    let briefs = in_natural_order(briefs);
    let wanted = wanted(&briefs);
    let mut details = HashMap::new();
    read_journal(&journal, |r| {
        if wanted.contains(&r.id) {
            details.insert(r.id.clone(), r);
        }
    })
    .map_err(cannot)?;
    Ok((briefs, details))
}

fn read_metrics(dir: &Path) -> Vec<(Stage, Vec<(String, f64)>)> {
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
    metrics
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
    let (briefs, details) = read_queries(dir, &stages)?;
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
        metrics: read_metrics(dir),
        paths,
        briefs,
        details,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::datasets::ImageKey;
    use crate::record::{Fallback, RoundRecord, S1Record, Status};

    /// Query `i`: its target `t{i}` at rank `i % 7 + 1` after stage 1; every 10th failed; every
    /// 50th with a fallback.
    fn record(i: usize) -> QueryRecord {
        let target = ImageKey(format!("t{i}"));
        let mut ranking: Vec<ImageKey> = (0..i % 7).map(|j| ImageKey(format!("o{j}"))).collect();
        ranking.push(target.clone());
        let failed = i.is_multiple_of(10);
        QueryRecord {
            id: i.to_string(),
            status: if failed { Status::Failed } else { Status::Done },
            error: failed.then(|| format!("server down for {i}")),
            failure_kind: failed.then(|| "connect".into()),
            reference: None,
            targets: vec![target],
            rounds: vec![RoundRecord {
                round: 1,
                instruction: format!("instruction {i}"),
                reference_description: String::new(),
                s1: Some(S1Record {
                    edits: vec![],
                    descriptions: vec![],
                    answers: vec![],
                    ranking,
                    scores: vec![],
                    gallery_rank: None,
                }),
                s2: None,
                s3: None,
            }],
            fallbacks: if i.is_multiple_of(50) {
                vec![Fallback {
                    step: "reason".into(),
                    round: 1,
                    reason: "unparsable".into(),
                    raw: String::new(),
                    action: "used the instruction".into(),
                }]
            } else {
                vec![]
            },
            timings_ms: Default::default(),
            tokens: Default::default(),
            requests: 1,
            cached: 0,
            retries: 0,
        }
    }

    fn journal(dir: &Path, records: impl IntoIterator<Item = QueryRecord>) {
        let mut text = String::new();
        for r in records {
            text += &serde_json::to_string(&r).unwrap();
            text.push('\n');
        }
        std::fs::write(dir.join("queries.jsonl"), text).unwrap();
    }

    #[test]
    fn a_long_journal_is_briefed_and_only_the_shown_records_are_held() {
        let dir = tempfile::tempdir().unwrap();
        // Written out of order, as a run finishes queries; query 7 first failed, then succeeded
        // on resume (the later record wins).
        let n = 5_000;
        let mut first_7 = record(7);
        first_7.status = Status::Failed;
        first_7.error = Some("timed out".into());
        first_7.failure_kind = Some("timeout".into());
        journal(
            dir.path(),
            std::iter::once(first_7).chain((0..n).rev().map(record)),
        );
        let (briefs, details) = read_queries(dir.path(), &[Stage::S1]).unwrap();
        assert_eq!(briefs.len(), n);
        let ids: Vec<&str> = briefs.iter().take(3).map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["0", "1", "2"], "natural order");
        // All: 0..300; misses: rank != 1, i.e. i % 7 != 0: the first 300 of those lie in 0..350;
        // failed: the first 300 multiples of 10 (to 2990); fallbacks: multiples of 50 up to 14950
        // would be 300, but there are only 100 — all held.
        let expected: HashSet<String> = (0..300)
            .chain((0..350).filter(|i| i % 7 != 0))
            .chain((0..300).map(|k| k * 10))
            .chain((0..100).map(|k| k * 50))
            .map(|i| i.to_string())
            .collect();
        let held: HashSet<String> = details.keys().cloned().collect();
        assert_eq!(held, expected);
        assert!(details.len() < 3 * PAGE, "held {} records", details.len());
        assert_eq!(
            details["7"].status,
            Status::Done,
            "the last record of an id wins"
        );

        let input = ReportInput {
            title: "t".into(),
            stages: vec![Stage::S1],
            metrics: vec![],
            paths: HashMap::new(),
            briefs,
            details,
        };
        let all = super::super::render(&input, View::All);
        assert!(all.contains("Queries (300 of 5000)"));
        assert!(all.contains("4700 more not shown"));
        assert!(
            all.contains("Failed queries (500)"),
            "query 7 is not counted as failed"
        );
        assert!(all.contains("by kind: connect 500"));
        assert!(all.contains("the first 300 are listed."));
        assert!(all.contains("server down for 2990") && !all.contains("server down for 3000"));
        assert!(all.contains("Fallbacks (100)"));
        let misses = super::super::render(&input, View::Misses);
        let misses_total = (0..n).filter(|i| i % 7 != 0).count();
        assert!(misses.contains(&format!("Queries (300 of {misses_total})")));
        assert!(misses.contains("id=\"q349\"") && !misses.contains("id=\"q351\""));
        // The curve is drawn from every query's brief: Recall@1 over all 5000 is 715/5000, which
        // puts stage 1's first point at y = 240 - 34 - 0.143 * 172.
        let y = 240.0 - 34.0 - (715.0 / 5000.0) * (240.0 - 68.0);
        assert!(
            all.contains(&format!("points=\"34.0,{y:.1} ")),
            "Recall@1 point"
        );
    }

    #[test]
    fn a_folder_without_a_journal_reports_no_queries() {
        let dir = tempfile::tempdir().unwrap();
        let (briefs, details) = read_queries(dir.path(), &[Stage::S1]).unwrap();
        assert!(briefs.is_empty() && details.is_empty());
    }
}
