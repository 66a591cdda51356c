//! Verifier: (candidate image, yes/no question) → a decision, in three modes.
//!
//! - `substring`: yes when "yes" appears anywhere in the lower-cased answer (the original; "eyes"
//!   counts too);
//! - `first-word`: the answer's first word decides;
//! - `logprob`: P(yes) = Σ p(yes-like tokens) / Σ p(yes-like and no-like tokens) among the first
//!   generated token's `top_logprobs`; the probability is kept as a score. Without logprobs in the
//!   answer (a server that ignores the field) it falls back to `first-word` and says so.

use crate::chat::{ChatAnswer, ChatRequest};
use crate::config::VerifierMode;
use crate::images::EncodedImage;
use crate::prompts::{Family, PromptError, PromptKind, PromptSet};

use super::request_from;

/// How many alternatives the logprob mode asks for (vLLM's default cap is 20).
pub const TOP_LOGPROBS: u8 = 20;

/// The verifier's reading of one answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Yes or no.
    pub yes: bool,
    /// P(yes), in logprob mode.
    pub p_yes: Option<f64>,
    /// Why the mode's rule could not be applied as such, when it could not.
    pub note: Option<String>,
}

/// The request asking `question` about `image`.
pub fn request(
    prompts: &PromptSet,
    family: Family,
    image: EncodedImage,
    question: &str,
    mode: VerifierMode,
) -> Result<ChatRequest, PromptError> {
    let rendered = prompts.render(
        family,
        PromptKind::Verify,
        &serde_json::json!({"question": question}),
    )?;
    let mut req = request_from(rendered, vec![image]);
    if mode == VerifierMode::Logprob {
        req.max_tokens = Some(1);
        req.top_logprobs = Some(TOP_LOGPROBS);
    }
    Ok(req)
}

/// The caption-grounded request: the candidate's stored caption instead of its pixels, for a
/// verifier served by a text model (`grounding = "caption"`).
pub fn request_from_caption(
    prompts: &PromptSet,
    family: Family,
    caption: &str,
    question: &str,
    mode: VerifierMode,
) -> Result<ChatRequest, PromptError> {
    let ctx = serde_json::json!({"caption": caption, "question": question});
    let mut req = request_from(
        prompts.render(family, PromptKind::VerifyCaption, &ctx)?,
        vec![],
    );
    if mode == VerifierMode::Logprob {
        req.max_tokens = Some(1);
        req.top_logprobs = Some(TOP_LOGPROBS);
    }
    Ok(req)
}

fn first_word(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .map(str::to_lowercase)
}

fn by_first_word(text: &str) -> Verdict {
    match first_word(text).as_deref() {
        Some("yes") => Verdict {
            yes: true,
            p_yes: None,
            note: None,
        },
        Some("no") => Verdict {
            yes: false,
            p_yes: None,
            note: None,
        },
        other => Verdict {
            yes: false,
            p_yes: None,
            note: Some(format!(
                "first word {other:?} is neither yes nor no; read as no"
            )),
        },
    }
}

/// The first word's verdict when the logprob rule cannot decide, saying `why` (and what the first
/// word's rule itself noted: a hedge read as no).
fn by_first_word_because(content: &str, why: &str) -> Verdict {
    let mut v = by_first_word(content);
    v.note = Some(match v.note.take() {
        Some(own) => format!("{why}; decided by the first word: {own}"),
        None => format!("{why}; decided by the first word"),
    });
    v
}

/// Reads an answer under `mode`.
pub fn decide(answer: &ChatAnswer, mode: VerifierMode) -> Verdict {
    match mode {
        VerifierMode::Substring => Verdict {
            yes: answer.content.trim().to_lowercase().contains("yes"),
            p_yes: None,
            note: None,
        },
        VerifierMode::FirstWord => by_first_word(&answer.content),
        VerifierMode::Logprob => {
            let first = answer.logprobs.as_ref().and_then(|l| l.first());
            let Some(token) = first else {
                return by_first_word_because(&answer.content, "the server returned no logprobs");
            };
            let (mut yes, mut no) = (0.0f64, 0.0f64);
            let mut alternatives: Vec<(&str, f64)> = token
                .top_logprobs
                .iter()
                .map(|t| (t.token.as_str(), t.logprob))
                .collect();
            if alternatives.is_empty() {
                alternatives.push((token.token.as_str(), token.logprob));
            }
            for (tok, lp) in alternatives {
                let p = lp.exp();
                if !p.is_finite() {
                    continue;
                }
                match tok
                    .trim()
                    .trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
                    .as_str()
                {
                    "yes" => yes += p,
                    "no" => no += p,
                    _ => {}
                }
            }
            if yes + no > 0.0 {
                let p_yes = yes / (yes + no);
                Verdict {
                    yes: p_yes >= 0.5,
                    p_yes: Some(p_yes),
                    note: None,
                }
            } else {
                by_first_word_because(&answer.content, "no yes/no token among the top logprobs")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> ChatAnswer {
        ChatAnswer {
            content: text.to_string(),
            finish_reason: Some(crate::chat::FinishReason::Stop),
            usage: None,
            logprobs: None,
            model: None,
        }
    }

    #[test]
    fn substring_is_the_original_rule_warts_and_all() {
        assert!(decide(&answer("Yes"), VerifierMode::Substring).yes);
        assert!(decide(&answer("Her eyes are blue"), VerifierMode::Substring).yes);
        assert!(!decide(&answer("No."), VerifierMode::Substring).yes);
    }

    #[test]
    fn first_word_reads_the_first_word() {
        assert!(decide(&answer("**Yes**, it is."), VerifierMode::FirstWord).yes);
        assert!(!decide(&answer("Her eyes are blue"), VerifierMode::FirstWord).yes);
        assert!(
            decide(&answer("maybe"), VerifierMode::FirstWord)
                .note
                .is_some()
        );
    }
}
