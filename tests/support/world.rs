//! A tiny deterministic "world" behind the fake model servers (a TEST DOUBLE, no model runs):
//! every image is a solid colour standing for a hidden description ("a red car"). The fakes read
//! images back from the requests, so each role answers as a perfect model of this world would:
//!
//! - captioner: "A photo of <description>.";
//! - embedder: bag-of-words vectors, the same for an image and for its description (a perfect CLIP);
//! - reasoner: descriptions = the instruction's first content word (stage 1; the running
//!   description plus the turn in a dialogue); one question per content word of the instruction,
//!   expected "True" (stage 2a);
//! - verifier: "Yes" when the question's last word is in the image's description;
//! - evaluator: reads the candidate at the centre of the composite's right half and answers
//!   "ANSWER: Yes" when every content word of the instruction is in its description.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::fake_server::FakeServer;

const STOP: [&str; 16] = [
    "a", "an", "the", "of", "it", "is", "on", "in", "with", "and", "make", "photo", "show", "same",
    "to", "does",
];

/// Content words of a text, lower-cased, without stop words.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| !w.is_empty() && !STOP.contains(&w.as_str()))
        .collect()
}

/// Words of the test world that get a dimension of their own (others are hashed into the rest).
const VOCABULARY: [&str; 16] = [
    "red", "blue", "green", "black", "white", "yellow", "car", "bus", "tree", "trees", "two",
    "dog", "sofa", "cat", "flower", "thing",
];

/// Bag-of-words unit vector of `text` in `dim` dimensions (dim > 16).
pub fn bow(text: &str, dim: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dim];
    for w in words(text) {
        let slot = match VOCABULARY.iter().position(|x| *x == w) {
            Some(i) => i,
            None => {
                let h = blake3::hash(w.as_bytes());
                let b = h.as_bytes();
                VOCABULARY.len()
                    + (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                        % (dim - VOCABULARY.len())
            }
        };
        v[slot] += 1.0;
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    } else {
        v[0] = 1.0;
    }
    v
}

/// The colour of image number `i` (unique for i < 1000).
pub fn colour(i: usize) -> [u8; 3] {
    [
        (i % 10 * 25) as u8,
        (i / 10 % 10 * 25) as u8,
        (i / 100 % 10 * 25) as u8,
    ]
}

/// The world: colour → description.
#[derive(Clone, Default)]
pub struct World {
    pub by_colour: Arc<HashMap<[u8; 3], String>>,
}

impl World {
    /// Writes `descriptions[i]` as a solid-colour PNG `<dir>/<name(i)>.png`; returns the paths.
    pub fn create(
        dir: &Path,
        descriptions: &[&str],
        name: impl Fn(usize) -> String,
    ) -> (World, Vec<PathBuf>) {
        std::fs::create_dir_all(dir).unwrap();
        let mut map = HashMap::new();
        let mut paths = Vec::new();
        for (i, d) in descriptions.iter().enumerate() {
            let c = colour(i);
            let path = dir.join(format!("{}.png", name(i)));
            image::RgbImage::from_pixel(8, 8, image::Rgb(c))
                .save(&path)
                .unwrap();
            map.insert(c, d.to_string());
            paths.push(path);
        }
        (
            World {
                by_colour: Arc::new(map),
            },
            paths,
        )
    }

    fn decode(url: &str) -> Option<image::RgbImage> {
        let (_, bytes) = imagescope::images::decode_data_url(url)?;
        Some(image::load_from_memory(&bytes).ok()?.to_rgb8())
    }

    /// The description of the image in a data URL (the pixel at (x, y), or the centre).
    pub fn describe(&self, url: &str, at: Option<(u32, u32)>) -> Option<String> {
        let img = Self::decode(url)?;
        let (x, y) = at.unwrap_or((img.width() / 2, img.height() / 2));
        let p = img
            .get_pixel(x.min(img.width() - 1), y.min(img.height() - 1))
            .0;
        self.by_colour.get(&p).cloned()
    }

    fn image_url(req: &Value) -> Option<String> {
        req["messages"]
            .as_array()?
            .iter()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .find(|p| p["type"] == "image_url")
            .and_then(|p| p["image_url"]["url"].as_str().map(str::to_string))
    }

    fn user_text(req: &Value) -> String {
        let last = req["messages"]
            .as_array()
            .and_then(|m| m.last())
            .cloned()
            .unwrap_or(Value::Null);
        match &last["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }

    fn after<'a>(text: &'a str, label: &str) -> &'a str {
        text.rsplit_once(label)
            .map(|(_, r)| r.lines().next().unwrap_or("").trim())
            .unwrap_or("")
    }

    /// Makes `fake` answer as the captioner of this world.
    pub fn captioner(&self, fake: &FakeServer) {
        let w = self.clone();
        fake.set_chat_responder(move |req| {
            match Self::image_url(req).and_then(|u| w.describe(&u, None)) {
                Some(d) => format!("A photo of {d}."),
                None => "an unknown image".into(),
            }
        });
    }

    /// Makes `fake` answer as the embedder (a perfect bag-of-words CLIP).
    pub fn embedder(&self, fake: &FakeServer) {
        let w = self.clone();
        fake.set_embed_responder(move |input, dim| {
            let text = match input {
                Value::String(s) => s.clone(),
                v if v["type"] == "text" => v["text"].as_str().unwrap_or("").to_string(),
                v => v["image_url"]["url"]
                    .as_str()
                    .and_then(|u| w.describe(u, None))
                    .unwrap_or_default(),
            };
            bow(&text, dim)
        });
    }

    /// Makes `fake` answer as the reasoner.
    pub fn reasoner(fake: &FakeServer) {
        fake.set_chat_responder(|req| {
            let first = req["messages"][0]["content"].as_str().unwrap_or("").to_string();
            if first.contains("yes/no questions") {
                let instruction = Self::after(&first, "\nInstruction: ");
                let instruction = if instruction.is_empty() { Self::after(&first, "\nRequest: ") } else { instruction };
                let qs: Vec<Value> = words(instruction)
                    .into_iter()
                    .map(|w| serde_json::json!([format!("Does the photo show {w}?"), "True"]))
                    .collect();
                format!("```json\n{}\n```", serde_json::json!({"statements": [], "questions": qs}))
            } else {
                let instruction = ["\nInstruction: ", "\nRequest: ", "Question and answer: "]
                    .iter()
                    .map(|l| Self::after(&first, l))
                    .find(|s| !s.is_empty())
                    .unwrap_or("");
                // An imperfect reasoner on purpose: for single-turn queries it keeps only the
                // instruction's first content word, so stages 2 and 3 have something to fix.
                let reference = Self::after(&first, "Current description: ");
                let description = if reference.is_empty() {
                    words(instruction).first().cloned().unwrap_or_default()
                } else {
                    format!("{reference} {instruction}")
                };
                format!(
                    "Reasoning.\n```json\n{}\n```",
                    serde_json::json!({"edits": [["Modification", instruction]], "descriptions": [description]})
                )
            }
        });
    }

    /// Makes `fake` answer as the verifier.
    pub fn verifier(&self, fake: &FakeServer) {
        let w = self.clone();
        fake.set_chat_responder(move |req| {
            // From the image, or from the caption quoted in the text (caption-grounded mode).
            let text = Self::user_text(req);
            let d = match Self::image_url(req) {
                Some(u) => w.describe(&u, None).unwrap_or_default(),
                None => text.split('"').nth(1).unwrap_or("").to_string(),
            };
            let question = text.rsplit_once("No.").map_or(text.as_str(), |(_, q)| q);
            let word = words(question).last().cloned().unwrap_or_default();
            if words(&d).contains(&word) {
                "Yes".into()
            } else {
                "No".into()
            }
        });
    }

    /// Makes `fake` answer as the evaluator.
    pub fn evaluator(&self, fake: &FakeServer) {
        let w = self.clone();
        fake.set_chat_responder(move |req| {
            let prompt = Self::user_text(req);
            let instruction = prompt.split('"').nth(1).unwrap_or("").to_string();
            let d = match Self::image_url(req) {
                Some(u) => w.describe(&u, Some((845 + 400, 426))).unwrap_or_default(),
                None => Self::after(&prompt, "The candidate photo shows: ").to_string(),
            };
            let have = words(&d);
            if words(&instruction).iter().all(|x| have.contains(x)) {
                "ANSWER: Yes\nThe candidate matches.".into()
            } else {
                "ANSWER: No\nSomething is missing.".into()
            }
        });
    }
}
