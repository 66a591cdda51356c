//! A user's own folder as a gallery: every JPEG, PNG or WebP file below it, recursively, keyed by
//! its path relative to the folder (with `/` separators), in sorted order. Symbolic links are not
//! followed, so a gallery cannot reach outside its folder.
//!
//! A folder may carry its own benchmark in `queries.json`: a list of
//! `{"id", "instruction", "reference"?, "targets"?}` with image keys as above (text queries have
//! no reference; composed ones do).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{DatasetError, GalleryImage, ImageKey, Instruction, Query};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: String,
    instruction: String,
    reference: Option<String>,
    #[serde(default)]
    targets: Vec<String>,
}

/// The queries of a folder benchmark (`<folder>/queries.json`).
pub(super) fn queries(root: &Path) -> Result<Vec<Query>, DatasetError> {
    let path = root.join("queries.json");
    if !path.is_file() {
        return Err(DatasetError::Unsupported(format!(
            "{} has no queries.json; a folder gallery is searched with `imagescope search`, or give it a queries.json to run it as a benchmark",
            root.display()
        )));
    }
    let known: std::collections::HashSet<ImageKey> =
        gallery(root)?.into_iter().map(|g| g.key).collect();
    let recs: Vec<Record> = super::records(&path, super::read_json(&path)?)?;
    let mut out = Vec::with_capacity(recs.len());
    for (index, r) in recs.into_iter().enumerate() {
        let check = |field: &str, key: String| {
            let key = ImageKey(key);
            if known.contains(&key) {
                Ok(key)
            } else {
                Err(DatasetError::Record {
                    path: path.clone(),
                    index,
                    field: field.into(),
                    message: format!("{key} is not an image of the folder"),
                })
            }
        };
        out.push(Query {
            id: r.id,
            reference: r.reference.map(|k| check("reference", k)).transpose()?,
            instruction: Instruction::Text {
                text: r.instruction.trim().to_string(),
            },
            targets: r
                .targets
                .into_iter()
                .map(|k| check("targets", k))
                .collect::<Result<_, _>>()?,
            subset: None,
            aspects: vec![],
            shared_concept: None,
        });
    }
    super::check_unique_ids(&path, &out)?;
    Ok(out)
}

const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Every image file below `dir`, sorted by relative path. Symbolic links are followed when they
/// lead to a file or folder inside `dir`; one that leads outside it (or cannot be resolved) is an
/// error naming the link, and a folder reached twice (a link loop) is walked once.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io = |path: &Path, source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let root = dir.canonicalize().map_err(|e| io(dir, e))?;
    let mut seen: HashSet<PathBuf> = HashSet::from([root.clone()]);
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| io(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io(&d, e))?;
            let path = entry.path();
            let mut ty = entry.file_type().map_err(|e| io(&path, e))?;
            let mut real = None;
            if ty.is_symlink() {
                let target = path.canonicalize().map_err(|e| io(&path, e))?;
                if !target.starts_with(&root) {
                    return Err(DatasetError::Format {
                        path: path.clone(),
                        message: format!(
                            "a symbolic link to {}, outside the dataset folder {}; copy the files in, or use a dataset folder that contains them",
                            target.display(),
                            root.display()
                        ),
                    });
                }
                ty = std::fs::metadata(&target)
                    .map_err(|e| io(&path, e))?
                    .file_type();
                real = Some(target);
            }
            if ty.is_dir() {
                let canonical = match real {
                    Some(t) => t,
                    None => path.canonicalize().map_err(|e| io(&path, e))?,
                };
                if seen.insert(canonical) {
                    stack.push(path);
                }
            } else if ty.is_file()
                && path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(super) fn gallery(dir: &Path) -> Result<Vec<GalleryImage>, DatasetError> {
    Ok(list_images(dir)?
        .into_iter()
        .map(|path| GalleryImage {
            key: ImageKey::under(dir, &path)
                .unwrap_or_else(|| ImageKey(path.to_string_lossy().into_owned())),
            path,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_are_followed_once_and_links_outside_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/cat.png"), b"x").unwrap();
        // A link back to the root (a loop) and a link to a file inside.
        std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("a/cat.png"), root.join("alias.png")).unwrap();
        let found = list_images(&root).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["a/cat.png", "alias.png"]);

        std::fs::write(dir.path().join("secret.png"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.png"), root.join("out.png")).unwrap();
        let err = list_images(&root).unwrap_err().to_string();
        assert!(
            err.contains("out.png") && err.contains("outside the dataset folder"),
            "{err}"
        );
    }
}
