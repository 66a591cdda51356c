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
//!
//! `page.rs` reads one page, `monitor.rs` reads them during a run; this file turns the readings
//! into a role's figures and advice.

mod monitor;
mod page;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use monitor::{Monitor, router_workers};
use page::Series;
pub use page::{Reading, SampleLine, histogram_quantile, read_page, samples};

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

#[cfg(test)]
mod tests {
    use super::*;
    use page::Series;

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
