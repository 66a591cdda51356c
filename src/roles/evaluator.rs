//! Evaluator: does a candidate satisfy the instruction, given the reference? One composite image
//! per request, built exactly as method.md §7.1: a white 1645 × 826 canvas, the reference (black
//! when there is none) resized to 800 × 800 at (0, 26), the candidate at (845, 26), a 5-px black
//! separator at x = 820 over the full height, and the labels "Reference Image" and "Candidate
//! Image" centred above each half in DejaVu Sans at 20 px.
//!
//! Decisions are read `strict` (the substring `ANSWER: Yes`, as the original) or `tolerant` (case,
//! markdown, brackets and punctuation around the marker forgiven).

use std::sync::LazyLock;

use ab_glyph::{Font as _, FontRef, PxScale, ScaleFont as _};
use image::{DynamicImage, Rgb, RgbImage};

use crate::chat::ChatRequest;
use crate::config::EvaluatorParse;
use crate::images::{EncodedImage, ImageError, encode_png};
use crate::prompts::{Family, PromptError, PromptKind, PromptSet};

use super::request_from;

/// Composite width.
pub const WIDTH: u32 = 1645;
/// Composite height.
pub const HEIGHT: u32 = 826;
const SIDE: u32 = 800;
const TOP: u32 = 26;
const CANDIDATE_X: u32 = 845;
const LINE_X: u32 = 820;
const LINE_W: u32 = 5;
const FONT_PX: f32 = 20.0;

static FONT_BYTES: &[u8] = include_bytes!("assets/DejaVuSans.ttf");

fn font() -> Option<&'static FontRef<'static>> {
    static FONT: LazyLock<Option<FontRef<'static>>> =
        LazyLock::new(|| FontRef::try_from_slice(FONT_BYTES).ok());
    FONT.as_ref()
}

fn draw_label(canvas: &mut RgbImage, text: &str, center_x: f32) {
    let Some(font) = font() else {
        return;
    };
    let scaled = font.as_scaled(PxScale::from(FONT_PX));
    let width: f32 = text
        .chars()
        .map(|c| scaled.h_advance(font.glyph_id(c)))
        .sum();
    let mut x = center_x - width / 2.0;
    // Baseline placed so the text sits in the 26-px band above the images.
    let baseline = (TOP as f32 - scaled.descent()).min(TOP as f32) - 4.0;
    for c in text.chars() {
        let id = font.glyph_id(c);
        let glyph =
            id.with_scale_and_position(PxScale::from(FONT_PX), ab_glyph::point(x, baseline));
        x += scaled.h_advance(id);
        if let Some(outlined) = font.outline_glyph(glyph) {
            let b = outlined.px_bounds();
            outlined.draw(|gx, gy, coverage| {
                let px = b.min.x as i64 + gx as i64;
                let py = b.min.y as i64 + gy as i64;
                if px >= 0
                    && py >= 0
                    && (px as u32) < canvas.width()
                    && (py as u32) < canvas.height()
                {
                    let p = canvas.get_pixel_mut(px as u32, py as u32);
                    let v = (255.0 * (1.0 - coverage.clamp(0.0, 1.0))) as u8;
                    *p = Rgb([p[0].min(v), p[1].min(v), p[2].min(v)]);
                }
            });
        }
    }
}

/// `img` resized to `SIDE` × `SIDE` RGB with a bilinear (triangle) filter, by `fast_image_resize`
/// (SIMD; its integer arithmetic gives the same pixels on every CPU extension). `None` only if
/// the resizer refuses the image (an empty one): the caller then paints the half black.
fn square(img: &DynamicImage) -> Option<RgbImage> {
    use fast_image_resize::{FilterType as Filter, ResizeAlg, ResizeOptions, Resizer};
    let converted;
    let rgb = match img.as_rgb8() {
        Some(rgb) => rgb,
        None => {
            converted = img.to_rgb8();
            &converted
        }
    };
    let mut out = RgbImage::new(SIDE, SIDE);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(Filter::Bilinear));
    Resizer::new().resize(rgb, &mut out, &options).ok()?;
    Some(out)
}

/// Copies `half` into `canvas` with its top-left corner at (`x`, `TOP`), row by row.
fn paste(canvas: &mut RgbImage, half: &RgbImage, x: u32) {
    let canvas_row = WIDTH as usize * 3;
    let row = half.width() as usize * 3;
    let buf: &mut [u8] = canvas;
    for (y, src) in half.as_raw().chunks_exact(row).enumerate() {
        let start = (TOP as usize + y) * canvas_row + x as usize * 3;
        if let Some(dst) = buf.get_mut(start..start + row) {
            dst.copy_from_slice(src);
        }
    }
}

/// The composite of `reference` (black when `None`) and `candidate`.
pub fn composite(reference: Option<&DynamicImage>, candidate: &DynamicImage) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let black = || RgbImage::from_pixel(SIDE, SIDE, Rgb([0, 0, 0]));
    let left = reference.and_then(square).unwrap_or_else(black);
    let right = square(candidate).unwrap_or_else(black);
    paste(&mut canvas, &left, 0);
    paste(&mut canvas, &right, CANDIDATE_X);
    for y in 0..HEIGHT {
        for x in LINE_X..LINE_X + LINE_W {
            canvas.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    draw_label(&mut canvas, "Reference Image", SIDE as f32 / 2.0);
    draw_label(
        &mut canvas,
        "Candidate Image",
        CANDIDATE_X as f32 + SIDE as f32 / 2.0,
    );
    canvas
}

/// The composite as a PNG ready to send.
pub fn composite_png(
    reference: Option<&DynamicImage>,
    candidate: &DynamicImage,
) -> Result<EncodedImage, ImageError> {
    encode_png(
        &DynamicImage::ImageRgb8(composite(reference, candidate)),
        "evaluator composite",
    )
}

/// The instruction as the original inserts it: spaces and periods trimmed at both ends, lower case.
pub fn normalize_instruction(s: &str) -> String {
    s.trim_matches(|c: char| c == '.' || c.is_whitespace())
        .to_lowercase()
}

/// The request judging one composite against the instruction.
pub fn request(
    prompts: &PromptSet,
    family: Family,
    composite: EncodedImage,
    instruction: &str,
    has_reference: bool,
) -> Result<ChatRequest, PromptError> {
    let ctx = serde_json::json!({
        "instruction": normalize_instruction(instruction),
        "has_reference": has_reference,
    });
    Ok(request_from(
        prompts.render(family, PromptKind::Evaluate, &ctx)?,
        vec![composite],
    ))
}

/// The caption-grounded request: the stored captions of the reference (if any) and the candidate
/// instead of a composite image, for an evaluator served by a text model.
pub fn request_from_captions(
    prompts: &PromptSet,
    family: Family,
    reference_caption: Option<&str>,
    candidate_caption: &str,
    instruction: &str,
) -> Result<ChatRequest, PromptError> {
    let ctx = serde_json::json!({
        "instruction": normalize_instruction(instruction),
        "reference_caption": reference_caption.unwrap_or(""),
        "candidate_caption": candidate_caption,
    });
    Ok(request_from(
        prompts.render(family, PromptKind::EvaluateCaption, &ctx)?,
        vec![],
    ))
}

/// The evaluator's reading of one answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Accepted.
    pub accepted: bool,
    /// The explanation that followed the marker (trimmed, cut to 1,000 characters).
    pub explanation: String,
    /// Why the marker was not found as such, when it was not.
    pub note: Option<String>,
}

static TOLERANT: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(r"(?i)\banswer\b[\s*_`\[\](){}:=\-–—>]*\b(yes|no)\b").ok());

/// Reads a decision under `mode`.
pub fn decide(text: &str, mode: EvaluatorParse) -> Decision {
    let explanation = |from: usize| {
        super::cut(
            text.get(from..)
                .unwrap_or("")
                .trim()
                .trim_start_matches(['*', '_', ']', ')', '.'])
                .trim(),
            1000,
        )
    };
    match mode {
        EvaluatorParse::Strict => match text.find("ANSWER: Yes") {
            Some(i) => Decision {
                accepted: true,
                explanation: explanation(i + "ANSWER: Yes".len()),
                note: None,
            },
            None => Decision {
                accepted: false,
                explanation: super::cut(text.trim(), 1000),
                note: (!text.contains("ANSWER: No"))
                    .then(|| "no exact \"ANSWER: Yes\" or \"ANSWER: No\"; read as no".into()),
            },
        },
        EvaluatorParse::Tolerant => {
            if let Some(caps) = TOLERANT.as_ref().and_then(|re| re.captures(text))
                && let Some(word) = caps.get(1)
            {
                return Decision {
                    accepted: word.as_str().eq_ignore_ascii_case("yes"),
                    explanation: explanation(word.end()),
                    note: None,
                };
            }
            let first = text
                .split(|c: char| !c.is_alphanumeric())
                .find(|w| !w.is_empty())
                .map(str::to_lowercase);
            match first.as_deref() {
                Some(w @ ("yes" | "no")) => Decision {
                    accepted: w == "yes",
                    explanation: super::cut(text.trim(), 1000),
                    note: Some("no ANSWER marker; decided by the first word".into()),
                },
                _ => Decision {
                    accepted: false,
                    explanation: super::cut(text.trim(), 1000),
                    note: Some("no decision found; read as no".into()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_geometry() {
        let red = DynamicImage::ImageRgb8(RgbImage::from_pixel(50, 30, Rgb([255, 0, 0])));
        let blue = DynamicImage::ImageRgb8(RgbImage::from_pixel(10, 90, Rgb([0, 0, 255])));
        let c = composite(Some(&red), &blue);
        assert_eq!(c.dimensions(), (1645, 826));
        assert_eq!(*c.get_pixel(400, 426), Rgb([255, 0, 0]));
        assert_eq!(*c.get_pixel(845 + 400, 426), Rgb([0, 0, 255]));
        assert_eq!(
            *c.get_pixel(822, 5),
            Rgb([0, 0, 0]),
            "separator runs the full height"
        );
        assert_eq!(
            *c.get_pixel(830, 400),
            Rgb([255, 255, 255]),
            "gap after the separator"
        );
        let dark_label_pixels = (0..26u32)
            .flat_map(|y| (300..500u32).map(move |x| (x, y)))
            .filter(|(x, y)| c.get_pixel(*x, *y)[0] < 128)
            .count();
        assert!(dark_label_pixels > 50, "the label is drawn");
        let none = composite(None, &blue);
        assert_eq!(
            *none.get_pixel(400, 426),
            Rgb([0, 0, 0]),
            "no reference is black"
        );
    }

    #[test]
    fn instruction_is_trimmed_and_lowered() {
        assert_eq!(normalize_instruction("  Make it Blue. "), "make it blue");
    }

    #[test]
    fn the_fast_resize_matches_the_image_crates_triangle_filter_within_one_level() {
        // A busy pattern (smooth gradients come out identical).
        let g = DynamicImage::ImageRgb8(RgbImage::from_fn(300, 200, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 3 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        }));
        let fast = square(&g).expect("resized");
        let slow = g.resize_exact(SIDE, SIDE, image::imageops::FilterType::Triangle);
        let most = fast
            .as_raw()
            .iter()
            .zip(slow.to_rgb8().as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max();
        assert!(most <= Some(1), "{most:?}");
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(7, 3, image::Luma([90])));
        assert_eq!(
            *square(&gray).expect("resized").get_pixel(5, 5),
            Rgb([90, 90, 90])
        );
    }
}
