//! The GPU launch recipes agree with the servers file: `launch/up.sh --dry-run` prints one
//! `vllm serve` command per role, and each command's model, port and concurrency must be what
//! `configs/servers/vllm.toml` expects (and the docker compose file says the same).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use imagescope::config::{Role, ServersConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Cmd {
    gpus: String,
    model: String,
    flags: HashMap<String, String>,
}

fn dry_run() -> Vec<Cmd> {
    let out = std::process::Command::new("bash")
        .arg(root().join("launch/up.sh"))
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let words: Vec<String> = line
                .split_whitespace()
                .map(|w| w.replace('\\', ""))
                .collect();
            let gpus = words[0]
                .trim_start_matches("CUDA_VISIBLE_DEVICES=")
                .to_string();
            assert_eq!(
                (words[1].as_str(), words[2].as_str()),
                ("vllm", "serve"),
                "{line}"
            );
            let mut flags = HashMap::new();
            let mut i = 4;
            while i < words.len() {
                let value = words.get(i + 1).filter(|v| !v.starts_with("--")).cloned();
                flags.insert(words[i].clone(), value.clone().unwrap_or_default());
                i += if value.is_some() { 2 } else { 1 };
            }
            Cmd {
                gpus,
                model: words[3].clone(),
                flags,
            }
        })
        .collect()
}

#[test]
fn every_role_is_launched_as_the_servers_file_expects() {
    let cfg = ServersConfig::load(&root().join("configs/servers/vllm.toml")).unwrap();
    let cmds = dry_run();
    assert_eq!(cmds.len(), 5, "one command per role");
    let mut memory: BTreeMap<String, f64> = BTreeMap::new();
    for role in Role::ALL {
        let server = &cfg.roles[&role];
        let port = reqwest::Url::parse(&server.endpoints[0])
            .unwrap()
            .port()
            .unwrap()
            .to_string();
        let cmd = cmds
            .iter()
            .find(|c| c.flags.get("--port") == Some(&port))
            .unwrap_or_else(|| panic!("no command serves {role} on port {port}"));
        assert_eq!(cmd.model, server.model, "{role}: model");
        assert_eq!(
            cmd.flags["--max-num-seqs"],
            server.max_in_flight.to_string(),
            "{role}: server concurrency = client max_in_flight"
        );
        assert!(
            cmd.flags.contains_key("--generation-config"),
            "{role}: explicit sampling, not the model's defaults"
        );
        if role.sees_images() {
            assert_eq!(
                cmd.flags["--limit-mm-per-prompt"], "{\"image\":1}",
                "{role}: one image per prompt"
            );
        }
        for gpu in cmd.gpus.split(',') {
            *memory.entry(gpu.to_string()).or_default() += cmd.flags["--gpu-memory-utilization"]
                .parse::<f64>()
                .unwrap();
        }
        match role {
            Role::Reasoner => assert!(cmd.flags.contains_key("--enable-prefix-caching")),
            Role::Evaluator => assert!(cmd.flags.contains_key("--trust-remote-code")),
            Role::Embedder => assert_eq!(cmd.flags["--runner"], "pooling"),
            Role::Verifier | Role::Captioner => {
                assert!(
                    PathBuf::from(&cmd.flags["--chat-template"]).is_file(),
                    "{role}: chat template file"
                );
            }
        }
    }
    for (gpu, used) in memory {
        assert!(used <= 0.95, "GPU {gpu} is promised {used} of its memory");
    }
}

#[test]
fn the_compose_file_matches_the_scripts() {
    let compose = std::fs::read_to_string(root().join("launch/docker-compose.yml")).unwrap();
    for cmd in dry_run() {
        assert!(
            compose.contains(&format!("\"--model\", \"{}\"", cmd.model)),
            "{} missing",
            cmd.model
        );
        let seqs = format!("\"--max-num-seqs\", \"{}\"", cmd.flags["--max-num-seqs"]);
        let port = format!("\"--port\", \"{}\"", cmd.flags["--port"]);
        let service = compose
            .split("<<: *vllm")
            .find(|s| s.contains(&format!("\"--model\", \"{}\"", cmd.model)))
            .unwrap();
        assert!(
            service.contains(&seqs) && service.contains(&port),
            "{}: {seqs} {port}",
            cmd.model
        );
    }
}
