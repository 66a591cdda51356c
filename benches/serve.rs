//! serve's own cost per search (a program, not a test): the same searches answered by calling the
//! library directly (`pipeline::query::run` on an open session, what `imagescope search` does) and
//! through `imagescope serve`'s HTTP API, whole-answer JSON and SSE, interleaved (the order of the
//! three rotates every search), the request cache off so each one does the same model work.
//!
//! ```bash
//! cargo bench --bench serve                    # over the fake servers: serve's absolute cost
//! ./launch/cpu/up.sh && ./target/release/imagescope index --config configs/demo.toml
//! IMAGESCOPE_BENCH_CONFIG=configs/demo.toml cargo bench --bench serve   # over the demo's models
//! ```
//!
//! Over the fake servers (TEST DOUBLES of tests/support: no model runs, answers take well under a
//! millisecond) the difference is what serve itself costs per search (HTTP, JSON, a task, the
//! stage events). Over the demo's real models the same difference is set against a real search.
//! `IMAGESCOPE_BENCH_ROUNDS` (default 20 over the fakes, 1 over the demo) rounds of every query;
//! `IMAGESCOPE_BENCH_QUERIES=N` keeps the first N queries. One search per way warms up first.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    clippy::disallowed_methods,
    dead_code
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use imagescope::datasets::{ImageKey, Instruction, Query};
use imagescope::serve::ServeArgs;
use imagescope::serving::CacheMode;
use imagescope::session::SearchTarget;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Direct,
    Json,
    Sse,
}

fn target(config: PathBuf) -> SearchTarget {
    support::search_target(config, CacheMode::Off)
}

/// (text, reference) of each demo query.
fn demo_queries() -> Vec<(String, Option<String>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/launch/demo/queries.json");
    let all: Vec<Value> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    all.iter()
        .map(|q| {
            (
                q["instruction"].as_str().unwrap().to_string(),
                q["reference"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn stats(ms: &mut [f64]) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    (mean, q(0.5), q(0.9))
}

async fn bench() {
    let live = std::env::var("IMAGESCOPE_BENCH_CONFIG").ok();
    let rounds: usize = std::env::var("IMAGESCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if live.is_some() { 1 } else { 20 });
    let keep: usize = std::env::var("IMAGESCOPE_BENCH_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    // The fake world (kept alive to the end), unless a real experiment is named.
    let (config, queries, _world) = match &live {
        Some(c) => (std::path::absolute(c).unwrap(), demo_queries(), None),
        None => {
            let env = support::env::Env::start("photos", |i| format!("img{i:02}"), 1).await;
            let exp = env.configs("folder", "all", "", None);
            env.index(&exp).await;
            let q = [
                "black dog sofa",
                "white cat",
                "red bus",
                "two green trees",
                "yellow flower",
            ];
            (
                exp,
                q.iter().map(|t| (t.to_string(), None)).collect(),
                Some(env),
            )
        }
    };
    let queries: Vec<(String, Option<String>)> = queries.into_iter().take(keep).collect();
    let session = imagescope::session::open(&target(config.clone()))
        .await
        .unwrap();
    let base = support::serve(&ServeArgs {
        target: target(config),
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        token: None,
        uploads_max_mib: 2048,
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let url = format!("{base}/api/search");
    let mut times: Vec<(Way, Vec<f64>)> = [Way::Direct, Way::Json, Way::Sse]
        .into_iter()
        .map(|w| (w, Vec::new()))
        .collect();
    let mut n = 0usize;
    // Round 0 is the warm-up: the first query only (connections, page cache), not counted.
    for round in 0..=rounds {
        let these = if round == 0 {
            &queries[..1]
        } else {
            &queries[..]
        };
        for (text, reference) in these {
            let mut order = [Way::Direct, Way::Json, Way::Sse];
            order.rotate_left(n % 3);
            n += 1;
            for way in order {
                let body = json!({"text": text, "reference": reference, "k": 10});
                let t = Instant::now();
                match way {
                    Way::Direct => {
                        let q = Query {
                            id: "bench".into(),
                            reference: reference.clone().map(ImageKey),
                            instruction: Instruction::Text { text: text.clone() },
                            targets: vec![],
                            subset: None,
                            aspects: vec![],
                            shared_concept: None,
                        };
                        let r = imagescope::pipeline::query::run(&session.ctx, &q).await;
                        assert!(r.error.is_none(), "{:?}", r.error);
                    }
                    Way::Json => {
                        let r = http.post(&url).json(&body).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                        let _: Value = r.json().await.unwrap();
                    }
                    Way::Sse => {
                        let r = http
                            .post(&url)
                            .header("accept", "text/event-stream")
                            .json(&body)
                            .send()
                            .await
                            .unwrap();
                        let text = r.text().await.unwrap();
                        assert!(text.contains("event: done"), "{text}");
                    }
                }
                if round > 0 {
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    times
                        .iter_mut()
                        .find(|(w, _)| *w == way)
                        .unwrap()
                        .1
                        .push(ms);
                }
            }
        }
    }
    println!(
        "serve bench: {} searches per way, {} ({}), stages s1-s3, request cache off",
        times[0].1.len(),
        if live.is_some() {
            "live servers"
        } else {
            "fake servers"
        },
        live.as_deref().unwrap_or("the fake world")
    );
    let direct = stats(&mut times[0].1.clone()).0;
    println!("way                      mean ms  median ms   p90 ms   vs direct (mean)");
    for (way, ms) in &mut times {
        let (mean, median, p90) = stats(ms);
        println!(
            "{:<24} {mean:>8.1} {median:>10.1} {p90:>8.1}   {:+.1} ms ({:+.1}%)",
            format!("{way:?}"),
            mean - direct,
            (mean - direct) / direct * 100.0
        );
    }
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}
