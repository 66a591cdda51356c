//! Every answer recorded from vLLM's router (`tests/fixtures/router/`, vllm-router 0.1.17 in front
//! of two real vLLM 0.32 replicas, see its README) goes through the client's own readers: the
//! router's plain-text errors are server faults worth another attempt, set the endpoint aside for a
//! moment, and say what to do; its worker list is read for the run's server figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use imagescope::serving::dialect::http_error;
use imagescope::serving::server_metrics::router_workers;
use imagescope::serving::{ErrorKind, HttpClass};
use serde_json::Value;

fn recorded(name: &str) -> (u16, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/router")
        .join(name);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    (
        v["status"].as_u64().unwrap() as u16,
        v["body"].as_str().unwrap().to_string(),
    )
}

#[test]
fn the_routers_errors_are_retryable_server_faults_with_a_hint() {
    for (file, hint) in [
        ("chat_no_available_workers.json", "no healthy worker"),
        ("chat_worker_unreachable.json", "could not reach the worker"),
        ("models_no_workers.json", "no healthy worker"),
    ] {
        let (status, body) = recorded(file);
        let e = http_error(status, &body);
        let ErrorKind::Http { class, message, .. } = &e else {
            panic!("{file}: {e:?}")
        };
        assert_eq!(*class, HttpClass::Server, "{file}");
        assert_eq!(
            message,
            body.trim(),
            "{file}: the plain text is the message"
        );
        assert!(
            e.may_change(true),
            "{file}: another attempt may land on a live worker"
        );
        assert!(e.is_endpoint_fault(), "{file}");
        assert!(e.to_string().contains(hint), "{file}: {e}");
    }
}

#[test]
fn the_routers_worker_list_names_the_pages_to_read() {
    let (status, body) = recorded("list_workers.json");
    assert_eq!(status, 200);
    assert_eq!(
        router_workers(&body).unwrap(),
        ["http://127.0.0.1:8013", "http://127.0.0.1:8003"]
    );
    // A vLLM server has no such route: FastAPI's 404 body is not a worker list.
    assert_eq!(router_workers(r#"{"detail":"Not Found"}"#), None);
}
