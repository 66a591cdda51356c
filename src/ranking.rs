//! Rankings from scores, with deterministic ties: higher score first, then gallery order (lower
//! index first); NaN scores sort last. Concurrency never changes a ranking. `rank_order` is the
//! one rule; the image database's search (`index::vectors`) sorts its hits with it too.

use std::cmp::Ordering;

/// The order of two scored items: higher score first, NaN after every number, then lower
/// gallery position first.
pub fn rank_order(a: (f32, usize), b: (f32, usize)) -> Ordering {
    compare(a.0, b.0).then(a.1.cmp(&b.1))
}

/// Gallery indices ordered by descending score; ties keep gallery order; NaN last.
pub fn order_by_score(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| rank_order((scores[a], a), (scores[b], b)));
    idx
}

/// The best `k` indices in the same order as `order_by_score`, without sorting everything.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let cmp = |a: &usize, b: &usize| rank_order((scores[*a], *a), (scores[*b], *b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Descending by score, NaN after every number.
fn compare(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => b.total_cmp(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_keep_gallery_order_and_nan_is_last() {
        let s = [0.5, f32::NAN, 0.9, 0.5, 0.9];
        assert_eq!(order_by_score(&s), vec![2, 4, 0, 3, 1]);
        assert_eq!(top_k(&s, 3), vec![2, 4, 0]);
        assert_eq!(top_k(&s, 10), order_by_score(&s));
        assert!(top_k(&s, 0).is_empty());
    }

    #[test]
    fn top_k_equals_the_full_sort_prefix() {
        let mut x = 12345u32;
        let s: Vec<f32> = (0..500)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) % 50) as f32 / 10.0
            })
            .collect();
        for k in [1, 7, 50, 499, 500] {
            assert_eq!(top_k(&s, k), order_by_score(&s)[..k].to_vec(), "k={k}");
        }
    }
}
