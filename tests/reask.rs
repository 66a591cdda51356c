//! The re-ask loop and `imagescope prompt try` against the fake model server (a test double).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use imagescope::config::Role;
use imagescope::pipeline::ask::{Asked, ask};
use imagescope::prompts::{Family, PromptSet};
use imagescope::roles::reasoner::{self, ReasonInput};
use imagescope::serving::RoleClient;
use support::fake_server::{FakeServer, Route};

const GOOD: &str = "```json\n{\"edits\": [[\"Addition\", \"a hat\"]], \"descriptions\": [\"A man in a hat.\"]}\n```";

fn input() -> ReasonInput {
    ReasonInput {
        instruction: "give him a hat".into(),
        reference_description: "A man on a street.".into(),
        has_reference: true,
    }
}

async fn scripted(answers: &'static [&'static str]) -> FakeServer {
    let fake = FakeServer::start("llama", 4).await;
    let n = Arc::new(AtomicUsize::new(0));
    fake.set_chat_responder(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        answers[i.min(answers.len() - 1)].to_string()
    });
    fake
}

fn client(fake: &FakeServer) -> RoleClient {
    let cfg = support::servers(Role::Reasoner, "llama", &[fake.base_url()], "");
    RoleClient::new(
        Role::Reasoner,
        &cfg.roles[&Role::Reasoner],
        Path::new("t.toml"),
    )
    .unwrap()
}

#[tokio::test]
async fn an_unusable_answer_is_re_asked_with_the_error() {
    let fake = scripted(&["The target shows a man wearing a hat.", GOOD]).await;
    let prompts = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let req = reasoner::reason_request(&prompts, Family::General, &input(), None).unwrap();
    let out = ask(
        &client(&fake),
        &prompts,
        Family::General,
        req,
        2,
        reasoner::parse_reasoning,
    )
    .await
    .unwrap();
    let Asked::Parsed(r, ex) = out else {
        panic!("expected a parsed answer")
    };
    assert_eq!(r.descriptions, vec!["A man in a hat."]);
    assert_eq!(ex.answers.len(), 2);
    assert_eq!(ex.failures.len(), 1);
    assert_eq!(fake.count(Route::Chat), 2);
    let second = &fake.requests()[1].body;
    let msgs = second["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(msgs[1]["content"], "The target shows a man wearing a hat.");
    assert!(
        msgs[2]["content"]
            .as_str()
            .unwrap()
            .contains("no JSON object in the answer")
    );
}

#[tokio::test]
async fn with_no_re_asks_the_fallback_keeps_the_raw_text() {
    let fake = scripted(&["I cannot help with that."]).await;
    let prompts = PromptSet::load(&PromptSet::bundled_dir()).unwrap();
    let req = reasoner::reason_request(&prompts, Family::General, &input(), None).unwrap();
    let out = ask(
        &client(&fake),
        &prompts,
        Family::General,
        req,
        0,
        reasoner::parse_reasoning,
    )
    .await
    .unwrap();
    let Asked::Unusable(ex) = out else {
        panic!("expected an unusable answer")
    };
    assert_eq!(fake.count(Route::Chat), 1);
    assert_eq!(ex.failures[0].raw, "I cannot help with that.");
    let fallback = reasoner::fallback(&input(), true);
    assert_eq!(fallback.descriptions, vec!["A man on a street."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_try_prints_raw_and_parsed() {
    let fake = scripted(&[GOOD]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("servers.toml");
    std::fs::write(
        &cfg,
        format!(
            "[roles.reasoner]\nendpoints = [\"{}\"]\nmodel = \"llama\"\napi = \"vllm\"\n",
            fake.base_url()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["prompt", "try", "--role", "reasoner", "--config"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["raw"], GOOD);
    assert_eq!(v["parsed"]["Ok"]["descriptions"][0], "A man in a hat.");
}
