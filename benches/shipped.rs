//! Scheduling benchmark of the shipped run (a program, not a test): the real `imagescope run`
//! binary (prepare, drive, finish; journal, request cache code, image pools, the 4-candidate bound,
//! as shipped) answers a CIRCO-shaped workload against a SIMULATOR of the model servers, and its
//! wall time is set against what the servers' capacity allows.
//!
//! ```bash
//! cargo bench --bench shipped                     # settings in benches/schedule.toml
//! SHIPPED_QUERIES=200 cargo bench --bench shipped # a shorter run
//! ```
//!
//! Each simulated server (one in-process HTTP server per role and replica) admits `max_num_seqs`
//! requests at once, the rest queue, and spends prefill time per prompt token, a cost per image
//! and decode time per output token on each (scaled-down milliseconds), like a continuous-batching
//! vLLM server; it answers in the shape each role expects (the reasoner `descriptions`
//! descriptions, then `propositions` questions; the verifier "Yes"; the evaluator "No", so every
//! query takes its α = `evaluator_turns` turns; the embedder a hashed vector). The client's limits
//! are the servers' `max_num_seqs`. Reported per run: wall time of the whole command; the **bound**
//! (the busiest server's total work over its slots); **fill + drain** (in a one-query run, the time
//! before the first request reaches the busiest server and after its last answer: startup, the
//! steps ahead of it and behind it), so bound + fill + drain is what any schedule needs;
//! efficiency = that achievable bound / wall; and the **stage-synchronous bound** (every query
//! finishing a step before any starts the next, as the original runs: the sum over steps of each
//! step's work over its server's slots), whose ratio to the wall is a lower bound on the speed-up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};

#[path = "support/capacity.rs"]
mod capacity;
use capacity::{ServerModel, Settings, Workload};

const DIM: usize = 32;

/// What one simulated server did: busy seconds per step, first arrival and last answer.
#[derive(Default)]
struct Log {
    busy: BTreeMap<&'static str, f64>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Start and end of every request's service, for `SHIPPED_TRACE`.
    spans: Vec<(Instant, Instant)>,
}

struct Sim {
    role: &'static str,
    model: ServerModel,
    slots: Arc<tokio::sync::Semaphore>,
    w: Workload,
    log: Mutex<Log>,
}

/// Text characters and image parts of a request (image bytes are not prompt tokens).
fn measure(v: &Value, chars: &mut usize, images: &mut usize) {
    match v {
        Value::Object(m) => {
            if m.get("type").and_then(Value::as_str) == Some("image_url") {
                *images += 1;
                return;
            }
            m.values().for_each(|x| measure(x, chars, images));
        }
        Value::Array(a) => a.iter().for_each(|x| measure(x, chars, images)),
        Value::String(s) => *chars += s.len(),
        _ => {}
    }
}

impl Sim {
    fn step(&self, body: &Value) -> &'static str {
        match self.role {
            "reasoner" if body.to_string().contains("yes/no questions") => "propositions",
            "reasoner" => "reason",
            other => other,
        }
    }

    fn cost(&self, body: &Value, step: &str) -> Duration {
        let (mut chars, mut images) = (0, 0);
        measure(
            body.get("messages").unwrap_or(body),
            &mut chars,
            &mut images,
        );
        measure(
            body.get("input").unwrap_or(&Value::Null),
            &mut chars,
            &mut images,
        );
        // About four characters a token; the reasoner's prompts are padded to the workload's
        // length (the shipped templates are shorter than Llama-3's few-shot prompts).
        let mut tokens = chars as f64 / 4.0;
        if step == "reason" || step == "propositions" {
            tokens = tokens.max(self.w.reasoner_prompt_tokens as f64);
        }
        let ms = self.model.prefill_ms_per_1k * tokens / 1000.0
            + self.model.image_ms * images as f64
            + self.model.decode_ms_per_token * self.model.output_tokens;
        Duration::from_secs_f64(ms / 1000.0)
    }

    fn answer(&self, step: &str, body: &Value) -> String {
        match step {
            "reason" => {
                let tag = &blake3::hash(body.to_string().as_bytes()).to_hex()[..6];
                let d: Vec<String> = (0..self.w.descriptions)
                    .map(|i| format!("\"a photo of thing {tag} seen from side {i}\""))
                    .collect();
                format!(
                    "```json\n{{\"edits\": [[\"Addition\", \"thing {tag}\"]], \"descriptions\": [{}]}}\n```",
                    d.join(", ")
                )
            }
            "propositions" => {
                let q: Vec<String> = (0..self.w.propositions)
                    .map(|i| format!("[\"Is detail {i} in the photo?\", \"True\"]"))
                    .collect();
                format!(
                    "```json\n{{\"statements\": [], \"questions\": [{}]}}\n```",
                    q.join(", ")
                )
            }
            "verifier" => "Yes".into(),
            _ => "ANSWER: No\nIt is not the photo.".into(),
        }
    }
}

fn vector(bytes: &[u8]) -> Vec<f32> {
    let h = blake3::hash(bytes);
    let mut v: Vec<f32> = h
        .as_bytes()
        .iter()
        .take(DIM)
        .map(|b| f32::from(*b) - 127.5)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

async fn serve(State(sim): State<Arc<Sim>>, body: Bytes) -> axum::Json<Value> {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let step = sim.step(&body);
    let cost = sim.cost(&body, step);
    let _slot = sim.slots.clone().acquire_owned().await.unwrap();
    {
        let mut log = sim.log.lock().unwrap();
        log.first.get_or_insert_with(Instant::now);
    }
    let began = Instant::now();
    tokio::time::sleep(cost).await;
    {
        let mut log = sim.log.lock().unwrap();
        *log.busy.entry(step).or_default() += cost.as_secs_f64();
        let now = Instant::now();
        log.last = Some(now);
        log.spans.push((began, now));
    }
    let model = body["model"].clone();
    if sim.role == "embedder" {
        let inputs: Vec<Value> = match body.get("input") {
            Some(Value::Array(a)) => a.clone(),
            Some(v) => vec![v.clone()],
            None => vec![body["messages"][0]["content"][0].clone()],
        };
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, x)| json!({"index": i, "embedding": vector(x.to_string().as_bytes())}))
            .collect();
        return axum::Json(json!({"object": "list", "model": model, "data": data}));
    }
    axum::Json(json!({
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": sim.answer(step, &body)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    }))
}

async fn models(State(sim): State<Arc<Sim>>) -> axum::Json<Value> {
    axum::Json(
        json!({"object": "list", "data": [{"id": format!("sim-{}", sim.role), "object": "model"}]}),
    )
}

async fn start(role: &'static str, model: ServerModel, w: &Workload) -> (String, Arc<Sim>) {
    let sim = Arc::new(Sim {
        role,
        slots: Arc::new(tokio::sync::Semaphore::new(model.max_num_seqs)),
        model,
        w: w.clone(),
        log: Mutex::new(Log::default()),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(serve))
        .route("/v1/embeddings", axum::routing::post(serve))
        .route("/v1/models", axum::routing::get(models))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), sim)
}

/// A gallery of small distinct PNGs with captions, and `n` text queries.
fn data(dir: &Path, images: usize, n: usize) -> PathBuf {
    let photos = dir.join("gallery");
    std::fs::create_dir_all(&photos).unwrap();
    let mut captions = serde_json::Map::new();
    for i in 0..images {
        let name = format!("img{i:04}.png");
        let path = photos.join(&name);
        if !path.exists() {
            let img = image::RgbImage::from_fn(48, 48, |x, y| {
                image::Rgb([(i % 251) as u8, (x * 5) as u8, (y * 5) as u8])
            });
            img.save(&path).unwrap();
        }
        captions.insert(name, json!(format!("a photo of thing {i}")));
    }
    std::fs::write(
        dir.join("captions.json"),
        Value::Object(captions).to_string(),
    )
    .unwrap();
    let list: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("q{i}"), "instruction": format!("thing number {i} on a table"), "targets": [format!("img{:04}.png", (i * 7) % images)]}))
        .collect();
    std::fs::write(photos.join("queries.json"), Value::Array(list).to_string()).unwrap();
    photos
}

struct Setup {
    work: PathBuf,
    sims: Vec<(&'static str, Arc<Sim>)>,
}

async fn setup(
    s: &Settings,
    replicas: usize,
    dir: &Path,
    photos: &Path,
    in_flight: usize,
) -> Setup {
    let w = &s.workload;
    let work = dir.join(format!("work-{replicas}-{in_flight}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let mut text = String::new();
    let mut sims = Vec::new();
    for (role, model, n) in [
        ("captioner", &s.embedder, 1),
        ("reasoner", &s.reasoner, 1),
        ("verifier", &s.verifier, replicas),
        ("evaluator", &s.evaluator, 1),
        ("embedder", &s.embedder, 1),
    ] {
        let mut urls = Vec::new();
        for _ in 0..n {
            let (url, sim) = start(role, model.clone(), w).await;
            urls.push(format!("{url:?}"));
            sims.push((role, sim));
        }
        let extra = if role == "embedder" {
            format!("embed_shape = \"vllm-messages\"\ndimension = {DIM}\n")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[roles.{role}]\nendpoints = [{}]\nmodel = \"sim-{role}\"\napi = \"vllm\"\nmax_in_flight = {}\ntimeout_secs = 600\nsampling = {{ temperature = 0.0 }}\n{extra}\n",
            urls.join(", "),
            model.max_num_seqs
        ));
    }
    std::fs::write(work.join("servers.toml"), text).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exp = format!(
        "servers = \"servers.toml\"\nprompts = {:?}\nruns = \"runs\"\nimage_db = {:?}\ncaptions = {:?}\n\n[dataset]\nname = \"folder\"\nroot = {:?}\nsplit = \"all\"\n\n[pipeline]\ntop_k = {}\nalpha = {}\nreask = 0\nqueries_in_flight = {in_flight}\n",
        root.join("prompts").display().to_string(),
        dir.join("image_db").display().to_string(),
        dir.join("captions.json").display().to_string(),
        photos.display().to_string(),
        w.top_k,
        w.evaluator_turns,
    );
    std::fs::write(work.join("exp.toml"), exp).unwrap();
    Setup { work, sims }
}

/// Runs the binary; returns its wall time and its CPU seconds (user + system, read from /proc
/// until it exits).
fn run(bin: &Path, work: &Path, extra: &[&str]) -> (f64, f64) {
    let t = Instant::now();
    let mut args = vec!["run", "--config", "exp.toml", "--cache", "off", "--json"];
    args.extend_from_slice(extra);
    let out_path = work.join("run.out");
    let mut child = std::process::Command::new(bin)
        .args(&args)
        .current_dir(work)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    let mut ticks = 0.0f64;
    let status = loop {
        if let Some((_, rest)) = std::fs::read_to_string(&stat)
            .ok()
            .as_deref()
            .and_then(|s| s.rsplit_once(')'))
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 13 {
                let u: f64 = f[11].parse().unwrap_or(0.0);
                let k: f64 = f[12].parse().unwrap_or(0.0);
                ticks = ticks.max(u + k);
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = t.elapsed().as_secs_f64();
    assert!(status.success(), "the run failed");
    let report: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert!(
        report["failed"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
    (wall, ticks / 100.0)
}

/// Busy seconds and slots, by role or by step.
type Work = BTreeMap<&'static str, (f64, usize)>;

/// Per role: busy seconds over all its replicas and slots; per step: busy seconds.
fn work_of(sims: &[(&'static str, Arc<Sim>)]) -> (Work, Work) {
    let mut roles = Work::new();
    let mut steps = Work::new();
    for (role, sim) in sims {
        let log = sim.log.lock().unwrap();
        let slots = sim.model.max_num_seqs;
        let r = roles.entry(role).or_default();
        r.1 += slots;
        for (step, busy) in &log.busy {
            r.0 += busy;
            let e = steps.entry(step).or_default();
            e.0 += busy;
            // A step's slots are its role's, counted once per replica.
            e.1 += slots;
        }
    }
    (roles, steps)
}

fn reset(sims: &[(&'static str, Arc<Sim>)]) {
    for (_, sim) in sims {
        *sim.log.lock().unwrap() = Log::default();
    }
}

/// With `SHIPPED_TRACE` set: each role's share of its slots busy, per second of the run.
fn trace(sims: &[(&'static str, Arc<Sim>)], t0: Instant, wall: f64) {
    let seconds = wall.ceil() as usize;
    let mut rows: BTreeMap<&str, (Vec<f64>, usize)> = BTreeMap::new();
    for (role, sim) in sims {
        let log = sim.log.lock().unwrap();
        let row = rows
            .entry(role)
            .or_insert_with(|| (vec![0.0; seconds + 1], 0));
        row.1 += sim.model.max_num_seqs;
        for (a, b) in &log.spans {
            let (a, b) = ((*a - t0).as_secs_f64(), (*b - t0).as_secs_f64());
            let mut t = a;
            while t < b {
                let second = t.floor();
                let end = b.min(second + 1.0);
                if let Some(cell) = row.0.get_mut(second as usize) {
                    *cell += end - t;
                }
                t = end;
            }
        }
    }
    for (role, (busy, slots)) in rows {
        let cells: Vec<String> = busy
            .iter()
            .map(|b| format!("{:.0}", 100.0 * b / slots as f64))
            .collect();
        eprintln!("{role:>9} busy % per second: {}", cells.join(" "));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("IMAGESCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_imagescope")));
    let mut settings: Settings =
        toml::from_str(&std::fs::read_to_string(root.join("benches/schedule.toml")).unwrap())
            .unwrap();
    if let Some(n) = std::env::var("SHIPPED_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        settings.workload.queries = n;
    }
    if let Ok(list) = std::env::var("SHIPPED_IN_FLIGHT") {
        settings.workload.queries_in_flight = list
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
    }
    let w = settings.workload.clone();
    let dir = root.join("target/shipped-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let images = 200;
    let photos = data(&dir, images, w.queries);
    println!(
        "binary: {}\nworkload: {} queries; per query a reasoner call of >= {} tokens with {} descriptions back, {} text embeddings, a propositions call with {} questions, {}x{} verifier calls with an image, {} evaluator turns with a composite image\n",
        bin.display(),
        w.queries,
        w.reasoner_prompt_tokens,
        w.descriptions,
        w.descriptions,
        w.propositions,
        w.top_k,
        w.propositions,
        w.evaluator_turns
    );
    println!(
        "| verifier replicas | queries in flight | wall s | bound s (busiest) | fill + drain s | efficiency = (bound + fill + drain) / wall | bound / wall | stage-synchronous bound s | speed-up over it (at least) | client CPU s |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for replicas in [1, 2] {
        for &in_flight in &w.queries_in_flight {
            let s = setup(&settings, replicas, &dir, &photos, in_flight).await;
            // Index once per setup (the simulated embedder's work then is not the run's).
            let out = std::process::Command::new(&bin)
                .args(["index", "--config", "exp.toml", "--json"])
                .current_dir(&s.work)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // One query alone: fill and drain around the busiest server.
            reset(&s.sims);
            let t0 = Instant::now();
            let (solo_wall, _) = run(&bin, &s.work, &["--limit", "1", "--run-name", "solo"]);
            let (roles, _) = work_of(&s.sims);
            let busiest = roles
                .iter()
                .map(|(r, (busy, slots))| (*r, busy / *slots as f64))
                .fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a })
                .0;
            let edges = |f: fn(&Log) -> Option<Instant>| {
                s.sims
                    .iter()
                    .filter(|(r, _)| *r == busiest)
                    .filter_map(|(_, sim)| f(&sim.log.lock().unwrap()))
                    .collect::<Vec<_>>()
            };
            let first = edges(|l| l.first).into_iter().min().unwrap();
            let last = edges(|l| l.last).into_iter().max().unwrap();
            let fill_drain = (first - t0).as_secs_f64() + (solo_wall - (last - t0).as_secs_f64());
            // The whole workload.
            reset(&s.sims);
            let t_all = Instant::now();
            let (wall, cpu) = run(&bin, &s.work, &["--run-name", "all"]);
            let (roles, steps) = work_of(&s.sims);
            let (busiest, bound) = roles
                .iter()
                .map(|(r, (busy, slots))| (*r, busy / *slots as f64))
                .fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a });
            let sync: f64 = steps
                .values()
                .map(|(busy, slots)| busy / *slots as f64)
                .sum();
            if std::env::var_os("SHIPPED_TRACE").is_some() {
                trace(&s.sims, t_all, wall);
            }
            println!(
                "| {replicas} | {in_flight} | {wall:.2} | {bound:.2} ({busiest}) | {fill_drain:.2} | **{:.3}** | {:.3} | {sync:.2} | {:.2}x | {cpu:.1} |",
                (bound + fill_drain) / wall,
                bound / wall,
                sync / wall
            );
        }
    }
}
