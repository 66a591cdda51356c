//! `RoleClient`: the one way a request reaches a model server.
//!
//! How a call runs:
//! 1. pick an endpoint (least assigned, not set aside; see `endpoints`);
//! 2. wait for one of that endpoint's `max_in_flight` slots;
//! 3. wait for the role's rate limiter (governor), so the rate is measured at send time;
//! 4. send, bounded by the per-attempt timeout, and read at most 32 MiB of answer;
//! 5. classify: HTTP status and error envelope, then the caller's validation of the body;
//! 6. on a retryable failure, set a faulty endpoint aside, wait the capped backoff (skipped when
//!    another replica is available and this one was set aside), and go back to 1.
//!
//! Every attempt's failure is kept, so a caller can record "2 retries, then success".

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;
use tokio::time::Instant;

use crate::config::{ApiFlavour, ConfigError, Role, RoleServer};
use crate::images::EncodedImage;

use super::cache::{self, Cache};
use super::endpoints::{Assignment, Endpoint, Endpoints};
use super::errors::{ErrorKind, HttpClass, ServingError};
use super::retry::{backoff_delay, parse_retry_after};
use super::stats::RoleStats;
use super::wire::{self, ChatAnswer, ChatRequest, EmbedInput, ImageRendering};

/// Answers larger than this are refused rather than read into memory.
const MAX_BODY_BYTES: usize = 32 << 20;

/// An API key read from the environment. Its `Debug` never shows the key.
#[derive(Clone)]
struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How a successful call went.
#[derive(Debug, Clone, PartialEq)]
pub struct CallMeta {
    /// Endpoint that answered.
    pub endpoint: String,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    /// Time from the first attempt's start to the answer, waits included.
    pub latency: Duration,
    /// Delays slept between attempts.
    pub retry_delays: Vec<Duration>,
    /// Failures of the attempts before the successful one.
    pub errors: Vec<ErrorKind>,
    /// The answer came from the request cache (no request was sent).
    pub cached: bool,
}

/// A validated answer and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<T> {
    /// The answer.
    pub value: T,
    /// How the call went.
    pub meta: CallMeta,
}

#[derive(Debug)]
struct Inner {
    role: Role,
    server: RoleServer,
    http: reqwest::Client,
    endpoints: Endpoints,
    limiter: Option<DefaultDirectRateLimiter>,
    api_key: Option<ApiKey>,
    stats: RoleStats,
    cache: Option<Arc<Cache>>,
    /// Per endpoint, the images it holds under their uuid (`image_uuids`; empty when off).
    held: Vec<std::sync::Mutex<HeldImages>>,
}

/// The images one replica was sent with their `uuid` and answered, so holds in its multimodal
/// cache (as far as the client can tell): the `cap` most recently used, the least recently used
/// forgotten first (as vLLM's LRU does). Forgotten when the replica may have restarted (a
/// connection error, back in service after being set aside). A guess that is wrong costs one
/// request sent again with the bytes.
struct HeldImages(hashlink::LruCache<String, ()>);

impl std::fmt::Debug for HeldImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldImages({} of {})", self.0.len(), self.0.capacity())
    }
}

impl HeldImages {
    fn contains(&self, hash: &str) -> bool {
        self.0.contains_key(hash)
    }

    /// Counts on `hash` as the most recently used (vLLM's cache is least-recently-used).
    fn insert(&mut self, hash: &str) {
        self.0.insert(hash.to_string(), ());
    }

    /// Forgets `hash` and every image used before it: the server evicts least recently used
    /// first, so those are likely gone too.
    fn forget_from(&mut self, hash: &str) {
        if self.0.contains_key(hash) {
            while let Some((old, ())) = self.0.remove_lru() {
                if old == hash {
                    break;
                }
            }
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

fn held_images(server: &RoleServer) -> Vec<std::sync::Mutex<HeldImages>> {
    match server.image_uuids {
        Some(cap) if cap > 0 => server
            .endpoints
            .iter()
            .map(|_| std::sync::Mutex::new(HeldImages(hashlink::LruCache::new(cap))))
            .collect(),
        _ => Vec::new(),
    }
}

fn lock_held(m: &std::sync::Mutex<HeldImages>) -> std::sync::MutexGuard<'_, HeldImages> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client for one role's server(s), with its limits, retries and replicas. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RoleClient {
    inner: Arc<Inner>,
}

impl RoleClient {
    /// Builds the client for `role`; reads the API key variable if one is named.
    /// `config_path` is only used in error messages.
    pub fn new(role: Role, server: &RoleServer, config_path: &Path) -> Result<Self, ConfigError> {
        Self::with_env(role, server, config_path, |var| std::env::var(var).ok())
    }

    /// As `new`, reading environment variables through `env` (tests pass a closure).
    pub fn with_env(
        role: Role,
        server: &RoleServer,
        config_path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let api_key = match &server.api_key_env {
            None => None,
            Some(var) => match env(var) {
                Some(v) if !v.is_empty() => Some(ApiKey(v)),
                _ => {
                    return Err(ConfigError::MissingEnv {
                        path: config_path.to_path_buf(),
                        key: format!("roles.{role}.api_key_env"),
                        var: var.clone(),
                    });
                }
            },
        };
        let limiter = build_limiter(server);
        let http = build_http(server).map_err(|e| ConfigError::Invalid {
            path: config_path.to_path_buf(),
            key: format!("roles.{role}"),
            message: format!("cannot build an HTTP client: {e}"),
        })?;
        Ok(RoleClient {
            inner: Arc::new(Inner {
                role,
                server: server.clone(),
                http,
                endpoints: Endpoints::new(&server.endpoints, server.max_in_flight),
                limiter,
                api_key,
                stats: RoleStats::default(),
                cache: None,
                held: held_images(server),
            }),
        })
    }

    /// A client for the same server that reads and writes answers through `cache`. It has its own
    /// limits and counters, so use it instead of (not beside) the original.
    pub fn with_cache(&self, cache: Arc<Cache>) -> Self {
        let i = &self.inner;
        RoleClient {
            inner: Arc::new(Inner {
                role: i.role,
                server: i.server.clone(),
                http: i.http.clone(),
                endpoints: Endpoints::new(&i.server.endpoints, i.server.max_in_flight),
                limiter: build_limiter(&i.server),
                api_key: i.api_key.clone(),
                stats: RoleStats::default(),
                cache: Some(cache),
                held: held_images(&i.server),
            }),
        }
    }

    /// The role this client serves.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// The server configuration.
    pub fn server(&self) -> &RoleServer {
        &self.inner.server
    }

    /// Base URLs of this role's replicas set aside now (or waiting for their probe), and how
    /// many replicas there are.
    pub fn replicas_out(&self) -> (Vec<String>, usize) {
        let endpoints = &self.inner.endpoints;
        let out = endpoints
            .out_of_service()
            .into_iter()
            .map(str::to_string)
            .collect();
        (out, endpoints.all().len())
    }

    /// The request cache this client reads and writes, if any.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.inner.cache.as_ref()
    }

    /// Counters of this client's traffic.
    pub fn stats(&self) -> &RoleStats {
        &self.inner.stats
    }

    /// Sends a chat request and validates the answer.
    pub async fn chat(&self, req: &ChatRequest) -> Result<Reply<ChatAnswer>, ServingError> {
        let s = &self.inner.server;
        // Built only when an in-flight slot is free (see `call`), so waiting requests hold no
        // base64 image bodies.
        let build = |held: &dyn Fn(&str) -> bool| {
            let body = wire::chat_body(req, s, ImageRendering::Send(s.image_transport));
            let (bytes, referred) = wire::encode_body_referring(&body, req.images(), held);
            (bytes::Bytes::from(bytes), referred)
        };
        let images: Vec<&str> = req.images().map(EncodedImage::hash).collect();
        let key = self.cache_key(|| wire::chat_body(req, s, ImageRendering::Hash));
        let reply = self
            .call(
                "/chat/completions",
                build,
                key,
                greedy(req, s),
                &images,
                |text| {
                    let answer = wire::parse_chat(text)?;
                    self.check_model(answer.model.as_deref())?;
                    Ok(answer)
                },
            )
            .await?;
        if let (false, Some(u)) = (reply.meta.cached, reply.value.usage) {
            self.inner
                .stats
                .record_tokens(u.prompt_tokens, u.completion_tokens);
            if let Some(c) = u.cached_tokens {
                self.inner.stats.record_cached_tokens(c);
            }
        }
        Ok(reply)
    }

    /// Embeds `inputs` (all text or all images), returning one vector per input, L2-normalised if
    /// the server is configured so.
    pub async fn embed(&self, inputs: &[EmbedInput]) -> Result<Reply<Vec<Vec<f32>>>, ServingError> {
        let s = &self.inner.server;
        let bodies = wire::embed_bodies(inputs, s, ImageRendering::Send(s.image_transport))
            .map_err(|kind| {
                self.error(self.inner.endpoints.all()[0].base.clone(), 0, kind, vec![])
            })?;
        let keyed: Vec<Option<String>> = match &self.inner.cache {
            Some(_) => wire::embed_bodies(inputs, s, ImageRendering::Hash)
                .map_err(|kind| {
                    self.error(self.inner.endpoints.all()[0].base.clone(), 0, kind, vec![])
                })?
                .iter()
                .map(|b| Some(self.key_of(b)))
                .collect(),
            None => vec![None; bodies.len()],
        };
        let calls = bodies.iter().zip(keyed).map(|(body, key)| {
            let expected = count_inputs(body);
            let images = inputs.iter().filter_map(|i| match i {
                EmbedInput::Image(img) => Some(img),
                EmbedInput::Text(_) => None,
            });
            let images: Vec<_> = images.collect();
            let build = move |_: &dyn Fn(&str) -> bool| {
                let bytes = wire::encode_body(body, images.iter().copied());
                (bytes::Bytes::from(bytes), 0)
            };
            // No affinity: an image is embedded once, so no later request could meet its cache.
            self.call("/embeddings", build, key, true, &[], move |text| {
                let a = wire::parse_embeddings(text, expected, s.dimension)?;
                self.check_model(a.model.as_deref())?;
                Ok(a.vectors)
            })
        });
        let replies = futures::future::try_join_all(calls).await?;
        let mut meta: Option<CallMeta> = None;
        let mut vectors = Vec::with_capacity(inputs.len());
        for r in replies {
            vectors.extend(r.value);
            meta = Some(match meta {
                None => r.meta,
                Some(mut m) => {
                    m.attempts = m.attempts.max(r.meta.attempts);
                    m.latency = m.latency.max(r.meta.latency);
                    m.retry_delays.extend(r.meta.retry_delays);
                    m.errors.extend(r.meta.errors);
                    m.cached &= r.meta.cached;
                    m
                }
            });
        }
        if s.normalize {
            vectors.iter_mut().for_each(|v| wire::l2_normalize(v));
        }
        let meta = meta.unwrap_or(CallMeta {
            endpoint: String::new(),
            attempts: 0,
            latency: Duration::ZERO,
            retry_delays: vec![],
            errors: vec![],
            cached: false,
        });
        Ok(Reply {
            value: vectors,
            meta,
        })
    }

    /// GETs `path` (relative to the server root when `from_root`, else to the API base) on
    /// endpoint `index`, once, with the attempt timeout. Returns status and body. For health probes.
    pub async fn probe_get(
        &self,
        index: usize,
        path: &str,
        from_root: bool,
    ) -> Result<(u16, String), ErrorKind> {
        let ep = &self.inner.endpoints.all()[index];
        let url = format!("{}{}", if from_root { ep.root() } else { &ep.base }, path);
        self.get_url(&url).await
    }

    /// Whether `url` lies on one of the role's endpoints (same scheme, host and port).
    fn is_own_origin(&self, url: &str) -> bool {
        let Ok(u) = reqwest::Url::parse(url) else {
            return false;
        };
        self.inner
            .endpoints
            .all()
            .iter()
            .any(|e| reqwest::Url::parse(&e.base).is_ok_and(|b| b.origin() == u.origin()))
    }

    /// The server root of endpoint `index` (its URL without the `/v1` API prefix).
    pub fn endpoint_root(&self, index: usize) -> String {
        self.inner.endpoints.all()[index].root().to_string()
    }

    /// GETs `url` once, with the attempt timeout: a page of the role's servers (a `/metrics`
    /// page, a router's worker list). The role's API key goes only to the role's own servers, a
    /// URL with the scheme, host and port of one of its endpoints; any other page (a worker a
    /// router lists, a `metrics_urls` page elsewhere) is asked without it. Returns status and body.
    pub async fn get_url(&self, url: &str) -> Result<(u16, String), ErrorKind> {
        let mut rb = self.inner.http.get(url);
        if let Some(k) = &self.inner.api_key
            && self.is_own_origin(url)
        {
            rb = rb.bearer_auth(&k.0);
        }
        let fut = async {
            let resp = rb
                .send()
                .await
                .map_err(|e| ErrorKind::Connect(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let body = read_capped(resp).await?;
            Ok((status, body))
        };
        tokio::time::timeout(self.inner.server.timeout(), fut)
            .await
            .unwrap_or(Err(ErrorKind::Timeout(self.inner.server.timeout())))
    }

    fn cache_key(&self, body: impl FnOnce() -> Value) -> Option<String> {
        self.inner.cache.as_ref().map(|_| self.key_of(&body()))
    }

    fn key_of(&self, body: &Value) -> String {
        cache::key(
            self.inner.role,
            self.inner.server.checkpoint.as_deref(),
            body,
        )
    }

    fn check_model(&self, got: Option<&str>) -> Result<(), ErrorKind> {
        let expected = &self.inner.server.model;
        match got {
            Some(got) if self.inner.server.api == ApiFlavour::Vllm && got != expected => {
                Err(ErrorKind::WrongModel {
                    expected: expected.clone(),
                    got: got.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    fn error(
        &self,
        endpoint: String,
        attempts: u32,
        kind: ErrorKind,
        earlier: Vec<ErrorKind>,
    ) -> ServingError {
        ServingError {
            role: self.inner.role,
            endpoint,
            attempts,
            kind,
            earlier,
        }
    }

    /// One request with its retries. `build` makes the body (and says how many of its images went
    /// by uuid alone, those the endpoint holds); it is called once an in-flight slot (and the rate
    /// limiter) admits an attempt, and the body is dropped when the attempt ends. `images` are the
    /// hashes of the request's images: the first picks the replica (affinity).
    async fn call<T>(
        &self,
        path: &str,
        build: impl Fn(&dyn Fn(&str) -> bool) -> (bytes::Bytes, usize),
        cache_key: Option<String>,
        deterministic: bool,
        images: &[&str],
        validate: impl Fn(&str) -> Result<T, ErrorKind>,
    ) -> Result<Reply<T>, ServingError> {
        let inner = &self.inner;
        // The image's hash: the replica it goes to, and the session id a router can key on.
        let session: Option<String> = images
            .first()
            .filter(|_| inner.server.affinity)
            .map(|h| h.get(..16).unwrap_or(h).to_string());
        // A miss of an image named by its uuid is sent again with the bytes, once, whatever the
        // retry budget (the server is fine; the client's guess of its cache was not).
        let mut resent_for_miss = false;
        if let (Some(cache), Some(key)) = (&inner.cache, &cache_key)
            && let Some(text) = cache.get_async(key).await
            && let Ok(value) = validate(&text)
        {
            inner.stats.record_cache_hit();
            return Ok(Reply {
                value,
                meta: CallMeta {
                    endpoint: "cache".into(),
                    attempts: 0,
                    latency: Duration::ZERO,
                    retry_delays: vec![],
                    errors: vec![],
                    cached: true,
                },
            });
        }
        let policy = &inner.server.retry;
        let started = Instant::now();
        let mut errors: Vec<ErrorKind> = Vec::new();
        let mut delays = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            let (assignment, permit) = self
                .slot(session.as_deref().and_then(super::endpoints::affinity_key))
                .await;
            let index = assignment.index;
            let ep = assignment.endpoint();
            if let Some(limiter) = &inner.limiter {
                limiter.until_ready().await;
            }
            inner.stats.record_attempt();
            let held_here = |h: &str| {
                inner
                    .held
                    .get(index)
                    .is_some_and(|m| lock_held(m).contains(h))
            };
            let (payload, referred) = build(&held_here);
            inner.stats.record_sent(payload.len(), referred);
            let held = inner.stats.hold_body(payload.len());
            let sent = Instant::now();
            let outcome = self.attempt(ep, path, payload, session.as_deref()).await;
            drop(held);
            drop(permit);
            let result =
                outcome.and_then(|text| validate(&text).map(|v| (v, text)).map_err(|k| (k, None)));
            attempt += 1;
            match result {
                Ok((value, text)) => {
                    if inner.endpoints.mark_ok(index) {
                        tracing::warn!(role = %inner.role, endpoint = %ep.base, "replica back in service: it answered again and takes its share of requests");
                        // It may have restarted: count on none of its images.
                        if let Some(m) = inner.held.get(index) {
                            lock_held(m).clear();
                        }
                    }
                    inner.stats.record_success(sent.elapsed());
                    if let Some(m) = inner.held.get(index) {
                        let mut m = lock_held(m);
                        images.iter().for_each(|h| m.insert(h));
                    }
                    if let (Some(cache), Some(key)) = (&inner.cache, &cache_key) {
                        cache.put(key, inner.role, &inner.server.model, &text);
                    }
                    return Ok(Reply {
                        value,
                        meta: CallMeta {
                            endpoint: ep.base.clone(),
                            attempts: attempt,
                            latency: started.elapsed(),
                            retry_delays: delays,
                            errors,
                            cached: false,
                        },
                    });
                }
                Err((kind, retry_after)) => {
                    inner.stats.record_error(&kind);
                    if !kind.is_endpoint_fault() {
                        // The server answered sensibly (a 4xx, say): it is alive.
                        inner.endpoints.mark_ok(index);
                    } else if inner.endpoints.all().len() > 1
                        && let Some(cooldown) = inner.endpoints.mark_failed(index, policy)
                    {
                        inner.stats.record_set_aside();
                        tracing::warn!(
                            role = %inner.role,
                            endpoint = %ep.base,
                            error = %kind,
                            "replica set aside for {:.1} s: its requests go to the other replicas; one request probes it when the time is up",
                            cooldown.as_secs_f64()
                        );
                    }
                    let miss = matches!(
                        kind,
                        ErrorKind::Http {
                            class: HttpClass::ImageCacheMiss,
                            ..
                        }
                    );
                    if miss && let Some(m) = inner.held.get(index) {
                        let mut m = lock_held(m);
                        images.iter().for_each(|h| m.forget_from(h));
                    }
                    if matches!(kind, ErrorKind::Connect(_))
                        && let Some(m) = inner.held.get(index)
                    {
                        // A connection refused or cut: the server may be restarting.
                        lock_held(m).clear();
                    }
                    let free = miss && !resent_for_miss;
                    resent_for_miss |= miss;
                    let may_change = kind.may_change(deterministic)
                        && (!matches!(kind, ErrorKind::WrongModel { .. })
                            || inner.endpoints.has_other_available(index));
                    if !may_change || (attempt > policy.max_retries && !free) {
                        inner.stats.record_failure();
                        tracing::warn!(role = %inner.role, endpoint = %ep.base, attempts = attempt, error = %kind, "request failed");
                        return Err(self.error(ep.base.clone(), attempt, kind, errors));
                    }
                    let failover = inner.endpoints.is_set_aside(index)
                        && inner.endpoints.has_other_available(index)
                        && retry_after.is_none();
                    let delay = if failover || free {
                        Duration::ZERO
                    } else {
                        backoff_delay(policy, attempt - 1, retry_after, fastrand::f64())
                    };
                    tracing::debug!(role = %inner.role, endpoint = %ep.base, attempt, error = %kind, delay_ms = delay.as_millis() as u64, "retrying");
                    inner.stats.record_retry();
                    errors.push(kind);
                    delays.push(delay);
                    // Held until the outcome is marked, so a probe's flag is settled by the mark;
                    // released before the backoff, so a sleeping retry does not count as load.
                    drop(assignment);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// An endpoint and one of its in-flight slots. A request that waited for the slot of an
    /// endpoint that was set aside meanwhile (it hung, or failed) gives the slot back and is
    /// assigned again, unless it is that endpoint's probe or no other endpoint is available.
    async fn slot(&self, affinity: Option<u64>) -> (Assignment<'_>, priority_semaphore::Permit) {
        let endpoints = &self.inner.endpoints;
        loop {
            let assignment = endpoints.assign_for(affinity);
            let permit = match assignment.try_permit() {
                Some(p) => p,
                None => {
                    self.inner.stats.record_slot_wait();
                    assignment.permit().await
                }
            };
            let index = assignment.index;
            if assignment.is_probe()
                || !endpoints.is_set_aside(index)
                || !endpoints.has_other_available(index)
            {
                return (assignment, permit);
            }
            tracing::debug!(role = %self.inner.role, endpoint = %assignment.endpoint().base, "slot of a replica set aside meanwhile: assigned again");
        }
    }

    async fn attempt(
        &self,
        ep: &Endpoint,
        path: &str,
        payload: bytes::Bytes,
        session: Option<&str>,
    ) -> Result<String, (ErrorKind, Option<Duration>)> {
        let inner = &self.inner;
        let mut rb = inner
            .http
            .post(format!("{}{}", ep.base, path))
            .header(CONTENT_TYPE, "application/json")
            .body(payload);
        if let Some(id) = session {
            rb = rb.header("X-Session-ID", id);
        }
        if let Some(k) = &inner.api_key {
            rb = rb.bearer_auth(&k.0);
        }
        let fut = async {
            let resp = rb
                .send()
                .await
                .map_err(|e| (ErrorKind::Connect(error_chain(&e)), None))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = read_capped(resp).await.map_err(|k| (k, None))?;
            if !(200..300).contains(&status) {
                return Err((wire::http_error(status, &text), retry_after));
            }
            Ok(text)
        };
        let limit = inner.server.timeout();
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err((ErrorKind::Timeout(limit), None)))
    }
}

fn build_limiter(server: &RoleServer) -> Option<DefaultDirectRateLimiter> {
    server.requests_per_second.map(|rps| {
        let period = Duration::from_secs_f64(1.0 / rps).max(Duration::from_nanos(1));
        let burst = std::num::NonZeroU32::new(server.burst.unwrap_or(1))
            .unwrap_or(std::num::NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MAX))
            .allow_burst(burst);
        RateLimiter::direct(quota)
    })
}

/// Whether a chat request samples greedily (temperature 0), so that a healthy server gives the
/// same answer to every attempt.
fn greedy(req: &ChatRequest, server: &RoleServer) -> bool {
    req.temperature.or(server.sampling.temperature) == Some(0.0)
}

fn count_inputs(body: &Value) -> usize {
    body.get("input")
        .and_then(Value::as_array)
        .map_or(1, Vec::len)
}

async fn read_capped(mut resp: reqwest::Response) -> Result<String, ErrorKind> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(ErrorKind::Oversize {
                        limit: MAX_BODY_BYTES,
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ErrorKind::Connect(format!(
                    "reading the answer: {}",
                    error_chain(&e)
                )));
            }
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// An error and its sources, joined: reqwest's top-level message alone hides the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[expect(
    clippy::disallowed_methods,
    reason = "the one place an HTTP client is built"
)]
fn build_http(server: &RoleServer) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(server.timeout().min(Duration::from_secs(10)))
        .pool_max_idle_per_host(server.max_in_flight)
        .user_agent(concat!("imagescope/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_images_forget_the_least_recently_used_first_and_everything_before_a_miss() {
        let mut held = HeldImages(hashlink::LruCache::new(3));
        for h in ["a", "b", "c"] {
            held.insert(h);
        }
        held.insert("a"); // used again: b is now the oldest
        held.insert("d"); // over the cap: b goes
        assert!(!held.contains("b"));
        assert!(["a", "c", "d"].iter().all(|h| held.contains(h)));
        // A miss on "a": it and everything used before it (c) are likely gone from the server.
        held.forget_from("a");
        assert!(!held.contains("a") && !held.contains("c") && held.contains("d"));
        // A hash it never held forgets nothing.
        held.forget_from("zz");
        assert!(held.contains("d"));
        held.clear();
        assert!(!held.contains("d"));
    }
}
