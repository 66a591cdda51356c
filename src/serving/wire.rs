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

use super::errors::{ErrorKind, HttpClass};
pub use super::inline::encode_body;
use super::inline::inline_marker;

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// System instructions.
    System,
    /// The user turn.
    User,
    /// A previous model turn (for re-asks).
    Assistant,
}

/// One content part of a chat message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Text.
    Text(String),
    /// An image.
    Image(EncodedImage),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Speaker.
    pub speaker: Speaker,
    /// Content parts in order.
    pub parts: Vec<Part>,
}

impl Message {
    /// A text-only message.
    pub fn text(speaker: Speaker, text: impl Into<String>) -> Self {
        Message {
            speaker,
            parts: vec![Part::Text(text.into())],
        }
    }
}

/// A chat request as a role builds it; the server's defaults fill what it leaves out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// Messages.
    pub messages: Vec<Message>,
    /// Overrides of the server's default temperature.
    pub temperature: Option<f64>,
    /// Override of `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Ask for this many `top_logprobs` of each generated token.
    pub top_logprobs: Option<u8>,
    /// Extra fields for this request only (merged after the server's `extra_body`).
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// Every image in the request, in message order.
    pub fn images(&self) -> impl Iterator<Item = &EncodedImage> {
        self.messages
            .iter()
            .flat_map(|m| &m.parts)
            .filter_map(|p| match p {
                Part::Image(img) => Some(img),
                Part::Text(_) => None,
            })
    }
}

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

fn message_json(m: &Message, how: ImageRendering) -> Value {
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
            Part::Image(img) => {
                json!({"type": "image_url", "image_url": {"url": image_url(img, how)}})
            }
        })
        .collect();
    json!({"role": role, "content": parts})
}

/// The full JSON body of a chat request to `server`. Built with `ImageRendering::Send`, its image
/// URLs are markers: `encode_body` turns it into the bytes to send.
pub fn chat_body(req: &ChatRequest, server: &RoleServer, how: ImageRendering) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(server.model));
    body.insert(
        "messages".into(),
        Value::Array(req.messages.iter().map(|m| message_json(m, how)).collect()),
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

/// One input to the embedder.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    /// Text.
    Text(String),
    /// An image.
    Image(EncodedImage),
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

/// Why a generation stopped; any string a server sends is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// Natural end or a stop string.
    Stop,
    /// Hit `max_tokens`: the answer is truncated.
    Length,
    /// Anything else (`eos_token` from TGI, `abort`, ...).
    Other(String),
}

impl FinishReason {
    fn from_wire(s: &str) -> Self {
        match s {
            "stop" | "eos_token" | "stop_sequence" => FinishReason::Stop,
            "length" => FinishReason::Length,
            other => FinishReason::Other(other.to_string()),
        }
    }
}

/// One alternative at a token position.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f64,
}

/// A generated token with its alternatives.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenLogprob {
    /// Token text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f64,
    /// The most likely alternatives at this position.
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

/// Token counts reported by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// A validated chat answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatAnswer {
    /// The generated text (never empty).
    pub content: String,
    /// Why generation stopped, when the server said.
    pub finish_reason: Option<FinishReason>,
    /// Token counts, when the server said.
    pub usage: Option<Usage>,
    /// Per-token logprobs, when asked for and returned.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The model name the server reported.
    pub model: Option<String>,
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
        .ok_or_else(|| ErrorKind::InvalidResponse {
            reason: "chat answer has no choices".into(),
            body: excerpt(body),
        })?;
    let finish_reason = choice.finish_reason.as_deref().map(FinishReason::from_wire);
    let content = choice.message.and_then(|m| m.content).unwrap_or_default();
    if content.trim().is_empty() {
        return Err(ErrorKind::EmptyContent {
            finish_reason: finish_reason.map(|f| format!("{f:?}")),
        });
    }
    Ok(ChatAnswer {
        content,
        finish_reason,
        usage: wire.usage,
        logprobs: choice.logprobs.and_then(|l| l.content),
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
        return Err(ErrorKind::InvalidResponse {
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
            return Err(ErrorKind::InvalidResponse {
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

/// A server error message decoded from any envelope we know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerMessage {
    /// Human-readable message.
    pub message: String,
    /// `code` as a string (vLLM sends an integer, OpenAI a string).
    pub code: Option<String>,
    /// `type` / `error_type`.
    pub kind: Option<String>,
}

/// Decodes an error body: vLLM ≥ 0.10.1 `{"error":{...}}`, vLLM < 0.10.1 `{"object":"error",...}`,
/// TGI `{"error":"...","error_type":"..."}`, FastAPI `{"detail":...}`, or plain text.
pub fn parse_error_body(body: &str) -> ServerMessage {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return ServerMessage {
            message: excerpt(body.trim()),
            ..Default::default()
        };
    };
    let obj = match v.get("error") {
        Some(inner @ Value::Object(_)) => inner,
        _ => &v,
    };
    let message = obj
        .get("message")
        .or_else(|| v.get("error").filter(|e| e.is_string()))
        .or_else(|| v.get("detail"))
        .and_then(text)
        .unwrap_or_else(|| excerpt(body.trim()));
    ServerMessage {
        message,
        code: obj.get("code").and_then(text),
        kind: obj
            .get("type")
            .or_else(|| v.get("error_type"))
            .and_then(text),
    }
}

/// The typed error of a non-2xx answer: status, class (context length, image loading, ...), the
/// server's own message and code, and a body excerpt.
pub fn http_error(status: u16, body: &str) -> ErrorKind {
    let msg = parse_error_body(body);
    let class = HttpClass::classify(status, is_context_length(&msg), is_media_load(&msg));
    ErrorKind::Http {
        status,
        class,
        message: msg.message,
        code: msg.code,
        body: excerpt(body),
    }
}

/// True when a server message says the prompt does not fit the model's context.
pub fn is_context_length(msg: &ServerMessage) -> bool {
    let m = msg.message.to_lowercase();
    msg.code.as_deref() == Some("context_length_exceeded")
        || m.contains("maximum context length")
        || m.contains("context length")
        || m.contains("context size")
        || m.contains("context window")
        || (m.contains("must be <=") && m.contains("tokens"))
        || m.contains("prompt is too long")
        || m.contains("too many tokens")
        // vLLM, multimodal prompts: "The decoder prompt (length N) is longer than the maximum
        // model length of M"; and "max_tokens=N cannot be greater than max_model_len=M".
        || m.contains("maximum model length")
        || m.contains("max_model_len=")
        // vLLM, when the prompt leaves no room to answer: it derives max_tokens = 0.
        || m.contains("max_tokens must be at least 1, got 0")
}

/// True when a server's 5xx message says it could not load an image the request points at
/// (vLLM 0.32: "Cannot load local files without `--allowed-local-media-path`.", or an image URL it
/// cannot connect to).
pub fn is_media_load(msg: &ServerMessage) -> bool {
    let m = &msg.message;
    m.contains("allowed-local-media-path")
        || m.contains("Cannot load local files")
        || m.contains("Failed to load image")
        || m.contains("Cannot connect to host")
}

/// At most 2,000 characters of a body, for error records.
pub fn excerpt(body: &str) -> String {
    const MAX: usize = 2000;
    if body.len() <= MAX {
        return body.to_string();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &body[..end], body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_new_envelope_with_integer_code() {
        let m = parse_error_body(
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens. However, you requested 5000","type":"BadRequestError","param":null,"code":400}}"#,
        );
        assert_eq!(m.code.as_deref(), Some("400"));
        assert_eq!(m.kind.as_deref(), Some("BadRequestError"));
        assert!(is_context_length(&m));
    }

    #[test]
    fn vllm_old_envelope() {
        let m = parse_error_body(
            r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
        );
        assert_eq!(m.message, "The model `x` does not exist.");
        assert_eq!(m.code.as_deref(), Some("404"));
        assert!(!is_context_length(&m));
    }

    #[test]
    fn tgi_envelope() {
        let m = parse_error_body(
            r#"{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 2048 `max_new_tokens`","error_type":"validation"}"#,
        );
        assert_eq!(m.kind.as_deref(), Some("validation"));
        assert!(is_context_length(&m));
    }

    #[test]
    fn plain_text_body() {
        let m = parse_error_body("<html>502 Bad Gateway</html>");
        assert_eq!(m.message, "<html>502 Bad Gateway</html>");
    }

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
            Err(ErrorKind::InvalidResponse { .. })
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
            Err(ErrorKind::InvalidResponse { .. })
        ));
    }

    #[test]
    fn excerpt_respects_char_boundaries() {
        let s = "é".repeat(3000);
        let e = excerpt(&s);
        assert!(e.contains("bytes in all"));
    }
}
