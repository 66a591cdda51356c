//! The five model roles as pure functions: each file turns typed inputs into a `ChatRequest`
//! (or embedding inputs) from its prompt template, and a server's answer into a typed result.
//! No I/O, no servers, no datasets: the pipeline calls these and `serving` carries the requests.
//!
//! Model output is untrusted: every parser returns a value or a `ParseFailure` that keeps the raw
//! text, never panics, and documents its fallback.

pub mod captioner;
pub mod embedder;
pub mod evaluator;
pub mod json;
pub mod reasoner;
pub mod verifier;

use crate::chat::{ChatRequest, Message, Part, Speaker};
use crate::images::EncodedImage;
use crate::prompts::Rendered;

/// An answer that could not be used, with the raw text kept for the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{reason}")]
pub struct ParseFailure {
    /// What is wrong.
    pub reason: String,
    /// The answer as received (cut to 4,000 characters).
    pub raw: String,
}

impl ParseFailure {
    /// A failure for `raw` with `reason`.
    pub fn new(reason: impl Into<String>, raw: &str) -> Self {
        ParseFailure {
            reason: reason.into(),
            raw: cut(raw, 4000),
        }
    }
}

/// At most `n` characters of `s`.
pub fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A request from a rendered prompt: the system part (if any) as a system message, then the user
/// part with `images` placed before its text.
pub fn request_from(rendered: Rendered, images: Vec<EncodedImage>) -> ChatRequest {
    let mut messages = Vec::new();
    if let Some(system) = rendered.system {
        messages.push(Message::text(Speaker::System, system));
    }
    let mut parts: Vec<Part> = images.into_iter().map(Part::Image).collect();
    parts.push(Part::Text(rendered.user));
    messages.push(Message {
        speaker: Speaker::User,
        parts,
    });
    ChatRequest {
        messages,
        ..Default::default()
    }
}
