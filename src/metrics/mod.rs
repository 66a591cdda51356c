//! Retrieval metrics, exactly as the benchmarks' official code computes them, over rankings of
//! image keys. Pure functions: no I/O, no servers.
//!
//! - `first_hit`: 1-based rank of the first positive (the shared core);
//! - `hit_value`: one query's share of Recall@K / R@K / Recall_subset@K;
//! - `average_precision_at`: CIRCO's AP@K, divisor min(K, |GT|), duplicates refused upstream;
//! - `cumulative_hit`, `bri`: ChatIR / PlugIR dialogue metrics.
//!
//! `paired` holds the paired bootstrap and McNemar test `compare` uses; `protocol` applies each benchmark's rules (reference exclusion, subsets, metric names);
//! `predictions` reads prediction and submission files.

pub mod paired;
pub mod predictions;
pub mod protocol;

use std::collections::HashSet;

use crate::datasets::ImageKey;

/// Rows of a table with one column per stage (or run), joined by metric name: each name once, in
/// the order first seen, with each column's value of that name (`None` where a column lacks it).
/// Tables must never join by position: CIRCO's aspect rows are ordered by value per stage.
pub fn rows_by_name<T>(columns: &[(T, Vec<(String, f64)>)]) -> Vec<(&str, Vec<Option<f64>>)> {
    let mut names: Vec<&str> = Vec::new();
    for (_, metrics) in columns {
        for (n, _) in metrics {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let values = columns
                .iter()
                .map(|(_, m)| m.iter().find(|(n, _)| n == name).map(|x| x.1))
                .collect();
            (name, values)
        })
        .collect()
}

/// The image Recall@K / R@K / Hits@K look for: a query's primary target (the first of its
/// ground truth; CIRCO's other ground-truth images count in mAP only). Everything that marks a
/// hit (the report's curve and marks included) uses this one definition.
pub fn primary_target(targets: &[ImageKey]) -> Option<&ImageKey> {
    targets.first()
}

/// 1-based rank of the first element of `ranking` that is in `positives`, or `None`.
pub fn first_hit(ranking: &[ImageKey], positives: &HashSet<&ImageKey>) -> Option<usize> {
    ranking
        .iter()
        .position(|k| positives.contains(k))
        .map(|p| p + 1)
}

/// 1 when a rank is within the top `k`, else 0 (a missing rank is a miss): one query's share of
/// Recall@K / R@K / Recall_subset@K, which are 100 × the mean of this over queries.
pub fn hit_value(rank: Option<usize>, k: usize) -> f64 {
    f64::from(u8::from(rank.is_some_and(|r| r <= k)))
}

/// CIRCO AP@K (as a fraction): the precision at each relevant position within the top K, summed,
/// divided by min(K, |GT|).
pub fn average_precision_at(ranking: &[ImageKey], gt: &HashSet<&ImageKey>, k: usize) -> f64 {
    if gt.is_empty() || k == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, key) in ranking.iter().take(k).enumerate() {
        if gt.contains(key) {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / k.min(gt.len()) as f64
}

/// Cumulative Hits@K of one dialogue at round index `round`: its target ranked ≤ k at any round
/// up to and including it (`ranks[r]` is the rank at round r, `None` = not found). Hits@K/round r
/// is 100 × the mean of this over dialogues.
pub fn cumulative_hit(ranks: &[Option<usize>], k: usize, round: usize) -> bool {
    ranks
        .iter()
        .take(round + 1)
        .any(|x| x.is_some_and(|x| x <= k))
}

/// PlugIR's Best log Rank Integral (lower is better): per dialogue, the best 0-based rank so far
/// at each round, through ln(1 + rank), integrated by trapezoids over the rounds and divided by
/// the number of intervals; then averaged over dialogues. A target not found counts as 0-based
/// rank `not_found` (the gallery size, or the length of a truncated list). Needs two rounds.
pub fn bri(ranks: &[Vec<Option<usize>>], not_found: usize) -> Option<f64> {
    let rounds = ranks.first()?.len();
    if rounds < 2 || ranks.iter().any(|d| d.len() != rounds) {
        return None;
    }
    let per_dialogue = ranks.iter().map(|d| {
        let mut best = usize::MAX;
        let logs: Vec<f64> = d
            .iter()
            .map(|r| {
                let zero_based = r.map_or(not_found, |r| r - 1);
                best = best.min(zero_based);
                (1.0 + best as f64).ln()
            })
            .collect();
        let area: f64 = logs.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum();
        area / (rounds - 1) as f64
    });
    Some(per_dialogue.sum::<f64>() / ranks.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_join_columns_by_name_not_position() {
        let cols = vec![
            ("s1", vec![("a".to_string(), 1.0), ("b".to_string(), 2.0)]),
            ("s2", vec![("b".to_string(), 20.0), ("a".to_string(), 10.0)]),
            ("s3", vec![("c".to_string(), 3.0)]),
        ];
        assert_eq!(
            rows_by_name(&cols),
            vec![
                ("a", vec![Some(1.0), Some(10.0), None]),
                ("b", vec![Some(2.0), Some(20.0), None]),
                ("c", vec![None, None, Some(3.0)]),
            ]
        );
    }

    fn keys(s: &[&str]) -> Vec<ImageKey> {
        s.iter().map(|k| ImageKey::from(*k)).collect()
    }

    #[test]
    fn ranks_and_recall() {
        let r = keys(&["a", "b", "c"]);
        let t = ImageKey::from("c");
        assert_eq!(first_hit(&r, &HashSet::from([&t])), Some(3));
        assert_eq!(first_hit(&r, &HashSet::from([&ImageKey::from("z")])), None);
        let ranks = [Some(1), Some(3), None, Some(10)];
        let recall = |k| 100.0 * ranks.iter().map(|&r| hit_value(r, k)).sum::<f64>() / 4.0;
        assert_eq!(recall(1), 25.0);
        assert_eq!(recall(3), 50.0);
        assert_eq!(recall(10), 75.0);
    }

    #[test]
    fn circo_average_precision_by_hand() {
        // GT {a, c, e}; ranking a x c y e: precisions 1/1, 2/3, 3/5.
        let ranking = keys(&["a", "x", "c", "y", "e"]);
        let g = keys(&["a", "c", "e"]);
        let gt: HashSet<&ImageKey> = g.iter().collect();
        let ap5 = average_precision_at(&ranking, &gt, 5);
        assert!((ap5 - (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0).abs() < 1e-12);
        // K = 2 < |GT|: divisor is 2, only position 1 counts.
        assert!((average_precision_at(&ranking, &gt, 2) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn hits_are_cumulative() {
        let first = [Some(20), Some(5), Some(30)];
        let second = [None, None, Some(1)];
        let at = |d: &[Option<usize>]| (0..3).map(|r| cumulative_hit(d, 10, r)).collect::<Vec<_>>();
        assert_eq!(at(&first), [false, true, true]);
        assert_eq!(at(&second), [false, false, true]);
    }

    #[test]
    fn bri_by_hand() {
        // One dialogue, 0-based ranks 3 then 0: best ranks 3, 0 → ln4, ln1 → trapezoid ln4/2.
        let b = bri(&[vec![Some(4), Some(1)]], 100).unwrap();
        assert!((b - 4f64.ln() / 2.0).abs() < 1e-12);
        // A later worse rank does not raise the best rank.
        let b2 = bri(&[vec![Some(1), Some(50)]], 100).unwrap();
        assert_eq!(b2, 0.0);
    }
}
