//! Typed serving errors that keep the raw evidence: role, endpoint, HTTP status, the server's
//! own message and a body excerpt. Each kind knows whether it is worth retrying and whether it
//! means the endpoint itself is unwell (so a replica is set aside).

use std::fmt;
use std::time::Duration;

use crate::config::Role;

/// What went wrong with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// Could not connect, or the connection broke.
    Connect(String),
    /// No answer within the per-attempt time limit.
    Timeout(Duration),
    /// The server answered with an HTTP error status.
    Http {
        /// HTTP status.
        status: u16,
        /// Classification of the status and message.
        class: HttpClass,
        /// The server's message from its error envelope.
        message: String,
        /// The envelope's `code`, as text.
        code: Option<String>,
        /// Body excerpt.
        body: String,
    },
    /// A 2xx answer that is not the JSON the API promises (cut short, garbled, an HTML page from
    /// a proxy): something on the way, which another attempt or replica can change.
    InvalidResponse {
        /// What is wrong.
        reason: String,
        /// Body excerpt.
        body: String,
    },
    /// A well-formed answer whose content cannot be used (no choices, too few embeddings, a NaN
    /// in a vector): the model's own answer, which greedy decoding repeats, so it is retried only
    /// when sampling and never held against the replica.
    UnusableAnswer {
        /// What is wrong.
        reason: String,
        /// Body excerpt.
        body: String,
    },
    /// The model produced no text.
    EmptyContent {
        /// The finish reason the server gave, if any.
        finish_reason: Option<String>,
    },
    /// The server answered with a different model than configured.
    WrongModel {
        /// Configured model.
        expected: String,
        /// Model named in the answer.
        got: String,
    },
    /// The answer is larger than the client accepts.
    Oversize {
        /// The cap, in bytes.
        limit: usize,
    },
    /// An embedding of the wrong length.
    WrongDimension {
        /// Configured dimension.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// The request cannot be expressed for this server (e.g. an image for a text-only embedder).
    Unsupported(String),
}

/// Classification of an HTTP error status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpClass {
    /// The prompt does not fit the model's context window (reduce it; never retried).
    ContextLength,
    /// Any other 400/422: the request itself is wrong.
    BadRequest,
    /// 401/403: missing or wrong API key.
    Auth,
    /// 404: wrong path or unknown model.
    NotFound,
    /// 408: the server timed the request out.
    RequestTimeout,
    /// 429: slow down.
    RateLimited,
    /// A 5xx that says the server could not load an image the request points at (vLLM: a `file://`
    /// URL without `--allowed-local-media-path`, an unreachable image URL). The same request fails
    /// the same way again, so it is never retried.
    MediaLoad,
    /// vLLM (≥ 0.11) was asked for an image by its `uuid` alone and does not hold it (evicted,
    /// restarted, another API process answered: a 400 "Cache miss for image at index N but data
    /// is not provided"). Sent again at once with every image's bytes (`image_uuids`); the
    /// replica is fine.
    ImageCacheMiss,
    /// Any other 5xx.
    Server,
    /// Any other status.
    Other,
}

impl HttpClass {
    /// Classifies a status; `context_length` says whether the message reads as a context overflow,
    /// `media_load` whether it says an image could not be loaded.
    pub fn classify(status: u16, context_length: bool, media_load: bool) -> Self {
        match status {
            400 | 413 | 422 if context_length => HttpClass::ContextLength,
            500..=599 if media_load => HttpClass::MediaLoad,
            400 | 422 => HttpClass::BadRequest,
            401 | 403 => HttpClass::Auth,
            404 => HttpClass::NotFound,
            408 => HttpClass::RequestTimeout,
            429 => HttpClass::RateLimited,
            500..=599 => HttpClass::Server,
            _ => HttpClass::Other,
        }
    }
}

impl ErrorKind {
    /// Whether another attempt can answer differently: connection errors, timeouts, 5xx, 408, 429,
    /// malformed answers, a wrong model (another replica may serve the right one), and an empty
    /// answer unless the request is `deterministic` (greedy sampling, or an embedding: a healthy
    /// server gives the same empty answer every time). Never other 4xx (a prompt too long or a bad
    /// request fails the same way every time), an image the server cannot load, an oversize answer
    /// or a wrong dimension.
    pub fn may_change(&self, deterministic: bool) -> bool {
        match self {
            ErrorKind::Connect(_)
            | ErrorKind::Timeout(_)
            | ErrorKind::InvalidResponse { .. }
            | ErrorKind::WrongModel { .. } => true,
            ErrorKind::EmptyContent { .. } | ErrorKind::UnusableAnswer { .. } => !deterministic,
            ErrorKind::Http { class, .. } => matches!(
                class,
                HttpClass::Server
                    | HttpClass::RequestTimeout
                    | HttpClass::RateLimited
                    | HttpClass::ImageCacheMiss
            ),
            ErrorKind::Oversize { .. }
            | ErrorKind::WrongDimension { .. }
            | ErrorKind::Unsupported(_) => false,
        }
    }

    /// The endpoint itself looks unwell, so a replica should be set aside for a while. Answers
    /// that are well-formed but unwanted (empty, wrong dimension, oversize, a 4xx, an image it
    /// cannot load) say the server is alive and do not count against it.
    pub fn is_endpoint_fault(&self) -> bool {
        match self {
            ErrorKind::Connect(_) | ErrorKind::Timeout(_) | ErrorKind::WrongModel { .. } => true,
            ErrorKind::Http { class, .. } => *class == HttpClass::Server,
            ErrorKind::InvalidResponse { .. } => true,
            _ => false,
        }
    }

    /// A short label for counters and summaries.
    pub fn label(&self) -> String {
        match self {
            ErrorKind::Connect(_) => "connect".into(),
            ErrorKind::Timeout(_) => "timeout".into(),
            ErrorKind::Http { status, class, .. } => match class {
                HttpClass::ContextLength => "context-length".into(),
                HttpClass::MediaLoad => "media-load".into(),
                HttpClass::ImageCacheMiss => "image-cache-miss".into(),
                _ => format!("http-{status}"),
            },
            ErrorKind::InvalidResponse { .. } => "invalid-response".into(),
            ErrorKind::UnusableAnswer { .. } => "unusable-answer".into(),
            ErrorKind::EmptyContent { .. } => "empty-content".into(),
            ErrorKind::WrongModel { .. } => "wrong-model".into(),
            ErrorKind::WrongDimension { .. } => "wrong-dimension".into(),
            ErrorKind::Oversize { .. } => "oversize".into(),
            ErrorKind::Unsupported(_) => "unsupported".into(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect(e) => write!(f, "connection failed: {e}"),
            ErrorKind::Timeout(d) => {
                write!(f, "no answer within {:.1}s (timeout_secs)", d.as_secs_f64())
            }
            ErrorKind::Http {
                status,
                class,
                message,
                ..
            } => {
                let what = match class {
                    HttpClass::ContextLength => " (prompt exceeds the model's context length)",
                    HttpClass::Auth => " (check the API key variable)",
                    HttpClass::NotFound => " (check the endpoint URL and model name)",
                    HttpClass::MediaLoad if message.contains("aiohttp") => {
                        " (infinity cannot read any image without aiohttp, which no extra of infinity-emb installs: pip install aiohttp in the server's environment, as launch/infinity-cpu/requirements.lock does)"
                    }
                    HttpClass::MediaLoad => {
                        " (the server could not load the image; with image_transport = \"local-path\" start vLLM with --allowed-local-media-path, or use \"data-url\")"
                    }
                    HttpClass::RateLimited => " (rate limited)",
                    HttpClass::ImageCacheMiss => {
                        " (the server no longer holds an image named by its uuid; it is sent again with its bytes)"
                    }
                    // vLLM's router (vllm-router 0.1.17) in front of replicas, in plain text.
                    HttpClass::Server
                        if message.starts_with("No available workers")
                            || message.starts_with("No workers are currently available") =>
                    {
                        " (vLLM's router has no healthy worker: see its GET /workers, start or restart the replicas behind it)"
                    }
                    HttpClass::Server
                        if message.starts_with("Request failed: error sending request") =>
                    {
                        " (vLLM's router could not reach the worker it chose; it moves the worker's requests to another once the worker's circuit opens)"
                    }
                    _ => "",
                };
                write!(f, "HTTP {status}{what}: {message}")
            }
            ErrorKind::InvalidResponse { reason, .. } => write!(f, "invalid answer: {reason}"),
            ErrorKind::UnusableAnswer { reason, .. } => write!(f, "unusable answer: {reason}"),
            ErrorKind::EmptyContent { finish_reason } => match finish_reason {
                Some(r) => write!(f, "the model returned no text (finish_reason {r})"),
                None => write!(f, "the model returned no text"),
            },
            ErrorKind::WrongModel { expected, got } => {
                write!(
                    f,
                    "server answered as model {got:?}, configured model is {expected:?}"
                )
            }
            ErrorKind::WrongDimension { expected, got } => {
                write!(
                    f,
                    "embedding has {got} dimensions, configured dimension is {expected}"
                )
            }
            ErrorKind::Oversize { limit } => {
                write!(f, "answer larger than {} MiB", limit >> 20)
            }
            ErrorKind::Unsupported(m) => write!(f, "unsupported request: {m}"),
        }
    }
}

impl std::error::Error for ErrorKind {}

/// A failed request, with where and how often it was tried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{role} @ {endpoint}: {kind} (after {attempts} attempt{s})", s = if *.attempts == 1 { "" } else { "s" })]
pub struct ServingError {
    /// Role whose server failed.
    pub role: Role,
    /// Endpoint of the last attempt.
    pub endpoint: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's failure.
    pub kind: ErrorKind,
    /// The failures of earlier attempts, oldest first.
    pub earlier: Vec<ErrorKind>,
}

impl ServingError {
    /// HTTP status of the last attempt, when there was one.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            ErrorKind::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the prompt was too long for the model.
    pub fn is_context_length(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Http {
                class: HttpClass::ContextLength,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, ctx: bool) -> ErrorKind {
        ErrorKind::Http {
            status,
            class: HttpClass::classify(status, ctx, false),
            message: "m".into(),
            code: None,
            body: String::new(),
        }
    }

    #[test]
    fn retry_allowlist() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(http(s, false).may_change(false), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!http(s, false).may_change(false), "{s}");
        }
        assert!(!http(400, true).may_change(false));
        assert!(ErrorKind::Connect("refused".into()).may_change(false));
    }

    #[test]
    fn what_cannot_change_is_not_retried_nor_held_against_the_endpoint() {
        let empty = ErrorKind::EmptyContent {
            finish_reason: Some("Length".into()),
        };
        assert!(
            empty.may_change(false),
            "sampled: another draw may say something"
        );
        assert!(
            !empty.may_change(true),
            "greedy: the same empty answer again"
        );
        assert!(!empty.is_endpoint_fault());
        for k in [
            ErrorKind::WrongDimension {
                expected: 768,
                got: 64,
            },
            ErrorKind::Oversize { limit: 64 << 20 },
            ErrorKind::Http {
                status: 500,
                class: HttpClass::classify(500, false, true),
                message: "Cannot load local files without `--allowed-local-media-path`.".into(),
                code: None,
                body: String::new(),
            },
        ] {
            assert!(!k.may_change(false) && !k.may_change(true), "{k}");
            assert!(!k.is_endpoint_fault(), "{k}");
        }
        let media = HttpClass::classify(500, false, true);
        assert_eq!(media, HttpClass::MediaLoad);
        assert_eq!(HttpClass::classify(500, false, false), HttpClass::Server);
        assert_eq!(HttpClass::classify(400, false, true), HttpClass::BadRequest);
    }

    #[test]
    fn display_names_role_endpoint_status_and_message() {
        let e = ServingError {
            role: Role::Reasoner,
            endpoint: "http://h:1/v1".into(),
            attempts: 1,
            kind: http(400, true),
            earlier: vec![],
        };
        let s = e.to_string();
        assert!(s.contains("reasoner") && s.contains("http://h:1/v1") && s.contains("HTTP 400"));
        assert!(e.is_context_length());
        assert_eq!(e.status(), Some(400));
    }
}
