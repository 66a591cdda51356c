//! Each benchmark's evaluation protocol over predicted rankings, with metric names spelled as the
//! benchmarks write them:
//!
//! | dataset | metrics | ranking used |
//! |---|---|---|
//! | `cirr` | `Recall@1/5/10/50` | reference removed (official), kept with `keep_reference` (ImageScope) |
//! | `cirr-subset` | `Recall_subset@1/2/3` | `img_set.members` minus the reference, in predicted order |
//! | `circo` | `mAP@5/10/25/50`, `Recall@5/10/25/50`, `semantic_mAP@10/<aspect>` | as predicted; duplicates refused |
//! | `fashioniq-*` | `R@10`, `R@50` | as predicted (the reference is not removed) |
//! | `flickr30k`, `mscoco` | `R@1/5/10` | as predicted |
//! | `visdial` | `Hits@K/roundR` (cumulative), `BRI` (whole gallery; `BRI@N` at ranking depth N when a rank is unknown; left out when a dialogue has no prediction) | per round |
//!
//! A query without a prediction counts as a miss and is listed in `Scored::missing`.

use std::collections::{BTreeMap, HashSet};

use crate::config::DatasetName;
use crate::datasets::{ImageKey, Query};

use super::predictions::{Prediction, Predictions};
use super::{average_precision_at, bri, cumulative_hit, first_hit, hit_value};

/// Options of the protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScoreOptions {
    /// CIRR: leave the reference image in the ranking (ImageScope's behaviour).
    pub keep_reference: bool,
    /// CIRR: report the original code's Recall list, @1/2/3/5/10/20/50/100, instead of the
    /// benchmark's @1/5/10/50 (the parity profile).
    pub original_ks: bool,
}

/// Metric values (percentages, except BRI) in a fixed order, and bookkeeping.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scored {
    /// `(name, value)` in report order.
    pub metrics: Vec<(String, f64)>,
    /// Ids of queries that had no prediction (scored as misses).
    pub missing: Vec<String>,
    /// Prediction ids that match no query.
    pub unknown: Vec<String>,
}

impl Scored {
    /// The value of one metric.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// As a JSON object, names to values, in report order.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.metrics {
            m.insert(k.clone(), serde_json::json!(v));
        }
        serde_json::Value::Object(m)
    }
}

/// Why a split cannot be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Test splits carry no ground truth.
    #[error(
        "{dataset} split has no ground truth; submit to the evaluation server (check it first with `imagescope check-submission`)"
    )]
    NoGroundTruth {
        /// Benchmark.
        dataset: DatasetName,
    },
    /// A prediction breaks a protocol rule.
    #[error("query {query}: {message}")]
    Invalid {
        /// Query id.
        query: String,
        /// What is wrong.
        message: String,
    },
}

/// The K values each protocol reports (CIRR: the original code's longer list with `original_ks`).
pub fn ks_for(dataset: DatasetName, opts: ScoreOptions) -> &'static [usize] {
    match dataset {
        DatasetName::Cirr if opts.original_ks => &[1, 2, 3, 5, 10, 20, 50, 100],
        _ => ks(dataset),
    }
}

/// The K values each protocol reports.
pub fn ks(dataset: DatasetName) -> &'static [usize] {
    match dataset {
        DatasetName::Cirr => &[1, 5, 10, 50],
        DatasetName::CirrSubset => &[1, 2, 3],
        DatasetName::Circo => &[5, 10, 25, 50],
        DatasetName::FashioniqDress
        | DatasetName::FashioniqShirt
        | DatasetName::FashioniqToptee => &[10, 50],
        DatasetName::Flickr30k | DatasetName::Mscoco | DatasetName::Folder => &[1, 5, 10],
        DatasetName::Visdial => &[1, 5, 10],
    }
}

/// How much of each predicted ranking a protocol can look at: the deepest K it reports, plus one
/// for CIRR's removed reference, and 50 for a test-server submission. `None` (keep everything) for
/// the subset protocol, which filters the ranking to the query's members, and for VisDial, whose
/// BRI is measured at the depth of the list. Keeping only this much changes no metric.
pub fn scoring_depth(dataset: DatasetName, opts: ScoreOptions, submission: bool) -> Option<usize> {
    match dataset {
        DatasetName::CirrSubset | DatasetName::Visdial => None,
        _ => {
            let deepest = ks_for(dataset, opts).iter().copied().max().unwrap_or(0);
            Some(deepest.max(if submission { 50 } else { 0 }) + 1)
        }
    }
}

/// The ranking a protocol evaluates for one query, from the predicted one.
pub fn protocol_ranking(
    dataset: DatasetName,
    q: &Query,
    predicted: &[ImageKey],
    opts: ScoreOptions,
) -> Vec<ImageKey> {
    match dataset {
        DatasetName::Cirr if !opts.keep_reference => predicted
            .iter()
            .filter(|k| Some(*k) != q.reference.as_ref())
            .cloned()
            .collect(),
        DatasetName::CirrSubset => {
            let members: HashSet<&ImageKey> = q.subset.iter().flatten().collect();
            predicted
                .iter()
                .filter(|k| members.contains(k) && Some(*k) != q.reference.as_ref())
                .cloned()
                .collect()
        }
        _ => predicted.to_vec(),
    }
}

/// One metric's value per query, in query order. The metric is `scale` × the mean of the present
/// values (absent: a query the metric does not cover, e.g. a CIRCO aspect it lacks).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValues {
    /// Metric name.
    pub name: String,
    /// 100 for percentages, 1 for BRI.
    pub scale: f64,
    /// Per query (the order of the `queries` scored).
    pub values: Vec<Option<f64>>,
}

impl MetricValues {
    /// The metric over all queries: `scale` × sum / count of present values (0 with none).
    pub fn value(&self) -> f64 {
        let (sum, n) = self
            .values
            .iter()
            .flatten()
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        if n == 0 {
            0.0
        } else {
            self.scale * sum / n as f64
        }
    }

    /// The per-query values in the metric's unit (× `scale`).
    pub fn scaled(&self) -> Vec<Option<f64>> {
        self.values
            .iter()
            .map(|v| v.map(|v| v * self.scale))
            .collect()
    }
}

/// Every metric of a protocol, per query: what `score` averages and `compare` resamples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PerQuery {
    /// Metrics in report order.
    pub metrics: Vec<MetricValues>,
    /// Ids of queries that had no prediction (scored as misses).
    pub missing: Vec<String>,
    /// Prediction ids that match no query.
    pub unknown: Vec<String>,
}

/// Scores `predictions` for `queries` under `dataset`'s protocol.
pub fn score(
    dataset: DatasetName,
    queries: &[Query],
    predictions: &Predictions,
    opts: ScoreOptions,
) -> Result<Scored, ScoreError> {
    let p = per_query(dataset, queries, predictions, opts)?;
    Ok(Scored {
        metrics: p
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.value()))
            .collect(),
        missing: p.missing,
        unknown: p.unknown,
    })
}

/// The per-query values behind `score`: one value per query and metric.
pub fn per_query(
    dataset: DatasetName,
    queries: &[Query],
    predictions: &Predictions,
    opts: ScoreOptions,
) -> Result<PerQuery, ScoreError> {
    if queries.is_empty() || queries.iter().all(|q| q.targets.is_empty()) {
        return Err(ScoreError::NoGroundTruth { dataset });
    }
    let ids: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    let mut out = PerQuery {
        unknown: predictions
            .entries
            .keys()
            .filter(|k| !ids.contains(k.as_str()))
            .cloned()
            .collect(),
        ..Default::default()
    };
    if dataset == DatasetName::Visdial {
        return dialogues_per_query(queries, predictions, out);
    }
    let empty = Vec::new();
    let mut ranks = Vec::with_capacity(queries.len());
    let mut aps: BTreeMap<usize, Vec<Option<f64>>> = BTreeMap::new();
    let mut aspect_ap10: BTreeMap<&str, Vec<Option<f64>>> = BTreeMap::new();
    let aspects: HashSet<&str> = queries
        .iter()
        .flat_map(|q| q.aspects.iter().map(String::as_str))
        .collect();
    for q in queries {
        let predicted = match predictions.entries.get(&q.id) {
            Some(Prediction::Ranking(r)) => r,
            Some(Prediction::Rounds(_) | Prediction::RoundRanks(_)) => {
                return Err(ScoreError::Invalid {
                    query: q.id.clone(),
                    message: "per-round rankings are only for visdial".into(),
                });
            }
            None => {
                out.missing.push(q.id.clone());
                &empty
            }
        };
        let ranking = protocol_ranking(dataset, q, predicted, opts);
        let primary: HashSet<&ImageKey> = super::primary_target(&q.targets).into_iter().collect();
        ranks.push(first_hit(&ranking, &primary));
        if dataset == DatasetName::Circo {
            let mut seen = HashSet::with_capacity(ranking.len());
            if let Some(dup) = ranking.iter().find(|k| !seen.insert(*k)) {
                return Err(ScoreError::Invalid {
                    query: q.id.clone(),
                    message: format!("image {dup} is listed twice; CIRCO rejects duplicates"),
                });
            }
            let gt: HashSet<&ImageKey> = q.targets.iter().collect();
            for &k in ks(dataset) {
                aps.entry(k)
                    .or_default()
                    .push(Some(average_precision_at(&ranking, &gt, k)));
            }
            let ap10 = average_precision_at(&ranking, &gt, 10);
            for a in &aspects {
                let has = q.aspects.iter().any(|x| x == a);
                aspect_ap10.entry(a).or_default().push(has.then_some(ap10));
            }
        }
    }
    let name = |k: usize| match dataset {
        DatasetName::Cirr | DatasetName::Circo => format!("Recall@{k}"),
        DatasetName::CirrSubset => format!("Recall_subset@{k}"),
        _ => format!("R@{k}"),
    };
    let percent = |name: String, values: Vec<Option<f64>>| MetricValues {
        name,
        scale: 100.0,
        values,
    };
    for (k, v) in aps {
        out.metrics.push(percent(format!("mAP@{k}"), v));
    }
    for &k in ks_for(dataset, opts) {
        let hits = ranks.iter().map(|&r| Some(hit_value(r, k))).collect();
        out.metrics.push(percent(name(k), hits));
    }
    let mut by_aspect: Vec<MetricValues> = aspect_ap10
        .into_iter()
        .map(|(a, v)| percent(format!("semantic_mAP@10/{a}"), v))
        .collect();
    by_aspect.sort_by(|a, b| b.value().total_cmp(&a.value()).then(a.name.cmp(&b.name)));
    out.metrics.extend(by_aspect);
    Ok(out)
}

fn dialogues_per_query(
    queries: &[Query],
    predictions: &Predictions,
    mut out: PerQuery,
) -> Result<PerQuery, ScoreError> {
    let max_round = predictions
        .entries
        .values()
        .filter_map(|p| match p {
            Prediction::Rounds(r) => r.keys().max().copied(),
            Prediction::RoundRanks(r) => r.keys().max().copied(),
            Prediction::Ranking(_) => Some(0),
        })
        .max()
        .unwrap_or(0);
    let first_round = predictions
        .entries
        .values()
        .filter_map(|p| match p {
            Prediction::Rounds(r) => r.keys().min().copied(),
            Prediction::RoundRanks(r) => r.keys().min().copied(),
            Prediction::Ranking(_) => Some(0),
        })
        .min()
        .unwrap_or(0);
    let rounds: Vec<usize> = (first_round..=max_round).collect();
    // Hits@K count ranks in the lists; BRI also takes, beyond a list, the whole-gallery rank a
    // run records (only ever beyond it with the default exact search).
    let mut ranks: Vec<Vec<Option<usize>>> = Vec::with_capacity(queries.len());
    let mut bri_ranks: Vec<Vec<Option<usize>>> = Vec::with_capacity(queries.len());
    let mut longest = 0;
    for q in queries {
        let target: HashSet<&ImageKey> = super::primary_target(&q.targets).into_iter().collect();
        let in_gallery = |r: &usize| predictions.gallery_ranks.get(&q.id)?.get(r).copied();
        let (per_round, with_gallery): (Vec<Option<usize>>, Vec<Option<usize>>) =
            match predictions.entries.get(&q.id) {
                Some(Prediction::Rounds(m)) => rounds
                    .iter()
                    .map(|r| match m.get(r) {
                        Some(list) => {
                            longest = longest.max(list.len());
                            let hit = first_hit(list, &target);
                            (hit, hit.or_else(|| in_gallery(r)))
                        }
                        None => (None, None),
                    })
                    .unzip(),
                Some(Prediction::RoundRanks(m)) => rounds
                    .iter()
                    .map(|r| match m.get(r) {
                        Some(listed) => {
                            longest = longest.max(listed.depth);
                            (listed.rank, listed.rank.or_else(|| in_gallery(r)))
                        }
                        None => (None, None),
                    })
                    .unzip(),
                Some(Prediction::Ranking(list)) => {
                    longest = longest.max(list.len());
                    let hit = first_hit(list, &target);
                    (vec![hit; rounds.len()], vec![hit; rounds.len()])
                }
                None => {
                    out.missing.push(q.id.clone());
                    (vec![None; rounds.len()], vec![None; rounds.len()])
                }
            };
        ranks.push(per_round);
        bri_ranks.push(with_gallery);
    }
    for &k in ks(DatasetName::Visdial) {
        for (i, r) in rounds.iter().enumerate() {
            out.metrics.push(MetricValues {
                name: format!("Hits@{k}/round{r}"),
                scale: 100.0,
                values: ranks
                    .iter()
                    .map(|d| Some(f64::from(u8::from(cumulative_hit(d, k, i)))))
                    .collect(),
            });
        }
    }
    // With every rank known (in the list, or the whole-gallery rank a run records for a target
    // beyond it) this is the literature's BRI. Otherwise a target not in a list of n ranks at
    // n + 1, i.e. 0-based rank n: rankings cut at depth n (a predictions file keeps the top 100 of
    // a 50,000-image search space) make that an optimistic bound, so the name carries the depth.
    // A dialogue with no prediction at all (failed) has no rank to place anywhere: BRI is then
    // left out rather than renamed, so it never changes name because a dialogue failed (scoring
    // the answered dialogues only gives it).
    if !out.missing.is_empty() {
        return Ok(out);
    }
    let exact = bri_ranks.iter().flatten().all(Option::is_some);
    let per_dialogue: Vec<Option<f64>> = bri_ranks
        .iter()
        .map(|d| bri(std::slice::from_ref(d), longest))
        .collect();
    if per_dialogue.iter().all(Option::is_some) {
        out.metrics.push(MetricValues {
            name: if exact {
                "BRI".into()
            } else {
                format!("BRI@{longest}")
            },
            scale: 1.0,
            values: per_dialogue,
        });
    }
    Ok(out)
}

/// The FashionIQ average reported in papers: the mean of the three categories' R@10 and R@50.
pub fn fashioniq_average(categories: &[&Scored]) -> Vec<(String, f64)> {
    ["R@10", "R@50"]
        .iter()
        .map(|name| {
            let vals: Vec<f64> = categories.iter().filter_map(|s| s.get(name)).collect();
            let avg = if vals.is_empty() {
                0.0
            } else {
                vals.iter().sum::<f64>() / vals.len() as f64
            };
            (format!("avg {name}"), avg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::Instruction;

    fn q(id: &str, reference: Option<&str>, targets: &[&str], subset: Option<&[&str]>) -> Query {
        Query {
            id: id.into(),
            reference: reference.map(ImageKey::from),
            instruction: Instruction::Text { text: "x".into() },
            targets: targets.iter().map(|t| ImageKey::from(*t)).collect(),
            subset: subset.map(|s| s.iter().map(|t| ImageKey::from(*t)).collect()),
            aspects: vec![],
            shared_concept: None,
        }
    }

    fn preds(entries: &[(&str, &[&str])]) -> Predictions {
        Predictions {
            gallery_ranks: BTreeMap::new(),
            entries: entries
                .iter()
                .map(|(id, r)| {
                    (
                        id.to_string(),
                        Prediction::Ranking(r.iter().map(|k| ImageKey::from(*k)).collect()),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cirr_excludes_the_reference_unless_asked() {
        let queries = [q("1", Some("ref"), &["t"], None)];
        let p = preds(&[("1", &["ref", "t"])]);
        let official = score(DatasetName::Cirr, &queries, &p, ScoreOptions::default()).unwrap();
        assert_eq!(official.get("Recall@1"), Some(100.0));
        let parity = score(
            DatasetName::Cirr,
            &queries,
            &p,
            ScoreOptions {
                keep_reference: true,
                original_ks: true,
            },
        )
        .unwrap();
        assert_eq!(parity.get("Recall@1"), Some(0.0));
        assert_eq!(parity.get("Recall@2"), Some(100.0));
        let names: Vec<&str> = parity.metrics.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [1, 2, 3, 5, 10, 20, 50, 100].map(|k| format!("Recall@{k}")),
            "the original's list"
        );
        let official_names: Vec<&str> = official.metrics.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            official_names,
            ["Recall@1", "Recall@5", "Recall@10", "Recall@50"]
        );
    }

    #[test]
    fn cirr_subset_uses_members_without_reference() {
        let members: &[&str] = &["ref", "a", "b", "t", "c", "d"];
        let queries = [q("1", Some("ref"), &["t"], Some(members))];
        let p = preds(&[("1", &["x", "ref", "a", "y", "t"])]);
        let s = score(
            DatasetName::CirrSubset,
            &queries,
            &p,
            ScoreOptions::default(),
        )
        .unwrap();
        assert_eq!(s.get("Recall_subset@1"), Some(0.0));
        assert_eq!(s.get("Recall_subset@2"), Some(100.0));
    }

    #[test]
    fn missing_predictions_are_misses_and_listed() {
        let queries = [q("1", None, &["t"], None), q("2", None, &["u"], None)];
        let p = preds(&[("1", &["t"]), ("9", &["t"])]);
        let s = score(
            DatasetName::Flickr30k,
            &queries,
            &p,
            ScoreOptions::default(),
        )
        .unwrap();
        assert_eq!(s.get("R@1"), Some(50.0));
        assert_eq!(s.missing, vec!["2"]);
        assert_eq!(s.unknown, vec!["9"]);
    }

    #[test]
    fn circo_refuses_duplicates() {
        let queries = [q("0", Some("r"), &["t"], None)];
        let p = preds(&[("0", &["a", "a"])]);
        assert!(score(DatasetName::Circo, &queries, &p, ScoreOptions::default()).is_err());
    }

    #[test]
    fn test_split_cannot_be_scored() {
        let queries = [q("1", Some("r"), &[], None)];
        let err = score(
            DatasetName::Cirr,
            &queries,
            &preds(&[]),
            ScoreOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("evaluation server"));
    }

    #[test]
    fn fashioniq_average_is_the_mean_of_categories() {
        let mk = |a, b| Scored {
            metrics: vec![("R@10".into(), a), ("R@50".into(), b)],
            ..Default::default()
        };
        let (d, s, t) = (mk(30.0, 50.0), mk(20.0, 40.0), mk(40.0, 60.0));
        assert_eq!(
            fashioniq_average(&[&d, &s, &t]),
            vec![("avg R@10".into(), 30.0), ("avg R@50".into(), 50.0)]
        );
    }

    #[test]
    fn rankings_cut_at_the_scoring_depth_score_the_same() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let mut rng = fastrand::Rng::with_seed(3);
        let queries: Vec<Query> = (0..40)
            .map(|i| {
                let t = keys[rng.usize(0..100)].clone();
                let r = keys[rng.usize(0..100)].clone();
                let mut query = q(&i.to_string(), Some(&r), &[&t], None);
                query.aspects = vec![["colour", "shape"][i % 2].to_string()];
                query
            })
            .collect();
        let mut full = Predictions::default();
        for query in &queries {
            let mut ranking: Vec<ImageKey> =
                keys.iter().map(|k| ImageKey::from(k.as_str())).collect();
            rng.shuffle(&mut ranking);
            full.entries
                .insert(query.id.clone(), Prediction::Ranking(ranking));
        }
        for dataset in [
            DatasetName::Cirr,
            DatasetName::Circo,
            DatasetName::Flickr30k,
            DatasetName::FashioniqDress,
        ] {
            for (keep_reference, original_ks) in [(false, false), (true, false), (true, true)] {
                let opts = ScoreOptions {
                    keep_reference,
                    original_ks,
                };
                let depth = scoring_depth(dataset, opts, false).unwrap();
                let mut cut = full.clone();
                for p in cut.entries.values_mut() {
                    if let Prediction::Ranking(r) = p {
                        r.truncate(depth);
                    }
                }
                assert_eq!(
                    score(dataset, &queries, &full, opts).unwrap(),
                    score(dataset, &queries, &cut, opts).unwrap(),
                    "{dataset} {opts:?} at depth {depth}"
                );
            }
        }
        assert_eq!(
            scoring_depth(DatasetName::Visdial, ScoreOptions::default(), false),
            None
        );
        assert_eq!(
            scoring_depth(DatasetName::Flickr30k, ScoreOptions::default(), true),
            Some(51)
        );
    }

    #[test]
    fn dialogues_reduced_to_their_ranks_score_exactly_as_their_lists() {
        // Seeded dialogues: rounds 0..=10, lists of 0..=12 keys drawn from a gallery of 30,
        // the target in some lists and not others, whole-gallery ranks for some rounds.
        let mut rng = fastrand::Rng::with_seed(7);
        let key = |i: usize| ImageKey::from(format!("g{i}").as_str());
        let mut queries = Vec::new();
        let mut full = Predictions::default();
        for d in 0..40 {
            let id = format!("{d}");
            let target = rng.usize(..30);
            queries.push(q(&id, None, &[&format!("g{target}")], None));
            let mut rounds = BTreeMap::new();
            let mut gallery = BTreeMap::new();
            for r in 0..=10 {
                let mut list: Vec<ImageKey> = (0..rng.usize(..=12))
                    .map(|_| key(rng.usize(..30)))
                    .collect();
                list.dedup();
                rounds.insert(r, list);
                if rng.bool() {
                    gallery.insert(r, 1 + rng.usize(..50));
                }
            }
            full.entries.insert(id.clone(), Prediction::Rounds(rounds));
            full.gallery_ranks.insert(id, gallery);
        }
        let mut listed = full.clone();
        for (id, p) in std::mem::take(&mut listed.entries) {
            let target = queries
                .iter()
                .find(|x| x.id == id)
                .and_then(|x| x.targets.first());
            listed.entries.insert(id, p.listed(target));
        }
        assert!(matches!(listed.entries["0"], Prediction::RoundRanks(_)));
        let opts = ScoreOptions::default();
        let a = score(DatasetName::Visdial, &queries, &full, opts).unwrap();
        let b = score(DatasetName::Visdial, &queries, &listed, opts).unwrap();
        assert_eq!(a.metrics, b.metrics);
        assert!(
            a.metrics.iter().any(|(n, _)| n.starts_with("BRI")),
            "{:?}",
            a.metrics
        );
    }
}
