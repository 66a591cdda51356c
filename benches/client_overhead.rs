//! Client-overhead benchmark (a program, not a test). How much CPU this tool's HTTP client
//! (`serving::RoleClient`: limits, retries, error classification, JSON) spends per request, next to
//! Python's official `openai` package sending the same requests, in the same run.
//!
//! ```bash
//! python3 -m venv .venv-bench && .venv-bench/bin/pip install -r benches/requirements.txt
//! cargo bench --bench client_overhead        # IMAGESCOPE_BENCH_REQUESTS=10000 by default; about 2 minutes
//! ```
//!
//! A zero-latency server (this same program started again with `IMAGESCOPE_BENCH_SERVER=1`, a
//! separate process, so its CPU is not counted) answers every request at once with a canned body:
//! a 1,500-character answer for text chat, "Yes." for chat with an image, 768 floats for
//! embeddings. Each client sends the same requests with the same concurrency (64): a ~6,000-character
//! prompt (about 1,500 tokens, a reasoner call), a 100 KB JPEG plus a question (a verifier call,
//! base64-encoded per request on both sides), and one text to embed. CPU seconds are the client
//! process's own (`/proc/self/stat` for Rust, `time.process_time()` for Python), counted from after
//! one warm-up request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::panic
)]

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use axum::body::Bytes;
use futures::StreamExt as _;
use imagescope::config::{Role, ServersConfig};
use imagescope::images::EncodedImage;
use imagescope::serving::{ChatRequest, EmbedInput, Message, Part, RoleClient, Speaker};
use serde_json::json;

const CONCURRENCY: usize = 64;
const PROMPT_CHARS: usize = 6_000;

fn canned(content: &str) -> Bytes {
    Bytes::from(
        json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 1500, "completion_tokens": 300, "total_tokens": 1800}
        })
        .to_string(),
    )
}

/// The zero-latency server: answers every request at once (after reading its body).
async fn serve() {
    let text = canned(&"The target image shows a dog running on a beach. ".repeat(30));
    let yes = canned("Yes.");
    let embedding: Vec<f32> = (0..768).map(|i| ((i % 17) as f32 - 8.0) / 100.0).collect();
    let embed = Bytes::from(
        json!({"object": "list", "model": "bench",
               "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
               "usage": {"prompt_tokens": 8, "total_tokens": 8}})
        .to_string(),
    );
    let reply = |b: Bytes| {
        move |_body: Bytes| {
            let b = b.clone();
            async move { ([("content-type", "application/json")], b) }
        }
    };
    let app = axum::Router::new()
        .route(
            "/text/v1/chat/completions",
            axum::routing::post(reply(text)),
        )
        .route(
            "/image/v1/chat/completions",
            axum::routing::post(reply(yes)),
        )
        .route("/v1/embeddings", axum::routing::post(reply(embed)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    axum::serve(listener, app).await.unwrap();
}

/// User + system CPU seconds of this process (all threads).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ, 100 on Linux (`getconf CLK_TCK`)
}

/// A JPEG of at least 100 KB (noise compresses badly, so a modest size suffices).
fn jpeg_100k() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(5);
    let mut side = 128;
    loop {
        let img = image::RgbImage::from_fn(side, side, |_, _| {
            image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        if out.get_ref().len() >= 100_000 {
            return out.into_inner();
        }
        side += 8;
    }
}

fn user(parts: Vec<Part>) -> ChatRequest {
    ChatRequest {
        messages: vec![Message {
            speaker: Speaker::User,
            parts,
        }],
        temperature: Some(0.0),
        max_tokens: Some(512),
        ..Default::default()
    }
}

async fn rust_side(client: &RoleClient, workload: &str, n: usize, image: &EncodedImage) -> usize {
    let prompt = "word ".repeat(PROMPT_CHARS / 5);
    let one = |i: i64| {
        let prompt = &prompt;
        async move {
            match workload {
                "chat-text" => client
                    .chat(&user(vec![Part::Text(format!("{i} {prompt}"))]))
                    .await
                    .map(drop),
                "chat-image" => client
                    .chat(&user(vec![
                        Part::Image(image.clone()),
                        Part::Text(format!("Is there a dog? {i}")),
                    ]))
                    .await
                    .map(drop),
                _ => client
                    .embed(&[EmbedInput::Text(format!("a photo of a dog on a beach {i}"))])
                    .await
                    .map(drop),
            }
        }
    };
    one(-1).await.unwrap();
    futures::stream::iter(0..n as i64)
        .map(one)
        .buffer_unordered(CONCURRENCY)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await
}

fn python() -> PathBuf {
    std::env::var_os("IMAGESCOPE_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-bench/bin/python");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        })
}

/// (wall s, cpu s) of the Python client, or its error output.
fn python_side(base: &str, workload: &str, n: usize, image: &Path) -> Result<(f64, f64), String> {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/client_overhead.py"))
        .args(["--base-url", base, "--workload", workload])
        .args(["--requests", &n.to_string()])
        .args(["--concurrency", &CONCURRENCY.to_string()])
        .args(["--prompt-chars", &PROMPT_CHARS.to_string()])
        .arg("--image")
        .arg(image)
        .output()
        .map_err(|e| format!("cannot start {}: {e}", python().display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("python printed no JSON: {e}"))?;
    Ok((v["wall_s"].as_f64().unwrap(), v["cpu_s"].as_f64().unwrap()))
}

fn main() {
    if std::env::var_os("IMAGESCOPE_BENCH_SERVER").is_some() {
        tokio::runtime::Runtime::new().unwrap().block_on(serve());
        return;
    }
    let n: usize = std::env::var("IMAGESCOPE_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let mut server = Command::new(std::env::current_exe().unwrap())
        .env("IMAGESCOPE_BENCH_SERVER", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port = port.trim().to_string();
    let bases = [
        ("chat-text", format!("http://127.0.0.1:{port}/text/v1")),
        ("chat-image", format!("http://127.0.0.1:{port}/image/v1")),
        ("embeddings", format!("http://127.0.0.1:{port}/v1")),
    ];

    let dir = tempfile::tempdir().unwrap();
    let jpeg = jpeg_100k();
    let image_path = dir.path().join("image.jpg");
    std::fs::write(&image_path, &jpeg).unwrap();
    let image = EncodedImage::from_bytes(jpeg.clone(), "benchmark image").unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "{n} requests per workload, {CONCURRENCY} at a time, zero-latency local server; image {} KB; python: {}\n",
        jpeg.len() / 1000,
        python().display()
    );
    println!(
        "| workload | Rust req/s | Python req/s | Rust CPU s / 1,000 req | Python CPU s / 1,000 req | Python CPU ÷ Rust CPU |\n|---|---|---|---|---|---|"
    );
    for (workload, base) in &bases {
        let (role, shape) = match *workload {
            "embeddings" => (Role::Embedder, "embed_shape = \"openai-input\"\n"),
            _ => (Role::Reasoner, ""),
        };
        let text = format!(
            "[roles.{}]\nendpoints = [{base:?}]\nmodel = \"bench\"\napi = \"openai\"\nmax_in_flight = {CONCURRENCY}\ntimeout_secs = 600\n{shape}",
            role.as_str()
        );
        let cfg = ServersConfig::parse(&text, Path::new("bench.toml")).unwrap();
        let client = RoleClient::new(role, &cfg.roles[&role], Path::new("bench.toml")).unwrap();
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let failed = rt.block_on(rust_side(&client, workload, n, &image));
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        assert_eq!(failed, 0, "{failed} Rust requests failed");
        let (py_rps, py_cpu, ratio) = match python_side(base, workload, n, &image_path) {
            Ok((pw, pc)) => (
                format!("{:.0}", n as f64 / pw),
                format!("{:.2}", 1000.0 * pc / n as f64),
                format!("{:.1}×", pc / cpu),
            ),
            Err(e) => {
                eprintln!("python side of {workload} failed:\n{e}");
                ("n/a".into(), "n/a".into(), "n/a".into())
            }
        };
        println!(
            "| {workload} | {:.0} | {py_rps} | {:.2} | {py_cpu} | {ratio} |",
            n as f64 / wall,
            1000.0 * cpu / n as f64
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
