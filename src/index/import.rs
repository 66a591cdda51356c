//! Importing an original ImageScope `image_db/<dataset>/` folder (method.md §2.2):
//! `image_caption.json` plus `<clip_version>/image_embedding.npy`,
//! `image_caption_emebdding.npy` (the original's spelling) and `image_name_list.npy`.
//! Vectors are stored normalised (the original normalises them at query time); captions are
//! trimmed (the original keeps a leading space).
//!
//! `.npy` files are read by a small reader for the three dtypes those files use: `<f4`, `<f8` and
//! fixed-width unicode `<U{n}` (little-endian, C order).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::datasets::{GalleryImage, ImageKey};
use crate::roles::embedder;

use super::fingerprint::{CaptionSource, EmbedderPrint, Fingerprint, PREPROCESSING, VERSION};
use super::store::{Outcome, Store};
use super::{IndexError, STORE_FILE};

/// A parsed `.npy` array.
#[derive(Debug, Clone, PartialEq)]
pub enum Npy {
    /// Floating-point data with its shape.
    Float {
        /// Shape.
        shape: Vec<usize>,
        /// Row-major values.
        data: Vec<f32>,
    },
    /// Strings.
    Strings(Vec<String>),
}

fn bad(path: &Path, m: impl std::fmt::Display) -> IndexError {
    IndexError::Input(format!("{}: {m}", path.display()))
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Npy, IndexError> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    parse_npy(&bytes).map_err(|m| bad(path, m))
}

/// Parses `.npy` bytes.
pub fn parse_npy(b: &[u8]) -> Result<Npy, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = b
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated header")?;
    let field = |name: &str| -> Option<&str> {
        let i = header.find(&format!("'{name}'"))?;
        let rest = header[i + name.len() + 2..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\'')?.split('\'').next())
        .ok_or("no descr in header")?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('(')?.split(')').next())
        .ok_or("no shape in header")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_text:?}"))
        })
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape_text:?} holds more items than can be addressed"))?;
    // The data must hold `count` items of `item` bytes: checked, so no shape can overflow.
    let need = |item: usize| -> Result<usize, String> {
        count
            .checked_mul(item)
            .filter(|&n| n <= data_len(b, start + header_len))
            .ok_or_else(|| "data shorter than the shape says".to_string())
    };
    let data = &b[start + header_len..];
    match descr {
        "<f4" => {
            let n = need(4)?;
            let v = data[..n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok(Npy::Float { shape, data: v })
        }
        "<f8" => {
            let n = need(8)?;
            let v = data[..n]
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect();
            Ok(Npy::Float { shape, data: v })
        }
        d if d.starts_with("<U") => {
            let width: usize = d[2..]
                .parse()
                .ok()
                .filter(|&w| w > 0)
                .ok_or_else(|| format!("bad dtype {d} (expected <U1 or wider)"))?;
            let item = width
                .checked_mul(4)
                .ok_or_else(|| format!("bad dtype {d}"))?;
            let n = need(item)?;
            let strings = data[..n]
                .chunks_exact(width * 4)
                .map(|item| {
                    item.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .take_while(|&u| u != 0)
                        .filter_map(char::from_u32)
                        .collect()
                })
                .collect();
            Ok(Npy::Strings(strings))
        }
        other => Err(format!(
            "dtype {other} is not supported (expected <f4, <f8 or <U)"
        )),
    }
}

fn data_len(b: &[u8], from: usize) -> usize {
    b.len().saturating_sub(from)
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ImportReport {
    /// The new database folder.
    pub dir: PathBuf,
    /// Images imported.
    pub images: usize,
    /// Vector dimension.
    pub dimension: usize,
}

fn matrix(path: &Path, n: usize) -> Result<(usize, Vec<f32>), IndexError> {
    match read_npy(path)? {
        Npy::Float { shape, data } if shape.len() == 2 && shape[0] == n => Ok((shape[1], data)),
        Npy::Float { shape, .. } => Err(bad(path, format!("shape {shape:?}, expected ({n}, d)"))),
        Npy::Strings(_) => Err(bad(path, "holds strings, expected vectors")),
    }
}

/// One store outcome per pending image: its caption and unit vectors, or a failure for a zero
/// vector.
fn outcomes(
    pending: &[super::store::Pending],
    names: &[String],
    captions: &HashMap<String, String>,
    (images, caps): (&[f32], &[f32]),
    dim: usize,
) -> Vec<Outcome> {
    let row = |m: &[f32], i: usize| m[i * dim..(i + 1) * dim].to_vec();
    let position: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut batch = Vec::with_capacity(pending.len());
    for p in pending {
        let Some(&i) = position.get(p.key.as_str()) else {
            continue;
        };
        let caption = captions
            .get(p.key.as_str())
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        match (embedder::unit(row(images, i)), embedder::unit(row(caps, i))) {
            (Some(iv), Some(cv)) => batch.push(Outcome::Done {
                idx: p.idx,
                content_hash: String::new(),
                stamp: None,
                caption,
                image_vec: Some(iv),
                caption_vec: cv,
            }),
            _ => batch.push(Outcome::Failed {
                idx: p.idx,
                kind: super::store::FailureKind::Image,
                error: "zero vector in the imported embeddings".into(),
            }),
        }
    }
    batch
}

/// The `<clip_version>` folder to import: the one named, or the only one inside `source`.
fn version_dir(source: &Path, clip_version: Option<&str>) -> Result<PathBuf, IndexError> {
    Ok(match clip_version {
        Some(v) => source.join(v),
        None => {
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(source)
                .map_err(|e| bad(source, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("image_name_list.npy").is_file())
                .collect();
            dirs.sort();
            match dirs.len() {
                1 => dirs.remove(0),
                0 => return Err(bad(source, "no <clip_version>/image_name_list.npy inside")),
                _ => {
                    return Err(bad(
                        source,
                        "several CLIP versions inside; choose one with --clip-version",
                    ));
                }
            }
        }
    })
}

/// Imports `source` (an original `image_db/<dataset>` folder) into `image_db_root/<dataset>/`.
pub fn import(
    source: &Path,
    dataset: &str,
    clip_version: Option<&str>,
    embedder_model: &str,
    image_db_root: &Path,
) -> Result<ImportReport, IndexError> {
    let caption_path = source.join("image_caption.json");
    let text = std::fs::read_to_string(&caption_path)
        .map_err(|e| bad(&caption_path, format!("cannot read: {e}")))?;
    let captions: HashMap<String, String> = serde_json::from_str(&text).map_err(|e| {
        bad(
            &caption_path,
            format!("expected an object of key → caption: {e}"),
        )
    })?;
    let version_dir = version_dir(source, clip_version)?;
    let names = match read_npy(&version_dir.join("image_name_list.npy"))? {
        Npy::Strings(s) => s,
        Npy::Float { .. } => {
            return Err(bad(
                &version_dir,
                "image_name_list.npy holds numbers, expected names",
            ));
        }
    };
    let n = names.len();
    let (dim, images) = matrix(&version_dir.join("image_embedding.npy"), n)?;
    let (cdim, caps) = matrix(&version_dir.join("image_caption_emebdding.npy"), n)?;
    if dim != cdim {
        return Err(bad(
            &version_dir,
            format!("image vectors have {dim} dimensions, caption vectors {cdim}"),
        ));
    }
    let version = version_dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fp = Fingerprint {
        version: VERSION,
        captions: CaptionSource::Imported {
            clip_version: version,
        },
        embedder: EmbedderPrint {
            model: embedder_model.to_string(),
            checkpoint: None,
            shape: "imported".into(),
            normalize: true,
            images: true,
            text_special_tokens: false,
            image_max_side: None,
        },
        preprocessing: PREPROCESSING.into(),
    };
    let dir = super::db_dir(image_db_root, dataset, &fp);
    super::prepare_dir(&dir, &fp)?;
    let mut store = Store::open(&dir.join(STORE_FILE))?;
    let gallery: Vec<GalleryImage> = names
        .iter()
        .map(|k| GalleryImage {
            key: ImageKey(k.clone()),
            path: PathBuf::from(k),
        })
        .collect();
    store.register(&gallery)?;
    let pending = store.pending(true)?;
    let batch = outcomes(&pending, &names, &captions, (&images, &caps), dim);
    store.commit(&batch)?;
    super::rebuild_vectors(&dir, &store, Default::default(), None)?;
    Ok(ImportReport {
        dir,
        images: n,
        dimension: dim,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a version-1 `.npy` with the given descr, shape and raw data.
    pub fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    pub fn unicode(names: &[&str], width: usize) -> Vec<u8> {
        names
            .iter()
            .flat_map(|n| {
                let mut v: Vec<u8> = n.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
                v.resize(width * 4, 0);
                v
            })
            .collect()
    }

    #[test]
    fn odd_headers_are_errors_not_panics() {
        for (descr, shape) in [
            ("<U0", "(2,)"),
            ("<U", "(2,)"),
            ("<U99999999999999999999", "(1,)"),
            ("<U4611686018427387904", "(1,)"),
            ("<f4", "(18446744073709551615, 2)"),
            ("<f8", "(4294967296, 4294967296)"),
            ("<f4", "(3074457345618258603,)"),
            ("<i8", "(1,)"),
        ] {
            let bytes = npy_bytes(descr, shape, &[0u8; 16]);
            assert!(parse_npy(&bytes).is_err(), "{descr} {shape}");
        }
        assert!(parse_npy(b"\x93NUMPY\x01\x00\xff\xff").is_err());
    }

    #[test]
    fn reads_floats_and_unicode() {
        let f: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            parse_npy(&npy_bytes("<f4", "(2, 3)", &f)).unwrap(),
            Npy::Float {
                shape: vec![2, 3],
                data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
            }
        );
        let s = parse_npy(&npy_bytes(
            "<U12",
            "(2,)",
            &unicode(&["a.jpg", "ünï.jpg"], 12),
        ))
        .unwrap();
        assert_eq!(s, Npy::Strings(vec!["a.jpg".into(), "ünï.jpg".into()]));
        assert!(parse_npy(b"not numpy").is_err());
        assert!(parse_npy(&npy_bytes("<f4", "(2, 3)", &f[..8])).is_err());
        assert!(parse_npy(&npy_bytes("|O", "(2,)", &[])).is_err());
    }

    #[test]
    fn an_original_image_db_imports_and_searches() {
        let src = tempfile::tempdir().unwrap();
        let names = ["000000000001.jpg", "000000000002.jpg", "000000000003.jpg"];
        std::fs::write(
            src.path().join("image_caption.json"),
            r#"{"000000000001.jpg": " a red bus", "000000000002.jpg": " a cat", "000000000003.jpg": " a tree"}"#,
        )
        .unwrap();
        let v = src.path().join("CLIP-ViT-L-14");
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(
            v.join("image_name_list.npy"),
            npy_bytes("<U16", "(3,)", &unicode(&names, 16)),
        )
        .unwrap();
        // Un-normalised vectors, as the original stores them.
        let m: Vec<u8> = [3.0f32, 0.0, 0.0, 4.0, 0.0, 2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(
            v.join("image_embedding.npy"),
            npy_bytes("<f4", "(3, 2)", &m),
        )
        .unwrap();
        std::fs::write(
            v.join("image_caption_emebdding.npy"),
            npy_bytes("<f4", "(3, 2)", &m),
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = import(
            src.path(),
            "circo",
            None,
            "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
            root.path(),
        )
        .unwrap();
        assert_eq!((r.images, r.dimension), (3, 2));
        let db = super::super::ImageDb::open(&r.dir, Default::default()).unwrap();
        assert_eq!(db.len(), 3);
        assert_eq!(
            db.caption(&ImageKey::from("000000000001.jpg")),
            Some("a red bus")
        );
        let hit = db.search(&[0.0, 1.0], 0.15, 1, None).unwrap();
        assert_eq!(hit[0].0, ImageKey::from("000000000002.jpg"));
        assert!((hit[0].1 - 1.0).abs() < 1e-6, "vectors were normalised");
    }
}
