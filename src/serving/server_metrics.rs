//! What the model servers say about their own work during a run: each endpoint's Prometheus
//! `/metrics` page (vLLM's `vllm:` series) read when the run starts and when it ends, and its
//! gauges sampled every few seconds in between, turned into per-role figures: prompt tokens,
//! prefix-cache and multimodal-cache hits, generation tokens, queue time, preemptions, KV-cache use
//! and requests running and waiting, with advice on `max_in_flight`.
//!
//! Counters are the server's own totals, so on a server shared with other clients they count
//! everyone's work; the per-request `usage.prompt_tokens_details.cached_tokens` that the role
//! counters sum (`StatsSnapshot::cached_prompt_tokens`) is this run's alone. A series a server does
//! not export stays `None` and reads "not reported", never 0.
//!
//! The page is read by [`samples`], a small reader of the text format's sample lines, not a crate:
//! `prometheus-parse` 0.2.5 matches metric names with `\w+` and so drops every `vllm:` series (a
//! colon is legal in Prometheus names), `prom_text_format_parser` 0.1.0 unwraps its float parses
//! (a panic on a server's odd value), and `openmetrics-parser` is LGPL-3.0. Only the series named
//! here are kept; a line it cannot read is skipped (tests/fuzz.rs feeds it generated pages).
//! Where vLLM exports a series under its old name too (`gpu_` prefixes, 0.9.x), the new name wins.
//!
//! An endpoint that is vLLM's router (`vllm-router`) is read through its workers: the router's own
//! `/metrics` forwards to one worker, picked per request like any other request (seen on
//! vllm-router 0.1.17), so two reads of it may come from two servers. The router lists its workers
//! at `GET /list_workers` (`{"urls": [...]}`); when an endpoint answers that, each listed worker's
//! `/metrics` is read instead, with the role's API key. Workers the client cannot reach (a
//! cluster's internal addresses) read as not reported; a role's `metrics_urls` names the pages
//! to read when neither way fits (another router, other addresses).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RoleClient;

/// A counter or gauge this module reads, by the names vLLM has used for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Series {
    PromptTokens,
    GenerationTokens,
    PrefixQueries,
    PrefixHits,
    OldPrefixQueries,
    OldPrefixHits,
    PromptTokensCached,
    MmQueries,
    MmHits,
    Preemptions,
    KvUsage,
    OldKvUsage,
    Running,
    Waiting,
}

impl Series {
    /// The series a metric name stands for: vLLM ≥ 0.9 names, and the `gpu_` ones before them.
    fn of(name: &str) -> Option<Series> {
        Some(match name {
            "vllm:prompt_tokens_total" => Series::PromptTokens,
            "vllm:generation_tokens_total" => Series::GenerationTokens,
            "vllm:prefix_cache_queries_total" => Series::PrefixQueries,
            "vllm:prefix_cache_hits_total" => Series::PrefixHits,
            "vllm:gpu_prefix_cache_queries_total" => Series::OldPrefixQueries,
            "vllm:gpu_prefix_cache_hits_total" => Series::OldPrefixHits,
            "vllm:prompt_tokens_cached_total" => Series::PromptTokensCached,
            "vllm:mm_cache_queries_total" => Series::MmQueries,
            "vllm:mm_cache_hits_total" => Series::MmHits,
            "vllm:num_preemptions_total" => Series::Preemptions,
            "vllm:kv_cache_usage_perc" => Series::KvUsage,
            "vllm:gpu_cache_usage_perc" => Series::OldKvUsage,
            "vllm:num_requests_running" => Series::Running,
            "vllm:num_requests_waiting" => Series::Waiting,
            _ => return None,
        })
    }
}

/// The series of one `/metrics` page that concern one served model, summed over engines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    values: BTreeMap<Series, f64>,
    /// `vllm:request_queue_time_seconds` buckets: (upper bound, cumulative count), ascending.
    queue: Vec<(f64, f64)>,
}

impl Reading {
    /// The value read for a metric name this module knows (`vllm:prompt_tokens_total`, ...).
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.values.get(&Series::of(metric)?).copied()
    }

    /// Whether the page had any series this module reads.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.queue.is_empty()
    }
}

/// One sample line of a Prometheus text page: its metric name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleLine<'a> {
    /// Metric name (with any `_bucket`/`_total` suffix, as written).
    pub name: &'a str,
    /// Label pairs, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

/// The sample lines of a Prometheus text page that can be read; comments (`# HELP`, `# TYPE`)
/// and lines that are not samples are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = SampleLine<'_>> {
    text.lines().filter_map(sample_line)
}

fn sample_line(line: &str) -> Option<SampleLine<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            while chars
                .peek()
                .is_some_and(|(_, c)| *c == ',' || c.is_whitespace())
            {
                chars.next();
            }
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let key = inner[start..eq?].trim();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(SampleLine {
        name,
        labels,
        value,
    })
}

/// Reads a Prometheus text page: the series for `served` (samples labelled with another
/// `model_name` are left out; unlabelled ones are kept), summed over engines.
pub fn read_page(text: &str, served: &str) -> Reading {
    let mut out = Reading::default();
    let mut queue: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples(text) {
        let label = |k: &str| {
            s.labels
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        if label("model_name").is_some_and(|m| m != served) || !s.value.is_finite() {
            continue;
        }
        if let Some(series) = Series::of(s.name) {
            let v = out.values.entry(series).or_default();
            if matches!(series, Series::KvUsage | Series::OldKvUsage) {
                // A share per engine: the fullest one, not their sum.
                *v = v.max(s.value);
            } else {
                *v += s.value;
            }
        } else if s.name == "vllm:request_queue_time_seconds_bucket" {
            let le = match label("le") {
                Some("+Inf" | "Inf") => f64::INFINITY,
                Some(v) => match v.parse::<f64>() {
                    Ok(x) if !x.is_nan() => x,
                    _ => continue,
                },
                None => continue,
            };
            queue.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
    }
    out.queue = queue.into_values().collect();
    out.queue.sort_by(|a, b| a.0.total_cmp(&b.0));
    // The old names stand in only where the new ones are missing.
    for (old, new) in [
        (Series::OldPrefixQueries, Series::PrefixQueries),
        (Series::OldPrefixHits, Series::PrefixHits),
        (Series::OldKvUsage, Series::KvUsage),
    ] {
        if let Some(v) = out.values.remove(&old) {
            out.values.entry(new).or_insert(v);
        }
    }
    out
}

/// An upper bound on the `q` quantile of a cumulative histogram: the upper bound of the bucket
/// that holds it (the open last bucket answers its lower bound, so there it is a lower bound:
/// the quantile is past vLLM's largest bucket, 960 s). Not interpolated: with vLLM's
/// buckets (0.3 s, 0.5 s, ...) interpolation would report 0.15 s for queues that were all under
/// a millisecond. `None` when empty.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = 0.0;
    for &(upper, count) in buckets {
        if count >= rank {
            return Some(if upper.is_infinite() { lower } else { upper });
        }
        lower = upper;
    }
    Some(lower)
}

/// One role's server figures for a run (every endpoint together).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerFigures {
    /// Servers whose `/metrics` page was read at the start and the end, of `servers`.
    pub endpoints_read: usize,
    /// The role's endpoints.
    pub endpoints: usize,
    /// The servers behind them: the endpoints themselves, or a router's workers in its place.
    pub servers: usize,
    /// Of `servers`, the workers listed by vLLM routers among the endpoints.
    pub router_workers: usize,
    /// Prompt tokens the servers processed (`vllm:prompt_tokens_total`).
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens looked up in the prefix cache, and found there.
    pub prefix_cache_queries: Option<u64>,
    /// Prefix-cache hits, in tokens.
    pub prefix_cache_hits: Option<u64>,
    /// Hits ÷ queries.
    pub prefix_cache_hit_rate: Option<f64>,
    /// Prompt tokens served from any cache (`vllm:prompt_tokens_cached_total`, newer vLLM).
    pub prompt_tokens_cached: Option<u64>,
    /// Multimodal items (images) looked up in the encoder cache, and found there.
    pub mm_cache_queries: Option<u64>,
    /// Multimodal-cache hits.
    pub mm_cache_hits: Option<u64>,
    /// Hits ÷ queries.
    pub mm_cache_hit_rate: Option<f64>,
    /// Tokens generated.
    pub generation_tokens: Option<u64>,
    /// Requests preempted (the KV cache ran out).
    pub preemptions: Option<u64>,
    /// Median time a request waited in the server's queue, seconds, as the upper bound of its
    /// histogram bucket (at most this long).
    pub queue_p50_s: Option<f64>,
    /// 95th percentile of the same, likewise an upper bound.
    pub queue_p95_s: Option<f64>,
    /// Gauge samples taken during the run.
    pub samples: usize,
    /// The highest KV-cache use seen, 0-1.
    pub kv_cache_peak: Option<f64>,
    /// Requests running, on average over the samples (all endpoints together).
    pub running_mean: Option<f64>,
    /// Requests waiting in the servers' queues, on average over the samples.
    pub waiting_mean: Option<f64>,
    /// Servers whose counters went backwards (restarted during the run): counted from zero.
    pub restarted: usize,
    /// What to change, if anything.
    pub advice: Vec<String>,
}

/// The counters (as opposed to gauges) whose run figure is their growth.
const COUNTERS: [Series; 8] = [
    Series::PromptTokens,
    Series::GenerationTokens,
    Series::PrefixQueries,
    Series::PrefixHits,
    Series::PromptTokensCached,
    Series::MmQueries,
    Series::MmHits,
    Series::Preemptions,
];

fn rate(hits: Option<u64>, queries: Option<u64>) -> Option<f64> {
    match (hits, queries) {
        (Some(h), Some(q)) if q > 0 => Some(h as f64 / q as f64),
        _ => None,
    }
}

/// What the client saw of its own limit, for the advice.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientSide {
    /// The role's endpoints (0: one per page read).
    pub endpoints: usize,
    /// The role's `max_in_flight` per endpoint.
    pub max_in_flight: usize,
    /// Requests sent.
    pub attempts: u64,
    /// Requests that found every slot of their endpoint taken and waited.
    pub slot_waits: u64,
}

/// The figures of one role from its endpoints' readings at the start and the end of the run
/// (`None` where a page could not be read) and the gauge samples taken between.
pub fn figures(
    start: &[Option<Reading>],
    end: &[Option<Reading>],
    samples: &[Vec<Option<Reading>>],
    client: ClientSide,
) -> ServerFigures {
    let mut f = ServerFigures {
        endpoints: if client.endpoints > 0 {
            client.endpoints
        } else {
            start.len()
        },
        servers: start.len(),
        ..Default::default()
    };
    let mut sums: BTreeMap<Series, f64> = BTreeMap::new();
    let mut queue: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (a, b) in start.iter().zip(end) {
        let (Some(a), Some(b)) = (a, b) else { continue };
        if b.is_empty() {
            continue;
        }
        f.endpoints_read += 1;
        // A server restarted during the run: any counter or bucket went down. Then every figure
        // of that endpoint counts from zero (its end values), none from its old start.
        let before: BTreeMap<u64, f64> = a.queue.iter().map(|(u, c)| (u.to_bits(), *c)).collect();
        let restarted = COUNTERS
            .iter()
            .any(|s| matches!((a.values.get(s), b.values.get(s)), (Some(x), Some(y)) if y < x))
            || b.queue
                .iter()
                .any(|(u, c)| before.get(&u.to_bits()).is_some_and(|x| c < x));
        for s in COUNTERS {
            let (start, end) = (a.values.get(&s), b.values.get(&s));
            let d = match (start, end) {
                (_, Some(e)) if restarted => Some(*e),
                (Some(x), Some(e)) => Some(e - x),
                _ => None,
            };
            if let Some(d) = d {
                *sums.entry(s).or_default() += d;
            }
        }
        for (u, c) in &b.queue {
            let was = if restarted {
                0.0
            } else {
                before.get(&u.to_bits()).copied().unwrap_or(0.0)
            };
            queue.entry(u.to_bits()).or_insert((*u, 0.0)).1 += c - was;
        }
        f.restarted += usize::from(restarted);
    }
    let count = |s: Series| sums.get(&s).map(|v| v.round() as u64);
    f.prompt_tokens = count(Series::PromptTokens);
    f.generation_tokens = count(Series::GenerationTokens);
    f.prefix_cache_queries = count(Series::PrefixQueries);
    f.prefix_cache_hits = count(Series::PrefixHits);
    f.prefix_cache_hit_rate = rate(f.prefix_cache_hits, f.prefix_cache_queries);
    f.prompt_tokens_cached = count(Series::PromptTokensCached);
    f.mm_cache_queries = count(Series::MmQueries);
    f.mm_cache_hits = count(Series::MmHits);
    f.mm_cache_hit_rate = rate(f.mm_cache_hits, f.mm_cache_queries);
    f.preemptions = count(Series::Preemptions);
    let mut buckets: Vec<(f64, f64)> = queue.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    f.queue_p50_s = histogram_quantile(0.5, &buckets);
    f.queue_p95_s = histogram_quantile(0.95, &buckets);

    // Gauges: per sample, the sum over the endpoints that reported it.
    let per_sample = |s: Series| -> Vec<f64> {
        samples
            .iter()
            .filter_map(|tick| {
                let vals: Vec<f64> = tick
                    .iter()
                    .flatten()
                    .filter_map(|r| r.values.get(&s).copied())
                    .collect();
                (!vals.is_empty()).then(|| vals.iter().sum())
            })
            .collect()
    };
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    f.samples = samples.len();
    f.kv_cache_peak = samples
        .iter()
        .flatten()
        .flatten()
        .filter_map(|r| r.values.get(&Series::KvUsage).copied())
        .reduce(f64::max);
    let running = per_sample(Series::Running);
    f.running_mean = mean(&running);
    f.waiting_mean = mean(&per_sample(Series::Waiting));
    f.advice = advice(&f, &running, client);
    f
}

/// The advice on `max_in_flight` the figures support, if any.
fn advice(f: &ServerFigures, running: &[f64], client: ClientSide) -> Vec<String> {
    let mut out = Vec::new();
    let endpoints = f.endpoints.max(1) as f64;
    if f.preemptions.is_some_and(|p| p > 0) {
        out.push(format!(
            "the servers preempted {} requests (their KV cache ran out): lower max_in_flight, or give the servers more KV-cache memory",
            f.preemptions.unwrap_or(0)
        ));
    }
    if let Some(w) = f.waiting_mean
        && w >= 1.0
    {
        out.push(format!(
            "the servers kept {w:.1} requests waiting on average (queue p95 {}): they run fewer at once than imagescope sends; lower max_in_flight to what they run (--max-num-seqs), so waiting happens in imagescope, where a run's earlier queries go first",
            f.queue_p95_s.map_or("not reported".into(), |q| format!("{q:.2} s"))
        ));
    }
    let busy_share = |v: &[f64]| {
        let full = v
            .iter()
            .filter(|r| **r >= 0.9 * client.max_in_flight as f64 * endpoints)
            .count();
        full as f64 / v.len().max(1) as f64
    };
    let waited = client.attempts > 0 && client.slot_waits * 10 >= client.attempts;
    if waited
        && f.waiting_mean.is_some_and(|w| w < 0.5)
        && f.kv_cache_peak.is_none_or(|k| k < 0.9)
        && f.preemptions.is_none_or(|p| p == 0)
        && !running.is_empty()
        && busy_share(running) > 0.5
    {
        out.push(format!(
            "{} of {} requests waited for a free slot in imagescope while the servers had no queue and KV cache to spare (peak {}): raise max_in_flight",
            client.slot_waits,
            client.attempts,
            f.kv_cache_peak.map_or("not reported".into(), |k| format!("{:.0}%", k * 100.0))
        ));
    }
    out
}

/// Most workers read behind one router: a longer list is cut (and says nothing more useful).
const MAX_WORKERS: usize = 64;

/// The worker URLs of vLLM's router's `GET /list_workers` answer (`{"urls": ["http://...", ...]}`),
/// each once, at most [`MAX_WORKERS`]; `None` for any other answer (a vLLM server's 404, a page
/// that is not that shape, a URL that is not plain http(s) with a host, or carries a user name or
/// password).
pub fn router_workers(body: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut urls: Vec<String> = Vec::new();
    for u in v.get("urls")?.as_array()? {
        let text = u.as_str()?.trim_end_matches('/');
        let parsed = reqwest::Url::parse(text).ok()?;
        let plain = matches!(parsed.scheme(), "http" | "https")
            && parsed.host().is_some()
            && parsed.username().is_empty()
            && parsed.password().is_none();
        if !plain {
            return None;
        }
        // The URL as parsed ("http:/host" reads as "http://host"), without its trailing slash.
        let url = parsed.as_str().trim_end_matches('/').to_string();
        if !urls.contains(&url) && urls.len() < MAX_WORKERS {
            urls.push(url);
        }
    }
    Some(urls)
}

/// The pages that stand for endpoint `index`: its own `/metrics`, or each worker's when the
/// endpoint is vLLM's router. The flag says which.
async fn pages_of(client: &RoleClient, index: usize, limit: Duration) -> (Vec<String>, bool) {
    let root = client.endpoint_root(index);
    let listed = tokio::time::timeout(limit, client.get_url(&format!("{root}/list_workers"))).await;
    match listed {
        Ok(Ok((200, body))) => match router_workers(&body) {
            Some(urls) if !urls.is_empty() => {
                (urls.iter().map(|u| format!("{u}/metrics")).collect(), true)
            }
            _ => (vec![format!("{root}/metrics")], false),
        },
        _ => (vec![format!("{root}/metrics")], false),
    }
}

/// Reads one page for `served`; `None` if it cannot be had within `limit`.
async fn scrape(client: &RoleClient, url: &str, limit: Duration) -> Option<Reading> {
    let served = client.server().model.clone();
    match tokio::time::timeout(limit, client.get_url(url)).await {
        Ok(Ok((200, body))) => Some(read_page(&body, &served)),
        _ => None,
    }
}

/// Every page of a role, read at once.
async fn scrape_all(
    client: &RoleClient,
    pages: &[String],
    limit: Duration,
) -> Vec<Option<Reading>> {
    futures::future::join_all(pages.iter().map(|u| scrape(client, u, limit))).await
}

/// A role's readings at the start of a run, and the samples taken since.
struct Watched {
    client: RoleClient,
    /// The `/metrics` URLs read, fixed at the start.
    pages: Vec<String>,
    /// How many of them are router workers.
    router_workers: usize,
    start: Vec<Option<Reading>>,
    samples: Vec<Vec<Option<Reading>>>,
}

/// Reads the servers' pages at the start of a run and samples them until [`Monitor::finish`].
pub struct Monitor {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Watched>>,
}

/// How long one page may take before it counts as not read.
const SCRAPE_LIMIT: Duration = Duration::from_secs(2);

impl Monitor {
    /// Reads every endpoint's page now (the run's start), then samples every `every`.
    pub async fn start(clients: Vec<RoleClient>, every: Duration) -> Monitor {
        // Every role at once, within one limit per step: a server that does not answer delays
        // the run's start by twice SCRAPE_LIMIT at most (the router question, then the page).
        let starts = futures::future::join_all(clients.iter().map(|c| async move {
            let given = &c.server().metrics_urls;
            if !given.is_empty() {
                let start = scrape_all(c, given, SCRAPE_LIMIT).await;
                return (given.clone(), 0, start);
            }
            let n = c.server().endpoints.len();
            let found =
                futures::future::join_all((0..n).map(|i| pages_of(c, i, SCRAPE_LIMIT))).await;
            // Each server once, even when two routers share workers or a worker is an endpoint.
            let mut pages: Vec<String> = Vec::new();
            let mut router_workers = 0;
            for (list, router) in found {
                for p in list {
                    if !pages.contains(&p) {
                        router_workers += usize::from(router);
                        pages.push(p);
                    }
                }
            }
            let start = scrape_all(c, &pages, SCRAPE_LIMIT).await;
            (pages, router_workers, start)
        }))
        .await;
        let mut watched: Vec<Watched> = clients
            .into_iter()
            .zip(starts)
            .map(|(client, (pages, router_workers, start))| Watched {
                client,
                pages,
                router_workers,
                start,
                samples: Vec::new(),
            })
            .collect();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // Roles whose servers answered nothing at the start are not sampled.
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    () = tokio::time::sleep(every) => {}
                }
                let live: Vec<&mut Watched> = watched
                    .iter_mut()
                    .filter(|w| w.start.iter().any(Option::is_some))
                    .collect();
                let ticks = futures::future::join_all(
                    live.iter()
                        .map(|w| scrape_all(&w.client, &w.pages, SCRAPE_LIMIT)),
                );
                // The run's end does not wait for a sample in progress.
                let ticks = tokio::select! {
                    _ = stopped.changed() => break,
                    t = ticks => t,
                };
                for (w, tick) in live.into_iter().zip(ticks) {
                    w.samples.push(tick);
                }
            }
            watched
        });
        Monitor { stop, task }
    }

    /// Reads every page once more (the run's end) and returns each role's figures.
    pub async fn finish(self) -> BTreeMap<String, ServerFigures> {
        let _ = self.stop.send(true);
        let Ok(watched) = self.task.await else {
            return BTreeMap::new();
        };
        let ends = futures::future::join_all(watched.iter().map(|w| async {
            if w.start.iter().any(Option::is_some) {
                scrape_all(&w.client, &w.pages, SCRAPE_LIMIT).await
            } else {
                vec![None; w.start.len()]
            }
        }))
        .await;
        let mut out = BTreeMap::new();
        for (w, end) in watched.into_iter().zip(ends) {
            let stats = w.client.stats().snapshot();
            let client = ClientSide {
                endpoints: w.client.server().endpoints.len(),
                max_in_flight: w.client.server().max_in_flight,
                attempts: stats.attempts,
                slot_waits: stats.slot_waits,
            };
            let mut f = figures(&w.start, &end, &w.samples, client);
            f.router_workers = w.router_workers;
            out.insert(w.client.role().to_string(), f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="verifier"} 1000.0
vllm:prompt_tokens_total{engine="0",model_name="other"} 77.0
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="verifier"} 800.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="verifier"} 200.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="verifier"} 3.0
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.5",model_name="verifier"} 5.0
vllm:request_queue_time_seconds_bucket{engine="0",le="1.0",model_name="verifier"} 9.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="verifier"} 10.0
vllm:request_queue_time_seconds_count{engine="0",model_name="verifier"} 10.0
"#;

    #[test]
    fn a_routers_worker_list_is_read_and_nothing_else_is() {
        let body = r#"{"urls":["http://127.0.0.1:8013","http://10.0.0.2:8003/"]}"#;
        assert_eq!(
            router_workers(body),
            Some(vec![
                "http://127.0.0.1:8013".to_string(),
                "http://10.0.0.2:8003".to_string()
            ])
        );
        assert_eq!(
            router_workers(r#"{"urls":["http://a:1","http://a:1/","http://b:2"]}"#),
            Some(vec!["http://a:1".to_string(), "http://b:2".to_string()]),
            "each worker once"
        );
        // Found by tests/fuzz.rs: a URL is returned as parsed, so only http(s):// comes out.
        assert_eq!(
            router_workers(r#"{"urls":["http:/127.0.0.1:8013"]}"#),
            Some(vec!["http://127.0.0.1:8013".to_string()])
        );
        let many: Vec<String> = (0..100).map(|i| format!("http://w{i}:8000")).collect();
        let body = serde_json::json!({ "urls": many }).to_string();
        assert_eq!(router_workers(&body).map(|u| u.len()), Some(MAX_WORKERS));
        for other in [
            r#"{"detail":"Not Found"}"#,
            r#"{"urls":"http://a"}"#,
            r#"{"urls":[1]}"#,
            r#"{"urls":["file:///etc/passwd"]}"#,
            r#"{"urls":["http://user:pw@evil:80"]}"#,
            r#"{"urls":["http://"]}"#,
            r#"{"urls":["ftp://files:21"]}"#,
            "not json",
        ] {
            assert_eq!(router_workers(other), None, "{other}");
        }
    }

    #[test]
    fn a_page_is_read_for_its_served_model_only() {
        let r = read_page(PAGE, "verifier");
        assert_eq!(r.values[&Series::PromptTokens], 1000.0);
        assert_eq!(r.values[&Series::Waiting], 3.0);
        assert_eq!(r.queue, vec![(0.5, 5.0), (1.0, 9.0), (f64::INFINITY, 10.0)]);
        assert!(read_page(PAGE, "nobody").is_empty());
        assert!(read_page("not a metrics page {{{", "verifier").is_empty());
    }

    #[test]
    fn sample_lines_with_escapes_timestamps_and_junk() {
        let page = "# TYPE x counter\nx_total{a=\"q\\\"uote\",b=\"new\\nline\",} 3 1700000000000\nbad line here\n{no=\"name\"} 1\ny +Inf\nz{a=\"unterminated} 2\n";
        let got: Vec<SampleLine> = samples(page).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "x_total");
        assert_eq!(
            got[0].labels,
            vec![("a", "q\"uote".to_string()), ("b", "new\nline".to_string())]
        );
        assert_eq!(got[0].value, 3.0);
        assert_eq!((got[1].name, got[1].value), ("y", f64::INFINITY));
    }

    #[test]
    fn quantiles_are_the_upper_bounds_of_their_buckets() {
        let b = [(0.5, 5.0), (1.0, 9.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.5, &b), Some(0.5));
        assert_eq!(histogram_quantile(0.7, &b), Some(1.0));
        // The open last bucket answers its lower bound.
        assert_eq!(histogram_quantile(0.99, &b), Some(1.0));
        assert_eq!(histogram_quantile(0.5, &[]), None);
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0)]), None);
    }

    fn reading(pairs: &[(Series, f64)], queue: &[(f64, f64)]) -> Reading {
        Reading {
            values: pairs.iter().copied().collect(),
            queue: queue.to_vec(),
        }
    }

    #[test]
    fn figures_are_deltas_summed_over_endpoints_and_missing_series_are_not_zero() {
        let a0 = reading(
            &[
                (Series::PromptTokens, 100.0),
                (Series::PrefixQueries, 50.0),
                (Series::PrefixHits, 10.0),
            ],
            &[(1.0, 2.0), (f64::INFINITY, 2.0)],
        );
        let a1 = reading(
            &[
                (Series::PromptTokens, 400.0),
                (Series::PrefixQueries, 250.0),
                (Series::PrefixHits, 60.0),
            ],
            &[(1.0, 6.0), (f64::INFINITY, 6.0)],
        );
        // The second endpoint restarted: its counters went back, so they count from zero.
        let b0 = reading(&[(Series::PromptTokens, 1000.0)], &[]);
        let b1 = reading(&[(Series::PromptTokens, 30.0)], &[]);
        let f = figures(
            &[Some(a0), Some(b0), None],
            &[Some(a1), Some(b1), None],
            &[],
            ClientSide::default(),
        );
        assert_eq!((f.endpoints_read, f.endpoints, f.restarted), (2, 3, 1));
        assert_eq!(f.prompt_tokens, Some(330));
        assert_eq!(f.prefix_cache_hits, Some(50));
        assert_eq!(f.prefix_cache_hit_rate, Some(0.25));
        assert_eq!(f.mm_cache_hit_rate, None, "not reported, not 0");
        assert_eq!(f.generation_tokens, None);
        assert!(f.queue_p50_s.unwrap() <= 1.0);
        assert_eq!(f.kv_cache_peak, None);
    }

    #[test]
    fn advice_follows_the_queue_the_preemptions_and_the_idle_capacity() {
        let tick = |running: f64, waiting: f64, kv: f64| {
            vec![Some(reading(
                &[
                    (Series::Running, running),
                    (Series::Waiting, waiting),
                    (Series::KvUsage, kv),
                ],
                &[],
            ))]
        };
        let empty = [Some(Reading::default())];
        let some = [Some(reading(&[(Series::Preemptions, 0.0)], &[]))];
        let client = ClientSide {
            endpoints: 1,
            max_in_flight: 8,
            attempts: 100,
            slot_waits: 40,
        };
        // Queued on the server: lower.
        let f = figures(
            &some,
            &some,
            &[tick(8.0, 5.0, 0.5), tick(8.0, 3.0, 0.5)],
            client,
        );
        assert!(
            f.advice.iter().any(|a| a.contains("lower max_in_flight")),
            "{:?}",
            f.advice
        );
        // Full in the client, idle on the server: raise.
        let f = figures(
            &some,
            &some,
            &[tick(8.0, 0.0, 0.3), tick(8.0, 0.0, 0.4)],
            client,
        );
        assert!(
            f.advice.iter().any(|a| a.contains("raise max_in_flight")),
            "{:?}",
            f.advice
        );
        // Nobody waited in the client: nothing to say.
        let calm = ClientSide {
            slot_waits: 0,
            ..client
        };
        let f = figures(&some, &some, &[tick(2.0, 0.0, 0.1)], calm);
        assert!(f.advice.is_empty(), "{:?}", f.advice);
        // Preempted: lower.
        let pre0 = [Some(reading(&[(Series::Preemptions, 1.0)], &[]))];
        let pre1 = [Some(reading(&[(Series::Preemptions, 4.0)], &[]))];
        let f = figures(&pre0, &pre1, &[], calm);
        assert!(f.advice[0].contains("preempted 3"), "{:?}", f.advice);
        let _ = empty;
    }
}
