//! Server dialects: what differs between vLLM (old and new error envelopes, its context-length
//! and image-loading wordings), TGI (`eos_token`, `error_type`), infinity and FastAPI (`detail`),
//! read into one shape. `wire` builds and reads bodies through these; nothing else needs to know
//! which server spoke. (Request-side dialects — embedding request shapes, structured-output field
//! names — are chosen by `wire` from the configured `api` and `embed_shape`.)

use serde_json::Value;

use super::errors::{ErrorKind, HttpClass};
use crate::chat::FinishReason;

/// A server's `finish_reason` string: OpenAI's and vLLM's `stop`/`length`, TGI's `eos_token` and
/// `stop_sequence`; anything else is kept as it was sent.
pub fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" | "eos_token" | "stop_sequence" => FinishReason::Stop,
        "length" => FinishReason::Length,
        other => FinishReason::Other(other.to_string()),
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
        .and_then(text)
        .or_else(|| {
            v.get("detail")
                .and_then(|d| validation_messages(d).or_else(|| text(d)))
        })
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

/// FastAPI's 422 `detail`: a list of pydantic errors, each with a `msg` (infinity sends one per
/// alternative of a union, so the same complaint may repeat): their distinct messages, in order.
fn validation_messages(detail: &Value) -> Option<String> {
    let mut msgs: Vec<&str> = Vec::new();
    for m in detail
        .as_array()?
        .iter()
        .filter_map(|e| e.get("msg")?.as_str())
    {
        if !msgs.contains(&m) {
            msgs.push(m);
        }
    }
    (!msgs.is_empty()).then(|| excerpt(&msgs.join("; ")))
}

/// The typed error of a non-2xx answer: status, class (context length, image loading, ...), the
/// server's own message and code, and a body excerpt.
pub fn http_error(status: u16, body: &str) -> ErrorKind {
    let msg = parse_error_body(body);
    let class = if is_image_cache_miss(status, &msg) {
        HttpClass::ImageCacheMiss
    } else {
        HttpClass::classify(status, is_context_length(&msg), is_media_load(&msg))
    };
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

/// True when vLLM says it no longer holds an image the request named by its `uuid` alone.
pub fn is_image_cache_miss(status: u16, msg: &ServerMessage) -> bool {
    // vLLM's input processor: `Cache miss for {modality} at index {idx} but data is not provided.`
    // Only this 400: the engine's own misses (its cache drifted from the API server's: a 500,
    // "Expected a cached item for mm_hash" or "not in the receiver (P1) cache") are the server's
    // trouble, stay `Server` errors and are retried as such.
    status == 400
        && msg.message.contains("Cache miss for")
        && msg.message.contains("but data is not provided")
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
        // infinity-emb 0.0.78 installed without aiohttp (no extra of its package pulls it in):
        // every image input fails this way, data: URIs included, on every retry.
        || m.contains("aiohttp is not available")
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
    fn infinity_without_aiohttp_cannot_load_any_image_and_says_so() {
        // The body infinity-emb 0.0.78 sent for a data: image before aiohttp was installed.
        let body = r#"{"error":{"message":"InternalServerError: aiohttp is not available. install via `pip install infinity-emb[server]`","type":null,"param":null,"code":500}}"#;
        let e = http_error(500, body);
        match &e {
            ErrorKind::Http { class, code, .. } => {
                assert_eq!(*class, HttpClass::MediaLoad);
                assert_eq!(code.as_deref(), Some("500"));
            }
            other => panic!("{other:?}"),
        }
        // Never retried, and the message says the fix that works (the server's own does not).
        assert!(!e.may_change(true) && !e.may_change(false));
        assert!(e.to_string().contains("pip install aiohttp"), "{e}");
    }

    #[test]
    fn an_image_vllm_no_longer_holds_by_uuid_is_a_miss_sent_again_with_its_bytes() {
        let body = serde_json::json!({"error": {"message": "Cache miss for image at index 0 but data is not provided.", "type": "BadRequestError", "param": null, "code": 400}});
        let e = http_error(400, &body.to_string());
        match &e {
            ErrorKind::Http { class, .. } => assert_eq!(*class, HttpClass::ImageCacheMiss),
            other => panic!("{other:?}"),
        }
        assert!(e.may_change(true) && !e.is_endpoint_fault());
        assert_eq!(e.label(), "image-cache-miss");
        // The engine's misses (its cache drifted from the API server's) stay server errors.
        for message in [
            "Expected a cached item for mm_hash='3f2a9c'",
            "Multi-modal items ['3f2a9c'] are not in the receiver (P1) cache and no data was provided to recompute them (P0/P1 cache drift); the request should be retried with the multi-modal data attached.",
        ] {
            let body = serde_json::json!({"error": {"message": message, "type": "InternalServerError", "code": 500}});
            assert!(matches!(
                http_error(500, &body.to_string()),
                ErrorKind::Http {
                    class: HttpClass::Server,
                    ..
                }
            ));
        }
        // Other 400s stay bad requests.
        let other = http_error(
            400,
            r#"{"error":{"message":"At most 1 image(s) may be provided in one prompt.","type":"BadRequestError","code":400}}"#,
        );
        assert!(matches!(
            other,
            ErrorKind::Http {
                class: HttpClass::BadRequest,
                ..
            }
        ));
    }

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
    fn excerpt_respects_char_boundaries() {
        let s = "é".repeat(3000);
        let e = excerpt(&s);
        assert!(e.contains("bytes in all"));
    }
}
