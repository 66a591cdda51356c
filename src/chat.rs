//! The chat and embedding domain types the roles build and read, independent of any server:
//! messages with text and image parts, a chat request, a validated answer with its finish reason,
//! usage and logprobs, and embedder inputs. A leaf module: `roles` builds and parses these without
//! knowing HTTP, and `serving` turns them into bodies and back (`serving::wire`), per server dialect.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::images::EncodedImage;

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

/// One input to the embedder.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    /// Text.
    Text(String),
    /// An image.
    Image(EncodedImage),
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
    /// Prompt tokens served from the server's cache, when it says (vLLM with
    /// `--enable-prompt-tokens-details`: `usage.prompt_tokens_details.cached_tokens`, absent
    /// meaning 0 once the details are there).
    #[serde(
        default,
        rename = "prompt_tokens_details",
        deserialize_with = "cached_tokens",
        skip_serializing
    )]
    pub cached_tokens: Option<u64>,
}

fn cached_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    // Read as any JSON value first, so an odd `cached_tokens` cannot upset the rest of the answer.
    let details = Option::<serde_json::Value>::deserialize(d)?;
    Ok(details.filter(serde_json::Value::is_object).map(|v| {
        v.get("cached_tokens")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }))
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
