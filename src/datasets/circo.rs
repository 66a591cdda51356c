//! CIRCO: `annotations/<split>.json` (or `captions/`, ImageScope's name) with val and test queries;
//! the gallery is every image of `unlabeled2017/` (about 123k COCO images). Image keys are file
//! names, `{id:012}.jpg`. The instruction is `relative_caption`; `shared_concept` is kept aside.

use serde::Deserialize;

use super::{
    DatasetError, DatasetSpec, GalleryImage, ImageKey, Instruction, Query, check_unique_ids,
    find_file, read_json, records, split_is,
};

#[derive(Deserialize)]
struct Record {
    id: u64,
    reference_img_id: u64,
    relative_caption: String,
    shared_concept: Option<String>,
    target_img_id: Option<u64>,
    gt_img_ids: Option<Vec<u64>>,
    #[serde(default)]
    semantic_aspects: Vec<String>,
}

/// The gallery key of a COCO image id.
pub fn key_of(id: u64) -> ImageKey {
    ImageKey(format!("{id:012}.jpg"))
}

pub(super) fn queries(spec: &DatasetSpec) -> Result<Vec<Query>, DatasetError> {
    let s = split_is(spec, &["val", "test"], &[("valid", "val")])?;
    let path = find_file(
        &spec.root,
        "CIRCO annotation file",
        &[
            format!("annotations/{s}.json"),
            format!("captions/{s}.json"),
            format!("{s}.json"),
        ],
    )?;
    let recs: Vec<Record> = records(&path, read_json(&path)?)?;
    let mut out = Vec::with_capacity(recs.len());
    for (index, r) in recs.into_iter().enumerate() {
        if r.id as usize != index {
            return Err(DatasetError::Record {
                path: path.clone(),
                index,
                field: "id".into(),
                message: format!(
                    "id {} differs from its position {index}; CIRCO ids are array positions",
                    r.id
                ),
            });
        }
        let mut targets: Vec<ImageKey> = Vec::new();
        if let Some(t) = r.target_img_id {
            targets.push(key_of(t));
        }
        for g in r.gt_img_ids.unwrap_or_default() {
            let k = key_of(g);
            if !targets.contains(&k) {
                targets.push(k);
            }
        }
        out.push(Query {
            id: r.id.to_string(),
            reference: Some(key_of(r.reference_img_id)),
            instruction: Instruction::Text {
                text: r.relative_caption.trim().to_string(),
            },
            targets,
            subset: None,
            aspects: r.semantic_aspects,
            shared_concept: r.shared_concept,
        });
    }
    check_unique_ids(&path, &out)?;
    Ok(out)
}

pub(super) fn gallery(spec: &DatasetSpec) -> Result<Vec<GalleryImage>, DatasetError> {
    let dir = spec.root.join("unlabeled2017");
    if !dir.is_dir() {
        return Err(DatasetError::MissingFile {
            what: "CIRCO gallery folder (COCO 2017 unlabeled images)".into(),
            tried: vec![dir],
        });
    }
    let mut images = super::folder::gallery(&dir)?;
    for img in &mut images {
        // Keys are bare file names, as the annotations' ids map to them.
        if let Some(name) = img.path.file_name() {
            img.key = ImageKey(name.to_string_lossy().into_owned());
        }
    }
    images.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(images)
}
