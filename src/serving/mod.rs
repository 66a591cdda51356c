//! Everything that speaks HTTP to model servers, and nothing else does.
//!
//! - `wire`: request bodies and validated readers of answers;
//! - `dialect`: what differs between servers (error envelopes, context-length and image-loading
//!   wordings, finish reasons), read into one shape;
//! - `inline`: image data URLs written straight into the request bytes;
//! - `errors`: typed failures that keep role, endpoint, status and the server's message;
//! - `retry`: the pure backoff arithmetic;
//! - `endpoints`: replicas, per-endpoint in-flight limits, setting unwell replicas aside;
//! - `client`: `RoleClient`, the call loop (limits, rate, timeout, retries);
//! - `stats`: per-role counters;
//! - `models`: which checkpoint stands behind each served name (`/models`, or the servers file).
//!
//! Why plain reqwest and our own serde types rather than async-openai: see ARCHITECTURE.md
//! ("Serving"). In short, vLLM's integer error `code`, TGI's `finish_reason: "eos_token"`, image
//! embeddings and per-server `extra_body` fields do not fit async-openai's typed calls, and its
//! built-in retry honours `Retry-After` without a cap.

pub mod cache;
mod client;
pub mod dialect;
mod endpoints;
mod errors;
mod inline;
pub mod models;
mod retry;
pub mod server_metrics;
mod stats;
pub mod wire;

use std::collections::BTreeMap;
use std::path::Path;

pub use cache::{Cache, CacheMode};
pub use client::{CallMeta, Reply, RoleClient};
pub use endpoints::in_order;
pub use errors::{ErrorKind, HttpClass, ServingError};
pub use retry::{backoff_delay, parse_retry_after};
pub use stats::{RoleStats, StatsSnapshot};
pub use wire::{ChatAnswer, ChatRequest, EmbedInput, FinishReason, Message, Part, Speaker, Usage};

use crate::config::{ConfigError, Role, ServersConfig};

/// One client per configured role.
#[derive(Debug, Clone)]
pub struct Clients {
    by_role: BTreeMap<Role, RoleClient>,
    path: std::path::PathBuf,
}

impl Clients {
    /// Builds a client for every role in the servers file (reading API-key variables).
    pub fn new(servers: &ServersConfig, path: &Path) -> Result<Self, ConfigError> {
        let mut by_role = BTreeMap::new();
        for (role, server) in &servers.roles {
            by_role.insert(*role, RoleClient::new(*role, server, path)?);
        }
        Ok(Clients {
            by_role,
            path: path.to_path_buf(),
        })
    }

    /// The same clients reading and writing answers through `cache`.
    pub fn with_cache(&self, cache: std::sync::Arc<Cache>) -> Self {
        Clients {
            by_role: self
                .by_role
                .iter()
                .map(|(r, c)| (*r, c.with_cache(cache.clone())))
                .collect(),
            path: self.path.clone(),
        }
    }

    /// The client of `role`, or an error saying the servers file lacks it.
    pub fn get(&self, role: Role) -> Result<&RoleClient, ConfigError> {
        self.by_role.get(&role).ok_or_else(|| ConfigError::Invalid {
            path: self.path.clone(),
            key: format!("roles.{role}"),
            message: format!("this command needs the {role} role; add a [roles.{role}] table"),
        })
    }

    /// Every configured client.
    pub fn all(&self) -> impl Iterator<Item = &RoleClient> {
        self.by_role.values()
    }

    /// The request cache the clients share, if they use one.
    pub fn cache(&self) -> Option<&std::sync::Arc<Cache>> {
        self.by_role.values().find_map(RoleClient::cache)
    }
}
