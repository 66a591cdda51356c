//! Finding a JSON object in a model's answer and repairing it, defensively.
//!
//! Candidates are tried in order: every fenced block (```` ```json ```` first, then plain ```` ``` ````),
//! then every balanced `{...}` in the prose (string-aware, so braces inside strings do not count,
//! and not "up to the first `}`" as the original did), then an unterminated object running to the
//! end of the text (a truncated answer). Each candidate is parsed strictly, and failing that
//! repaired with `llm_json` (a port of the `json_repair` library the original used). The first
//! candidate that yields an object the caller accepts wins. Nesting deeper than 64 levels is
//! refused before any parser sees it, and a panic inside the repair library is caught and reported
//! as a parse failure.
//!
//! The `parity` profile reads answers as the original code did instead (`original_*` below): only
//! the first ```` ```json ```` block, or failing that the first `{` up to the first `}` (so nested
//! JSON is cut short), repaired and parsed once.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

const MAX_DEPTH: usize = 64;

/// How the object was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A fenced code block.
    Fenced,
    /// A balanced object in the prose.
    Balanced,
    /// An object cut off at the end of the answer.
    Truncated,
}

/// An extracted object.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// The object.
    pub object: Map<String, Value>,
    /// Where it was found.
    pub source: Source,
    /// Whether it needed repair.
    pub repaired: bool,
}

fn fenced_blocks(text: &str) -> Vec<(bool, &str, bool)> {
    // (is_json_tagged, body, terminated)
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let tag = after[..line_end].trim().to_ascii_lowercase();
        let body_start = (line_end + 1).min(after.len());
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                out.push((tag == "json", &body[..end], true));
                rest = &body[end + 3..];
            }
            None => {
                out.push((tag == "json", body, false));
                break;
            }
        }
    }
    out.sort_by_key(|(json, _, _)| !*json);
    out
}

/// Balanced top-level `{...}` spans, and the start of an unterminated one if the text ends inside it.
fn balanced_objects(text: &str) -> (Vec<&str>, Option<&str>) {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut in_str: Option<u8> = None;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(q) = in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == q {
                in_str = None;
            }
            continue;
        }
        match b {
            b'"' if depth > 0 => in_str = Some(b'"'),
            b'{' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    spans.push(&text[start..=i]);
                }
            }
            _ => {}
        }
    }
    let open = (depth > 0).then(|| &text[start..]);
    (spans, open)
}

/// Deepest bracket nesting outside strings.
pub fn nesting_depth(text: &str) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn parse_candidate(body: &str) -> Result<(Value, bool), String> {
    let depth = nesting_depth(body);
    if depth > MAX_DEPTH {
        return Err(format!(
            "JSON nested {depth} levels deep (limit {MAX_DEPTH})"
        ));
    }
    if let Ok(v) = serde_json::from_str::<Value>(body.trim()) {
        return Ok((v, false));
    }
    let owned = body.to_string();
    let repaired = std::panic::catch_unwind(move || {
        llm_json::repair_json(&owned, &llm_json::RepairOptions::default())
    })
    .map_err(|_| "the JSON repair library failed on this text".to_string())?
    .map_err(|e| format!("unrepairable JSON: {e}"))?;
    serde_json::from_str::<Value>(&repaired)
        .map(|v| (v, true))
        .map_err(|e| format!("JSON still invalid after repair: {e}"))
}

/// Finds the first JSON object in `text` that `accept` approves (see the module doc). With
/// `fenced_only`, only a ```` ```json ```` block counts (the original's stage-2 rule).
pub fn extract_object(
    text: &str,
    fenced_only: bool,
    accept: impl Fn(&Map<String, Value>) -> bool,
) -> Result<Extracted, String> {
    let mut candidates: Vec<(Source, &str)> = Vec::new();
    for (is_json, body, terminated) in fenced_blocks(text) {
        if fenced_only && !is_json {
            continue;
        }
        let source = if terminated {
            Source::Fenced
        } else {
            Source::Truncated
        };
        candidates.push((source, body));
        if !fenced_only {
            let (spans, open) = balanced_objects(body);
            candidates.extend(spans.into_iter().map(|s| (source, s)));
            candidates.extend(open.map(|s| (Source::Truncated, s)));
        }
    }
    if !fenced_only {
        let (spans, open) = balanced_objects(text);
        candidates.extend(spans.into_iter().map(|s| (Source::Balanced, s)));
        candidates.extend(open.map(|s| (Source::Truncated, s)));
    }
    if candidates.is_empty() {
        return Err(if fenced_only {
            "no ```json block in the answer".into()
        } else {
            "no JSON object in the answer".into()
        });
    }
    let mut first_object: Option<Extracted> = None;
    let mut last_error = String::new();
    for (source, body) in candidates {
        match parse_candidate(body) {
            Ok((Value::Object(object), repaired)) => {
                let found = Extracted {
                    object,
                    source,
                    repaired,
                };
                if accept(&found.object) {
                    return Ok(found);
                }
                first_object.get_or_insert(found);
            }
            Ok((other, _)) => {
                last_error = format!("expected a JSON object, found {}", kind_of(&other));
            }
            Err(e) => last_error = e,
        }
    }
    first_object.ok_or(last_error)
}

static ORIGINAL_FENCE: LazyLock<Regex> = LazyLock::new(|| {
    #[expect(clippy::expect_used, reason = "a constant pattern")]
    Regex::new(r"```json\s*([\s\S]*?)\s*```").expect("valid pattern")
});
static ORIGINAL_BRACES: LazyLock<Regex> = LazyLock::new(|| {
    #[expect(clippy::expect_used, reason = "a constant pattern")]
    Regex::new(r"(\{[\s\S]*?\})").expect("valid pattern")
});

/// The original's stage-2a search: the body of the first ```` ```json ```` block that is closed.
pub fn original_fenced(text: &str) -> Option<&str> {
    ORIGINAL_FENCE
        .captures(text)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str())
}

/// The original's stage-1 search: the first ```` ```json ```` block, else the first `{` up to the
/// first `}` after it (non-greedy: an object with a nested object is cut at the inner `}`).
pub fn original_fenced_or_braces(text: &str) -> Option<&str> {
    original_fenced(text).or_else(|| {
        ORIGINAL_BRACES
            .captures(text)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str())
    })
}

/// Repairs and parses `body` once, as the original did (`json_repair` then `json.loads`); anything
/// but an object is a failure (where the original crashed).
pub fn parse_original(body: &str) -> Result<Map<String, Value>, String> {
    match parse_candidate(body)? {
        (Value::Object(o), _) => Ok(o),
        (other, _) => Err(format!("expected a JSON object, found {}", kind_of(&other))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &Map<String, Value>) -> bool {
        true
    }

    #[test]
    fn braces_inside_strings_do_not_end_the_object() {
        let t = r#"Here: {"a": "x } y", "b": {"c": 1}} and more {"z": 2}"#;
        let e = extract_object(t, false, any).unwrap();
        assert_eq!(e.object["a"], "x } y");
        assert_eq!(e.source, Source::Balanced);
    }

    #[test]
    fn accepted_object_is_preferred_over_an_earlier_one() {
        let t = r#"Use {braces} like {"note": 1}. ```json
{"descriptions": ["a"]}
```"#;
        let e = extract_object(t, false, |m| m.contains_key("descriptions")).unwrap();
        assert_eq!(e.source, Source::Fenced);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let t = format!("{}{}", "{\"a\":".repeat(1000), "}".repeat(1000));
        let err = extract_object(&t, false, any).unwrap_err();
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn the_original_search_takes_the_first_block_or_stops_at_the_first_brace() {
        let two = "```json\n{\"a\": 1}\n```\nand\n```json\n{\"b\": 2}\n```";
        assert_eq!(original_fenced(two), Some("{\"a\": 1}"));
        let nested = r#"Answer: {"edits": [{"type": "Addition"}], "descriptions": ["x"]}"#;
        assert_eq!(
            original_fenced_or_braces(nested),
            Some(r#"{"edits": [{"type": "Addition"}"#)
        );
        assert_eq!(
            original_fenced("```json\n{\"a\": 1}"),
            None,
            "an unclosed block"
        );
        assert_eq!(original_fenced_or_braces("no json"), None);
        assert!(parse_original("[1, 2]").is_err());
    }

    #[test]
    fn fenced_only_mode_ignores_bare_objects() {
        assert!(extract_object(r#"{"questions": []}"#, true, any).is_err());
    }
}
