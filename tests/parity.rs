//! The `parity` profile reproduces the original code on unusual answer shapes (issue: parity
//! details), run end to end against the fake world (TEST DOUBLES, no model runs). Each test runs
//! the same CIRR query under `parity` and `default`, with the reasoner (or verifier) scripted to
//! give one unusual answer, and checks the ranking the original's rule produces beside ours.
//!
//! The world: twelve solid-colour images (`support::env::IMAGES`), a bag-of-words "CLIP" and
//! captions "A photo of <description>.". Image i is `dev-i-0-img0`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::env::{Env, write_cirr};

fn key(i: usize) -> String {
    format!("dev-{i}-0-img0")
}

/// Makes the reasoner answer `reason` at stage 1 and `propositions` at stage 2a; returns the
/// stage-2a prompts it is sent.
fn script(env: &Env, reason: &str, propositions: &str) -> Arc<Mutex<Vec<String>>> {
    let seen_s2 = Arc::new(Mutex::new(Vec::new()));
    let (r, p, seen) = (
        reason.to_string(),
        propositions.to_string(),
        seen_s2.clone(),
    );
    env.reasoner[0].set_chat_responder(move |req| {
        let first = req["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if first.contains("yes/no questions") {
            seen.lock().unwrap().push(first);
            p.clone()
        } else {
            r.clone()
        }
    });
    seen_s2
}

/// One CIRR query: reference image `reference`, instruction, target.
async fn env_with(reference: usize, instruction: &str, target: usize) -> Env {
    let env = Env::start("dev", key, 1).await;
    write_cirr(&env.data, &[(101, reference, instruction, target)]);
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    env
}

async fn run(env: &Env, profile: &str, pipeline: &str) -> (Value, Value) {
    let config: PathBuf = env.configs(
        "cirr",
        "val",
        &format!("profile = \"{profile}\"\n{pipeline}"),
        None,
    );
    let report = env.run(&config, &["--cache", "off"]).await;
    let folder = Path::new(report["folder"].as_str().unwrap());
    let journal = Env::journal(folder);
    assert_eq!(journal.len(), 1, "{report}");
    (report, journal[0]["rounds"][0].clone())
}

fn ranking(round: &Value, stage: &str) -> Vec<String> {
    round[stage]["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn descriptions(round: &Value) -> Vec<String> {
    round["s1"]["descriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// What the world says the image of a verifier request shows ("" without one).
fn described(world: &support::world::World, req: &Value) -> String {
    let url = req["messages"][0]["content"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["type"] == "image_url"))
        .and_then(|p| p["image_url"]["url"].as_str())
        .unwrap_or("");
    world.describe(url, None).unwrap_or_default()
}

const PROPS: &str =
    "```json\n{\"statements\": [], \"questions\": [[\"Is it white?\", \"True\"]]}\n```";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_without_descriptions_keep_the_edits_and_search_by_the_reference_caption() {
    // Reference: image 6, "black dog". The answer has edits but no descriptions.
    let env = env_with(6, "make it white", 7).await;
    let seen_s2 = script(
        &env,
        "```json\n{\"edits\": [[\"Modification\", \"the dog turns white\"]]}\n```",
        PROPS,
    );
    let (_, parity) = run(&env, "parity", "").await;
    // The original: step2 = [reference caption]; the model's edits go on to stage 2a; the
    // reference stays in the ranking and, searched by its own caption, comes first.
    assert_eq!(descriptions(&parity), ["A photo of black dog."]);
    assert_eq!(ranking(&parity, "s1")[0], key(6));
    assert_eq!(ranking(&parity, "s1")[1], key(8), "black dog sofa next");
    assert!(seen_s2.lock().unwrap()[0].contains("the dog turns white"));
    seen_s2.lock().unwrap().clear();

    let (_, default) = run(&env, "default", "").await;
    // Ours: no descriptions is unusable; after the re-asks the fallback searches with the
    // instruction and the reference caption, and stage 2a sees the instruction as the edit.
    assert_eq!(
        descriptions(&default),
        ["make it white", "A photo of black dog."]
    );
    assert!(
        !ranking(&default, "s1").contains(&key(6)),
        "reference removed"
    );
    let seen = seen_s2.lock().unwrap();
    assert!(seen[0].contains("make it white") && !seen[0].contains("the dog turns white"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfenced_nested_json_is_cut_at_the_first_brace_in_parity() {
    let env = env_with(6, "make it white", 7).await;
    script(
        &env,
        "Sure: {\"edits\": [{\"type\": \"Modification\", \"text\": \"white\"}], \"descriptions\": [\"white dog\"]}",
        PROPS,
    );
    // The original's `{...}` match stops at the first `}`: the descriptions are cut off, so it
    // searches by the reference caption (black dog first).
    let (_, parity) = run(&env, "parity", "").await;
    assert_eq!(descriptions(&parity), ["A photo of black dog."]);
    assert_eq!(ranking(&parity, "s1")[0], key(6));
    // Ours reads the whole balanced object: the white dog first.
    let (_, default) = run(&env, "default", "").await;
    assert_eq!(descriptions(&default), ["white dog"]);
    assert_eq!(ranking(&default, "s1")[0], key(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_json_block_counts_in_parity_at_both_stages() {
    let env = env_with(4, "a white dog", 7).await;
    script(
        &env,
        "```json\n{\"edits\": [[\"Addition\", \"a dog\"]]}\n```\nAnd the targets:\n```json\n{\"descriptions\": [\"white dog\"]}\n```",
        "```json\n{\"statements\": [\"It is white.\"]}\n```\n```json\n{\"questions\": [[\"Is there a cat?\", \"True\"]]}\n```",
    );
    let (_, parity) = run(&env, "parity", "").await;
    // Stage 1: the first block has no descriptions → the reference caption ("green tree").
    assert_eq!(descriptions(&parity), ["A photo of green tree."]);
    assert_eq!(ranking(&parity, "s1")[0], key(4));
    // Stage 2a: the first block has no questions → no propositions, the stage-1 order stays.
    assert_eq!(ranking(&parity, "s2"), ranking(&parity, "s1"));

    let (_, default) = run(&env, "default", "").await;
    assert_eq!(descriptions(&default), ["white dog"]);
    assert_eq!(ranking(&default, "s1")[..2], [key(7), key(6)]);
    // The cat question of the second block is verified: only the cats say yes, and move up.
    assert_eq!(ranking(&default, "s2")[..2], [key(9), key(10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_uses_every_description_and_every_proposition() {
    let env = env_with(4, "a red car", 0).await;
    // Ten descriptions: eight "car" and, past our cap of 8, two "yellow flower".
    let mut d: Vec<&str> = vec!["car"; 8];
    d.extend(["yellow flower", "yellow flower"]);
    let reason = format!(
        "```json\n{}\n```",
        serde_json::json!({"edits": [["Addition", "a red car"]], "descriptions": d})
    );
    let questions: Vec<Value> = (0..12)
        .map(|i| serde_json::json!([format!("Is there a red thing {i}?"), "True"]))
        .collect();
    let props = format!(
        "```json\n{}\n```",
        serde_json::json!({"statements": [], "questions": questions})
    );
    script(&env, &reason, &props);
    let pipeline = "top_k = 3";
    let (_, parity) = run(&env, "parity", pipeline).await;
    assert_eq!(descriptions(&parity).len(), 10);
    let p1 = ranking(&parity, "s1");
    assert_eq!(p1[..2], [key(0), key(1)], "the two cars");
    assert_eq!(
        p1[2],
        key(11),
        "the two yellow-flower descriptions lift the flower"
    );
    assert!(parity["s2"]["verdicts"][0].as_array().unwrap().len() == 12);

    let (_, default) = run(&env, "default", pipeline).await;
    assert_eq!(descriptions(&default).len(), 8);
    let d1 = ranking(&default, "s1");
    assert_eq!(d1[..2], [key(0), key(1)]);
    assert_eq!(
        d1[2],
        key(2),
        "without them every other image ties at 0: gallery order"
    );
    assert!(default["s2"]["verdicts"][0].as_array().unwrap().len() == 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_description_is_embedded_and_averaged_in_parity() {
    let env = env_with(4, "a white dog", 7).await;
    script(
        &env,
        "```json\n{\"edits\": [[\"Addition\", \"a white dog\"]], \"descriptions\": [\"white dog\", \" \"]}\n```",
        PROPS,
    );
    let (_, parity) = run(&env, "parity", "").await;
    assert_eq!(descriptions(&parity), ["white dog", " "]);
    // The fake CLIP embeds blank text as its first axis ("red"): the red car climbs to second.
    assert_eq!(ranking(&parity, "s1")[..2], [key(7), key(0)]);
    let (_, default) = run(&env, "default", "").await;
    assert_eq!(descriptions(&default), ["white dog"]);
    let d = ranking(&default, "s1");
    assert_eq!(d[0], key(7));
    assert_ne!(d[1], key(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_verifier_answer_is_no_in_parity_and_a_failure_otherwise() {
    let env = env_with(4, "a white dog, not a cat", 7).await;
    script(
        &env,
        "```json\n{\"edits\": [[\"Addition\", \"white\"]], \"descriptions\": [\"white cat\"]}\n```",
        "```json\n{\"statements\": [], \"questions\": [[\"Is it white?\", \"True\"], [\"Is there a cat?\", \"False\"]]}\n```",
    );
    // The verifier answers the cat question about a non-cat with nothing at all.
    let world = env.world.clone();
    env.verifier.set_chat_responder(move |req| {
        let d = described(&world, req);
        let text = req.to_string();
        let word = if text.contains("cat?") {
            "cat"
        } else {
            "white"
        };
        match (d.contains(word), word) {
            (true, _) => "Yes".into(),
            (false, "cat") => String::new(),
            (false, _) => "No".into(),
        }
    });
    let pipeline = "top_k = 2\nalpha = 1\nstages = [\"s1\", \"s2\"]";
    // Stage 1 puts the white cat (9) before the white dog (7).
    let (report, parity) = run(&env, "parity", pipeline).await;
    assert_eq!(ranking(&parity, "s1")[..2], [key(9), key(7)]);
    // Parity: the dog's empty answer is "no", matching the expected False: dog 2, cat 1.
    assert_eq!(ranking(&parity, "s2")[..2], [key(7), key(9)]);
    // And the record says a non-answer, not the model, decided that order.
    let record = &Env::journal(Path::new(report["folder"].as_str().unwrap()))[0];
    let fallbacks = record["fallbacks"].to_string();
    assert!(
        fallbacks.contains("s2.verify") && fallbacks.contains("read as no"),
        "{fallbacks}"
    );
    let (_, default) = run(&env, "default", pipeline).await;
    assert_eq!(ranking(&default, "s1")[..2], [key(9), key(7)]);
    // Ours: a failed request scores 0: dog 1, cat 1, the stage-1 order stays.
    assert_eq!(ranking(&default, "s2")[..2], [key(9), key(7)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cirr_val_is_cut_to_2400_queries_and_reports_the_originals_recall_list_in_parity() {
    let env = Env::start("dev", key, 1).await;
    let queries: Vec<(u64, usize, &str, usize)> = (0..2403)
        .map(|i| (1000 + i as u64, i % 12, "a red car", 0))
        .collect();
    write_cirr(&env.data, &queries);
    let index = env.configs("cirr", "val", "", None);
    env.index(&index).await;
    let opts = "queries_in_flight = 128";
    let parity_cfg = env.configs(
        "cirr",
        "val",
        &format!("profile = \"parity\"\n{opts}"),
        None,
    );
    let parity = env.run(&parity_cfg, &["--stages", "s1"]).await;
    assert_eq!(parity["queries"], 2400, "the original's data loader cap");
    assert!(
        parity["notes"][0]
            .as_str()
            .unwrap()
            .contains("first 2400 of 2403"),
        "{}",
        parity["notes"]
    );
    let names: Vec<&String> = parity["metrics"]["s1"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        names,
        [1, 2, 3, 5, 10, 20, 50, 100]
            .map(|k| format!("Recall@{k}"))
            .iter()
            .collect::<Vec<_>>()
    );
    let default_cfg = env.configs("cirr", "val", opts, None);
    let default = env.run(&default_cfg, &["--stages", "s1"]).await;
    assert_eq!(default["queries"], 2403);
    assert!(default["notes"].as_array().unwrap().is_empty());
    let names: Vec<&str> = default["metrics"]["s1"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["Recall@1", "Recall@5", "Recall@10", "Recall@50"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logprob_verifier_ranks_by_probability_and_an_answer_without_one_is_a_fallback() {
    let env = env_with(4, "a white dog, not a cat", 7).await;
    script(
        &env,
        "```json\n{\"edits\": [[\"Addition\", \"white\"]], \"descriptions\": [\"white cat\"]}\n```",
        "```json\n{\"statements\": [], \"questions\": [[\"Is it white?\", \"True\"], [\"Is there a cat?\", \"False\"]]}\n```",
    );
    let pipeline = "verifier_mode = \"logprob\"\nrerank = \"probability-sum\"\ntop_k = 2\nalpha = 1\nstages = [\"s1\", \"s2\"]";
    // The world's verifier answers Yes or No, and the fake sends the first token's
    // log-probabilities when asked, as vLLM does: every verdict has its P(yes), no fallback.
    let (report, round) = run(&env, "default", pipeline).await;
    let verdicts: Vec<&Value> = round["s2"]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c.as_array().unwrap())
        .collect();
    assert_eq!(verdicts.len(), 4, "{round}");
    for v in &verdicts {
        let p = v["p_yes"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&p) && p != 0.0 && p != 1.0, "{v}");
        assert_eq!(v["yes"].as_bool().unwrap(), p >= 0.5, "{v}");
    }
    // Each candidate's score is the sum of the probabilities of the expected answers (white:
    // yes, cat: no), and the top two are in the order of their scores.
    let scores: Vec<f64> = round["s2"]["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (c, per) in round["s2"]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let p = |q: usize| per[q]["p_yes"].as_f64().unwrap();
        let want = p(0) + (1.0 - p(1));
        assert!(
            (scores[c] - want).abs() < 1e-9,
            "{c}: {} vs {want}",
            scores[c]
        );
    }
    let candidates: Vec<String> = round["s2"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let score_of = |k: &str| scores[candidates.iter().position(|c| c == k).unwrap()];
    let top = ranking(&round, "s2");
    assert!(score_of(&top[0]) >= score_of(&top[1]), "{round}");
    let record = &Env::journal(Path::new(report["folder"].as_str().unwrap()))[0];
    assert!(
        !record["fallbacks"].to_string().contains("s2.verify"),
        "{record}"
    );
    // The verifier hedges on the cat question: no yes/no first token, so no probability. The
    // first word decides (not yes: no), and the record says so.
    let world = env.world.clone();
    env.verifier.set_chat_responder(move |req| {
        let d = described(&world, req);
        if req.to_string().contains("cat?") {
            "Possibly.".into()
        } else if d.contains("white") {
            "Yes".into()
        } else {
            "No".into()
        }
    });
    let (report, round) = run(&env, "default", pipeline).await;
    let record = &Env::journal(Path::new(report["folder"].as_str().unwrap()))[0];
    let fallbacks = record["fallbacks"].to_string();
    assert!(
        fallbacks.contains("s2.verify")
            && fallbacks.contains("2 verifier answer(s) without a yes/no probability")
            && fallbacks.contains("the server returned no logprobs")
            && fallbacks.contains("neither yes nor no; read as no")
            && fallbacks.contains("probability 1 or 0 in the sum"),
        "{fallbacks}"
    );
    // Those verdicts are no, with no probability (0 in the sum).
    for per in round["s2"]["verdicts"].as_array().unwrap() {
        assert_eq!(per[1]["yes"], false, "{per}");
        assert!(per[1]["p_yes"].is_null(), "{per}");
    }
}
