//! Rankings from scores, with deterministic ties: higher score first, then gallery order (lower
//! index first); NaN scores sort last. Concurrency never changes a ranking. `rank_order` is the
//! one rule; the image database's search (`index::vectors`) sorts its hits with it too.

use std::cmp::Ordering;

/// The order of two scored items: higher score first, NaN after every number, then lower
/// gallery position first.
pub fn rank_order(a: (f32, usize), b: (f32, usize)) -> Ordering {
    compare(a.0, b.0).then(a.1.cmp(&b.1))
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

/// Gallery indices ordered by descending score (the rule applied to a whole score list), for
/// tests that check a search against brute force.
#[cfg(test)]
pub(crate) fn order_by_score(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| rank_order((scores[a], a), (scores[b], b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_keep_gallery_order_and_nan_is_last() {
        let s = [0.5, f32::NAN, 0.9, 0.5, 0.9];
        assert_eq!(order_by_score(&s), vec![2, 4, 0, 3, 1]);
    }
}
