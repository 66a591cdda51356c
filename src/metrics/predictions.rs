//! Prediction files: `{query_id: [ranked image keys]}` for every benchmark, the CIRR and CIRCO
//! test-server submission formats, and `{dialogue_id: {round: [ranked keys]}}` for VisDial.
//!
//! Image keys are normalised per benchmark so that every spelling the ecosystem uses compares
//! equal: CIRCO ids as integers, `"9761"` or `"000000009761.jpg"`; VisDial paths or basenames;
//! CIRR and FashionIQ names with or without an extension.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::DatasetName;
use crate::datasets::ImageKey;

/// The predicted ranking(s) of one query.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    /// One ranking.
    Ranking(Vec<ImageKey>),
    /// One ranking per dialogue round.
    Rounds(BTreeMap<usize, Vec<ImageKey>>),
    /// One ranking per dialogue round, reduced to what scoring reads (`Prediction::listed`):
    /// 2,064 dialogues × 11 rounds × 100 keys per stage need not stay in memory to be scored.
    RoundRanks(BTreeMap<usize, ListedRank>),
}

/// Where a dialogue's target is in one round's ranking, and how long that ranking is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedRank {
    /// 1-based rank of the target in the list, if there.
    pub rank: Option<usize>,
    /// Length of the list.
    pub depth: usize,
}

impl Prediction {
    /// A dialogue's per-round rankings reduced to the target's rank in each (`target`: the
    /// dialogue's primary target) and each list's length; scoring gives the same figures.
    /// Other predictions are returned as they are.
    pub fn listed(self, target: Option<&ImageKey>) -> Prediction {
        match self {
            Prediction::Rounds(m) => Prediction::RoundRanks(
                m.into_iter()
                    .map(|(round, list)| {
                        let rank = target
                            .and_then(|t| list.iter().position(|k| k == t))
                            .map(|i| i + 1);
                        let depth = list.len();
                        (round, ListedRank { rank, depth })
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}

/// A whole predictions file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Predictions {
    /// Query id → prediction.
    pub entries: BTreeMap<String, Prediction>,
    /// `metric` field of a CIRR submission, when present.
    pub cirr_metric: Option<String>,
    /// `version` field of a CIRR submission, when present.
    pub cirr_version: Option<String>,
    /// Dialogues: query id → round → the target's rank (from 1) in the whole gallery, where the
    /// run recorded it (`S1Record::gallery_rank`). BRI uses it for a target beyond the ranking;
    /// a predictions file has none, and its BRI is then measured at the ranking's depth.
    pub gallery_ranks: BTreeMap<String, BTreeMap<usize, usize>>,
}

/// A problem in a predictions file, naming the file and the query.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PredictionError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the query id where there is one.
    pub message: String,
}

/// Normalises one predicted image reference to the benchmark's gallery key.
pub fn normalize_key(dataset: DatasetName, v: &Value) -> Option<ImageKey> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if s.is_empty() {
        return None;
    }
    let key = match dataset {
        DatasetName::Circo => {
            let stem = s.rsplit('/').next().unwrap_or(&s);
            let stem = stem.strip_suffix(".jpg").unwrap_or(stem);
            let id: u64 = stem.parse().ok()?;
            format!("{id:012}.jpg")
        }
        DatasetName::Visdial => s.rsplit('/').next().unwrap_or(&s).to_string(),
        DatasetName::Cirr
        | DatasetName::CirrSubset
        | DatasetName::FashioniqDress
        | DatasetName::FashioniqShirt
        | DatasetName::FashioniqToptee => {
            let base = s.rsplit('/').next().unwrap_or(&s);
            base.strip_suffix(".png")
                .or_else(|| base.strip_suffix(".jpg"))
                .unwrap_or(base)
                .to_string()
        }
        DatasetName::Flickr30k | DatasetName::Mscoco | DatasetName::Folder => s,
    };
    Some(ImageKey(key))
}

fn ranking(
    dataset: DatasetName,
    v: &Value,
    path: &Path,
    id: &str,
) -> Result<Vec<ImageKey>, PredictionError> {
    let arr = v.as_array().ok_or_else(|| PredictionError {
        path: path.to_path_buf(),
        message: format!("query {id}: expected a list of image keys"),
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            normalize_key(dataset, x).ok_or_else(|| PredictionError {
                path: path.to_path_buf(),
                message: format!("query {id}: entry {i} ({x}) is not an image key of {dataset}"),
            })
        })
        .collect()
}

/// Parses a predictions value (already read from `path`).
pub fn parse(
    dataset: DatasetName,
    value: &Value,
    path: &Path,
) -> Result<Predictions, PredictionError> {
    let obj = value.as_object().ok_or_else(|| PredictionError {
        path: path.to_path_buf(),
        message: "expected a JSON object mapping query ids to ranked image keys".into(),
    })?;
    let mut out = Predictions::default();
    for (id, v) in obj {
        if matches!(dataset, DatasetName::Cirr | DatasetName::CirrSubset)
            && (id == "version" || id == "metric")
        {
            let s = v.as_str().map(str::to_string);
            if id == "version" {
                out.cirr_version = s;
            } else {
                out.cirr_metric = s;
            }
            continue;
        }
        let pred = match (dataset, v) {
            (DatasetName::Visdial, Value::Object(rounds)) => {
                let mut m = BTreeMap::new();
                for (r, list) in rounds {
                    let round: usize = r.parse().map_err(|_| PredictionError {
                        path: path.to_path_buf(),
                        message: format!("dialogue {id}: round {r:?} is not a number"),
                    })?;
                    m.insert(round, ranking(dataset, list, path, id)?);
                }
                Prediction::Rounds(m)
            }
            _ => Prediction::Ranking(ranking(dataset, v, path, id)?),
        };
        out.entries.insert(id.clone(), pred);
    }
    Ok(out)
}

/// Reads and parses a predictions file.
pub fn read(dataset: DatasetName, path: &Path) -> Result<Predictions, PredictionError> {
    let bytes = std::fs::read(path).map_err(|e| PredictionError {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| PredictionError {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })?;
    parse(dataset, &value, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_normalised_per_benchmark() {
        let k = |d, v: Value| normalize_key(d, &v).map(|k| k.0);
        assert_eq!(
            k(DatasetName::Circo, json!(9761)).as_deref(),
            Some("000000009761.jpg")
        );
        assert_eq!(
            k(DatasetName::Circo, json!("9761")).as_deref(),
            Some("000000009761.jpg")
        );
        assert_eq!(
            k(DatasetName::Circo, json!("000000009761.jpg")).as_deref(),
            Some("000000009761.jpg")
        );
        assert_eq!(k(DatasetName::Circo, json!("cat")), None);
        assert_eq!(
            k(
                DatasetName::Visdial,
                json!("unlabeled2017/000000000008.jpg")
            )
            .as_deref(),
            Some("000000000008.jpg")
        );
        assert_eq!(
            k(DatasetName::Cirr, json!("dev-1-0-img0.png")).as_deref(),
            Some("dev-1-0-img0")
        );
    }

    #[test]
    fn cirr_submission_fields_are_read_aside() {
        let p = parse(
            DatasetName::Cirr,
            &json!({"version": "rc2", "metric": "recall", "12063": ["a", "b"]}),
            Path::new("p.json"),
        )
        .unwrap();
        assert_eq!(p.cirr_metric.as_deref(), Some("recall"));
        assert_eq!(p.entries.len(), 1);
    }

    #[test]
    fn bad_entry_names_the_query() {
        let err = parse(
            DatasetName::Circo,
            &json!({"7": [1, {"x": 1}]}),
            Path::new("p.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("query 7"), "{err}");
    }
}
