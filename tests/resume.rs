//! `imagescope run` killed with SIGKILL and resumed, and a reasoner replica dying mid-run, against
//! fake model servers (test doubles). Counts are taken on the servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use imagescope::config::Role;
use serde_json::Value;
use support::env::{Env, IMAGES, write_cirr};
use support::fake_server::{FakeServer, Route};

/// Twelve queries, each asking for one image from another one's reference.
fn queries() -> Vec<(u64, usize, &'static str, usize)> {
    (0..12)
        .map(|t| (200 + t as u64, (t + 3) % 12, IMAGES[t], t))
        .collect()
}

/// Replaces image data URLs by `blake3:<hash>`, as the client does for cache keys.
fn hashed(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| match (k.as_str(), x.as_str()) {
                    ("url", Some(u)) if u.starts_with("data:") => {
                        let (_, bytes) = imagescope::images::decode_data_url(u).unwrap();
                        (
                            k.clone(),
                            Value::String(format!("blake3:{}", blake3::hash(&bytes).to_hex())),
                        )
                    }
                    _ => (k.clone(), hashed(x)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(hashed).collect()),
        other => other.clone(),
    }
}

fn keys_after(server: &FakeServer, role: Role, route: Route, from: usize) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|r| r.route == route)
        .skip(from)
        .map(|r| imagescope::serving::cache::key(role, None, &hashed(&r.body)))
        .collect()
}

fn cache_keys(path: &Path) -> HashSet<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT key FROM answers").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn integrity_ok(path: &Path) -> bool {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap()
        == "ok"
}

fn final_rankings(folder: &Path) -> BTreeMap<String, Value> {
    Env::journal(folder)
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["rounds"][0]["s3"]["ranking"].clone(),
            )
        })
        .collect()
}

async fn wait_for_journal(env: &Env, lines: usize) -> PathBuf {
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let root = env.path("runs/cirr/default");
        if let Some(folder) = std::fs::read_dir(&root)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path())
            && Env::journal(&folder).len() >= lines
        {
            return folder;
        }
    }
    panic!("the run never wrote {lines} journal lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_resumed_equals_an_uninterrupted_run_and_repeats_no_finished_request() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries());
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(40));
    let config = env.configs("cirr", "val", "queries_in_flight = 2", None);
    env.index(&config).await;

    // The reference: the same run, uninterrupted, with the cache off.
    let reference = env
        .run(&config, &["--cache", "off", "--run-name", "reference"])
        .await;
    let expected = final_rankings(Path::new(reference["folder"].as_str().unwrap()));
    assert_eq!(expected.len(), 12);

    let mut child = env
        .command(&["run", "--json", "--config", config.to_str().unwrap()])
        .spawn()
        .unwrap();
    let folder = wait_for_journal(&env, 3).await;
    child.kill().await.unwrap();
    let cache_path = env.path("runs/cache.sqlite");
    let answered = cache_keys(&cache_path);
    let marks = (
        env.reasoner[0].count(Route::Chat),
        env.verifier.count(Route::Chat),
        env.evaluator.count(Route::Chat),
        env.embedder.count(Route::Embeddings),
    );
    let finished_before = Env::journal(&folder).len();
    assert!(finished_before < 12, "the kill landed mid-run");

    let report = env
        .run(&config, &["--resume", folder.to_str().unwrap()])
        .await;
    assert_eq!(report["folder"].as_str().unwrap(), folder.to_str().unwrap());
    assert!(report["resumed"].as_u64().unwrap() as usize >= finished_before);
    assert_eq!(
        final_rankings(&folder),
        expected,
        "resumed rankings equal the uninterrupted run's"
    );

    let resent: Vec<String> = [
        keys_after(&env.reasoner[0], Role::Reasoner, Route::Chat, marks.0),
        keys_after(&env.verifier, Role::Verifier, Route::Chat, marks.1),
        keys_after(&env.evaluator, Role::Evaluator, Route::Chat, marks.2),
        keys_after(&env.embedder, Role::Embedder, Route::Embeddings, marks.3),
    ]
    .concat();
    assert!(!resent.is_empty(), "the resumed run had work left");
    let repeated: Vec<&String> = resent.iter().filter(|k| answered.contains(*k)).collect();
    assert!(
        repeated.is_empty(),
        "{} finished requests were sent again",
        repeated.len()
    );
    assert!(integrity_ok(&cache_path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasoner_replica_dying_mid_run_loses_no_query() {
    let mut env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 2).await;
    write_cirr(&env.data, &queries());
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(10));
    for r in &env.reasoner {
        r.set_delay(Route::Chat, Duration::from_millis(40));
    }
    let config = env.configs("cirr", "val", "queries_in_flight = 4", None);
    env.index(&config).await;
    let child = env
        .command(&["run", "--json", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_journal(&env, 1).await;
    let dead = env.reasoner.pop().unwrap();
    let served_by_dead = dead.count(Route::Chat);
    dead.stop().await;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let journal = Env::journal(&folder);
    assert_eq!(journal.len(), 12);
    assert!(journal.iter().all(|r| r["status"] == "done"));
    assert!(served_by_dead > 0, "both replicas served before one died");
    assert_eq!(Env::metric(&report, "s3", "Recall@1"), 100.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_again_and_again_then_resumed_still_equals_an_uninterrupted_run() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries());
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(10));
    let config = env.configs("cirr", "val", "queries_in_flight = 2", None);
    env.index(&config).await;
    let reference = env
        .run(&config, &["--cache", "off", "--run-name", "reference"])
        .await;
    let expected = final_rankings(Path::new(reference["folder"].as_str().unwrap()));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut folder: Option<PathBuf> = None;
    for round in 0..3 {
        let mut args = vec!["run", "--json", "--config", config.to_str().unwrap()];
        let resume;
        if let Some(f) = &folder {
            resume = f.to_str().unwrap().to_string();
            args.extend(["--resume", resume.as_str()]);
        }
        let mut child = env.command(&args).spawn().unwrap();
        if round == 0 {
            // The kills land anywhere once the run has its folder: one killed before its run.json
            // is written leaves nothing to resume (a busy machine can still be in `prepare` at
            // 300 ms).
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !std::fs::read_dir(env.path("runs/cirr/default"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.path().join("run.json").exists())
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "seed {seed}: no run.json after 60 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..1200))).await;
        child.kill().await.unwrap();
        if folder.is_none() {
            folder = std::fs::read_dir(env.path("runs/cirr/default"))
                .ok()
                .and_then(|mut d| d.next())
                .map(|e| e.unwrap().path());
        }
        assert!(
            folder.is_some(),
            "seed {seed}: round {round} created the run folder"
        );
    }
    let folder = folder.unwrap();
    let report = env
        .run(&config, &["--resume", folder.to_str().unwrap()])
        .await;
    assert!(
        report["failed"].as_array().unwrap().is_empty(),
        "seed {seed}: {report}"
    );
    assert_eq!(
        final_rankings(&folder),
        expected,
        "seed {seed}: three kills at random moments change nothing"
    );
    assert!(integrity_ok(&env.path("runs/cache.sqlite")), "seed {seed}");
}
