//! `imagescope serve`, in process, against fake model servers (TEST DOUBLES over the solid-colour
//! world of tests/support/world.rs: they run no model): the SSE event order and what each event
//! holds, the non-streamed answer, stages asked for, the token rule, keys and run pages that name
//! no file, an oversized body, a client gone mid-search, a model server down, the page with and
//! without JavaScript's help, and the OpenAPI document.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use imagescope::config::Stage;
use imagescope::serve::ServeArgs;
use imagescope::serving::CacheMode;
use serde_json::{Value, json};
use support::env::Env;
use support::fake_server::{Outage, Route};

/// An indexed folder experiment (the twelve test images under data/bench/photos).
async fn world() -> (Env, PathBuf) {
    let env = Env::start("photos", |i| format!("img{i:02}"), 1).await;
    let exp = env.configs("folder", "all", "", None);
    env.index(&exp).await;
    (env, exp)
}

fn args(exp: &std::path::Path, host: &str, token: Option<&str>) -> ServeArgs {
    ServeArgs {
        target: support::search_target(exp.to_path_buf(), CacheMode::On),
        host: host.parse().unwrap(),
        port: 0,
        token: token.map(str::to_string),
        uploads_max_mib: 2048,
    }
}

use support::serve;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The body of a GET, as text.
async fn get_text(url: impl reqwest::IntoUrl) -> String {
    http().get(url).send().await.unwrap().text().await.unwrap()
}

/// The body of a GET, as JSON.
async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// Reads an SSE body into (event name, JSON data) pairs.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = "message".to_string();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            (!data.is_empty()).then(|| (name, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

/// A GET sent as written (no client tidies its path); returns the whole answer.
async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn keys(ev: &Value) -> Vec<String> {
    ev["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

async fn sse(base: &str, body: Value) -> Vec<(String, Value)> {
    let resp = http()
        .post(format!("{base}/api/search"))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    events(&resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_streams_s1_then_s2_then_s3_and_the_ranking_sharpens() {
    let (env, exp) = world().await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    // The reasoner thinks for a second: the preview (the words searched as they are) comes
    // first, even on a busy machine.
    env.reasoner[0].set_delay(Route::Chat, Duration::from_millis(1000));
    let got = sse(&base, json!({"text": "black dog sofa", "k": 5})).await;
    env.reasoner[0].set_delay(Route::Chat, Duration::ZERO);
    assert_eq!(got[0].0, "preview", "{got:?}");
    assert_eq!(got[0].1["stage"], "preview");
    assert_eq!(got[0].1["descriptions"][0], "black dog sofa");
    assert_eq!(got.iter().filter(|(n, _)| n == "preview").count(), 1);
    let got: Vec<(String, Value)> = got.into_iter().filter(|(n, _)| n != "preview").collect();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["stage", "stage", "stage", "done"], "{got:?}");
    let stages: Vec<&str> = got[..3]
        .iter()
        .map(|(_, e)| e["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["s1", "s2", "s3"]);
    let (s1, s2, s3) = (&got[0].1, &got[1].1, &got[2].1);
    // The fake reasoner searches with "black": dogs and cats tie above the sofa; the verifier's
    // "sofa" proposition brings the black dog on the sofa (image 8) to the top.
    assert_eq!(s1["descriptions"][0], "black");
    assert_ne!(keys(s1)[0], "photos/img08.png", "{s1}");
    assert_eq!(keys(s2)[0], "photos/img08.png", "{s2}");
    assert_eq!(keys(s3)[0], "photos/img08.png");
    assert_eq!(keys(s1).len(), 5);
    let top = &s2["results"][0];
    assert!(!top["verdicts"].as_array().unwrap().is_empty());
    assert!(
        top["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["answer"] == true && v["expected"] == "yes"),
        "{top}"
    );
    assert_eq!(s3["results"][0]["accepted"], true);
    assert!(s1["results"][0]["verdicts"].as_array().unwrap().is_empty());
    assert!(s1["results"][0]["score"].as_f64().unwrap() > 0.0);
    assert_eq!(got[3].1["status"], "done");
    // Each image URL answers, and its thumbnail is then kept on disk.
    let thumb = s1["results"][0]["thumb"].as_str().unwrap().to_string();
    let resp = http().get(format!("{base}{thumb}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("image/")
    );
    let kept = std::fs::read_dir(env.path("runs/serve/thumbs"))
        .unwrap()
        .count();
    assert_eq!(kept, 1);
    let full = s1["results"][0]["full"].as_str().unwrap();
    assert_eq!(
        http()
            .get(format!("{base}{full}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_answer_and_fewer_stages_when_asked() {
    let (env, exp) = world().await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    let resp = http()
        .post(format!("{base}/api/search"))
        .json(&json!({"text": "black dog sofa", "k": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "done");
    // Not streamed: no preview is searched (nobody would see it), only the three stages.
    assert_eq!(v["stages"].as_array().unwrap().len(), 3);
    assert!(
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["stage"] != "preview")
    );
    assert_eq!(keys(&v)[0], "photos/img08.png");
    // Stage 1 only: no verifier or evaluator request is sent.
    let verifier_before = env.verifier.count(Route::Chat);
    let evaluator_before = env.evaluator.count(Route::Chat);
    let got = sse(&base, json!({"text": "white cat", "stages": ["s1"]})).await;
    let names: Vec<&str> = got
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "preview")
        .collect();
    assert_eq!(names, ["stage", "done"]);
    assert_eq!(env.verifier.count(Route::Chat), verifier_before);
    assert_eq!(env.evaluator.count(Route::Chat), evaluator_before);
    // A composed query: a gallery image plus an edit; a dialogue refined by a turn.
    let got = sse(
        &base,
        json!({"text": "a white cat", "reference": "photos/img10.png", "stages": ["s1"]}),
    )
    .await;
    // An edit says nothing alone: no preview.
    assert_eq!(got[0].0, "stage");
    let got = sse(
        &base,
        json!({"dialogue": ["a black animal", "is it a cat? yes"], "stages": ["s1"]}),
    )
    .await;
    let got: Vec<(String, Value)> = got.into_iter().filter(|(n, _)| n != "preview").collect();
    assert_eq!(got[0].1["round"], 1, "{got:?}");
    // Bad requests say what is wrong.
    for (body, says) in [
        (
            json!({"text": "x", "reference": "../servers.toml"}),
            "not an image of this gallery",
        ),
        (json!({"txt": "x"}), "unknown field"),
        (json!({"text": "x", "stages": ["s4"]}), "unknown variant"),
    ] {
        let resp = http()
            .post(format!("{base}/api/search"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_client_error(), "{body}");
        let p: Value = resp.json().await.unwrap();
        assert!(p["message"].as_str().unwrap().contains(says), "{body}: {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_every_call_but_health_needs_the_token() {
    let (_env, exp) = world().await;
    let refused = imagescope::serve::app(&args(&exp, "0.0.0.0", None)).await;
    let why = refused.err().unwrap().to_string();
    assert!(why.contains("IMAGESCOPE_SERVE_TOKEN"), "{why}");
    let base = serve(&args(&exp, "0.0.0.0", Some("s3cret-token"))).await;
    assert_eq!(
        http()
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in [
        "/",
        "/api/runs",
        "/openapi.json",
        "/api/images/photos%2Fimg01.png",
    ] {
        let r = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http()
            .get(format!("{base}{path}"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http()
            .get(format!("{base}{path}"))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = http()
        .post(format!("{base}/api/search?token=s3cret-token"))
        .json(&json!({"text": "red car", "stages": ["s1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .post(format!("{base}/api/search"))
        .json(&json!({"text": "red car"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The page opened as /?token= keeps it in a cookie its own calls and pictures carry.
    let r = http()
        .get(format!("{base}/?token=s3cret-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let r = http()
        .get(format!("{base}/api/images/photos%2Fimg01.png"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(format!("{base}/api/runs"))
        .header(
            "cookie",
            format!("{}=wrong", pair.split('=').next().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sites_names_and_pages_are_refused_and_a_full_queue_says_busy() {
    let env = Env::start("photos", |i| format!("img{i:02}"), 1).await;
    let exp = env.configs("folder", "all", "queries_in_flight = 1", None);
    env.index(&exp).await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    // DNS rebinding: a name that is not this machine's, pointed at 127.0.0.1.
    let r = http()
        .get(format!("{base}/api/runs"))
        .header("host", "photos.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http()
        .get(format!("{base}/api/runs"))
        .header("host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A page of another site making the browser search here.
    let r = http()
        .get(format!("{base}/?q=red+car"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A link from another site to the bare page opens it; the same page in a frame does not.
    let nav = |dest: &'static str| {
        http()
            .get(format!("{base}/"))
            .header("sec-fetch-site", "cross-site")
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-dest", dest)
            .send()
    };
    assert_eq!(nav("document").await.unwrap().status(), 200);
    assert_eq!(nav("iframe").await.unwrap().status(), 403);
    // One search at a time (queries_in_flight = 1), four running or waiting at most.
    env.verifier.set_delay(Route::Chat, Duration::from_secs(2));
    let mut held = Vec::new();
    for _ in 0..imagescope::serve::QUEUE_FACTOR {
        let resp = http()
            .post(format!("{base}/api/search"))
            .header("accept", "text/event-stream")
            .json(&json!({"text": "black dog sofa"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    let r = http()
        .post(format!("{base}/api/search"))
        .json(&json!({"text": "red car"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["kind"], "busy");
    let h: Value = get_json(format!("{base}/health")).await;
    assert_eq!(h["searches_running"], 1, "one runs, the others wait: {h}");
    drop(held);
    env.verifier.set_delay(Route::Chat, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_names_a_file_and_bodies_are_capped() {
    let (env, exp) = world().await;
    // A run folder with a report written by the report's own writer, over a real search's record.
    let session = imagescope::session::open(&args(&exp, "127.0.0.1", None).target)
        .await
        .unwrap();
    let query = imagescope::datasets::Query {
        id: "q1".into(),
        reference: None,
        instruction: imagescope::datasets::Instruction::Text {
            text: "white cat".into(),
        },
        targets: vec![imagescope::datasets::ImageKey("photos/img09.png".into())],
        subset: None,
        aspects: vec![],
        shared_concept: None,
    };
    let record = imagescope::pipeline::query::run(&session.ctx, &query).await;
    let run = env.path("runs/folder/demo/20260101T000000Z");
    std::fs::create_dir_all(&run).unwrap();
    let input = imagescope::report::ReportInput::from_records(
        "demo".into(),
        vec![Stage::S1, Stage::S2, Stage::S3],
        vec![],
        session.ctx.paths.clone(),
        [record],
    );
    imagescope::report::write_all(&input, &run).unwrap();
    std::fs::write(run.join("run.json"), "{}").unwrap();
    std::fs::write(run.join("queries.jsonl"), "{\"secret\": 1}\n").unwrap();
    std::fs::write(
        run.join("summary.json"),
        r#"{"queries": 7, "failed": [["q3", "the reasoner failed"]]}"#,
    )
    .unwrap();
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    let runs: Value = get_json(format!("{base}/api/runs")).await;
    assert_eq!(runs[0]["path"], "folder/demo/20260101T000000Z", "{runs}");
    assert_eq!(
        (runs[0]["queries"].as_u64(), runs[0]["failed"].as_u64()),
        (Some(7), Some(1))
    );
    let report = runs[0]["report"].as_str().unwrap();
    let page = get_text(format!("{base}{report}")).await;
    // Every picture of the report is served by the API: none is left as a file:// URL.
    assert!(
        page.contains("/api/images/photos%2Fimg09.png/full"),
        "{page}"
    );
    assert!(!page.contains("file:"), "{page}");
    // Paths the client would tidy up before sending go raw, as an attacker would send them.
    for raw in [
        "/runs/folder/demo/20260101T000000Z/../../../../servers.toml",
        "/runs/folder/demo/20260101T000000Z/%2e%2e/%2e%2e/%2e%2e/%2e%2e/servers.toml",
        "/api/images/../../servers.toml/full",
    ] {
        let answer = raw_get(&base, raw).await;
        let status = answer.split(' ').nth(1).unwrap_or("");
        assert!(status == "404" || status == "400", "{raw}: {answer}");
        assert!(!answer.contains("roles."), "{raw}: {answer}");
    }
    for path in [
        "/api/images/..%2F..%2Fservers.toml",
        "/api/images/%2Fetc%2Fpasswd/full",
        "/api/images/photos%2F..%2F..%2F..%2Fservers.toml/full",
        "/runs/folder/demo/20260101T000000Z/queries.jsonl",
        "/runs/folder/demo/20260101T000000Z/run.json",
        "/runs/..%2F..%2Fservers.toml/report.html",
        "/runs/folder/demo/x/report.html",
    ] {
        let r = http().get(format!("{base}{path}")).send().await.unwrap();
        assert!(
            r.status() == 404 || r.status() == 400,
            "{path}: {}",
            r.status()
        );
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("roles.") && !text.contains("secret"),
            "{path}: {text}"
        );
    }
    let huge = "x".repeat(imagescope::serve::MAX_BODY_BYTES + 1);
    let r = http()
        .post(format!("{base}/api/search"))
        .header("content-type", "application/json")
        .body(format!("{{\"text\": \"{huge}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["kind"], "too-large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_search_cancels_it() {
    let (env, exp) = world().await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    // The verifier answers slowly: stage 2 would take seconds.
    env.verifier.set_delay(Route::Chat, Duration::from_secs(2));
    let mut resp = http()
        .post(format!("{base}/api/search"))
        .header("accept", "text/event-stream")
        .json(&json!({"text": "black dog sofa"}))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("event: stage") {
        let chunk = resp.chunk().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let health: Value = get_json(format!("{base}/health")).await;
    assert_eq!(health["searches_running"], 1);
    drop(resp);
    let mut running = 1;
    // A search left running would take ~10 s more (36 verifier calls, 8 at a time, 2 s each);
    // allow the server 6 s to notice on a busy machine.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let h: Value = get_json(format!("{base}/health")).await;
        running = h["searches_running"].as_u64().unwrap();
        if running == 0 {
            break;
        }
    }
    assert_eq!(running, 0, "the search went on after its client left");
    // Nothing more reaches the verifier once the requests in flight have been dropped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = env.verifier.count(Route::Chat);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.verifier.count(Route::Chat), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_server_down_is_an_error_event_not_a_hang() {
    let (env, exp) = world().await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    env.reasoner[0].set_outage(Some(Outage::Dead));
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        sse(&base, json!({"text": "red car"})),
    )
    .await
    .expect("the search hung");
    let last = got.last().unwrap();
    assert_eq!(last.0, "error", "{got:?}");
    let msg = last.1["message"].as_str().unwrap();
    assert!(
        msg.contains("search failed") && msg.contains("doctor"),
        "{msg}"
    );
    // Not streamed: 502 with the same problem.
    let r = http()
        .post(format!("{base}/api/search"))
        .json(&json!({"text": "red car"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    env.reasoner[0].set_outage(None);
    let got = sse(&base, json!({"text": "red car", "stages": ["s1"]})).await;
    assert_eq!(got.last().unwrap().0, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_answers_without_javascript_and_the_api_is_described() {
    let (_env, exp) = world().await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    let resp = http().get(format!("{base}/")).send().await.unwrap();
    // No other site may show the page in a frame.
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(
        resp.headers()["content-security-policy"],
        "frame-ancestors 'none'"
    );
    let page = resp.text().await.unwrap();
    assert!(page.contains("<form id=\"form\" method=\"get\" action=\"/\">"));
    assert!(page.contains("12 images"));
    assert!(!page.contains("class=\"card\""));
    let page = get_text(format!("{base}/?q=white+cat")).await;
    // minijinja escapes '/' in attributes as &#x2f;, which browsers read back as '/'.
    let page = page.replace("&#x2f;", "/");
    let first = page.find("class=\"card\"").expect(&page);
    let card = &page[first..];
    let img = card.find("<img src=").unwrap();
    assert!(
        card[img..].starts_with("<img src=\"/api/images/photos%2Fimg09.png\""),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page fetches nothing from elsewhere"
    );
    let doc: Value = get_json(format!("{base}/openapi.json")).await;
    for path in [
        "/api/search",
        "/api/images/{key}",
        "/api/images/{key}/full",
        "/api/runs",
        "/health",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["StageEvent"].is_object());
}

/// A world image's bytes (a solid colour the fakes read back as its description).
fn world_photo(env: &Env, i: usize) -> Vec<u8> {
    std::fs::read(env.data.join(format!("photos/img{i:02}.png"))).unwrap()
}

/// A photo from outside the gallery that the fakes describe as world image `i`: the same colour
/// at another size, so other bytes.
fn outside_photo(i: usize) -> Vec<u8> {
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(12, 10, image::Rgb(support::world::colour(i)))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    png.into_inner()
}

async fn upload(base: &str, bytes: Vec<u8>) -> reqwest::Response {
    http()
        .post(format!("{base}/api/uploads"))
        .header("content-type", "image/png")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_photo_is_described_once_and_searched_from_and_kept() {
    let (env, exp) = world().await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    let health: Value = get_json(format!("{base}/health")).await;
    assert_eq!(health["uploads"], true, "{health}");
    let page = get_text(format!("{base}/")).await;
    assert!(
        page.contains("id=\"drop\""),
        "the page offers the drop zone"
    );
    // A photo of a black dog (as image 6 is), from outside the gallery.
    let captions_before = env.captioner.count(Route::Chat);
    let r = upload(&base, outside_photo(6)).await;
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.unwrap();
    let key = u["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("upload:"), "{u}");
    assert_eq!(u["caption"], "A photo of black dog.");
    assert_eq!(env.captioner.count(Route::Chat), captions_before + 1);
    // The same bytes again: the same key, and the captioner is not asked again.
    let again: Value = upload(&base, outside_photo(6)).await.json().await.unwrap();
    assert_eq!(again["key"], u["key"]);
    assert_eq!(env.captioner.count(Route::Chat), captions_before + 1);
    // Its thumbnail and file are served under its key.
    let url = format!("{base}/api/images/{}", key.replace(':', "%3A"));
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        http()
            .get(format!("{url}/full"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        outside_photo(6)
    );
    // Searched from: the reasoner reads the caption as the reference, every stage runs, and the
    // upload itself is never a result.
    let got = sse(
        &base,
        json!({"text": "make it white", "reference": key, "k": 12}),
    )
    .await;
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["stage", "stage", "stage", "done"], "{got:?}");
    assert!(
        got[3].1["fallbacks"].as_array().unwrap().is_empty(),
        "{got:?}"
    );
    let asked = env.reasoner[0]
        .requests()
        .iter()
        .any(|r| r.body.to_string().contains("A photo of black dog."));
    assert!(asked, "the reasoner was given the upload's caption");
    for (_, ev) in &got[..3] {
        assert!(!keys(ev).contains(&key), "{ev}");
    }
    // A later `serve` over the same runs folder knows the upload without it being sent again.
    let base2 = serve(&args(&exp, "127.0.0.1", None)).await;
    let got = sse(
        &base2,
        json!({"text": "make it white", "reference": key, "stages": ["s1"]}),
    )
    .await;
    assert_eq!(got.last().unwrap().0, "done", "{got:?}");
    assert_eq!(env.captioner.count(Route::Chat), captions_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_their_disk_allowance_go_oldest_first_and_are_refused_by_name() {
    let (env, exp) = world().await;
    // An allowance of nothing: only the latest upload is kept.
    let tight = ServeArgs {
        uploads_max_mib: 0,
        ..args(&exp, "127.0.0.1", None)
    };
    let base = serve(&tight).await;
    let key_of = |v: Value| v["key"].as_str().unwrap().to_string();
    let first = key_of(upload(&base, outside_photo(6)).await.json().await.unwrap());
    // Its thumbnail is made (and kept) once asked for.
    let thumb = format!("{base}/api/images/{}", first.replace(':', "%3A"));
    assert_eq!(http().get(&thumb).send().await.unwrap().status(), 200);
    let thumbs = || {
        std::fs::read_dir(env.path("runs/serve/thumbs"))
            .unwrap()
            .count()
    };
    assert_eq!(thumbs(), 1);
    let second = key_of(upload(&base, outside_photo(7)).await.json().await.unwrap());
    // The first went with its thumbnail.
    assert_eq!(thumbs(), 0);
    let uploads_dir = env.path("runs/serve/uploads");
    let kept = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&uploads_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let stem = |k: &str| k.trim_start_matches("upload:").to_string();
    assert_eq!(
        kept(),
        [
            format!("{}.caption.txt", stem(&second)),
            format!("{}.png", stem(&second))
        ]
    );
    // The first is refused by name, with what to do; the second is searched from.
    let r = http()
        .post(format!("{base}/api/search"))
        .json(&json!({"text": "make it white", "reference": first, "stages": ["s1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let msg = r.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("no longer) kept on this server") && msg.contains("upload the photo again"),
        "{msg}"
    );
    let got = sse(
        &base,
        json!({"text": "make it white", "reference": second, "stages": ["s1"]}),
    )
    .await;
    assert_eq!(got.last().unwrap().0, "done", "{got:?}");
    // Sent again, the first is kept and described again (the request cache may answer for the
    // captioner) and is now the one kept.
    let again: Value = upload(&base, outside_photo(6)).await.json().await.unwrap();
    assert_eq!(again["key"], first.as_str());
    assert_eq!(again["caption"], "A photo of black dog.");
    assert_eq!(kept().len(), 2);
    assert!(kept()[0].starts_with(&stem(&first)), "{:?}", kept());
    // A later `serve` with room for both keeps what is on disk; one with an allowance of
    // nothing over a folder holding two keeps the most recent.
    std::fs::copy(
        uploads_dir.join(format!("{}.png", stem(&first))),
        uploads_dir.join("0123456789abcdef.png"),
    )
    .unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(uploads_dir.join("0123456789abcdef.png"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    serve(&args(&exp, "127.0.0.1", None)).await;
    assert_eq!(kept().len(), 3);
    serve(&tight).await;
    assert_eq!(kept().len(), 2, "{:?}", kept());
    assert!(kept()[0].starts_with(&stem(&first)), "{:?}", kept());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_a_running_search_uses_is_kept_past_the_allowance_until_it_ends() {
    let (env, exp) = world().await;
    let base = serve(&ServeArgs {
        uploads_max_mib: 0,
        ..args(&exp, "127.0.0.1", None)
    })
    .await;
    let key_of = |v: Value| v["key"].as_str().unwrap().to_string();
    let first = key_of(upload(&base, outside_photo(6)).await.json().await.unwrap());
    let photo = |k: &str| {
        env.path(&format!(
            "runs/serve/uploads/{}.png",
            k.trim_start_matches("upload:")
        ))
    };
    // A search from the first, slowed in stage 2 so it is still running when others upload.
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(300));
    let search = {
        let (base, first) = (base.clone(), first.clone());
        tokio::spawn(async move {
            sse(
                &base,
                json!({"text": "make it white", "reference": first, "k": 12}),
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.verifier.count(Route::Chat) == 0 {
        assert!(std::time::Instant::now() < deadline, "stage 2 never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = key_of(upload(&base, outside_photo(7)).await.json().await.unwrap());
    assert!(
        photo(&first).is_file(),
        "the search's reference was removed under it"
    );
    // The search ends with every stage done from its reference (stage 3 reads its file).
    let got = search.await.unwrap();
    env.verifier.set_delay(Route::Chat, Duration::ZERO);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["stage", "stage", "stage", "done"], "{got:?}");
    assert!(
        got[3].1["fallbacks"].as_array().unwrap().is_empty(),
        "{got:?}"
    );
    // Once it has ended, the next upload takes both earlier ones' place.
    let third = key_of(upload(&base, outside_photo(8)).await.json().await.unwrap());
    assert!(!photo(&first).exists() && !photo(&second).exists());
    assert!(photo(&third).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_are_not_photos_too_big_or_without_a_captioner_are_refused_clearly() {
    let (env, exp) = world().await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    let refused = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let p: Value = r.json().await.unwrap();
        (status, p["message"].as_str().unwrap_or("").to_string())
    };
    let (status, msg) = refused(upload(&base, b"not a photo".to_vec()).await).await;
    assert_eq!(status, 400);
    assert!(msg.contains("not a PNG, JPEG or WebP image"), "{msg}");
    let (status, msg) = refused(upload(&base, vec![]).await).await;
    assert_eq!((status, msg.contains("empty")), (400, true), "{msg}");
    // A PNG whose header declares 9,000 × 9,000 pixels, with one pixel's data behind it.
    let mut big = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(1, 1)
        .write_to(&mut big, image::ImageFormat::Png)
        .unwrap();
    let mut big = big.into_inner();
    big[16..20].copy_from_slice(&9_000u32.to_be_bytes());
    big[20..24].copy_from_slice(&9_000u32.to_be_bytes());
    let crc = crc32fast::hash(&big[12..29]); // PNG's chunk checksum
    big[29..33].copy_from_slice(&crc.to_be_bytes());
    let (status, msg) = refused(upload(&base, big).await).await;
    assert_eq!(status, 400);
    assert!(
        msg.contains("9000×9000") && msg.contains("megapixels"),
        "{msg}"
    );
    // A GIF: not what browsers and model servers all read.
    let mut gif = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(4, 4)
        .write_to(&mut gif, image::ImageFormat::Gif)
        .unwrap();
    let (status, msg) = refused(upload(&base, gif.into_inner()).await).await;
    assert_eq!(status, 400);
    assert!(
        msg.contains("GIF") && msg.contains("PNG, JPEG or WebP"),
        "{msg}"
    );
    // A cut photo: its header is fine, its pixels are not; nothing is kept.
    let mut cut = world_photo(&env, 3);
    cut.truncate(cut.len() / 2);
    let (status, msg) = refused(upload(&base, cut).await).await;
    assert_eq!(status, 400, "{msg}");
    assert!(!msg.contains(env.path("").to_str().unwrap()), "{msg}");
    let over = vec![0u8; imagescope::serve::MAX_UPLOAD_BYTES + 1];
    let (status, msg) = refused(upload(&base, over).await).await;
    assert_eq!(status, 413);
    assert!(msg.contains("20 MiB"), "{msg}");
    // The captioner failing is said, not hidden.
    env.captioner.set_outage(Some(Outage::Dead));
    let (status, msg) = refused(upload(&base, outside_photo(2)).await).await;
    assert_eq!(status, 502, "{msg}");
    assert!(msg.contains("captioner"), "{msg}");
    env.captioner.set_outage(None);
    // Nothing is kept of a photo refused or not described.
    let kept: Vec<String> = std::fs::read_dir(env.path("runs/serve/uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
    // A photo over a megabyte is taken (the search route's 64 KiB cap is not this one's; the
    // fake captioner takes bodies up to 2 MB).
    let mut rng = fastrand::Rng::with_seed(7);
    let noise = image::RgbImage::from_fn(640, 640, |_, _| {
        image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    assert!(png.len() > 1 << 20, "{} bytes", png.len());
    let r = upload(&base, png).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // A captioner that did not answer when `serve` started: uploads are refused with what to do
    // instead, and the page offers none.
    env.captioner.set_outage(Some(Outage::Dead));
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    let (status, msg) = refused(upload(&base, outside_photo(6)).await).await;
    assert_eq!(status, 503);
    assert!(
        msg.contains("none that answered") && msg.contains("edit this"),
        "{msg}"
    );
    // Neither a server's address nor a file of this machine is in the answer.
    assert!(
        !msg.contains("127.0.0.1") && !msg.contains(env.path("").to_str().unwrap()),
        "{msg}"
    );
    let page = get_text(format!("{base}/")).await;
    assert!(!page.contains("id=\"drop\""));
    // A gallery photo's own bytes need no captioner: they are that photo.
    let r = upload(&base, world_photo(&env, 6)).await;
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.unwrap();
    assert_eq!(
        (&u["key"], &u["in_gallery"]),
        (&json!("photos/img06.png"), &json!(true)),
        "{u}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_a_gallery_photos_bytes_is_that_photo_and_left_out_of_its_results() {
    let (env, exp) = world().await;
    let base = serve(&args(&exp, "127.0.0.1", None)).await;
    let captions_before = env.captioner.count(Route::Chat);
    let r = upload(&base, world_photo(&env, 6)).await;
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.unwrap();
    // Its key and caption are the database's, as "edit this" on it would give; no model is asked
    // and nothing is kept.
    assert_eq!(u["key"], "photos/img06.png", "{u}");
    assert_eq!(u["in_gallery"], true, "{u}");
    assert_eq!(u["caption"], "A photo of black dog.", "{u}");
    assert_eq!(env.captioner.count(Route::Chat), captions_before);
    let kept = std::fs::read_dir(env.path("runs/serve/uploads"))
        .unwrap()
        .count();
    assert_eq!(kept, 0);
    // A gallery photo replaced on disk since it was indexed: its old bytes are an upload of
    // their own, not the key whose file now shows something else.
    let old_bytes = world_photo(&env, 5);
    std::fs::write(env.data.join("photos/img05.png"), outside_photo(7)).unwrap();
    let replaced: Value = upload(&base, old_bytes).await.json().await.unwrap();
    assert_eq!(replaced["in_gallery"], false, "{replaced}");
    assert!(
        replaced["key"].as_str().unwrap().starts_with("upload:"),
        "{replaced}"
    );
    // Another photo is still an upload.
    let other: Value = upload(&base, outside_photo(6)).await.json().await.unwrap();
    assert_eq!(other["in_gallery"], false, "{other}");
    assert!(
        other["key"].as_str().unwrap().starts_with("upload:"),
        "{other}"
    );
    // Searched from, it is left out of its own results at every stage, as a benchmark's
    // reference is.
    let got = sse(
        &base,
        json!({"text": "make it white", "reference": u["key"], "k": 12}),
    )
    .await;
    assert_eq!(got.last().unwrap().0, "done", "{got:?}");
    for (_, ev) in &got[..got.len() - 1] {
        assert!(!keys(ev).contains(&"photos/img06.png".to_string()), "{ev}");
    }
}
