//! Reasoner: stage 1 (instruction + reference description → typed edits and target descriptions)
//! and stage 2a (instruction + edits → yes/no propositions with expected answers), plus the
//! follow-up request that re-asks after an unusable answer and the fallbacks of method.md §3.4.
//!
//! Accepted answer shapes: our prompts' keys (`edits`, `descriptions`; `statements`, `questions`)
//! and the original's (`step1`, `step2`). Expected answers "True"/true/"Yes"/"yes"/"y" are read as
//! yes when normalising; the parity mode keeps the original's exact "True"/"False" comparison.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::chat::{ChatRequest, Message, Speaker};
use crate::config::ResponseSchema;
use crate::prompts::{Family, PromptError, PromptKind, PromptSet};

use super::json::{
    Extracted, extract_object, original_fenced, original_fenced_or_braces, parse_original,
};
use super::{ParseFailure, cut, request_from};

/// Most target descriptions kept from one answer.
pub const MAX_DESCRIPTIONS: usize = 8;
/// Most propositions kept from one answer (each costs top-K verifier requests).
pub const MAX_PROPOSITIONS: usize = 10;

/// What stage 1 reasons from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonInput {
    /// The instruction (or, in a dialogue, the latest question and answer).
    pub instruction: String,
    /// The reference caption, "A blank image." without a reference, or the running description.
    pub reference_description: String,
    /// Whether there is a reference image.
    pub has_reference: bool,
}

/// One typed atomic edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Edit {
    /// Addition, Removal, Modification, Comparison, Retention (or whatever the model wrote).
    pub kind: String,
    /// What changes.
    pub text: String,
}

/// Stage 1's result.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Reasoning {
    /// Typed edits.
    pub edits: Vec<Edit>,
    /// Target descriptions, coarse to detailed.
    pub descriptions: Vec<String>,
}

/// The answer a proposition expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    /// Yes / True.
    Yes,
    /// No / False.
    No,
    /// Not recognised (parity mode keeps it; it never matches a verifier answer).
    Other(String),
}

/// A yes/no question about the target with its expected answer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Proposition {
    /// The question.
    pub question: String,
    /// Expected answer.
    pub expected: Expected,
}

fn pairs(second: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "type": "array",
        "items": {"type": "array", "prefixItems": [{"type": "string"}, second], "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
    })
}

/// `schema` with item-count bounds. Every list in a schema is bounded: constrained decoding lets a
/// small model repeat an item until `max_tokens` otherwise (seen with SmolLM2 on vLLM, which wrote
/// edits until the answer was cut and never reached the descriptions).
fn bounded(mut schema: serde_json::Value, min: usize, max: usize) -> serde_json::Value {
    schema["minItems"] = serde_json::json!(min);
    schema["maxItems"] = serde_json::json!(max);
    schema
}

/// The JSON schema of a stage-1 answer.
pub fn reasoning_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "edits": bounded(pairs(serde_json::json!({"type": "string"})), 0, 8),
            "descriptions": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        },
        "required": ["edits", "descriptions"],
    })
}

/// The JSON schema of a stage-2a answer.
pub fn propositions_schema() -> serde_json::Value {
    let questions = bounded(pairs(serde_json::json!({"enum": ["True", "False"]})), 1, 6);
    serde_json::json!({
        "type": "object",
        "properties": {
            "statements": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
            "questions": questions,
        },
        "required": ["statements", "questions"],
    })
}

fn with_schema(
    mut req: ChatRequest,
    schema: Option<ResponseSchema>,
    name: &str,
    body: serde_json::Value,
) -> ChatRequest {
    let format = match schema {
        None => return req,
        Some(ResponseSchema::Openai) => {
            serde_json::json!({"type": "json_schema", "json_schema": {"name": name, "schema": body}})
        }
        Some(ResponseSchema::LlamaCpp) => {
            serde_json::json!({"type": "json_object", "schema": body})
        }
    };
    req.extra.insert("response_format".into(), format);
    req
}

/// Stage-1 request (with a response schema when the reasoner's server is configured for one).
pub fn reason_request(
    prompts: &PromptSet,
    family: Family,
    input: &ReasonInput,
    schema: Option<ResponseSchema>,
) -> Result<ChatRequest, PromptError> {
    let req = request_from(prompts.render(family, PromptKind::Reason, input)?, vec![]);
    Ok(with_schema(req, schema, "reasoning", reasoning_schema()))
}

/// Stage-2a request (with a response schema when configured).
pub fn propositions_request(
    prompts: &PromptSet,
    family: Family,
    instruction: &str,
    edits: &[Edit],
    schema: Option<ResponseSchema>,
) -> Result<ChatRequest, PromptError> {
    let ctx = serde_json::json!({"instruction": instruction, "edits": edits});
    let req = request_from(
        prompts.render(family, PromptKind::Propositions, &ctx)?,
        vec![],
    );
    Ok(with_schema(
        req,
        schema,
        "propositions",
        propositions_schema(),
    ))
}

/// The follow-up after an unusable answer: the conversation so far, the bad answer as the
/// assistant's turn, and the re-ask prompt naming the problem.
pub fn reask_request(
    prompts: &PromptSet,
    family: Family,
    original: &ChatRequest,
    bad_answer: &str,
    failure: &ParseFailure,
) -> Result<ChatRequest, PromptError> {
    let rendered = prompts.render(
        family,
        PromptKind::Reask,
        &serde_json::json!({"error": failure.reason}),
    )?;
    let mut req = original.clone();
    req.messages
        .push(Message::text(Speaker::Assistant, cut(bad_answer, 4000)));
    req.messages
        .push(Message::text(Speaker::User, rendered.user));
    Ok(req)
}

fn first_key<'a>(m: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| m.get(*k))
}

const DESCRIPTION_KEYS: [&str; 3] = ["descriptions", "step2", "target_descriptions"];
const EDIT_KEYS: [&str; 2] = ["edits", "step1"];
const QUESTION_KEYS: [&str; 2] = ["questions", "step2"];

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn edits_of(v: Option<&Value>) -> Vec<Edit> {
    let Some(Value::Array(items)) = v else {
        return vec![];
    };
    items
        .iter()
        .filter_map(|item| match item {
            // The original uses only [type, text] pairs.
            Value::Array(pair) if pair.len() == 2 => Some(Edit {
                kind: text_of(&pair[0])?,
                text: text_of(&pair[1])?,
            }),
            Value::Object(o) => Some(Edit {
                kind: text_of(first_key(o, &["type", "kind"])?)?,
                text: text_of(first_key(o, &["text", "edit", "content"])?)?,
            }),
            _ => None,
        })
        .collect()
}

/// Parses a stage-1 answer exactly as the original code did (the `parity` profile):
/// - the JSON is the first ```` ```json ```` block, else the first `{` up to the first `}`;
/// - every description is kept as written, blank ones included and without a cap;
/// - when the descriptions are missing or empty, the model's edits are kept and the search uses
///   `reference_description` (the original's rule);
/// - only `[type, text]` pairs count as edits.
///
/// No JSON at all, or JSON that is not an object, is a failure (the original falls back to a dummy
/// edit, or crashes); the caller then applies the parity fallback.
pub fn parse_reasoning_as_original(
    answer: &str,
    reference_description: &str,
) -> Result<Reasoning, ParseFailure> {
    let body = original_fenced_or_braces(answer)
        .ok_or_else(|| ParseFailure::new("no ```json block and no {...} span", answer))?;
    let object = parse_original(body).map_err(|e| ParseFailure::new(e, answer))?;
    let mut descriptions: Vec<String> = match first_key(&object, &DESCRIPTION_KEYS) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => vec![],
    };
    if descriptions.is_empty() {
        descriptions.push(reference_description.to_string());
    }
    let edits = match first_key(&object, &EDIT_KEYS) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| match item {
                Value::Array(pair) if pair.len() == 2 => Some(Edit {
                    kind: text_of(&pair[0])?,
                    text: text_of(&pair[1])?,
                }),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    Ok(Reasoning {
        edits,
        descriptions,
    })
}

/// Parses a stage-1 answer. Missing or empty descriptions are a failure (the caller re-asks, then
/// falls back); missing edits are not (stage 2 then works from the instruction alone). Blank
/// descriptions are dropped and at most `MAX_DESCRIPTIONS` kept.
pub fn parse_reasoning(answer: &str) -> Result<Reasoning, ParseFailure> {
    let Extracted { object, .. } =
        extract_object(answer, false, |m| first_key(m, &DESCRIPTION_KEYS).is_some())
            .map_err(|e| ParseFailure::new(e, answer))?;
    let descriptions: Vec<String> = match first_key(&object, &DESCRIPTION_KEYS) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(text_of)
            .take(MAX_DESCRIPTIONS)
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
        _ => vec![],
    };
    if descriptions.is_empty() {
        return Err(ParseFailure::new(
            "the JSON has no target descriptions (a non-empty \"descriptions\" list of sentences)",
            answer,
        ));
    }
    Ok(Reasoning {
        edits: edits_of(first_key(&object, &EDIT_KEYS)),
        descriptions,
    })
}

/// How stage-2a answers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropositionParse {
    /// The original's rule (`parity`): only the first closed ```` ```json ```` block, every
    /// `[question, answer]` pair kept (no cap). Otherwise any JSON in the answer, at most
    /// `MAX_PROPOSITIONS`.
    pub original: bool,
    /// Read true/yes variants as yes (otherwise only the exact string "True"/"False").
    pub normalize: bool,
}

/// Reads an expected answer.
pub fn expected_of(v: &Value, normalize: bool) -> Expected {
    if !normalize {
        return match v.as_str() {
            Some("True") => Expected::Yes,
            Some("False") => Expected::No,
            _ => Expected::Other(v.to_string()),
        };
    }
    match v {
        Value::Bool(true) => Expected::Yes,
        Value::Bool(false) => Expected::No,
        Value::String(s) => {
            match s
                .trim()
                .trim_end_matches(['.', '!'])
                .to_ascii_lowercase()
                .as_str()
            {
                "true" | "yes" | "y" => Expected::Yes,
                "false" | "no" | "n" => Expected::No,
                _ => Expected::Other(s.clone()),
            }
        }
        other => Expected::Other(other.to_string()),
    }
}

/// Parses a stage-2a answer into propositions; an answer without any is a failure.
pub fn parse_propositions(
    answer: &str,
    how: PropositionParse,
) -> Result<Vec<Proposition>, ParseFailure> {
    let object = if how.original {
        let body = original_fenced(answer)
            .ok_or_else(|| ParseFailure::new("no ```json block in the answer", answer))?;
        parse_original(body).map_err(|e| ParseFailure::new(e, answer))?
    } else {
        extract_object(answer, false, |m| first_key(m, &QUESTION_KEYS).is_some())
            .map_err(|e| ParseFailure::new(e, answer))?
            .object
    };
    let Some(Value::Array(items)) = first_key(&object, &QUESTION_KEYS) else {
        return Err(ParseFailure::new(
            "the JSON has no \"questions\" list",
            answer,
        ));
    };
    let props: Vec<Proposition> = items
        .iter()
        .filter_map(|item| {
            let (q, a) = match item {
                Value::Array(pair) if pair.len() == 2 => (&pair[0], &pair[1]),
                Value::Object(o) if !how.original => (
                    first_key(o, &["question", "q"])?,
                    first_key(o, &["answer", "expected", "a"])?,
                ),
                _ => return None,
            };
            Some(Proposition {
                question: text_of(q)?,
                expected: expected_of(a, how.normalize),
            })
        })
        .take(if how.original {
            usize::MAX
        } else {
            MAX_PROPOSITIONS
        })
        .collect();
    if props.is_empty() {
        return Err(ParseFailure::new(
            "the \"questions\" list holds no [question, answer] pairs",
            answer,
        ));
    }
    Ok(props)
}

/// Stage 1's fallback after the re-asks are used up (method.md §3.4). Parity: the dummy edit and
/// the reference description, as the original. Otherwise the instruction leads: for text-to-image
/// it is a caption of the target; for a dialogue it is merged into the running description; for
/// composed queries it is searched together with the reference description.
pub fn fallback(input: &ReasonInput, parity: bool) -> Reasoning {
    let edits = vec![Edit {
        kind: "Modification".into(),
        text: input.instruction.clone(),
    }];
    let descriptions = if parity {
        vec![input.reference_description.clone()]
    } else if !input.has_reference && input.reference_description == BLANK_REFERENCE {
        vec![input.instruction.clone()]
    } else if !input.has_reference {
        vec![format!(
            "{} {}",
            input.reference_description, input.instruction
        )]
    } else {
        vec![
            input.instruction.clone(),
            input.reference_description.clone(),
        ]
    };
    Reasoning {
        edits,
        descriptions,
    }
}

/// The reference description used when there is no reference image (the original's literal).
pub const BLANK_REFERENCE: &str = "A blank image.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_and_new_keys_both_parse() {
        let a = "```json\n{\"step1\": [[\"Addition\", \"a hat\"], [\"bad\"]], \"step2\": [\"a\", \"b\", \" \"]}\n```";
        let r = parse_reasoning(a).unwrap();
        assert_eq!(r.descriptions, vec!["a", "b"]);
        assert_eq!(r.edits.len(), 1, "only [type, text] pairs are kept");
    }

    #[test]
    fn expected_answers_normalise_or_not() {
        use serde_json::json;
        assert_eq!(expected_of(&json!("yes"), true), Expected::Yes);
        assert_eq!(expected_of(&json!(false), true), Expected::No);
        assert_eq!(expected_of(&json!("False."), true), Expected::No);
        assert_eq!(expected_of(&json!("True"), false), Expected::Yes);
        assert!(matches!(
            expected_of(&json!("yes"), false),
            Expected::Other(_)
        ));
        assert!(matches!(
            expected_of(&json!(true), false),
            Expected::Other(_)
        ));
    }

    #[test]
    fn fallbacks_follow_the_profile() {
        let t2i = ReasonInput {
            instruction: "a red bus".into(),
            reference_description: BLANK_REFERENCE.into(),
            has_reference: false,
        };
        assert_eq!(fallback(&t2i, true).descriptions, vec![BLANK_REFERENCE]);
        assert_eq!(fallback(&t2i, false).descriptions, vec!["a red bus"]);
        let cir = ReasonInput {
            instruction: "make it blue".into(),
            reference_description: "a red car".into(),
            has_reference: true,
        };
        assert_eq!(
            fallback(&cir, false).descriptions,
            vec!["make it blue", "a red car"]
        );
    }
}
