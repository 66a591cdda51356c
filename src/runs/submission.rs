//! Test-server submission files for CIRR and CIRCO: writers, and validators that report the first
//! problem with the query it concerns.
//!
//! CIRR: `{"version": "rc2", "metric": "recall" | "recall_subset", "<pairid>": [top 50 | top 3]}`,
//! every test1 pair present, no list holding its reference, subset lists drawn from the members.
//! CIRCO: `{"<id>": [50 integer image ids]}` for every query id, no duplicates.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::datasets::{ImageKey, Query};

/// Which CIRR leaderboard a file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CirrMetric {
    /// Full gallery, top 50.
    Recall,
    /// Subset protocol, top 3.
    RecallSubset,
}

impl CirrMetric {
    /// The `metric` field value.
    pub fn as_str(self) -> &'static str {
        match self {
            CirrMetric::Recall => "recall",
            CirrMetric::RecallSubset => "recall_subset",
        }
    }
    /// Required list length.
    pub fn depth(self) -> usize {
        match self {
            CirrMetric::Recall => 50,
            CirrMetric::RecallSubset => 3,
        }
    }
}

/// The first problem found in a submission.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SubmissionProblem(pub String);

fn problem(msg: impl Into<String>) -> SubmissionProblem {
    SubmissionProblem(msg.into())
}

/// Builds a CIRR submission from each query's ranking: the reference is removed, subset rankings
/// are restricted to the members, and lists are cut to the metric's depth.
pub fn cirr_submission<'a>(
    rankings: impl IntoIterator<Item = (&'a Query, &'a [ImageKey])>,
    metric: CirrMetric,
) -> Value {
    let mut m = Map::new();
    m.insert("version".into(), json!("rc2"));
    m.insert("metric".into(), json!(metric.as_str()));
    for (q, ranking) in rankings {
        let members: Option<HashSet<&ImageKey>> = match metric {
            CirrMetric::RecallSubset => Some(q.subset.iter().flatten().collect()),
            CirrMetric::Recall => None,
        };
        let list: Vec<&str> = ranking
            .iter()
            .filter(|k| Some(*k) != q.reference.as_ref())
            .filter(|k| members.as_ref().is_none_or(|m| m.contains(k)))
            .take(metric.depth())
            .map(ImageKey::as_str)
            .collect();
        m.insert(q.id.clone(), json!(list));
    }
    Value::Object(m)
}

/// Builds a CIRCO submission: query id → the top 50 as integer image ids.
pub fn circo_submission<'a>(
    rankings: impl IntoIterator<Item = (&'a Query, &'a [ImageKey])>,
) -> Value {
    let mut m = Map::new();
    for (q, ranking) in rankings {
        let ids: Vec<u64> = ranking
            .iter()
            .filter_map(|k| k.as_str().trim_end_matches(".jpg").parse().ok())
            .take(50)
            .collect();
        m.insert(q.id.clone(), json!(ids));
    }
    Value::Object(m)
}

fn list_of<'v>(v: &'v Value, id: &str) -> Result<&'v Vec<Value>, SubmissionProblem> {
    v.as_array().ok_or_else(|| {
        problem(format!(
            "pair id {id}: the value must be a list of image names"
        ))
    })
}

/// The CIRR evaluation server takes files under 5 MB.
pub const CIRR_MAX_BYTES: usize = 5 * 1024 * 1024;

/// Whether `dataset` has an evaluation server whose submission format we can check.
pub fn has_test_server(dataset: crate::config::DatasetName) -> bool {
    use crate::config::DatasetName;
    matches!(
        dataset,
        DatasetName::Cirr | DatasetName::CirrSubset | DatasetName::Circo
    )
}

/// Checks a submission file's bytes for `dataset`'s server (see `has_test_server`): its size
/// (CIRR), that it is JSON, and every rule of `check_cirr` / `check_circo`. Returns what it is.
pub fn check_file(
    dataset: crate::config::DatasetName,
    bytes: &[u8],
    queries: &[Query],
) -> Result<String, SubmissionProblem> {
    use crate::config::DatasetName;
    if matches!(dataset, DatasetName::Cirr | DatasetName::CirrSubset)
        && bytes.len() >= CIRR_MAX_BYTES
    {
        return Err(SubmissionProblem(format!(
            "the file is {} bytes; the CIRR server takes files under 5 MB",
            bytes.len()
        )));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| SubmissionProblem(format!("not valid JSON: {e}")))?;
    match dataset {
        DatasetName::Cirr | DatasetName::CirrSubset => {
            check_cirr(&value, queries).map(|m| format!("CIRR {} submission", m.as_str()))
        }
        DatasetName::Circo => check_circo(&value, queries).map(|()| "CIRCO submission".into()),
        other => Err(SubmissionProblem(format!(
            "{other} has no test server; check-submission takes cirr, cirr-subset or circo"
        ))),
    }
}

/// Checks a CIRR test submission against the split's queries; returns its metric.
pub fn check_cirr(value: &Value, queries: &[Query]) -> Result<CirrMetric, SubmissionProblem> {
    let obj = value
        .as_object()
        .ok_or_else(|| problem("the file must be one JSON object"))?;
    match obj.get("version").and_then(Value::as_str) {
        Some("rc2") => {}
        other => {
            return Err(problem(format!(
                "\"version\" must be \"rc2\", found {other:?}"
            )));
        }
    }
    let metric = match obj.get("metric").and_then(Value::as_str) {
        Some("recall") => CirrMetric::Recall,
        Some("recall_subset") => CirrMetric::RecallSubset,
        other => {
            return Err(problem(format!(
                "\"metric\" must be \"recall\" or \"recall_subset\", found {other:?}"
            )));
        }
    };
    let ids: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    if let Some(extra) = obj
        .keys()
        .find(|k| *k != "version" && *k != "metric" && !ids.contains(k.as_str()))
    {
        return Err(problem(format!(
            "pair id {extra} is not a query of this split"
        )));
    }
    for q in queries {
        let id = q.id.as_str();
        let list = list_of(
            obj.get(id).ok_or_else(|| {
                problem(format!("pair id {id} is missing; every query needs a list"))
            })?,
            id,
        )?;
        if list.len() != metric.depth() {
            return Err(problem(format!(
                "pair id {id}: {} names, {} needs exactly {}",
                list.len(),
                metric.as_str(),
                metric.depth()
            )));
        }
        let members: HashSet<&str> = q.subset.iter().flatten().map(ImageKey::as_str).collect();
        let mut seen = HashSet::new();
        for item in list {
            let name = item.as_str().ok_or_else(|| {
                problem(format!("pair id {id}: {item} is not an image name string"))
            })?;
            if !seen.insert(name) {
                return Err(problem(format!("pair id {id}: {name} is listed twice")));
            }
            if q.reference.as_ref().is_some_and(|r| r.as_str() == name) {
                return Err(problem(format!(
                    "pair id {id}: the list holds the query's reference image {name}; remove it"
                )));
            }
            if metric == CirrMetric::RecallSubset && !members.contains(name) {
                return Err(problem(format!(
                    "pair id {id}: {name} is not one of the query's img_set members"
                )));
            }
        }
    }
    Ok(metric)
}

/// Checks a CIRCO test submission against the split's queries.
pub fn check_circo(value: &Value, queries: &[Query]) -> Result<(), SubmissionProblem> {
    let obj = value
        .as_object()
        .ok_or_else(|| problem("the file must be one JSON object"))?;
    let ids: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    if let Some(extra) = obj.keys().find(|k| !ids.contains(k.as_str())) {
        return Err(problem(format!(
            "query id {extra} is not a query of this split"
        )));
    }
    for q in queries {
        let id = q.id.as_str();
        let list = obj
            .get(id)
            .and_then(Value::as_array)
            .ok_or_else(|| problem(format!("query id {id} is missing or not a list")))?;
        if list.len() != 50 {
            return Err(problem(format!(
                "query id {id}: {} ids, CIRCO needs exactly 50",
                list.len()
            )));
        }
        let mut seen = HashSet::new();
        for item in list {
            let n = match item {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim_end_matches(".jpg").parse().ok(),
                _ => None,
            }
            .ok_or_else(|| problem(format!("query id {id}: {item} is not an image id")))?;
            if !seen.insert(n) {
                return Err(problem(format!(
                    "query id {id}: image id {n} is listed twice"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::Instruction;

    fn query(id: &str, reference: &str, members: &[&str]) -> Query {
        Query {
            id: id.into(),
            reference: Some(ImageKey::from(reference)),
            instruction: Instruction::Text { text: "x".into() },
            targets: vec![],
            subset: Some(members.iter().map(|m| ImageKey::from(*m)).collect()),
            aspects: vec![],
            shared_concept: None,
        }
    }

    #[test]
    fn written_cirr_files_pass_the_checker() {
        let members = ["r", "m1", "m2", "m3", "m4", "m5"];
        let q = query("7", "r", &members);
        let mut ranking: Vec<ImageKey> = vec![ImageKey::from("r"), ImageKey::from("m3")];
        ranking.extend((0..60).map(|i| ImageKey(format!("g{i}"))));
        ranking.extend(["m1", "m2", "m4", "m5"].map(ImageKey::from));
        let full = cirr_submission([(&q, ranking.as_slice())], CirrMetric::Recall);
        assert_eq!(full["7"].as_array().unwrap().len(), 50);
        assert_eq!(full["7"][0], "m3", "the reference is removed");
        assert_eq!(
            check_cirr(&full, std::slice::from_ref(&q)),
            Ok(CirrMetric::Recall)
        );
        let subset = cirr_submission([(&q, ranking.as_slice())], CirrMetric::RecallSubset);
        assert_eq!(subset["7"], json!(["m3", "m1", "m2"]));
        assert_eq!(
            check_cirr(&subset, std::slice::from_ref(&q)),
            Ok(CirrMetric::RecallSubset)
        );
    }

    #[test]
    fn subset_list_outside_members_is_named() {
        let q = query("7", "r", &["r", "a", "b", "c", "d", "e"]);
        let bad = json!({"version": "rc2", "metric": "recall_subset", "7": ["a", "b", "zzz"]});
        let err = check_cirr(&bad, &[q]).unwrap_err().to_string();
        assert!(err.contains("pair id 7") && err.contains("zzz"), "{err}");
    }

    #[test]
    fn written_circo_files_pass_the_checker() {
        let q = query("0", "000000000001.jpg", &[]);
        let ranking: Vec<ImageKey> = (2..60).map(|i| ImageKey(format!("{i:012}.jpg"))).collect();
        let v = circo_submission([(&q, ranking.as_slice())]);
        assert_eq!(v["0"][0], 2);
        assert_eq!(check_circo(&v, &[q]), Ok(()));
    }
}
