//! Integration tests of `serving::RoleClient` against the fake OpenAI-compatible server (a test
//! double, see tests/support/fake_server.rs): limits, rate, retries, timeouts, error envelopes,
//! replicas and image transport. Every count is taken on the server side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use imagescope::config::Role;
use imagescope::images::{EncodedImage, decode_data_url};
use imagescope::serving::{
    ChatRequest, EmbedInput, ErrorKind, HttpClass, Message, Part, RoleClient, Speaker,
};
use serde_json::json;
use support::fake_server::{FakeServer, Route, Scripted};

fn client(role: Role, model: &str, endpoints: &[String], extra: &str) -> RoleClient {
    let cfg = support::servers(role, model, endpoints, extra);
    RoleClient::new(role, &cfg.roles[&role], Path::new("test-servers.toml")).unwrap()
}

fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Speaker::User, "hello")],
        ..Default::default()
    }
}

const FAST_RETRY: &str = "[roles.reasoner.retry]\nmax_retries = 3\ninitial_backoff_ms = 1\nmax_backoff_ms = 5\nmax_retry_after_ms = 100\nreplica_cooldown_ms = 200\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_never_exceeds_the_limit() {
    let fake = FakeServer::start("m", 4).await;
    fake.set_delay(Route::Chat, Duration::from_millis(30));
    let c = client(
        Role::Reasoner,
        "m",
        &[fake.base_url()],
        "max_in_flight = 8\n",
    );
    let req = hello();
    let calls = (0..200).map(|_| c.chat(&req));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(fake.count(Route::Chat), 200);
    assert_eq!(
        fake.max_in_flight(),
        8,
        "the limit is reached but never exceeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_holds_at_the_server() {
    let fake = FakeServer::start("m", 4).await;
    let rps = 20.0;
    let c = client(
        Role::Reasoner,
        "m",
        &[fake.base_url()],
        "max_in_flight = 64\nrequests_per_second = 20.0\nburst = 1\n",
    );
    let req = hello();
    let n = 30;
    futures::future::join_all((0..n).map(|_| c.chat(&req))).await;
    let mut times: Vec<_> = fake.requests().iter().map(|r| r.at).collect();
    times.sort();
    assert_eq!(times.len(), n);
    // In every one-second window the server sees at most rate + burst, and a few more for a busy
    // machine delivering requests the limiter let go on time in a bunch (unlimited, all 30 come
    // at once).
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= rps as usize + 4,
            "{in_window} requests within 1 s"
        );
    }
    // And the whole batch cannot have arrived much faster than the rate allows (1.45 s).
    let span = times[n - 1].duration_since(times[0]).as_secs_f64();
    assert!(
        span >= (n as f64 - 2.0) / rps * 0.75,
        "span {span:.3}s too short"
    );
}

#[tokio::test]
async fn server_error_then_success_is_retried() {
    let fake = FakeServer::start("m", 4).await;
    fake.script(Route::Chat, [Scripted::status(500, "boom")]);
    let c = client(Role::Reasoner, "m", &[fake.base_url()], FAST_RETRY);
    let reply = c.chat(&hello()).await.unwrap();
    assert_eq!(reply.value.content, "yes");
    assert_eq!(reply.meta.attempts, 2);
    assert!(matches!(
        reply.meta.errors[0],
        ErrorKind::Http { status: 500, .. }
    ));
    assert_eq!(fake.count(Route::Chat), 2);
    assert_eq!(c.stats().snapshot().retries, 1);
}

#[tokio::test]
async fn bad_request_is_not_retried() {
    let fake = FakeServer::start("m", 4).await;
    fake.script(
        Route::Chat,
        [Scripted::json(
            400,
            json!({"error": {"message": "bad field", "type": "BadRequestError", "code": 400}}),
        )],
    );
    let c = client(Role::Reasoner, "m", &[fake.base_url()], FAST_RETRY);
    let err = c.chat(&hello()).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.attempts, 1);
    assert_eq!(fake.count(Route::Chat), 1);
    let text = err.to_string();
    assert!(
        text.contains("reasoner") && text.contains(&fake.base_url()) && text.contains("bad field"),
        "{text}"
    );
}

#[tokio::test]
async fn retry_after_is_capped() {
    let fake = FakeServer::start("m", 4).await;
    fake.script(
        Route::Chat,
        [
            Scripted::json(429, json!({"error": {"message": "slow down", "code": 429}}))
                .header("retry-after", "3600"),
        ],
    );
    let c = client(Role::Reasoner, "m", &[fake.base_url()], FAST_RETRY);
    let reply = tokio::time::timeout(Duration::from_secs(30), c.chat(&hello()))
        .await
        .expect("an uncapped Retry-After would wait an hour")
        .unwrap();
    assert_eq!(reply.meta.retry_delays, vec![Duration::from_millis(100)]);
    assert_eq!(fake.count(Route::Chat), 2);
}

#[tokio::test]
async fn hung_server_hits_the_timeout() {
    let fake = FakeServer::start("m", 4).await;
    fake.set_delay(Route::Chat, Duration::from_secs(60));
    let c = client(
        Role::Reasoner,
        "m",
        &[fake.base_url()],
        "timeout_secs = 0.3\n[roles.reasoner.retry]\nmax_retries = 1\ninitial_backoff_ms = 1\nmax_backoff_ms = 1\n",
    );
    let err = c.chat(&hello()).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Timeout(_)), "{err}");
    assert!(
        matches!(err.earlier[..], [ErrorKind::Timeout(_)]),
        "timeouts are retried"
    );
    assert_eq!(err.attempts, 2);
}

#[tokio::test]
async fn both_vllm_error_envelopes_keep_the_status() {
    let fake = FakeServer::start("m", 4).await;
    let new_shape = json!({"error": {"message": "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens.", "type": "BadRequestError", "param": null, "code": 400}});
    let old_shape = json!({"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "param": null, "code": 404});
    let string_code = json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}});
    fake.script(
        Route::Chat,
        [
            Scripted::json(400, new_shape),
            Scripted::json(404, old_shape),
            Scripted::json(401, string_code),
        ],
    );
    let c = client(Role::Reasoner, "m", &[fake.base_url()], FAST_RETRY);
    let e1 = c.chat(&hello()).await.unwrap_err();
    assert_eq!(e1.status(), Some(400));
    assert!(e1.is_context_length());
    match &e1.kind {
        ErrorKind::Http { code, class, .. } => {
            assert_eq!(code.as_deref(), Some("400"));
            assert_eq!(*class, HttpClass::ContextLength);
        }
        other => panic!("{other:?}"),
    }
    let e2 = c.chat(&hello()).await.unwrap_err();
    assert_eq!(e2.status(), Some(404));
    assert!(e2.to_string().contains("does not exist"));
    let e3 = c.chat(&hello()).await.unwrap_err();
    assert!(
        matches!(&e3.kind, ErrorKind::Http { status: 401, code: Some(c), class: HttpClass::Auth, .. } if c == "invalid_api_key")
    );
    assert_eq!(fake.count(Route::Chat), 3, "no 4xx is retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_load() {
    let a = FakeServer::start("m", 4).await;
    let b = FakeServer::start("m", 4).await;
    a.set_delay(Route::Chat, Duration::from_millis(20));
    b.set_delay(Route::Chat, Duration::from_millis(20));
    let c = client(
        Role::Reasoner,
        "m",
        &[a.base_url(), b.base_url()],
        "max_in_flight = 4\n",
    );
    let req = hello();
    let results = futures::future::join_all((0..40).map(|_| c.chat(&req))).await;
    assert!(results.iter().all(Result::is_ok));
    let (na, nb) = (a.count(Route::Chat), b.count(Route::Chat));
    assert_eq!(na + nb, 40);
    assert!(na >= 12 && nb >= 12, "uneven split {na}/{nb}");
    assert!(a.max_in_flight() <= 4 && b.max_in_flight() <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_questions_about_one_image_meet_on_one_replica_and_say_their_session() {
    let a = FakeServer::start("m", 4).await;
    let b = FakeServer::start("m", 4).await;
    let images: Vec<EncodedImage> = (0..12u8)
        .map(|i| {
            let mut bytes = Vec::new();
            image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                8,
                8,
                image::Rgb([i * 20, 3, 5]),
            ))
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
            EncodedImage::from_bytes(bytes, "t.png").unwrap()
        })
        .collect();
    for affinity in [true, false] {
        let c = client(
            Role::Verifier,
            "m",
            &[a.base_url(), b.base_url()],
            &format!("max_in_flight = 4\naffinity = {affinity}\n"),
        );
        // Five questions about each of twelve images, all at once.
        let reqs: Vec<ChatRequest> = images
            .iter()
            .flat_map(|img| (0..5).map(move |q| support::about(img, &format!("question {q}?"), 4)))
            .collect();
        let before = (a.requests().len(), b.requests().len());
        // Eight at a time: within the load bound (twice the 4 slots), so nothing spills and
        // every question must meet the others about its image.
        use futures::StreamExt as _;
        let results: Vec<_> = futures::stream::iter(reqs.iter().map(|r| c.chat(r)))
            .buffer_unordered(8)
            .collect()
            .await;
        assert!(results.iter().all(Result::is_ok));
        // How many of each image's questions reached each replica.
        let mut per_image: std::collections::BTreeMap<String, [usize; 2]> = Default::default();
        for (n, fake) in [&a, &b].into_iter().enumerate() {
            let skip = if n == 0 { before.0 } else { before.1 };
            for r in fake.requests().into_iter().skip(skip) {
                let image = r.body["messages"][0]["content"][0]["image_url"]["url"]
                    .as_str()
                    .unwrap()
                    .to_string();
                if affinity {
                    let session = r.session.clone().expect("X-Session-ID sent");
                    assert_eq!(session.len(), 16);
                } else {
                    assert!(r.session.is_none(), "no session id when affinity is off");
                }
                per_image.entry(image).or_default()[n] += 1;
            }
        }
        assert_eq!(per_image.len(), 12);
        // Questions that met the others about their image on one replica.
        let together: usize = per_image.values().map(|c| c[0].max(c[1])).sum();
        if affinity {
            assert_eq!(together, 60, "{per_image:?}");
        } else {
            assert!(
                together < 60,
                "least-loaded kept every image on one replica"
            );
        }
        let served = per_image
            .values()
            .fold([0, 0], |acc, c| [acc[0] + c[0], acc[1] + c[1]]);
        // With affinity, which replica an image goes to hashes its URL and port: all 12 on one
        // happens once in 2,048 runs, and is still affinity.
        if !affinity {
            assert!(served[0] > 0 && served[1] > 0, "{served:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_routed_around_and_picked_up_again() {
    let a = FakeServer::start("m", 4).await;
    let b = FakeServer::start("m", 4).await;
    let c = client(
        Role::Reasoner,
        "m",
        &[a.base_url(), b.base_url()],
        &format!("max_in_flight = 4\n{FAST_RETRY}"),
    );
    let req = hello();
    // Both replicas serve, with open keep-alive connections; then one is killed.
    futures::future::join_all((0..8).map(|_| c.chat(&req))).await;
    assert!(b.count(Route::Chat) > 0);
    let served_by_a = a.count(Route::Chat);
    let b_addr = b.stop().await;
    let results = futures::future::join_all((0..20).map(|_| c.chat(&req))).await;
    assert!(
        results.iter().all(Result::is_ok),
        "every request succeeds through the live replica"
    );
    assert_eq!(a.count(Route::Chat) - served_by_a, 20);
    assert!(c.stats().snapshot().set_aside >= 1);

    // The replica returns; after its cooldown a probe finds it and it takes traffic again.
    let b2 = FakeServer::start_at(b_addr, "m", 4).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..10 {
        c.chat(&req).await.unwrap();
    }
    assert!(
        b2.count(Route::Chat) >= 1,
        "the restarted replica is used again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_costs_one_timeout_not_one_per_wave() {
    let healthy = FakeServer::start("m", 4).await;
    let hung = FakeServer::start("m", 4).await;
    // Accepts connections and never answers (well past the timeout).
    hung.set_delay(Route::Chat, Duration::from_secs(600));
    let c = client(
        Role::Reasoner,
        "m",
        &[healthy.base_url(), hung.base_url()],
        "max_in_flight = 4\ntimeout_secs = 1\n[roles.reasoner.retry]\nmax_retries = 3\ninitial_backoff_ms = 1\nmax_backoff_ms = 5\nreplica_cooldown_ms = 60000\n",
    );
    let req = hello();
    let started = std::time::Instant::now();
    let results = futures::future::join_all((0..40).map(|_| c.chat(&req))).await;
    let took = started.elapsed();
    assert!(
        results.iter().all(Result::is_ok),
        "every request is answered"
    );
    // Half the requests were first assigned to the hung replica, four at a time. Only the first
    // wave reaches it: the requests queued behind it are assigned again once it is set aside.
    assert!(
        hung.count(Route::Chat) <= 4,
        "{} requests reached the hung replica (took {took:?})",
        hung.count(Route::Chat)
    );
    assert_eq!(healthy.count(Route::Chat), 40);
    assert_eq!(c.stats().snapshot().set_aside, 1);
    // What the progress line beside the bars shows: the hung replica, by its URL.
    assert_eq!(c.replicas_out(), (vec![hung.base_url()], 2));
    eprintln!("40 requests around a hung replica with a 1 s timeout: {took:?}");
}

#[tokio::test]
async fn a_greedy_unusable_answer_is_sent_once_and_not_held_against_the_replica() {
    let a = FakeServer::start("m", 4).await;
    let b = FakeServer::start("m", 4).await;
    let no_choices = r#"{"model":"m","choices":[]}"#;
    for f in [&a, &b] {
        f.script(
            Route::Chat,
            [
                Scripted::status(200, no_choices),
                Scripted::status(200, no_choices),
            ],
        );
    }
    let greedy = client(
        Role::Reasoner,
        "m",
        &[a.base_url(), b.base_url()],
        &format!("sampling = {{ temperature = 0.0 }}\n{FAST_RETRY}"),
    );
    let err = greedy.chat(&hello()).await.unwrap_err();
    assert!(err.to_string().contains("unusable answer"), "{err}");
    assert_eq!(
        err.attempts, 1,
        "the same request at temperature 0 answers the same"
    );
    assert_eq!(a.count(Route::Chat) + b.count(Route::Chat), 1);
    assert_eq!(
        greedy.stats().snapshot().set_aside,
        0,
        "the replica is well"
    );
    // Sampling: another attempt can answer otherwise, so it is retried.
    let sampled = client(
        Role::Reasoner,
        "m",
        &[a.base_url(), b.base_url()],
        &format!("sampling = {{ temperature = 0.7 }}\n{FAST_RETRY}"),
    );
    let ok = sampled.chat(&hello()).await.unwrap();
    assert!(ok.meta.attempts > 1, "{:?}", ok.meta);
    assert_eq!(sampled.stats().snapshot().set_aside, 0);
}

#[tokio::test]
async fn images_arrive_as_data_urls_of_the_original_bytes() {
    let fake = FakeServer::start("m", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.jpg");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]))
        .save(&path)
        .unwrap();
    let original = std::fs::read(&path).unwrap();
    let img = EncodedImage::from_file(&path).unwrap();
    let c = client(Role::Verifier, "m", &[fake.base_url()], "");
    let req = ChatRequest {
        messages: vec![Message {
            speaker: Speaker::User,
            parts: vec![Part::Image(img), Part::Text("Is there a cat?".into())],
        }],
        ..Default::default()
    };
    c.chat(&req).await.unwrap();
    let body = &fake.requests()[0].body;
    let url = body["messages"][0]["content"][0]["image_url"]["url"]
        .as_str()
        .unwrap();
    let (mime, bytes) = decode_data_url(url).expect("a valid data: URL");
    assert_eq!(mime, "image/jpeg");
    assert_eq!(bytes, original);
    assert_eq!(body["messages"][0]["content"][1]["text"], "Is there a cat?");
}

#[tokio::test]
async fn embeddings_in_vllm_messages_shape_are_validated() {
    let fake = FakeServer::start("clip", 8).await;
    let c = client(
        Role::Embedder,
        "clip",
        &[fake.base_url()],
        "dimension = 8\n",
    );
    let reply = c
        .embed(&[
            EmbedInput::Text("a dog".into()),
            EmbedInput::Text("a cat".into()),
        ])
        .await
        .unwrap();
    assert_eq!(reply.value.len(), 2);
    for v in &reply.value {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised");
    }
    let first = &fake.requests()[0].body;
    assert_eq!(first["messages"][0]["content"][0]["type"], "text");

    let wrong = client(
        Role::Embedder,
        "clip",
        &[fake.base_url()],
        "dimension = 16\n[roles.embedder.retry]\nmax_retries = 0\n",
    );
    let err = wrong
        .embed(&[EmbedInput::Text("x".into())])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind,
            ErrorKind::WrongDimension {
                expected: 16,
                got: 8
            }
        ),
        "{err}"
    );
}

/// A page of another server (a worker a router lists, a `metrics_urls` page elsewhere) is asked
/// without the role's key; the role's own servers get it.
#[tokio::test]
async fn the_api_key_goes_to_the_roles_own_servers_only() {
    let own = FakeServer::start("m", 4).await;
    let other = FakeServer::start("m", 4).await;
    let var = "IMAGESCOPE_TEST_KEY";
    let cfg = support::servers(
        Role::Verifier,
        "m",
        &[own.base_url()],
        &format!("api_key_env = \"{var}\"\n"),
    );
    let env = |name: &str| (name == var).then(|| "sk-test-secret-123".to_string());
    let c = RoleClient::with_env(
        Role::Verifier,
        &cfg.roles[&Role::Verifier],
        Path::new("s.toml"),
        env,
    )
    .unwrap();
    c.get_url(&format!("{}/models", own.base_url()))
        .await
        .unwrap();
    c.get_url(&format!("{}/models", other.base_url()))
        .await
        .unwrap();
    assert_eq!(
        own.requests()[0].auth.as_deref(),
        Some("Bearer sk-test-secret-123")
    );
    assert_eq!(other.requests()[0].auth, None, "no key to another server");
}

#[tokio::test]
async fn api_key_travels_as_bearer_and_a_missing_variable_is_named() {
    let fake = FakeServer::start("m", 4).await;
    let var = "IMAGESCOPE_TEST_KEY";
    let cfg = support::servers(
        Role::Reasoner,
        "m",
        &[fake.base_url()],
        &format!("api_key_env = \"{var}\"\n"),
    );
    let server = &cfg.roles[&Role::Reasoner];
    let env = |name: &str| (name == var).then(|| "sk-test-secret-123".to_string());
    let c = RoleClient::with_env(Role::Reasoner, server, Path::new("s.toml"), env).unwrap();
    c.chat(&hello()).await.unwrap();
    assert_eq!(
        fake.requests()[0].auth.as_deref(),
        Some("Bearer sk-test-secret-123")
    );
    assert!(
        !format!("{c:?}").contains("sk-test-secret-123"),
        "Debug never shows the key"
    );

    let err =
        RoleClient::with_env(Role::Reasoner, server, Path::new("s.toml"), |_| None).unwrap_err();
    assert!(
        err.to_string().contains(var) && err.to_string().contains("s.toml"),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_model_name_in_answers_is_an_error() {
    let fake = FakeServer::start("other-model", 4).await;
    let c = client(
        Role::Reasoner,
        "m",
        &[fake.base_url()],
        "[roles.reasoner.retry]\nmax_retries = 0\n",
    );
    let err = c.chat(&hello()).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::WrongModel { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_built_only_when_a_slot_is_free() {
    let fake = FakeServer::start("m", 4).await;
    fake.set_delay(Route::Chat, Duration::from_millis(20));
    // A noisy 256×256 PNG of about 200 KB: its base64 dominates each request body.
    let mut png = image::RgbImage::new(256, 256);
    for (i, p) in png.pixels_mut().enumerate() {
        *p = image::Rgb([(i * 7) as u8, (i * 13) as u8, (i * 29 % 251) as u8]);
    }
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(png)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    let img = EncodedImage::from_bytes(bytes, "noise.png").unwrap();
    let req = ChatRequest {
        messages: vec![Message {
            speaker: Speaker::User,
            parts: vec![Part::Text("Is there a dog?".into()), Part::Image(img)],
        }],
        ..Default::default()
    };
    let one = {
        let c = client(
            Role::Verifier,
            "m",
            &[fake.base_url()],
            "max_in_flight = 2\n",
        );
        c.chat(&req).await.unwrap();
        c.stats().snapshot().peak_body_bytes
    };
    assert!(one > 100_000, "one body holds the base64 image: {one}");
    // Forty requests queue behind two slots: at most two bodies exist at any moment.
    let c = client(
        Role::Verifier,
        "m",
        &[fake.base_url()],
        "max_in_flight = 2\n",
    );
    let results = futures::future::join_all((0..40).map(|_| c.chat(&req))).await;
    assert!(results.iter().all(Result::is_ok));
    let peak = c.stats().snapshot().peak_body_bytes;
    assert!(
        peak <= 2 * one,
        "peak {peak} bytes held, one body is {one}: bodies were built before a slot was free"
    );
}

/// Sends `text` as work of place `order` in a run (or outside any run).
async fn ordered(c: &RoleClient, order: Option<usize>, text: &str) {
    let req = ChatRequest {
        messages: vec![Message::text(Speaker::User, text)],
        ..Default::default()
    };
    let r = match order {
        Some(o) => imagescope::serving::in_order(o, c.chat(&req)).await,
        None => c.chat(&req).await,
    };
    assert!(r.is_ok(), "{r:?}");
}

fn arrival_texts(fake: &FakeServer) -> Vec<String> {
    fake.requests()
        .iter()
        .map(|r| {
            r.body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Starts `sends` 20 ms apart against one slot held 300 ms by the first.
async fn queue_behind_one_slot(sends: &[(Option<usize>, &str)]) -> Vec<String> {
    let fake = FakeServer::start("m", 4).await;
    fake.set_delay(Route::Chat, Duration::from_millis(300));
    let c = client(
        Role::Reasoner,
        "m",
        &[fake.base_url()],
        "max_in_flight = 1\n",
    );
    futures::future::join_all(sends.iter().enumerate().map(|(i, (o, t))| {
        let c = &c;
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
            ordered(c, *o, t).await;
        }
    }))
    .await;
    arrival_texts(&fake)
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_of_earlier_queries_go_first_and_the_rest_keep_arrival_order() {
    // "a" holds the only slot; the others queue, the latest query first: they reach the server
    // in the queries' order, not in arrival order.
    let order = [
        (Some(5), "a"),
        (Some(9), "b"),
        (Some(7), "c"),
        (Some(1), "d"),
    ];
    assert_eq!(queue_behind_one_slot(&order).await, ["a", "d", "c", "b"]);
    // Work outside a run's order (a search, the index) waits behind it, first come first served.
    let mixed = [(None, "a"), (None, "b"), (Some(3), "c"), (None, "d")];
    assert_eq!(queue_behind_one_slot(&mixed).await, ["a", "c", "b", "d"]);
}
