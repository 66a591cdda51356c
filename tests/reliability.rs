//! Faults, interruptions and hostile input, each tried against the real binary with fake model
//! servers (test doubles; faults are scripted by count, never random). See RELIABILITY.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use imagescope::config::Role;
use imagescope::serving::{ChatRequest, ErrorKind, Message, RoleClient, Speaker};
use serde_json::json;
use support::env::{Env, write_cirr};
use support::fake_server::{FakeServer, Route, Scripted};

const QUERIES: [(u64, usize, &str, usize); 4] = [
    (100, 0, "blue car", 1),
    (101, 10, "white cat", 9),
    (102, 0, "red bus", 2),
    (103, 7, "black dog sofa", 8),
];

async fn cirr() -> (Env, PathBuf) {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &QUERIES);
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    (env, config)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_server_faults_during_a_run_are_survived_and_counted() {
    let (env, config) = cirr().await;
    let err = |status: u16| {
        Scripted::json(
            status,
            json!({"error": {"message": "injected", "code": status}}),
        )
    };
    env.reasoner[0].script(
        Route::Chat,
        [
            err(500),
            err(502),
            Scripted::status(200, "<html>not json</html>"),
            Scripted::json(200, json!({"model": "llama"})),
            err(503),
            Scripted::json(200, json!({"model": "llama", "choices": [{"message": {"content": ""}, "finish_reason": "length"}]})),
            err(429),
        ],
    );
    env.verifier.script(
        Route::Chat,
        [
            err(500),
            Scripted::json(
                200,
                json!({"model": "another-model", "choices": [{"message": {"content": "Yes"}}]}),
            ),
            err(503),
        ],
    );
    env.embedder.script(
        Route::Embeddings,
        [Scripted::json(
            200,
            json!({"model": "clip", "data": [{"index": 0, "embedding": [0.5, 0.5]}]}),
        )],
    );
    let report = env.run(&config, &[]).await;
    // Retries absorb what another attempt can change. A wrong embedding dimension cannot change
    // (one endpoint, the same model): it fails its query at once, which is scored as a miss.
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    let why = failed[0][1].as_str().unwrap();
    assert!(
        why.contains("embedding has 2 dimensions") && why.contains("after 1 attempt"),
        "{report}"
    );
    assert_eq!(
        report["failures_by_kind"],
        serde_json::json!({"wrong-dimension": 1}),
        "failures are counted by typed kind"
    );
    assert_eq!(
        Env::metric(&report, "s3", "Recall@1"),
        75.0,
        "the other three answers are the same: {report}"
    );
    // A wrong model on the only verifier endpoint is not retried either: that verdict falls back.
    assert_eq!(report["fallbacks"]["s2.verify"], 1, "{report}");
    let reasoner = &report["roles"]["reasoner"];
    assert_eq!(reasoner["retries"], 7, "{reasoner}");
    for label in [
        "http-500",
        "http-502",
        "http-503",
        "http-429",
        "invalid-response",
        "empty-content",
    ] {
        assert!(
            reasoner["errors"][label].as_u64().unwrap() >= 1,
            "{label} counted: {reasoner}"
        );
    }
    assert_eq!(report["roles"]["verifier"]["errors"]["wrong-model"], 1);
    assert_eq!(report["roles"]["embedder"]["errors"]["wrong-dimension"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_server_keeps_failing_is_recorded_as_failed_and_the_run_goes_on() {
    let (env, _) = cirr().await;
    // One query at a time, so the first query's stage-1 request takes every scripted failure:
    // four, one more than the three retries allow.
    let config = env.configs("cirr", "val", "queries_in_flight = 1", None);
    let err = || Scripted::json(500, json!({"error": {"message": "down", "code": 500}}));
    env.reasoner[0].script(Route::Chat, [err(), err(), err(), err()]);
    let report = env.run(&config, &["--stages", "s1"]).await;
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    assert!(
        failed[0][1].as_str().unwrap().contains("HTTP 500"),
        "{report}"
    );
    assert_eq!(
        report["failures_by_kind"],
        serde_json::json!({"http-500": 1})
    );
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let journal = Env::journal(&folder);
    assert_eq!(journal.len(), 4, "every query has a record");
    let failed_record = journal.iter().find(|r| r["status"] == "failed").unwrap();
    assert_eq!(failed_record["failure_kind"], "http-500");
    assert_eq!(
        Env::metric(&report, "s1", "Recall@10"),
        75.0,
        "the failed query is scored as a miss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_never_reaches_logs_run_folders_or_doctor_output() {
    let (env, config) = cirr().await;
    let secret = "sk-imagescope-test-9f8e7d6c5b4a";
    let servers = env.path("servers.toml");
    let text = std::fs::read_to_string(&servers).unwrap();
    std::fs::write(
        &servers,
        text.replace(
            "[roles.reasoner]\n",
            "[roles.reasoner]\napi_key_env = \"IMAGESCOPE_TEST_SECRET\"\n",
        ),
    )
    .unwrap();
    let run = env
        .command(&["run", "--json", "--config", config.to_str().unwrap()])
        .env("IMAGESCOPE_TEST_SECRET", secret)
        .env("IMAGESCOPE_LOG", "debug")
        .output()
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let doctor = env
        .command(&["doctor", "--config", servers.to_str().unwrap()])
        .env("IMAGESCOPE_TEST_SECRET", secret)
        .output()
        .await
        .unwrap();
    let mut everything = String::new();
    for out in [&run, &doctor] {
        everything.push_str(&String::from_utf8_lossy(&out.stdout));
        everything.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let mut files = vec![];
    files_under(&env.path("runs"), &mut files);
    for f in &files {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(f).unwrap()));
    }
    assert!(files.len() > 5);
    assert!(!everything.contains(secret), "the key leaked");
    assert_eq!(
        env.reasoner[0].requests().last().unwrap().auth.as_deref(),
        Some(format!("Bearer {secret}").as_str()),
        "but it was sent to the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_says_how_to_resume() {
    let (env, config) = cirr().await;
    // Slow enough that stage 2 lasts seconds: the signal must land before the run ends.
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(250));
    let child = env
        .command(&["run", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // Wait until the run is under way (stage 2 has asked the verifier), then interrupt it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.verifier.count(Route::Chat) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never reached stage 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(
        text.contains("interrupted") && text.contains("--resume"),
        "{text}"
    );
    let folder = std::fs::read_dir(env.path("runs/cirr/default"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for line in std::fs::read_to_string(folder.join("queries.jsonl"))
        .unwrap()
        .lines()
    {
        serde_json::from_str::<serde_json::Value>(line)
            .expect("the journal holds only whole records");
    }
    let report = env
        .run(&config, &["--resume", folder.to_str().unwrap()])
        .await;
    assert_eq!(Env::metric(&report, "s3", "Recall@1"), 100.0, "{report}");
}

#[tokio::test]
async fn an_enormous_answer_is_refused_without_buffering_it() {
    let fake = FakeServer::start("m", 4).await;
    fake.script(Route::Chat, [Scripted::status(200, "x".repeat(40 << 20))]);
    let cfg = support::servers(
        Role::Reasoner,
        "m",
        &[fake.base_url()],
        "[roles.reasoner.retry]\nmax_retries = 2\n",
    );
    let c = RoleClient::new(
        Role::Reasoner,
        &cfg.roles[&Role::Reasoner],
        Path::new("s.toml"),
    )
    .unwrap();
    let req = ChatRequest {
        messages: vec![Message::text(Speaker::User, "hi")],
        ..Default::default()
    };
    let err = c.chat(&req).await.unwrap_err();
    assert!(
        matches!(&err.kind, ErrorKind::Oversize { limit } if *limit == 32 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("32 MiB"), "{err}");
    assert_eq!(err.attempts, 1, "an oversize answer is not asked for again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_captions_are_stored_as_plain_data() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &QUERIES);
    env.captioner
        .set_chat_responder(|_| "<script>alert('x')</script>\u{1b}[31m a red\u{7} car".into());
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let dbs = env.path("data/image_db/cirr");
    let dir = std::fs::read_dir(dbs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let db = imagescope::index::ImageDb::open(&dir, Default::default()).unwrap();
    let caption = db.caption(&"dev-0-0-img0".into()).unwrap().to_string();
    assert_eq!(
        caption, "<script>alert('x')</script>[31m a red car",
        "control characters dropped, markup kept as text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_clear_errors() {
    let (env, config) = cirr().await;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--config", "missing.toml"], "missing.toml"),
        (
            vec![
                "run",
                "--config",
                config.to_str().unwrap(),
                "--split",
                "train",
            ],
            "val, test1",
        ),
        (
            vec![
                "run",
                "--config",
                config.to_str().unwrap(),
                "--stages",
                "s2",
            ],
            "must include s1",
        ),
        (
            vec![
                "run",
                "--config",
                config.to_str().unwrap(),
                "--resume",
                "/nonexistent/run",
            ],
            "run folder",
        ),
        (
            vec![
                "score",
                "--dataset",
                "cirr",
                "--data",
                "/nonexistent/CIRR",
                "--predictions",
                "p.json",
            ],
            "/nonexistent/CIRR",
        ),
    ];
    for (args, needle) in cases {
        let (code, out, err) = env.imagescope(&args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Non-UTF-8 bytes in an annotation file name the file.
    std::fs::write(
        env.data.join("captions/cap.rc2.val.json"),
        b"[{\"pairid\": 1, \"caption\": \"\xff\xfe\"}]",
    )
    .unwrap();
    let (code, _, err) = env
        .imagescope(&["run", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(code, 2);
    assert!(err.contains("cap.rc2.val.json"), "{err}");
    // A run folder made with another configuration is refused on --resume.
    let (env2, config2) = cirr().await;
    let report = env2.run(&config2, &["--stages", "s1"]).await;
    let folder = report["folder"].as_str().unwrap().to_string();
    let (code, _, err) = env2
        .imagescope(&[
            "run",
            "--config",
            config2.to_str().unwrap(),
            "--resume",
            &folder,
        ])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot resume")
            && err.contains("pipeline.stages: [\"s1\"] → [\"s1\",\"s2\",\"s3\"]"),
        "{err}"
    );
    assert!(err.contains("roles.verifier: added"), "{err}");
}

fn proc_sample(pid: u32) -> Option<(f64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()?
        / 1024.0;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_seeded_faults_keeps_memory_flat_and_releases_file_handles() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    // 96 distinct queries, so the request cache cannot answer for the servers.
    let queries: Vec<(u64, usize, String, usize)> = (0..96)
        .map(|i| {
            (
                1000 + i as u64,
                (i + 5) % 12,
                format!("{} v{i}", support::env::IMAGES[i % 12]),
                i % 12,
            )
        })
        .collect();
    let refs: Vec<(u64, usize, &str, usize)> = queries
        .iter()
        .map(|(a, b, c, d)| (*a, *b, c.as_str(), *d))
        .collect();
    write_cirr(&env.data, &refs);
    let config = env.configs("cirr", "val", "queries_in_flight = 8\ntop_k = 6", None);
    env.index(&config).await;
    // About 15% of answers fail (500, 502, 503 or 429), from a seeded generator: reproducible.
    let mut rng = fastrand::Rng::with_seed(2026);
    let mut pattern = || -> Vec<Option<u16>> {
        (0..97)
            .map(|_| (rng.f64() < 0.15).then(|| [500, 502, 503, 429][rng.usize(..4)]))
            .collect()
    };
    env.reasoner[0].set_fault_pattern(pattern());
    env.verifier.set_fault_pattern(pattern());
    env.evaluator.set_fault_pattern(pattern());
    env.embedder.set_fault_pattern(pattern());
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(5));

    let started = std::time::Instant::now();
    let child = env
        .command(&["run", "--json", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let sampler = tokio::spawn(async move {
        let mut samples = vec![];
        while let Some(s) = proc_sample(pid) {
            samples.push(s);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    });
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("bounded in time")
        .unwrap();
    let samples = sampler.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let journal = Env::journal(&folder);
    assert_eq!(journal.len(), 96, "every query ends with a record");
    for r in &journal {
        assert!(
            r["status"] == "done" || r["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{r}"
        );
    }
    let roles = &report["roles"];
    for role in ["reasoner", "verifier", "evaluator", "embedder"] {
        let (attempts, successes, failures) = (
            roles[role]["attempts"].as_u64().unwrap(),
            roles[role]["successes"].as_u64().unwrap(),
            roles[role]["failures"].as_u64().unwrap(),
        );
        assert!(
            attempts <= (successes + failures) * 4,
            "{role}: retries bounded by max_retries = 3"
        );
        assert!(
            roles[role]["retries"].as_u64().unwrap() > 0,
            "{role}: faults were injected"
        );
    }
    // Memory flat and file handles released: compare the second half of the run with the first.
    assert!(
        samples.len() >= 10,
        "{} samples in {:?}",
        samples.len(),
        started.elapsed()
    );
    let half = samples.len() / 2;
    let max = |s: &[(f64, usize)]| s.iter().map(|x| x.0).fold(0.0, f64::max);
    let (early, late) = (max(&samples[..half]), max(&samples[half..]));
    assert!(
        late <= early * 1.5 + 16.0,
        "RSS grew from {early:.0} MiB to {late:.0} MiB"
    );
    let fds_early = samples[..half].iter().map(|x| x.1).max().unwrap();
    let fds_late = samples[samples.len() - 3..]
        .iter()
        .map(|x| x.1)
        .max()
        .unwrap();
    assert!(
        fds_late <= fds_early + 4,
        "open files grew from {fds_early} to {fds_late}"
    );
}
