//! The vector index of an image database and the fused search of stage 1:
//!
//! s(i) = (1 - tau)·<t, v_i> + tau·<t, c_i>, where t is the mean of the unit description vectors
//! (the original averages per-description scores; by linearity that is the same number).
//!
//! The score is linear, so one usearch index (inner product, keys = store row ids) holds each image
//! as the concatenation [v_i ; c_i] of its image and caption vectors, and is queried with
//! [(1 - tau)·t ; tau·t]: its inner product *is* the fused score, for any tau. One exact search of
//! k results replaces two full searches fused afterwards (BENCHMARKS.md: 4.3 s a query at 123k
//! images for the two-index version). Caption-only databases hold c_i alone (tau = 1).
//!
//! - `exact` (default, parity with the original's brute-force matmul): usearch's exact search; a
//!   few extra results are fetched and re-sorted so ties break by gallery order;
//! - `hnsw`: the graph search, f32 (default) or f16; i8 is offered for exact search only.
//!
//! A small set of allowed images (CIRR's subset, a split inside a larger database) is scored
//! directly from the stored vectors; a large one by over-fetching and filtering.

use std::collections::HashSet;
use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

pub use crate::config::{DEFAULT_EF_SEARCH, Quantization, SearchMode, VectorOptions};

/// A usearch failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("vector index: {0}")]
pub struct VectorError(pub String);

fn ue<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> VectorError + '_ {
    move |e| VectorError(format!("{what}: {e}"))
}

/// One image's vectors: (row id, unit image vector if any, unit caption vector).
pub type VectorRow = (u64, Option<Vec<f32>>, Vec<f32>);

/// The fused index of one database.
pub struct Vectors {
    index: Index,
    has_images: bool,
    caption_dim: usize,
    options: VectorOptions,
    /// Row ids in gallery order; `position[id]` is the inverse.
    ids: Vec<u64>,
    position: std::collections::HashMap<u64, usize>,
    /// One slot per thread context reserved in usearch: more concurrent searches than contexts
    /// is undefined there, and up to `queries_in_flight` stage-1 searches can run at once.
    slots: Slots,
}

/// A counting semaphore for blocking threads (searches run on tokio's blocking pool).
#[derive(Debug)]
struct Slots {
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Slots {
    fn new(n: usize) -> Self {
        Slots {
            free: std::sync::Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            while *free == 0 {
                free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
            }
            *free -= 1;
        }
        struct Release<'a>(&'a Slots);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                self.0.freed.notify_one();
            }
        }
        let _release = Release(self);
        f()
    }
}

/// Thread contexts reserved in every usearch index: four per core, at least eight.
fn thread_contexts() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2)
        * 4
}

fn index_options(dim: usize, o: VectorOptions) -> IndexOptions {
    let (connectivity, expansion_add, expansion_search) = match o.mode {
        // The graph is never walked in exact mode; keep its construction cheap.
        SearchMode::Exact => (4, 8, 8),
        SearchMode::Hnsw => (32, 128, DEFAULT_EF_SEARCH),
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
    index
        .reserve_capacity_and_threads(n.max(1), thread_contexts())
        .map_err(ue("reserve"))?;
    Ok(index)
}

/// Adds rows on every core (usearch's `add` is thread-safe up to the reserved thread count). The
/// HNSW graph then depends on thread timing; exact search does not look at the graph, and a saved
/// index is loaded as it was built, so a database's rankings stay reproducible.
fn add_parallel(index: &Index, rows: &[(u64, Vec<f32>)]) -> Result<(), VectorError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .try_for_each(|(id, v)| index.add(*id, v).map_err(ue("add")))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| VectorError("an index build thread panicked".into()))?
        })
    })
}

/// Extra results fetched beyond k so that ties at the boundary still break by gallery order.
const TIE_MARGIN: usize = 16;

impl Vectors {
    /// Builds the index from `(id, image vector, caption vector)` rows in gallery order. Either
    /// every row has an image vector or none has.
    pub fn build(
        rows: impl IntoIterator<Item = VectorRow>,
        options: VectorOptions,
    ) -> Result<Self, VectorError> {
        if options.mode == SearchMode::Hnsw && options.quantization == Quantization::I8 {
            return Err(VectorError(
                "hnsw with i8 is not offered; use f16, or exact search with i8".into(),
            ));
        }
        let rows: Vec<VectorRow> = rows.into_iter().collect();
        let n = rows.len();
        let caption_dim = rows.first().map_or(1, |r| r.2.len());
        let image_dim = rows.first().and_then(|r| r.1.as_ref().map(Vec::len));
        let dim = caption_dim + image_dim.unwrap_or(0);
        let index = new_index(dim, options, n)?;
        // Joined one row at a time, so the separate vectors are freed as the joined ones are made.
        let joined: Vec<(u64, Vec<f32>)> = rows
            .into_iter()
            .map(|(id, image_vec, caption_vec)| {
                if caption_vec.len() != caption_dim || image_vec.as_ref().map(Vec::len) != image_dim
                {
                    return Err(VectorError(format!(
                        "row {id} has vectors of other dimensions than the first row"
                    )));
                }
                let mut v = image_vec.unwrap_or_default();
                v.extend(caption_vec);
                Ok((id, v))
            })
            .collect::<Result<_, _>>()?;
        add_parallel(&index, &joined)?;
        let ids: Vec<u64> = joined.iter().map(|r| r.0).collect();
        Ok(Self::from_parts(
            index,
            image_dim.is_some(),
            caption_dim,
            options,
            ids,
        ))
    }

    fn from_parts(
        index: Index,
        has_images: bool,
        caption_dim: usize,
        options: VectorOptions,
        ids: Vec<u64>,
    ) -> Self {
        let position = ids.iter().enumerate().map(|(p, id)| (*id, p)).collect();
        Vectors {
            index,
            has_images,
            caption_dim,
            options,
            ids,
            position,
            slots: Slots::new(thread_contexts()),
        }
    }

    /// The file of an index built with `options` from the store state whose
    /// `Store::content_digest` is `content` (`vectors-exact-f32-<digest>.usearch`, ...): one per
    /// option set, so runs searching one database with different `[index]` settings neither
    /// rebuild each other's index nor read one built for other settings; and named by what it
    /// was built from, so two builds from different store states, finishing in any order, never
    /// leave one state's record naming the other's vectors.
    pub fn file_name(options: VectorOptions, content: &str) -> String {
        format!("vectors-{}-{content}.usearch", options.tag())
    }

    /// The file earlier versions kept one index per setting in, whatever it was built from
    /// (`vectors-exact-f32.usearch`): never loaded (it cannot be told from a late save of another
    /// store state's), removed when the setting is built again.
    pub fn unnamed_file_name(options: VectorOptions) -> String {
        format!("vectors-{}.usearch", options.tag())
    }

    /// Removes this setting's index files other than `keep`: those of older store states, and
    /// the earlier unnamed one. A run that read an older record and is about to load one of them
    /// finds it gone and builds again, which `rebuild_vectors` refuses if the store changed
    /// under it; it never loads a mismatched file.
    pub fn remove_others(dir: &Path, options: VectorOptions, keep: &str) {
        let prefix = format!("vectors-{}-", options.tag());
        let unnamed = Self::unnamed_file_name(options);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let digest = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".usearch"));
            let named =
                digest.is_some_and(|d| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()));
            if name == keep || !(named || name == unnamed) {
                continue;
            }
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an index file of an older store state; delete it by hand");
            }
        }
    }

    /// Saves the index as `dir/name`, whole or not at all: it is written to a temporary file
    /// there and renamed, so a run opening the database meanwhile reads the old file or the new
    /// one, never half of one.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), VectorError> {
        let prefix = format!(".{name}.");
        sweep_temps(dir);
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // Readable by others, as the database's other files are (tempfile makes 0600 files).
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
        let tmp = builder
            .tempfile_in(dir)
            .map_err(ue("save"))?
            .into_temp_path();
        self.index
            .save(&tmp.to_string_lossy())
            .map_err(ue("save"))?;
        // On disk before it takes the name, as `files::write_atomic` does.
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(ue("save"))?;
        tmp.persist(dir.join(name))
            .map_err(|e| VectorError(format!("save: {}", e.error)))?;
        Ok(())
    }

    /// Loads the index saved as `dir/name` with these options; `ids` are the row ids in gallery
    /// order.
    pub fn load(
        dir: &Path,
        name: &str,
        options: VectorOptions,
        ids: Vec<u64>,
        caption_dim: usize,
        image_dim: Option<usize>,
    ) -> Result<Self, VectorError> {
        let index = new_index(caption_dim + image_dim.unwrap_or(0), options, ids.len())?;
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
        Ok(Self::from_parts(
            index,
            image_dim.is_some(),
            caption_dim,
            options,
            ids,
        ))
    }

    /// Sets HNSW's search breadth (candidates kept while walking the graph; default
    /// `DEFAULT_EF_SEARCH`). Larger
    /// is slower and closer to exact. No effect on exact search.
    pub fn set_ef_search(&self, ef: usize) {
        self.index.change_expansion_search(ef.max(1));
    }

    /// Bytes usearch holds for the index (vectors and graph).
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether image vectors exist (false for caption-only galleries, where tau is 1).
    pub fn has_images(&self) -> bool {
        self.has_images
    }

    /// Row ids in gallery order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The query [(1 - tau)·t ; tau·t] (or t alone for caption-only galleries).
    fn weighted(&self, query: &[f32], tau: f32) -> Result<Vec<f32>, VectorError> {
        if query.len() != self.caption_dim {
            return Err(VectorError(format!(
                "the query has {} dimensions, the gallery's vectors {}",
                query.len(),
                self.caption_dim
            )));
        }
        if !self.has_images {
            return Ok(query.to_vec());
        }
        Ok(query
            .iter()
            .map(|x| (1.0 - tau) * x)
            .chain(query.iter().map(|x| tau * x))
            .collect())
    }

    fn direct_score(&self, id: u64, q: &[f32]) -> Result<f32, VectorError> {
        let mut v = vec![0.0f32; self.index.dimensions()];
        let found = self.index.get(id, &mut v).map_err(ue("get"))?;
        Ok(if found == 0 {
            f32::NAN
        } else {
            v.iter().zip(q).map(|(a, b)| a * b).sum()
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
        let q = self.weighted(query, tau)?;
        let mut scored: Vec<(u64, f32)> = match allowed {
            Some(allowed)
                if allowed.len() <= 4096 && self.options.quantization != Quantization::I8 =>
            {
                allowed
                    .iter()
                    .filter(|id| self.position.contains_key(id))
                    .map(|&id| self.direct_score(id, &q).map(|s| (id, s)))
                    .collect::<Result<_, _>>()?
            }
            _ => {
                let excluded = allowed.map_or(0, |a| self.ids.len().saturating_sub(a.len()));
                let want = (k + TIE_MARGIN + excluded).min(self.ids.len());
                let m = self
                    .slots
                    .run(|| match self.options.mode {
                        SearchMode::Exact => self.index.exact_search(&q, want),
                        SearchMode::Hnsw => self.index.search(&q, want),
                    })
                    .map_err(ue("search"))?;
                m.keys
                    .iter()
                    .zip(&m.distances)
                    .filter(|(id, _)| allowed.is_none_or(|a| a.contains(id)))
                    .map(|(id, d)| (*id, 1.0 - d))
                    .collect()
            }
        };
        scored.sort_by(|a, b| self.cmp(a, b));
        scored.truncate(k);
        Ok(scored)
    }

    /// The rank (from 1) of row `id` in the whole gallery (or among `allowed`) under the fused
    /// score of `query`, ties by gallery order as in `search`; `None` when `id` is not indexed.
    /// One exact pass over every vector: the cost of an exact search.
    pub fn rank_of(
        &self,
        query: &[f32],
        tau: f32,
        id: u64,
        allowed: Option<&HashSet<u64>>,
    ) -> Result<Option<usize>, VectorError> {
        let q = self.weighted(query, tau)?;
        if !self.position.contains_key(&id) {
            return Ok(None);
        }
        let m = self
            .slots
            .run(|| self.index.exact_search(&q, self.ids.len()))
            .map_err(ue("search"))?;
        let scored = || m.keys.iter().zip(&m.distances).map(|(k, d)| (*k, 1.0 - d));
        let Some(target) = scored().find(|(k, _)| *k == id) else {
            return Ok(None);
        };
        let better = scored()
            .filter(|(k, _)| *k != id && allowed.is_none_or(|a| a.contains(k)))
            .filter(|s| self.cmp(s, &target) == std::cmp::Ordering::Less)
            .count();
        Ok(Some(better + 1))
    }

    fn cmp(&self, a: &(u64, f32), b: &(u64, f32)) -> std::cmp::Ordering {
        let pa = self.position.get(&a.0).copied().unwrap_or(usize::MAX);
        let pb = self.position.get(&b.0).copied().unwrap_or(usize::MAX);
        crate::ranking::rank_order((a.1, pa), (b.1, pb))
    }
}

/// The mean of unit vectors; `None` when there are none. Not renormalised: scaling the query by a
/// positive factor scales every fused score alike and changes no ranking, and the mean is what
/// averaging per-description scores (as the original does) computes.
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

/// A temporary index file older than this was left by a save that was killed (a save takes
/// seconds even at 123k images), not one under way in another process.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the temporary index files that saves killed mid-write left in `dir` (older than
/// `STALE_TEMP`, any setting's, and the old one-file layout's): each is as large as the index
/// (750 MB at 123k images in f32), and nothing else would ever remove them. Called by every save
/// and every opening of a database. Best effort: what cannot be removed stays, and the log says
/// so.
pub fn sweep_temps(dir: &Path) {
    sweep_stale_temps(dir, &[".vectors-", ".vectors.usearch."]);
}

fn sweep_stale_temps(dir: &Path, prefixes: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = prefixes.iter().any(|p| name.starts_with(p)) && name.ends_with(".tmp");
        if !ours || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_none_or(|a| a <= STALE_TEMP) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                tracing::info!(file = %entry.path().display(), "removed a temporary index file a killed save left")
            }
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a temporary index file a killed save left; delete it by hand")
            }
        }
    }
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
        crate::ranking::order_by_score(&scores)
            .into_iter()
            .take(k)
            .map(|p| rows[p].0)
            .collect()
    }

    /// `n` rows of ids 1..=n with an image vector and a caption vector of `d` dimensions
    /// (caption seeds offset by `caption_seed`).
    fn fused_rows(n: u64, d: usize, caption_seed: u64) -> Vec<VectorRow> {
        (0..n)
            .map(|i| (i + 1, Some(unit(i, d)), unit(i + caption_seed, d)))
            .collect()
    }

    #[test]
    fn many_more_concurrent_searches_than_thread_contexts_on_a_loaded_index() {
        let rows = fused_rows(400, 16, 7_000);
        let built = Vectors::build(rows.clone(), VectorOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        built.save(dir.path(), "v.usearch").unwrap();
        let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        let v = Vectors::load(
            dir.path(),
            "v.usearch",
            VectorOptions::default(),
            ids,
            16,
            Some(16),
        )
        .unwrap();
        let queries: Vec<Vec<f32>> = (0..256u64).map(|s| unit(s + 90_000, 16)).collect();
        let expected: Vec<Vec<u64>> = queries.iter().map(|q| brute(&rows, q, 0.15, 10)).collect();
        assert!(256 > thread_contexts());
        let got: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .iter()
                .map(|q| {
                    let v = &v;
                    s.spawn(move || {
                        v.search(q, 0.15, 10, None)
                            .unwrap()
                            .into_iter()
                            .map(|(id, _)| id)
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got, expected);
    }

    #[test]
    fn exact_fused_search_matches_brute_force() {
        let rows = fused_rows(600, 32, 10_000);
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
    fn the_rank_of_any_image_in_the_whole_gallery_matches_brute_force() {
        let rows = fused_rows(600, 32, 10_000);
        let v = Vectors::build(rows.clone(), VectorOptions::default()).unwrap();
        let q = unit(99_123, 32);
        let order = brute(&rows, &q, 0.15, rows.len());
        for at in [0, 1, 99, 100, 350, 599] {
            let id = order[at];
            assert_eq!(v.rank_of(&q, 0.15, id, None).unwrap(), Some(at + 1));
        }
        assert_eq!(v.rank_of(&q, 0.15, 9_999, None).unwrap(), None);
        // Among allowed ids only: the last of the whole order, with two others allowed, is third.
        let allowed: HashSet<u64> = [order[0], order[10], order[599]].into();
        assert_eq!(
            v.rank_of(&q, 0.15, order[599], Some(&allowed)).unwrap(),
            Some(3)
        );
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
    fn a_save_removes_the_temporary_files_killed_saves_left_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let options = VectorOptions::default();
        let name = Vectors::file_name(options, "0123456789abcdef");
        let file = |n: &str, age_secs: u64| {
            let path = dir.path().join(n);
            std::fs::write(&path, b"half an index").unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
            path
        };
        let killed = file(&format!(".{name}.a1b2c3.tmp"), 7200);
        let under_way = file(&format!(".{name}.d4e5f6.tmp"), 5);
        let other_setting = file(".vectors-hnsw-i8.usearch.g7h8.tmp", 7200);
        let old_layout = file(".vectors.usearch.i9j0.tmp", 7200);
        let not_ours = file("notes.tmp", 7200);
        let an_index = file("vectors-hnsw-i8.usearch", 7200);
        let a_record = file(".built-exact-f32.json.k1l2.tmp", 7200);
        let rows: Vec<_> = (0..10u64).map(|i| (i, None, unit(i, 8))).collect();
        Vectors::build(rows, options)
            .unwrap()
            .save(dir.path(), &name)
            .unwrap();
        assert!(!killed.exists() && !other_setting.exists() && !old_layout.exists());
        assert!(under_way.exists() && not_ours.exists());
        assert!(an_index.exists() && a_record.exists());
    }

    #[test]
    fn removing_other_states_files_keeps_other_settings_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let exact = VectorOptions::default();
        let hnsw = VectorOptions {
            mode: SearchMode::Hnsw,
            quantization: Quantization::F16,
        };
        let touch = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, b"x").unwrap();
            p
        };
        let keep = touch(&Vectors::file_name(exact, "00000000000000aa"));
        let older = touch(&Vectors::file_name(exact, "00000000000000bb"));
        let unnamed = touch(&Vectors::unnamed_file_name(exact));
        let other_setting = touch(&Vectors::file_name(hnsw, "00000000000000bb"));
        let other_unnamed = touch(&Vectors::unnamed_file_name(hnsw));
        let not_a_digest = touch("vectors-exact-f32-copy.usearch");
        let record = touch("built-exact-f32.json");
        Vectors::remove_others(
            dir.path(),
            exact,
            &Vectors::file_name(exact, "00000000000000aa"),
        );
        assert!(!older.exists() && !unnamed.exists());
        for p in [keep, other_setting, other_unnamed, not_a_digest, record] {
            assert!(p.exists(), "{}", p.display());
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<_> = (0..100u64)
            .map(|i| (i, Some(unit(i, 16)), unit(i + 500, 16)))
            .collect();
        let v = Vectors::build(rows, VectorOptions::default()).unwrap();
        v.save(dir.path(), "v.usearch").unwrap();
        let w = Vectors::load(
            dir.path(),
            "v.usearch",
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
