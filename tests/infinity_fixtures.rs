//! Every answer recorded from a real infinity-emb 0.0.78 server (`tests/fixtures/infinity/`,
//! recorded by `launch/infinity-cpu/record_fixtures.py` against the infinity CPU server) goes
//! through the client's own readers: successes parse into vectors, errors get the right typed class,
//! a readable message and the right retry decision, and a served name the server does not list is
//! refused before a run (infinity itself would answer it with its one model).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use imagescope::config::{Role, ServersConfig};
use imagescope::serving::models::{IdentityError, served_names};
use imagescope::serving::{Clients, ErrorKind, HttpClass, wire};
use serde_json::Value;
use support::fake_server::FakeServer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Recorded {
    name: String,
    path: String,
    status: u16,
    body: String,
    request: Value,
}

fn recorded() -> Vec<Recorded> {
    let dir = root().join("tests/fixtures/infinity");
    let mut out: Vec<Recorded> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            assert_eq!(v["server"], "infinity-emb 0.0.78", "{}", p.display());
            Recorded {
                name: p.file_stem().unwrap().to_string_lossy().into_owned(),
                path: v["path"].as_str().unwrap().into(),
                status: v["status"].as_u64().unwrap() as u16,
                body: v["body"].as_str().unwrap().into(),
                request: v["request"].clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 9, "fixtures missing in {}", dir.display());
    out
}

/// The class each recorded error must get, and whether the client retries it.
fn expected_error(name: &str) -> (u16, HttpClass, bool) {
    match name {
        "err_not_an_image" => (400, HttpClass::BadRequest, false),
        "err_33_images" | "err_file_url" | "err_empty_input" => (422, HttpClass::BadRequest, false),
        "err_overloaded" => (429, HttpClass::RateLimited, true),
        other => panic!("no expectation for recorded error {other}; add one"),
    }
}

#[test]
fn every_recorded_infinity_answer_reads_as_the_client_expects() {
    for r in &recorded() {
        let ok = (200..300).contains(&r.status);
        match (ok, r.path.as_str()) {
            (true, "/embeddings") => {
                let asked = r.request["input"].as_array().unwrap().len();
                let a = wire::parse_embeddings(&r.body, asked, Some(64))
                    .unwrap_or_else(|e| panic!("{}: {e}", r.name));
                assert_eq!(a.vectors.len(), asked, "{}", r.name);
                for v in &a.vectors {
                    // infinity normalises CLIP vectors itself.
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    assert!((norm - 1.0).abs() < 1e-3, "{}: norm {norm}", r.name);
                }
            }
            (true, "/models") => {
                assert_eq!(served_names(&r.body), vec!["embedder".to_string()]);
                // No `root`: infinity does not say which folder it loaded.
                assert_eq!(
                    imagescope::serving::models::reported(&r.body, "embedder"),
                    Some((None, None))
                );
            }
            (true, other) => panic!("{}: unexpected path {other}", r.name),
            (false, _) => {
                let (status, class, retried) = expected_error(&r.name);
                assert_eq!(r.status, status, "{}", r.name);
                let kind = wire::http_error(r.status, &r.body);
                let ErrorKind::Http {
                    class: got,
                    message,
                    ..
                } = &kind
                else {
                    panic!("{}: {kind:?}", r.name)
                };
                assert_eq!(*got, class, "{}: {message}", r.name);
                assert!(
                    !message.is_empty() && !message.starts_with(['{', '[']),
                    "{}: the message is raw JSON: {message}",
                    r.name
                );
                assert_eq!(kind.may_change(true), retried, "{}", r.name);
            }
        }
    }
}

#[test]
fn fastapi_validation_errors_read_as_their_messages() {
    let r = recorded()
        .into_iter()
        .find(|r| r.name == "err_33_images")
        .unwrap();
    let ErrorKind::Http { message, .. } = wire::http_error(r.status, &r.body) else {
        panic!()
    };
    // One message per alternative of infinity's input union, each once.
    assert!(
        message.starts_with("List should have at most 32 items after validation, not 33; "),
        "{message}"
    );
    assert_eq!(message.matches("at most 32 items").count(), 1, "{message}");
}

#[test]
fn a_wrong_model_name_is_answered_by_infinity_so_the_client_refuses_it_first() {
    let r = recorded()
        .into_iter()
        .find(|r| r.name == "embed_wrong_model_answered_anyway")
        .unwrap();
    // What the real server did: a 200 with vectors from its one model, for the name "nope".
    assert_eq!(r.status, 200);
    assert_eq!(r.request["model"], "nope");
    assert!(wire::parse_embeddings(&r.body, 1, Some(64)).is_ok());

    // A fake server that lists "embedder", as the recorded /models page does.
    let listed = recorded()
        .into_iter()
        .find(|r| r.name == "models")
        .unwrap()
        .body;
    assert_eq!(served_names(&listed), vec!["embedder".to_string()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fake = FakeServer::start("embedder", 64).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers.toml");
        let servers = |model: &str, checkpoint: &str| {
            format!(
                "[roles.embedder]\nendpoints = [\"{}\"]\nmodel = \"{model}\"\n{checkpoint}api = \"infinity\"\nembed_shape = \"infinity\"\ndimension = 64\n",
                fake.base_url()
            )
        };
        for checkpoint in ["", "checkpoint = \"tiny clip\"\n"] {
            std::fs::write(&path, servers("nope", checkpoint)).unwrap();
            let cfg = ServersConfig::load(&path).unwrap();
            let clients = Clients::new(&cfg, &path).unwrap();
            match clients.identify().await {
                Err(IdentityError::NotServed { model, listed, .. }) => {
                    assert_eq!(model, "nope");
                    assert_eq!(listed, "embedder");
                }
                other => panic!("{checkpoint:?}: {other:?}"),
            }
            std::fs::write(&path, servers("embedder", checkpoint)).unwrap();
            let cfg = ServersConfig::load(&path).unwrap();
            let clients = Clients::new(&cfg, &path).unwrap();
            let ids = clients.identify().await.unwrap();
            assert_eq!(ids[&Role::Embedder].served, "embedder");
        }
    });
}
