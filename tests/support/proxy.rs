//! A recording proxy in front of a REAL model server, for the live tests: it forwards every
//! `/v1/...` request unchanged and counts what passed through (requests, how many were in flight
//! at once, how many carried an image). No limit on body size: an evaluator composite is a few MB.

use std::sync::{Arc, Mutex};

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: usize,
    /// Answers by status.
    pub statuses: std::collections::BTreeMap<u16, usize>,
    pub with_image: usize,
    pub in_flight: usize,
    pub max_in_flight: usize,
}

type State = (String, reqwest::Client, Arc<Mutex<Seen>>);

async fn forward(
    axum::extract::State((up, http, seen)): axum::extract::State<State>,
    axum::extract::Path(rest): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    {
        let mut s = seen.lock().unwrap();
        s.requests += 1;
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        if memchr::memmem::find(&body, b"data:image/").is_some() {
            s.with_image += 1;
        }
    }
    let answer = match http
        .post(format!("{up}/{rest}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()),
    };
    {
        let mut s = seen.lock().unwrap();
        s.in_flight -= 1;
        *s.statuses.entry(answer.0.as_u16()).or_default() += 1;
    }
    answer
}

async fn get(
    axum::extract::State((up, http, _)): axum::extract::State<State>,
    axum::extract::Path(rest): axum::extract::Path<String>,
) -> (axum::http::StatusCode, String) {
    let r = http.get(format!("{up}/{rest}")).send().await.unwrap();
    let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
    (status, r.text().await.unwrap_or_default())
}

/// The server's `/metrics` page, from its root (the API base without `/v1`).
async fn metrics(
    axum::extract::State((up, http, _)): axum::extract::State<State>,
) -> (axum::http::StatusCode, String) {
    let root = up.strip_suffix("/v1").unwrap_or(&up);
    let r = http.get(format!("{root}/metrics")).send().await.unwrap();
    let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
    (status, r.text().await.unwrap_or_default())
}

/// Starts a proxy to `upstream` (an API base such as `http://127.0.0.1:8003/v1`); returns its own
/// API base and what it sees.
pub async fn start(upstream: String) -> (String, Arc<Mutex<Seen>>) {
    start_under(upstream, "/v1").await
}

/// The same for a server whose API sits at its root (infinity: `/embeddings`, `/models`).
#[allow(dead_code)]
pub async fn start_at_root(upstream: String) -> (String, Arc<Mutex<Seen>>) {
    start_under(upstream, "").await
}

async fn start_under(upstream: String, prefix: &str) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    #[expect(
        clippy::disallowed_methods,
        reason = "a test proxy, not model traffic of imagescope"
    )]
    let http = reqwest::Client::new();
    let app = axum::Router::new()
        .route(
            &format!("{prefix}/{{*rest}}"),
            axum::routing::post(forward).get(get),
        )
        .route("/metrics", axum::routing::get(metrics))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state((
            upstream.trim_end_matches('/').to_string(),
            http,
            seen.clone(),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}{prefix}"), seen)
}
