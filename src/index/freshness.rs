//! Photos that changed after they were indexed. Each done image records its file's content hash
//! and its stamp (size and modification time) when it was read. The quick check compares stamps;
//! a differing stamp sends the file to a hash comparison, which decides. `index` re-captions and
//! re-embeds a changed photo (and hashes once the rows of stores made before stamps existed);
//! `run` refuses to rank by vectors of photos that changed, naming them.

use std::path::PathBuf;

use crate::datasets::{GalleryImage, ImageKey};

use super::IndexError;
use super::store::{Stamp, Store};

/// What a check found.
#[derive(Debug, Default)]
pub struct Freshness {
    /// Rows whose photo changed or vanished: (row id, key, path).
    pub changed: Vec<(u64, ImageKey, PathBuf)>,
    /// Rows found unchanged by their hash whose stamp should be recorded.
    pub restamp: Vec<(u64, Stamp)>,
    /// Rows without a stamp that were not checked (the quick check only).
    pub unchecked: usize,
}

/// blake3 (hex) of a file's bytes, as `images::EncodedImage::hash` computes it.
fn file_hash(path: &std::path::Path) -> Option<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).ok()?).ok()?;
    Some(h.finalize().to_hex().to_string())
}

/// Checks the gallery's photos against what the store recorded. `thorough` also hashes the rows
/// that have no stamp (stores made before stamps were recorded); otherwise they are counted as
/// unchecked. A photo that cannot be read counts as changed.
pub fn check(
    store: &Store,
    gallery: &[GalleryImage],
    thorough: bool,
) -> Result<Freshness, IndexError> {
    let done = store.done_files()?;
    let mut out = Freshness::default();
    for g in gallery {
        let Some((idx, hash, recorded)) = done.get(&g.key) else {
            continue;
        };
        if hash.is_empty() {
            // Imported from the original's caches: no file content was ever recorded.
            out.unchecked += 1;
            continue;
        }
        let now = Stamp::of(&g.path);
        match (recorded, now) {
            (Some(r), Some(n)) if *r == n => continue,
            (None, _) if !thorough => {
                out.unchecked += 1;
                continue;
            }
            _ => {}
        }
        match file_hash(&g.path) {
            Some(h) if &h == hash => {
                if let Some(n) = now {
                    out.restamp.push((*idx, n));
                }
            }
            _ => out.changed.push((*idx, g.key.clone(), g.path.clone())),
        }
    }
    Ok(out)
}

/// Refuses a run whose gallery photos changed since they were indexed (quick check: stamps only,
/// then hashes of the photos whose stamp differs).
pub fn refuse_changed(
    store: &Store,
    gallery: &[GalleryImage],
    fix: &str,
) -> Result<(), IndexError> {
    let f = check(store, gallery, false)?;
    if f.changed.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = f
        .changed
        .iter()
        .take(5)
        .map(|(_, k, p)| format!("{k} ({})", p.display()))
        .collect();
    Err(IndexError::Input(format!(
        "{} gallery photo(s) changed since they were indexed, e.g. {}; stage 1 would rank them by the old pixels' vectors while stages 2 and 3 look at the new ones. {fix} (only the changed photos are captioned and embedded again)",
        f.changed.len(),
        shown.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::store::Outcome;

    #[test]
    fn a_replaced_file_is_found_and_an_untouched_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        let b = dir.path().join("b.png");
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"two").unwrap();
        let gallery = vec![
            GalleryImage {
                key: ImageKey::from("a"),
                path: a.clone(),
            },
            GalleryImage {
                key: ImageKey::from("b"),
                path: b.clone(),
            },
        ];
        let mut store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        store.register(&gallery).unwrap();
        let done = |idx: u64, path: &std::path::Path, stamp: bool| Outcome::Done {
            idx,
            content_hash: file_hash(path).unwrap(),
            stamp: stamp.then(|| Stamp::of(path).unwrap()),
            caption: "c".into(),
            image_vec: None,
            caption_vec: vec![1.0],
        };
        store
            .commit(&[done(1, &a, true), done(2, &b, false)])
            .unwrap();
        let f = check(&store, &gallery, false).unwrap();
        assert!(f.changed.is_empty());
        assert_eq!(
            f.unchecked, 1,
            "b has no stamp: only a thorough check hashes it"
        );
        let f = check(&store, &gallery, true).unwrap();
        assert!(f.changed.is_empty());
        assert_eq!(f.restamp.len(), 1);
        // Same size, new content: the stamp's time differs, the hash decides.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&a, b"uno").unwrap();
        let f = check(&store, &gallery, false).unwrap();
        assert_eq!(f.changed.len(), 1);
        assert_eq!(f.changed[0].1, ImageKey::from("a"));
        // Touched but identical: not changed, restamped.
        std::fs::write(&a, b"one").unwrap();
        let f = check(&store, &gallery, false).unwrap();
        assert!(f.changed.is_empty());
        assert_eq!(f.restamp.len(), 1);
        std::fs::remove_file(&a).unwrap();
        assert_eq!(check(&store, &gallery, false).unwrap().changed.len(), 1);
    }
}
