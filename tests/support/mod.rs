//! Shared helpers of the integration tests: the fake model server (a test double) and config
//! builders.
#![allow(dead_code)]

pub mod env;
pub mod fake_server;
pub mod world;

use std::path::Path;

use imagescope::config::{Role, ServersConfig};

/// A servers config with one role pointing at `endpoints`, with extra TOML lines for that role.
pub fn servers(role: Role, model: &str, endpoints: &[String], extra: &str) -> ServersConfig {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let shape = if role == Role::Embedder {
        "embed_shape = \"vllm-messages\"\n"
    } else {
        ""
    };
    let text = format!(
        "[roles.{role}]\nendpoints = [{}]\nmodel = {model:?}\napi = \"vllm\"\n{shape}{extra}\n",
        list.join(", ")
    );
    ServersConfig::parse(&text, Path::new("test-servers.toml")).unwrap()
}
