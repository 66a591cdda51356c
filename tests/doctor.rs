//! `imagescope doctor` as a user runs it: the real binary against fake model servers (test
//! doubles), healthy and broken.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use imagescope::config::Role;
use support::fake_server::FakeServer;

async fn five_fakes() -> Vec<(Role, FakeServer)> {
    let mut out = Vec::new();
    for &role in Role::ALL {
        out.push((role, FakeServer::start(&format!("{role}-model"), 8).await));
    }
    out
}

fn servers_toml(fakes: &[(Role, String)]) -> String {
    let mut s = String::new();
    for (role, base) in fakes {
        s.push_str(&format!(
            "[roles.{role}]\nendpoints = [\"{base}\"]\nmodel = \"{role}-model\"\napi = \"vllm\"\ntimeout_secs = 5\n"
        ));
        if *role == Role::Embedder {
            s.push_str("embed_shape = \"vllm-messages\"\ndimension = 8\n");
        }
        s.push_str(&format!("[roles.{role}.retry]\nmax_retries = 0\n\n"));
    }
    s
}

async fn doctor(config: &std::path::Path) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
        .args(["doctor", "--config"])
        .arg(config)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_setup_passes() {
    let fakes = five_fakes().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("servers.toml");
    let list: Vec<_> = fakes.iter().map(|(r, f)| (*r, f.base_url())).collect();
    std::fs::write(&path, servers_toml(&list)).unwrap();
    let (code, text) = doctor(&path).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("all 5 endpoint(s) healthy"), "{text}");
    for &role in Role::ALL {
        assert!(text.contains(role.as_str()), "{text}");
    }
    assert!(text.contains("dim 8 (text+image)"), "{text}");
    // The vision roles were sent a real image.
    let verifier = &fakes.iter().find(|(r, _)| *r == Role::Verifier).unwrap().1;
    let body = verifier
        .requests()
        .into_iter()
        .find(|r| r.route == support::fake_server::Route::Chat)
        .unwrap()
        .body;
    assert_eq!(body["messages"][0]["content"][0]["type"], "image_url");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_model_and_dead_port_fail_naming_the_role() {
    let fakes = five_fakes().await;
    // The verifier's server serves another model; the embedder's server is gone.
    *fakes
        .iter()
        .find(|(r, _)| *r == Role::Verifier)
        .unwrap()
        .1
        .state
        .model
        .lock()
        .unwrap() = "paligemma-other".into();
    let mut list: Vec<_> = fakes.iter().map(|(r, f)| (*r, f.base_url())).collect();
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    list.iter_mut()
        .find(|(r, _)| *r == Role::Embedder)
        .unwrap()
        .1 = dead_url.clone();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("servers.toml");
    std::fs::write(&path, servers_toml(&list)).unwrap();
    let (code, text) = doctor(&path).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("verifier @") && text.contains("paligemma-other"),
        "{text}"
    );
    assert!(text.contains(&format!("embedder @ {dead_url}")), "{text}");
    assert!(text.contains("connection failed"), "{text}");
}

#[tokio::test]
async fn unknown_key_in_the_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("servers.toml");
    std::fs::write(
        &path,
        "[roles.reasoner]\nendpoints = [\"http://127.0.0.1:9/v1\"]\nmodel = \"m\"\napi = \"vllm\"\nmax_inflight = 4\n",
    )
    .unwrap();
    let (code, text) = doctor(&path).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("servers.toml") && text.contains("max_inflight"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_that_cuts_text_short_fails_with_the_fix() {
    let fakes = five_fakes().await;
    // As infinity 0.0.78 serving a hub CLIP: only the first 18 words of a text count.
    let embedder = &fakes.iter().find(|(r, _)| *r == Role::Embedder).unwrap().1;
    embedder.set_embed_responder(|input, dim| {
        let text = input
            .get("text")
            .and_then(|t| t.as_str())
            .or(input.as_str())
            .unwrap_or_default();
        let head: Vec<&str> = text.split_whitespace().take(18).collect();
        support::fake_server::fake_vector(&serde_json::json!(head), dim)
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("servers.toml");
    let list: Vec<_> = fakes.iter().map(|(r, f)| (*r, f.base_url())).collect();
    std::fs::write(&path, servers_toml(&list)).unwrap();
    let (code, text) = doctor(&path).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("embedder @") && text.contains("cuts text short"),
        "{text}"
    );
    assert!(text.contains("\"max_length\": 77"), "{text}");
}
