//! Benchmarks as one query model: every loader turns its annotation files into `Query` values and
//! a gallery of `GalleryImage`s, whatever the task (text-to-image, composed, dialogue).
//!
//! One file per benchmark (`cirr`, `circo`, `fashioniq`, `text_to_image` for Flickr30K and MSCOCO,
//! `visdial`, `folder`). Annotation files are untrusted input: a malformed record is an error that
//! names the file, the record index and the field; an image path that would leave the dataset root
//! is refused. Nothing here panics on data.

mod circo;
mod cirr;
mod fashioniq;
mod folder;
mod text_to_image;
mod visdial;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::config::DatasetName;
pub use folder::list_images;

/// The key of a gallery image: `dev-244-0-img0` (CIRR), an ASIN (FashionIQ), `000000123456.jpg`
/// (CIRCO, VisDial), a file name (Flickr30K, MSCOCO) or a relative path (folder).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageKey(pub String);

impl ImageKey {
    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of a file inside a folder dataset: its path relative to `root`, components joined
    /// by `/` on every platform. `None` when `path` is not under `root`.
    pub fn under(root: &std::path::Path, path: &std::path::Path) -> Option<ImageKey> {
        let rel = path.strip_prefix(root).ok()?;
        Some(ImageKey(
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/"),
        ))
    }
}

impl fmt::Display for ImageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ImageKey {
    fn from(s: &str) -> Self {
        ImageKey(s.to_string())
    }
}

/// What the user asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Instruction {
    /// A caption of the target (text-to-image) or a modification of the reference (composed).
    Text {
        /// The text.
        text: String,
    },
    /// A dialogue: an initial caption, then "question? answer" turns.
    Dialogue {
        /// The initial caption (round 0).
        caption: String,
        /// Turns 1..n.
        turns: Vec<String>,
    },
}

/// One query of a benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Id as the benchmark's submission files write it (CIRR pairid, CIRCO id, ...).
    pub id: String,
    /// Reference image, for composed retrieval.
    pub reference: Option<ImageKey>,
    /// The instruction.
    pub instruction: Instruction,
    /// Ground truth, primary target first; empty on test splits.
    pub targets: Vec<ImageKey>,
    /// Candidate subset (CIRR `img_set.members`), when the protocol has one.
    pub subset: Option<Vec<ImageKey>>,
    /// Annotated semantic aspects (CIRCO val).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aspects: Vec<String>,
    /// Extra context some prompts may use (CIRCO `shared_concept`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_concept: Option<String>,
}

/// One image of a gallery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GalleryImage {
    /// Key.
    pub key: ImageKey,
    /// File path (inside the dataset root).
    pub path: PathBuf,
}

/// Where and what to load.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    /// Benchmark.
    pub name: DatasetName,
    /// Dataset root.
    pub root: PathBuf,
    /// Split.
    pub split: String,
    /// FashionIQ image extension (default `png`).
    pub image_ext: Option<String>,
}

/// A loading problem; always names the file and, for a record, its index and field.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The dataset root does not exist.
    #[error("dataset folder {path} does not exist; {hint}")]
    MissingRoot {
        /// The root.
        path: PathBuf,
        /// How to fix it.
        hint: String,
    },
    /// None of the places an annotation file may live holds it.
    #[error("{what} not found; looked for {}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingFile {
        /// What file.
        what: String,
        /// Paths tried.
        tried: Vec<PathBuf>,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid JSON or does not have the expected top-level shape.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// One record is malformed.
    #[error("{path}: record {index}: field `{field}`: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Zero-based record index (CSV: data row index).
        index: usize,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The split is not one this benchmark has.
    #[error("{dataset} has no split {split:?}; use one of: {allowed}")]
    UnknownSplit {
        /// Benchmark.
        dataset: DatasetName,
        /// Requested split.
        split: String,
        /// Allowed splits.
        allowed: String,
    },
    /// The operation needs something this dataset does not provide.
    #[error("{0}")]
    Unsupported(String),
}

/// Loads the queries of a benchmark split.
pub fn load_queries(spec: &DatasetSpec) -> Result<Vec<Query>, DatasetError> {
    check_root(spec)?;
    let queries = match spec.name {
        DatasetName::Cirr | DatasetName::CirrSubset => cirr::queries(spec)?,
        DatasetName::Circo => circo::queries(spec)?,
        DatasetName::FashioniqDress
        | DatasetName::FashioniqShirt
        | DatasetName::FashioniqToptee => fashioniq::queries(spec)?,
        DatasetName::Flickr30k | DatasetName::Mscoco => text_to_image::queries(spec)?,
        DatasetName::Visdial => visdial::queries(spec)?,
        DatasetName::Folder => folder::queries(&spec.root)?,
    };
    Ok(queries)
}

/// Loads the gallery of a benchmark split (for CIRCO and folders: lists the image folder).
pub fn load_gallery(spec: &DatasetSpec) -> Result<Vec<GalleryImage>, DatasetError> {
    check_root(spec)?;
    match spec.name {
        DatasetName::Cirr | DatasetName::CirrSubset => cirr::gallery(spec),
        DatasetName::Circo => circo::gallery(spec),
        DatasetName::FashioniqDress
        | DatasetName::FashioniqShirt
        | DatasetName::FashioniqToptee => fashioniq::gallery(spec),
        DatasetName::Flickr30k | DatasetName::Mscoco => text_to_image::gallery(spec),
        DatasetName::Visdial => visdial::gallery(spec),
        DatasetName::Folder => folder::gallery(&spec.root),
    }
}

fn check_root(spec: &DatasetSpec) -> Result<(), DatasetError> {
    if spec.root.is_dir() {
        return Ok(());
    }
    let folder = match spec.name {
        DatasetName::Folder => "your image folder",
        other => other.conventional_folder(),
    };
    Err(DatasetError::MissingRoot {
        path: spec.root.clone(),
        hint: format!(
            "put {} there (conventionally data/{folder}), or say where it is: `root` under [dataset] in the experiment file (run, index), `--data` (score, check-submission)",
            spec.name
        ),
    })
}

/// Checks that `split` is one of `allowed` (first = canonical), mapping aliases like `test`→`test1`.
pub(crate) fn split_is<'a>(
    spec: &DatasetSpec,
    allowed: &[&'a str],
    aliases: &[(&str, &'a str)],
) -> Result<&'a str, DatasetError> {
    if let Some(s) = allowed.iter().find(|s| **s == spec.split) {
        return Ok(s);
    }
    if let Some((_, s)) = aliases.iter().find(|(a, _)| *a == spec.split) {
        return Ok(s);
    }
    Err(DatasetError::UnknownSplit {
        dataset: spec.name,
        split: spec.split.clone(),
        allowed: allowed.join(", "),
    })
}

/// The first existing path among `candidates` (relative to `root`).
pub(crate) fn find_file(
    root: &Path,
    what: &str,
    candidates: &[String],
) -> Result<PathBuf, DatasetError> {
    let tried: Vec<PathBuf> = candidates.iter().map(|c| root.join(c)).collect();
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| DatasetError::MissingFile {
            what: what.to_string(),
            tried,
        })
}

/// Reads and parses a JSON file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| DatasetError::Format {
        path: path.to_path_buf(),
        message: format!("not the expected JSON: {e}"),
    })
}

/// Converts the records of a JSON array one by one, so an error names its index and field.
pub(crate) fn records<T: serde::de::DeserializeOwned>(
    path: &Path,
    values: Vec<serde_json::Value>,
) -> Result<Vec<T>, DatasetError> {
    values
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            serde_path_to_error::deserialize(v).map_err(|e| {
                // The path to the value that failed (`img_set.members[2]`); a missing field is
                // reported at its parent, so the record itself ("." ) is named then, and the
                // message names the field.
                let at = e.path().to_string();
                DatasetError::Record {
                    path: path.to_path_buf(),
                    index,
                    field: if at == "." { "(record)".into() } else { at },
                    message: e.into_inner().to_string(),
                }
            })
        })
        .collect()
}

/// Joins a relative path from an annotation file onto `root`, refusing anything that would leave
/// it (absolute paths, `..` beyond the root, drive prefixes).
pub fn resolve_inside(root: &Path, relative: &str) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(relative).components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        return None;
    }
    let mut out = root.to_path_buf();
    out.extend(parts);
    Some(out)
}

/// As `resolve_inside`, as a record error when the path escapes.
pub(crate) fn resolve_record(
    root: &Path,
    relative: &str,
    file: &Path,
    index: usize,
    field: &str,
) -> Result<PathBuf, DatasetError> {
    resolve_inside(root, relative).ok_or_else(|| DatasetError::Record {
        path: file.to_path_buf(),
        index,
        field: field.to_string(),
        message: format!(
            "image path {relative:?} leaves the dataset root {}; refused",
            root.display()
        ),
    })
}

/// Refuses duplicate query ids, naming the file and the id.
pub(crate) fn check_unique_ids(path: &Path, queries: &[Query]) -> Result<(), DatasetError> {
    let mut seen = std::collections::HashSet::with_capacity(queries.len());
    for (index, q) in queries.iter().enumerate() {
        if !seen.insert(q.id.as_str()) {
            return Err(DatasetError::Record {
                path: path.to_path_buf(),
                index,
                field: "id".into(),
                message: format!("query id {} appears twice; ids must be unique", q.id),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new("/data/CIRR");
        assert_eq!(
            resolve_inside(root, "./dev/a.png").unwrap(),
            Path::new("/data/CIRR/dev/a.png")
        );
        assert_eq!(
            resolve_inside(root, "dev/../test1/b.png").unwrap(),
            Path::new("/data/CIRR/test1/b.png")
        );
        assert_eq!(resolve_inside(root, "../../etc/passwd"), None);
        assert_eq!(resolve_inside(root, "/etc/passwd"), None);
        assert_eq!(resolve_inside(root, "dev/../../x"), None);
        assert_eq!(resolve_inside(root, "."), None);
    }
}
