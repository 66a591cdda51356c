//! `imagescope serve` in a real browser: Debian's Chromium, headless, driven over the Chrome
//! DevTools Protocol (a websocket; a few lines of CDP below). The page is served over fake model
//! servers (TEST DOUBLES over the solid-colour world of tests/support/world.rs). It types a
//! query and presses Enter, waits for stage 1's thumbnails, sees the order change when stage 2
//! lands, opens a candidate's verdicts, opens a run's report through the runs tab, and saves a
//! screenshot to `target/tmp/serve-browser.png` (and to `$SERVE_SCREENSHOT` when set).
//!
//! Ignored by default (it needs Chromium): `.ci/run` installs it and runs
//! `cargo test --test serve_browser -- --ignored --nocapture`. `CHROMIUM=/path` picks the browser.
//!
//! With `SERVE_BROWSER_CONFIG=configs/demo.toml` (and the CPU stack up, `launch/cpu/up.sh`) the
//! same page is measured over the demo's real models instead: the printed `browser:` line gives
//! the time from Enter to stage 1's results on screen (BENCHMARKS.md "serve").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::print_stdout
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use imagescope::serve::ServeArgs;
use imagescope::serving::CacheMode;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A CDP connection to one page.
struct Page {
    ws: Socket,
    next: u64,
}

impl Page {
    /// Sends a command and waits for its answer (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer from the browser"))
                .unwrap()
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is truthy.
    async fn until(&mut self, expr: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expr).await;
            if !(v.is_null() || v == false) {
                return v;
            }
            assert!(start.elapsed() < limit, "waited {limit:?} for {expr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.until(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            Duration::from_secs(30),
        )
        .await;
    }

    async fn key(&mut self, key: &str, code: u32) {
        for kind in ["keyDown", "keyUp"] {
            let mut p =
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code});
            if kind == "keyDown" && key == "Enter" {
                p["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", p).await;
        }
    }

    async fn screenshot(&mut self, to: &Path) {
        use base64::Engine as _;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(to, png).unwrap();
        println!("screenshot: {}", to.display());
    }
}

/// Starts headless Chromium; returns the process and a CDP connection to its page.
async fn chromium(profile: &Path) -> (tokio::process::Child, Page) {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--window-size=1280,900",
            "--remote-debugging-port=0",
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (install Debian's chromium, or set CHROMIUM)")
        });
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let browser_ws = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_string();
            }
        }
        panic!("chromium exited before listening")
    })
    .await
    .expect("chromium did not start within 30 s");
    // Keep reading its stderr so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let port = browser_ws
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let list: Value = reqwest::get(format!("http://{port}/json/list"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target");
    let (ws, _) = tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().unwrap())
        .await
        .unwrap();
    let mut page = Page { ws, next: 0 };
    page.call("Page.enable", json!({})).await;
    page.call("Runtime.enable", json!({})).await;
    (child, page)
}

/// Serves the experiment `config` on a free loopback port; returns its base URL.
async fn serve(config: PathBuf) -> String {
    support::serve(&ServeArgs {
        target: support::search_target(config, CacheMode::On),
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        token: None,
        uploads_max_mib: 2048,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium (Debian's chromium package); .ci/run installs it"]
async fn a_person_searches_sees_s1_then_the_order_change_and_opens_a_report() {
    let live = std::env::var("SERVE_BROWSER_CONFIG").ok();
    // The fake world, unless a real experiment is named.
    let env = match live {
        None => {
            let env = support::env::Env::start("photos", |i| format!("img{i:02}"), 1).await;
            let exp = env.configs("folder", "all", "", None);
            env.index(&exp).await;
            Some((env, exp))
        }
        Some(_) => None,
    };
    let config = match (&env, &live) {
        (Some((_, exp)), _) => exp.clone(),
        (None, Some(c)) => std::path::absolute(c).unwrap(),
        (None, None) => unreachable!(),
    };
    let base = serve(config).await;
    // A run folder whose report shows a gallery picture by its file:// URL.
    let report_image = if let Some((env, _)) = &env {
        let run = env.path("runs/folder/demo/20260101T000000Z");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("run.json"), "{}").unwrap();
        let img = std::path::absolute(env.data.join("photos/img08.png")).unwrap();
        let url = url::Url::from_file_path(img).unwrap();
        std::fs::write(
            run.join("report.html"),
            format!("<!doctype html><title>run report</title><h1>demo</h1><img id=\"pic\" src=\"{url}\">"),
        )
        .unwrap();
        true
    } else {
        false
    };

    let profile = tempfile::tempdir().unwrap();
    let (mut browser, mut page) = chromium(profile.path()).await;
    page.goto(&format!("{base}/")).await;
    let query = if live.is_some() {
        "a red flower in a green garden"
    } else {
        "black dog sofa"
    };
    page.eval("document.getElementById('q').focus()").await;
    page.call("Input.insertText", json!({"text": query})).await;
    page.key("Enter", 13).await;
    // Stage 1's thumbnails on screen.
    page.until(
        "document.querySelectorAll('#grid .card img').length > 0 && window.imagescope.timings.s1 !== undefined",
        Duration::from_secs(120),
    )
    .await;
    // The order stage 1 drew, as the page kept it: read from the grid now, it may already be
    // stage 2's (the fakes answer stage 2 about 100 ms later; a busy machine polls slower).
    let s1_order = page.eval("window.imagescope.drawn.s1").await;
    // Then the rest.
    let timings = page
        .until(
            "(window.imagescope.timings.done !== undefined || window.imagescope.timings.error !== undefined) && window.imagescope.timings",
            Duration::from_secs(600),
        )
        .await;
    assert!(
        timings.get("error").is_none(),
        "the search failed: {timings}"
    );
    let final_order = page
        .eval("[...document.querySelectorAll('#grid .card')].map(c => c.dataset.key)")
        .await;
    let stages = page
        .eval("window.imagescope.events.map(e => e.stage)")
        .await;
    let images_drawn = page
        .until(
            "[...document.querySelectorAll('#grid .card img')].every(i => i.complete && i.naturalWidth > 0)",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(images_drawn, true);
    let ms = |k: &str| timings[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "browser: preview on screen {:.0} ms after Enter; first S1 {:.0} ms; S2 {:.0} ms; S3 {:.0} ms; done {:.0} ms ({} results; {})",
        ms("preview"),
        ms("s1"),
        ms("s2"),
        ms("s3"),
        ms("done"),
        final_order.as_array().unwrap().len(),
        if live.is_some() {
            "live servers"
        } else {
            "fake servers"
        }
    );
    assert_eq!(stages, json!(["s1", "s2", "s3"]));
    if live.is_none() {
        // The fake reasoner searches with "black"; stage 2 brings the dog on the sofa first.
        assert_ne!(s1_order[0], "photos/img08.png", "{s1_order}");
        assert_eq!(final_order[0], "photos/img08.png", "{final_order}");
        assert_ne!(s1_order, final_order);
        assert_eq!(page.eval("window.imagescope.drawn.s3").await, final_order);
        // Moved cards carry an arrow; the top card's verdicts open.
        let arrows = page
            .eval("document.querySelectorAll('#grid .move').length")
            .await;
        assert!(arrows.as_u64().unwrap() > 0);
        page.eval("document.querySelector('#grid .card details').open = true")
            .await;
        let verdicts = page
            .eval("document.querySelector('#grid .card details').innerText")
            .await;
        assert!(verdicts.as_str().unwrap().contains("→ yes"), "{verdicts}");
    }
    // The re-ordering slides cards for 450 ms: shoot once they have settled.
    page.until(
        "[...document.querySelectorAll('#grid .card')].every(c => c.style.transform === '')",
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-browser.png");
    page.screenshot(&out).await;
    if let Ok(extra) = std::env::var("SERVE_SCREENSHOT") {
        std::fs::copy(&out, &extra).unwrap();
    }
    if report_image {
        // The runs tab lists the run; its report opens with its picture served by the API.
        page.eval("document.getElementById('tab-runs').click()")
            .await;
        let href = page
            .until(
                "document.querySelector('#runrows a') && document.querySelector('#runrows a').href",
                Duration::from_secs(10),
            )
            .await;
        page.goto(href.as_str().unwrap()).await;
        assert_eq!(page.eval("document.title").await, "run report");
        let drawn = page
            .until(
                "document.getElementById('pic').complete && document.getElementById('pic').naturalWidth",
                Duration::from_secs(10),
            )
            .await;
        assert!(drawn.as_u64().unwrap() > 0);
    }
    let _ = browser.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium (Debian's chromium package); .ci/run installs it"]
async fn a_person_drops_a_photo_of_their_own_and_describes_a_change() {
    if std::env::var("SERVE_BROWSER_CONFIG").is_ok() {
        // The demo stack has no captioner to describe an upload.
        println!("upload in the browser: run on the fake servers only");
        return;
    }
    let env = support::env::Env::start("photos", |i| format!("img{i:02}"), 1).await;
    let exp = env.configs("folder", "all", "", None);
    env.index(&exp).await;
    let base = serve(exp).await;
    // The black dog's photo, from outside the gallery.
    let outside = tempfile::tempdir().unwrap();
    let photo = outside.path().join("my dog.png");
    std::fs::copy(env.data.join("photos/img06.png"), &photo).unwrap();

    let profile = tempfile::tempdir().unwrap();
    let (mut browser, mut page) = chromium(profile.path()).await;
    page.goto(&format!("{base}/")).await;
    // What a file chooser does: the input gets the file and says it changed.
    let doc = page.call("DOM.getDocument", json!({})).await;
    let input = page
        .call(
            "DOM.querySelector",
            json!({"nodeId": doc["root"]["nodeId"], "selector": "#file"}),
        )
        .await;
    page.call(
        "DOM.setFileInputFiles",
        json!({"nodeId": input["nodeId"], "files": [photo.to_str().unwrap()]}),
    )
    .await;
    let uploaded = page
        .until(
            "window.imagescope.upload || (document.querySelector('#status .err') && document.querySelector('#status .err').textContent)",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(uploaded["caption"], "A photo of black dog.", "{uploaded}");
    // The photo is shown as the reference, drawn from the API.
    let shown = page
        .until(
            "getComputedStyle(document.getElementById('ref')).display !== 'none' && document.querySelector('#ref img').complete && document.querySelector('#ref img').naturalWidth",
            Duration::from_secs(10),
        )
        .await;
    assert!(shown.as_u64().unwrap() > 0, "{shown}");
    page.eval("document.getElementById('q').focus()").await;
    page.call("Input.insertText", json!({"text": "make it white"}))
        .await;
    page.key("Enter", 13).await;
    let timings = page
        .until(
            "(window.imagescope.timings.done !== undefined || window.imagescope.timings.error !== undefined) && window.imagescope.timings",
            Duration::from_secs(120),
        )
        .await;
    assert!(timings.get("error").is_none(), "{timings}");
    let order = page
        .eval("[...document.querySelectorAll('#grid .card')].map(c => c.dataset.key)")
        .await;
    let order = order.as_array().unwrap();
    assert!(!order.is_empty());
    assert!(
        order
            .iter()
            .all(|k| !k.as_str().unwrap().starts_with("upload:")),
        "{order:?}"
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-browser-upload.png");
    page.screenshot(&out).await;
    println!(
        "upload in the browser: {} results after the edit",
        order.len()
    );
    let _ = browser.kill().await;
}
