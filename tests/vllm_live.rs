//! Tests against REAL vLLM 0.32 servers on CPU, one per role, as `launch/vllm-cpu/` starts them
//! (the GPU recipes of `launch/vllm/` with small offline models) and `configs/servers/vllm-cpu.toml`
//! names them. Ignored by default; CI installs and starts the stack and runs them:
//!
//! ```bash
//! launch/vllm-cpu/setup.sh && launch/vllm-cpu/up.sh
//! cargo test --test vllm_live -- --ignored --test-threads 1 --skip dead_engine
//! cargo test --test vllm_live dead_engine -- --ignored     # last: it kills the embedder's engine
//! ```
//!
//! What they prove: imagescope speaks vLLM's real protocol for every role: chat templates (raw
//! LLaVA, PaliGemma's template file), image parts as `data:` URLs, placeholder expansion,
//! per-prompt image limits, logprobs, structured output, CLIP through the pooling runner, and the
//! real error bodies, each read as the right typed error and retry decision. What they cannot
//! prove: answer quality. Only the reasoner (SmolLM2-135M) has real weights; the four vision models
//! are random, so their answers are noise and recall is not checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imagescope::config::{ImageTransport, Role, RoleServer, ServersConfig};
use imagescope::prompts::{Family, PromptSet};
use imagescope::roles::{reasoner, verifier};
use imagescope::serving::{
    ChatRequest, EmbedInput, ErrorKind, HttpClass, Message, Part, RoleClient, ServingError,
    Speaker, wire,
};
use serde_json::Value;
use support::proxy;

const NEEDS: &str = "needs the vLLM CPU stack: launch/vllm-cpu/setup.sh && launch/vllm-cpu/up.sh";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn servers() -> ServersConfig {
    ServersConfig::load(&root().join("configs/servers/vllm-cpu.toml")).unwrap()
}

fn server(role: Role) -> RoleServer {
    servers().roles[&role].clone()
}

fn client_for(role: Role, server: &RoleServer) -> RoleClient {
    RoleClient::new(role, server, Path::new("configs/servers/vllm-cpu.toml")).unwrap()
}

fn client(role: Role) -> RoleClient {
    client_for(role, &server(role))
}

fn user(parts: Vec<Part>) -> ChatRequest {
    ChatRequest {
        messages: vec![Message {
            speaker: Speaker::User,
            parts,
        }],
        max_tokens: Some(4),
        ..Default::default()
    }
}

fn http_class(e: &ServingError) -> HttpClass {
    match &e.kind {
        ErrorKind::Http { class, .. } => *class,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
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

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_doctor_passes_for_all_five_roles_with_image_round_trips() {
    let (ok, out, err) = imagescope(&[
        "doctor",
        "--config",
        "configs/servers/vllm-cpu.toml",
        "--json",
    ])
    .await;
    assert!(ok, "{NEEDS}\n{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let text = v.to_string();
    for role in ["captioner", "reasoner", "verifier", "evaluator", "embedder"] {
        assert!(text.contains(role), "{role} missing: {text}");
    }
    let (ok, table, _) = imagescope(&["doctor", "--config", "configs/servers/vllm-cpu.toml"]).await;
    assert!(ok);
    assert!(table.contains("dim 64 (text+image)"), "{table}");
    assert!(table.contains("all 5 endpoint(s) healthy"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_index_then_run_all_stages_with_every_role_on_vllm() {
    let dir = tempfile::tempdir().unwrap();
    // Every role behind a recording proxy, so the test sees what reached each server.
    let mut text = std::fs::read_to_string(root().join("configs/servers/vllm-cpu.toml")).unwrap();
    let mut seen: BTreeMap<&str, Arc<Mutex<proxy::Seen>>> = BTreeMap::new();
    for (role, port) in [
        ("captioner", 8001),
        ("reasoner", 8002),
        ("verifier", 8003),
        ("evaluator", 8004),
        ("embedder", 8005),
    ] {
        let real = format!("http://127.0.0.1:{port}/v1");
        let (through, s) = proxy::start(real.clone()).await;
        text = text.replace(&format!("\"{real}\""), &format!("\"{through}\""));
        seen.insert(role, s);
    }
    std::fs::write(dir.path().join("servers.toml"), text).unwrap();
    let config = support::demo_experiment(dir.path(), &dir.path().join("servers.toml"), "", "");
    let config = config.to_str().unwrap();
    support::demo_photo("chelsea.png");

    let (ok, out, err) = imagescope(&["index", "--config", config, "--json"]).await;
    assert!(ok, "{out}\n{err}");
    let index: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(index["done"], 29, "{index}");
    assert!(index["failures"].as_array().unwrap().is_empty(), "{index}");
    let db = imagescope::index::ImageDb::open(
        Path::new(index["dir"].as_str().unwrap()),
        Default::default(),
    )
    .unwrap();
    let key = imagescope::datasets::ImageKey::from("photos/chelsea.png");
    assert!(
        !db.caption(&key).unwrap_or_default().trim().is_empty(),
        "the captioner wrote a caption"
    );

    let (ok, out, err) = imagescope(&["run", "--config", config, "--json", "--cache", "off"]).await;
    assert!(ok, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["queries"], 13, "{report}");
    assert!(
        report["failed"].as_array().unwrap().is_empty(),
        "no query failed: {report}"
    );
    for stage in ["s1", "s2", "s3"] {
        assert!(report["metrics"][stage]["R@1"].is_number(), "{report}");
    }
    for role in ["reasoner", "verifier", "evaluator", "embedder"] {
        let s = &report["roles"][role];
        assert!(s["successes"].as_u64().unwrap() > 0, "{role}: {s}");
        assert_eq!(s["failures"], 0, "{role}: {s}");
    }
    for (role, s) in &seen {
        let s = s.lock().unwrap();
        assert!(s.requests > 0, "{role} got no request");
        if *role != "reasoner" {
            assert!(s.with_image > 0, "{role} was sent no image");
        } else {
            assert_eq!(s.with_image, 0, "the reasoner is sent text only");
        }
    }
    // What the servers report of their own work (their /metrics, read at the start and the end):
    // every role's prompt tokens; the images the vision roles' encoder cache looked up; the
    // reasoner's prefix-cache hits, also summed from its own answers (--enable-prompt-tokens-details).
    for role in ["reasoner", "verifier", "evaluator", "embedder"] {
        let f = &report["servers"][role];
        assert_eq!(f["endpoints_read"], 1, "{role}: {f}");
        assert!(f["prompt_tokens"].as_u64().unwrap() > 0, "{role}: {f}");
        assert!(f["samples"].as_u64().is_some(), "{role}: {f}");
    }
    for role in ["verifier", "evaluator"] {
        let f = &report["servers"][role];
        assert!(f["mm_cache_queries"].as_u64().unwrap() > 0, "{role}: {f}");
    }
    assert!(
        report["servers"]["reasoner"]["prefix_cache_hits"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
    assert!(
        report["roles"]["reasoner"]["cached_prompt_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
    // Logprob mode: the verifier's answers carry probabilities.
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let journal = std::fs::read_to_string(folder.join("queries.jsonl")).unwrap();
    let p_yes = journal.matches("\"p_yes\":").count() - journal.matches("\"p_yes\":null").count();
    assert!(p_yes > 0, "no verifier probability in the journal");
}

/// Restarts the CPU stack's reasoner serving `models/reasoner` under its usual served name.
fn restart_reasoner(models: Option<&Path>) {
    let down = std::process::Command::new(root().join("launch/down.sh"))
        .arg("reasoner")
        .status()
        .unwrap();
    assert!(down.success());
    let mut up = std::process::Command::new(root().join("launch/vllm-cpu/up.sh"));
    up.arg("reasoner");
    if let Some(m) = models {
        up.env("IMAGESCOPE_VLLM_CPU_MODELS", m);
    }
    assert!(up.status().unwrap().success(), "the reasoner restarted");
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack; restarts the reasoner twice (a few minutes): run it alone"]
async fn vllm_same_served_name_over_another_model_folder_misses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::demo_experiment(
        dir.path(),
        &root().join("configs/servers/vllm-cpu.toml"),
        &format!("captions = {:?}", root().join("launch/demo/captions.json")),
        "stages = [\"s1\"]",
    );
    let config = config.to_str().unwrap();
    support::demo_photo("chelsea.png");
    let (ok, out, err) = imagescope(&["index", "--config", config, "--json"]).await;
    assert!(ok, "{out}\n{err}");

    let run = || async {
        let (ok, out, err) = imagescope(&["run", "--config", config, "--json"]).await;
        assert!(ok, "{out}\n{err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        let info: Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(report["folder"].as_str().unwrap()).join("run.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let sent = report["roles"]["reasoner"]["attempts"].as_u64().unwrap();
        let checkpoint = info["models"]["reasoner"]["checkpoint"]
            .as_str()
            .unwrap()
            .to_string();
        (sent, checkpoint)
    };
    let (sent, first) = run().await;
    assert!(sent > 0, "the first run asks the reasoner");
    assert!(
        first.ends_with("models/reasoner"),
        "vLLM reports its folder: {first}"
    );
    let (again, _) = run().await;
    assert_eq!(
        again, 0,
        "the same checkpoint: every reasoner answer is cached"
    );

    // The same weights behind a link at another path: another checkpoint to vLLM's `root`.
    let other = dir.path().join("other-models");
    std::fs::create_dir_all(&other).unwrap();
    let home = std::env::var("IMAGESCOPE_VLLM_CPU_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".vllm-cpu"));
    std::os::unix::fs::symlink(home.join("models/reasoner"), other.join("reasoner")).unwrap();
    restart_reasoner(Some(&other));
    let result = std::panic::AssertUnwindSafe(run());
    let outcome = futures::FutureExt::catch_unwind(result).await;
    restart_reasoner(None);
    let (after, second) = outcome.unwrap();
    assert_ne!(second, first, "the server reports the other folder");
    assert!(
        after > 0,
        "another checkpoint under the same served name sends its requests ({after})"
    );
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_reasoner_answers_in_schema_with_structured_output() {
    let prompts = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let c = client(Role::Reasoner);
    let input = reasoner::ReasonInput {
        instruction: "make it two dogs on a sofa".into(),
        reference_description: "A brown dog sits on green grass.".into(),
        has_reference: true,
    };
    let req = reasoner::reason_request(
        &prompts,
        Family::General,
        &input,
        c.server().response_schema,
    )
    .unwrap();
    let a = c.chat(&req).await.expect(NEEDS).value;
    let r =
        reasoner::parse_reasoning(&a.content).unwrap_or_else(|e| panic!("{e:?}: {}", a.content));
    assert!(!r.descriptions.is_empty());
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_verifier_logprobs_give_a_probability_of_yes() {
    let prompts = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let c = client(Role::Verifier);
    let req = verifier::request(
        &prompts,
        Family::General,
        support::demo_photo("chelsea.png"),
        "Is there a cat?",
        imagescope::config::VerifierMode::Logprob,
    )
    .unwrap();
    let a = c.chat(&req).await.expect(NEEDS).value;
    let v = verifier::decide(&a, imagescope::config::VerifierMode::Logprob);
    let p = v.p_yes.unwrap_or_else(|| panic!("{v:?} from {a:?}"));
    assert!((0.0..=1.0).contains(&p));
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_text_prompt_too_long_is_context_length_and_not_retried() {
    let c = client(Role::Reasoner);
    let req = ChatRequest {
        messages: vec![Message::text(Speaker::User, "word ".repeat(6000))],
        max_tokens: Some(8),
        ..Default::default()
    };
    let e = c.chat(&req).await.unwrap_err();
    assert_eq!(http_class(&e), HttpClass::ContextLength, "{e}");
    assert_eq!(e.attempts, 1, "{e}");
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_multimodal_prompt_too_long_is_context_length() {
    // PaliGemma's 1,024 tokens: the text fits alone, not with the image's tokens.
    let c = client(Role::Verifier);
    let req = user(vec![
        Part::Text("dog ".repeat(1015)),
        Part::Image(support::demo_photo("chelsea.png")),
    ]);
    let e = c.chat(&req).await.unwrap_err();
    assert_eq!(http_class(&e), HttpClass::ContextLength, "{e}");
    assert_eq!(e.attempts, 1, "{e}");
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_clip_text_over_77_tokens_is_truncated_and_vllm_refuses_it_otherwise() {
    let long = "a red bus parked next to a tall building with many windows ".repeat(40);
    let c = client(Role::Embedder);
    let v = c
        .embed(&[EmbedInput::Text(long.clone())])
        .await
        .expect(NEEDS);
    assert_eq!(v.value[0].len(), 64);
    // The same text without the truncation flag: vLLM's character rule, read as context length.
    let body = serde_json::json!({"model": "embedder", "messages": [{"role": "user", "content": [{"type": "text", "text": long}]}]});
    #[expect(
        clippy::disallowed_methods,
        reason = "a raw request to show vLLM's refusal"
    )]
    let r = reqwest::Client::new()
        .post("http://127.0.0.1:8005/v1/embeddings")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let kind = wire::http_error(status, &r.text().await.unwrap());
    assert!(
        matches!(
            kind,
            ErrorKind::Http {
                status: 400,
                class: HttpClass::ContextLength,
                ..
            }
        ),
        "{kind:?}"
    );
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_wrong_model_on_chat_and_on_embeddings_is_not_found_and_not_retried() {
    for role in [Role::Reasoner, Role::Embedder] {
        let mut s = server(role);
        s.model = "no-such-model".into();
        let c = client_for(role, &s);
        let e = if role == Role::Embedder {
            c.embed(&[EmbedInput::Text("a cat".into())])
                .await
                .unwrap_err()
        } else {
            c.chat(&user(vec![Part::Text("hi".into())]))
                .await
                .unwrap_err()
        };
        assert_eq!(http_class(&e), HttpClass::NotFound, "{role}: {e}");
        assert_eq!(e.attempts, 1, "{role}: {e}");
        assert!(e.to_string().contains("no-such-model"), "{e}");
    }
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_chat_on_the_pooling_server_is_fastapis_bare_404() {
    let mut s = server(Role::Reasoner);
    s.endpoints = vec!["http://127.0.0.1:8005/v1".into()];
    s.model = "embedder".into();
    let e = client_for(Role::Reasoner, &s)
        .chat(&user(vec![Part::Text("hi".into())]))
        .await
        .unwrap_err();
    assert_eq!(http_class(&e), HttpClass::NotFound, "{e}");
    assert_eq!(e.attempts, 1);
    let ErrorKind::Http { message, .. } = &e.kind else {
        unreachable!()
    };
    assert_eq!(
        message, "Not Found",
        "FastAPI's {{\"detail\": ...}} body is read"
    );
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_two_images_for_paligemma_is_a_bad_request_and_not_retried() {
    let c = client(Role::Verifier);
    let req = user(vec![
        Part::Text("Same?".into()),
        Part::Image(support::demo_photo("chelsea.png")),
        Part::Image(support::demo_photo("coffee.png")),
    ]);
    let e = c.chat(&req).await.unwrap_err();
    assert_eq!(http_class(&e), HttpClass::BadRequest, "{e}");
    assert_eq!(e.attempts, 1, "{e}");
    assert!(e.to_string().contains("At most 1 image"), "{e}");
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_file_url_without_allowed_local_media_path_is_not_retried() {
    let mut s = server(Role::Verifier);
    s.image_transport = ImageTransport::LocalPath;
    let c = client_for(Role::Verifier, &s);
    let e = c
        .chat(&user(vec![
            Part::Text("Is there a cat?".into()),
            Part::Image(support::demo_photo("chelsea.png")),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(500), "{e}");
    assert_eq!(http_class(&e), HttpClass::MediaLoad, "{e}");
    assert_eq!(e.attempts, 1, "a deterministic 500 is not retried: {e}");
    assert!(e.to_string().contains("--allowed-local-media-path"), "{e}");
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_empty_answer_at_temperature_zero_is_not_retried() {
    // A logit bias that makes every token a newline (SmolLM2's id 198): vLLM answers 200 with
    // whitespace only, which the client reads as no answer.
    let mut s = server(Role::Reasoner);
    s.extra_body
        .insert("logit_bias".into(), serde_json::json!({"198": 100}));
    s.sampling.temperature = Some(0.0);
    let c = client_for(Role::Reasoner, &s);
    let e = c
        .chat(&user(vec![Part::Text("Say hello to the reader.".into())]))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::EmptyContent { .. }), "{e}");
    assert_eq!(
        e.attempts, 1,
        "greedy: the same empty answer every time: {e}"
    );
    assert_eq!(c.stats().snapshot().set_aside, 0);
}

/// Runs last (CI runs it on its own): kills the embedder's engine process and checks the client
/// reads what vLLM does next (a 500 from the dying server, then refused connections) as a fault of
/// the endpoint, worth retrying on another replica.
#[tokio::test]
#[ignore = "needs the vLLM CPU stack; kills the embedder's engine: run it last"]
async fn vllm_dead_engine_is_a_retryable_endpoint_fault() {
    let pid_file = root().join("runs/servers/embedder.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .expect(NEEDS)
        .trim()
        .to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .unwrap();
    let engines: Vec<String> = String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(
        !engines.is_empty(),
        "no child process of the embedder {pid}"
    );
    for e in &engines {
        let _ = std::process::Command::new("kill").args(["-9", e]).status();
    }
    let mut s = server(Role::Embedder);
    s.retry.max_retries = 2;
    s.retry.initial_backoff_ms = 200;
    let e = client_for(Role::Embedder, &s)
        .embed(&[EmbedInput::Text("a cat".into())])
        .await
        .unwrap_err();
    assert!(e.kind.is_endpoint_fault(), "{e}");
    assert!(e.kind.may_change(true), "{e}");
    assert_eq!(e.attempts, 3, "retried: {e}");
    let first = e.earlier.first().unwrap_or(&e.kind);
    assert!(
        matches!(
            first,
            ErrorKind::Http {
                class: HttpClass::Server,
                ..
            } | ErrorKind::Connect(_)
        ),
        "{first:?}"
    );
}
