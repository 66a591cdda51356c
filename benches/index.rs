//! Index and client-side image benchmark (a program, not a test: it asserts nothing about time).
//!
//! ```bash
//! cargo bench --bench index                     # 123,000 × 768, as CIRCO's gallery
//! IMAGESCOPE_BENCH_N=20000 cargo bench --bench index
//! IMAGESCOPE_BENCH_MODES=exact cargo bench --bench index   # skip the (slow to build) HNSW index
//! ```
//!
//! Prints a Markdown table: per-image preparation cost (decode, resize, encode), the evaluator
//! composite, index build time and memory, and search latency / throughput for exact and HNSW
//! search over image + caption vectors, with HNSW's recall@50 against exact search.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use imagescope::index::vectors::{SearchMode, VectorOptions, VectorRow, Vectors};

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn unit_vectors(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| normalize((0..d).map(|_| rng.f32() - 0.5).collect()))
        .collect()
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn photo(w: u32, h: u32) -> image::DynamicImage {
    let mut rng = fastrand::Rng::with_seed(7);
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, rng.u8(..)])
    }))
}

fn main() {
    let n: usize = std::env::var("IMAGESCOPE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(123_000);
    let d = 768;
    let queries = 100;
    println!(
        "machine: {} cores; n = {n}, d = {d}\n",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );

    // Client-side cost per image.
    let dir = tempfile::tempdir().unwrap();
    let jpg = dir.path().join("photo.jpg");
    photo(1024, 768).save(&jpg).unwrap();
    let reps = 20;
    let (_, t_orig) = time(|| {
        (0..reps).for_each(|_| drop(imagescope::index::build::prepare(&jpg, None, None).unwrap()))
    });
    let (_, t_resize) = time(|| {
        (0..reps).for_each(|_| {
            drop(imagescope::index::build::prepare(&jpg, Some(672), Some(224)).unwrap())
        })
    });
    let a = photo(640, 480);
    let b = photo(500, 375);
    let (_, t_comp) = time(|| {
        (0..reps)
            .for_each(|_| drop(imagescope::roles::evaluator::composite_png(Some(&a), &b).unwrap()))
    });
    println!("| client work per image (1024×768 JPEG) | ms |\n|---|---|");
    println!(
        "| read + decode + validate, sent as is | {:.1} |",
        1000.0 * t_orig / reps as f64
    );
    println!(
        "| read + decode + resize to 672 and 224 + 2 JPEG encodes | {:.1} |",
        1000.0 * t_resize / reps as f64
    );
    println!(
        "| evaluator composite (2 × 800² resize + 1645×826 PNG) | {:.1} |\n",
        1000.0 * t_comp / reps as f64
    );

    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    for data in kinds() {
        let (images, captions, qs) = make_data(data, n, d, queries);
        let rows = || -> Vec<VectorRow> {
            images
                .iter()
                .zip(&captions)
                .enumerate()
                .map(|(i, (a, b))| (i as u64, Some(a.clone()), b.clone()))
                .collect()
        };
        println!(
            "\n**{data} vectors**, {n} × {d}, {queries} queries, top 50, τ = 0.15, {threads} threads\n"
        );
        println!(
            "| index | build s | RSS added MiB | usearch MiB | 1 query ms (p50) | queries/s, one at a time | queries/s, {threads} threads | recall@50 vs exact |\n|---|---|---|---|---|---|---|---|"
        );
        let mut exact_top: Vec<Vec<u64>> = vec![];
        for mode in modes() {
            let rss0 = rss_mib();
            let (v, build) = time(|| {
                Vectors::build(
                    rows(),
                    VectorOptions {
                        mode,
                        ..Default::default()
                    },
                )
                .unwrap()
            });
            let mem = rss_mib() - rss0;
            let usearch_mib = v.memory_bytes() as f64 / (1 << 20) as f64;
            let efs: &[usize] = match mode {
                SearchMode::Exact => &[0],
                SearchMode::Hnsw => &[64, 256, 1024, 4096],
            };
            for &ef in efs {
                if ef > 0 {
                    v.set_ef_search(ef);
                }
                let mut lat = vec![];
                let mut tops = vec![];
                let (_, total) = time(|| {
                    for q in &qs {
                        let (r, t) = time(|| v.search(q, 0.15, 50, None).unwrap());
                        lat.push(t);
                        tops.push(r.into_iter().map(|x| x.0).collect::<Vec<_>>());
                    }
                });
                let (_, parallel) = time(|| {
                    std::thread::scope(|s| {
                        for part in qs.chunks(qs.len().div_ceil(threads)) {
                            let v = &v;
                            s.spawn(move || {
                                part.iter()
                                    .for_each(|q| drop(v.search(q, 0.15, 50, None).unwrap()))
                            });
                        }
                    })
                });
                lat.sort_by(f64::total_cmp);
                let recall = if mode == SearchMode::Exact {
                    exact_top = tops.clone();
                    1.0
                } else if exact_top.is_empty() {
                    f64::NAN
                } else {
                    let hits: usize = tops
                        .iter()
                        .zip(&exact_top)
                        .map(|(t, e)| t.iter().filter(|k| e.contains(k)).count())
                        .sum();
                    hits as f64 / (50 * queries) as f64
                };
                let label = match mode {
                    SearchMode::Exact => "exact, f32".to_string(),
                    SearchMode::Hnsw => {
                        format!("HNSW, f32, M = 32, ef_add = 128, ef_search = {ef}")
                    }
                };
                println!(
                    "| {label} | {build:.1} | {mem:.0} | {usearch_mib:.0} | {:.1} | {:.1} | {:.1} | {recall:.4} |",
                    1000.0 * lat[lat.len() / 2],
                    queries as f64 / total,
                    queries as f64 / parallel,
                );
            }
        }
    }
}

fn kinds() -> Vec<&'static str> {
    match std::env::var("IMAGESCOPE_BENCH_DATA").as_deref() {
        Ok("uniform") => vec!["uniform"],
        Ok("clustered") => vec!["clustered"],
        _ => vec!["uniform", "clustered"],
    }
}

fn modes() -> Vec<SearchMode> {
    match std::env::var("IMAGESCOPE_BENCH_MODES").as_deref() {
        Ok("exact") => vec![SearchMode::Exact],
        _ => vec![SearchMode::Exact, SearchMode::Hnsw],
    }
}

fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// `a + w·noise`, normalised; the noise is a random unit vector.
fn blur(a: &[f32], w: f32, rng: &mut fastrand::Rng) -> Vec<f32> {
    let noise = normalize((0..a.len()).map(|_| rng.f32() - 0.5).collect());
    normalize(a.iter().zip(&noise).map(|(x, e)| x + w * e).collect())
}

type Vecs = Vec<Vec<f32>>;

/// (image vectors, caption vectors, queries).
///
/// - `uniform`: independent random unit vectors: no structure at all, HNSW's hardest case;
/// - `clustered`: a synthetic stand-in for CLIP's geometry: topics of about 50 images
///   (cos ≈ 0.6 between images of a topic), each caption near its image (cos ≈ 0.7), each query
///   near one gallery image (cos ≈ 0.55), as a target description is near its target.
fn make_data(kind: &str, n: usize, d: usize, queries: usize) -> (Vecs, Vecs, Vecs) {
    if kind == "uniform" {
        return (
            unit_vectors(n, d, 1),
            unit_vectors(n, d, 2),
            unit_vectors(queries, d, 3),
        );
    }
    let mut rng = fastrand::Rng::with_seed(11);
    let topics = unit_vectors((n / 50).max(1), d, 4);
    let images: Vec<Vec<f32>> = (0..n)
        .map(|_| blur(&topics[rng.usize(..topics.len())], 0.8, &mut rng))
        .collect();
    let captions = images.iter().map(|v| blur(v, 1.0, &mut rng)).collect();
    let qs = (0..queries)
        .map(|_| blur(&images[rng.usize(..n)], 1.5, &mut rng))
        .collect();
    (images, captions, qs)
}
