//! `image_uuids` against REAL vLLM 0.32 servers on CPU (`launch/vllm-cpu/`: the verifier and the
//! evaluator, random-weight vision models, so this proves the protocol, not answer quality).
//! Ignored by default; CI runs it with the other vLLM live tests:
//!
//! ```bash
//! launch/vllm-cpu/setup.sh && launch/vllm-cpu/up.sh
//! cargo test --test vllm_uuid_live -- --ignored --nocapture
//! ```
//!
//! What it shows: vLLM takes an image part with a `uuid`, then the same image named by the uuid
//! alone (`"image_url": null`), and answers exactly as with the bytes every time (greedy decoding
//! of a model whose answer depends on the pixels); an image named by a uuid it does not hold is a
//! 400 that the client reads as a cache miss (sent again with the bytes).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

mod support;

use std::path::{Path, PathBuf};

use imagescope::config::{Role, ServersConfig};
use imagescope::images::EncodedImage;
use imagescope::serving::{ChatRequest, ErrorKind, HttpClass, RoleClient};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The vLLM CPU stack's client for `role`, with `extra` settings added to its table.
fn client(role: Role, extra: &str) -> RoleClient {
    let path = root().join("configs/servers/vllm-cpu.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("[roles.{role}]\n"),
        &format!("[roles.{role}]\n{extra}"),
    );
    let servers = ServersConfig::parse(&text, &path).unwrap();
    RoleClient::new(role, &servers.roles[&role], Path::new("vllm-cpu.toml")).unwrap()
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_images_named_by_uuid_get_the_answers_their_bytes_get() {
    let photos: Vec<EncodedImage> = ["chelsea.png", "coffee.png", "astronaut.png"]
        .iter()
        .map(|n| support::demo_photo(n))
        .collect();
    let questions = ["Is there a cat?", "Is it outdoors?", "Is it red?"];
    let reqs: Vec<ChatRequest> = photos
        .iter()
        .flat_map(|p| questions.iter().map(move |q| support::about(p, q, 6)))
        .collect();
    for role in [Role::Verifier, Role::Evaluator] {
        let plain = client(role, "");
        // A fresh client knows of no image on the server, so it sends each photo's bytes once.
        let by_uuid = client(role, "image_uuids = 64\n");
        let mut want = Vec::new();
        let mut got = Vec::new();
        for r in &reqs {
            want.push(plain.chat(r).await.unwrap().value.content);
            got.push(by_uuid.chat(r).await.unwrap().value.content);
        }
        assert_eq!(
            got, want,
            "{role}: the same answers by uuid as with the bytes"
        );
        let (p, u) = (plain.stats().snapshot(), by_uuid.stats().snapshot());
        assert_eq!(u.images_by_uuid, (reqs.len() - photos.len()) as u64);
        assert!(u.errors.is_empty(), "{role}: {:?}", u.errors);
        println!(
            "{role}: {} requests about {} photos: {} bytes sent with image_uuids, {} without ({:.2}x); {} images by uuid",
            reqs.len(),
            photos.len(),
            u.sent_bytes,
            p.sent_bytes,
            u.sent_bytes as f64 / p.sent_bytes as f64,
            u.images_by_uuid
        );
        assert!(u.sent_bytes * 2 < p.sent_bytes, "{u:?} vs {p:?}");
    }
}

#[tokio::test]
#[ignore = "needs the vLLM CPU stack: launch/vllm-cpu/up.sh"]
async fn vllm_an_image_named_by_a_uuid_it_does_not_hold_is_a_cache_miss() {
    let uuid = format!("never-sent-{:016x}", fastrand::u64(..));
    let body = serde_json::json!({
        "model": "verifier",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": null, "uuid": uuid},
            {"type": "text", "text": "Is there a cat?"},
        ]}],
        "max_tokens": 2,
        "temperature": 0.0,
    });
    let resp = reqwest::Client::new()
        .post("http://127.0.0.1:8003/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    println!("an unknown uuid: HTTP {status}: {text}");
    let kind = imagescope::serving::dialect::http_error(status, &text);
    assert!(
        matches!(
            kind,
            ErrorKind::Http {
                class: HttpClass::ImageCacheMiss,
                ..
            }
        ),
        "{kind:?}"
    );
    assert!(kind.may_change(true));
}
