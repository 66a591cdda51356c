//! What makes two runs "the same": the one owner of that guarantee.
//!
//! A run's **identity** is everything that can change an answer or a metric: the dataset, split
//! and the ids of the queries selected; the method parameters; the *content* of every prompt
//! template the run can use; each role's model identity (the checkpoint behind the served name),
//! request API, sampling, extra body fields and output schema; the image database's fingerprint
//! and the search settings. **Scheduling** is how the same work is spread over servers and time:
//! endpoints, `max_in_flight`, rate, burst, timeouts, retry policy, how images travel, the API-key
//! variable and `queries_in_flight`. A run records both; `--resume` refuses an identity change,
//! naming what differs, and accepts a scheduling change (recording it).
//!
//! The split is made by *removing* the scheduling keys from the serialised configuration, so a
//! setting added later is identity until someone decides otherwise: a resume is refused rather
//! than a run silently mixed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{PipelineParams, Role, RoleServer};

/// The keys of a `[roles.<role>]` table that only schedule work (never change an answer).
pub const ROLE_SCHEDULING_KEYS: &[&str] = &[
    "endpoints",
    "max_in_flight",
    "requests_per_second",
    "burst",
    "timeout_secs",
    "retry",
    "api_key_env",
    "image_transport",
    "image_uuids",
    "affinity",
    "metrics_urls",
];

/// The keys of the `[pipeline]` table that only schedule work.
pub const PIPELINE_SCHEDULING_KEYS: &[&str] = &["queries_in_flight"];

/// Where a model identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// The servers file names it (`checkpoint = "..."`); it wins over what servers report.
    Explicit,
    /// The server reported it (vLLM's `/v1/models` `root`).
    Server,
    /// Nobody said: only the configured served name is known.
    ServedName,
}

/// The weights behind a role's served name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The configured `model` (the served name sent in requests).
    pub served: String,
    /// The checkpoint, when known (explicit or reported).
    pub checkpoint: Option<String>,
    /// Where `checkpoint` came from.
    pub source: IdentitySource,
    /// The context length the server reported, when it did (recorded, not identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
}

/// The parts of a run's identity, serialised into `run.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunIdentity {
    /// Dataset name.
    pub dataset: String,
    /// Split.
    pub split: String,
    /// How many queries are selected, and blake3 of their ids in order.
    pub queries: QuerySelection,
    /// Method parameters, without scheduling.
    pub pipeline: Value,
    /// Template file (relative to the prompts folder) → blake3 of its text.
    pub prompts: BTreeMap<String, String>,
    /// Per role: the model identity and every answer-deciding setting.
    pub roles: BTreeMap<Role, Value>,
    /// The image database: its fingerprint id, the checkpoints that built it and a digest of
    /// what it holds (`index::store::Store::content_digest`).
    pub image_db: Value,
    /// Search settings (`[index]`): an approximate search can change a ranking.
    pub index: Value,
}

/// Which queries a run answers.
#[derive(Debug, Clone, Serialize)]
pub struct QuerySelection {
    /// Number of queries.
    pub count: usize,
    /// blake3 of the ids, each followed by a NUL byte, in dataset order.
    pub ids_blake3: String,
}

impl QuerySelection {
    /// The selection of these ids.
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        let mut h = blake3::Hasher::new();
        let mut count = 0;
        for id in ids {
            h.update(id.as_bytes());
            h.update(&[0]);
            count += 1;
        }
        QuerySelection {
            count,
            ids_blake3: h.finalize().to_hex().to_string(),
        }
    }
}

/// A serialised value split into (identity, scheduling) by removing `keys` from a JSON object.
fn split_keys(value: Value, keys: &[&str]) -> (Value, Value) {
    match value {
        Value::Object(mut m) => {
            let mut sched = Map::new();
            for k in keys {
                if let Some(v) = m.remove(*k) {
                    sched.insert((*k).to_string(), v);
                }
            }
            (Value::Object(m), Value::Object(sched))
        }
        other => (other, Value::Null),
    }
}

/// A role's identity (its settings without scheduling, with the model identity) and its
/// scheduling.
pub fn role_parts(server: &RoleServer, model: &ModelIdentity) -> (Value, Value) {
    let (mut identity, sched) = split_keys(
        serde_json::to_value(server).unwrap_or(Value::Null),
        ROLE_SCHEDULING_KEYS,
    );
    if let Value::Object(m) = &mut identity {
        // The checkpoint is what identifies the weights; the servers file's field is one source.
        m.remove("checkpoint");
        m.insert(
            "checkpoint".into(),
            model.checkpoint.clone().map_or(Value::Null, Value::String),
        );
    }
    (identity, sched)
}

/// The method parameters without scheduling, and the scheduling part.
pub fn pipeline_parts(params: &PipelineParams) -> (Value, Value) {
    split_keys(
        serde_json::to_value(params).unwrap_or(Value::Null),
        PIPELINE_SCHEDULING_KEYS,
    )
}

/// blake3 of a text, as hex (prompt files are identified by content).
pub fn content_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

impl RunIdentity {
    /// The identity as JSON and its hash (blake3 of the canonical JSON).
    pub fn to_json_and_hash(&self) -> (Value, String) {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        let hash = blake3::hash(v.to_string().as_bytes()).to_hex().to_string();
        (v, hash)
    }
}

/// What differs between a recorded identity (`old`) and the current one, in words a user can act
/// on: a prompt file reads "prompts/general/_reason_task.j2 changed since this run started".
pub fn differences(old: &Value, new: &Value) -> Vec<String> {
    let mut raw = Vec::new();
    diff_paths("", old, new, &mut raw);
    raw.into_iter()
        .map(|(path, a, b)| match path.strip_prefix("prompts.") {
            Some(file) => match (a, b) {
                (Value::Null, _) => format!("prompts/{file} was added since this run started"),
                (_, Value::Null) => format!("prompts/{file} was removed since this run started"),
                _ => format!("prompts/{file} changed since this run started"),
            },
            None => match (&a, &b) {
                (Value::Null, Value::Object(_)) => format!("{path}: added"),
                (Value::Object(_), Value::Null) => format!("{path}: removed"),
                _ => format!("{path}: {} → {}", short(&a), short(&b)),
            },
        })
        .collect()
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// Dotted paths whose values differ, with both values (`null` where one side lacks the key).
/// Prompt file names hold '/' and '.', so map keys are joined with '.' as they are.
pub fn diff_paths(path: &str, a: &Value, b: &Value, out: &mut Vec<(String, Value, Value)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_paths(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push((path.to_string(), a.clone(), b.clone())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_changed_prompt_is_named_by_its_file() {
        let old = json!({"prompts": {"general/_reason_task.j2": "aa", "general/x.j2": "bb"}, "roles": {"reasoner": {"checkpoint": "/m/a"}}});
        let new = json!({"prompts": {"general/_reason_task.j2": "cc", "general/y.j2": "dd"}, "roles": {"reasoner": {"checkpoint": "/m/b"}}});
        let d = differences(&old, &new);
        assert_eq!(
            d,
            [
                "prompts/general/_reason_task.j2 changed since this run started",
                "prompts/general/x.j2 was removed since this run started",
                "prompts/general/y.j2 was added since this run started",
                "roles.reasoner.checkpoint: \"/m/a\" → \"/m/b\"",
            ]
        );
        assert!(differences(&old, &old).is_empty());
    }

    #[test]
    fn scheduling_keys_leave_the_identity_and_new_keys_stay_in_it() {
        let server: RoleServer = toml::from_str(
            "endpoints = [\"http://a/v1\"]\nmodel = \"m\"\napi = \"vllm\"\nmax_in_flight = 3\ntimeout_secs = 5\n",
        )
        .unwrap();
        let model = ModelIdentity {
            served: "m".into(),
            checkpoint: Some("/w".into()),
            source: IdentitySource::Server,
            max_model_len: None,
        };
        let (id, sched) = role_parts(&server, &model);
        for k in ROLE_SCHEDULING_KEYS {
            assert!(id.get(k).is_none(), "{k} is scheduling");
        }
        assert_eq!(sched["max_in_flight"], 3);
        assert_eq!(id["model"], "m");
        assert_eq!(id["checkpoint"], "/w");
        assert!(id.get("sampling").is_some());
        let mut more = server.clone();
        more.endpoints.push("http://b/v1".into());
        more.max_in_flight = 9;
        assert_eq!(
            role_parts(&more, &model).0,
            id,
            "scheduling is not identity"
        );
        more.sampling.temperature = Some(0.7);
        assert_ne!(role_parts(&more, &model).0, id);
    }

    #[test]
    fn query_selection_depends_on_ids_and_order() {
        let a = QuerySelection::of(["1", "2"]);
        assert_eq!(a.count, 2);
        assert_ne!(a.ids_blake3, QuerySelection::of(["2", "1"]).ids_blake3);
        assert_ne!(a.ids_blake3, QuerySelection::of(["12"]).ids_blake3);
    }
}
