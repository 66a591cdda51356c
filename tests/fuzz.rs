//! Generated inputs for every parser of untrusted input (model answers, wire bodies and error
//! envelopes, journal lines, servers files, predictions files, `.npy` imports, image bytes and
//! data URLs): none may panic, and a few rules the documentation states must hold on all of them.
//!
//! Inputs come from proptest strategies: arbitrary text and bytes, realistic answers and bodies
//! with random edits (characters inserted, deleted, replaced; cuts), and JSON trees built from the
//! keys each parser looks for. A panic is caught, shrunk to a small input and reported with it.
//!
//! ```bash
//! cargo test --test fuzz -- --nocapture                    # 2,000 per parser (FUZZ_CASES; CI runs 10,000)
//! FUZZ_CASES=56000 cargo test --test fuzz -- --nocapture    # the long run: 1,064,000 inputs
//! FUZZ_SEED=7 cargo test --test fuzz -- --nocapture          # other inputs (default seed 0)
//! ```
//!
//! The last line printed is `fuzzed inputs: N across P parsers, panics: 0`; it is printed only when
//! no input made a parser panic or broke a stated rule (the test fails first). A failing input is
//! printed by proptest; it becomes an ordinary test beside the parser's own. The parsers and their
//! rules are in `tests/parsers` (shared with the cargo-fuzz target, `tests/cargo-fuzz`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::path::Path;

mod parsers;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Realistic model answers, the seeds of the edited ones.
const ANSWERS: &[&str] = &[
    "```json\n{\"edits\": [[\"Addition\", \"a dog\"]], \"descriptions\": [\"a dog on a red sofa\", \"a puppy\"]}\n```",
    "Sure! {\"edits\": [], \"descriptions\": [\"two cats\"]}",
    "```json\n{\"statements\": [], \"questions\": [[\"Is there a dog?\", \"True\"], [\"Is it red?\", \"False\"]]}\n```",
    "{\"questions\": [[\"Is there a dog?\", \"yes\"]]}",
    "ANSWER: Yes\nThe candidate shows the dog.",
    "**Answer:** [no] because",
    "Yes",
    "no.",
    "Caption: \"A man riding a horse.\"",
    "<image>\n\u{1b}[31mA red\tcar\u{7}",
    "",
];

/// Realistic wire bodies: chat answers (with logprobs), embeddings, error envelopes.
const BODIES: &[&str] = &[
    r#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Yes"},"logprobs":{"content":[{"token":"Yes","logprob":-0.1,"top_logprobs":[{"token":"Yes","logprob":-0.1},{"token":"No","logprob":-2.4}]}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11}}"#,
    r#"{"model":"m","choices":[{"message":{"content":"\n"},"finish_reason":"length"}]}"#,
    r#"{"object":"list","model":"m","data":[{"index":0,"embedding":[0.6,0.8]},{"index":1,"embedding":[1.0,0.0]}]}"#,
    r#"{"error":{"message":"This model's maximum context length is 4096 tokens","type":"BadRequestError","code":400}}"#,
    r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","code":404}"#,
    r#"{"detail":"Not Found"}"#,
];

/// One random edit of a text.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Delete(usize),
    Replace(usize, char),
    Cut(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        any::<char>(),
        prop::sample::select(vec![
            '{', '}', '[', ']', '"', ',', ':', '\\', '`', '\n', ' ', '0'
        ]),
    ];
    prop_oneof![
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), ch).prop_map(|(i, c)| Edit::Replace(i, c)),
        any::<usize>().prop_map(Edit::Cut),
    ]
}

fn apply(seed: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for e in edits {
        let n = chars.len();
        match *e {
            Edit::Insert(i, c) => chars.insert(i % (n + 1), c),
            Edit::Delete(i) if n > 0 => {
                chars.remove(i % n);
            }
            Edit::Replace(i, c) if n > 0 => chars[i % n] = c,
            Edit::Cut(i) => chars.truncate(i % (n + 1)),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Text: arbitrary, or one of `seeds` with up to 8 random edits.
fn text_from(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (
            prop::sample::select(seeds),
            prop::collection::vec(edit(), 0..8)
        )
            .prop_map(|(s, e)| apply(s, &e)),
    ]
}

/// JSON trees whose object keys are the ones the parsers look for.
fn json_tree() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "choices",
        "message",
        "content",
        "role",
        "finish_reason",
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "logprobs",
        "top_logprobs",
        "token",
        "logprob",
        "data",
        "embedding",
        "index",
        "model",
        "object",
        "error",
        "detail",
        "code",
        "type",
        "id",
        "status",
        "rounds",
        "s1",
        "ranking",
        "targets",
        "round",
        "requests",
        "0",
        "1",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "Yes", "No", "stop", "length", "list", "done", "failed", ""
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A wire body: arbitrary text, an edited real body, or a generated JSON tree.
fn body() -> impl Strategy<Value = String> {
    prop_oneof![text_from(BODIES), json_tree().prop_map(|v| v.to_string()),]
}

/// A `.npy` file: arbitrary bytes, or a valid one with random byte edits.
fn npy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend(std::iter::repeat_n(0u8, 24));
        b
    };
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6).prop_map(move |edits| {
            let mut b = valid.clone();
            for (i, x) in edits {
                let n = b.len();
                b[i % n] = x;
            }
            b
        }),
    ]
}

/// Image bytes: arbitrary, or the header of a real PNG/JPEG with random edits and cuts.
fn image_bytes() -> impl Strategy<Value = Vec<u8>> {
    let png = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let jpeg = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]))
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    };
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        (
            prop::sample::select(vec![png, jpeg]),
            prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            any::<usize>(),
        )
            .prop_map(|(mut b, edits, cut)| {
                for (i, x) in edits {
                    let n = b.len();
                    b[i % n] = x;
                }
                let keep = cut % (b.len() + 1);
                b.truncate(keep.max(b.len() / 2));
                b
            }),
    ]
}

/// Runs `check` on `cases()` inputs of `strategy`; returns how many were tried.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64
where
    S::Value: std::fmt::Debug,
{
    // Inputs drawn from FUZZ_SEED (default 0) and the parser's name: the same inputs every run
    // unless another seed is asked for.
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rng = proptest::test_runner::TestRng::from_seed(
        proptest::test_runner::RngAlgorithm::ChaCha,
        blake3::hash(format!("{seed}/{name}").as_bytes()).as_bytes(),
    );
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let tried = std::cell::Cell::new(0u64);
    let result = runner.run(&strategy, |v| {
        tried.set(tried.get() + 1);
        check(v)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    println!("{name}: {} inputs", tried.get());
    tried.get()
}

fn checked(r: parsers::Checked) -> Result<(), TestCaseError> {
    r.map_err(TestCaseError::fail)
}

#[test]
fn every_parser_of_untrusted_input_survives_generated_inputs() {
    let mut total = 0;
    let mut parsers = 0;
    let mut count = |n: u64| {
        total += n;
        parsers += 1;
    };
    let text = |name: &str| parsers::TEXT.iter().find(|p| p.0 == name).unwrap().1;
    for (name, seeds) in [
        ("captioner::parse", ANSWERS),
        ("reasoner::parse_reasoning", ANSWERS),
        ("reasoner::parse_propositions", ANSWERS),
        ("json::parse_original", ANSWERS),
        ("evaluator::decide", ANSWERS),
        ("ServersConfig::parse", SERVERS),
        ("server_metrics::read_page", parsers::METRICS),
        ("server_metrics::router_workers", ROUTER_LISTS),
    ] {
        let check = text(name);
        count(fuzz(name, text_from(seeds), |s| checked(check(&s))));
    }
    for name in [
        "wire::parse_chat + verifier::decide",
        "wire::parse_embeddings",
        "dialect::parse_error_body",
        "journal line (QueryRecord)",
    ] {
        let check = text(name);
        count(fuzz(name, body(), |s| checked(check(&s))));
    }
    count(fuzz("parse_retry_after", any::<String>(), |s| {
        checked(parsers::retry_after(&s))
    }));
    count(fuzz("predictions::parse", json_tree(), |v| {
        checked(parsers::predictions(&v))
    }));
    count(fuzz("parse_npy", npy_bytes(), |b| {
        checked(parsers::npy(&b))
    }));
    count(fuzz("image bytes and data URLs", image_bytes(), |b| {
        checked(parsers::image(&b))
    }));
    // Every input through the dispatcher the cargo-fuzz target runs, so it stays in step.
    count(fuzz(
        "cargo-fuzz dispatcher (parsers::any)",
        prop::collection::vec(any::<u8>(), 0..256),
        |b| checked(parsers::any(&b)),
    ));
    count(fuzz_annotations());
    count(fuzz(
        "captions file (index::build::load_captions)",
        text_from(CAPTIONS),
        |s| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("captions.json");
            std::fs::write(&path, s).unwrap();
            let _ = imagescope::index::build::load_captions(&path);
            Ok(())
        },
    ));
    println!("fuzzed inputs: {total} across {parsers} parsers, panics: 0");
}

/// Seeds for a router's worker list (vllm-router 0.1.17's `GET /list_workers`, recorded).
const ROUTER_LISTS: &[&str] = &[r#"{"urls":["http://127.0.0.1:8013","http://127.0.0.1:8003"]}"#];

const CAPTIONS: &[&str] = &[r#"{"a.jpg": "a dog on a sofa", "b/c.png": "two cats"}"#];

/// Annotation files of CIRR, CIRCO, FashionIQ and VisDial: the first records of each vendored
/// file, edited, loaded by `datasets::load_queries` beside the benchmark's other files.
fn fuzz_annotations() -> u64 {
    use imagescope::config::DatasetName;
    use imagescope::datasets::{DatasetSpec, load_queries};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/benchmarks");
    let head = |file: &str, n: usize| -> Vec<Value> {
        let v: Value =
            serde_json::from_slice(&std::fs::read(fixtures.join(file)).unwrap()).unwrap();
        v.as_array().unwrap().iter().take(n).cloned().collect()
    };
    let dir = tempfile::tempdir().unwrap();
    // (dataset, split, the file fuzzed, its seed text); the other files are written once.
    let mut worlds: Vec<(DatasetName, &str, std::path::PathBuf, String)> = Vec::new();
    let cirr = dir.path().join("cirr");
    std::fs::create_dir_all(&cirr).unwrap();
    std::fs::copy(
        fixtures.join("cirr/split.rc2.val.json"),
        cirr.join("split.rc2.val.json"),
    )
    .unwrap();
    worlds.push((
        DatasetName::Cirr,
        "val",
        cirr.join("cap.rc2.val.json"),
        serde_json::to_string_pretty(&head("cirr/cap.rc2.val.json", 3)).unwrap(),
    ));
    let circo = dir.path().join("circo");
    std::fs::create_dir_all(&circo).unwrap();
    worlds.push((
        DatasetName::Circo,
        "val",
        circo.join("val.json"),
        serde_json::to_string_pretty(&head("circo/val.json", 3)).unwrap(),
    ));
    let fiq = dir.path().join("fashioniq");
    std::fs::create_dir_all(&fiq).unwrap();
    std::fs::copy(
        fixtures.join("fashioniq/split.dress.val.json"),
        fiq.join("split.dress.val.json"),
    )
    .unwrap();
    worlds.push((
        DatasetName::FashioniqDress,
        "val",
        fiq.join("cap.dress.val.json"),
        serde_json::to_string_pretty(&head("fashioniq/cap.dress.val.json", 3)).unwrap(),
    ));
    let visdial = dir.path().join("visdial");
    std::fs::create_dir_all(&visdial).unwrap();
    let dialogues = head("visdial/VisDial_v1.0_queries_val.json", 3);
    let space: Vec<&Value> = dialogues.iter().map(|d| &d["img"]).collect();
    std::fs::write(
        visdial.join("Search_Space_val_50k.json"),
        serde_json::to_string(&space).unwrap(),
    )
    .unwrap();
    worlds.push((
        DatasetName::Visdial,
        "val",
        visdial.join("VisDial_v1.0_queries_val.json"),
        serde_json::to_string_pretty(&dialogues).unwrap(),
    ));
    // The seeds load as they are: the edits start from files the loaders accept.
    for (name, split, file, seed) in &worlds {
        std::fs::write(file, seed).unwrap();
        let spec = DatasetSpec {
            name: *name,
            root: file.parent().unwrap().to_path_buf(),
            split: split.to_string(),
            image_ext: None,
        };
        assert!(
            load_queries(&spec).is_ok(),
            "{name:?}: {:?}",
            load_queries(&spec).err()
        );
    }
    let n = worlds.len();
    let strategy = (
        0..n,
        any::<bool>(),
        prop::collection::vec(edit(), 0..8),
        any::<String>(),
    );
    fuzz(
        "dataset annotations (CIRR, CIRCO, FashionIQ, VisDial)",
        strategy,
        |(i, arbitrary, edits, text)| {
            let (name, split, file, seed) = &worlds[i];
            let content = if arbitrary { text } else { apply(seed, &edits) };
            std::fs::write(file, content).unwrap();
            let spec = DatasetSpec {
                name: *name,
                root: file.parent().unwrap().to_path_buf(),
                split: split.to_string(),
                image_ext: None,
            };
            let _ = load_queries(&spec);
            Ok(())
        },
    )
}

/// A servers file, the seed of the edited ones.
const SERVERS: &[&str] = &[
    "[roles.reasoner]\nendpoints = [\"http://127.0.0.1:8001/v1\"]\nmodel = \"m\"\napi = \"vllm\"\nmax_in_flight = 64\n\n[roles.embedder]\nendpoints = [\"http://127.0.0.1:8005/v1\"]\nmodel = \"clip\"\napi = \"infinity\"\nembed_shape = \"infinity\"\ndimension = 768\n[roles.embedder.retry]\nmax_retries = 3\n",
];
