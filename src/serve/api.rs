//! `POST /api/search`: the request and answer types (their OpenAPI schemas come from these
//! definitions) and the search itself: one query run on a task of its own, each stage's end
//! turned into an event; the task is aborted when the answer is dropped (a client gone).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use crate::config::Stage;
use crate::datasets::{ImageKey, Instruction, Query};
use crate::record::{RoundRecord, Status};
use crate::roles::reasoner::Expected;

/// Longest query text or dialogue line, in characters.
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Most dialogue lines (the first describes the photo, each later one is a turn).
pub const MAX_DIALOGUE_LINES: usize = 20;
/// Most results per event.
pub const MAX_K: usize = 100;

/// One search.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What you are looking for; with `reference`, the change to make to that image.
    #[serde(default)]
    pub text: Option<String>,
    /// A gallery image's key (as `/api/images/{key}` takes it): the image `text` edits.
    #[serde(default)]
    pub reference: Option<String>,
    /// A dialogue instead of `text`: the first line describes the photo, each later line adds
    /// a turn ("is it indoors? no").
    #[serde(default)]
    pub dialogue: Option<Vec<String>>,
    /// Stages to run, among the configured ones (default: all of them), e.g. `["s1", "s2"]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub stages: Option<Vec<Stage>>,
    /// Results per event (default: serve's `--top`, 10; at most 100).
    #[serde(default)]
    pub k: Option<usize>,
    /// Stream stage events (default: when the request accepts `text/event-stream`).
    #[serde(default)]
    pub stream: Option<bool>,
}

/// One stage's ranking (SSE event `stage`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StageEvent {
    /// `s1`, `s2` or `s3`; `preview` for the SSE event `preview`: the query's own words searched
    /// at once, before stage 1's reasoning (text queries and dialogues).
    pub stage: String,
    /// The dialogue round (1 for a single query).
    pub round: usize,
    /// Stage 1's target descriptions, searched with.
    pub descriptions: Vec<String>,
    /// Stage 2's propositions ("question -> expected answer"), from stage 2 on.
    pub propositions: Vec<String>,
    /// The ranking after this stage, best first.
    pub results: Vec<ResultRow>,
    /// Since the search started.
    pub elapsed_ms: u64,
}

/// One ranked image.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResultRow {
    /// From 1.
    pub rank: usize,
    /// The gallery key.
    pub key: String,
    /// Stage 1's fused similarity (stages 2 and 3 reorder; they do not rescore).
    pub score: Option<f64>,
    /// Thumbnail URL.
    pub thumb: String,
    /// Full image URL.
    pub full: String,
    /// Stage 2's verdicts on this image, one per proposition (empty before stage 2, or when it
    /// was not verified: beyond the top K).
    pub verdicts: Vec<Verdict>,
    /// Stage 3's decision on this image, when the evaluator looked at it.
    pub accepted: Option<bool>,
}

/// The verifier's answer to one proposition about one image.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Verdict {
    /// The question.
    pub question: String,
    /// The answer the target should give.
    pub expected: String,
    /// The verifier's answer (`None`: its request failed).
    pub answer: Option<bool>,
}

/// The whole answer (`"stream": false`), or the SSE `done` event without `stages`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchAnswer {
    /// `done` or `failed`.
    pub status: String,
    /// Every stage event, in order (empty in the `done` event).
    pub stages: Vec<StageEvent>,
    /// The final ranking.
    pub results: Vec<ResultRow>,
    /// Why it failed (model servers' errors after retries, with the kind).
    pub error: Option<Problem>,
    /// Steps that did not go as asked and what was done instead (a verifier that failed after
    /// retries leaves its verdicts empty and stage 1's order; the search still ends `done`).
    pub fallbacks: Vec<String>,
    /// Model requests sent and answered from the request cache.
    pub requests: u64,
    /// Of which from the cache.
    pub cached: u64,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// An error: what went wrong and how to fix it (SSE event `error`, or a 4xx/5xx body).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A stable kind (`bad-request`, `unauthorized`, `not-found`, `model-server`...).
    pub kind: String,
    /// What happened, where, and what to do.
    pub message: String,
}

/// `/health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Images in the database.
    pub images: usize,
    /// Stages configured.
    pub stages: Vec<String>,
    /// Searches running now.
    pub searches_running: usize,
    /// Whether uploaded photos can be searched from (a captioner answered at start).
    pub uploads: bool,
}

/// A JSON error answer.
pub(crate) fn problem(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(Problem {
            kind: kind.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// A search, checked: the query, the round whose stages are reported, the last stage to run.
pub(crate) struct Plan {
    pub(crate) query: Query,
    /// What to search for at once, embedded as it is, while the reasoner thinks (`preview`).
    pub(crate) preview: Option<String>,
    pub(crate) last_round: usize,
    pub(crate) last_stage: Stage,
    pub(crate) k: usize,
}

fn line(text: &str, what: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("{what} is empty; say what you are looking for"));
    }
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(format!(
            "{what} is longer than {MAX_TEXT_CHARS} characters; shorten it"
        ));
    }
    Ok(t.to_string())
}

/// Checks a request against the session: what it asks, in which stages.
pub(crate) fn plan(
    req: &SearchRequest,
    configured: &[Stage],
    default_k: usize,
    known: impl Fn(&ImageKey) -> bool,
) -> Result<Plan, String> {
    let k = req.k.unwrap_or(default_k.clamp(1, MAX_K));
    if k == 0 || k > MAX_K {
        return Err(format!("k must be between 1 and {MAX_K} (got {k})"));
    }
    let last_stage = match &req.stages {
        None => configured.iter().copied().max().unwrap_or(Stage::S1),
        Some(s) if s.is_empty() => return Err("stages is empty; give at least [\"s1\"]".into()),
        Some(s) => {
            if let Some(x) = s.iter().find(|x| !configured.contains(x)) {
                return Err(format!(
                    "stage {x} is not configured on this server (it runs {}); ask for fewer stages or start serve with an experiment that runs it",
                    configured
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            // A search stops after its last stage: the stages asked for must be the configured
            // ones up to it (asking for S1 and S3 of S1-S3 would run S2 all the same).
            let last = s.iter().copied().max().unwrap_or(Stage::S1);
            let mut asked = s.clone();
            asked.sort();
            asked.dedup();
            let upto: Vec<Stage> = configured.iter().copied().filter(|c| *c <= last).collect();
            if asked != upto {
                return Err(format!(
                    "stages must be the configured ones up to the last you want ({}); got {}",
                    (1..=configured.len())
                        .map(|n| format!(
                            "{:?}",
                            configured[..n]
                                .iter()
                                .map(|s| s.to_string())
                                .collect::<Vec<_>>()
                        ))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    s.iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            last
        }
    };
    let base = |instruction, reference| Query {
        id: "serve".into(),
        reference,
        instruction,
        targets: vec![],
        subset: None,
        aspects: vec![],
        shared_concept: None,
    };
    let (query, last_round) = match (&req.text, &req.dialogue) {
        (Some(_), Some(_)) => return Err("give either text or dialogue, not both".into()),
        (None, None) => return Err("give text (what you look for) or dialogue (its lines)".into()),
        (Some(text), None) => {
            let text = line(text, "text")?;
            let reference = match &req.reference {
                None => None,
                Some(r) => {
                    let key = ImageKey(r.clone());
                    if !known(&key) && r.starts_with(super::uploads::KEY_PREFIX) {
                        return Err(format!(
                            "the upload {r:?} is not (or no longer) kept on this server (uploads past its --uploads-max-mib are removed, those sent longest ago first): upload the photo again (POST /api/uploads) and search with the key it answers"
                        ));
                    }
                    if !known(&key) {
                        return Err(format!(
                            "reference {r:?} is not an image of this gallery or an upload; pick one from the results (its key), or upload a photo (POST /api/uploads)"
                        ));
                    }
                    Some(key)
                }
            };
            (base(Instruction::Text { text }, reference), 1)
        }
        (None, Some(lines)) => {
            if req.reference.is_some() {
                return Err("a dialogue takes no reference image".into());
            }
            if lines.len() > MAX_DIALOGUE_LINES {
                return Err(format!(
                    "the dialogue has {} lines; at most {MAX_DIALOGUE_LINES}",
                    lines.len()
                ));
            }
            let lines = lines
                .iter()
                .enumerate()
                .map(|(i, l)| line(l, &format!("dialogue line {}", i + 1)))
                .collect::<Result<Vec<_>, _>>()?;
            match lines.split_first() {
                None => return Err("the dialogue is empty; describe the photo".into()),
                // One line is a description: searched as text.
                Some((only, [])) => (base(Instruction::Text { text: only.clone() }, None), 1),
                Some((caption, turns)) => (
                    base(
                        Instruction::Dialogue {
                            caption: caption.clone(),
                            turns: turns.to_vec(),
                        },
                        None,
                    ),
                    turns.len(),
                ),
            }
        }
    };
    // A text or a dialogue says what the photo shows, so it is searched as it is at once; an edit
    // ("make it red") says nothing of the kind without its reference.
    let preview = match &query.instruction {
        Instruction::Text { text } if query.reference.is_none() => Some(text.clone()),
        Instruction::Text { .. } => None,
        Instruction::Dialogue { caption, turns } => Some(
            std::iter::once(caption.as_str())
                .chain(turns.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(". "),
        ),
    };
    Ok(Plan {
        query,
        preview,
        last_round,
        last_stage,
        k,
    })
}

/// A gallery key as a path segment of `/api/images/`.
pub(crate) fn image_url(key: &ImageKey) -> String {
    // Form encoding writes a space as '+' and a '+' as %2B, so '+' → %20 makes it a path
    // segment's encoding ('/' included, as %2F).
    let enc: String = url::form_urlencoded::byte_serialize(key.as_str().as_bytes()).collect();
    format!("/api/images/{}", enc.replace('+', "%20"))
}

/// The event of `round` after `stage`, its first `k` images.
pub(crate) fn event(
    round: &RoundRecord,
    stage: Stage,
    k: usize,
    started: Instant,
) -> Option<StageEvent> {
    let s1 = round.s1.as_ref()?;
    let ranking = round.ranking_after(stage)?;
    let scores: std::collections::HashMap<&ImageKey, f32> = s1
        .ranking
        .iter()
        .zip(&s1.scores)
        .map(|(k, v)| (k, *v))
        .collect();
    let s2 = round.s2.as_ref().filter(|_| stage >= Stage::S2);
    let s3 = round.s3.as_ref().filter(|_| stage >= Stage::S3);
    let expected = |e: &Expected| match e {
        Expected::Yes => "yes".to_string(),
        Expected::No => "no".to_string(),
        Expected::Other(o) => o.clone(),
    };
    let results = ranking
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, key)| {
            let verdicts = s2
                .and_then(|s2| {
                    let c = s2.candidates.iter().position(|c| c == key)?;
                    let row = s2.verdicts.get(c)?;
                    Some(
                        s2.propositions
                            .iter()
                            .zip(row)
                            .map(|(p, v)| Verdict {
                                question: p.question.clone(),
                                expected: expected(&p.expected),
                                answer: v.yes,
                            })
                            .collect(),
                    )
                })
                .unwrap_or_default();
            let accepted = s3.and_then(|s3| {
                s3.decisions
                    .iter()
                    .find(|d| &d.candidate == key)
                    .and_then(|d| d.accepted)
            });
            let url = image_url(key);
            ResultRow {
                rank: i + 1,
                key: key.as_str().to_string(),
                score: scores.get(key).map(|v| (f64::from(*v) * 1e4).round() / 1e4),
                full: format!("{url}/full"),
                thumb: url,
                verdicts,
                accepted,
            }
        })
        .collect();
    Some(StageEvent {
        stage: stage.to_string(),
        round: round.round,
        descriptions: s1.descriptions.clone(),
        propositions: s2
            .map(|s| {
                s.propositions
                    .iter()
                    .map(|p| format!("{} -> {}", p.question, expected(&p.expected)))
                    .collect()
            })
            .unwrap_or_default(),
        results,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// What a search task says.
pub(crate) enum Message {
    Preview(StageEvent),
    Stage(StageEvent),
    Done(SearchAnswer),
}

/// Aborts the search task when the answer (stream or handler) is dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts a running search while it lives.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Running(n)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A search let in: counted among those running or waiting until its task ends (or is dropped
/// before it starts).
pub(crate) struct Admission {
    /// Held for its `Drop`, which gives the place back.
    _place: Running,
}

/// Lets a search in, or answers 503 when `QUEUE_FACTOR` times the searches allowed at once are
/// already running or waiting. The place is taken before it is checked, so searches arriving
/// together cannot all slip past the bound.
pub(crate) fn admit(state: &AppState) -> Result<Admission, Box<Response>> {
    let allowed = state.session.ctx.params.queries_in_flight.max(1);
    let limit = allowed.saturating_mul(super::QUEUE_FACTOR);
    let place = Running::new(state.admitted.clone());
    if state.admitted.load(Ordering::SeqCst) <= limit {
        return Ok(Admission { _place: place });
    }
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        &format!(
            "{limit} searches are already running or waiting ({allowed} at once, queries_in_flight); try again in a moment"
        ),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    Err(Box::new(r))
}

/// Starts `plan` on a task of its own; its messages arrive on the returned channel.
/// With `preview`, the query's own words are searched beside it (for a stream: the whole answer
/// would only wait for it).
pub(crate) fn start(
    state: Arc<AppState>,
    plan: Plan,
    admission: Admission,
    preview: bool,
    hold: Option<super::uploads::UploadHold>,
) -> (tokio::sync::mpsc::UnboundedReceiver<Message>, AbortOnDrop) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let _admitted = admission;
        let _hold = hold;
        let started = Instant::now();
        // Searches beyond the bound wait here, not in the model servers' queues.
        let Ok(_permit) = state.searches.clone().acquire_owned().await else {
            return;
        };
        let _running = Running::new(state.running.clone());
        let events = std::sync::Mutex::new(Vec::new());
        let staged = std::sync::atomic::AtomicBool::new(false);
        let landed = tokio::sync::Notify::new();
        let observe = |stage: Stage, round: &RoundRecord| -> bool {
            // Earlier dialogue rounds only carry their description forward: stage 1 is enough.
            if round.round != plan.last_round {
                return false;
            }
            staged.store(true, Ordering::SeqCst);
            landed.notify_one();
            if let Some(ev) = event(round, stage, plan.k, started) {
                if let Ok(mut all) = events.lock() {
                    all.push(ev.clone());
                }
                let _ = tx.send(Message::Stage(ev));
            }
            stage < plan.last_stage
        };
        // The preview: the query's own words embedded and searched, stage 1's search without its
        // reasoning (as clip-retrieval answers), shown until stage 1 lands. Never after it.
        let preview_counts = std::sync::Mutex::new((0u32, 0u32));
        let preview_search = async {
            let Some(text) = plan.preview.as_ref().filter(|_| preview) else {
                return;
            };
            let input = crate::pipeline::stage1::RoundInput {
                round: 0,
                instruction: text.clone(),
                reference_description: text.clone(),
                reference: None,
                subset: None,
                caption_only: true,
                rank_target: None,
            };
            let mut tally = crate::pipeline::context::Tally::default();
            let got = crate::pipeline::stage1::run(&state.session.ctx, &input, &mut tally).await;
            if let Ok(mut c) = preview_counts.lock() {
                *c = (tally.requests, tally.cached);
            }
            let Ok(s1) = got else {
                return;
            };
            let round = RoundRecord {
                round: 0,
                instruction: text.clone(),
                reference_description: text.clone(),
                s1: Some(s1),
                s2: None,
                s3: None,
            };
            if let Some(mut ev) = event(&round, Stage::S1, plan.k, started)
                && !staged.load(Ordering::SeqCst)
            {
                ev.stage = "preview".into();
                let _ = tx.send(Message::Preview(ev));
            }
        };
        // The preview is dropped as soon as stage 1 lands, and so is a preview still running when
        // the search ends: the answer never waits for it.
        let record = {
            let main = crate::pipeline::query::run_observed(
                &state.session.ctx,
                &plan.query,
                Some(&observe),
            );
            tokio::pin!(main);
            tokio::pin!(preview_search);
            let mut previewing = preview && plan.preview.is_some();
            loop {
                tokio::select! {
                    record = &mut main => break record,
                    () = &mut preview_search, if previewing => previewing = false,
                    () = landed.notified(), if previewing => previewing = false,
                }
            }
        };
        let (preview_requests, preview_cached) =
            preview_counts.lock().map(|c| *c).unwrap_or_default();
        let stages = events.into_inner().unwrap_or_default();
        let failed = record.status == Status::Failed;
        let answer = SearchAnswer {
            status: if failed { "failed" } else { "done" }.into(),
            results: stages.last().map(|e| e.results.clone()).unwrap_or_default(),
            stages,
            error: failed.then(|| Problem {
                kind: record
                    .failure_kind
                    .clone()
                    .unwrap_or_else(|| "model-server".into()),
                message: format!(
                    "the search failed: {} (check the model servers with `imagescope doctor`)",
                    record.error.clone().unwrap_or_default()
                ),
            }),
            fallbacks: record
                .fallbacks
                .iter()
                .map(|f| format!("{} (round {}): {}; {}", f.step, f.round, f.reason, f.action))
                .collect(),
            requests: u64::from(record.requests) + u64::from(preview_requests),
            cached: u64::from(record.cached) + u64::from(preview_cached),
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        let _ = tx.send(Message::Done(answer));
    });
    (rx, AbortOnDrop(task))
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// `POST /api/search`.
#[utoipa::path(
    post,
    path = "/api/search",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "The final answer (`stream: false`); with `text/event-stream`, SSE events `stage` (StageEvent), then `done` (SearchAnswer) or `error` (Problem)", body = SearchAnswer),
        (status = 400, description = "The request is not a valid search", body = Problem),
        (status = 401, description = "A token is required", body = Problem),
        (status = 413, description = "The body is too large"),
        (status = 502, description = "The model servers failed after retries", body = SearchAnswer),
    )
)]
pub(crate) async fn search(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<SearchRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            let status = e.status();
            let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too-large"
            } else {
                "bad-request"
            };
            return problem(
                status,
                kind,
                &format!(
                    "the search request was refused: {} (the shape is in /openapi.json)",
                    e.body_text()
                ),
            );
        }
    };
    let ctx = &state.session.ctx;
    // Held from before the reference is checked until the search ends: the upload it names is
    // not removed to stay within the allowance meanwhile.
    let hold = req
        .reference
        .as_deref()
        .and_then(|r| super::uploads::UploadHold::new(&state, r));
    let plan = match plan(&req, &ctx.params.stages, state.top, |k| {
        state.can_reference(k)
    }) {
        Ok(p) => p,
        Err(why) => return problem(StatusCode::BAD_REQUEST, "bad-request", &why),
    };
    let admission = match admit(&state) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let stream = req.stream.unwrap_or_else(|| accepts_sse(&headers));
    let (mut rx, guard) = start(state.clone(), plan, admission, stream, hold);
    if stream {
        let events =
            futures::stream::unfold((rx, guard, false), |(mut rx, guard, ended)| async move {
                if ended {
                    return None;
                }
                let Some(message) = rx.recv().await else {
                    // The task ended without its answer (a bug): say so rather than end in silence.
                    let event = Event::default().event("error").json_data(Problem {
                        kind: "internal".into(),
                        message: "the search ended without an answer (a bug: please report it)"
                            .into(),
                    });
                    let event = event
                        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
                    return Some((Ok::<_, Infallible>(event), (rx, guard, true)));
                };
                let done = matches!(message, Message::Done(_));
                let event = match message {
                    Message::Preview(ev) => Event::default().event("preview").json_data(&ev),
                    Message::Stage(ev) => Event::default().event("stage").json_data(&ev),
                    Message::Done(answer) if answer.error.is_some() => {
                        Event::default().event("error").json_data(&answer.error)
                    }
                    Message::Done(answer) => {
                        Event::default().event("done").json_data(&SearchAnswer {
                            stages: vec![],
                            ..answer
                        })
                    }
                };
                let event =
                    event.unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
                Some((Ok::<_, Infallible>(event), (rx, guard, done)))
            });
        return Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    // Not streamed: the guard lives in this handler, which hyper drops when the client goes.
    let _guard = guard;
    while let Some(m) = rx.recv().await {
        if let Message::Done(answer) = m {
            let status = if answer.error.is_some() {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            };
            return (status, Json(answer)).into_response();
        }
    }
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the search ended without an answer (a bug: please report it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> SearchRequest {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn plans_text_composed_and_dialogue_queries() {
        let all = [Stage::S1, Stage::S2, Stage::S3];
        let known = |k: &ImageKey| k.as_str() == "a.jpg";
        let p = plan(
            &req(serde_json::json!({"text": " red bus "})),
            &all,
            12,
            known,
        );
        let p = p.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.last_round, p.last_stage, p.k), (1, Stage::S3, 12));
        assert!(matches!(&p.query.instruction, Instruction::Text { text } if text == "red bus"));
        let p = plan(
            &req(
                serde_json::json!({"text": "make it red", "reference": "a.jpg", "stages": ["s1"]}),
            ),
            &all,
            12,
            known,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.query.reference, Some(ImageKey("a.jpg".into())));
        assert_eq!(p.last_stage, Stage::S1);
        let p = plan(
            &req(serde_json::json!({"dialogue": ["a dog", "is it black? yes", "indoors? no"]})),
            &all,
            12,
            known,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.last_round, 2);
        // Stages stop after the last one asked for, so a gap cannot be honoured.
        let gap = plan(
            &req(serde_json::json!({"text": "x", "stages": ["s1", "s3"]})),
            &all,
            12,
            known,
        );
        assert!(gap.err().unwrap_or_default().contains("up to the last"));
        let p = plan(&req(serde_json::json!({"text": "x"})), &all, 7, known);
        assert_eq!(p.map(|p| p.k).ok(), Some(7));
    }

    #[test]
    fn refuses_what_it_cannot_answer_saying_why() {
        let s1 = [Stage::S1];
        let known = |_: &ImageKey| false;
        for (body, says) in [
            (serde_json::json!({}), "give text"),
            (serde_json::json!({"text": "  "}), "empty"),
            (
                serde_json::json!({"text": "x", "reference": "../../etc/passwd"}),
                "not an image of this gallery",
            ),
            (
                serde_json::json!({"text": "x", "stages": ["s2"]}),
                "not configured",
            ),
            (serde_json::json!({"text": "x", "stages": []}), "empty"),
            (serde_json::json!({"text": "x", "k": 0}), "k must be"),
            (
                serde_json::json!({"text": "x", "dialogue": ["y"]}),
                "either",
            ),
            (serde_json::json!({"dialogue": []}), "empty"),
            (
                serde_json::json!({"text": "x".repeat(MAX_TEXT_CHARS + 1)}),
                "longer",
            ),
        ] {
            let got = plan(&req(body.clone()), &s1, 12, known)
                .err()
                .unwrap_or_default();
            assert!(got.contains(says), "{body}: {got}");
        }
    }

    #[test]
    fn image_urls_keep_a_key_in_one_path_segment() {
        assert_eq!(
            image_url(&ImageKey("photos/a b.jpg".into())),
            "/api/images/photos%2Fa%20b.jpg"
        );
    }
}
