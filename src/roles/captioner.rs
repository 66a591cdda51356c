//! Captioner: one gallery image → one sentence describing it.

use crate::chat::ChatRequest;
use crate::images::EncodedImage;
use crate::prompts::{Family, PromptError, PromptKind, PromptSet};

use super::{ParseFailure, request_from};

/// Longest caption kept, in characters; longer answers are cut (CLIP reads 77 tokens anyway).
pub const MAX_CAPTION_CHARS: usize = 1000;

/// The request captioning `image`.
pub fn request(
    prompts: &PromptSet,
    family: Family,
    image: EncodedImage,
) -> Result<ChatRequest, PromptError> {
    let rendered = prompts.render(family, PromptKind::Caption, &serde_json::json!({}))?;
    Ok(request_from(rendered, vec![image]))
}

/// The caption in an answer: whitespace collapsed, control characters dropped, a leading "Caption:" label dropped, cut to
/// `MAX_CAPTION_CHARS`. Empty answers are failures.
pub fn parse(answer: &str) -> Result<String, ParseFailure> {
    // Control characters (terminal escapes, bells) are dropped: captions end up in logs and reports.
    let text = answer
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    let text = ["Caption:", "caption:", "CAPTION:"]
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .unwrap_or(&text)
        .trim()
        .trim_matches('"')
        .trim();
    if text.is_empty() {
        return Err(ParseFailure::new("the caption is empty", answer));
    }
    Ok(super::cut(text, MAX_CAPTION_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_cleaned() {
        assert_eq!(parse("  Caption:  A red\n bus. ").unwrap(), "A red bus.");
        assert_eq!(parse("\"Two cats.\"").unwrap(), "Two cats.");
        assert!(parse("  \n ").is_err());
    }
}
