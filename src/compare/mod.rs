//! `imagescope compare RUN_A RUN_B`: what changed between two run folders of the same dataset and
//! split, and whether it is more than noise.
//!
//! Read from each folder: `run.json` (dataset, split), `config.resolved.toml` (dataset root and the
//! scoring options), the journal (streamed; only each query's rankings are kept), `summary.json`
//! (traffic per role), `prompts/` and `config.resolved.toml` for the diffs. The dataset's
//! annotations are loaded again to score, as `report` does.
//!
//! On the queries both journals hold (the intersection, counted), per stage both runs ran:
//! A, B and B − A of every metric, a 95% paired percentile bootstrap interval of B − A
//! (`metrics::paired`, seeded) and, for the @1 hit metric, the exact McNemar test; per query, the
//! target's rank after the last shared stage in A and in B, worst moves first; cost per role; and
//! unified diffs of the prompt copies and resolved configs. Two runs of different datasets or
//! splits are refused. `html` renders the page; the CLI prints the text and the JSON.

pub mod html;
mod queries;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{DatasetName, DatasetSection, PipelineParams, Profile, Stage};
use crate::datasets::{DatasetSpec, ImageKey, Query};
use crate::metrics::paired::{self, Bootstrap};
use crate::metrics::predictions::{Prediction, Predictions};
use crate::metrics::protocol::{self, ScoreOptions};
use crate::record::Status;
use crate::runs::folder::{RunInfo, read_journal};

/// A comparison that cannot be made, naming the folder and what to do.
#[derive(Debug, thiserror::Error)]
#[error("compare: {message}")]
pub struct CompareError {
    /// What is wrong.
    pub message: String,
}

fn bad(message: impl Into<String>) -> CompareError {
    CompareError {
        message: message.into(),
    }
}

/// One of the two runs.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// The run folder.
    pub dir: PathBuf,
    /// Dataset, split and profile from `run.json`.
    pub dataset: String,
    /// Split.
    pub split: String,
    /// Profile.
    pub profile: String,
    /// Queries in its journal.
    pub queries: usize,
    /// Of those, failed.
    pub failed: usize,
}

/// A metric in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDiff {
    /// Metric name.
    pub name: String,
    /// Value in A (on the shared queries).
    pub a: f64,
    /// Value in B.
    pub b: f64,
    /// B − A.
    pub diff: f64,
    /// 95% paired bootstrap interval of B − A.
    pub ci: Option<[f64; 2]>,
    /// The exact McNemar test, for the @1 hit metric.
    pub mcnemar: Option<McNemar>,
}

/// Discordant queries of a binary metric and the exact test's p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    /// Hit in A, miss in B.
    pub a_only: usize,
    /// Hit in B, miss in A.
    pub b_only: usize,
    /// Two-sided exact p-value.
    pub p: f64,
}

/// The metrics after one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageDiff {
    /// Stage.
    pub stage: Stage,
    /// Metrics in protocol order.
    pub metrics: Vec<MetricDiff>,
}

/// Where a query's target ranked in each run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankMove {
    /// Query id.
    pub id: String,
    /// 1-based rank in A (`None`: not in the kept ranking, or the query failed; a dialogue
    /// beyond its list gives the whole-gallery rank its run recorded).
    pub a: Option<usize>,
    /// Rank in B.
    pub b: Option<usize>,
}

impl RankMove {
    fn key(rank: Option<usize>) -> usize {
        rank.unwrap_or(usize::MAX)
    }

    /// B ranked the target higher.
    pub fn better(&self) -> bool {
        Self::key(self.b) < Self::key(self.a)
    }

    /// B ranked the target lower.
    pub fn worse(&self) -> bool {
        Self::key(self.b) > Self::key(self.a)
    }
}

/// Rank moves after the last stage both runs ran.
#[derive(Debug, Clone, Serialize)]
pub struct Moves {
    /// The stage compared.
    pub stage: Stage,
    /// Queries whose target moved up in B.
    pub better: usize,
    /// Moved down.
    pub worse: usize,
    /// Same rank.
    pub same: usize,
    /// The moved queries, worst first (largest fall first, then the smallest gains).
    pub moved: Vec<RankMove>,
}

/// One role's traffic from `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cost {
    /// Requests sent (attempts, retries included).
    pub attempts: u64,
    /// Answers from the request cache.
    pub cache_hits: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Median latency.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latency.
    pub latency_p95_ms: Option<f64>,
    /// Prompt tokens the servers said came from their cache, over this run's own answers.
    pub cached_prompt_tokens: Option<u64>,
    /// What the role's servers reported of their own work (`summary.json` `servers`, carried as
    /// written: compare reads run folders, not servers), if any was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<serde_json::Value>,
}

/// A role's cost in each run (`None`: the role did not run, or the run has no summary).
#[derive(Debug, Clone, Serialize)]
pub struct RoleCost {
    /// Role.
    pub role: String,
    /// In A.
    pub a: Option<Cost>,
    /// In B.
    pub b: Option<Cost>,
}

/// A changed file of the run folders' copies.
#[derive(Debug, Clone, Serialize)]
pub struct FileDiff {
    /// Path inside the run folder (`prompts/...` or `config.resolved.toml`).
    pub file: String,
    /// Unified diff, A → B.
    pub diff: String,
}

/// Everything `compare` found.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Run A.
    pub a: Side,
    /// Run B.
    pub b: Side,
    /// Queries in both journals (what every figure below is computed on).
    pub shared: usize,
    /// Only in A.
    pub only_a: usize,
    /// Only in B.
    pub only_b: usize,
    /// The bootstrap's resamples and seed.
    pub resamples: usize,
    /// Seed.
    pub seed: u64,
    /// Per stage both runs ran.
    pub stages: Vec<StageDiff>,
    /// Per-query rank moves (absent without ground truth).
    pub moves: Option<Moves>,
    /// Cost per role.
    pub cost: Vec<RoleCost>,
    /// Changed prompt files and the resolved-config diff.
    pub changes: Vec<FileDiff>,
    /// What a reader must know.
    pub notes: Vec<String>,
}

#[derive(Deserialize)]
struct Resolved {
    dataset: DatasetSection,
    pipeline: PipelineParams,
}

/// One query's prediction after one stage, and (dialogues) its target's whole-gallery rank per
/// round.
type StagePrediction = (Prediction, Option<BTreeMap<usize, usize>>);

/// A run folder as compare needs it: rankings per query and stage, not whole records.
struct Loaded {
    side: Side,
    resolved: Resolved,
    /// Query id → (done, prediction after each stage with the dialogue's whole-gallery ranks).
    rankings: HashMap<String, (bool, BTreeMap<Stage, StagePrediction>)>,
    roles: BTreeMap<String, Cost>,
    /// Each query as the journal records it, in journal order (scoring's fallback).
    recorded: Vec<queries::Recorded>,
}

impl Loaded {
    fn options(&self) -> ScoreOptions {
        ScoreOptions {
            keep_reference: !self.resolved.pipeline.exclude_reference,
            original_ks: self.resolved.pipeline.profile == Profile::Parity,
        }
    }

    fn stages(&self) -> BTreeSet<Stage> {
        self.resolved.pipeline.stages.iter().copied().collect()
    }

    fn predictions(&self, ids: &[&Query], stage: Stage) -> Predictions {
        let mut p = Predictions::default();
        for q in ids {
            if let Some((true, by_stage)) = self.rankings.get(&q.id)
                && let Some((pred, gallery)) = by_stage.get(&stage)
            {
                p.entries.insert(q.id.clone(), pred.clone());
                if let Some(g) = gallery {
                    p.gallery_ranks.insert(q.id.clone(), g.clone());
                }
            }
        }
        p
    }
}

fn load(dir: &Path) -> Result<Loaded, CompareError> {
    let at = |what: &str, e: &dyn std::fmt::Display| {
        bad(format!(
            "{}: {what}: {e}; is this a run folder (runs/<dataset>/<name>/<time>)?",
            dir.display()
        ))
    };
    let info: RunInfo = std::fs::read_to_string(dir.join("run.json"))
        .map_err(|e| at("cannot read run.json", &e))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| at("run.json is not valid", &e)))?;
    let resolved: Resolved = std::fs::read_to_string(dir.join("config.resolved.toml"))
        .map_err(|e| at("cannot read config.resolved.toml", &e))
        .and_then(|t| toml::from_str(&t).map_err(|e| at("config.resolved.toml", &e)))?;
    let dialogue = resolved.dataset.name == DatasetName::Visdial;
    let mut stages = resolved.pipeline.stages.clone();
    stages.sort();
    let mut rankings = HashMap::new();
    let mut recorded = Vec::new();
    read_journal(&dir.join("queries.jsonl"), |r| {
        if !rankings.contains_key(&r.id) {
            recorded.push((r.id.clone(), r.reference.clone(), r.targets.clone()));
        }
        let done = r.status == Status::Done;
        let by_stage = stages
            .iter()
            .filter_map(|&s| {
                let mut p = crate::record::predictions([&r], s, dialogue);
                let gallery = p.gallery_ranks.remove(&r.id);
                // Dialogues keep each round's target rank, not its list (`Prediction::listed`).
                let target = crate::metrics::primary_target(&r.targets);
                p.entries
                    .remove(&r.id)
                    .map(|pred| (s, (pred.listed(target), gallery)))
            })
            .collect();
        rankings.insert(r.id.clone(), (done, by_stage));
    })
    .map_err(|e| at("cannot read queries.jsonl", &e))?;
    let summary = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let mut roles: BTreeMap<String, Cost> = summary
        .as_ref()
        .and_then(|v| v.get("roles").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let servers: BTreeMap<String, serde_json::Value> = summary
        .as_ref()
        .and_then(|v| v.get("servers").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    for (role, figures) in servers {
        if figures
            .get("endpoints_read")
            .and_then(serde_json::Value::as_u64)
            > Some(0)
        {
            roles.entry(role).or_default().server = Some(figures);
        }
    }
    let failed = rankings.values().filter(|(done, _)| !done).count();
    Ok(Loaded {
        side: Side {
            dir: dir.to_path_buf(),
            dataset: info.dataset,
            split: info.split,
            profile: info.profile,
            queries: rankings.len(),
            failed,
        },
        resolved,
        rankings,
        roles,
        recorded,
    })
}

/// Compares run B against run A.
pub fn compare(a_dir: &Path, b_dir: &Path, how: Bootstrap) -> Result<Comparison, CompareError> {
    let a = load(a_dir)?;
    let b = load(b_dir)?;
    if (a.side.dataset.as_str(), a.side.split.as_str())
        != (b.side.dataset.as_str(), b.side.split.as_str())
    {
        return Err(bad(format!(
            "{} is a run of {} {} and {} of {} {}; compare two runs of the same dataset and split",
            a_dir.display(),
            a.side.dataset,
            a.side.split,
            b_dir.display(),
            b.side.dataset,
            b.side.split
        )));
    }
    let d = &a.resolved.dataset;
    let spec = DatasetSpec {
        name: d.name,
        root: d.root.clone(),
        split: d.split.clone(),
        image_ext: d.image_ext.clone(),
    };
    let (queries, from_journal) = queries::for_scoring(&spec, &a.recorded)?;
    let mut shared: Vec<&Query> = queries
        .iter()
        .filter(|q| a.rankings.contains_key(&q.id) && b.rankings.contains_key(&q.id))
        .collect();
    // In query-id order, whichever source listed them: the dataset lists them in its order, a
    // journal in the order queries finished, and the bootstrap's resamples (drawn by position
    // from a fixed seed) must pick the same queries either way.
    shared.sort_by(|x, y| x.id.cmp(&y.id));
    let ids: std::collections::HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    let in_dataset = |l: &Loaded| {
        l.rankings
            .keys()
            .filter(|id| ids.contains(id.as_str()))
            .count()
    };
    let mut notes: Vec<String> = from_journal.into_iter().collect();
    let only_a = in_dataset(&a) - shared.len();
    let only_b = in_dataset(&b) - shared.len();
    if only_a + only_b > 0 {
        notes.push(format!(
            "compared on the {} queries both runs answered ({only_a} only in A, {only_b} only in B)",
            shared.len()
        ));
    }
    if d.name == DatasetName::Visdial {
        // Each run's dialogue rounds are kept as the rank of the target its journal records
        // (`Prediction::listed`); say so if the dataset now names another.
        let differ = |l: &Loaded| {
            let recorded: HashMap<&str, Option<&ImageKey>> = l
                .recorded
                .iter()
                .map(|(id, _, t)| (id.as_str(), crate::metrics::primary_target(t)))
                .collect();
            shared
                .iter()
                .filter(|q| {
                    recorded
                        .get(q.id.as_str())
                        .is_some_and(|t| *t != crate::metrics::primary_target(&q.targets))
                })
                .count()
        };
        let (da, db) = (differ(&a), differ(&b));
        if da + db > 0 {
            notes.push(format!(
                "{da} dialogues of A and {db} of B recorded another target than the dataset names now; their rounds are scored against the target each run recorded"
            ));
        }
    }
    if a.options() != b.options() {
        notes.push(
            "the runs score differently (exclude_reference or profile differ): each run is scored by its own options; metrics only one of them reports are left out".into(),
        );
    }
    let common: Vec<Stage> = a.stages().intersection(&b.stages()).copied().collect();
    let owned: Vec<Query> = shared.iter().map(|q| (*q).clone()).collect();
    let mut stages = Vec::new();
    let mut moves = None;
    for &stage in &common {
        let pa = a.predictions(&shared, stage);
        let pb = b.predictions(&shared, stage);
        let (va, vb) = match (
            protocol::per_query(d.name, &owned, &pa, a.options()),
            protocol::per_query(d.name, &owned, &pb, b.options()),
        ) {
            (Ok(va), Ok(vb)) => (va, vb),
            (Err(protocol::ScoreError::NoGroundTruth { .. }), _) => {
                notes.push(
                    "no ground truth on this split: metrics and rank moves are not compared".into(),
                );
                break;
            }
            (Err(e), _) | (_, Err(e)) => return Err(bad(format!("scoring: {e}"))),
        };
        let names = |v: &protocol::PerQuery| -> BTreeSet<String> {
            v.metrics.iter().map(|m| m.name.clone()).collect()
        };
        let (na, nb) = (names(&va), names(&vb));
        let only: Vec<String> = na
            .symmetric_difference(&nb)
            .map(|n| format!("{n} ({})", if na.contains(n) { "A" } else { "B" }))
            .collect();
        if !only.is_empty() {
            notes.push(format!(
                "{}: metrics only one run reports, not compared: {}",
                stage.as_str(),
                only.join(", ")
            ));
        }
        stages.push(StageDiff {
            stage,
            metrics: metric_diffs(&va.metrics, &vb.metrics, how),
        });
        if Some(&stage) == common.last() {
            moves = Some(rank_moves(
                stage,
                &owned,
                &pa,
                &pb,
                d.name,
                (a.options(), b.options()),
            ));
        }
    }
    let roles: BTreeSet<&String> = a.roles.keys().chain(b.roles.keys()).collect();
    let cost = roles
        .into_iter()
        .map(|role| RoleCost {
            role: role.clone(),
            a: a.roles.get(role).cloned(),
            b: b.roles.get(role).cloned(),
        })
        .collect();
    Ok(Comparison {
        shared: shared.len(),
        only_a,
        only_b,
        resamples: how.resamples,
        seed: how.seed,
        stages,
        moves,
        cost,
        changes: changes(a_dir, b_dir),
        notes,
        a: a.side,
        b: b.side,
    })
}

/// The @1 hit metric McNemar applies to: `Recall@1`, `R@1`, `Recall_subset@1`, or a dialogue's
/// `Hits@1` at its last round.
fn is_top1(name: &str, all: &[protocol::MetricValues]) -> bool {
    if matches!(name, "Recall@1" | "R@1" | "Recall_subset@1") {
        return true;
    }
    let last_hits1 = all.iter().rfind(|m| m.name.starts_with("Hits@1/round"));
    last_hits1.is_some_and(|m| m.name == name)
}

fn metric_diffs(
    a: &[protocol::MetricValues],
    b: &[protocol::MetricValues],
    how: Bootstrap,
) -> Vec<MetricDiff> {
    a.iter()
        .filter_map(|ma| {
            let mb = b.iter().find(|m| m.name == ma.name)?;
            let (sa, sb) = (ma.scaled(), mb.scaled());
            let mcnemar = is_top1(&ma.name, a).then(|| {
                let hit = |v: &Option<f64>| v.is_some_and(|v| v > 0.0);
                let a_only = sa
                    .iter()
                    .zip(&sb)
                    .filter(|(x, y)| hit(x) && !hit(y))
                    .count();
                let b_only = sa
                    .iter()
                    .zip(&sb)
                    .filter(|(x, y)| !hit(x) && hit(y))
                    .count();
                McNemar {
                    a_only,
                    b_only,
                    p: paired::mcnemar_exact(a_only, b_only),
                }
            });
            Some(MetricDiff {
                name: ma.name.clone(),
                a: ma.value(),
                b: mb.value(),
                diff: mb.value() - ma.value(),
                ci: paired::diff_interval(&sa, &sb, how).map(|(lo, hi)| [lo, hi]),
                mcnemar,
            })
        })
        .collect()
}

fn target_rank(
    dataset: DatasetName,
    q: &Query,
    p: &Predictions,
    opts: ScoreOptions,
) -> Option<usize> {
    let target = q.targets.first()?;
    // Beyond the list, a dialogue's whole-gallery rank when the run recorded it.
    let in_gallery = |round: usize| p.gallery_ranks.get(&q.id)?.get(&round).copied();
    let (predicted, last_round): (&[ImageKey], Option<usize>) = match p.entries.get(&q.id)? {
        Prediction::RoundRanks(m) => {
            let (round, listed) = m.iter().next_back()?;
            return listed.rank.or_else(|| in_gallery(*round));
        }
        Prediction::Ranking(r) => (r, None),
        Prediction::Rounds(m) => m
            .iter()
            .next_back()
            .map(|(r, k)| (k.as_slice(), Some(*r)))?,
    };
    let ranking = protocol::protocol_ranking(dataset, q, predicted, opts);
    ranking
        .iter()
        .position(|k| k == target)
        .map(|i| i + 1)
        .or_else(|| in_gallery(last_round?))
}

fn rank_moves(
    stage: Stage,
    queries: &[Query],
    pa: &Predictions,
    pb: &Predictions,
    dataset: DatasetName,
    (oa, ob): (ScoreOptions, ScoreOptions),
) -> Moves {
    let all: Vec<RankMove> = queries
        .iter()
        .map(|q| RankMove {
            id: q.id.clone(),
            a: target_rank(dataset, q, pa, oa),
            b: target_rank(dataset, q, pb, ob),
        })
        .collect();
    let better = all.iter().filter(|m| m.better()).count();
    let worse = all.iter().filter(|m| m.worse()).count();
    let mut moved: Vec<RankMove> = all
        .into_iter()
        .filter(|m| m.better() || m.worse())
        .collect();
    // Worst first: a fall out of the kept ranking, then the largest falls, then the smallest
    // gains, the largest gain last. Ties by query id.
    let depth = |r: Option<usize>| r.map_or(f64::INFINITY, |r| r as f64);
    moved.sort_by(|x, y| {
        let change = |m: &RankMove| {
            let (a, b) = (depth(m.a), depth(m.b));
            match (a.is_finite(), b.is_finite()) {
                (true, false) => f64::INFINITY,
                (false, true) => f64::NEG_INFINITY,
                _ => b - a,
            }
        };
        change(y).total_cmp(&change(x)).then(x.id.cmp(&y.id))
    });
    Moves {
        stage,
        better,
        worse,
        same: queries.len() - better - worse,
        moved,
    }
}

fn files_under(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    if let (Ok(rel), Ok(text)) =
                        (path.strip_prefix(root), std::fs::read_to_string(&path))
                    {
                        out.insert(rel.to_string_lossy().into_owned(), text);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn changes(a: &Path, b: &Path) -> Vec<FileDiff> {
    let mut files: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (side, dir) in [(0, a), (1, b)] {
        for (name, text) in files_under(&dir.join("prompts")) {
            let slot = files.entry(format!("prompts/{name}")).or_default();
            *(if side == 0 { &mut slot.0 } else { &mut slot.1 }) = text;
        }
    }
    let config =
        |d: &Path| std::fs::read_to_string(d.join("config.resolved.toml")).unwrap_or_default();
    files.insert("config.resolved.toml".into(), (config(a), config(b)));
    files
        .into_iter()
        .filter(|(_, (x, y))| x != y)
        .map(|(file, (x, y))| FileDiff {
            diff: similar::TextDiff::from_lines(&x, &y)
                .unified_diff()
                .context_radius(2)
                .header(&format!("A/{file}"), &format!("B/{file}"))
                .to_string(),
            file,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::Instruction;

    #[test]
    fn a_dialogue_target_beyond_its_list_has_its_whole_gallery_rank() {
        let q = Query {
            id: "0".into(),
            reference: None,
            instruction: Instruction::Text { text: "x".into() },
            targets: vec![ImageKey::from("t")],
            subset: None,
            aspects: vec![],
            shared_concept: None,
        };
        let mut p = Predictions::default();
        let rounds = [
            (1, vec![ImageKey::from("a"), ImageKey::from("t")]),
            (2, vec![ImageKey::from("a")]),
        ];
        p.entries
            .insert("0".into(), Prediction::Rounds(rounds.into_iter().collect()));
        let opts = ScoreOptions::default();
        assert_eq!(target_rank(DatasetName::Visdial, &q, &p, opts), None);
        p.gallery_ranks
            .insert("0".into(), [(1, 2), (2, 480)].into());
        assert_eq!(
            target_rank(DatasetName::Visdial, &q, &p, opts),
            Some(480),
            "last round"
        );
    }
}
