//! What built an image database: the captioner (model, prompt text, sampling) or the captions
//! file, the embedder (model, request shape, normalisation, whether it embeds images) and the
//! image preprocessing. Its hash names the database folder, so changing any of them builds a new
//! database instead of silently reusing a stale one; `diff` says what differs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::RoleServer;

/// Where captions come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum CaptionSource {
    /// A captioner model.
    Model {
        /// Served model.
        model: String,
        /// The checkpoint behind it, when known (`serving::models`); absent when only the
        /// served name was known, so such databases keep the id they had.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
        /// blake3 of the caption prompt template(s).
        prompt: String,
        /// Sampling and extra body fields sent.
        request: Value,
        /// Longest image side sent to the captioner, if resized.
        image_max_side: Option<u32>,
    },
    /// A captions file given with `--captions`.
    File {
        /// blake3 of the file.
        blake3: String,
    },
    /// An original ImageScope image_db, imported.
    Imported {
        /// The `clip_version` folder it came from.
        clip_version: String,
    },
}

/// The embedder part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedderPrint {
    /// Served model.
    pub model: String,
    /// The checkpoint behind it, when known: another checkpoint under the same served name is
    /// another embedding space, so another database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Request shape.
    pub shape: String,
    /// Vectors normalised.
    pub normalize: bool,
    /// Image vectors present (false: caption-only database, searched with τ = 1).
    pub images: bool,
    /// Text requests ask for the tokenizer's start and end tokens (vLLM's messages shape since
    /// they were found missing; caption vectors built without them are another embedding).
    /// Absent, and so not hashed, where false: other databases keep their ids.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub text_special_tokens: bool,
    /// Longest image side sent to the embedder, if resized.
    pub image_max_side: Option<u32>,
}

/// Everything that determines a database's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Layout version of the database.
    pub version: u32,
    /// Captions.
    pub captions: CaptionSource,
    /// Vectors.
    pub embedder: EmbedderPrint,
    /// Image preprocessing before any request.
    pub preprocessing: String,
}

/// Current database layout version.
pub const VERSION: u32 = 1;

/// Preprocessing description recorded in fingerprints.
pub const PREPROCESSING: &str =
    "decode, EXIF orientation applied, RGB; re-encoded as JPEG q90 only when resized or rotated";

impl Fingerprint {
    /// The fingerprint of building with these servers and caption prompt.
    pub fn for_model(captioner: &RoleServer, prompt_hash: &str, embedder: &RoleServer) -> Self {
        let mut request = serde_json::to_value(&captioner.sampling).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut request {
            for (k, v) in &captioner.extra_body {
                m.insert(k.clone(), v.clone());
            }
        }
        Fingerprint {
            version: VERSION,
            captions: CaptionSource::Model {
                model: captioner.model.clone(),
                checkpoint: captioner.checkpoint.clone(),
                prompt: prompt_hash.to_string(),
                request,
                image_max_side: captioner.image_max_side,
            },
            embedder: EmbedderPrint::of(embedder),
            preprocessing: PREPROCESSING.into(),
        }
    }

    /// Short id: 16 hex digits of blake3 over the canonical JSON without the checkpoints. The
    /// folder is found from the servers file alone (a run need not reach the captioner); the
    /// checkpoints are compared when the database is opened or extended (`checkpoint_conflicts`).
    pub fn id(&self) -> String {
        let json = serde_json::to_string(&self.without_checkpoints()).unwrap_or_default();
        blake3::hash(json.as_bytes()).to_hex()[..16].to_string()
    }

    /// The same fingerprint with both checkpoints unknown.
    pub fn without_checkpoints(&self) -> Fingerprint {
        let mut f = self.clone();
        f.embedder.checkpoint = None;
        if let CaptionSource::Model { checkpoint, .. } = &mut f.captions {
            *checkpoint = None;
        }
        f
    }

    /// The two checkpoints it records, by their paths in the fingerprint (unknown: `None`).
    pub fn checkpoints(&self) -> [(&'static str, Option<&str>); 2] {
        let captioner = match &self.captions {
            CaptionSource::Model { checkpoint, .. } => checkpoint.as_deref(),
            _ => None,
        };
        [
            ("captions.checkpoint", captioner),
            ("embedder.checkpoint", self.embedder.checkpoint.as_deref()),
        ]
    }

    /// Checkpoints known on both sides that differ (`path: built → wanted`): the database was
    /// made by other weights under the same served name. A side that is unknown is listed in
    /// the second vector (it cannot be checked).
    pub fn checkpoint_conflicts(&self, wanted: &Fingerprint) -> (Vec<String>, Vec<String>) {
        let mut conflicts = Vec::new();
        let mut unchecked = Vec::new();
        for ((path, built), (_, want)) in self.checkpoints().into_iter().zip(wanted.checkpoints()) {
            match (built, want) {
                (Some(b), Some(w)) if b != w => conflicts.push(format!("{path}: {b:?} → {w:?}")),
                (None, Some(w)) => unchecked.push(format!(
                    "{path}: the database does not record which checkpoint built it; the server now reports {w:?}"
                )),
                _ => {}
            }
        }
        (conflicts, unchecked)
    }

    /// Dotted paths whose values differ between two fingerprints.
    pub fn diff(&self, other: &Fingerprint) -> Vec<String> {
        let a = serde_json::to_value(self).unwrap_or(Value::Null);
        let b = serde_json::to_value(other).unwrap_or(Value::Null);
        let mut out = Vec::new();
        crate::identity::diff_paths("", &a, &b, &mut out);
        out.into_iter()
            .map(|(path, a, b)| format!("{path}: {a} → {b}"))
            .collect()
    }
}

impl EmbedderPrint {
    /// The embedder part for a server.
    pub fn of(s: &RoleServer) -> Self {
        EmbedderPrint {
            model: s.model.clone(),
            checkpoint: s.checkpoint.clone(),
            shape: serde_json::to_value(s.embed_shape)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            normalize: s.normalize,
            images: s.embeds_images(),
            text_special_tokens: s.embed_shape == Some(crate::config::EmbedShape::VllmMessages),
            image_max_side: s.image_max_side,
        }
    }
}

#[cfg(test)]
mod special_tokens_tests {
    use super::*;

    #[test]
    fn only_the_vllm_messages_shape_carries_the_special_tokens_field() {
        let server = |shape: &str| -> RoleServer {
            let text = format!(
                "[roles.embedder]\nendpoints = [\"http://127.0.0.1:9/v1\"]\nmodel = \"m\"\napi = \"vllm\"\nembed_shape = \"{shape}\"\n"
            );
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("servers.toml");
            std::fs::write(&path, text).unwrap();
            crate::config::ServersConfig::load(&path).unwrap().roles[&crate::config::Role::Embedder]
                .clone()
        };
        let messages = serde_json::to_value(EmbedderPrint::of(&server("vllm-messages"))).unwrap();
        assert_eq!(messages["text_special_tokens"], true);
        // Other shapes serialise as before the field existed, so their databases keep their ids.
        for shape in ["infinity", "openai-input"] {
            let v = serde_json::to_value(EmbedderPrint::of(&server(shape))).unwrap();
            assert!(v.get("text_special_tokens").is_none(), "{shape}: {v}");
        }
        // A print written before the field reads back as false: a new id for vllm-messages.
        let mut old = messages.clone();
        old.as_object_mut().unwrap().remove("text_special_tokens");
        let old: EmbedderPrint = serde_json::from_value(old).unwrap();
        assert!(!old.text_special_tokens);
    }
}
