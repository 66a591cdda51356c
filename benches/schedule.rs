//! Scheduling benchmark (a program, not a test). A SIMULATOR stands in for the model servers: each
//! simulated server admits at most `max_num_seqs` requests at once (the rest queue), and spends
//! prefill time per prompt token, a cost per image and decode time per output token on each, like
//! a continuous-batching vLLM server whose per-sequence speed does not depend on the batch. Costs
//! are scaled down (milliseconds, not seconds) so the whole benchmark takes about ten minutes.
//!
//! ```bash
//! cargo bench --bench schedule            # settings in benches/schedule.toml
//! ```
//!
//! A CIRCO-shaped workload goes through the real `serving::RoleClient` (its limits = the servers'
//! `max_num_seqs`) twice: pipelined, each query running its steps as soon as their inputs are ready
//! with `queries_in_flight` queries at a time (how `imagescope run` schedules), and
//! stage-synchronous, every query finishing a step before any query starts the next (how the
//! original runs). Reported: wall time, the lower bound (the busiest server's total work divided by
//! its slots), efficiency = bound / wall, and the speed-up; then the same with two verifier replicas.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use futures::StreamExt as _;
use imagescope::config::{Role, ServersConfig};
use imagescope::serving::{ChatRequest, EmbedInput, Message, Part, RoleClient, Speaker};
use serde_json::{Value, json};

#[path = "support/capacity.rs"]
mod capacity;
use capacity::{ServerModel, Settings, Workload};

struct Sim {
    model: ServerModel,
    slots: Arc<tokio::sync::Semaphore>,
    busy_us: AtomicU64,
}

impl Sim {
    fn cost(&self, body: &Value) -> Duration {
        let text = body.to_string();
        let images = text.matches("\"type\":\"image_url\"").count() as f64;
        // About four characters a token; image bytes are not text tokens.
        let prompt_tokens = (text.len() as f64 - images * 1000.0).max(0.0) / 4.0;
        let ms = self.model.prefill_ms_per_1k * prompt_tokens / 1000.0
            + self.model.image_ms * images
            + self.model.decode_ms_per_token * self.model.output_tokens;
        Duration::from_secs_f64(ms / 1000.0)
    }
}

async fn serve(State(sim): State<Arc<Sim>>, body: Bytes) -> axum::Json<Value> {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let cost = sim.cost(&body);
    let _slot = sim.slots.clone().acquire_owned().await.unwrap();
    tokio::time::sleep(cost).await;
    sim.busy_us
        .fetch_add(cost.as_micros() as u64, Ordering::Relaxed);
    if body.get("messages").is_some() && body.get("encoding_format").is_none() {
        axum::Json(
            json!({"model": body["model"], "choices": [{"message": {"content": "yes"}, "finish_reason": "stop"}]}),
        )
    } else {
        let n = body["input"].as_array().map_or(1, Vec::len);
        let data: Vec<Value> = (0..n)
            .map(|i| json!({"index": i, "embedding": [0.6, 0.8]}))
            .collect();
        axum::Json(json!({"model": body["model"], "data": data}))
    }
}

async fn start(model: ServerModel) -> (String, Arc<Sim>) {
    let sim = Arc::new(Sim {
        slots: Arc::new(tokio::sync::Semaphore::new(model.max_num_seqs)),
        model,
        busy_us: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(serve))
        .route("/v1/embeddings", axum::routing::post(serve))
        .with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), sim)
}

struct Clients {
    reasoner: RoleClient,
    verifier: RoleClient,
    evaluator: RoleClient,
    embedder: RoleClient,
}

fn chat(text: String, images: usize) -> ChatRequest {
    let mut parts: Vec<Part> = (0..images).map(|_| Part::Image(probe())).collect();
    parts.push(Part::Text(text));
    ChatRequest {
        messages: vec![Message {
            speaker: Speaker::User,
            parts,
        }],
        ..Default::default()
    }
}

fn probe() -> imagescope::images::EncodedImage {
    static IMG: std::sync::OnceLock<imagescope::images::EncodedImage> = std::sync::OnceLock::new();
    IMG.get_or_init(imagescope::doctor::probe_image).clone()
}

/// The steps of one query, in order; within a step requests are independent.
async fn step(c: &Clients, w: &Workload, q: usize, s: usize) {
    let prompt = |tag: &str| {
        format!(
            "{tag} {q} {}",
            "word ".repeat(w.reasoner_prompt_tokens * 4 / 5)
        )
    };
    match s {
        0 => drop(c.reasoner.chat(&chat(prompt("reason"), 0)).await.unwrap()),
        1 => {
            let texts: Vec<EmbedInput> = (0..w.descriptions)
                .map(|d| EmbedInput::Text(format!("q{q} d{d}")))
                .collect();
            drop(c.embedder.embed(&texts).await.unwrap());
        }
        2 => drop(
            c.reasoner
                .chat(&chat(prompt("propositions"), 0))
                .await
                .unwrap(),
        ),
        3 => {
            let calls = (0..w.top_k * w.propositions).map(|i| async move {
                c.verifier
                    .chat(&chat(
                        format!("Answer the question with Yes or No. q{q} {i}?"),
                        1,
                    ))
                    .await
                    .unwrap()
            });
            futures::future::join_all(calls).await;
        }
        _ => {
            for t in 0..w.evaluator_turns {
                drop(
                    c.evaluator
                        .chat(&chat(
                            format!("evaluate q{q} turn {t} {}", "word ".repeat(120)),
                            1,
                        ))
                        .await
                        .unwrap(),
                );
            }
        }
    }
}

const STEPS: usize = 5;

async fn pipelined(c: &Clients, w: &Workload, in_flight: usize) {
    futures::stream::iter(0..w.queries)
        .map(|q| async move {
            for s in 0..STEPS {
                step(c, w, q, s).await;
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
}

/// Each step's duration for one query alone on idle servers.
async fn solo_steps(c: &Clients, w: &Workload) -> [f64; STEPS] {
    let mut d = [0.0; STEPS];
    for (s, slot) in d.iter_mut().enumerate() {
        let t = Instant::now();
        step(c, w, usize::MAX, s).await;
        *slot = t.elapsed().as_secs_f64();
    }
    d
}

/// Steps of the workload that use `role`'s server.
fn steps_of(role: &str) -> &'static [usize] {
    match role {
        "reasoner" => &[0, 2],
        "embedder" => &[1],
        "verifier" => &[3],
        _ => &[4],
    }
}

/// The tighter bound: no query reaches the busiest server before the steps ahead of it are done
/// (fill), and after its last request there the last query still runs the steps behind it (drain).
fn tight_bound(bound: f64, busiest: &str, solo: &[f64; STEPS]) -> f64 {
    let steps = steps_of(busiest);
    let first = steps.first().copied().unwrap_or(0);
    let last = steps.last().copied().unwrap_or(STEPS - 1);
    bound + solo[..first].iter().sum::<f64>() + solo[last + 1..].iter().sum::<f64>()
}

async fn synchronous(c: &Clients, w: &Workload) {
    for s in 0..STEPS {
        futures::future::join_all((0..w.queries).map(|q| step(c, w, q, s))).await;
    }
}

async fn setup(
    s: &Settings,
    verifier_replicas: usize,
) -> (Clients, BTreeMap<&'static str, (Arc<Sim>, usize)>) {
    let mut text = String::new();
    let mut sims = BTreeMap::new();
    for (role, model, replicas) in [
        ("reasoner", &s.reasoner, 1),
        ("verifier", &s.verifier, verifier_replicas),
        ("evaluator", &s.evaluator, 1),
        ("embedder", &s.embedder, 1),
    ] {
        let mut urls = vec![];
        for r in 0..replicas {
            let (url, sim) = start(model.clone()).await;
            urls.push(format!("{url:?}"));
            let key: &'static str = Box::leak(
                format!(
                    "{role}{}",
                    if replicas > 1 {
                        format!("#{r}")
                    } else {
                        String::new()
                    }
                )
                .into_boxed_str(),
            );
            sims.insert(key, (sim, model.max_num_seqs));
        }
        let shape = if role == "embedder" {
            "embed_shape = \"openai-input\"\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "[roles.{role}]\nendpoints = [{}]\nmodel = \"sim\"\napi = \"openai\"\nmax_in_flight = {}\ntimeout_secs = 600\n{shape}\n",
            urls.join(", "),
            model.max_num_seqs
        ));
    }
    let cfg = ServersConfig::parse(&text, Path::new("simulated.toml")).unwrap();
    let client = |r: Role| RoleClient::new(r, &cfg.roles[&r], Path::new("simulated.toml")).unwrap();
    (
        Clients {
            reasoner: client(Role::Reasoner),
            verifier: client(Role::Verifier),
            evaluator: client(Role::Evaluator),
            embedder: client(Role::Embedder),
        },
        sims,
    )
}

fn bound(sims: &BTreeMap<&'static str, (Arc<Sim>, usize)>) -> (f64, String) {
    // Replicas of one role share its work: the bound of a role is its total work over all slots.
    let mut per_role: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (name, (sim, slots)) in sims {
        let role = name.split('#').next().unwrap_or(name).to_string();
        let e = per_role.entry(role).or_default();
        e.0 += sim.busy_us.load(Ordering::Relaxed) as f64 / 1e6;
        e.1 += slots;
    }
    per_role
        .into_iter()
        .map(|(r, (work, slots))| (work / slots as f64, r))
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let settings: Settings = toml::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/schedule.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let w = &settings.workload;
    println!(
        "workload: {} queries; per query 2 reasoner calls of ~{} tokens, {} text embeddings, {}×{} verifier calls with an image, {} evaluator calls with an image\n",
        w.queries,
        w.reasoner_prompt_tokens,
        w.descriptions,
        w.top_k,
        w.propositions,
        w.evaluator_turns
    );
    let solo = {
        let (clients, _) = setup(&settings, 1).await;
        solo_steps(&clients, w).await
    };
    println!(
        "one query alone, per step (s): reasoner {:.2}, embed {:.2}, reasoner {:.2}, verifier {:.2}, evaluator {:.2}\n",
        solo[0], solo[1], solo[2], solo[3], solo[4]
    );
    println!(
        "| schedule | verifier replicas | wall s | bound s (busiest server) | efficiency = bound / wall | bound + fill + drain s | efficiency against it |\n|---|---|---|---|---|---|---|"
    );
    for replicas in [1, 2] {
        let mut runs: Vec<(String, f64)> = w
            .queries_in_flight
            .iter()
            .map(|n| (format!("pipelined, {n} queries in flight"), *n as f64))
            .collect();
        runs.push(("stage-synchronous (the original)".into(), 0.0));
        let mut walls = vec![];
        for (name, in_flight) in runs {
            let (clients, sims) = setup(&settings, replicas).await;
            let t = Instant::now();
            if in_flight > 0.0 {
                pipelined(&clients, w, in_flight as usize).await;
            } else {
                synchronous(&clients, w).await;
            }
            let wall = t.elapsed().as_secs_f64();
            let (b, busiest) = bound(&sims);
            let tight = tight_bound(b, &busiest, &solo);
            println!(
                "| {name} | {replicas} | {wall:.2} | {b:.2} ({busiest}) | {:.3} | {tight:.2} | {:.3} |",
                b / wall,
                tight / wall
            );
            walls.push(wall);
        }
        let best = walls[..walls.len() - 1]
            .iter()
            .copied()
            .fold(f64::MAX, f64::min);
        println!(
            "| speed-up of the best pipelined run over stage-synchronous | {replicas} | {:.2}× | | | | |",
            walls[walls.len() - 1] / best
        );
    }
}
