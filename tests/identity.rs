//! A run is what it says it is (issue 24), against fake model servers (test doubles): resume
//! refuses an identity change and accepts a scheduling one; the checkpoint a server reports is
//! part of the cache key and the image database; a replaced photo is captioned again; signals
//! stop a run cleanly and an interrupted run is marked partial; a damaged cache has a way out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::env::{Env, IMAGES, write_cirr};
use support::fake_server::{Route, Scripted};

/// Twelve queries, each asking for one image from another one's reference.
fn queries() -> Vec<(u64, usize, &'static str, usize)> {
    (0..12)
        .map(|t| (200 + t as u64, (t + 3) % 12, IMAGES[t], t))
        .collect()
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

/// The run folder under `runs/cirr/<name>` once its journal has `lines` records.
async fn wait_for_journal(env: &Env, name: &str, lines: usize) -> PathBuf {
    for _ in 0..1500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let root = env.path(&format!("runs/cirr/{name}"));
        if let Some(folder) = std::fs::read_dir(&root)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path())
            && folder.join("queries.jsonl").exists()
            && Env::journal(&folder).len() >= lines
        {
            return folder;
        }
    }
    panic!("the run never wrote {lines} journal lines");
}

/// Starts `run` on `config` and SIGKILLs it once `lines` queries are in the journal.
async fn killed_after(env: &Env, config: &Path, lines: usize) -> PathBuf {
    let mut child = env
        .command(&["run", "--json", "--config", config.to_str().unwrap()])
        .spawn()
        .unwrap();
    let folder = wait_for_journal(env, "default", lines).await;
    child.kill().await.unwrap();
    let _ = child.wait().await;
    assert!(Env::journal(&folder).len() < 12, "the kill landed mid-run");
    folder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_edited_between_a_kill_and_a_resume_is_refused_naming_the_file() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries());
    let prompts = env.path("prompts");
    support::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts"),
        &prompts,
    );
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(50));
    let config = env.configs("cirr", "val", "queries_in_flight = 2", Some(&prompts));
    env.index(&config).await;
    let folder = killed_after(&env, &config, 2).await;

    let task = prompts.join("general/_reason_task.j2");
    let original = std::fs::read_to_string(&task).unwrap();
    std::fs::write(&task, format!("{original}\nAnswer briefly.")).unwrap();
    let resume = [
        "run",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--resume",
    ];
    let mut args = resume.to_vec();
    args.push(folder.to_str().unwrap());
    let (code, out, err) = env.imagescope(&args).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("prompts/general/_reason_task.j2 changed since this run started"),
        "{err}"
    );

    // A template of another family cannot change this run's answers: resuming is fine.
    std::fs::write(&task, original).unwrap();
    let other = prompts.join("visdial");
    let first = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "j2"))
        .unwrap();
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, format!("{text}\n")).unwrap();
    let report = env
        .run(&config, &["--resume", folder.to_str().unwrap()])
        .await;
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    assert!(Env::journal(&folder).len() >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_between_a_kill_and_a_resume_is_accepted_with_the_same_rankings() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 2).await;
    write_cirr(&env.data, &queries());
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(50));
    let config = env.configs("cirr", "val", "queries_in_flight = 2", None);
    env.index(&config).await;
    let reference = env
        .run(&config, &["--cache", "off", "--run-name", "reference"])
        .await;
    let expected = final_rankings(Path::new(reference["folder"].as_str().unwrap()));
    assert_eq!(expected.len(), 12);

    // The first attempt knows one reasoner replica only, and fewer slots.
    let servers_path = env.path("servers.toml");
    let both = std::fs::read_to_string(&servers_path).unwrap();
    let second = format!(", {:?}", env.reasoner[1].base_url());
    assert!(both.contains(&second));
    std::fs::write(
        &servers_path,
        both.replace(&second, "")
            .replace("max_in_flight = 8", "max_in_flight = 3"),
    )
    .unwrap();
    let folder = killed_after(&env, &config, 3).await;
    let second_before = env.reasoner[1].count(Route::Chat);
    std::fs::write(&servers_path, &both).unwrap();

    let report = env
        .run(&config, &["--resume", folder.to_str().unwrap()])
        .await;
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(final_rankings(&folder), expected, "same rankings");
    assert!(
        env.reasoner[1].count(Route::Chat) > second_before,
        "the added replica took work"
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("run.json")).unwrap()).unwrap();
    let changes = info["scheduling_changes"].to_string();
    assert!(
        changes.contains("roles.reasoner.endpoints") && changes.contains("max_in_flight"),
        "{info}"
    );
    let resolved = std::fs::read_to_string(folder.join("config.resolved.toml")).unwrap();
    assert!(
        resolved.contains(&env.reasoner[1].base_url()),
        "config.resolved.toml says what the resumed invocation used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_checkpoint_under_one_served_name_misses_the_cache_and_cannot_extend_the_index() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries()[..4]);
    for (server, root) in [
        (&env.captioner, "/models/llava-a"),
        (&env.reasoner[0], "/models/llama-a"),
        (&env.verifier, "/models/paligemma-a"),
        (&env.evaluator, "/models/internvl-a"),
        (&env.embedder, "/models/clip-a"),
    ] {
        server.set_root(root);
    }
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let first = env.run(&config, &[]).await;
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(first["folder"].as_str().unwrap()).join("run.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["models"]["reasoner"]["checkpoint"], "/models/llama-a");
    assert_eq!(info["models"]["reasoner"]["source"], "server");

    let sent = env.reasoner[0].count(Route::Chat);
    assert!(sent > 0);
    env.run(&config, &[]).await;
    assert_eq!(
        env.reasoner[0].count(Route::Chat),
        sent,
        "the same checkpoint: every answer comes from the cache"
    );
    env.reasoner[0].set_root("/models/llama-b");
    env.run(&config, &[]).await;
    assert!(
        env.reasoner[0].count(Route::Chat) > sent,
        "another checkpoint under the same served name sends its requests"
    );

    env.embedder.set_root("/models/clip-b");
    let (code, out, err) = env
        .imagescope(&["index", "--json", "--config", config.to_str().unwrap()])
        .await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("other weights under the same served name")
            && err.contains("embedder.checkpoint: \"/models/clip-a\" → \"/models/clip-b\""),
        "{err}"
    );
    let (code, _, err) = env
        .imagescope(&["run", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(code, 2);
    assert!(err.contains("checkpoint \"/models/clip-a\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reporting_different_checkpoints_are_an_error_unless_named() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 2).await;
    write_cirr(&env.data, &queries()[..2]);
    env.reasoner[0].set_root("/srv/a/llama");
    env.reasoner[1].set_root("/srv/b/llama");
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let (code, _, err) = env
        .imagescope(&["run", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(code, 2);
    assert!(
        err.contains("different checkpoints") && err.contains("/srv/b/llama"),
        "{err}"
    );
    // The same weights at two paths: named in the servers file, which wins.
    let servers_path = env.path("servers.toml");
    let text = std::fs::read_to_string(&servers_path).unwrap();
    std::fs::write(
        &servers_path,
        text.replace(
            "model = \"llama\"\n",
            "model = \"llama\"\ncheckpoint = \"meta-llama/Meta-Llama-3-8B-Instruct@5f0b02c\"\n",
        ),
    )
    .unwrap();
    let report = env.run(&config, &[]).await;
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(report["folder"].as_str().unwrap()).join("run.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["models"]["reasoner"]["source"], "explicit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_photo_is_refused_by_run_and_captioned_again_by_index() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries()[..4]);
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let captions = env.captioner.count(Route::Chat);
    assert_eq!(captions, 12);

    // Image 0 becomes a copy of image 1 (same size, other pixels).
    let dev = env.data.join("dev");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(dev.join("dev-1-0-img0.png"), dev.join("dev-0-0-img0.png")).unwrap();
    let (code, _, err) = env
        .imagescope(&["run", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(code, 2);
    assert!(
        err.contains("1 gallery photo(s) changed since they were indexed")
            && err.contains("dev-0-0-img0")
            && err.contains("imagescope index"),
        "{err}"
    );
    let (code, out, err) = env
        .imagescope(&["index", "--json", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["changed"], 1, "{report}");
    assert_eq!(
        env.captioner.count(Route::Chat),
        captions + 1,
        "only the changed photo is captioned again"
    );
    let last = env.captioner.requests().last().unwrap().body.to_string();
    let fresh = std::fs::read(dev.join("dev-0-0-img0.png")).unwrap();
    let b64 = base64_of(&fresh);
    assert!(last.contains(&b64[..64]), "the new pixels were sent");
    env.run(&config, &[]).await;
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// CIRR test1 files: the val queries without their targets.
fn write_cirr_test1(root: &Path) {
    write_cirr(root, &queries());
    let split = std::fs::read(root.join("image_splits/split.rc2.val.json")).unwrap();
    std::fs::write(root.join("image_splits/split.rc2.test1.json"), split).unwrap();
    let caps: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("captions/cap.rc2.val.json")).unwrap(),
    )
    .unwrap();
    let stripped: Vec<Value> = caps
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let m = r.as_object_mut().unwrap();
            m.remove("target_hard");
            m.remove("target_soft");
            r
        })
        .collect();
    std::fs::write(
        root.join("captions/cap.rc2.test1.json"),
        Value::Array(stripped).to_string(),
    )
    .unwrap();
}

async fn signalled(env: &Env, config: &Path, signal: &str) -> (PathBuf, String) {
    let child = env
        .command(&["run", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let folder = wait_for_journal(env, "default", 1).await;
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(130), "{signal}: {text}");
    assert!(
        text.contains("interrupted") && text.contains("--resume"),
        "{signal}: {text}"
    );
    (folder, text)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_like_ctrl_c_and_a_partial_test_split_writes_no_submission() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr_test1(&env.data);
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(80));
    let config = env.configs("cirr", "test1", "queries_in_flight = 2", None);
    env.index(&config).await;
    let (folder, text) = signalled(&env, &config, "TERM").await;
    assert!(text.contains("PARTIAL RUN"), "{text}");
    let partial = read_json(&folder.join("metrics.json"))["partial"].clone();
    let n = |k: &str| partial[k].as_u64().unwrap();
    assert_eq!(n("total"), 12, "{partial}");
    assert_eq!(n("answered") + n("failed") + n("unanswered"), 12);
    assert!(n("unanswered") > 0 && n("answered") > 0, "{partial}");
    assert_eq!(n("answered") as usize, Env::journal(&folder).len());
    let submissions = |f: &Path| {
        std::fs::read_dir(f)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("submission_")
            })
            .count()
    };
    assert_eq!(submissions(&folder), 0, "no submission from a partial run");
    let verifier_before = env.verifier.count(Route::Chat);
    let attempts = |folder: &Path| {
        read_json(&folder.join("summary.json"))["roles"]["verifier"]["attempts"]
            .as_u64()
            .unwrap() as usize
    };
    let attempts_before = attempts(&folder);
    // A request cut off by the stop may be counted by one side only: at most the verifier's
    // slots (8) of them.
    assert!(
        attempts_before.abs_diff(verifier_before) <= 8,
        "the stopped run counted {attempts_before} verifier attempts, the server saw {verifier_before}"
    );

    let report = env
        .run(&config, &["--resume", folder.to_str().unwrap()])
        .await;
    assert!(report["partial"].is_null(), "{report}");
    assert!(
        read_json(&folder.join("metrics.json"))
            .get("partial")
            .is_none()
    );
    assert_eq!(submissions(&folder), 3, "s1, s2 and s3 submissions");
    assert_eq!(
        attempts(&folder) - attempts_before,
        env.verifier.count(Route::Chat) - verifier_before,
        "counters add up over both invocations: the resumed one's attempts are added to the earlier total"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_stops_a_run_whose_metrics_are_marked_as_over_the_answered_queries() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries());
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(80));
    let config = env.configs("cirr", "val", "queries_in_flight = 2", None);
    env.index(&config).await;
    let (folder, _) = signalled(&env, &config, "HUP").await;
    let metrics = read_json(&folder.join("metrics.json"));
    let s3 = metrics["s3"].as_object().unwrap();
    assert!(
        s3.get("Recall@1").is_none(),
        "no whole-split number: {metrics}"
    );
    assert_eq!(s3["Recall@1 (answered only)"], 100.0, "{metrics}");
    let table = std::fs::read_to_string(folder.join("metrics.txt")).unwrap();
    assert!(table.starts_with("PARTIAL RUN: "), "{table}");
    // A finished resume drops the mark.
    let report = env
        .run(&config, &["--resume", folder.to_str().unwrap()])
        .await;
    assert_eq!(Env::metric(&report, "s3", "Recall@1"), 100.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cache_is_a_clear_error_and_cache_off_runs_without_it() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries()[..3]);
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let cache = env.path("runs/cache.sqlite");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    std::fs::write(&cache, vec![0x5au8; 8192]).unwrap();
    let (code, _, err) = env
        .imagescope(&["run", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cache.sqlite") && err.contains("--cache off") && err.contains("mv "),
        "{err}"
    );
    let report = env.run(&config, &["--cache", "off"]).await;
    assert_eq!(Env::metric(&report, "s3", "Recall@1"), 100.0, "{report}");
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        vec![0x5au8; 8192],
        "the damaged file is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_the_database_was_reindexed_in_place_is_refused() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries());
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(50));
    let config = env.configs("cirr", "val", "queries_in_flight = 2", None);
    env.index(&config).await;
    let folder = killed_after(&env, &config, 2).await;
    // A photo replaced and indexed again, as `run` tells the user to: same folder, other content.
    let dev = env.data.join("dev");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(dev.join("dev-2-0-img0.png"), dev.join("dev-5-0-img0.png")).unwrap();
    env.index(&config).await;
    let args = resume_args(&config, &folder);
    let (code, _, err) = env.imagescope(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("image_db.content"), "{err}");
}

/// `run --config <config> --resume <folder>`.
fn resume_args<'a>(config: &'a Path, folder: &'a Path) -> [&'a str; 5] {
    [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--resume",
        folder.to_str().unwrap(),
    ]
}

/// The files under `dir` whose name starts with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_named(&path, prefix));
        } else if entry.file_name().to_string_lossy().starts_with(prefix) {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_another_index_setting_is_refused_before_that_index_is_built() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries());
    env.verifier
        .set_delay(Route::Chat, Duration::from_millis(50));
    let config = env.configs("cirr", "val", "queries_in_flight = 2", None);
    env.index(&config).await;
    let folder = killed_after(&env, &config, 2).await;
    let db = env.path("data/image_db");
    assert!(!files_named(&db, "vectors-exact-f32").is_empty());
    // HNSW over the gallery: on 123k images, minutes of building for a run that cannot go on.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[index]\nsearch = \"hnsw\"\n")).unwrap();
    let args = resume_args(&config, &folder);
    let (code, _, err) = env.imagescope(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot resume") && err.contains("index.search"),
        "{err}"
    );
    assert_eq!(files_named(&db, "vectors-hnsw"), Vec::<PathBuf>::new());
    assert_eq!(files_named(&db, "built-hnsw"), Vec::<PathBuf>::new());
    // A new run with it builds it.
    let report = env.run(&config, &["--stages", "s1"]).await;
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(files_named(&db, "vectors-hnsw-f32").len(), 1);

    // Back to the run's own setting, whose index cannot be built (a folder stands where its file
    // goes): the resume fails, and the run folder is as it was, not marked resumed.
    std::fs::write(&config, &text).unwrap();
    let index_file = files_named(&db, "vectors-exact-f32").remove(0);
    std::fs::remove_file(&index_file).unwrap();
    std::fs::create_dir(&index_file).unwrap();
    let files = ["run.json", "queries.jsonl", "config.resolved.toml"];
    let read = |f: &str| std::fs::read(folder.join(f)).unwrap();
    let before: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    let (code, _, err) = env.imagescope(&args).await;
    assert_ne!(code, 0, "{err}");
    for (f, was) in files.iter().zip(&before) {
        assert!(
            read(f) == *was,
            "{f} changed by a resume that did not start: {err}"
        );
    }
    // Once it can be, the resume builds it and completes the run.
    std::fs::remove_dir(&index_file).unwrap();
    let report = env
        .run(&config, &["--resume", folder.to_str().unwrap()])
        .await;
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    assert!(Env::journal(&folder).len() >= 12);
    assert!(index_file.is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_whose_server_cannot_be_reached_is_not_given_a_guessed_identity() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries()[..2]);
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let servers = env.path("servers.toml");
    let text = std::fs::read_to_string(&servers).unwrap();
    std::fs::write(
        &servers,
        text.replace(
            &format!("{:?}", env.evaluator.base_url()),
            "\"http://127.0.0.1:9/v1\"",
        ),
    )
    .unwrap();
    let (code, _, err) = env
        .imagescope(&["run", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no evaluator endpoint answered") && err.contains("checkpoint"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_list_that_answers_too_late_once_is_asked_again() {
    // Found by the fault simulator (tests/sim.rs): a server busy at start-up that let one
    // `/v1/models` request time out stopped the whole run.
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries()[..2]);
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let servers = env.path("servers.toml");
    let text = std::fs::read_to_string(&servers).unwrap();
    std::fs::write(
        &servers,
        text.replace("timeout_secs = 10", "timeout_secs = 1"),
    )
    .unwrap();
    let before = env.evaluator.count(Route::Models);
    env.evaluator.script(
        Route::Models,
        [Scripted::json(200, serde_json::json!({"data": []})).delay(Duration::from_millis(1500))],
    );
    let (code, out, err) = env
        .imagescope(&["run", "--json", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        env.evaluator.count(Route::Models) >= before + 2,
        "asked again after the late answer"
    );
}
