//! Prompt templates as files: one strict minijinja environment loaded eagerly from a prompts
//! folder (`prompts/` by default, or the experiment's `prompts = ...`).
//!
//! Layout: `<family>/<prompt>.user.j2` and optionally `<family>/<prompt>.system.j2`, where family is
//! `general` (CIRR, CIRCO, Flickr30K, MSCOCO), `fashioniq-dress`, `fashioniq-shirt`,
//! `fashioniq-toptee` or `visdial`, and prompt is `caption`, `reason`, `propositions`, `verify`,
//! `evaluate`, `reask`, `verify_caption` or `evaluate_caption` (the last two for verifiers and
//! evaluators configured with `grounding = "caption"`). A family without a file uses `general/`'s. Templates may include shared
//! pieces (files starting with `_`). Undefined variables are errors, and every file is compiled at
//! load, so a broken template fails before the first request. Each rendering carries the hash of
//! the template texts it used, for cache keys and run records.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::config::DatasetName;

/// A set of prompt templates shared by datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// CIRR, CIRCO, Flickr30K, MSCOCO and user folders.
    General,
    /// FashionIQ dresses.
    FashioniqDress,
    /// FashionIQ shirts.
    FashioniqShirt,
    /// FashionIQ tops and tees.
    FashioniqToptee,
    /// VisDial dialogues.
    Visdial,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 5] = [
        Family::General,
        Family::FashioniqDress,
        Family::FashioniqShirt,
        Family::FashioniqToptee,
        Family::Visdial,
    ];

    /// The family a dataset uses.
    pub fn for_dataset(d: DatasetName) -> Family {
        match d {
            DatasetName::FashioniqDress => Family::FashioniqDress,
            DatasetName::FashioniqShirt => Family::FashioniqShirt,
            DatasetName::FashioniqToptee => Family::FashioniqToptee,
            DatasetName::Visdial => Family::Visdial,
            _ => Family::General,
        }
    }

    /// Folder name under the prompts directory.
    pub fn dir(self) -> &'static str {
        match self {
            Family::General => "general",
            Family::FashioniqDress => "fashioniq-dress",
            Family::FashioniqShirt => "fashioniq-shirt",
            Family::FashioniqToptee => "fashioniq-toptee",
            Family::Visdial => "visdial",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir())
    }
}

/// Which prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptKind {
    /// Gallery captioning.
    Caption,
    /// Stage 1: edits and target descriptions.
    Reason,
    /// Stage 2a: yes/no propositions.
    Propositions,
    /// Stage 2b: one question about a candidate.
    Verify,
    /// Stage 3: accept or reject a (reference, candidate) pair.
    Evaluate,
    /// Follow-up after an unusable answer.
    Reask,
    /// Stage 2b from a caption instead of pixels.
    VerifyCaption,
    /// Stage 3 from captions instead of pixels.
    EvaluateCaption,
}

impl PromptKind {
    /// Every prompt.
    pub const ALL: [PromptKind; 8] = [
        PromptKind::Caption,
        PromptKind::Reason,
        PromptKind::Propositions,
        PromptKind::Verify,
        PromptKind::Evaluate,
        PromptKind::Reask,
        PromptKind::VerifyCaption,
        PromptKind::EvaluateCaption,
    ];

    /// File stem.
    pub fn stem(self) -> &'static str {
        match self {
            PromptKind::Caption => "caption",
            PromptKind::Reason => "reason",
            PromptKind::Propositions => "propositions",
            PromptKind::Verify => "verify",
            PromptKind::Evaluate => "evaluate",
            PromptKind::Reask => "reask",
            PromptKind::VerifyCaption => "verify_caption",
            PromptKind::EvaluateCaption => "evaluate_caption",
        }
    }
}

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// System part, when the template has one.
    pub system: Option<String>,
    /// User part.
    pub user: String,
    /// Names of the template files used (after family fallback).
    pub templates: Vec<String>,
}

/// A template problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The prompts folder or a file could not be read.
    #[error("cannot read prompts at {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// A template failed to compile or render (undefined variable, syntax...).
    #[error("prompt template {name}: {message}")]
    Template {
        /// Template name (`family/prompt.part.j2`).
        name: String,
        /// minijinja's message, with line.
        message: String,
    },
    /// Neither the family nor `general/` has the template.
    #[error(
        "no template for {kind:?} in {dir}/{family}/ or {dir}/general/ (expected {stem}.user.j2)"
    )]
    Missing {
        /// Prompts folder.
        dir: String,
        /// Family.
        family: Family,
        /// Prompt.
        kind: PromptKind,
        /// File stem.
        stem: &'static str,
    },
}

fn template_error(name: &str, e: &minijinja::Error) -> PromptError {
    let mut message = e.to_string();
    if let Some(line) = e.line() {
        message.push_str(&format!(" (line {line})"));
    }
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        message.push_str(&format!(": {cause}"));
        src = cause.source();
    }
    PromptError::Template {
        name: name.to_string(),
        message,
    }
}

/// All templates of a prompts folder, compiled.
#[derive(Debug)]
pub struct PromptSet {
    env: Environment<'static>,
    dir: PathBuf,
    files: BTreeMap<String, String>,
}

impl PromptSet {
    /// Loads and compiles every `*.j2` file under `dir`.
    pub fn load(dir: &Path) -> Result<Self, PromptError> {
        let mut files = BTreeMap::new();
        collect(dir, dir, &mut files)?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, text) in &files {
            env.add_template_owned(name.clone(), text.clone())
                .map_err(|e| template_error(name, &e))?;
        }
        Ok(PromptSet {
            env,
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// The prompts shipped in this repository's `prompts/` folder.
    pub fn bundled_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts")
    }

    /// Every template file, name → text (for copying into run folders).
    pub fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    /// The folder the templates came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn resolve(&self, family: Family, kind: PromptKind, part: &str) -> Option<String> {
        [family.dir(), "general"]
            .iter()
            .map(|f| format!("{f}/{}.{part}.j2", kind.stem()))
            .find(|n| self.files.contains_key(n))
    }

    /// Renders a prompt's system (optional) and user parts with `ctx`.
    pub fn render(
        &self,
        family: Family,
        kind: PromptKind,
        ctx: &impl Serialize,
    ) -> Result<Rendered, PromptError> {
        let user_name = self
            .resolve(family, kind, "user")
            .ok_or_else(|| PromptError::Missing {
                dir: self.dir.display().to_string(),
                family,
                kind,
                stem: kind.stem(),
            })?;
        let render = |name: &str| -> Result<String, PromptError> {
            let t = self
                .env
                .get_template(name)
                .map_err(|e| template_error(name, &e))?;
            t.render(minijinja::value::Serde(ctx))
                .map(|s| s.trim().to_string())
                .map_err(|e| template_error(name, &e))
        };
        let system_name = self.resolve(family, kind, "system");
        let system = system_name.as_deref().map(render).transpose()?;
        let user = render(&user_name)?;
        let mut templates = vec![user_name];
        templates.extend(system_name);
        Ok(Rendered {
            system,
            user,
            templates,
        })
    }

    /// The files a rendering of `names` can read: the names and, transitively, every file of
    /// the set that their texts name in a string literal (`{% include "general/_x.j2" %}`). A
    /// template that includes, imports or extends a computed name could read any `_` piece, so
    /// then every `_` file is counted.
    pub fn referenced(&self, names: &[String]) -> std::collections::BTreeSet<String> {
        let dynamic = regex::Regex::new(r#"\{%-?\s*(include|import|from|extends)\s+[^"'\s]"#).ok();
        let literal = regex::Regex::new(r#""([^"\n]+)"|'([^'\n]+)'"#).ok();
        let mut seen = std::collections::BTreeSet::new();
        let mut todo: Vec<String> = names.to_vec();
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            let Some(text) = self.files.get(&n) else {
                continue;
            };
            if dynamic.as_ref().is_none_or(|d| d.is_match(text)) {
                todo.extend(self.files.keys().filter(|k| is_piece(k)).cloned());
            }
            for c in literal.iter().flat_map(|l| l.captures_iter(text)) {
                if let Some(m) = c.get(1).or_else(|| c.get(2))
                    && self.files.contains_key(m.as_str())
                {
                    todo.push(m.as_str().to_string());
                }
            }
        }
        seen
    }

    /// blake3 of the names and texts of the files a rendering of `names` reads (`referenced`),
    /// for the image database's fingerprint: editing a reasoning template does not change the
    /// caption prompt's hash.
    pub fn fingerprint_of(&self, names: &[String]) -> String {
        let mut h = blake3::Hasher::new();
        for n in self.referenced(names) {
            h.update(n.as_bytes());
            h.update(&[0]);
            h.update(self.files.get(&n).map_or(&[][..], |t| t.as_bytes()));
            h.update(&[0]);
        }
        h.finalize().to_hex()[..16].to_string()
    }
}

/// A shared piece (`_name.j2`), included by other templates.
pub fn is_piece(name: &str) -> bool {
    name.rsplit('/').next().is_some_and(|b| b.starts_with('_'))
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<(), PromptError> {
    collect_from(root, dir, out, &mut Vec::new())
}

/// `collect` with the canonical folders being walked, so a symlink that leads back into one of
/// them (a loop) is an error instead of an endless descent.
fn collect_from(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, String>,
    walking: &mut Vec<PathBuf>,
) -> Result<(), PromptError> {
    let io = |path: &Path, source| PromptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let canonical = dir.canonicalize().map_err(|e| io(dir, e))?;
    if walking.contains(&canonical) {
        return Err(io(
            dir,
            std::io::Error::other(
                "a symbolic link leads back into a folder that contains it (a loop); remove the link",
            ),
        ));
    }
    walking.push(canonical);
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        if path.is_dir() {
            collect_from(root, &path, out, walking)?;
        } else if path.extension().is_some_and(|e| e == "j2") {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.insert(name, text);
        }
    }
    walking.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> PromptSet {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        PromptSet::load(dir.path()).unwrap()
    }

    #[test]
    fn a_fingerprint_covers_the_pieces_a_template_includes_and_no_others() {
        let files = |task: &str, caption: &str| {
            set(&[
                ("general/caption.user.j2", caption),
                ("general/_caption_style.j2", "Be exact."),
                (
                    "general/reason.user.j2",
                    "{% include \"general/_reason_task.j2\" %}",
                ),
                ("general/_reason_task.j2", task),
            ])
        };
        let caption = vec!["general/caption.user.j2".to_string()];
        let reason = vec!["general/reason.user.j2".to_string()];
        let a = files("Find it.", "Describe.");
        assert!(a.referenced(&reason).contains("general/_reason_task.j2"));
        assert!(!a.referenced(&caption).contains("general/_reason_task.j2"));
        let edited = files("Find it, briefly.", "Describe.");
        assert_eq!(a.fingerprint_of(&caption), edited.fingerprint_of(&caption));
        assert_ne!(a.fingerprint_of(&reason), edited.fingerprint_of(&reason));
        let with_piece = files("Find it.", "Describe. {% include '_caption_style.j2' %}");
        assert!(
            !with_piece
                .referenced(&caption)
                .contains("general/_caption_style.j2")
        );
        let named = files(
            "Find it.",
            "Describe. {% include 'general/_caption_style.j2' %}",
        );
        assert!(
            named
                .referenced(&caption)
                .contains("general/_caption_style.j2")
        );
        let computed = files("Find it.", "{% include piece %}");
        assert!(
            computed
                .referenced(&caption)
                .contains("general/_reason_task.j2")
        );
    }

    #[test]
    fn a_symlink_loop_under_the_prompts_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("general")).unwrap();
        std::fs::write(dir.path().join("general/caption.user.j2"), "Describe.").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("general/again")).unwrap();
        let err = PromptSet::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("loop") && err.contains("again"), "{err}");
    }

    #[test]
    fn family_falls_back_to_general_and_undefined_is_an_error() {
        let s = set(&[
            ("general/verify.user.j2", "Q: {{ question }}"),
            ("visdial/verify.user.j2", "V: {{ question }}"),
        ]);
        let ok = s
            .render(
                Family::FashioniqDress,
                PromptKind::Verify,
                &serde_json::json!({"question": "x"}),
            )
            .unwrap();
        assert_eq!(ok.user, "Q: x");
        assert_eq!(ok.templates, vec!["general/verify.user.j2"]);
        let v = s
            .render(
                Family::Visdial,
                PromptKind::Verify,
                &serde_json::json!({"question": "x"}),
            )
            .unwrap();
        assert_eq!(v.user, "V: x");
        let err = s
            .render(Family::General, PromptKind::Verify, &serde_json::json!({}))
            .unwrap_err();
        assert!(err.to_string().contains("general/verify.user.j2"), "{err}");
        let missing = s
            .render(Family::General, PromptKind::Caption, &serde_json::json!({}))
            .unwrap_err();
        assert!(missing.to_string().contains("caption.user.j2"), "{missing}");
    }

    #[test]
    fn syntax_errors_fail_at_load_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("general")).unwrap();
        std::fs::write(dir.path().join("general/reason.user.j2"), "{% if %}").unwrap();
        let err = PromptSet::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("general/reason.user.j2"), "{err}");
    }
}
