//! Per-role traffic counters: attempts, successes, failures, retries, replicas set aside, errors
//! by kind and answer latencies, for run summaries and `doctor`. Latencies go into a fixed-size
//! histogram (two significant digits, 1 µs to an hour), so the counters do not grow with the run.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::errors::ErrorKind;

/// Longest latency told apart, microseconds (an hour); longer ones count as an hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Counters of one role's traffic, shared by every clone of its client.
#[derive(Debug, Default)]
pub struct RoleStats {
    attempts: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    set_aside: AtomicU64,
    cache_hits: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    answers_with_cache_details: AtomicU64,
    slot_waits: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    latencies_us: Mutex<Option<Histogram<u64>>>,
    body_bytes: AtomicU64,
    peak_body_bytes: AtomicU64,
    sent_bytes: AtomicU64,
    images_by_uuid: AtomicU64,
}

/// Request-body bytes held while one attempt is in flight; released on drop.
pub(crate) struct HeldBody<'a> {
    stats: &'a RoleStats,
    bytes: u64,
}

impl Drop for HeldBody<'_> {
    fn drop(&mut self) {
        self.stats
            .body_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StatsSnapshot {
    /// HTTP attempts sent.
    pub attempts: u64,
    /// Calls that ended with a valid answer.
    pub successes: u64,
    /// Calls that ended in an error after retries.
    pub failures: u64,
    /// Retries made.
    pub retries: u64,
    /// Times a replica was set aside.
    pub set_aside: u64,
    /// Answers served from the request cache.
    pub cache_hits: u64,
    /// Prompt tokens reported by the server.
    pub prompt_tokens: u64,
    /// Generated tokens reported by the server.
    pub completion_tokens: u64,
    /// Prompt tokens the server said it served from its cache, summed over this run's own
    /// answers (`usage.prompt_tokens_details.cached_tokens`); `None` when no answer said.
    pub cached_prompt_tokens: Option<u64>,
    /// Requests that found every in-flight slot of their endpoint taken and waited for one.
    pub slot_waits: u64,
    /// Failed attempts by error label.
    pub errors: BTreeMap<String, u64>,
    /// Median latency of successful attempts, milliseconds.
    pub latency_p50_ms: Option<f32>,
    /// 95th percentile latency of successful attempts, milliseconds.
    pub latency_p95_ms: Option<f32>,
    /// The most request-body bytes held at once. Bodies (with images base64-encoded) are built
    /// only once an in-flight slot is free, so this stays near `max_in_flight` bodies however long
    /// the queue of waiting requests is.
    pub peak_body_bytes: u64,
    /// Request-body bytes sent, over every attempt.
    pub sent_bytes: u64,
    /// Images sent by their uuid alone, without their bytes (`image_uuids`).
    pub images_by_uuid: u64,
}

impl StatsSnapshot {
    /// These counters with an earlier invocation's added (a resumed run's totals): counts add,
    /// the peak is the larger; latency percentiles cannot be merged from percentiles, so they
    /// stay this invocation's.
    pub fn plus(mut self, earlier: &StatsSnapshot) -> StatsSnapshot {
        self.attempts += earlier.attempts;
        self.successes += earlier.successes;
        self.failures += earlier.failures;
        self.retries += earlier.retries;
        self.set_aside += earlier.set_aside;
        self.cache_hits += earlier.cache_hits;
        self.prompt_tokens += earlier.prompt_tokens;
        self.completion_tokens += earlier.completion_tokens;
        self.cached_prompt_tokens = match (self.cached_prompt_tokens, earlier.cached_prompt_tokens)
        {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.slot_waits += earlier.slot_waits;
        for (k, v) in &earlier.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.peak_body_bytes = self.peak_body_bytes.max(earlier.peak_body_bytes);
        self.sent_bytes += earlier.sent_bytes;
        self.images_by_uuid += earlier.images_by_uuid;
        self
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RoleStats {
    pub(crate) fn record_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_success(&self, latency: Duration) {
        self.successes.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut h = lock(&self.latencies_us);
        if h.is_none() {
            *h = Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).ok();
        }
        if let Some(h) = h.as_mut() {
            h.saturating_record(us.clamp(1, LATENCY_MAX_US));
        }
    }
    pub(crate) fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_set_aside(&self) {
        self.set_aside.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds token counts reported with an answer.
    pub fn record_tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }
    /// Adds the cached prompt tokens one answer reported.
    pub(crate) fn record_cached_tokens(&self, cached: u64) {
        self.cached_tokens.fetch_add(cached, Ordering::Relaxed);
        self.answers_with_cache_details
            .fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_slot_wait(&self) {
        self.slot_waits.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts a request body sent, and the images in it that went by uuid alone.
    pub(crate) fn record_sent(&self, bytes: usize, by_uuid: usize) {
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.images_by_uuid
            .fetch_add(by_uuid as u64, Ordering::Relaxed);
    }
    /// Counts `bytes` of request body as held until the returned guard drops.
    pub(crate) fn hold_body(&self, bytes: usize) -> HeldBody<'_> {
        let bytes = bytes as u64;
        let now = self.body_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_body_bytes.fetch_max(now, Ordering::Relaxed);
        HeldBody { stats: self, bytes }
    }
    pub(crate) fn record_error(&self, kind: &ErrorKind) {
        *lock(&self.errors).entry(kind.label()).or_default() += 1;
    }

    /// Copies the counters and computes latency percentiles.
    pub fn snapshot(&self) -> StatsSnapshot {
        let (p50, p95) = match lock(&self.latencies_us).as_ref() {
            Some(h) if !h.is_empty() => {
                let ms = |q: f64| Some(h.value_at_quantile(q) as f32 / 1000.0);
                (ms(0.5), ms(0.95))
            }
            _ => (None, None),
        };
        StatsSnapshot {
            attempts: self.attempts.load(Ordering::Relaxed),
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            set_aside: self.set_aside.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            cached_prompt_tokens: (self.answers_with_cache_details.load(Ordering::Relaxed) > 0)
                .then(|| self.cached_tokens.load(Ordering::Relaxed)),
            slot_waits: self.slot_waits.load(Ordering::Relaxed),
            errors: lock(&self.errors).clone(),
            latency_p50_ms: p50,
            latency_p95_ms: p95,
            peak_body_bytes: self.peak_body_bytes.load(Ordering::Relaxed),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
            images_by_uuid: self.images_by_uuid.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recorded_latencies() {
        let s = RoleStats::default();
        for ms in 1..=100 {
            s.record_success(Duration::from_millis(ms));
        }
        s.record_error(&ErrorKind::Timeout(Duration::from_secs(1)));
        let snap = s.snapshot();
        assert_eq!(snap.successes, 100);
        // Two significant digits: each percentile within 1% of the exact one (50 and 95 ms).
        let (p50, p95) = (snap.latency_p50_ms.unwrap(), snap.latency_p95_ms.unwrap());
        assert!((50.0..=50.5).contains(&p50), "{p50}");
        assert!((95.0..=96.0).contains(&p95), "{p95}");
        assert_eq!(snap.errors.get("timeout"), Some(&1));
    }
}
