//! FashionIQ (val): `captions/cap.<cat>.val.json` triplets and `image_splits/split.<cat>.val.json`
//! ASIN lists, one gallery per category; images at `images/<ASIN>.<ext>` (`png` by default, as
//! ImageScope and the Hugging Face copy; `jpg` for the original release). Query ids are record
//! positions. The instruction joins the two captions, each trimmed of ".", "?" and spaces, with
//! " and " (an empty caption is left out rather than leaving a dangling "and").

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    DatasetError, DatasetName, DatasetSpec, GalleryImage, ImageKey, Instruction, Query, find_file,
    read_json, records, resolve_record, split_is,
};

#[derive(Deserialize)]
struct Record {
    candidate: String,
    target: Option<String>,
    captions: Vec<String>,
}

fn category(spec: &DatasetSpec) -> &'static str {
    match spec.name {
        DatasetName::FashioniqShirt => "shirt",
        DatasetName::FashioniqToptee => "toptee",
        _ => "dress",
    }
}

fn split_list(spec: &DatasetSpec) -> Result<(PathBuf, Vec<String>), DatasetError> {
    split_is(spec, &["val"], &[("valid", "val")])?;
    let cat = category(spec);
    let path = find_file(
        &spec.root,
        &format!("FashionIQ {cat} image split"),
        &[
            format!("image_splits/split.{cat}.val.json"),
            format!("split.{cat}.val.json"),
        ],
    )?;
    let list = read_json(&path)?;
    Ok((path, list))
}

/// Joins the two relative captions as the original does, trimming ".", "?" and spaces.
pub fn join_captions(captions: &[String]) -> String {
    captions
        .iter()
        .map(|c| c.trim_matches(|ch: char| ch == '.' || ch == '?' || ch.is_whitespace()))
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join(" and ")
}

pub(super) fn gallery(spec: &DatasetSpec) -> Result<Vec<GalleryImage>, DatasetError> {
    let (path, list) = split_list(spec)?;
    let ext = spec.image_ext.as_deref().unwrap_or("png");
    list.into_iter()
        .enumerate()
        .map(|(index, asin)| {
            let file = resolve_record(
                &spec.root,
                &format!("images/{asin}.{ext}"),
                &path,
                index,
                "asin",
            )?;
            Ok(GalleryImage {
                key: ImageKey(asin),
                path: file,
            })
        })
        .collect()
}

pub(super) fn queries(spec: &DatasetSpec) -> Result<Vec<Query>, DatasetError> {
    let (_, list) = split_list(spec)?;
    let known: std::collections::HashSet<&str> = list.iter().map(String::as_str).collect();
    let cat = category(spec);
    let path = find_file(
        &spec.root,
        &format!("FashionIQ {cat} captions"),
        &[
            format!("captions/cap.{cat}.val.json"),
            format!("cap.{cat}.val.json"),
        ],
    )?;
    let recs: Vec<Record> = records(&path, read_json(&path)?)?;
    let check = |index: usize, field: &str, asin: &str| {
        if known.contains(asin) {
            Ok(ImageKey(asin.to_string()))
        } else {
            Err(DatasetError::Record {
                path: path.clone(),
                index,
                field: field.into(),
                message: format!("image {asin:?} is not in the {cat} val split"),
            })
        }
    };
    recs.into_iter()
        .enumerate()
        .map(|(index, r)| {
            if r.captions.is_empty() {
                return Err(DatasetError::Record {
                    path: path.clone(),
                    index,
                    field: "captions".into(),
                    message: "needs at least one caption".into(),
                });
            }
            Ok(Query {
                id: index.to_string(),
                reference: Some(check(index, "candidate", &r.candidate)?),
                instruction: Instruction::Text {
                    text: join_captions(&r.captions),
                },
                targets: match r.target {
                    Some(t) => vec![check(index, "target", &t)?],
                    None => vec![],
                },
                subset: None,
                aspects: vec![],
                shared_concept: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_join_like_the_original_without_dangling_and() {
        let c = |a: &str, b: &str| join_captions(&[a.to_string(), b.to_string()]);
        assert_eq!(
            c("is shiny and silver.", " fit and flare?"),
            "is shiny and silver and fit and flare"
        );
        assert_eq!(
            c("", "is grey with a design on the back"),
            "is grey with a design on the back"
        );
    }
}
