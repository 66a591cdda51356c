//! Role adapters: the full request body of every role (snapshots, images as hashes), the
//! evaluator composite's pixel hash, a corpus of messy model answers with their documented
//! outcomes, and the logprob verifier on a vLLM-shaped answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use imagescope::config::{EvaluatorParse, Role, RoleServer, ServersConfig, VerifierMode};
use imagescope::images::EncodedImage;
use imagescope::prompts::{Family, PromptSet};
use imagescope::roles::reasoner::{self, Edit, PropositionParse, ReasonInput};
use imagescope::roles::{captioner, embedder, evaluator, verifier};
use imagescope::serving::ChatRequest;
use imagescope::serving::wire::{self, ImageRendering};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn server(role: Role) -> RoleServer {
    let cfg = ServersConfig::load(&root().join("configs/servers/vllm.toml")).unwrap();
    cfg.roles[&role].clone()
}

fn prompts() -> PromptSet {
    PromptSet::load(&PromptSet::bundled_dir()).unwrap()
}

fn gradient(w: u32, h: u32, seed: u8) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x % 251) as u8 ^ seed,
            (y % 241) as u8,
            seed.wrapping_mul(3),
        ])
    }))
}

fn png(w: u32, h: u32, seed: u8) -> EncodedImage {
    imagescope::images::encode_png(&gradient(w, h, seed), "test image").unwrap()
}

fn body(role: Role, req: &ChatRequest) -> Value {
    wire::chat_body(req, &server(role), ImageRendering::Placeholder)
}

fn reason_input() -> ReasonInput {
    ReasonInput {
        instruction: "has two of them and they sit on a wooden bench".into(),
        reference_description: "A small brown puppy sits on green grass.".into(),
        has_reference: true,
    }
}

#[test]
fn request_bodies_of_every_role() {
    let p = prompts();
    let g = Family::General;
    insta::assert_json_snapshot!(
        "body__captioner",
        body(
            Role::Captioner,
            &captioner::request(&p, g, png(64, 48, 1)).unwrap()
        )
    );
    insta::assert_json_snapshot!(
        "body__captioner_fashioniq_dress",
        body(
            Role::Captioner,
            &captioner::request(&p, Family::FashioniqDress, png(64, 48, 1)).unwrap()
        )
    );
    let reason = reasoner::reason_request(&p, g, &reason_input(), None).unwrap();
    insta::assert_json_snapshot!("body__reasoner_reason", body(Role::Reasoner, &reason));
    let edits = vec![
        Edit {
            kind: "Modification".into(),
            text: "one puppy becomes two puppies".into(),
        },
        Edit {
            kind: "Modification".into(),
            text: "the grass becomes a wooden bench".into(),
        },
    ];
    insta::assert_json_snapshot!(
        "body__reasoner_propositions",
        body(
            Role::Reasoner,
            &reasoner::propositions_request(&p, g, &reason_input().instruction, &edits, None)
                .unwrap()
        )
    );
    for (name, schema) in [
        ("openai", imagescope::config::ResponseSchema::Openai),
        ("llama_cpp", imagescope::config::ResponseSchema::LlamaCpp),
    ] {
        let req = reasoner::reason_request(&p, g, &reason_input(), Some(schema)).unwrap();
        insta::assert_json_snapshot!(format!("response_format__reason_{name}"), req.extra);
        let req = reasoner::propositions_request(&p, g, "x", &edits, Some(schema)).unwrap();
        insta::assert_json_snapshot!(format!("response_format__propositions_{name}"), req.extra);
    }
    let failure = reasoner::parse_reasoning("I think it is two puppies.").unwrap_err();
    insta::assert_json_snapshot!(
        "body__reasoner_reask",
        body(
            Role::Reasoner,
            &reasoner::reask_request(&p, g, &reason, "I think it is two puppies.", &failure)
                .unwrap()
        )
    );
    for (name, mode) in [
        ("substring", VerifierMode::Substring),
        ("first_word", VerifierMode::FirstWord),
        ("logprob", VerifierMode::Logprob),
    ] {
        let req = verifier::request(&p, g, png(64, 48, 2), "Are there two puppies?", mode).unwrap();
        insta::assert_json_snapshot!(format!("body__verifier_{name}"), body(Role::Verifier, &req));
    }
    let composite =
        evaluator::composite_png(Some(&gradient(120, 90, 3)), &gradient(90, 120, 4)).unwrap();
    let req = evaluator::request(&p, g, composite, "Has two of them.  ", true).unwrap();
    insta::assert_json_snapshot!("body__evaluator", body(Role::Evaluator, &req));

    let mut embed = server(Role::Embedder);
    for (name, shape) in [
        ("vllm_messages", "vllm-messages"),
        ("infinity", "infinity"),
        ("openai_input", "openai-input"),
    ] {
        embed.embed_shape = serde_json::from_value(json!(shape)).unwrap();
        let texts = wire::embed_bodies(
            &embedder::texts(&["A black dog.".into(), "A black dog on a sofa.".into()]),
            &embed,
            ImageRendering::Placeholder,
        )
        .unwrap();
        insta::assert_json_snapshot!(format!("body__embedder_text_{name}"), texts);
        let images = wire::embed_bodies(
            &[embedder::image(png(32, 32, 5))],
            &embed,
            ImageRendering::Placeholder,
        );
        match images {
            Ok(b) => insta::assert_json_snapshot!(format!("body__embedder_image_{name}"), b),
            Err(e) => assert_eq!(
                name, "openai_input",
                "only the text-only shape refuses images: {e}"
            ),
        }
    }
}

#[test]
fn placeholders_never_carry_image_bytes_but_sent_bodies_do() {
    let p = prompts();
    let img = png(64, 48, 9);
    let req = captioner::request(&p, Family::General, img.clone()).unwrap();
    let shown = body(Role::Captioner, &req).to_string();
    assert!(shown.contains(img.short_hash()) && !shown.contains("base64"));
    let sent = wire::chat_body(
        &req,
        &server(Role::Captioner),
        ImageRendering::Send(Default::default()),
    );
    // A body built for sending marks where each image goes; its bytes carry the data URL.
    assert!(!sent.to_string().contains("base64"));
    let bytes = String::from_utf8(wire::encode_body(&sent, req.images())).unwrap();
    assert!(bytes.contains(&img.data_url()));
}

#[test]
fn composite_pixels_are_stable() {
    let c = evaluator::composite(Some(&gradient(300, 200, 7)), &gradient(150, 300, 8));
    insta::assert_snapshot!(
        "composite_pixel_hash",
        blake3::hash(c.as_raw()).to_hex().to_string()
    );
    let none = evaluator::composite(None, &gradient(150, 300, 8));
    insta::assert_snapshot!(
        "composite_pixel_hash_without_reference",
        blake3::hash(none.as_raw()).to_hex().to_string()
    );
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    parser: String,
    text: String,
    expect: String,
}

fn outcome(case: &Case) -> (String, Value) {
    let answer = |text: &str| {
        wire::parse_chat(&json!({"choices": [{"message": {"content": text}}]}).to_string()).unwrap()
    };
    let parse = |original, normalize| PropositionParse {
        original,
        normalize,
    };
    let ok_or_fail = |r: Result<Value, String>| match r {
        Ok(v) => ("ok".to_string(), v),
        Err(e) => ("fail".to_string(), json!({"reason": e})),
    };
    match case.parser.as_str() {
        "reasoning" => ok_or_fail(
            reasoner::parse_reasoning(&case.text)
                .map(|r| serde_json::to_value(r).unwrap())
                .map_err(|e| e.reason),
        ),
        "propositions" | "propositions-parity" => {
            let how = if case.parser == "propositions" {
                parse(false, true)
            } else {
                parse(true, false)
            };
            ok_or_fail(
                reasoner::parse_propositions(&case.text, how)
                    .map(|r| serde_json::to_value(r).unwrap())
                    .map_err(|e| e.reason),
            )
        }
        "verifier-substring" | "verifier-first-word" => {
            let mode = if case.parser.ends_with("substring") {
                VerifierMode::Substring
            } else {
                VerifierMode::FirstWord
            };
            let v = verifier::decide(&answer(&case.text), mode);
            (
                (if v.yes { "yes" } else { "no" }).into(),
                serde_json::to_value(v).unwrap(),
            )
        }
        "evaluator-strict" | "evaluator-tolerant" => {
            let mode = if case.parser.ends_with("strict") {
                EvaluatorParse::Strict
            } else {
                EvaluatorParse::Tolerant
            };
            let d = evaluator::decide(&case.text, mode);
            (
                (if d.accepted { "yes" } else { "no" }).into(),
                serde_json::to_value(d).unwrap(),
            )
        }
        "caption" => ok_or_fail(
            captioner::parse(&case.text)
                .map(Value::String)
                .map_err(|e| e.reason),
        ),
        other => panic!("unknown parser {other}"),
    }
}

#[test]
fn messy_answers_are_parsed_or_rejected_as_documented() {
    let cases: Vec<Case> = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/messy_answers.json")).unwrap(),
    )
    .unwrap();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut record = Vec::new();
    let mut wrong = Vec::new();
    for case in &cases {
        let (got, detail) = outcome(case);
        if got != case.expect {
            wrong.push(format!(
                "{}: expected {}, got {got} ({detail})",
                case.name, case.expect
            ));
        }
        record.push(
            json!({"name": case.name, "parser": case.parser, "outcome": got, "detail": detail}),
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    insta::assert_yaml_snapshot!("messy_answers", record);
}

#[test]
fn logprob_mode_reads_p_yes_from_a_recorded_vllm_answer() {
    // Recorded from vLLM 0.32 serving SmolLM2-135M-Instruct ("Answer yes or no: is the sky
    // blue?"): the first token's top 5 are No -0.5932, Yes -1.8432, no -3.2182, yes -3.3432, The.
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/vllm/chat_logprobs.json")).unwrap(),
    )
    .unwrap();
    let text = record["body"].as_str().unwrap().to_string();
    let answer = wire::parse_chat(&text).unwrap();
    let v = verifier::decide(&answer, VerifierMode::Logprob);
    let (yes, no) = (
        (-1.843_209_4f64).exp() + (-3.343_209_3f64).exp(),
        (-0.593_209_4f64).exp() + (-3.218_209_3f64).exp(),
    );
    assert!((v.p_yes.unwrap() - yes / (yes + no)).abs() < 1e-6, "{v:?}");
    assert!(!v.yes && v.note.is_none(), "{v:?}");

    // A server that ignores `logprobs`: the first word decides, and the verdict says so.
    let mut plain: Value = serde_json::from_str(&text).unwrap();
    plain["choices"][0]
        .as_object_mut()
        .unwrap()
        .remove("logprobs");
    let v = verifier::decide(
        &wire::parse_chat(&plain.to_string()).unwrap(),
        VerifierMode::Logprob,
    );
    assert!(
        !v.yes && v.p_yes.is_none(),
        "the first word, \"No.\", decides"
    );
    assert!(v.note.unwrap().contains("no logprobs"));
}

#[test]
fn a_logprob_verdict_is_read_from_top_logprobs_when_the_sampled_text_is_a_newline() {
    // vLLM's answer with the sampled token replaced by "\n": the text says nothing, the first
    // token's alternatives still hold the verdict.
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/vllm/chat_logprobs.json")).unwrap(),
    )
    .unwrap();
    let mut body: Value = serde_json::from_str(record["body"].as_str().unwrap()).unwrap();
    body["choices"][0]["message"]["content"] = json!("\n");
    body["choices"][0]["logprobs"]["content"][0]["token"] = json!("\n");
    let answer = wire::parse_chat(&body.to_string()).expect("an answer with probabilities");
    let v = verifier::decide(&answer, VerifierMode::Logprob);
    let p = v.p_yes.expect("read from top_logprobs");
    assert!(p > 0.0 && p < 0.5 && !v.yes, "{v:?}");
    // Alternatives with no yes or no among them: no probability, the first word decides, and
    // the verdict says why (stage 2 counts it as a fallback).
    let mut hedged = body.clone();
    hedged["choices"][0]["message"]["content"] = json!("Maybe.");
    for alt in hedged["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        .as_array_mut()
        .unwrap()
    {
        alt["token"] = json!("Maybe");
    }
    let answer = wire::parse_chat(&hedged.to_string()).unwrap();
    let v = verifier::decide(&answer, VerifierMode::Logprob);
    assert!(v.p_yes.is_none() && !v.yes, "{v:?}");
    let note = v.note.unwrap_or_default();
    assert!(
        note.starts_with("no yes/no token among the top logprobs; decided by the first word")
            && note.contains("read as no"),
        "{note}"
    );
    // Without probabilities, whitespace is still no answer.
    body["choices"][0]
        .as_object_mut()
        .unwrap()
        .remove("logprobs");
    assert!(matches!(
        wire::parse_chat(&body.to_string()),
        Err(imagescope::serving::ErrorKind::EmptyContent { .. })
    ));
}

#[test]
fn prompt_render_needs_no_server() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
        .current_dir(root())
        .args([
            "prompt",
            "render",
            "--role",
            "evaluator",
            "--dataset",
            "circo",
            "--instruction",
            "is red",
        ])
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "OpenGVLab/InternVL2-8B");
    let url = v["messages"][0]["content"][0]["image_url"]["url"]
        .as_str()
        .unwrap();
    assert!(url.starts_with("<image image/png blake3:"), "{url}");
    assert!(
        v["messages"][0]["content"][1]["text"]
            .as_str()
            .unwrap()
            .contains("\"is red\"")
    );
}
