//! `imagescope run` end to end against fake model servers (test doubles over a tiny world of
//! solid-colour images): every task shape, metrics after each stage, and the request cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use support::env::{Env, write_cirr, write_flickr, write_visdial};
use support::fake_server::{FakeServer, Recorded, Route};

/// The chat requests a fake server saw (not the `/models` probe that asks for its checkpoint).
fn chats(server: &FakeServer) -> Vec<Recorded> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Chat)
        .collect()
}

/// Four CIRR queries built so that stage 1 gets two wrong and stage 2 fixes them (see world.rs).
const CIRR_QUERIES: [(u64, usize, &str, usize); 4] = [
    (100, 0, "blue car", 1),
    (101, 10, "white cat", 9),
    (102, 0, "red bus", 2),
    (103, 7, "black dog sofa", 8),
];

/// A copy of the bundled prompts under `name` with one word of the evaluator's template changed.
fn evaluator_variant(env: &Env, name: &str) -> PathBuf {
    let prompts = env.path(name);
    support::copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("prompts"),
        &prompts,
    );
    let f = prompts.join("general/evaluate.user.j2");
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.contains("short explanation"));
    std::fs::write(&f, text.replace("short explanation", "brief explanation")).unwrap();
    prompts
}

async fn cirr_env() -> (Env, PathBuf) {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &CIRR_QUERIES);
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    (env, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cirr_runs_through_three_stages_with_metrics_after_each() {
    let (env, config) = cirr_env().await;
    let report = env.run(&config, &[]).await;
    assert_eq!(Env::metric(&report, "s1", "Recall@1"), 50.0, "{report}");
    assert_eq!(Env::metric(&report, "s2", "Recall@1"), 100.0, "{report}");
    assert_eq!(Env::metric(&report, "s3", "Recall@1"), 100.0, "{report}");
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    for f in [
        "run.json",
        "config.resolved.toml",
        "queries.jsonl",
        "metrics.json",
        "metrics.txt",
        "summary.json",
        "output.log",
    ] {
        assert!(
            folder.join(f).exists(),
            "{f} missing in {}",
            folder.display()
        );
    }
    assert!(folder.join("prompts/general/reason.user.j2").exists());
    // output.log is written by a worker thread and flushed before the command prints.
    let log = std::fs::read_to_string(folder.join("output.log")).unwrap();
    assert!(
        log.contains("run started") && log.contains("run finished"),
        "{log}"
    );
    // `run --json` and the run folder's metrics.json share one shape.
    let metrics_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(report["metrics"], metrics_file);
    assert!(metrics_file["s2"]["Recall@5"].is_number(), "{metrics_file}");
    let journal = Env::journal(&folder);
    assert_eq!(journal.len(), 4);
    let q101 = journal.iter().find(|r| r["id"] == "101").unwrap();
    let round = &q101["rounds"][0];
    assert_eq!(round["s1"]["descriptions"][0], "white");
    assert_eq!(
        round["s1"]["ranking"][0], "dev-7-0-img0",
        "stage 1 puts the white dog first"
    );
    assert_eq!(
        round["s2"]["ranking"][0], "dev-9-0-img0",
        "stage 2 fixes it"
    );
    assert_eq!(round["s3"]["decisions"][0]["accepted"], true);
    // The reference is excluded from the ranking by default.
    let q102 = journal.iter().find(|r| r["id"] == "102").unwrap();
    assert!(
        !q102["rounds"][0]["s1"]["ranking"]
            .as_array()
            .unwrap()
            .contains(&"dev-0-0-img0".into())
    );
    assert!(q101["requests"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caption_grounded_verifier_and_evaluator_read_stored_captions() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &CIRR_QUERIES);
    let config = env.configs("cirr", "val", "", None);
    let servers = env.path("servers.toml");
    let text = std::fs::read_to_string(&servers).unwrap();
    let text = text
        .replace(
            "[roles.verifier]\n",
            "[roles.verifier]\ngrounding = \"caption\"\n",
        )
        .replace(
            "[roles.evaluator]\n",
            "[roles.evaluator]\ngrounding = \"caption\"\n",
        );
    std::fs::write(&servers, text).unwrap();
    env.index(&config).await;
    let report = env.run(&config, &[]).await;
    assert_eq!(Env::metric(&report, "s1", "Recall@1"), 50.0, "{report}");
    assert_eq!(Env::metric(&report, "s3", "Recall@1"), 100.0, "{report}");
    for r in env
        .verifier
        .requests()
        .iter()
        .chain(env.evaluator.requests().iter())
        .filter(|r| r.route == Route::Chat)
    {
        assert!(
            r.body["messages"][0]["content"].is_string(),
            "no image was sent: {}",
            r.body
        );
    }
    let v = chats(&env.verifier)[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        v.contains("A photo of"),
        "the stored caption is quoted: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_profile_keeps_the_reference_and_the_original_rules() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &CIRR_QUERIES);
    let config = env.configs("cirr", "val", "profile = \"parity\"", None);
    env.index(&config).await;
    let report = env.run(&config, &["--stages", "s1"]).await;
    // Query 102 searches "red": the red car reference now takes rank 1.
    assert_eq!(Env::metric(&report, "s1", "Recall@1"), 25.0, "{report}");
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let resolved = std::fs::read_to_string(folder.join("config.resolved.toml")).unwrap();
    assert!(
        resolved.contains("profile = \"parity\"") && resolved.contains("exclude_reference = false"),
        "{resolved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_is_answered_from_the_cache_and_a_changed_template_resends_only_its_requests()
{
    let (env, config) = cirr_env().await;
    env.run(&config, &[]).await;
    let count = |e: &Env| {
        (
            e.reasoner[0].count(Route::Chat),
            e.verifier.count(Route::Chat),
            e.evaluator.count(Route::Chat),
            e.embedder.count(Route::Embeddings),
        )
    };
    let before = count(&env);
    let again = env.run(&config, &[]).await;
    assert_eq!(count(&env), before, "an identical run sends nothing");
    assert_eq!(Env::metric(&again, "s3", "Recall@1"), 100.0);

    // One word changed in the evaluator's template: only evaluator requests are sent again.
    let prompts = evaluator_variant(&env, "prompts-edited");
    let edited = env.configs("cirr", "val", "", Some(&prompts));
    let third = env.run(&edited, &[]).await;
    let after = count(&env);
    assert_eq!(
        (after.0, after.1, after.3),
        (before.0, before.1, before.3),
        "reasoner, verifier and embedder answers reused"
    );
    assert!(after.2 > before.2, "the evaluator was asked again");
    assert_eq!(
        third["roles"]["evaluator"]["attempts"].as_u64().unwrap() as usize,
        after.2 - before.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_to_image_uses_a_blank_reference() {
    let env = Env::start("images", |i| format!("{i}"), 1).await;
    write_flickr(
        &env.data,
        &[
            (7, "white dog"),
            (9, "white cat"),
            (1, "blue car"),
            (8, "black dog sofa"),
            (6, "black dog"),
        ],
    );
    let config = env.configs("flickr30k", "test", "", None);
    env.index(&config).await;
    let report = env.run(&config, &[]).await;
    assert_eq!(Env::metric(&report, "s1", "R@1"), 60.0, "{report}");
    assert_eq!(Env::metric(&report, "s3", "R@1"), 100.0, "{report}");
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let j = Env::journal(&folder);
    assert_eq!(j[0]["rounds"][0]["reference_description"], "A blank image.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fashioniq_runs_with_its_own_prompt_family() {
    let env = Env::start("images", |i| format!("B{i:09}"), 1).await;
    let asin = |i: usize| format!("B{i:09}");
    let split: Vec<String> = (0..12).map(asin).collect();
    std::fs::write(
        env.data.join("split.dress.val.json"),
        serde_json::to_string(&split).unwrap(),
    )
    .unwrap();
    let caps = serde_json::json!([
        {"candidate": asin(10), "target": asin(9), "captions": ["is white", "is a cat."]},
        {"candidate": asin(6), "target": asin(8), "captions": ["is black", "has a dog and a sofa"]},
    ]);
    std::fs::write(env.data.join("cap.dress.val.json"), caps.to_string()).unwrap();
    let config = env.configs("fashioniq-dress", "val", "", None);
    env.index(&config).await;
    let report = env.run(&config, &[]).await;
    assert_eq!(Env::metric(&report, "s3", "R@10"), 100.0, "{report}");
    let first = chats(&env.reasoner[0])[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        first.contains("find a dress"),
        "the dress family's prompt was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_round_dialogue_carries_its_description_and_scores_cumulative_hits() {
    let env = Env::start("unlabeled2017", |i| format!("{:012}", i + 1), 1).await;
    write_visdial(
        &env.data,
        &serde_json::json!([
            {"img": "unlabeled2017/000000000009.png", "dialog": ["a dog", "is it black? yes", "is it on a sofa? yes"]},
            {"img": "unlabeled2017/000000000010.png", "dialog": ["a cat", "what colour? white", "is it alone? yes"]},
        ]),
    );
    let config = env.configs("visdial", "val", "", None);
    env.index(&config).await;
    let report = env.run(&config, &[]).await;
    for r in ["round0", "round1", "round2"] {
        Env::metric(&report, "s1", &format!("Hits@10/{r}"));
    }
    let h1 = |stage, r| Env::metric(&report, stage, &format!("Hits@1/round{r}"));
    assert!(
        h1("s3", 2) >= h1("s3", 1) && h1("s3", 1) >= h1("s3", 0),
        "cumulative: {report}"
    );
    assert_eq!(h1("s3", 2), 100.0, "{report}");
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let j = Env::journal(&folder);
    let rounds = j[0]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "round 0 plus two turns");
    assert_eq!(
        rounds[2]["reference_description"], rounds[1]["s1"]["descriptions"][0],
        "the description is carried"
    );
    // Every round records its target's whole-gallery rank (here the gallery is smaller than the
    // kept ranking, so it is the target's place in it), and BRI is the whole-gallery one.
    for dialogue in &j {
        let target = dialogue["targets"][0].as_str().unwrap();
        for round in dialogue["rounds"].as_array().unwrap() {
            let s1 = &round["s1"];
            let place = s1["ranking"]
                .as_array()
                .unwrap()
                .iter()
                .position(|k| k == target)
                .unwrap();
            assert_eq!(s1["gallery_rank"], place + 1, "{s1}");
        }
    }
    Env::metric(&report, "s1", "BRI");
    assert!(report["metrics"]["s1"].get("BRI@12").is_none(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_variant_runs_on_chosen_queries_and_resends_only_what_it_changes() {
    let (env, config) = cirr_env().await;
    env.run(&config, &[]).await;
    let evaluator_before = env.evaluator.count(Route::Chat);
    let prompts = evaluator_variant(&env, "variant");
    let variant = env
        .run(
            &config,
            &[
                "--prompts",
                prompts.to_str().unwrap(),
                "--queries",
                "101,103",
                "--run-name",
                "variant",
            ],
        )
        .await;
    assert_eq!(variant["queries"], 2, "{variant}");
    let roles = &variant["roles"];
    // Only the evaluator's requests changed; everything else comes from the cache.
    for role in ["reasoner", "verifier", "embedder"] {
        assert_eq!(roles[role]["attempts"], 0, "{role}: {}", roles[role]);
        assert!(roles[role]["cache_hits"].as_u64().unwrap() > 0, "{role}");
    }
    let sent = roles["evaluator"]["attempts"].as_u64().unwrap() as usize;
    assert!(sent > 0);
    assert_eq!(env.evaluator.count(Route::Chat), evaluator_before + sent);
    let folder = PathBuf::from(variant["folder"].as_str().unwrap());
    let copied = std::fs::read_to_string(folder.join("prompts/general/evaluate.user.j2")).unwrap();
    assert!(
        copied.contains("brief explanation"),
        "the run keeps the variant's templates"
    );

    // An id the split does not have is refused, naming it.
    let (code, _, err) = env
        .imagescope(&[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--queries",
            "101,999",
        ])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("999") && err.contains("not in the cirr val split"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_two_loads_a_bounded_number_of_candidates_per_query_at_once() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &[(200, 0, "black dog sofa", 8)]);
    let config = env.configs("cirr", "val", "top_k = 8", None);
    // Let the verifier client send everything it is given, so only the pipeline bounds it.
    let servers = env.path("servers.toml");
    let text = std::fs::read_to_string(&servers).unwrap();
    let (head, tail) = text.split_once("[roles.verifier]").unwrap();
    let tail = tail.replacen("max_in_flight = 8", "max_in_flight = 64", 1);
    std::fs::write(&servers, format!("{head}[roles.verifier]{tail}")).unwrap();
    env.index(&config).await;
    env.verifier
        .set_delay(Route::Chat, std::time::Duration::from_millis(300));
    let report = env.run(&config, &["--stages", "s1,s2"]).await;
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    // Three questions ("black", "dog", "sofa") for each of the 8 candidates.
    assert_eq!(env.verifier.count(Route::Chat), 24);
    // Without the bound all 24 go out at once (checked by setting the constant to 100).
    let at_once = imagescope::pipeline::stage2::CANDIDATES_AT_ONCE;
    assert!(
        at_once < 8,
        "the bound must be below K for this test to mean anything"
    );
    let bound = at_once * 3;
    let peak = env.verifier.max_in_flight();
    assert!(
        peak <= bound,
        "{peak} verifier requests at once; at most {bound} ({at_once} candidates × 3 questions)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_in_memory_follow_the_servers_slots_not_the_queries_in_flight() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    let queries: Vec<(u64, usize, &str, usize)> =
        (0..6).map(|i| (600 + i, 0, "black dog sofa", 8)).collect();
    write_cirr(&env.data, &queries);
    let config = env.configs("cirr", "val", "top_k = 8\nqueries_in_flight = 6", None);
    // One verifier slot, one evaluator slot: 2 × 1 + 2 × 2 × 1 = 6 images may be in memory at once
    // (the evaluator's pool counts a turn's reference and candidate).
    let servers = env.path("servers.toml");
    let text = std::fs::read_to_string(&servers).unwrap();
    let mut out = String::new();
    for (i, block) in text.split("[roles.").enumerate() {
        if i > 0 {
            out.push_str("[roles.");
        }
        if block.starts_with("verifier]") || block.starts_with("evaluator]") {
            out.push_str(&block.replacen("max_in_flight = 8", "max_in_flight = 1", 1));
        } else {
            out.push_str(block);
        }
    }
    std::fs::write(&servers, out).unwrap();
    env.index(&config).await;
    env.verifier
        .set_delay(Route::Chat, std::time::Duration::from_millis(20));
    let report = env.run(&config, &[]).await;
    assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(report["images_in_memory_bound"], 6, "{report}");
    let peak = report["peak_images_in_memory"].as_u64().unwrap();
    // Without the bound: 6 queries × 4 candidates at once = 24 (checked by raising the bound).
    assert!((1..=6).contains(&peak), "{peak} images held at once");
}
