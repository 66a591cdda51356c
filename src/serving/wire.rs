//! Wire formats: request bodies built as JSON values and lenient, validated readers of the
//! answers of vLLM, TGI, infinity and OpenAI.
//!
//! Request bodies are plain `serde_json::Value`s so that a server's `extra_body` fields can be
//! merged without a typed struct knowing them. Responses are read through narrow serde types that
//! accept any `finish_reason` string and any error-envelope shape, then validated: a reply without
//! choices, with empty content or with a vector of the wrong length becomes a typed error.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::{EmbedShape, ImageTransport, RoleServer};
use crate::images::EncodedImage;

pub use crate::chat::{
    ChatAnswer, ChatRequest, EmbedInput, FinishReason, Message, Part, Speaker, TokenLogprob,
    TopLogprob, Usage,
};

pub use super::dialect::{
    ServerMessage, excerpt, finish_reason, http_error, is_context_length, is_media_load,
    parse_error_body,
};
use super::errors::ErrorKind;
use super::inline::inline_marker;
pub use super::inline::{encode_body, encode_body_referring};

/// How images are written into a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRendering {
    /// As the server is configured to receive them.
    Send(ImageTransport),
    /// As a short hash placeholder: for snapshots and dry runs.
    Placeholder,
    /// As the full content hash: for cache keys.
    Hash,
}

fn image_url(img: &EncodedImage, how: ImageRendering) -> String {
    match how {
        ImageRendering::Send(ImageTransport::LocalPath) => {
            match img.path().and_then(|p| url::Url::from_file_path(p).ok()) {
                Some(u) => u.into(),
                None => inline_marker(img),
            }
        }
        ImageRendering::Send(ImageTransport::DataUrl) => inline_marker(img),
        ImageRendering::Placeholder => img.placeholder(),
        ImageRendering::Hash => format!("blake3:{}", img.hash()),
    }
}

/// A message's JSON; with `uuids`, each image part also carries its content hash as `uuid`
/// (vLLM ≥ 0.11 caches the image under it: `image_uuids`).
fn message_json(m: &Message, how: ImageRendering, uuids: bool) -> Value {
    let role = match m.speaker {
        Speaker::System => "system",
        Speaker::User => "user",
        Speaker::Assistant => "assistant",
    };
    // A lone text part goes as a plain string: templates of text-only models expect it.
    if let [Part::Text(t)] = m.parts.as_slice() {
        return json!({"role": role, "content": t});
    }
    let parts: Vec<Value> = m
        .parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => json!({"type": "text", "text": t}),
            Part::Image(img) if uuids => json!({
                "type": "image_url",
                "image_url": {"url": image_url(img, how)},
                "uuid": img.hash(),
            }),
            Part::Image(img) => {
                json!({"type": "image_url", "image_url": {"url": image_url(img, how)}})
            }
        })
        .collect();
    json!({"role": role, "content": parts})
}

/// The full JSON body of a chat request to `server`. Built with `ImageRendering::Send`, its image
/// URLs are markers: `encode_body` turns it into the bytes to send. Images carry a `uuid` when the
/// server is set to `image_uuids` and the body is for sending (cache keys and snapshots do not
/// change with it).
pub fn chat_body(req: &ChatRequest, server: &RoleServer, how: ImageRendering) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(server.model));
    let uuids = server.image_uuids.is_some() && matches!(how, ImageRendering::Send(_));
    body.insert(
        "messages".into(),
        Value::Array(
            req.messages
                .iter()
                .map(|m| message_json(m, how, uuids))
                .collect(),
        ),
    );
    let s = &server.sampling;
    if let Some(t) = req.temperature.or(s.temperature) {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = s.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(m) = req.max_tokens.or(s.max_tokens) {
        body.insert("max_tokens".into(), json!(m));
    }
    if !s.stop.is_empty() {
        body.insert("stop".into(), json!(s.stop));
    }
    if let Some(seed) = s.seed {
        body.insert("seed".into(), json!(seed));
    }
    if let Some(n) = req.top_logprobs {
        body.insert("logprobs".into(), json!(true));
        body.insert("top_logprobs".into(), json!(n));
    }
    body.insert("stream".into(), json!(false));
    for (k, v) in server.extra_body.iter().chain(req.extra.iter()) {
        body.insert(k.clone(), v.clone());
    }
    Value::Object(body)
}

/// Bodies for embedding `inputs` with `server`'s request shape: one body per request. vLLM's
/// `messages` form holds one input per request; the `input` forms batch them.
pub fn embed_bodies(
    inputs: &[EmbedInput],
    server: &RoleServer,
    how: ImageRendering,
) -> Result<Vec<Value>, ErrorKind> {
    let shape = server.embed_shape.unwrap_or(EmbedShape::OpenaiInput);
    let with_extra = |mut body: Map<String, Value>| {
        for (k, v) in &server.extra_body {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    };
    match shape {
        EmbedShape::VllmMessages => Ok(inputs
            .iter()
            .map(|input| {
                let (part, text) = match input {
                    EmbedInput::Text(t) => (json!({"type": "text", "text": t}), true),
                    EmbedInput::Image(img) => (
                        json!({"type": "image_url", "image_url": {"url": image_url(img, how)}}),
                        false,
                    ),
                };
                let mut m = Map::new();
                m.insert("model".into(), json!(server.model));
                m.insert(
                    "messages".into(),
                    json!([{"role": "user", "content": [part]}]),
                );
                m.insert("encoding_format".into(), json!("float"));
                if text {
                    // vLLM's messages API tokenizes without the tokenizer's special tokens unless
                    // asked; CLIP pools its text vector at the end-of-text token, so without them
                    // the vector is another one (cosine 0.85 to the model's own on the CPU stack's
                    // CLIP, tests/infinity_live.rs). With them it matches transformers' and
                    // infinity's to 0.9999.
                    m.insert("add_special_tokens".into(), json!(true));
                    // CLIP reads 77 tokens. The original truncates longer text (open_clip's
                    // tokenizer); vLLM refuses it with a 400 unless asked to truncate to the
                    // model's length (-1).
                    m.insert("truncate_prompt_tokens".into(), json!(-1));
                }
                with_extra(m)
            })
            .collect()),
        EmbedShape::Infinity | EmbedShape::OpenaiInput => {
            let texts: Vec<&str> = inputs
                .iter()
                .filter_map(|i| match i {
                    EmbedInput::Text(t) => Some(t.as_str()),
                    EmbedInput::Image(_) => None,
                })
                .collect();
            let images: Vec<String> = inputs
                .iter()
                .filter_map(|i| match i {
                    EmbedInput::Image(img) => Some(image_url(img, how)),
                    EmbedInput::Text(_) => None,
                })
                .collect();
            if !texts.is_empty() && !images.is_empty() {
                return Err(ErrorKind::Unsupported(
                    "one embedding batch mixes text and images; send them separately".into(),
                ));
            }
            let base = |input: Value, modality: &str| {
                let mut m = Map::new();
                m.insert("model".into(), json!(server.model));
                m.insert("input".into(), input);
                if shape == EmbedShape::Infinity {
                    m.insert("modality".into(), json!(modality));
                }
                m.insert("encoding_format".into(), json!("float"));
                with_extra(m)
            };
            if images.is_empty() {
                Ok(vec![base(json!(texts), "text")])
            } else if shape == EmbedShape::OpenaiInput {
                Err(ErrorKind::Unsupported(
                    "embed_shape \"openai-input\" carries text only; this server cannot embed images"
                        .into(),
                ))
            } else {
                // infinity caps image inputs at 32 per request (serving.md §A3).
                Ok(images.chunks(32).map(|c| base(json!(c), "image")).collect())
            }
        }
    }
}

#[derive(Deserialize)]
struct WireChat {
    model: Option<String>,
    choices: Option<Vec<WireChoice>>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: Option<WireMessage>,
    finish_reason: Option<String>,
    logprobs: Option<WireLogprobs>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireLogprobs {
    content: Option<Vec<TokenLogprob>>,
}

/// Reads and validates a chat-completions answer.
pub fn parse_chat(body: &str) -> Result<ChatAnswer, ErrorKind> {
    let wire: WireChat = serde_json::from_str(body).map_err(|e| ErrorKind::InvalidResponse {
        reason: format!("chat answer is not the expected JSON: {e}"),
        body: excerpt(body),
    })?;
    let choice = wire
        .choices
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| ErrorKind::UnusableAnswer {
            reason: "chat answer has no choices".into(),
            body: excerpt(body),
        })?;
    let finish_reason = choice.finish_reason.as_deref().map(finish_reason);
    let content = choice.message.and_then(|m| m.content).unwrap_or_default();
    let logprobs = choice.logprobs.and_then(|l| l.content);
    // Whitespace with token probabilities is still an answer: a verifier in logprob mode reads
    // its verdict from the alternatives of the first token, whatever text was sampled.
    let has_probabilities = logprobs.as_ref().is_some_and(|l| !l.is_empty());
    if content.trim().is_empty() && !has_probabilities {
        return Err(ErrorKind::EmptyContent {
            finish_reason: finish_reason.map(|f| format!("{f:?}")),
        });
    }
    Ok(ChatAnswer {
        content,
        finish_reason,
        usage: wire.usage,
        logprobs,
        model: wire.model,
    })
}

#[derive(Deserialize)]
struct WireEmbeddings {
    model: Option<String>,
    data: Option<Vec<WireEmbedding>>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

/// Validated vectors of one embeddings answer.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedAnswer {
    /// Vectors, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// The model name the server reported.
    pub model: Option<String>,
    /// Token counts, when the server said.
    pub usage: Option<Usage>,
}

/// Reads and validates an embeddings answer that should hold `expected` vectors of `dimension`.
pub fn parse_embeddings(
    body: &str,
    expected: usize,
    dimension: Option<usize>,
) -> Result<EmbedAnswer, ErrorKind> {
    let wire: WireEmbeddings =
        serde_json::from_str(body).map_err(|e| ErrorKind::InvalidResponse {
            reason: format!("embeddings answer is not the expected JSON: {e}"),
            body: excerpt(body),
        })?;
    let mut data = wire.data.unwrap_or_default();
    if data.len() != expected {
        return Err(ErrorKind::UnusableAnswer {
            reason: format!("asked for {expected} embeddings, got {}", data.len()),
            body: excerpt(body),
        });
    }
    data.sort_by_key(|d| d.index.unwrap_or(0));
    let mut vectors = Vec::with_capacity(data.len());
    for d in data {
        if let Some(dim) = dimension
            && d.embedding.len() != dim
        {
            return Err(ErrorKind::WrongDimension {
                expected: dim,
                got: d.embedding.len(),
            });
        }
        if d.embedding.is_empty() || d.embedding.iter().any(|x| !x.is_finite()) {
            return Err(ErrorKind::UnusableAnswer {
                reason: "embedding is empty or holds NaN/inf".into(),
                body: excerpt(body),
            });
        }
        vectors.push(d.embedding);
    }
    Ok(EmbedAnswer {
        vectors,
        model: wire.model,
        usage: wire.usage,
    })
}

/// L2-normalises a vector in place (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_with_tgi_finish_reason_parses() {
        let a = parse_chat(
            r#"{"model":"m","choices":[{"message":{"role":"assistant","content":"Yes"},"finish_reason":"eos_token"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#,
        )
        .unwrap();
        assert_eq!(a.content, "Yes");
        assert_eq!(a.finish_reason, Some(FinishReason::Stop));
        assert_eq!(a.usage.unwrap().prompt_tokens, 5);
    }

    #[test]
    fn chat_without_choices_or_content_is_typed() {
        assert!(matches!(
            parse_chat(r#"{"model":"m"}"#),
            Err(ErrorKind::UnusableAnswer { .. })
        ));
        assert!(matches!(
            parse_chat(r#"{"choices":[{"message":{"content":"  "},"finish_reason":"length"}]}"#),
            Err(ErrorKind::EmptyContent { .. })
        ));
        assert!(matches!(
            parse_chat("not json"),
            Err(ErrorKind::InvalidResponse { .. })
        ));
    }

    #[test]
    fn embeddings_are_validated() {
        let body =
            r#"{"data":[{"index":1,"embedding":[0.0,1.0]},{"index":0,"embedding":[1.0,0.0]}]}"#;
        let a = parse_embeddings(body, 2, Some(2)).unwrap();
        assert_eq!(a.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert!(matches!(
            parse_embeddings(body, 2, Some(3)),
            Err(ErrorKind::WrongDimension {
                expected: 3,
                got: 2
            })
        ));
        assert!(matches!(
            parse_embeddings(body, 3, None),
            Err(ErrorKind::UnusableAnswer { .. })
        ));
    }
}
