//! Tests against vLLM's REAL router (vllm-router 0.1.17, `launch/router/`) in front of two real vLLM
//! 0.32 verifier replicas on CPU, as `configs/servers/vllm-cpu-router.toml` names them. Ignored by
//! default; CI starts them beside the vLLM CPU stack and runs them:
//!
//! ```bash
//! launch/vllm-cpu/up.sh && launch/vllm-cpu/up.sh verifier:8013
//! launch/router/setup.sh && launch/router/up.sh            # 8023 -> 8003, 8013 (consistent_hash)
//! cargo test --test router_live -- --ignored --test-threads 1 --skip killed
//! cargo test --test router_live killed -- --ignored        # last: it kills the replica on 8013
//! ```
//!
//! What they prove: a run goes through the router with every request answered, the router keeps
//! each image on one replica by imagescope's `X-Session-ID`, the run's server figures come from
//! both replicas (not the router's forwarded page), a replica killed mid-run loses no query, and
//! the router's own errors are classified like a server's. The vision models are random-weight
//! checkpoints: nothing here says anything about answer quality.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imagescope::config::Role;
use imagescope::serving::{ChatRequest, ErrorKind, HttpClass, Message, Part, RoleClient, Speaker};
use serde_json::Value;
use support::fake_server::FakeServer;

const NEEDS: &str = "needs the vLLM CPU stack, a second verifier on 8013 and the router on 8023: \
    launch/vllm-cpu/up.sh && launch/vllm-cpu/up.sh verifier:8013 && launch/router/setup.sh && launch/router/up.sh";
const ROUTER_METRICS: &str = "http://127.0.0.1:28023/metrics";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The experiment over the demo photos with the verifier behind the router, and its database,
/// built once for the tests of this file (they run one at a time, in one process).
struct Prepared {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn prepared() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let servers =
            std::fs::read_to_string(root().join("configs/servers/vllm-cpu-router.toml")).unwrap();
        std::fs::write(dir.path().join("servers.toml"), servers).unwrap();
        let config = support::demo_experiment(dir.path(), &dir.path().join("servers.toml"), "", "");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
            .args(["index", "--config", config.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{NEEDS}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Prepared { _dir: dir, config }
    })
}

/// Runs the demo's stages 1-2 through the router, request cache off.
fn run_s1_s2(name: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
        .args([
            "run",
            "--config",
            prepared().config.to_str().unwrap(),
            "--stages",
            "s1,s2",
            "--cache",
            "off",
            "--json",
            "--run-name",
            name,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

async fn report_of(child: tokio::process::Child) -> Value {
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The router's log (runs/servers/router-verifier.log) from byte `from` on.
fn router_log(from: u64) -> String {
    let text = std::fs::read(root().join("runs/servers/router-verifier.log")).expect(NEEDS);
    String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned()
}

fn router_log_len() -> u64 {
    std::fs::metadata(root().join("runs/servers/router-verifier.log"))
        .expect(NEEDS)
        .len()
}

/// `key='header:x-session-id:K' -> worker='W'` lines of the router's consistent_hash policy.
fn routed(log: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("key='header:x-session-id:").nth(1) else {
            continue;
        };
        let Some((key, rest)) = rest.split_once('\'') else {
            continue;
        };
        let Some(worker) = rest
            .split("worker='")
            .nth(1)
            .and_then(|w| w.split('\'').next())
        else {
            continue;
        };
        out.entry(key.to_string())
            .or_default()
            .insert(worker.to_string());
    }
    out
}

/// The router's verifier client, as the servers file names it (all HTTP goes through it).
fn router_client() -> RoleClient {
    let path = root().join("configs/servers/vllm-cpu-router.toml");
    let cfg = imagescope::config::ServersConfig::load(&path).unwrap();
    RoleClient::new(Role::Verifier, &cfg.roles[&Role::Verifier], &path).unwrap()
}

/// Requests the router has handed to its workers so far (its own Prometheus counter).
async fn processed() -> f64 {
    let (status, page) = router_client().get_url(ROUTER_METRICS).await.expect(NEEDS);
    assert_eq!(status, 200, "{page}");
    imagescope::serving::server_metrics::samples(&page)
        .filter(|s| s.name == "vllm_router_processed_requests_total")
        .map(|s| s.value)
        .sum()
}

fn assert_every_query_done(report: &Value) {
    assert_eq!(report["queries"], 13, "{report}");
    assert!(
        report["failed"].as_array().unwrap().is_empty(),
        "no query lost: {report}"
    );
    let v = &report["roles"]["verifier"];
    assert!(v["successes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        v["failures"], 0,
        "every verifier request answered in the end: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the vLLM CPU stack with the router: launch/router/up.sh"]
async fn a_run_through_the_router_keeps_each_image_on_one_replica_and_reads_both() {
    let (ok, out, err) = {
        let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagescope"))
            .current_dir(root())
            .args(["doctor", "--config", "configs/servers/vllm-cpu-router.toml"])
            .output()
            .await
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(ok, "{NEEDS}\n{out}\n{err}");
    prepared();
    let log_from = router_log_len();
    let report = report_of(run_s1_s2("through-router")).await;
    assert_every_query_done(&report);
    // The figures come from the two replicas the router lists, not from its forwarded page.
    let f = &report["servers"]["verifier"];
    assert_eq!(f["endpoints"], 1, "{f}");
    assert_eq!(f["router_workers"], 2, "{f}");
    assert_eq!(f["endpoints_read"], 2, "{f}");
    assert!(f["prompt_tokens"].as_u64().unwrap() > 0, "{f}");
    // Every image's requests went to one replica, and both replicas had images.
    let routed = routed(&router_log(log_from));
    assert!(routed.len() >= 4, "the router logged few keys: {routed:?}");
    for (key, workers) in &routed {
        assert_eq!(workers.len(), 1, "image {key} went to {workers:?}");
    }
    let used: BTreeSet<&String> = routed.values().flatten().collect();
    assert_eq!(used.len(), 2, "both replicas answered: {used:?}");
    println!(
        "through the router: {} images, verifier prompt tokens {}, prefix hits {}",
        routed.len(),
        f["prompt_tokens"],
        f["prefix_cache_hits"]
    );
}

/// A real router in front of a fake worker (a test double) that then goes away: the router's own
/// answers, as recorded in tests/fixtures/router/, and how the client reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs vllm-router installed: launch/router/setup.sh"]
async fn the_routers_own_errors_are_retryable_server_faults() {
    let home = std::env::var_os("IMAGESCOPE_ROUTER_HOME")
        .map_or_else(|| root().join(".router"), PathBuf::from);
    let bin = home.join("venv/bin/vllm-router");
    assert!(bin.exists(), "{NEEDS}");
    let worker = FakeServer::start("verifier", 4).await;
    let worker_root = worker.base_url().trim_end_matches("/v1").to_string();
    let port = 8024;
    let status = std::process::Command::new(root().join("launch/router/router.sh"))
        .args(["verifier", &port.to_string(), &worker_root])
        .env("IMAGESCOPE_ROUTER_BIN", &bin)
        .env("IMAGESCOPE_ROUTER_HOST", "127.0.0.1")
        .env("IMAGESCOPE_ROUTER_NAME", "router-test")
        .status()
        .unwrap();
    assert!(status.success());
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new(root().join("launch/down.sh"))
                .arg("router-test")
                .status();
        }
    }
    let _stop = Stop;
    let base = format!("http://127.0.0.1:{port}");
    let cfg = support::servers(
        Role::Verifier,
        "verifier",
        &[format!("{base}/v1")],
        "affinity = true",
    );
    let mut server = cfg.roles[&Role::Verifier].clone();
    server.retry.max_retries = 0;
    let client = RoleClient::new(Role::Verifier, &server, Path::new("test.toml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get_url(&format!("{base}/list_workers"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the router did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let req = ChatRequest {
        messages: vec![Message {
            speaker: Speaker::User,
            parts: vec![Part::Text("is it a cat?".into())],
        }],
        max_tokens: Some(4),
        ..Default::default()
    };
    let ask = || client.chat(&req);
    let ok = ask().await.expect("answered through the router");
    assert_eq!(ok.value.content.trim(), "yes");

    worker.stop().await;
    let mut seen = Vec::new();
    for _ in 0..12 {
        let e = ask().await.unwrap_err();
        let ErrorKind::Http {
            status,
            class,
            message,
            ..
        } = &e.kind
        else {
            panic!("{e}")
        };
        assert_eq!(*class, HttpClass::Server, "{e}");
        assert!(e.kind.may_change(true) && e.kind.is_endpoint_fault(), "{e}");
        seen.push((*status, message.clone()));
        if *status == 503 {
            assert!(e.to_string().contains("no healthy worker"), "{e}");
            break;
        }
        assert!(
            message.starts_with("Request failed: error sending request"),
            "{e}"
        );
        assert!(e.to_string().contains("could not reach the worker"), "{e}");
    }
    assert_eq!(
        seen.last().map(|s| s.1.as_str()),
        Some("No available workers (all circuits open or unhealthy)"),
        "the circuit opens after 3 failures: {seen:?}"
    );
    let (status, body) = client.get_url(&format!("{base}/v1/models")).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(body, "No workers are currently available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the vLLM CPU stack with the router; kills the replica on 8013: run it last"]
async fn a_replica_killed_mid_run_loses_no_query() {
    prepared();
    let log_from = router_log_len();
    let before = processed().await;
    let child = run_s1_s2("router-replica-killed");
    // Kill the replica on 8013 (server and engine) once the router has handed out 20 requests.
    let deadline = Instant::now() + Duration::from_secs(300);
    while processed().await < before + 20.0 {
        assert!(
            Instant::now() < deadline,
            "the run sent nothing through the router"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = std::fs::read_to_string(root().join("runs/servers/verifier-8013.pid"))
        .expect(NEEDS)
        .trim()
        .to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .unwrap();
    let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    pids.push(pid);
    for p in &pids {
        let _ = std::process::Command::new("kill").args(["-9", p]).status();
    }
    let killed_at = processed().await - before;
    let report = report_of(child).await;
    assert_every_query_done(&report);
    let log = router_log(log_from);
    let failed_sends = log
        .lines()
        .filter(|l| l.contains("Failed to send") && l.contains("127.0.0.1:8013"))
        .count();
    let v = &report["roles"]["verifier"];
    println!(
        "killed 8013 after {killed_at} routed requests; the router failed {failed_sends} sends to it; \
         verifier attempts {}, retries {}, successes {}",
        v["attempts"], v["retries"], v["successes"]
    );
    // The kill landed mid-run: the router tried the dead replica, and still nothing was lost.
    assert!(failed_sends > 0, "no request met the dead replica:\n{log}");
}
