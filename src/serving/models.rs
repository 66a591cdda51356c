//! Which weights stand behind each role's served name: the servers file's `checkpoint` when it
//! names one, else what each endpoint's `GET /models` reports (vLLM: the entry's `root`, the model
//! folder or hub id it loaded, and `max_model_len`), else only the served name, with a warning.
//! Replicas of one role that report different checkpoints are an error: their answers cannot
//! share a cache or an index. An infinity server answers every model name with the one model it
//! serves, so for it the listed names are checked too: a served name it does not list is an error,
//! not a silent substitute.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{ApiFlavour, Role};
use crate::identity::{IdentitySource, ModelIdentity};

use super::{Clients, RoleClient};

/// Which weights a role serves cannot be told.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Replicas of one role disagree about their weights.
    #[error(
        "the {role} replicas serve {model:?} from different checkpoints ({listing}); their answers cannot be mixed. Serve the same weights on every replica, or, if they are the same weights at different paths, name them with `checkpoint = \"...\"` under [roles.{role}] in {path}"
    )]
    Disagree {
        /// The role.
        role: Role,
        /// The served name.
        model: String,
        /// `endpoint → checkpoint` pairs.
        listing: String,
        /// The servers file.
        path: String,
    },
    /// No endpoint of the role answered `/models`.
    #[error(
        "no {role} endpoint answered to say which checkpoint it serves as {model:?} ({tried}); start it (check with `imagescope doctor`), or name the weights with `checkpoint = \"...\"` under [roles.{role}] in {path}"
    )]
    Unreachable {
        /// The role.
        role: Role,
        /// The served name.
        model: String,
        /// What each endpoint said.
        tried: String,
        /// The servers file.
        path: String,
    },
    /// The server lists other models, not the configured one, and would answer with one of them
    /// anyway (infinity serving one model ignores the request's `model`).
    #[error(
        "{endpoint} does not serve {model:?} (it lists {listed}), yet an infinity server answers any model name with the one it serves, so the {role}'s vectors would come from another model; set `model` under [roles.{role}] in {path} to the served name (infinity's --served-model-name)"
    )]
    NotServed {
        /// The role.
        role: Role,
        /// The configured served name.
        model: String,
        /// The endpoint that lists other names.
        endpoint: String,
        /// The names it lists.
        listed: String,
        /// The servers file.
        path: String,
    },
}

/// The `id` of every entry of a `/models` page (empty when the page is not such a list).
pub fn served_names(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v.get("data")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What one `/models` entry says about `served`: its checkpoint (`root`) and context length.
pub fn reported(body: &str, served: &str) -> Option<(Option<String>, Option<u64>)> {
    let v: Value = serde_json::from_str(body).ok()?;
    let entry = v
        .get("data")?
        .as_array()?
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(served))?;
    let root = entry
        .get("root")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty())
        .map(str::to_string);
    let len = entry.get("max_model_len").and_then(Value::as_u64);
    Some((root, len))
}

/// Asks every endpoint of `client` which checkpoint it serves.
async fn identify_one(client: &RoleClient, path: &str) -> Result<ModelIdentity, IdentityError> {
    let s = client.server();
    let explicit = s.checkpoint.as_ref().map(|c| ModelIdentity {
        served: s.model.clone(),
        checkpoint: Some(c.clone()),
        source: IdentitySource::Explicit,
        max_model_len: None,
    });
    let infinity = s.api == ApiFlavour::Infinity;
    if let Some(id) = &explicit
        && !infinity
    {
        return Ok(id.clone());
    }
    // An endpoint that does not answer is asked again under the role's retry policy (a server
    // busy at start-up is not a missing one); one that answers, however, is taken at its word.
    let probes = (0..s.endpoints.len()).map(|i| async move {
        let mut attempt = 0;
        loop {
            match client.probe_get(i, "/models", false).await {
                Err(e) if attempt < s.retry.max_retries => {
                    attempt += 1;
                    let delay = super::backoff_delay(&s.retry, attempt - 1, None, fastrand::f64());
                    tracing::debug!(endpoint = %s.endpoints[i], error = %e, "model list: asking again");
                    tokio::time::sleep(delay).await;
                }
                answer => return answer,
            }
        }
    });
    let answers = futures::future::join_all(probes).await;
    if infinity {
        for (endpoint, answer) in s.endpoints.iter().zip(&answers) {
            if let Ok((200, body)) = answer {
                let names = served_names(body);
                if !names.is_empty() && !names.contains(&s.model) {
                    return Err(IdentityError::NotServed {
                        role: client.role(),
                        model: s.model.clone(),
                        endpoint: endpoint.clone(),
                        listed: names.join(", "),
                        path: path.to_string(),
                    });
                }
            }
        }
    }
    if let Some(id) = explicit {
        return Ok(id);
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut max_len = None;
    let mut silent = Vec::new();
    let mut answered = 0;
    for (endpoint, answer) in s.endpoints.iter().zip(answers) {
        match answer {
            Ok((200, body)) => {
                answered += 1;
                match reported(&body, &s.model) {
                    Some((Some(root), len)) => {
                        seen.push((endpoint.clone(), root));
                        max_len = max_len.or(len);
                    }
                    _ => silent.push(format!("{endpoint} lists no checkpoint for {:?}", s.model)),
                }
            }
            Ok((status, _)) => {
                answered += 1;
                silent.push(format!("{endpoint}/models answered HTTP {status}"));
            }
            Err(e) => silent.push(format!("{endpoint}/models: {e}")),
        }
    }
    let mut distinct: Vec<&String> = seen.iter().map(|(_, c)| c).collect();
    distinct.sort();
    distinct.dedup();
    let role = client.role();
    if seen.is_empty() && answered == 0 {
        // Nobody answered: which weights stand behind the name is unknown, not "none"; a run that
        // guessed would carry that guess in its identity and refuse every later resume.
        return Err(IdentityError::Unreachable {
            role,
            model: s.model.clone(),
            tried: silent.join("; "),
            path: path.to_string(),
        });
    }
    match distinct.as_slice() {
        [] => {
            tracing::warn!(
                "{role}: the server did not say which checkpoint it serves ({}); {:?} is known by its served name only, so another checkpoint under that name would reuse cached answers; name it with `checkpoint` in the servers file",
                silent.join("; "),
                s.model
            );
            Ok(ModelIdentity {
                served: s.model.clone(),
                checkpoint: None,
                source: IdentitySource::ServedName,
                max_model_len: None,
            })
        }
        [one] => {
            if !silent.is_empty() {
                tracing::warn!(
                    "{role}: {} of {} replicas did not report a checkpoint ({}); using {one:?} from the others",
                    silent.len(),
                    s.endpoints.len(),
                    silent.join("; ")
                );
            }
            Ok(ModelIdentity {
                served: s.model.clone(),
                checkpoint: Some((*one).clone()),
                source: IdentitySource::Server,
                max_model_len: max_len,
            })
        }
        _ => Err(IdentityError::Disagree {
            role,
            model: s.model.clone(),
            listing: seen
                .iter()
                .map(|(e, c)| format!("{e} → {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            path: path.to_string(),
        }),
    }
}

impl Clients {
    /// The model identity of every configured role, asked of the servers at once.
    pub async fn identify(&self) -> Result<BTreeMap<Role, ModelIdentity>, IdentityError> {
        let path = self.path.display().to_string();
        let all = futures::future::join_all(self.all().map(|c| identify_one(c, &path))).await;
        let mut out = BTreeMap::new();
        for (client, id) in self.all().zip(all) {
            out.insert(client.role(), id?);
        }
        Ok(out)
    }
}

/// Why the roles' weights could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A client could not be built (an API-key variable unset, say).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A role's servers did not say, or disagreed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The one way `run`, `index` and `search` learn which weights they talk to: every role of
/// `servers` is asked (`Clients::identify`) and the servers come back with each role's
/// `checkpoint` set to its identity, which the request cache keys and the image database's
/// fingerprint then carry.
pub async fn resolve(
    servers: &crate::config::ServersConfig,
    path: &std::path::Path,
) -> Result<(crate::config::ServersConfig, BTreeMap<Role, ModelIdentity>), ResolveError> {
    let models = Clients::new(servers, path)?.identify().await?;
    Ok((with_checkpoints(servers, &models), models))
}

/// The servers with each role's `checkpoint` set to its identity (where known), so the request
/// cache keys and the image database's fingerprint name the weights, not just the served name.
fn with_checkpoints(
    servers: &crate::config::ServersConfig,
    ids: &BTreeMap<Role, ModelIdentity>,
) -> crate::config::ServersConfig {
    let mut out = servers.clone();
    for (role, s) in &mut out.roles {
        if let Some(id) = ids.get(role) {
            s.checkpoint.clone_from(&id.checkpoint);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_root_and_context_length_from_a_recorded_vllm_page() {
        let page = r#"{"object":"list","data":[{"id":"clip","object":"model","owned_by":"vllm","root":"/srv/vllm-cpu/models/clip","parent":null,"max_model_len":77}]}"#;
        assert_eq!(
            reported(page, "clip"),
            Some((Some("/srv/vllm-cpu/models/clip".into()), Some(77)))
        );
        assert_eq!(reported(page, "other"), None);
        assert_eq!(
            reported(r#"{"data":[{"id":"clip"}]}"#, "clip"),
            Some((None, None))
        );
        assert_eq!(reported("not json", "clip"), None);
        assert_eq!(reported(r#"{"data":{"id":"clip"}}"#, "clip"), None);
    }
}
