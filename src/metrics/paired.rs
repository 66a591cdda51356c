//! Paired statistics for comparing two runs on the same queries: a seeded percentile bootstrap of
//! the difference of two means, and the exact McNemar test on a binary metric. Pure functions.
//!
//! Every benchmark metric here is a mean over queries of a per-query value (Recall@K: 100 or 0;
//! AP@K; Hits@K per round; the BRI integral), so a paired bootstrap resamples queries with
//! replacement and recomputes both means on the same draw. A per-query value may be absent (a
//! CIRCO `semantic_mAP@10/<aspect>` exists only for queries with that aspect): a mean is then over
//! the present values of the draw, as the metric itself is.

/// How a bootstrap is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrap {
    /// Number of resamples.
    pub resamples: usize,
    /// Seed of the generator (`fastrand`'s wyrand: the same seed gives the same draws on every
    /// platform).
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            resamples: 2000,
            seed: 0,
        }
    }
}

fn mean_present(values: &[Option<f64>], draw: &[usize]) -> Option<f64> {
    let (sum, n) = draw
        .iter()
        .filter_map(|&i| values[i])
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The mean of the present values (`None` when there are none).
pub fn mean(values: &[Option<f64>]) -> Option<f64> {
    let all: Vec<usize> = (0..values.len()).collect();
    mean_present(values, &all)
}

/// The 95% percentile-bootstrap interval of mean(b) − mean(a) over paired per-query values
/// (`a[i]` and `b[i]` are the same query). `None` when the slices differ in length, are empty, or
/// no draw has values on both sides.
pub fn diff_interval(a: &[Option<f64>], b: &[Option<f64>], how: Bootstrap) -> Option<(f64, f64)> {
    let n = a.len();
    if n == 0 || b.len() != n || how.resamples == 0 {
        return None;
    }
    let mut rng = fastrand::Rng::with_seed(how.seed);
    let mut draw = vec![0usize; n];
    let mut diffs = Vec::with_capacity(how.resamples);
    for _ in 0..how.resamples {
        for slot in &mut draw {
            *slot = rng.usize(0..n);
        }
        if let (Some(ma), Some(mb)) = (mean_present(a, &draw), mean_present(b, &draw)) {
            diffs.push(mb - ma);
        }
    }
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((diffs.len() - 1) as f64 * q).round() as usize];
    Some((at(0.025), at(0.975)))
}

/// The exact two-sided McNemar test: `b_only` queries right in B and wrong in A, `a_only` the
/// reverse. Under "no difference" each discordant query is a fair coin, so the p-value is
/// min(1, 2·P(X ≤ min(a_only, b_only))) for X ~ Binomial(a_only + b_only, ½); 1 with no
/// discordant query. Computed in log space, so it holds for any count.
pub fn mcnemar_exact(a_only: usize, b_only: usize) -> f64 {
    let n = a_only + b_only;
    if n == 0 {
        return 1.0;
    }
    let k = a_only.min(b_only);
    // ln C(n, i) + n ln ½, for i = 0..=k, summed by log-sum-exp.
    let mut log_terms = Vec::with_capacity(k + 1);
    let mut log_choose = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            log_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        log_terms.push(log_choose - n as f64 * std::f64::consts::LN_2);
    }
    let max = log_terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max + log_terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln();
    (2.0 * tail.exp()).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_hand_computed_binomial_tails() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // n = 10, k = 1: 2 · (1 + 10) / 1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((mcnemar_exact(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
        // n = 6, k = 0: 2 / 64.
        assert!((mcnemar_exact(6, 0) - 2.0 / 64.0).abs() < 1e-12);
        // Balanced: the tail passes one half, capped at 1.
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        // Large counts do not underflow to 0 or overflow to NaN.
        let p = mcnemar_exact(5000, 5200);
        assert!(p > 0.0 && p < 1.0, "{p}");
        // 2 · ½^3000 is far below f64's range: it rounds to 0 rather than failing.
        assert!(mcnemar_exact(0, 3000) < 1e-300);
    }

    #[test]
    fn identical_values_give_a_zero_interval() {
        let a: Vec<Option<f64>> = [100.0, 0.0, 0.0, 100.0].map(Some).to_vec();
        assert_eq!(
            diff_interval(&a, &a, Bootstrap::default()),
            Some((0.0, 0.0))
        );
    }

    #[test]
    fn a_large_effect_excludes_zero_and_the_draw_is_seeded() {
        let a: Vec<Option<f64>> = (0..60)
            .map(|i| Some(if i < 10 { 100.0 } else { 0.0 }))
            .collect();
        let b: Vec<Option<f64>> = (0..60)
            .map(|i| Some(if i < 40 { 100.0 } else { 0.0 }))
            .collect();
        let how = Bootstrap::default();
        let (lo, hi) = diff_interval(&a, &b, how).unwrap();
        assert!(lo > 0.0 && hi > lo && hi <= 100.0, "{lo} {hi}");
        assert_eq!(diff_interval(&a, &b, how), Some((lo, hi)));
        let other = diff_interval(&a, &b, Bootstrap { seed: 7, ..how }).unwrap();
        assert_ne!(other, (lo, hi));
    }

    #[test]
    fn absent_values_are_left_out_of_each_mean() {
        let a = [Some(1.0), None, Some(3.0)];
        assert_eq!(mean(&a), Some(2.0));
        assert_eq!(mean(&[None, None]), None);
        assert_eq!(diff_interval(&[None], &[None], Bootstrap::default()), None);
        assert_eq!(diff_interval(&[Some(1.0)], &[], Bootstrap::default()), None);
    }
}
