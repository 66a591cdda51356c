//! Every in-memory parser of untrusted input, each with what must hold of its output: one owner
//! of those rules for the generated inputs of `tests/fuzz.rs` (proptest, in `cargo test`) and the
//! coverage-guided cargo-fuzz target in `tests/cargo-fuzz` (long runs, nightly toolchain). A check
//! returns what broke; a panic inside a parser is the other failure both catch.
//!
//! The file-based loaders (dataset annotations, captions files) are fuzzed by `tests/fuzz.rs`
//! only: they read from disk.

use std::path::Path;

use imagescope::config::{EvaluatorParse, ServersConfig, VerifierMode};
use imagescope::roles::{captioner, evaluator, json as answer_json, reasoner, verifier};
use imagescope::serving::{dialect, parse_retry_after, wire};
use serde_json::Value;

/// What a check found broken.
pub type Checked = Result<(), String>;

fn rule(ok: bool, what: impl FnOnce() -> String) -> Checked {
    if ok { Ok(()) } else { Err(what()) }
}

/// The captioner's reader: a caption is never empty and has no control characters.
pub fn captioner(s: &str) -> Checked {
    if let Ok(caption) = captioner::parse(s) {
        rule(!caption.is_empty(), || "an empty caption".into())?;
        rule(!caption.chars().any(char::is_control), || {
            format!("control characters in {caption:?}")
        })?;
    }
    Ok(())
}

/// The reasoner's description readers (both rules).
pub fn reasoning(s: &str) -> Checked {
    let _ = reasoner::parse_reasoning(s);
    let _ = reasoner::parse_reasoning_as_original(s, "a reference");
    Ok(())
}

/// The propositions reader, all four ways: at most `MAX_PROPOSITIONS` outside parity.
pub fn propositions(s: &str) -> Checked {
    for (original, normalize) in [(false, false), (false, true), (true, false), (true, true)] {
        let how = reasoner::PropositionParse {
            original,
            normalize,
        };
        if let Ok(p) = reasoner::parse_propositions(s, how)
            && !original
        {
            rule(p.len() <= reasoner::MAX_PROPOSITIONS, || {
                format!("{} propositions", p.len())
            })?;
        }
    }
    Ok(())
}

/// The original's JSON extraction from an answer.
pub fn answer_json(s: &str) -> Checked {
    let _ = answer_json::parse_original(s);
    Ok(())
}

/// The evaluator's decision: strict is exactly the original's substring `ANSWER: Yes`.
pub fn evaluator(s: &str) -> Checked {
    let strict = evaluator::decide(s, EvaluatorParse::Strict);
    rule(strict.accepted == s.contains("ANSWER: Yes"), || {
        format!("strict accepted = {} for {s:?}", strict.accepted)
    })?;
    let _ = evaluator::decide(s, EvaluatorParse::Tolerant);
    Ok(())
}

/// A chat body, then the verifier's decision in every mode: `p_yes` is a probability.
pub fn chat_and_verifier(s: &str) -> Checked {
    if let Ok(answer) = wire::parse_chat(s) {
        for mode in [
            VerifierMode::Substring,
            VerifierMode::FirstWord,
            VerifierMode::Logprob,
        ] {
            if let Some(p) = verifier::decide(&answer, mode).p_yes {
                rule((0.0..=1.0).contains(&p), || format!("p_yes {p}"))?;
            }
        }
    }
    Ok(())
}

/// An embeddings body, for three expected shapes.
pub fn embeddings(s: &str) -> Checked {
    for (expected, dimension) in [(1, None), (2, Some(2)), (3, Some(512))] {
        let _ = wire::parse_embeddings(s, expected, dimension);
    }
    Ok(())
}

/// An error envelope (OpenAI, vLLM, TGI, infinity shapes).
pub fn error_body(s: &str) -> Checked {
    let _ = dialect::parse_error_body(s);
    Ok(())
}

/// A `Retry-After` header value.
pub fn retry_after(s: &str) -> Checked {
    let _ = parse_retry_after(s);
    Ok(())
}

/// A journal line.
pub fn journal_line(s: &str) -> Checked {
    let _ = serde_json::from_str::<imagescope::record::QueryRecord>(s);
    Ok(())
}

/// A predictions (submission) file, read as each benchmark's.
pub fn predictions(v: &Value) -> Checked {
    for d in [
        imagescope::datasets::DatasetName::Cirr,
        imagescope::datasets::DatasetName::Circo,
        imagescope::datasets::DatasetName::Visdial,
    ] {
        let _ = imagescope::metrics::predictions::parse(d, v, Path::new("p.json"));
    }
    Ok(())
}

/// A servers file.
pub fn servers(s: &str) -> Checked {
    let _ = ServersConfig::parse(s, Path::new("servers.toml"));
    Ok(())
}

/// An `.npy` import.
pub fn npy(b: &[u8]) -> Checked {
    let _ = imagescope::index::import::parse_npy(b);
    Ok(())
}

/// Image bytes, as a file and inside data URLs.
pub fn image(b: &[u8]) -> Checked {
    let _ = imagescope::images::EncodedImage::from_bytes(b.to_vec(), "fuzzed");
    let url = format!(
        "data:image/png;base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)
    );
    let _ = imagescope::images::decode_data_url(&url);
    let _ = imagescope::images::decode_data_url(&String::from_utf8_lossy(b));
    Ok(())
}

/// A real vLLM 0.32 `/metrics` page's lines, the seed of the fuzzed ones.
pub const METRICS: &[&str] = &[
    "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{engine=\"0\",model_name=\"verifier\"} 46656.0\nvllm:request_queue_time_seconds_bucket{engine=\"0\",le=\"0.3\",model_name=\"verifier\"} 41.0\nvllm:request_queue_time_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"verifier\"} 41.0\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"verifier\"} 0.5\n",
];

/// A server's `/metrics` page, and the figures from the seed page to it (deltas, restarts and
/// rates all computed): rates are finite, queue times are numbers.
pub fn metrics_page(s: &str) -> Checked {
    use imagescope::serving::server_metrics::{figures, read_page};
    let r = read_page(s, "verifier");
    let seed = read_page(METRICS[0], "verifier");
    let f = figures(
        &[Some(seed)],
        &[Some(r.clone())],
        &[vec![Some(r)]],
        Default::default(),
    );
    for rate in [f.prefix_cache_hit_rate, f.mm_cache_hit_rate]
        .into_iter()
        .flatten()
    {
        rule(rate.is_finite(), || format!("rate {rate}"))?;
    }
    for q in [f.queue_p50_s, f.queue_p95_s].into_iter().flatten() {
        rule(!q.is_nan(), || format!("queue time {q}"))?;
    }
    Ok(())
}

/// A router's worker list: only http(s) URLs come out (nothing else is fetched with the key).
pub fn router_workers(s: &str) -> Checked {
    if let Some(urls) = imagescope::serving::server_metrics::router_workers(s) {
        for u in urls {
            rule(
                u.starts_with("http://") || u.starts_with("https://"),
                || format!("worker {u:?}"),
            )?;
        }
    }
    Ok(())
}

/// A parser of text and its check, by name.
pub type TextParser = (&'static str, fn(&str) -> Checked);
/// A parser of bytes and its check, by name.
pub type BytesParser = (&'static str, fn(&[u8]) -> Checked);

/// The text parsers.
pub const TEXT: &[TextParser] = &[
    ("captioner::parse", captioner),
    ("reasoner::parse_reasoning", reasoning),
    ("reasoner::parse_propositions", propositions),
    ("json::parse_original", answer_json),
    ("evaluator::decide", evaluator),
    ("wire::parse_chat + verifier::decide", chat_and_verifier),
    ("wire::parse_embeddings", embeddings),
    ("dialect::parse_error_body", error_body),
    ("parse_retry_after", retry_after),
    ("journal line (QueryRecord)", journal_line),
    ("ServersConfig::parse", servers),
    ("server_metrics::read_page", metrics_page),
    ("server_metrics::router_workers", router_workers),
];

/// The byte parsers.
pub const BYTES: &[BytesParser] = &[("parse_npy", npy), ("image bytes and data URLs", image)];

/// One fuzz input for any parser: its first byte picks the parser (text, bytes, or a
/// predictions file as JSON), the rest is the input. What the cargo-fuzz target runs.
pub fn any(data: &[u8]) -> Checked {
    let Some((&pick, rest)) = data.split_first() else {
        return Ok(());
    };
    let n = TEXT.len() + BYTES.len() + 1;
    let i = usize::from(pick) % n;
    if let Some((_, check)) = TEXT.get(i) {
        check(&String::from_utf8_lossy(rest))
    } else if let Some((_, check)) = BYTES.get(i - TEXT.len()) {
        check(rest)
    } else {
        match serde_json::from_slice::<Value>(rest) {
            Ok(v) => predictions(&v),
            Err(_) => Ok(()),
        }
    }
}
