//! `image_uuids` against fake vLLM servers (TEST DOUBLES that keep images by `uuid` as vLLM ≥ 0.11
//! does, and answer a request naming an image they do not hold with vLLM's cache-miss 400): each
//! image's bytes go once per replica, later requests name it by uuid alone, a miss is sent again
//! with the bytes (even with no retries left), the answers are the same as with bytes every time,
//! and the bytes sent are counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use imagescope::config::Role;
use imagescope::images::EncodedImage;
use imagescope::serving::{ChatRequest, Message, Part, RoleClient, Speaker};
use serde_json::Value;
use support::fake_server::FakeServer;

fn client(endpoints: &[String], extra: &str) -> RoleClient {
    let extra = format!(
        "max_in_flight = 4\n{extra}[roles.verifier.retry]\nmax_retries = 0\ninitial_backoff_ms = 1\nmax_backoff_ms = 2\n"
    );
    let cfg = support::servers(Role::Verifier, "m", endpoints, &extra);
    RoleClient::new(
        Role::Verifier,
        &cfg.roles[&Role::Verifier],
        Path::new("test-servers.toml"),
    )
    .unwrap()
}

/// A photo of some kilobytes (noise: PNG cannot shrink it), one per `seed`.
fn photo(seed: u64) -> EncodedImage {
    let mut rng = fastrand::Rng::with_seed(seed);
    let img = image::RgbImage::from_fn(48, 48, |_, _| {
        image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    EncodedImage::from_bytes(bytes, "noise.png").unwrap()
}

/// A fake whose answer depends on the image it was given (as a model's does).
async fn fake() -> FakeServer {
    let f = FakeServer::start("m", 4).await;
    f.set_chat_responder(|req| {
        let url = req["messages"][0]["content"][0]["image_url"]["url"]
            .as_str()
            .unwrap_or("NO IMAGE");
        blake3::hash(url.as_bytes()).to_hex()[..12].to_string()
    });
    f
}

/// The image parts every request to `f` carried, in order.
fn image_parts(f: &FakeServer) -> Vec<Value> {
    f.requests()
        .iter()
        .map(|r| r.body["messages"][0]["content"][0].clone())
        .collect()
}

async fn ask(c: &RoleClient, reqs: &[ChatRequest]) -> Vec<String> {
    let mut out = Vec::new();
    for r in reqs {
        out.push(c.chat(r).await.unwrap().value.content);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_goes_once_per_replica_then_by_uuid_and_again_after_a_miss() {
    let (a, b) = (fake().await, fake().await);
    let endpoints = [a.base_url(), b.base_url()];
    let images: Vec<EncodedImage> = (0..3).map(photo).collect();
    // Four questions about each of three photos, one after another.
    let reqs: Vec<ChatRequest> = images
        .iter()
        .flat_map(|img| (0..4).map(move |q| support::about(img, &format!("question {q}?"), 4)))
        .collect();

    let plain = client(&endpoints, "");
    let want = ask(&plain, &reqs).await;
    let plain_bytes = plain.stats().snapshot().sent_bytes;
    for part in image_parts(&a).iter().chain(image_parts(&b).iter()) {
        assert!(part.get("uuid").is_none(), "no uuid unless asked: {part}");
    }

    let c = client(&endpoints, "image_uuids = 64\n");
    let (a0, b0) = (a.requests().len(), b.requests().len());
    let got = ask(&c, &reqs).await;
    assert_eq!(got, want, "the same answers as with the bytes every time");
    let parts: Vec<Value> = image_parts(&a)[a0..]
        .iter()
        .chain(image_parts(&b)[b0..].iter())
        .cloned()
        .collect();
    assert_eq!(parts.len(), 12);
    let by_uuid = parts.iter().filter(|p| p["image_url"].is_null()).count();
    // Affinity keeps a photo on one replica: its bytes went once, its other three questions by uuid.
    assert_eq!(by_uuid, 9, "{parts:?}");
    for p in &parts {
        let uuid = p["uuid"].as_str().unwrap();
        assert!(images.iter().any(|i| i.hash() == uuid), "{p}");
    }
    let s = c.stats().snapshot();
    assert_eq!(s.images_by_uuid, 9);
    assert!(
        s.sent_bytes * 3 < plain_bytes,
        "{} bytes with uuids, {plain_bytes} without",
        s.sent_bytes
    );

    // Both replicas forget (evicted, restarted): the next question is a miss, sent again with
    // the bytes at once although no retry is allowed, and answered the same.
    a.forget_images();
    b.forget_images();
    let again = c.chat(&reqs[0]).await.unwrap();
    assert_eq!(again.value.content, want[0]);
    assert_eq!(again.meta.attempts, 2);
    let s = c.stats().snapshot();
    assert_eq!(s.errors.get("image-cache-miss"), Some(&1), "{s:?}");
    assert_eq!(s.attempts, s.successes + s.failures + s.retries);
    // Known again: the question after goes by uuid.
    let before = s.images_by_uuid;
    c.chat(&reqs[1]).await.unwrap();
    assert_eq!(c.stats().snapshot().images_by_uuid, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_image_is_forgotten_first() {
    let f = fake().await;
    let c = client(&[f.base_url()], "image_uuids = 2\n");
    let (x, y, z) = (photo(10), photo(11), photo(12));
    // Room for two: x is used again before z comes, so y (not x) is the one forgotten.
    let reqs = [
        support::about(&x, "a?", 4),
        support::about(&y, "b?", 4),
        support::about(&x, "c?", 4),
        support::about(&z, "d?", 4),
        support::about(&x, "e?", 4),
        support::about(&y, "f?", 4),
    ];
    ask(&c, &reqs).await;
    let nulls: Vec<bool> = image_parts(&f)
        .iter()
        .map(|p| p["image_url"].is_null())
        .collect();
    assert_eq!(nulls, [false, false, true, false, true, false]);
    assert_eq!(c.stats().snapshot().images_by_uuid, 2);
}

/// An evaluator-style request: two images and a question.
fn pair(a: &EncodedImage, b: &EncodedImage) -> ChatRequest {
    ChatRequest {
        messages: vec![Message {
            speaker: Speaker::User,
            parts: vec![
                Part::Image(a.clone()),
                Part::Image(b.clone()),
                Part::Text("the same?".into()),
            ],
        }],
        max_tokens: Some(4),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_resends_every_image_and_a_restarted_replica_is_sent_bytes_first() {
    let f = fake().await;
    let c = client(&[f.base_url()], "image_uuids = 8\n");
    let (x, y) = (photo(20), photo(21));
    c.chat(&pair(&x, &y)).await.unwrap();
    // The server forgot them: the miss is resent with both images' bytes.
    f.forget_images();
    let r = c.chat(&pair(&x, &y)).await.unwrap();
    assert_eq!(r.meta.attempts, 2);
    let last = f.requests().last().unwrap().body["messages"][0]["content"].clone();
    assert!(last[0]["image_url"]["url"].is_string() && last[1]["image_url"]["url"].is_string());
    // The server goes away (its requests fail to connect) and comes back empty: the client
    // counts on none of its images, so the next request carries the bytes, with no miss.
    f.set_outage(Some(support::fake_server::Outage::Dead));
    assert!(c.chat(&pair(&x, &y)).await.is_err());
    f.set_outage(None);
    f.forget_images();
    let misses = |c: &RoleClient| {
        c.stats()
            .snapshot()
            .errors
            .get("image-cache-miss")
            .copied()
            .unwrap_or(0)
    };
    let before = misses(&c);
    let r = c.chat(&pair(&x, &y)).await.unwrap();
    assert_eq!(r.meta.attempts, 1);
    assert_eq!(misses(&c), before);
    let s = c.stats().snapshot();
    assert_eq!(s.attempts, s.successes + s.failures + s.retries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_cache_tells_no_uuid_from_bytes() {
    // `image_uuids` changes how a request is sent, not what it asks: an answer cached without it
    // is found with it (the cache key is built without uuids).
    let f = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = std::sync::Arc::new(
        imagescope::serving::Cache::open(
            &dir.path().join("cache.sqlite"),
            imagescope::serving::CacheMode::On,
        )
        .unwrap(),
    );
    let greedy = "sampling = { temperature = 0.0 }\n";
    let req = support::about(&photo(30), "q?", 4);
    let plain = client(&[f.base_url()], greedy).with_cache(cache.clone());
    let asked = plain.chat(&req).await.unwrap();
    assert!(!asked.meta.cached);
    cache.close();
    let by_uuid =
        client(&[f.base_url()], &format!("{greedy}image_uuids = 8\n")).with_cache(cache.clone());
    let again = by_uuid.chat(&req).await.unwrap();
    assert!(again.meta.cached, "{:?}", again.meta);
    assert_eq!(again.value.content, asked.value.content);
    assert_eq!(f.requests().len(), 1);
}
