//! Scale benchmark (a program, not a test): peak memory and CPU per query of the real
//! `imagescope run` as the number of queries grows, with real-size images in the requests.
//!
//! ```bash
//! cargo bench --bench scale                                  # 1,000, 10,000 and 25,000 queries
//! SCALE_QUERIES=1000,5000 cargo bench --bench scale          # other sizes
//! IMAGESCOPE_BIN=/path/to/imagescope cargo bench --bench scale   # measure another build
//! SCALE_STAGES=s1 SCALE_QUERIES=1000 cargo bench --bench scale  # no image requests: the base
//! SCALE_IN_FLIGHT=512 SCALE_QUERIES=1000 cargo bench --bench scale  # a longer queue
//! SCALE_JOURNAL_DELAY_MS=20 SCALE_QUERIES=10000 cargo bench --bench scale  # a slow disk
//! SCALE_SHAPE=dialogue SCALE_QUERIES=2000 cargo bench --bench scale  # VisDial-shaped
//! ```
//!
//! `SCALE_JOURNAL_DELAY_MS=N` sets `IMAGESCOPE_FAULT_JOURNAL_DELAY_MS=N` for the binary: every
//! journal write waits N ms first, as on a slow disk. `SCALE_SHAPE=dialogue` turns the N queries
//! into N VisDial dialogues (the `visdial` loader's own files: a search space of the gallery and
//! dialogues of a caption and 9 turns, so 10 rounds each, every round through stages 1 and 2).
//!
//! A folder gallery of `SCALE_IMAGES` (default 2,000) distinct noise JPEGs of 1024×1024 pixels,
//! each over 1 MB, is written once under `target/scale-bench/` with a captions file, and indexed
//! by the binary against a SIMULATOR standing in for the model servers: one in-process HTTP server
//! per role that answers at once (the reasoner a fixed stage-1 JSON and one proposition, the
//! verifier "Yes", the embedder a 64-dimensional vector hashed from the request). Then for each size
//! N the binary runs N text queries through stages 1 and 2 (`top_k = 2`: two verifier requests per
//! query, each carrying a whole >1 MB image) with the default 128 queries in flight and the request
//! cache off, as a child process whose peak resident memory (`VmHWM`) and CPU time (`utime` +
//! `stime`) are read from `/proc` until it exits. Stage 3 is left out: its composite images are
//! CPU work per query that would make the 25,000-query run take an hour here without changing
//! what grows with N.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};

const DIM: usize = 64;
const SIDE: u32 = 1024;

struct Role {
    name: &'static str,
    model: String,
}

fn vector(bytes: &[u8]) -> Vec<f32> {
    let h = blake3::hash(bytes);
    let mut v: Vec<f32> = h
        .as_bytes()
        .iter()
        .cycle()
        .take(DIM)
        .enumerate()
        .map(|(i, b)| f32::from(*b) - 127.5 + i as f32 * 0.01)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

async fn chat(State(role): State<Arc<Role>>, body: Bytes) -> axum::Json<Value> {
    let propositions = memchr::memmem::find(&body, b"yes/no questions").is_some();
    let content = match role.name {
        "reasoner" if propositions => {
            "```json\n{\"statements\": [], \"questions\": [[\"Is it the wanted photo?\", \"True\"]]}\n```".to_string()
        }
        "reasoner" => {
            let tag = blake3::hash(&body).to_hex()[..6].to_string();
            format!(
                "```json\n{{\"edits\": [[\"Addition\", \"thing {tag}\"]], \"descriptions\": [\"a photo of thing {tag}\"]}}\n```"
            )
        }
        "verifier" => "Yes".into(),
        _ => "ANSWER: No\nNot it.".into(),
    };
    axum::Json(json!({
        "model": role.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    }))
}

async fn embeddings(State(role): State<Arc<Role>>, body: Bytes) -> axum::Json<Value> {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let inputs: Vec<Value> = match req.get("input") {
        Some(Value::Array(a)) => a.clone(),
        Some(v) => vec![v.clone()],
        None => vec![req["messages"][0]["content"][0].clone()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| json!({"object": "embedding", "index": i, "embedding": vector(x.to_string().as_bytes())}))
        .collect();
    axum::Json(json!({"object": "list", "model": role.model, "data": data}))
}

async fn models(State(role): State<Arc<Role>>) -> axum::Json<Value> {
    axum::Json(json!({"object": "list", "data": [{"id": role.model, "object": "model"}]}))
}

async fn start(name: &'static str) -> String {
    let role = Arc::new(Role {
        name,
        model: format!("sim-{name}"),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/v1/embeddings", axum::routing::post(embeddings))
        .route("/v1/models", axum::routing::get(models))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(role);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/v1")
}

/// Writes `n` distinct noise JPEGs (each over 1 MB) and their captions, once.
fn gallery(dir: &Path, n: usize) -> PathBuf {
    let photos = dir.join("gallery");
    let done = photos.join(".complete");
    if std::fs::read_to_string(&done).ok().as_deref() == Some(&n.to_string()) {
        return photos;
    }
    let _ = std::fs::remove_dir_all(&photos);
    std::fs::create_dir_all(&photos).unwrap();
    let t = Instant::now();
    let mut captions = serde_json::Map::new();
    let mut smallest = usize::MAX;
    for i in 0..n {
        let mut rng = fastrand::Rng::with_seed(i as u64);
        let img = image::RgbImage::from_fn(SIDE, SIDE, |_, _| {
            image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
        });
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
            .encode_image(&img)
            .unwrap();
        smallest = smallest.min(bytes.len());
        let name = format!("img{i:05}.jpg");
        std::fs::write(photos.join(&name), &bytes).unwrap();
        captions.insert(name, json!(format!("a photo of thing {i}")));
    }
    assert!(
        smallest > 1 << 20,
        "every image over 1 MB (smallest {smallest} bytes)"
    );
    std::fs::write(
        dir.join("captions.json"),
        Value::Object(captions).to_string(),
    )
    .unwrap();
    std::fs::write(&done, n.to_string()).unwrap();
    println!(
        "gallery: {n} JPEGs of {SIDE}×{SIDE}, smallest {:.2} MB, written in {:.0} s",
        smallest as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    photos
}

/// `n` VisDial-shaped dialogues over the gallery, in the `visdial` loader's files under `dir`.
fn dialogues(dir: &Path, n: usize, images: usize) {
    let space: Vec<String> = (0..images)
        .map(|i| format!("gallery/img{i:05}.jpg"))
        .collect();
    std::fs::write(
        dir.join("Search_Space_val_50k.json"),
        serde_json::to_string(&space).unwrap(),
    )
    .unwrap();
    let list: Vec<Value> = (0..n)
        .map(|i| {
            let mut dialog = vec![format!("a photo of thing number {i}")];
            dialog.extend((0..9).map(|t| format!("is there a detail {t}? yes, detail {t} of {i}")));
            json!({"img": space[(i * 7) % images], "dialog": dialog})
        })
        .collect();
    std::fs::write(
        dir.join("VisDial_v1.0_queries_val.json"),
        Value::Array(list).to_string(),
    )
    .unwrap();
}

fn queries(photos: &Path, n: usize, images: usize) {
    let list: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("q{i}"), "instruction": format!("thing number {i} in a photo"), "targets": [format!("img{:05}.jpg", (i * 7) % images)]}))
        .collect();
    std::fs::write(photos.join("queries.json"), Value::Array(list).to_string()).unwrap();
}

struct Measured {
    peak_rss_mib: f64,
    cpu_s: f64,
    wall_s: f64,
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs the binary, reading its peak RSS and CPU time from /proc until it exits.
fn measure(bin: &Path, args: &[&str], cwd: &Path, log: &Path, env: &[(&str, &str)]) -> Measured {
    let t = Instant::now();
    let out = std::fs::File::create(log).unwrap();
    let mut child = std::process::Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let stat_file = format!("/proc/{}/stat", child.id());
    let ticks = clock_ticks();
    let (mut peak_kib, mut cpu_ticks) = (0.0f64, 0.0f64);
    // SCALE_TRACE=FILE: resident memory over time, one "seconds KiB" line per poll.
    let mut trace = std::env::var_os("SCALE_TRACE").map(|f| std::fs::File::create(f).unwrap());
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            for line in s.lines() {
                if let (Some(v), Some(f)) = (line.strip_prefix("VmRSS:"), trace.as_mut()) {
                    let _ = writeln!(f, "{:.2} {}", t.elapsed().as_secs_f64(), v.trim());
                }
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kib: f64 = v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .unwrap_or(0.0);
                    peak_kib = peak_kib.max(kib);
                }
            }
        }
        if let Ok(s) = std::fs::read_to_string(&stat_file) {
            // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
            if let Some((_, rest)) = s.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.len() > 13 {
                    let u: f64 = f[11].parse().unwrap_or(0.0);
                    let k: f64 = f[12].parse().unwrap_or(0.0);
                    cpu_ticks = cpu_ticks.max(u + k);
                }
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{} failed; see {}",
                bin.display(),
                log.display()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Measured {
        peak_rss_mib: peak_kib / 1024.0,
        cpu_s: cpu_ticks / ticks,
        wall_s: t.elapsed().as_secs_f64(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("IMAGESCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_imagescope")));
    let images: usize = std::env::var("SCALE_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let sizes: Vec<usize> = std::env::var("SCALE_QUERIES")
        .unwrap_or_else(|_| "1000,10000,25000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // SCALE_STAGES=s1: the same runs without stage 2, i.e. without a single image request, to
    // measure what the binary holds besides the images in flight.
    let stages = std::env::var("SCALE_STAGES").unwrap_or_else(|_| "s1,s2".into());
    // SCALE_IN_FLIGHT=N: queries in flight (the queue the driving loop keeps), default 128.
    let in_flight: usize = std::env::var("SCALE_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    // SCALE_SHAPE=dialogue: VisDial dialogues of 10 rounds instead of text queries.
    let dialogue = std::env::var("SCALE_SHAPE").is_ok_and(|v| v == "dialogue");
    // SCALE_JOURNAL_DELAY_MS=N: every journal write of the binary waits N ms (a slow disk).
    let journal_delay = std::env::var("SCALE_JOURNAL_DELAY_MS").unwrap_or_else(|_| "0".into());
    let dir = root.join("target/scale-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let photos = gallery(&dir, images);
    let work = dir.join(format!(
        "work-{}",
        &blake3::hash(bin.to_string_lossy().as_bytes()).to_hex()[..8]
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    let mut servers = String::new();
    for role in ["captioner", "reasoner", "verifier", "evaluator", "embedder"] {
        let url = start(role).await;
        let extra = if role == "embedder" {
            format!("embed_shape = \"vllm-messages\"\ndimension = {DIM}\n")
        } else {
            String::new()
        };
        servers.push_str(&format!(
            "[roles.{role}]\nendpoints = [\"{url}\"]\nmodel = \"sim-{role}\"\napi = \"vllm\"\nmax_in_flight = 16\ntimeout_secs = 600\n{extra}\n"
        ));
    }
    std::fs::write(work.join("servers.toml"), servers).unwrap();
    let (name, data_root, split) = if dialogue {
        ("visdial", &dir, "val")
    } else {
        ("folder", &photos, "all")
    };
    let exp = format!(
        "servers = \"servers.toml\"\nprompts = {:?}\nruns = \"runs\"\nimage_db = \"image_db\"\ncaptions = {:?}\n\n[dataset]\nname = \"{name}\"\nroot = {:?}\nsplit = \"{split}\"\n\n[pipeline]\ntop_k = 2\nalpha = 1\nreask = 0\nqueries_in_flight = {in_flight}\n",
        root.join("prompts").display().to_string(),
        dir.join("captions.json").display().to_string(),
        data_root.display().to_string()
    );
    std::fs::write(work.join("exp.toml"), exp).unwrap();

    // Index once (the embedder sees every image); the runs below only search it.
    if dialogue {
        dialogues(&dir, 1, images);
    } else {
        queries(&photos, 1, images);
    }
    let bin_for = bin.clone();
    let work_for = work.clone();
    let index = tokio::task::spawn_blocking(move || {
        measure(
            &bin_for,
            &["index", "--config", "exp.toml"],
            &work_for,
            &work_for.join("index.log"),
            &[],
        )
    })
    .await
    .unwrap();
    println!(
        "binary: {}\nstages: {stages}, {in_flight} queries in flight, {}, journal writes delayed {journal_delay} ms\nindex of {images} images: {:.0} s wall, {:.0} MiB peak RSS\n",
        bin.display(),
        if dialogue {
            "VisDial-shaped dialogues of 10 rounds"
        } else {
            "text queries"
        },
        index.wall_s,
        index.peak_rss_mib
    );
    println!(
        "| queries | peak RSS MiB | CPU s | CPU ms per query | wall s |\n|---|---|---|---|---|"
    );
    for n in sizes {
        if dialogue {
            dialogues(&dir, n, images);
        } else {
            queries(&photos, n, images);
        }
        let (bin, work, stages) = (bin.clone(), work.clone(), stages.clone());
        let journal_delay = journal_delay.clone();
        let m = tokio::task::spawn_blocking(move || {
            let name = format!("scale-{n}");
            measure(
                &bin,
                &[
                    "run",
                    "--config",
                    "exp.toml",
                    "--run-name",
                    &name,
                    "--stages",
                    &stages,
                    "--cache",
                    "off",
                    "--json",
                ],
                &work,
                &work.join(format!("run-{n}.log")),
                &[("IMAGESCOPE_FAULT_JOURNAL_DELAY_MS", journal_delay.as_str())],
            )
        })
        .await
        .unwrap();
        println!(
            "| {n} | {:.0} | {:.1} | {:.2} | {:.0} |",
            m.peak_rss_mib,
            m.cpu_s,
            1000.0 * m.cpu_s / n as f64,
            m.wall_s
        );
        std::io::stdout().flush().unwrap();
    }
}
