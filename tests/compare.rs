//! `imagescope compare` over two fake-world runs (fake model servers: a TEST DOUBLE, see
//! support/world.rs) whose only difference is one line of the reasoner's template. The fake
//! reasoner searches with the instruction's first content word; the variant template writes the
//! instruction's words in reverse order, so it searches with the last one. By construction that
//! fixes ten queries at stage 1, breaks one and leaves two alone, and compare must say exactly so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::env::{Env, write_cirr};

/// "black dog sofa" → searches "black" (black dog, black cat first; the target ranks 3rd) or
/// "sofa" (the target first). "sofa with black dog" the other way round. The rest rank the same.
fn queries() -> Vec<(u64, usize, &'static str, usize)> {
    let mut q: Vec<(u64, usize, &str, usize)> =
        (0..10).map(|i| (300 + i, 0, "black dog sofa", 8)).collect();
    q.push((400, 0, "sofa with black dog", 8));
    q.push((500, 0, "blue car", 1));
    q.push((501, 0, "yellow flower", 11));
    q
}

fn reversed_variant(env: &Env) -> PathBuf {
    let prompts = env.path("variant-prompts");
    support::copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("prompts"),
        &prompts,
    );
    let f = prompts.join("general/reason.user.j2");
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.contains("Instruction: {{ instruction }}\n"));
    let text = text.replace(
        "Instruction: {{ instruction }}\n",
        "Note: <b>read</b> the words from the end.\nInstruction: {{ instruction|split|reverse|join(\" \") }}\n",
    );
    std::fs::write(&f, text).unwrap();
    prompts
}

async fn two_runs() -> (Env, PathBuf, PathBuf) {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(&env.data, &queries());
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let a = env
        .run(&config, &["--stages", "s1", "--run-name", "base"])
        .await;
    let prompts = reversed_variant(&env);
    let b = env
        .run(
            &config,
            &[
                "--stages",
                "s1",
                "--run-name",
                "reversed",
                "--prompts",
                prompts.to_str().unwrap(),
            ],
        )
        .await;
    let folder = |r: &Value| PathBuf::from(r["folder"].as_str().unwrap());
    (env, folder(&a), folder(&b))
}

async fn compare(env: &Env, a: &Path, b: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["compare", a.to_str().unwrap(), b.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.imagescope(&args).await
}

fn metric<'a>(c: &'a Value, stage: &str, name: &str) -> &'a Value {
    c["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage)
        .and_then(|s| {
            s["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name)
        })
        .unwrap_or_else(|| panic!("no {stage} {name}: {c}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_finds_the_queries_a_template_change_fixed_and_broke() {
    let (env, a, b) = two_runs().await;
    let (code, out, err) = compare(&env, &a, &b, &["--json"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["shared"], 13, "{c}");
    assert_eq!(
        (c["only_a"].as_u64(), c["only_b"].as_u64()),
        (Some(0), Some(0))
    );

    // Recall@1: A hits 400, 500, 501; B hits 300-309, 500, 501.
    let r1 = metric(&c, "s1", "Recall@1");
    let (ra, rb) = (r1["a"].as_f64().unwrap(), r1["b"].as_f64().unwrap());
    assert!((ra - 300.0 / 13.0).abs() < 1e-9, "{r1}");
    assert!((rb - 1200.0 / 13.0).abs() < 1e-9, "{r1}");
    assert!((r1["diff"].as_f64().unwrap() - 900.0 / 13.0).abs() < 1e-9);
    let ci = r1["ci"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    assert!(
        lo > 0.0 && lo < 900.0 / 13.0 && hi > 900.0 / 13.0,
        "large effect: {ci:?}"
    );
    // McNemar: 1 query right only in A, 10 only in B: p = 2 (1 + 11) / 2^11.
    assert_eq!(r1["mcnemar"]["a_only"], 1);
    assert_eq!(r1["mcnemar"]["b_only"], 10);
    assert!((r1["mcnemar"]["p"].as_f64().unwrap() - 24.0 / 2048.0).abs() < 1e-12);
    // A and B agree with each run's own metrics.json (same queries on both sides).
    let own = |dir: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
    };
    assert_eq!(own(&a)["s1"]["Recall@1"].as_f64(), Some(ra));
    assert_eq!(own(&b)["s1"]["Recall@1"].as_f64(), Some(rb));

    // Exactly the changed queries move, the broken one first.
    let moves = &c["moves"];
    assert_eq!(
        (
            moves["better"].as_u64(),
            moves["worse"].as_u64(),
            moves["same"].as_u64()
        ),
        (Some(10), Some(1), Some(2))
    );
    let moved = moves["moved"].as_array().unwrap();
    assert_eq!(moved[0]["id"], "400");
    assert_eq!(
        (moved[0]["a"].as_u64(), moved[0]["b"].as_u64()),
        (Some(1), Some(3)),
        "{moved:?}"
    );
    let fixed: Vec<&str> = moved[1..]
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(fixed, (300..310).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(
        moved[1..].iter().all(|m| m["a"] == 3 && m["b"] == 1),
        "{moved:?}"
    );

    // What changed: the one template (and the prompts folder in the resolved config).
    let files: Vec<&str> = c["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        ["config.resolved.toml", "prompts/general/reason.user.j2"]
    );
    let diff = c["changes"][1]["diff"].as_str().unwrap();
    assert!(
        diff.contains("-Instruction: {{ instruction }}")
            && diff.contains("+Instruction: {{ instruction|split|reverse"),
        "{diff}"
    );
    // Cost: 13 reasoner answers each (identical queries racing may share one through the request
    // cache); the variant's four distinct prompts were new, so at least four were sent.
    let reasoner = c["cost"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "reasoner")
        .unwrap();
    let answers = |side: &str| {
        reasoner[side]["attempts"].as_u64().unwrap()
            + reasoner[side]["cache_hits"].as_u64().unwrap()
    };
    assert_eq!((answers("a"), answers("b")), (13, 13), "{reasoner}");
    assert!(
        reasoner["b"]["attempts"].as_u64().unwrap() >= 4,
        "{reasoner}"
    );

    // The page: written into B's folder, values escaped by the template engine, links to both
    // runs' query views.
    let page_name = format!(
        "compare-base-{}.html",
        a.file_name().unwrap().to_string_lossy()
    );
    let html = std::fs::read_to_string(b.join(&page_name)).unwrap();
    assert!(
        html.contains("&lt;b&gt;read&lt;&#x2f;b&gt;") || html.contains("&lt;b&gt;read&lt;/b&gt;"),
        "diff escaped"
    );
    assert!(!html.contains("<b>read</b>"));
    let a_link = format!(
        "../../base/{}/report.html#q400",
        a.file_name().unwrap().to_string_lossy()
    );
    // The engine writes '/' in values as "&#x2f;", which a browser reads back as '/'.
    let unescaped = html.replace("&#x2f;", "/");
    assert!(
        unescaped.contains(&format!("href=\"{a_link}\"")),
        "{a_link} in the page"
    );
    assert!(html.contains("report.html#q400"));
    assert!(!html.contains("<script"));

    // The text form says the same.
    let (code, text, err) = compare(&env, &a, &b, &["--top", "3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("10 better, 1 worse, 2 the same"), "{text}");
    assert!(text.contains("... 8 more"), "{text}");
    assert!(text.contains("+Instruction:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_compared_with_itself_shows_no_difference() {
    let (env, a, _) = two_runs().await;
    let (code, out, err) = compare(&env, &a, &a, &["--json"]).await;
    assert_eq!(code, 0, "{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    for stage in c["stages"].as_array().unwrap() {
        for m in stage["metrics"].as_array().unwrap() {
            assert_eq!(m["diff"], 0.0, "{m}");
            assert_eq!(m["ci"], serde_json::json!([0.0, 0.0]), "{m}");
        }
    }
    assert_eq!(c["moves"]["moved"].as_array().unwrap().len(), 0);
    assert_eq!(c["moves"]["same"], 13);
    assert_eq!(c["changes"].as_array().unwrap().len(), 0);
    assert_eq!(metric(&c, "s1", "Recall@1")["mcnemar"]["p"], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_refuses_other_splits_and_uses_the_shared_queries_of_a_partial_run() {
    let (env, a, b) = two_runs().await;
    // A partial B: its journal lost three queries.
    let partial = env.path("partial");
    support::copy_dir(&b, &partial);
    let journal = std::fs::read_to_string(partial.join("queries.jsonl")).unwrap();
    let kept: Vec<&str> = journal
        .lines()
        .filter(|l| !l.contains("\"id\":\"30"))
        .collect();
    assert_eq!(kept.len(), 3, "the ten 30x queries dropped");
    std::fs::write(partial.join("queries.jsonl"), kept.join("\n") + "\n").unwrap();
    let (code, out, err) = compare(&env, &a, &partial, &["--json"]).await;
    assert_eq!(code, 0, "{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (c["shared"].as_u64(), c["only_a"].as_u64()),
        (Some(3), Some(10))
    );
    assert!(
        c["notes"][0]
            .as_str()
            .unwrap()
            .contains("3 queries both runs answered"),
        "{c}"
    );
    assert_eq!(c["moves"]["worse"], 1);

    // Another split: refused, naming both.
    let other = env.path("other-split");
    support::copy_dir(&b, &other);
    let info = std::fs::read_to_string(other.join("run.json")).unwrap();
    std::fs::write(
        other.join("run.json"),
        info.replace("\"split\": \"val\"", "\"split\": \"test1\""),
    )
    .unwrap();
    let (code, _, err) = compare(&env, &a, &other, &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cirr test1") && err.contains("same dataset and split"),
        "{err}"
    );

    // Not a run folder.
    let (code, _, err) = compare(&env, &a, &env.path("nowhere"), &[]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("run.json") && err.contains("run folder"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_whose_dataset_folder_moved_are_scored_from_their_journals() {
    let (env, a, b) = two_runs().await;
    let (code, out, err) = compare(&env, &a, &b, &["--json"]).await;
    assert_eq!(code, 0, "{err}");
    let before: Value = serde_json::from_str(&out).unwrap();
    std::fs::rename(&env.data, env.path("data/moved-away")).unwrap();
    let (code, out, err) = compare(&env, &a, &b, &["--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("--data"), "compare has no --data flag: {err}");
    let after: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        metric(&after, "s1", "Recall@1"),
        metric(&before, "s1", "Recall@1"),
        "the journals' targets score the same"
    );
    assert!(
        after["notes"]
            .to_string()
            .contains("scored from the targets the journals record"),
        "{}",
        after["notes"]
    );
}
