//! Tests against a REAL infinity-emb 0.0.78 server on CPU, as `launch/infinity-cpu/` starts it (the
//! GPU recipe `launch/infinity/embedder.sh` over the vLLM CPU stack's tiny CLIP folder) and
//! `configs/servers/vllm-cpu-infinity.toml` names it. Ignored by default; CI installs and starts it
//! beside the vLLM CPU stack and runs them:
//!
//! ```bash
//! launch/vllm-cpu/setup.sh && launch/infinity-cpu/setup.sh
//! launch/vllm-cpu/up.sh && launch/infinity-cpu/up.sh
//! cargo test --test infinity_live -- --ignored --test-threads 1
//! ```
//!
//! What they prove: imagescope speaks infinity's real protocol (`input` + `modality`, `data:` images,
//! at most 32 images a request, its error bodies and its queue-full 429) and that infinity and vLLM's
//! pooling runner embed one checkpoint alike. What they cannot prove: embedding quality: the CLIP is
//! random-weight, so recall is not checked. The overload test starts (and stops) a second infinity
//! on port 8007 with a one-item queue.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod support;

use std::path::{Path, PathBuf};

use imagescope::config::{Role, RoleServer, ServersConfig};
use imagescope::images::EncodedImage;
use imagescope::roles::embedder;
use imagescope::serving::models::IdentityError;
use imagescope::serving::{Clients, EmbedInput, ErrorKind, HttpClass, RoleClient};
use serde_json::Value;
use support::proxy;

const NEEDS: &str =
    "needs infinity on 127.0.0.1:8006 (launch/infinity-cpu/setup.sh && launch/infinity-cpu/up.sh)";
const CONFIG: &str = "configs/servers/vllm-cpu-infinity.toml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn infinity() -> RoleServer {
    let cfg = ServersConfig::load(&root().join(CONFIG)).unwrap();
    cfg.roles[&Role::Embedder].clone()
}

fn client_for(server: &RoleServer) -> RoleClient {
    RoleClient::new(Role::Embedder, server, Path::new(CONFIG)).unwrap()
}

fn photos() -> Vec<(String, EncodedImage)> {
    let dir = root().join("data/demo/photos");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run launch/demo/collect.sh", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        29,
        "the demo photos: run launch/demo/collect.sh"
    );
    names
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, EncodedImage::from_file(&p).unwrap())
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

async fn imagescope(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
        .current_dir(root())
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The servers file with only its embedder table (the doctor then checks infinity alone).
fn embedder_only(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join(CONFIG)).unwrap();
    let table = &text[text.find("[roles.embedder]").unwrap()..];
    let path = dir.join("servers.toml");
    std::fs::write(&path, table).unwrap();
    path
}

#[tokio::test]
#[ignore = "needs infinity: launch/infinity-cpu/up.sh"]
async fn infinity_doctor_is_healthy_with_an_image_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let servers = embedder_only(dir.path());
    let servers = servers.to_str().unwrap();
    let (ok, table, err) = imagescope(&["doctor", "--config", servers]).await;
    assert!(ok, "{NEEDS}\n{table}\n{err}");
    assert!(table.contains("dim 64 (text+image)"), "{table}");
    assert!(table.contains("all 1 endpoint(s) healthy"), "{table}");
    let (ok, json, _) = imagescope(&["doctor", "--config", servers, "--json"]).await;
    assert!(ok);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert!(v.to_string().contains("embedder"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs infinity (launch/infinity-cpu/up.sh) and vLLM's reasoner (launch/vllm-cpu/up.sh reasoner)"]
async fn infinity_indexes_the_demo_photos_and_a_run_retrieves_with_its_text_vectors() {
    let dir = tempfile::tempdir().unwrap();
    // The embedder behind a recording proxy: every image and text vector must come from infinity.
    let real = infinity().endpoints[0].clone();
    let (through, seen) = proxy::start_at_root(real.clone()).await;
    let servers = std::fs::read_to_string(root().join(CONFIG))
        .unwrap()
        .replace(&format!("\"{real}\""), &format!("\"{through}\""));
    std::fs::write(dir.path().join("servers.toml"), servers).unwrap();
    let config = support::demo_experiment(
        dir.path(),
        &dir.path().join("servers.toml"),
        &format!("captions = {:?}", root().join("launch/demo/captions.json")),
        "",
    );
    let config = config.to_str().unwrap();
    photos();

    let (ok, out, err) = imagescope(&["index", "--config", config, "--json"]).await;
    assert!(ok, "{NEEDS}\n{out}\n{err}");
    let index: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(index["done"], 29, "{index}");
    assert!(index["failures"].as_array().unwrap().is_empty(), "{index}");
    let indexed = seen.lock().unwrap().requests;
    // One request per photo for its image and one for its caption.
    assert_eq!(seen.lock().unwrap().with_image, 29, "image requests");
    assert_eq!(indexed, 58, "image + caption requests");

    let (ok, out, err) = imagescope(&[
        "run", "--config", config, "--json", "--cache", "off", "--stages", "s1",
    ])
    .await;
    assert!(ok, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["queries"], 13, "{report}");
    assert!(
        report["failed"].as_array().unwrap().is_empty(),
        "no query failed: {report}"
    );
    assert!(report["metrics"]["s1"]["R@1"].is_number(), "{report}");
    let s = &report["roles"]["embedder"];
    assert!(s["successes"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    let seen = seen.lock().unwrap();
    assert!(
        seen.requests > indexed,
        "the run's text vectors came from infinity"
    );
    assert_eq!(seen.statuses.get(&200), Some(&seen.requests), "{seen:?}");
}

#[tokio::test]
#[ignore = "needs infinity (launch/infinity-cpu/up.sh) and vLLM's embedder (launch/vllm-cpu/up.sh embedder)"]
async fn infinity_and_vllm_embed_the_same_checkpoint_alike() {
    let inf = client_for(&infinity());
    let vllm_cfg = ServersConfig::load(&root().join("configs/servers/vllm-cpu.toml")).unwrap();
    let vllm = RoleClient::new(
        Role::Embedder,
        &vllm_cfg.roles[&Role::Embedder],
        Path::new("configs/servers/vllm-cpu.toml"),
    )
    .unwrap();
    let texts = [
        "a dog",
        "a red bus parked beside two people at night",
        "the same shirt but with long sleeves and darker",
        "Ünïcode and punctuation: yes, no; maybe?",
    ];
    let inputs: Vec<EmbedInput> = texts
        .iter()
        .map(|t| EmbedInput::Text(t.to_string()))
        .collect();
    let a = inf
        .embed(&inputs)
        .await
        .unwrap_or_else(|e| panic!("{NEEDS}: {e}"))
        .value;
    let mut worst = 1.0f32;
    for (i, t) in texts.iter().enumerate() {
        let b = vllm.embed(&inputs[i..=i]).await.unwrap().value;
        let c = cosine(&a[i], &b[0]);
        println!("text {t:?}: cosine infinity/vLLM {c:.5}");
        worst = worst.min(c);
    }
    assert!(worst >= 0.99, "text vectors differ: worst cosine {worst}");
    // Past CLIP's 77 tokens both cut to its window (vLLM because the client asks it to truncate).
    let long = "a brown dog with a red collar sits on a wooden bench beside a tall window, \
                while two children in yellow raincoats walk past a parked blue bicycle; behind them \
                a bakery sign reads fresh bread daily and an old man feeds pigeons near the fountain \
                under grey clouds that promise more rain before the evening market opens";
    let x = inf
        .embed(&[EmbedInput::Text(long.into())])
        .await
        .unwrap()
        .value;
    let y = vllm
        .embed(&[EmbedInput::Text(long.into())])
        .await
        .unwrap()
        .value;
    let c = cosine(&x[0], &y[0]);
    println!("text over 77 tokens: cosine infinity/vLLM {c:.5}");
    assert!(c >= 0.99, "a text past the window: cosine {c}");
    // Images: both servers resize, crop and normalise with the folder's CLIPImageProcessor
    // (transformers 4.47 in infinity, 5.19 in vLLM), so the vectors should agree as closely.
    let mut cosines = Vec::new();
    for (name, img) in photos().into_iter().take(8) {
        let x = inf
            .embed(&[embedder::image(img.clone())])
            .await
            .unwrap()
            .value;
        let y = vllm.embed(&[embedder::image(img)]).await.unwrap().value;
        let c = cosine(&x[0], &y[0]);
        println!("image {name}: cosine infinity/vLLM {c:.5}");
        cosines.push(c);
    }
    let min = cosines.iter().copied().fold(f32::INFINITY, f32::min);
    let mean = cosines.iter().sum::<f32>() / cosines.len() as f32;
    println!("image vectors infinity/vLLM: mean cosine {mean:.5}, min {min:.5} over 8 photos");
    assert!(min >= 0.99, "image vectors differ: min cosine {min}");
}

#[tokio::test]
#[ignore = "needs infinity: launch/infinity-cpu/up.sh"]
async fn infinity_wrong_model_is_refused_before_any_vector() {
    let dir = tempfile::tempdir().unwrap();
    let path = embedder_only(dir.path());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("model = \"embedder\"", "model = \"laion/CLIP-ViT-L-14\"");
    std::fs::write(&path, &text).unwrap();
    let cfg = ServersConfig::load(&path).unwrap();
    // The real server answers the wrong name with its one model...
    let answered = client_for(&cfg.roles[&Role::Embedder])
        .embed(&[EmbedInput::Text("a".into())])
        .await;
    assert!(answered.is_ok(), "{NEEDS}: {answered:?}");
    // ...so the client refuses the name at start-up (every run and index asks this first).
    match Clients::new(&cfg, &path).unwrap().identify().await {
        Err(e @ IdentityError::NotServed { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("it lists embedder"), "{msg}");
            assert!(msg.contains("--served-model-name"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let (ok, out, err) = imagescope(&["doctor", "--config", path.to_str().unwrap()]).await;
    assert!(!ok, "{out}");
    assert!(
        format!("{out}{err}").contains("is not served"),
        "{out}\n{err}"
    );
}

#[tokio::test]
#[ignore = "needs infinity: launch/infinity-cpu/up.sh"]
async fn infinity_undecodable_image_is_a_bad_request_and_not_retried() {
    let (through, seen) = proxy::start_at_root(infinity().endpoints[0].clone()).await;
    let mut server = infinity();
    server.endpoints = vec![through];
    let client = client_for(&server);
    // A PNG signature, then nothing a decoder can read.
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[7u8; 200]);
    let img = EncodedImage::from_bytes(bytes, "test").unwrap();
    let e = client.embed(&[embedder::image(img)]).await.unwrap_err();
    match &e.kind {
        ErrorKind::Http {
            status,
            class,
            message,
            ..
        } => {
            assert_eq!((*status, *class), (400, HttpClass::BadRequest), "{message}");
            assert!(message.contains("ImageCorruption"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.lock().unwrap().requests, 1, "not retried");
}

#[tokio::test]
#[ignore = "needs infinity: launch/infinity-cpu/up.sh"]
async fn infinity_forty_images_in_one_call_go_as_two_requests_and_come_back_in_order() {
    let (through, seen) = proxy::start_at_root(infinity().endpoints[0].clone()).await;
    let mut server = infinity();
    server.endpoints = vec![through];
    let client = client_for(&server);
    let photos = photos();
    let forty: Vec<EmbedInput> = (0..40)
        .map(|i| embedder::image(photos[i % photos.len()].1.clone()))
        .collect();
    let together = client
        .embed(&forty)
        .await
        .unwrap_or_else(|e| panic!("{NEEDS}: {e}"))
        .value;
    assert_eq!(together.len(), 40);
    assert_eq!(seen.lock().unwrap().requests, 2, "32 + 8");
    for (i, v) in together.iter().enumerate().step_by(7) {
        let alone = client.embed(&forty[i..=i]).await.unwrap().value;
        let c = cosine(v, &alone[0]);
        assert!(
            c > 0.9999,
            "image {i}: batched and alone differ (cosine {c})"
        );
    }
}

/// Stops the second infinity when the test ends, passed or not.
struct Stop;
impl Drop for Stop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(root().join("launch/down.sh"))
            .arg("infinity-embedder-8007")
            .status();
    }
}

/// Starts a second infinity on port 8007 with these extra variables; stopped when dropped.
fn second_server(env: &[(&str, &str)]) -> Stop {
    // One left by an interrupted run would have other settings.
    drop(Stop);
    let up = std::process::Command::new(root().join("launch/infinity-cpu/up.sh"))
        .env("IMAGESCOPE_INFINITY_PORT", "8007")
        .envs(env.iter().copied())
        .status()
        .unwrap();
    let stop = Stop;
    assert!(up.success(), "{NEEDS}");
    stop
}

#[tokio::test]
#[ignore = "needs the infinity CPU install (launch/infinity-cpu/setup.sh); starts a second server on 8007"]
async fn infinity_over_a_config_without_max_length_cuts_text_and_the_doctor_says_so() {
    // The adapted folder without the one line launch/infinity-cpu/adapt_model.py adds: what a
    // hub CLIP's config looks like to infinity.
    let dir = tempfile::tempdir().unwrap();
    let home = std::env::var_os("IMAGESCOPE_INFINITY_CPU_HOME")
        .map_or_else(|| root().join(".infinity-cpu"), PathBuf::from);
    let src = home.join("models/embedder");
    let model = dir.path().join("embedder");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(&src).unwrap_or_else(|e| panic!("{NEEDS}: {e}")) {
        let p = entry.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("max_length");
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let _stop = second_server(&[("IMAGESCOPE_INFINITY_CPU_MODEL", model.to_str().unwrap())]);

    let servers = embedder_only(dir.path());
    let text = std::fs::read_to_string(&servers)
        .unwrap()
        .replace("127.0.0.1:8006", "127.0.0.1:8007");
    std::fs::write(&servers, text).unwrap();
    let (ok, out, err) = imagescope(&["doctor", "--config", servers.to_str().unwrap()]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("cuts text short"), "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the infinity CPU install (launch/infinity-cpu/setup.sh); starts a second server on 8007"]
async fn infinity_queue_full_429_is_retried_until_every_batch_is_answered() {
    let _stop = second_server(&[("INFINITY_QUEUE_SIZE", "1")]);
    let (through, seen) = proxy::start_at_root("http://127.0.0.1:8007".into()).await;
    let mut server = infinity();
    server.endpoints = vec![through];
    server.max_in_flight = 8;
    server.retry.max_retries = 30;
    let client = client_for(&server);
    let photos = photos();
    let batch: Vec<EmbedInput> = (0..32)
        .map(|i| embedder::image(photos[i % photos.len()].1.clone()))
        .collect();
    let calls = (0..8).map(|_| client.embed(&batch));
    let answers = futures::future::join_all(calls).await;
    for a in &answers {
        assert_eq!(a.as_ref().unwrap().value.len(), 32);
    }
    let seen = seen.lock().unwrap();
    println!(
        "overload: {:?} answers over {} requests",
        seen.statuses, seen.requests
    );
    assert!(
        seen.statuses.get(&429).copied().unwrap_or(0) > 0,
        "a one-item queue took 8 × 32 images without a 429: {seen:?}"
    );
    assert_eq!(seen.statuses.get(&200), Some(&8), "{seen:?}");
}
