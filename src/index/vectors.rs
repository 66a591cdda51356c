//! The two usearch indexes of an image database (image vectors and caption vectors, inner-product
//! metric, keys = store row ids) and the fused search of stage 1:
//!
//! s(i) = (1 − τ)·⟨t̄, v_i⟩ + τ·⟨t̄, c_i⟩, where t̄ is the mean of the unit description vectors.
//! (The original averages the per-description scores; by linearity that is the same number.)
//!
//! - `exact` (default, parity with the original's brute-force matmul): an exact search over every
//!   vector of both indexes, fused per image, then the top k with ties broken by gallery order;
//! - `hnsw`: approximate candidates from each index's graph (k' = max(4k, 256) each), their union
//!   rescored exactly with the stored vectors. Quantization f32 (default) or f16; i8 is exact-only,
//!   because usearch cannot return i8 vectors for rescoring.

use std::collections::HashSet;
use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// How searches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Brute force over every vector.
    #[default]
    Exact,
    /// HNSW graph candidates, rescored exactly.
    Hnsw,
}

/// How vectors are stored in the indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 32-bit floats.
    #[default]
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit integers (exact mode only).
    I8,
}

/// Index settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub struct VectorOptions {
    /// Search mode.
    pub mode: SearchMode,
    /// Storage precision.
    pub quantization: Quantization,
}

/// A usearch failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("vector index: {0}")]
pub struct VectorError(pub String);

fn ue<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> VectorError + '_ {
    move |e| VectorError(format!("{what}: {e}"))
}

/// One image's vectors: (row id, unit image vector if any, unit caption vector).
pub type VectorRow = (u64, Option<Vec<f32>>, Vec<f32>);

/// The two indexes of one database.
pub struct Vectors {
    images: Option<Index>,
    captions: Index,
    options: VectorOptions,
    /// Row ids in gallery order; `position[id]` is the inverse.
    ids: Vec<u64>,
    position: std::collections::HashMap<u64, usize>,
}

fn index_options(dim: usize, o: VectorOptions) -> IndexOptions {
    let (connectivity, expansion_add, expansion_search) = match o.mode {
        // The graph is never walked in exact mode; keep its construction cheap.
        SearchMode::Exact => (4, 8, 8),
        SearchMode::Hnsw => (32, 128, 256),
    };
    IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: match o.quantization {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        },
        connectivity,
        expansion_add,
        expansion_search,
        multi: false,
    }
}

fn new_index(dim: usize, o: VectorOptions, n: usize) -> Result<Index, VectorError> {
    let index = Index::new(&index_options(dim, o)).map_err(ue("create"))?;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2)
        * 4;
    index
        .reserve_capacity_and_threads(n.max(1), threads)
        .map_err(ue("reserve"))?;
    Ok(index)
}

impl Vectors {
    /// Builds both indexes from `(id, image vector, caption vector)` rows in gallery order.
    pub fn build(
        rows: impl IntoIterator<Item = VectorRow>,
        options: VectorOptions,
    ) -> Result<Self, VectorError> {
        if options.mode == SearchMode::Hnsw && options.quantization == Quantization::I8 {
            return Err(VectorError(
                "hnsw with i8 cannot rescore candidates (usearch cannot return i8 vectors); use f16 or exact".into(),
            ));
        }
        let rows: Vec<VectorRow> = rows.into_iter().collect();
        let n = rows.len();
        let cap_dim = rows.first().map_or(1, |r| r.2.len());
        let img_dim = rows.iter().find_map(|r| r.1.as_ref().map(Vec::len));
        let captions = new_index(cap_dim, options, n)?;
        let images = img_dim.map(|d| new_index(d, options, n)).transpose()?;
        let mut ids = Vec::with_capacity(n);
        for (id, image_vec, caption_vec) in rows {
            if caption_vec.len() != cap_dim {
                return Err(VectorError(format!(
                    "caption vector of row {id} has {} dimensions, not {cap_dim}",
                    caption_vec.len()
                )));
            }
            captions
                .add(id, &caption_vec)
                .map_err(ue("add caption vector"))?;
            if let (Some(index), Some(v)) = (&images, image_vec) {
                index.add(id, &v).map_err(ue("add image vector"))?;
            }
            ids.push(id);
        }
        Ok(Self::from_parts(images, captions, options, ids))
    }

    fn from_parts(
        images: Option<Index>,
        captions: Index,
        options: VectorOptions,
        ids: Vec<u64>,
    ) -> Self {
        let position = ids.iter().enumerate().map(|(p, id)| (*id, p)).collect();
        Vectors {
            images,
            captions,
            options,
            ids,
            position,
        }
    }

    /// Saves both indexes under `dir` (`images.usearch`, `captions.usearch`).
    pub fn save(&self, dir: &Path) -> Result<(), VectorError> {
        let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
        self.captions
            .save(&p("captions.usearch"))
            .map_err(ue("save captions"))?;
        if let Some(i) = &self.images {
            i.save(&p("images.usearch")).map_err(ue("save images"))?;
        }
        Ok(())
    }

    /// Loads indexes saved by `save`; `ids` are the row ids in gallery order.
    pub fn load(
        dir: &Path,
        options: VectorOptions,
        ids: Vec<u64>,
        cap_dim: usize,
        img_dim: Option<usize>,
    ) -> Result<Self, VectorError> {
        let load = |name: &str, dim: usize| -> Result<Index, VectorError> {
            let index = new_index(dim, options, ids.len())?;
            index
                .load(&dir.join(name).to_string_lossy())
                .map_err(ue("load"))?;
            if index.size() != ids.len() {
                return Err(VectorError(format!(
                    "{name} holds {} vectors, the store {}",
                    index.size(),
                    ids.len()
                )));
            }
            Ok(index)
        };
        let captions = load("captions.usearch", cap_dim)?;
        let images = img_dim.map(|d| load("images.usearch", d)).transpose()?;
        Ok(Self::from_parts(images, captions, options, ids))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether image vectors exist (false for caption-only galleries, where τ is 1).
    pub fn has_images(&self) -> bool {
        self.images.is_some()
    }

    /// Row ids in gallery order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    fn all_dots(
        index: &Index,
        q: &[f32],
        n: usize,
        out: &mut [f32],
        position: &std::collections::HashMap<u64, usize>,
        weight: f32,
    ) -> Result<(), VectorError> {
        let m = index.exact_search(q, n).map_err(ue("exact search"))?;
        for (key, dist) in m.keys.iter().zip(&m.distances) {
            if let Some(&p) = position.get(key) {
                out[p] += weight * (1.0 - dist);
            }
        }
        Ok(())
    }

    /// Fused scores of every image, in gallery order.
    pub fn all_scores(&self, query: &[f32], tau: f32) -> Result<Vec<f32>, VectorError> {
        let tau = if self.images.is_some() { tau } else { 1.0 };
        let n = self.ids.len();
        let mut scores = vec![0.0f32; n];
        if n == 0 {
            return Ok(scores);
        }
        if tau > 0.0 {
            Self::all_dots(&self.captions, query, n, &mut scores, &self.position, tau)?;
        }
        if let Some(images) = &self.images
            && tau < 1.0
        {
            Self::all_dots(images, query, n, &mut scores, &self.position, 1.0 - tau)?;
        }
        Ok(scores)
    }

    fn exact_score(&self, id: u64, query: &[f32], tau: f32) -> Result<f32, VectorError> {
        let dot = |index: &Index| -> Result<f32, VectorError> {
            let mut v = vec![0.0f32; index.dimensions()];
            let found = index.get(id, &mut v).map_err(ue("get"))?;
            Ok(if found == 0 {
                f32::NAN
            } else {
                v.iter().zip(query).map(|(a, b)| a * b).sum()
            })
        };
        let cap = dot(&self.captions)?;
        Ok(match &self.images {
            Some(images) => (1.0 - tau) * dot(images)? + tau * cap,
            None => cap,
        })
    }

    /// The top `k` (row id, fused score), best first, ties by gallery order; only ids in `allowed`
    /// when given.
    pub fn search(
        &self,
        query: &[f32],
        tau: f32,
        k: usize,
        allowed: Option<&HashSet<u64>>,
    ) -> Result<Vec<(u64, f32)>, VectorError> {
        let tau = if self.images.is_some() { tau } else { 1.0 };
        let exact = self.options.mode == SearchMode::Exact;
        // A small allowed set is scored directly (CIRR's subset has five images).
        if let Some(allowed) = allowed
            && (allowed.len() <= 4096 || !exact)
            && self.options.quantization != Quantization::I8
        {
            let mut scored: Vec<(u64, f32)> = allowed
                .iter()
                .filter(|id| self.position.contains_key(id))
                .map(|&id| self.exact_score(id, query, tau).map(|s| (id, s)))
                .collect::<Result<_, _>>()?;
            scored.sort_by(|a, b| self.cmp(a, b));
            scored.truncate(k);
            return Ok(scored);
        }
        if exact {
            let mut scores = self.all_scores(query, tau)?;
            if let Some(allowed) = allowed {
                for (p, id) in self.ids.iter().enumerate() {
                    if !allowed.contains(id) {
                        scores[p] = f32::NAN;
                    }
                }
            }
            return Ok(crate::ranking::top_k(&scores, k)
                .into_iter()
                .filter(|&p| !scores[p].is_nan())
                .map(|p| (self.ids[p], scores[p]))
                .collect());
        }
        let want = (4 * k).max(256).min(self.ids.len());
        let mut candidates: HashSet<u64> = HashSet::new();
        for index in std::iter::once(&self.captions).chain(self.images.as_ref()) {
            let m = index.search(query, want).map_err(ue("hnsw search"))?;
            candidates.extend(m.keys.iter().copied());
        }
        let mut scored: Vec<(u64, f32)> = candidates
            .into_iter()
            .map(|id| self.exact_score(id, query, tau).map(|s| (id, s)))
            .collect::<Result<_, _>>()?;
        scored.sort_by(|a, b| self.cmp(a, b));
        scored.truncate(k);
        Ok(scored)
    }

    fn cmp(&self, a: &(u64, f32), b: &(u64, f32)) -> std::cmp::Ordering {
        let pa = self.position.get(&a.0).copied().unwrap_or(usize::MAX);
        let pb = self.position.get(&b.0).copied().unwrap_or(usize::MAX);
        match (a.1.is_nan(), b.1.is_nan()) {
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => b.1.total_cmp(&a.1).then(pa.cmp(&pb)),
        }
    }
}

/// The mean of unit vectors, renormalised; `None` when there are none.
pub fn mean_query(vectors: &[Vec<f32>]) -> Option<Vec<f32>> {
    let first = vectors.first()?;
    let mut m = vec![0.0f32; first.len()];
    for v in vectors {
        for (a, b) in m.iter_mut().zip(v) {
            *a += b / vectors.len() as f32;
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, d: usize) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut v: Vec<f32> = (0..d)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    fn brute(rows: &[VectorRow], q: &[f32], tau: f32, k: usize) -> Vec<u64> {
        let scores: Vec<f32> = rows
            .iter()
            .map(|(_, i, c)| {
                let d = |v: &Vec<f32>| v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>();
                (1.0 - tau) * d(i.as_ref().unwrap()) + tau * d(c)
            })
            .collect();
        crate::ranking::top_k(&scores, k)
            .into_iter()
            .map(|p| rows[p].0)
            .collect()
    }

    #[test]
    fn exact_fused_search_matches_brute_force() {
        let rows: Vec<_> = (0..600u64)
            .map(|i| (i + 1, Some(unit(i, 32)), unit(i + 10_000, 32)))
            .collect();
        let v = Vectors::build(rows.clone(), VectorOptions::default()).unwrap();
        for s in 0..5 {
            let q = unit(99_000 + s, 32);
            let got: Vec<u64> = v
                .search(&q, 0.15, 50, None)
                .unwrap()
                .into_iter()
                .map(|r| r.0)
                .collect();
            assert_eq!(got, brute(&rows, &q, 0.15, 50));
        }
        let allowed: HashSet<u64> = [3, 7, 11].into();
        let got = v.search(&unit(5, 32), 0.15, 2, Some(&allowed)).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(id, _)| allowed.contains(id)));
    }

    #[test]
    fn caption_only_galleries_use_tau_one() {
        let rows: Vec<_> = (0..50u64).map(|i| (i, None, unit(i, 8))).collect();
        let v = Vectors::build(rows, VectorOptions::default()).unwrap();
        assert!(!v.has_images());
        let q = unit(7, 8);
        assert_eq!(v.search(&q, 0.15, 1, None).unwrap()[0].0, 7);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<_> = (0..100u64)
            .map(|i| (i, Some(unit(i, 16)), unit(i + 500, 16)))
            .collect();
        let v = Vectors::build(rows, VectorOptions::default()).unwrap();
        v.save(dir.path()).unwrap();
        let w = Vectors::load(
            dir.path(),
            VectorOptions::default(),
            v.ids().to_vec(),
            16,
            Some(16),
        )
        .unwrap();
        let q = unit(3, 16);
        assert_eq!(
            v.search(&q, 0.15, 10, None).unwrap(),
            w.search(&q, 0.15, 10, None).unwrap()
        );
    }
}
