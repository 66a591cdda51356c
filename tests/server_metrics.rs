//! What the model servers report of their own work: the `/metrics` reader on pages recorded from
//! real vLLM 0.32 servers (`tests/fixtures/vllm/metrics_*.prom`, by
//! `launch/vllm-cpu/record_fixtures.py metrics`) and on the older series names, and a whole run
//! against fake servers (test doubles) whose pages change between its start and its end: the
//! figures land in `summary.json`, the printed summary and `compare --json`, and a server that
//! exports nothing reads "not reported".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use imagescope::serving::server_metrics::{figures, read_page};
use serde_json::Value;
use support::env::{Env, write_cirr};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn page(name: &str) -> String {
    std::fs::read_to_string(root().join("tests/fixtures/vllm").join(name)).unwrap()
}

#[test]
fn recorded_vllm_pages_read_for_their_own_served_name() {
    for role in ["captioner", "reasoner", "verifier", "evaluator", "embedder"] {
        let text = page(&format!("metrics_{role}.prom"));
        let r = read_page(&text, role);
        assert!(!r.is_empty(), "{role}: nothing read");
        // A page read against itself: every counter present, no delta, nothing restarted.
        let f = figures(
            &[Some(r.clone())],
            &[Some(r.clone())],
            &[vec![Some(r)]],
            Default::default(),
        );
        assert_eq!(f.endpoints_read, 1, "{role}");
        assert_eq!(f.prompt_tokens, Some(0), "{role}");
        assert_eq!(f.restarted, 0, "{role}");
        assert!(f.kv_cache_peak.is_some(), "{role}: kv_cache_usage_perc");
        assert!(
            f.running_mean.is_some() && f.waiting_mean.is_some(),
            "{role}"
        );
        // vLLM 0.32 exports the multimodal cache counters on every server, and the newer
        // prompt_tokens_cached counter.
        assert_eq!(f.mm_cache_hits, Some(0), "{role}");
        assert_eq!(f.prompt_tokens_cached, Some(0), "{role}");
        // Another served name's samples are not counted.
        assert!(read_page(&text, "someone-else").is_empty(), "{role}");
    }
    // The verifier's page after the demo run: prompts processed, images looked up.
    let v = read_page(&page("metrics_verifier.prom"), "verifier");
    assert!(v.get("vllm:prompt_tokens_total").unwrap() > 0.0);
    assert!(v.get("vllm:mm_cache_queries_total").unwrap() > 0.0);
}

#[test]
fn the_older_gpu_prefixed_names_are_read_too() {
    let text = page("metrics_older_names.prom");
    let later = text
        .replace("5120.0", "10240.0")
        .replace("3840.0", "8960.0");
    let f = figures(
        &[Some(read_page(&text, "verifier"))],
        &[Some(read_page(&later, "verifier"))],
        &[vec![Some(read_page(&later, "verifier"))]],
        Default::default(),
    );
    assert_eq!(f.prefix_cache_queries, Some(5120));
    assert_eq!(f.prefix_cache_hits, Some(5120));
    assert_eq!(f.prefix_cache_hit_rate, Some(1.0));
    assert_eq!(f.kv_cache_peak, Some(0.25));
    // Where a server exports both names (vLLM 0.9.x), the new one wins: nothing counts twice.
    let both = format!(
        "{text}vllm:prefix_cache_queries_total{{model_name=\"verifier\"}} 100.0\nvllm:kv_cache_usage_perc{{model_name=\"verifier\"}} 0.5\n"
    );
    let r = read_page(&both, "verifier");
    assert_eq!(r.get("vllm:prefix_cache_queries_total"), Some(100.0));
    assert_eq!(r.get("vllm:kv_cache_usage_perc"), Some(0.5));
    // KV use of two engines is the fuller one's, not their sum.
    let engines =
        "vllm:kv_cache_usage_perc{engine=\"0\"} 0.7\nvllm:kv_cache_usage_perc{engine=\"1\"} 0.6\n";
    assert_eq!(
        read_page(engines, "x").get("vllm:kv_cache_usage_perc"),
        Some(0.7)
    );
}

/// A vLLM-like page for the fake verifier: counters and a queue histogram at `scale`.
fn verifier_page(scale: f64) -> String {
    format!(
        "# TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{engine=\"0\",model_name=\"paligemma\"}} {}\n\
         vllm:prefix_cache_queries_total{{engine=\"0\",model_name=\"paligemma\"}} {}\n\
         vllm:prefix_cache_hits_total{{engine=\"0\",model_name=\"paligemma\"}} {}\n\
         vllm:num_requests_running{{engine=\"0\",model_name=\"paligemma\"}} 2\n\
         vllm:num_requests_waiting{{engine=\"0\",model_name=\"paligemma\"}} 0\n\
         vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"paligemma\"}} 0.4\n\
         vllm:request_queue_time_seconds_bucket{{engine=\"0\",le=\"0.3\",model_name=\"paligemma\"}} {}\n\
         vllm:request_queue_time_seconds_bucket{{engine=\"0\",le=\"+Inf\",model_name=\"paligemma\"}} {}\n",
        1000.0 * scale,
        800.0 * scale,
        600.0 * scale,
        10.0 * scale,
        10.0 * scale,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reports_its_servers_figures_and_not_reported_where_they_export_none() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(
        &env.data,
        &[(300, 0, "black dog sofa", 8), (500, 0, "blue car", 1)],
    );
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    // The start reads page 1, samples and the end read page 2 (the last page repeats).
    env.verifier
        .set_metrics(vec![verifier_page(1.0), verifier_page(3.0)]);
    let report = env.run(&config, &["--run-name", "figures"]).await;
    let v = &report["servers"]["verifier"];
    assert_eq!(v["endpoints_read"], 1, "{report}");
    assert_eq!(v["prompt_tokens"], 2000, "{v}");
    assert_eq!(v["prefix_cache_hits"], 1200, "{v}");
    assert_eq!(v["prefix_cache_hit_rate"], 0.75, "{v}");
    assert_eq!(v["queue_p95_s"], 0.3, "{v}");
    assert!(v["mm_cache_hit_rate"].is_null(), "not reported, not 0: {v}");
    // The fake reasoner exports no page: it reads as not read at all.
    assert_eq!(
        report["servers"]["reasoner"]["endpoints_read"], 0,
        "{report}"
    );
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["servers"]["verifier"]["prompt_tokens"], 2000);
    // The printed summary has the table.
    env.verifier
        .set_metrics(vec![verifier_page(3.0), verifier_page(4.0)]);
    let (code, out, err) = env
        .imagescope(&[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--run-name",
            "printed",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("servers (their /metrics"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("verifier  ") && l.contains('%'))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("1000") && line.contains("75.0%"), "{line}");
    // compare --json carries each side's figures beside the role's traffic.
    let second = out
        .lines()
        .find_map(|l| l.strip_prefix("run folder: "))
        .unwrap()
        .to_string();
    let (code, out, err) = env
        .imagescope(&["compare", folder.to_str().unwrap(), &second, "--json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    let verifier = c["cost"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "verifier")
        .unwrap();
    assert_eq!(verifier["a"]["server"]["prompt_tokens"], 2000, "{verifier}");
    assert_eq!(verifier["b"]["server"]["prompt_tokens"], 1000, "{verifier}");
}

/// A stand-in for vLLM's router (a test double of vllm-router 0.1.17's two routes that matter
/// here): `GET /list_workers` names the workers, and `GET /metrics` forwards to one of them, as the
/// real router does; the figures must come from every worker, not from the router's page.
async fn fake_router(workers: Vec<String>, forwarded: String) -> String {
    use axum::{Router, routing::get};
    let list = serde_json::json!({ "urls": workers }).to_string();
    let app = Router::new()
        .route("/list_workers", get(move || async move { list }))
        .route("/metrics", get(move || async move { forwarded }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

/// The verifier's server figures of a run that starts and ends at once, for servers file `cfg`.
async fn verifier_figures(
    cfg: &imagescope::config::ServersConfig,
) -> imagescope::serving::server_metrics::ServerFigures {
    use imagescope::config::Role;
    let client = imagescope::serving::RoleClient::new(
        Role::Verifier,
        &cfg.roles[&Role::Verifier],
        std::path::Path::new("test-servers.toml"),
    )
    .unwrap();
    let monitor = imagescope::serving::server_metrics::Monitor::start(
        vec![client],
        std::time::Duration::from_secs(3600),
    )
    .await;
    monitor.finish().await.remove("verifier").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_vllms_router_is_read_through_the_workers_it_lists() {
    use imagescope::config::Role;
    use support::fake_server::FakeServer;
    let a = FakeServer::start("paligemma", 4).await;
    let b = FakeServer::start("paligemma", 4).await;
    a.set_metrics(vec![verifier_page(1.0), verifier_page(2.0)]);
    b.set_metrics(vec![verifier_page(10.0), verifier_page(13.0)]);
    let root = |u: String| u.trim_end_matches("/v1").to_string();
    let router = fake_router(
        vec![root(a.base_url()), format!("{}/", root(b.base_url()))],
        verifier_page(1000.0),
    )
    .await;
    let cfg = support::servers(Role::Verifier, "paligemma", &[router], "max_in_flight = 16");
    let v = &verifier_figures(&cfg).await;
    assert_eq!(
        (v.endpoints, v.servers, v.router_workers),
        (1, 2, 2),
        "{v:?}"
    );
    assert_eq!(v.endpoints_read, 2, "{v:?}");
    // (2 - 1) + (13 - 10) pages' worth: 1000 prompt tokens each.
    assert_eq!(v.prompt_tokens, Some(4000), "{v:?}");

    // metrics_urls, when given, are the pages read (here: one of the two workers).
    let cfg = support::servers(
        Role::Verifier,
        "paligemma",
        &[fake_router(vec![root(a.base_url())], verifier_page(1000.0)).await],
        &format!("metrics_urls = [\"{}/metrics\"]", root(b.base_url())),
    );
    b.set_metrics(vec![verifier_page(20.0), verifier_page(21.0)]);
    let v = &verifier_figures(&cfg).await;
    assert_eq!(
        (v.servers, v.router_workers, v.prompt_tokens),
        (1, 0, Some(1000)),
        "{v:?}"
    );

    // A plain server's /list_workers is a 404: its own page is read.
    let c = FakeServer::start("paligemma", 4).await;
    c.set_metrics(vec![verifier_page(1.0), verifier_page(2.0)]);
    let cfg = support::servers(Role::Verifier, "paligemma", &[c.base_url()], "");
    let v = &verifier_figures(&cfg).await;
    assert_eq!(
        (v.servers, v.router_workers, v.prompt_tokens),
        (1, 0, Some(1000)),
        "{v:?}"
    );
}
