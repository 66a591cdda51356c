//! Every answer recorded from real vLLM 0.32 servers (`tests/fixtures/vllm/`, recorded by
//! `launch/vllm-cpu/record_fixtures.py` against the vLLM CPU stack) goes through the client's own
//! readers: successes parse, errors get the right typed class and retry decision. async-openai's
//! types serve as an oracle of the OpenAI schema: every recorded success they cover, and every
//! chat request body the roles build, deserialises into them, so a field-name drift fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use async_openai::types::embeddings::CreateEmbeddingResponse;
use async_openai::types::models::ListModelResponse;
use imagescope::config::{Role, ServersConfig, VerifierMode};
use imagescope::images::EncodedImage;
use imagescope::prompts::{Family, PromptSet};
use imagescope::roles::{captioner, evaluator, reasoner, verifier};
use imagescope::serving::wire::{self, ImageRendering};
use imagescope::serving::{ChatRequest, EmbedInput, ErrorKind, HttpClass};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Recorded {
    name: String,
    path: String,
    status: u16,
    body: String,
    version: String,
}

fn recorded() -> Vec<Recorded> {
    let dir = root().join("tests/fixtures/vllm");
    let mut out: Vec<Recorded> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            Recorded {
                name: p.file_stem().unwrap().to_string_lossy().into_owned(),
                path: v["path"].as_str().unwrap().into(),
                status: v["status"].as_u64().unwrap() as u16,
                body: v["body"].as_str().unwrap().into(),
                version: v["vllm_version"].as_str().unwrap().into(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 20, "fixtures missing in {}", dir.display());
    out
}

/// The class each recorded error must get, and whether the client retries it.
fn expected_error(name: &str) -> (u16, HttpClass, bool) {
    match name {
        "err_prompt_too_long"
        | "err_max_tokens_too_large"
        | "captioner_err_multimodal_too_long"
        | "verifier_err_multimodal_too_long"
        | "verifier_err_prompt_fills_context"
        | "embedder_err_too_long" => (400, HttpClass::ContextLength, false),
        "err_wrong_model" | "embedder_err_wrong_model" | "embedder_err_chat_on_pooling" => {
            (404, HttpClass::NotFound, false)
        }
        "err_image_on_text_model"
        | "err_malformed_json"
        | "verifier_err_two_images"
        | "verifier_err_bad_image" => (400, HttpClass::BadRequest, false),
        "verifier_err_file_url" => (500, HttpClass::MediaLoad, false),
        other => panic!("no expectation for recorded error {other}; add one"),
    }
}

#[test]
fn every_recorded_vllm_answer_reads_as_the_client_expects() {
    let all = recorded();
    for r in &all {
        assert_eq!(r.version, "0.32.0", "{}", r.name);
        let ok = (200..300).contains(&r.status);
        match (ok, r.path.as_str()) {
            (true, "/v1/chat/completions") => {
                let a = wire::parse_chat(&r.body).unwrap_or_else(|e| panic!("{}: {e}", r.name));
                assert!(!a.content.trim().is_empty(), "{}", r.name);
                assert!(a.usage.is_some(), "{}", r.name);
            }
            (true, "/v1/embeddings") => {
                let a = wire::parse_embeddings(&r.body, 1, Some(64))
                    .unwrap_or_else(|e| panic!("{}: {e}", r.name));
                assert_eq!(a.vectors[0].len(), 64);
            }
            (true, _) => {}
            (false, _) => {
                let (status, class, retried) = expected_error(&r.name);
                assert_eq!(r.status, status, "{}", r.name);
                let kind = wire::http_error(r.status, &r.body);
                let ErrorKind::Http {
                    class: got,
                    message,
                    ..
                } = &kind
                else {
                    panic!("{}: {kind:?}", r.name)
                };
                assert_eq!(*got, class, "{}: {message}", r.name);
                assert!(
                    !message.is_empty() && !message.starts_with('{'),
                    "{}",
                    r.name
                );
                assert_eq!(kind.may_change(true), retried, "{}", r.name);
                assert_eq!(kind.may_change(false), retried, "{}", r.name);
            }
        }
    }
}

#[test]
fn recorded_answers_fit_async_openai_types() {
    for r in recorded().iter().filter(|r| r.status == 200) {
        match r.path.as_str() {
            "/v1/chat/completions" => {
                serde_json::from_str::<CreateChatCompletionResponse>(&r.body)
                    .unwrap_or_else(|e| panic!("{}: {e}", r.name));
            }
            "/v1/embeddings" => {
                serde_json::from_str::<CreateEmbeddingResponse>(&r.body)
                    .unwrap_or_else(|e| panic!("{}: {e}", r.name));
            }
            "/v1/models" => {
                serde_json::from_str::<ListModelResponse>(&r.body)
                    .unwrap_or_else(|e| panic!("{}: {e}", r.name));
            }
            _ => {}
        }
    }
}

#[test]
fn system_fingerprint_is_read_but_never_compared() {
    // vLLM's fingerprint changes on every server start; two answers with different ones parse alike.
    let r = recorded()
        .into_iter()
        .find(|r| r.name == "chat_basic")
        .unwrap();
    let mut v: Value = serde_json::from_str(&r.body).unwrap();
    let first = wire::parse_chat(&r.body).unwrap();
    v["system_fingerprint"] = "vllm-0.32.0-deadbeef".into();
    assert_eq!(wire::parse_chat(&v.to_string()).unwrap(), first);
}

#[test]
fn the_verifiers_recorded_logprobs_without_yes_or_no_fall_back_to_the_first_word() {
    // Recorded from the random PaliGemma before its yes/no rows were rigged: 20 alternatives, none
    // of them yes or no, and the answer " Needs".
    let r = recorded()
        .into_iter()
        .find(|r| r.name == "verifier_chat_image_logprobs")
        .unwrap();
    let a = wire::parse_chat(&r.body).unwrap();
    assert_eq!(a.logprobs.as_ref().unwrap()[0].top_logprobs.len(), 20);
    let v = verifier::decide(&a, VerifierMode::Logprob);
    assert!(v.p_yes.is_none() && !v.yes, "{v:?}");
    assert!(v.note.unwrap().contains("no yes/no token"));
}

fn image() -> EncodedImage {
    EncodedImage::from_file(&root().join("tests/fixtures/vllm/red.png")).unwrap()
}

fn vllm_cpu() -> ServersConfig {
    ServersConfig::load(&root().join("configs/servers/vllm-cpu.toml")).unwrap()
}

/// The bytes the client sends for `req` to `role` of the vLLM CPU servers file.
fn sent(role: Role, req: &ChatRequest) -> Vec<u8> {
    let cfg = vllm_cpu();
    let server = &cfg.roles[&role];
    let body = wire::chat_body(req, server, ImageRendering::Send(server.image_transport));
    wire::encode_body(&body, req.images())
}

#[test]
fn every_roles_chat_body_fits_async_openai_and_never_sends_guided_json() {
    let prompts = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let cfg = vllm_cpu();
    let input = reasoner::ReasonInput {
        instruction: "make it two dogs".into(),
        reference_description: "A dog on grass.".into(),
        has_reference: true,
    };
    let schema = cfg.roles[&Role::Reasoner].response_schema;
    let bodies = [
        (
            Role::Captioner,
            captioner::request(&prompts, Family::General, image()).unwrap(),
        ),
        (
            Role::Reasoner,
            reasoner::reason_request(&prompts, Family::General, &input, schema).unwrap(),
        ),
        (
            Role::Verifier,
            verifier::request(
                &prompts,
                Family::General,
                image(),
                "Is there a dog?",
                VerifierMode::Logprob,
            )
            .unwrap(),
        ),
        (
            Role::Evaluator,
            evaluator::request(&prompts, Family::General, image(), "make it two dogs", true)
                .unwrap(),
        ),
    ];
    for (role, req) in bodies {
        let bytes = sent(role, &req);
        let parsed: CreateChatCompletionRequest = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{role}: {e}\n{}", String::from_utf8_lossy(&bytes)));
        assert_eq!(parsed.model, role.as_str());
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v.get("guided_json").is_none(), "{role}: {v}");
        if role == Role::Reasoner {
            assert_eq!(v["response_format"]["type"], "json_schema", "{v}");
        }
        if role.sees_images() {
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains("\"url\":\"data:image/png;base64,"), "{role}");
        }
    }
}

#[test]
fn embedding_text_asks_vllm_to_truncate_and_images_do_not() {
    let cfg = vllm_cpu();
    let server = &cfg.roles[&Role::Embedder];
    let long = "a red bus by a tall building ".repeat(60);
    let bodies = wire::embed_bodies(
        &[EmbedInput::Text(long), EmbedInput::Image(image())],
        server,
        ImageRendering::Placeholder,
    )
    .unwrap();
    assert_eq!(bodies[0]["truncate_prompt_tokens"], -1);
    assert!(bodies[1].get("truncate_prompt_tokens").is_none());
}

#[test]
fn local_paths_become_percent_encoded_file_urls() {
    let dir = tempfile::tempdir().unwrap();
    let name = "a b#c?d%e.png";
    let path = dir.path().join(name);
    std::fs::copy(root().join("tests/fixtures/vllm/red.png"), &path).unwrap();
    let img = EncodedImage::from_file(&path).unwrap();
    let mut server = vllm_cpu().roles[&Role::Verifier].clone();
    server.image_transport = imagescope::config::ImageTransport::LocalPath;
    let prompts = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let req = verifier::request(
        &prompts,
        Family::General,
        img,
        "Is there a dog?",
        VerifierMode::Substring,
    )
    .unwrap();
    let body = wire::chat_body(&req, &server, ImageRendering::Send(server.image_transport));
    let url = body["messages"][0]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["image_url"]["url"].as_str())
        .unwrap()
        .to_string();
    assert!(url.starts_with("file:///"), "{url}");
    assert!(url.ends_with("/a%20b%23c%3Fd%25e.png"), "{url}");
    let back = url::Url::parse(&url).unwrap().to_file_path().unwrap();
    assert_eq!(back, path);
}
