//! A user's own folder as a gallery: every JPEG, PNG or WebP file below it, recursively, keyed by
//! its path relative to the folder (with `/` separators), in sorted order. Symbolic links are not
//! followed, so a gallery cannot reach outside its folder.

use std::path::{Path, PathBuf};

use super::{DatasetError, GalleryImage, ImageKey};

const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Every image file below `dir`, sorted by relative path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| DatasetError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| DatasetError::Io {
                path: d.clone(),
                source,
            })?;
            let ty = entry.file_type().map_err(|source| DatasetError::Io {
                path: entry.path(),
                source,
            })?;
            let path = entry.path();
            if ty.is_dir() {
                stack.push(path);
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
        .map(|path| {
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            GalleryImage {
                key: ImageKey(key),
                path,
            }
        })
        .collect())
}
