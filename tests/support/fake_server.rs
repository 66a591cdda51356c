//! A scripted, in-process fake of an OpenAI-compatible model server. It is a TEST DOUBLE: it runs
//! no model. It answers `/v1/chat/completions`, `/v1/embeddings`, `/v1/models` and `/health`;
//! responses can be scripted per route (status, body, headers, delay), a default responder answers
//! the rest, and it records every request, its arrival time and how many were in flight at once.
//! Failures are scripted by count, or drawn by `set_chaos` from a seed and the request itself
//! (its body and how many times that body was sent), so they replay whatever the arrival order.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Which route a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Chat,
    Embeddings,
    Models,
    Health,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
}

impl Scripted {
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Scripted {
            status,
            body: body.into(),
            headers: vec![],
            delay: Duration::ZERO,
        }
    }
    pub fn json(status: u16, body: Value) -> Self {
        Self::status(status, body.to_string())
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// Seeded faults (`FakeServer::set_chaos`).
#[derive(Debug, Clone)]
pub struct Chaos {
    /// The schedule's seed.
    pub seed: u64,
    /// Share of attempts that fail, in 1/1000.
    pub per_mille: u64,
    /// How long a hang lasts (past the client's timeout).
    pub hang: Duration,
    /// Times each body was sent so far (by its hash).
    sent: HashMap<[u8; 32], u64>,
}

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Status500,
    Status503,
    TooManyWithRetryAfter,
    TooManyWithout,
    NotJson,
    Truncated,
    EmptyAnswer,
    WrongShape,
    Slow,
    Hang,
}

const FAULTS: [Fault; 10] = [
    Fault::Status500,
    Fault::Status503,
    Fault::TooManyWithRetryAfter,
    Fault::TooManyWithout,
    Fault::NotJson,
    Fault::Truncated,
    Fault::EmptyAnswer,
    Fault::WrongShape,
    Fault::Slow,
    Fault::Hang,
];

impl Chaos {
    /// The fault (if any) for this attempt: a function of the seed, the body and how many times
    /// the same body was sent before.
    fn draw(&mut self, body: &[u8]) -> Option<Fault> {
        let key = *blake3::hash(body).as_bytes();
        let n = self.sent.entry(key).or_default();
        *n += 1;
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes())
            .update(&key)
            .update(&n.to_le_bytes());
        let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap());
        (x % 1000 < self.per_mille).then(|| FAULTS[((x / 1000) % FAULTS.len() as u64) as usize])
    }
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub route: Route,
    pub body: Value,
    pub at: Instant,
    pub auth: Option<String>,
    /// The `X-Session-ID` header, if sent.
    pub session: Option<String>,
}

/// Computes the default chat answer text from a request body.
pub type ChatResponder = Arc<dyn Fn(&Value) -> String + Send + Sync>;

/// Computes one embedding from one input (an `input` item or a `messages` content part).
pub type EmbedResponder = Arc<dyn Fn(&Value, usize) -> Vec<f32> + Send + Sync>;

pub struct FakeState {
    pub model: Mutex<String>,
    /// The checkpoint `/v1/models` reports as `root` (as vLLM does), if any.
    pub root: Mutex<Option<String>>,
    pub dim: usize,
    scripts: Mutex<HashMap<Route, VecDeque<Scripted>>>,
    delays: Mutex<HashMap<Route, Duration>>,
    chat_responder: Mutex<ChatResponder>,
    embed_responder: Mutex<EmbedResponder>,
    records: Mutex<Vec<Recorded>>,
    faults: Mutex<(Vec<Option<u16>>, usize)>,
    chaos: Mutex<Option<Chaos>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// `/metrics` pages, served in turn (the last one again and again); none: 404.
    pub metrics: Mutex<Vec<String>>,
    /// The replica's outage, if any (`FakeServer::set_outage`).
    outage: Mutex<Option<Outage>>,
    /// Bumped when the replica dies: every open connection closes.
    killed: tokio::sync::watch::Sender<u64>,
    /// Images received with a `uuid`, by uuid (vLLM's multimodal processor cache).
    images: Mutex<HashMap<String, Value>>,
}

/// A replica that stops working for a while (`FakeServer::set_outage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// As a killed process: open connections close, new ones are closed at once.
    Dead,
    /// As a wedged process: every chat and embedding request is held this long (past the
    /// client's timeout) before it is answered.
    Hung(Duration),
}

/// A running fake server; dropping it (or calling `stop`) closes its port.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct InFlight<'a>(&'a FakeState);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeServer {
    /// Starts a fake serving `model`, with embeddings of `dim` dimensions, on a free local port.
    pub async fn start(model: &str, dim: usize) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, model, dim).await
    }

    /// Starts again on a given address (a replica coming back after being killed).
    pub async fn start_at(addr: SocketAddr, model: &str, dim: usize) -> FakeServer {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, model, dim).await
    }

    async fn serve(listener: tokio::net::TcpListener, model: &str, dim: usize) -> FakeServer {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            model: Mutex::new(model.to_string()),
            root: Mutex::new(None),
            dim,
            scripts: Mutex::new(HashMap::new()),
            delays: Mutex::new(HashMap::new()),
            chat_responder: Mutex::new(Arc::new(|_| "yes".to_string())),
            embed_responder: Mutex::new(Arc::new(fake_vector)),
            records: Mutex::new(Vec::new()),
            faults: Mutex::new((Vec::new(), 0)),
            chaos: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            metrics: Mutex::new(Vec::new()),
            outage: Mutex::new(None),
            killed: tokio::sync::watch::channel(0).0,
            images: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(metrics_page))
            .with_state(state.clone());
        // Connections live in a JoinSet owned by the accept loop, so stopping the server closes
        // every open (keep-alive) connection too, as a killed process would.
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Subscribe before looking: a death announced in between is then seen by this
                // connection's task at once.
                let mut killed = accept_state.killed.subscribe();
                if *accept_state.outage.lock().unwrap() == Some(Outage::Dead) {
                    drop(stream);
                    continue;
                }
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let serve = builder.serve_connection(io, svc);
                    // The kill first: a request that arrived on a kept-alive connection after
                    // the server was declared dead is not served.
                    tokio::select! {
                        biased;
                        _ = killed.changed() => {}
                        _ = serve => {}
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        FakeServer {
            addr,
            state,
            task: Some(task),
        }
    }

    /// API base URL, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues scripted answers for a route; they are used in order before the default.
    pub fn script(&self, route: Route, answers: impl IntoIterator<Item = Scripted>) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .entry(route)
            .or_default()
            .extend(answers);
    }

    /// Delay added to every default answer of a route.
    pub fn set_delay(&self, route: Route, d: Duration) {
        self.state.delays.lock().unwrap().insert(route, d);
    }

    /// Sets how default chat answers are computed from the request body.
    pub fn set_chat_responder(&self, f: impl Fn(&Value) -> String + Send + Sync + 'static) {
        *self.state.chat_responder.lock().unwrap() = Arc::new(f);
    }

    /// A cyclic fault pattern: the n-th default answer (after scripts) is replaced by an error
    /// with `pattern[n % len]`'s status when it is `Some`. Build it from a seeded generator for a
    /// reproducible "random" fault rate.
    pub fn set_fault_pattern(&self, pattern: Vec<Option<u16>>) {
        *self.state.faults.lock().unwrap() = (pattern, 0);
    }

    /// Seeded faults on `per_mille` of the chat and embedding attempts (see `Chaos`); `None`
    /// turns them off. A hang lasts `hang`.
    pub fn set_chaos(&self, seed: Option<u64>, per_mille: u64, hang: Duration) {
        *self.state.chaos.lock().unwrap() = seed.map(|seed| Chaos {
            seed,
            per_mille,
            hang,
            sent: HashMap::new(),
        });
    }

    /// Puts the replica out of service (`Some`) or back (`None`): dead closes every open
    /// connection and refuses new ones; hung holds each chat and embedding request.
    pub fn set_outage(&self, outage: Option<Outage>) {
        *self.state.outage.lock().unwrap() = outage;
        if outage == Some(Outage::Dead) {
            self.state.killed.send_modify(|n| *n += 1);
        }
    }

    /// Sets how embeddings are computed from each input.
    pub fn set_embed_responder(
        &self,
        f: impl Fn(&Value, usize) -> Vec<f32> + Send + Sync + 'static,
    ) {
        *self.state.embed_responder.lock().unwrap() = Arc::new(f);
    }

    /// Requests received so far.
    /// Serves these Prometheus pages at `/metrics`, one per request, the last one repeated.
    #[allow(dead_code)]
    pub fn set_metrics(&self, pages: Vec<String>) {
        *self.state.metrics.lock().unwrap() = pages;
    }

    /// Reports `root` as the checkpoint behind the served name in `/v1/models`, as vLLM does.
    pub fn set_root(&self, root: &str) {
        *self.state.root.lock().unwrap() = Some(root.to_string());
    }

    /// Forgets every image held by uuid (as vLLM evicting them, or restarting).
    pub fn forget_images(&self) {
        self.state.images.lock().unwrap().clear();
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.records.lock().unwrap().clone()
    }

    /// Requests received on one route.
    pub fn count(&self, route: Route) -> usize {
        self.requests().iter().filter(|r| r.route == route).count()
    }

    /// Most requests that were being handled at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Stops serving: the port refuses connections afterwards.
    pub async fn stop(mut self) -> SocketAddr {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.addr
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn handle(
    state: Arc<FakeState>,
    route: Route,
    headers: HeaderMap,
    body: Bytes,
    default: impl FnOnce(&FakeState, &Value) -> Value,
) -> Response {
    let n = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(n, Ordering::SeqCst);
    let _guard = InFlight(&state);
    let mut parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let recorded = parsed.clone();
    // As vLLM ≥ 0.11: an image part with a `uuid` and its bytes is kept under the uuid; one with
    // `image_url: null` is read from there, or is a cache miss (400, vLLM's words).
    let miss = if matches!(route, Route::Chat) {
        resolve_uuids(&state, &mut parsed).err()
    } else {
        None
    };
    state.records.lock().unwrap().push(Recorded {
        route,
        body: recorded,
        at: Instant::now(),
        auth: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        session: headers
            .get("x-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    if let Some(idx) = miss {
        let body = json!({"error": {"message": format!("Cache miss for image at index {idx} but data is not provided."), "type": "BadRequestError", "param": null, "code": 400}});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let scripted = state
        .scripts
        .lock()
        .unwrap()
        .get_mut(&route)
        .and_then(VecDeque::pop_front);
    if let Some(s) = scripted {
        tokio::time::sleep(s.delay).await;
        let mut resp = (StatusCode::from_u16(s.status).unwrap(), s.body).into_response();
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        for (k, v) in s.headers {
            resp.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(&v).unwrap(),
            );
        }
        return resp;
    }
    let fault = {
        let mut f = state.faults.lock().unwrap();
        let (pattern, n) = &mut *f;
        let out = if pattern.is_empty() || matches!(route, Route::Health | Route::Models) {
            None
        } else {
            pattern[*n % pattern.len()]
        };
        *n += 1;
        out
    };
    if let Some(status) = fault {
        let body =
            json!({"error": {"message": "injected fault", "type": "ServerError", "code": status}});
        return (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    }
    let hung = match *state.outage.lock().unwrap() {
        Some(Outage::Hung(d)) if matches!(route, Route::Chat | Route::Embeddings) => Some(d),
        _ => None,
    };
    if let Some(d) = hung {
        tokio::time::sleep(d).await;
    }
    let chaos = match route {
        Route::Chat | Route::Embeddings => state
            .chaos
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|c| Some((c.draw(&body)?, c.hang))),
        _ => None,
    };
    let delay = state.delays.lock().unwrap().get(&route).copied();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let error = |status: u16| {
        let body =
            json!({"error": {"message": "injected fault", "type": "ServerError", "code": status}});
        (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
    };
    let json_text = |text: String| {
        let mut resp = (StatusCode::OK, text).into_response();
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        resp
    };
    match chaos {
        None => {}
        Some((Fault::Status500, _)) => return error(500),
        Some((Fault::Status503, _)) => return error(503),
        Some((Fault::TooManyWithRetryAfter, _)) => {
            let mut resp = error(429);
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("0"));
            return resp;
        }
        Some((Fault::TooManyWithout, _)) => return error(429),
        Some((Fault::NotJson, _)) => return json_text("<html>bad gateway</html>".into()),
        Some((Fault::Truncated, _)) => {
            let whole = default(&state, &parsed).to_string();
            return json_text(whole[..whole.len() / 2].to_string());
        }
        Some((Fault::EmptyAnswer, _)) => {
            let mut answer = default(&state, &parsed);
            if let Some(c) = answer.pointer_mut("/choices/0/message/content") {
                *c = json!("");
            }
            // Nothing at all, as a server that generated nothing sends (an empty answer with
            // probabilities is an answer).
            if let Some(choice) = answer
                .pointer_mut("/choices/0")
                .and_then(Value::as_object_mut)
            {
                choice.remove("logprobs");
            }
            if let Some(d) = answer.get_mut("data") {
                *d = json!([]);
            }
            return axum::Json(answer).into_response();
        }
        Some((Fault::WrongShape, _)) => {
            return axum::Json(json!({"model": *state.model.lock().unwrap(), "result": "yes"}))
                .into_response();
        }
        Some((Fault::Slow, _)) => tokio::time::sleep(Duration::from_millis(20)).await,
        Some((Fault::Hang, hang)) => tokio::time::sleep(hang).await,
    }
    axum::Json(default(&state, &parsed)).into_response()
}

/// Puts back the bytes of images named by `uuid` alone; `Err(index)`: one the server does not hold.
fn resolve_uuids(state: &FakeState, req: &mut Value) -> Result<(), usize> {
    let mut images = state.images.lock().unwrap();
    let mut idx: usize = 0;
    for m in req["messages"].as_array_mut().into_iter().flatten() {
        for part in m["content"].as_array_mut().into_iter().flatten() {
            if part["type"] != "image_url" {
                continue;
            }
            if let Some(uuid) = part["uuid"].as_str().map(str::to_string) {
                if part["image_url"].is_null() {
                    part["image_url"] = images.get(&uuid).cloned().ok_or(idx)?;
                } else {
                    images.insert(uuid, part["image_url"].clone());
                }
            }
            idx += 1;
        }
    }
    Ok(())
}

async fn chat(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state.clone(), Route::Chat, headers, body, |s, req| {
        let responder = s.chat_responder.lock().unwrap().clone();
        let content = responder(req);
        let mut choice = json!({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"});
        if req["logprobs"] == json!(true)
            && let Some(logprobs) = fake_logprobs(req, &content)
        {
            choice["logprobs"] = logprobs;
        }
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": *s.model.lock().unwrap(),
            "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        })
    })
    .await
}

/// The first token's log-probabilities, as vLLM sends them when asked (`logprobs: true`), for an
/// answer whose first word is yes or no: P(yes) above one half for a yes and below for a no, its
/// exact value drawn from the request's texts and images and the answer (the same request, on any
/// replica or attempt, gets the same numbers), so candidates answering alike still score apart
/// under probability-sum re-ranking.
fn fake_logprobs(req: &Value, content: &str) -> Option<Value> {
    let word: String = content
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect();
    let yes = match word.to_lowercase().as_str() {
        "yes" => true,
        "no" => false,
        _ => return None,
    };
    let mut h = blake3::Hasher::new();
    for m in req["messages"].as_array().into_iter().flatten() {
        match &m["content"] {
            Value::String(t) => {
                h.update(t.as_bytes());
            }
            Value::Array(parts) => {
                for p in parts {
                    // An image by its uuid when it has one (what names it across requests), else
                    // its URL (a data URL here: its bytes).
                    let part = p["text"]
                        .as_str()
                        .or_else(|| p["uuid"].as_str())
                        .or_else(|| p["image_url"]["url"].as_str());
                    if let Some(t) = part {
                        h.update(t.as_bytes());
                    }
                }
            }
            _ => {}
        }
    }
    h.update(content.as_bytes());
    let bytes = h.finalize();
    let f = f64::from(u16::from_le_bytes([
        bytes.as_bytes()[0],
        bytes.as_bytes()[1],
    ])) / 65536.0;
    let p_yes = if yes {
        0.55 + 0.44 * f
    } else {
        0.45 * f + 0.001
    };
    let alt = |token: &str, p: f64| json!({"token": token, "logprob": p.ln(), "bytes": null});
    let (first, second) = if yes {
        (alt("Yes", p_yes), alt("No", 1.0 - p_yes))
    } else {
        (alt("No", 1.0 - p_yes), alt("Yes", p_yes))
    };
    let mut token = first.clone();
    token["token"] = json!(word);
    token["top_logprobs"] = json!([first, second]);
    Some(json!({"content": [token]}))
}

/// A deterministic unit-ish vector derived from the text of one input.
pub fn fake_vector(input: &Value, dim: usize) -> Vec<f32> {
    let seed = blake3::hash(input.to_string().as_bytes());
    let mut out = Vec::with_capacity(dim);
    let mut reader = blake3::Hasher::new_derive_key("fake-embedding")
        .update(seed.as_bytes())
        .finalize_xof();
    let mut buf = [0u8; 4];
    for _ in 0..dim {
        reader.fill(&mut buf);
        out.push((u32::from_le_bytes(buf) as f32 / u32::MAX as f32) - 0.5);
    }
    out
}

async fn embeddings(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state.clone(), Route::Embeddings, headers, body, |s, req| {
        let inputs: Vec<Value> = match req.get("input") {
            Some(Value::Array(a)) => a.clone(),
            Some(v) => vec![v.clone()],
            None => vec![req["messages"][0]["content"][0].clone()],
        };
        let responder = s.embed_responder.lock().unwrap().clone();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, x)| json!({"object": "embedding", "index": i, "embedding": responder(x, s.dim)}))
            .collect();
        json!({"object": "list", "model": *s.model.lock().unwrap(), "data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}})
    })
    .await
}

async fn models(State(state): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    handle(
        state.clone(),
        Route::Models,
        headers,
        Bytes::new(),
        |s, _| {
            let mut entry = json!({"id": *s.model.lock().unwrap(), "object": "model"});
            if let Some(root) = s.root.lock().unwrap().clone() {
                entry["root"] = json!(root);
                entry["max_model_len"] = json!(4096);
            }
            json!({"object": "list", "data": [entry]})
        },
    )
    .await
}

async fn metrics_page(State(state): State<Arc<FakeState>>) -> Response {
    let mut pages = state.metrics.lock().unwrap();
    match pages.len() {
        0 => StatusCode::NOT_FOUND.into_response(),
        1 => pages[0].clone().into_response(),
        _ => pages.remove(0).into_response(),
    }
}

async fn health(State(state): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    handle(
        state,
        Route::Health,
        headers,
        Bytes::new(),
        |_, _| json!({}),
    )
    .await
}
