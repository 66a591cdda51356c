//! CIRR (rc2): `captions/cap.rc2.<split>.json` queries and `image_splits/split.rc2.<split>.json`
//! gallery (name → `./dev/<name>.png`). Splits `val` and `test1` (`test` is accepted for test1).
//! The instruction is the caption trimmed, "the same image" when blank (method.md §8.1).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    DatasetError, DatasetSpec, GalleryImage, ImageKey, Instruction, Query, check_unique_ids,
    find_file, read_json, records, resolve_record, split_is,
};

#[derive(Deserialize)]
struct Record {
    pairid: u64,
    reference: String,
    caption: String,
    target_hard: Option<String>,
    img_set: ImgSet,
}

#[derive(Deserialize)]
struct ImgSet {
    members: Vec<String>,
}

fn split(spec: &DatasetSpec) -> Result<&'static str, DatasetError> {
    split_is(
        spec,
        &["val", "test1"],
        &[("test", "test1"), ("valid", "val")],
    )
}

fn split_file(
    spec: &DatasetSpec,
) -> Result<(PathBuf, serde_json::Map<String, serde_json::Value>), DatasetError> {
    let s = split(spec)?;
    let path = find_file(
        &spec.root,
        "CIRR image split file",
        &[
            format!("image_splits/split.rc2.{s}.json"),
            format!("split.rc2.{s}.json"),
        ],
    )?;
    let map = read_json(&path)?;
    Ok((path, map))
}

/// Images live under the root (ImageScope's layout) or under `img_raw/` (the official one).
fn image_root(root: &Path) -> PathBuf {
    let raw = root.join("img_raw");
    if raw.is_dir() {
        raw
    } else {
        root.to_path_buf()
    }
}

pub(super) fn gallery(spec: &DatasetSpec) -> Result<Vec<GalleryImage>, DatasetError> {
    let (path, map) = split_file(spec)?;
    let root = image_root(&spec.root);
    map.into_iter()
        .enumerate()
        .map(|(index, (name, rel))| {
            let rel = rel.as_str().ok_or_else(|| DatasetError::Record {
                path: path.clone(),
                index,
                field: name.clone(),
                message: "the image path must be a string".into(),
            })?;
            Ok(GalleryImage {
                key: ImageKey(name.clone()),
                path: resolve_record(&root, rel, &path, index, &name)?,
            })
        })
        .collect()
}

pub(super) fn queries(spec: &DatasetSpec) -> Result<Vec<Query>, DatasetError> {
    let s = split(spec)?;
    let path = find_file(
        &spec.root,
        "CIRR captions file",
        &[
            format!("captions/cap.rc2.{s}.json"),
            format!("cap.rc2.{s}.json"),
        ],
    )?;
    let (_, split_map) = split_file(spec)?;
    let recs: Vec<Record> = records(&path, read_json(&path)?)?;
    let in_split = |index: usize, field: &str, key: &str| {
        if split_map.contains_key(key) {
            Ok(ImageKey(key.to_string()))
        } else {
            Err(DatasetError::Record {
                path: path.clone(),
                index,
                field: field.to_string(),
                message: format!("image {key:?} is not in the {s} image split"),
            })
        }
    };
    let mut out = Vec::with_capacity(recs.len());
    for (index, r) in recs.into_iter().enumerate() {
        let caption = r.caption.trim();
        let members = r
            .img_set
            .members
            .iter()
            .map(|m| in_split(index, "img_set.members", m))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Query {
            id: r.pairid.to_string(),
            reference: Some(in_split(index, "reference", &r.reference)?),
            instruction: Instruction::Text {
                text: if caption.is_empty() {
                    "the same image".into()
                } else {
                    caption.to_string()
                },
            },
            targets: match r.target_hard {
                Some(t) => vec![in_split(index, "target_hard", &t)?],
                None => vec![],
            },
            subset: Some(members),
            aspects: vec![],
            shared_concept: None,
        });
    }
    check_unique_ids(&path, &out)?;
    Ok(out)
}
