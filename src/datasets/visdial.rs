//! VisDial chat-based retrieval (ChatIR/PlugIR protocol): `Search_Space_val_50k.json` (50,000
//! relative paths, the gallery, keyed by basename) and `VisDial_v1.0_queries_val.json` (2,064
//! dialogues: a caption and ten "question? answer" turns). Query ids are dialogue positions.

use serde::Deserialize;

use super::{
    DatasetError, DatasetSpec, GalleryImage, ImageKey, Instruction, Query, find_file, read_json,
    records, resolve_record, split_is,
};

#[derive(Deserialize)]
struct Record {
    img: String,
    dialog: Vec<String>,
}

fn basename(rel: &str) -> String {
    rel.rsplit('/').next().unwrap_or(rel).to_string()
}

fn search_space(spec: &DatasetSpec) -> Result<(std::path::PathBuf, Vec<String>), DatasetError> {
    split_is(spec, &["val"], &[("valid", "val")])?;
    let path = find_file(
        &spec.root,
        "VisDial search space",
        &[
            "Search_Space_val_50k.json".into(),
            "Protocol/Search_Space_val_50k.json".into(),
            "ChatIR_Protocol/Search_Space_val_50k.json".into(),
        ],
    )?;
    let list = read_json(&path)?;
    Ok((path, list))
}

pub(super) fn gallery(spec: &DatasetSpec) -> Result<Vec<GalleryImage>, DatasetError> {
    let (path, list) = search_space(spec)?;
    list.iter()
        .enumerate()
        .map(|(index, rel)| {
            Ok(GalleryImage {
                key: ImageKey(basename(rel)),
                path: resolve_record(&spec.root, rel, &path, index, "path")?,
            })
        })
        .collect()
}

pub(super) fn queries(spec: &DatasetSpec) -> Result<Vec<Query>, DatasetError> {
    let (_, space) = search_space(spec)?;
    let known: std::collections::HashSet<String> = space.iter().map(|p| basename(p)).collect();
    let path = find_file(
        &spec.root,
        "VisDial dialogues",
        &[
            "VisDial_v1.0_queries_val.json".into(),
            "dialogues/VisDial_v1.0_queries_val.json".into(),
        ],
    )?;
    let recs: Vec<Record> = records(&path, read_json(&path)?)?;
    recs.into_iter()
        .enumerate()
        .map(|(index, r)| {
            let bad = |field: &str, message: String| DatasetError::Record {
                path: path.clone(),
                index,
                field: field.into(),
                message,
            };
            resolve_record(&spec.root, &r.img, &path, index, "img")?;
            let target = basename(&r.img);
            if !known.contains(&target) {
                return Err(bad("img", format!("{target:?} is not in the search space")));
            }
            let mut dialog = r.dialog.into_iter();
            let caption = dialog
                .next()
                .ok_or_else(|| bad("dialog", "is empty; needs a caption first".into()))?;
            Ok(Query {
                id: index.to_string(),
                reference: None,
                instruction: Instruction::Dialogue {
                    caption,
                    turns: dialog.collect(),
                },
                targets: vec![ImageKey(target)],
                subset: None,
                aspects: vec![],
                shared_concept: None,
            })
        })
        .collect()
}
