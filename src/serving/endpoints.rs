//! Replicas of one role: per-endpoint in-flight limits, least-loaded selection, and setting an
//! unwell endpoint aside until a single probe request shows it is back.
//!
//! Selection rule: among endpoints that are not set aside, the one with the fewest requests
//! assigned (waiting for a permit or in flight); ties go to the lowest index after a rotating
//! offset, so equal replicas share load evenly. When every endpoint is set aside, the one whose
//! cooldown ends first is tried anyway, so requests fail (and retry) instead of hanging.
//!
//! A request that waited for a slot of an endpoint set aside meanwhile (it hung: its in-flight
//! requests timed out) is assigned again once it holds the slot (`RoleClient::call`), so the
//! requests queued behind a hung replica cost one timeout, not one per wave.
//!
//! Requests waiting for an in-flight slot are served by priority, then in arrival order: the
//! requests of work started earlier (`in_order`: a run numbers its queries) go first. In a
//! pipelined run the queries further along thus overtake those just started, reach the busiest
//! server sooner and finish in about the order they began, so new queries are admitted steadily
//! instead of in waves (BENCHMARKS.md, "Scheduling of the shipped run").

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use priority_semaphore::{Permit, Priority, PrioritySemaphore};
use tokio::time::Instant;

use crate::config::RetryPolicy;

use super::retry::set_aside_for;

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    down_until: Option<Instant>,
    probing: bool,
}

/// One server of a role.
#[derive(Debug)]
pub struct Endpoint {
    /// Base URL including the API prefix, without a trailing slash.
    pub base: String,
    permits: Arc<PrioritySemaphore>,
    assigned: AtomicUsize,
    health: Mutex<Health>,
}

impl Endpoint {
    fn new(base: &str, max_in_flight: usize) -> Self {
        Endpoint {
            base: base.trim_end_matches('/').to_string(),
            permits: Arc::new(PrioritySemaphore::new(
                max_in_flight.min(PrioritySemaphore::MAX_PERMITS),
            )),
            assigned: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
        }
    }

    /// Root of the server (the base URL without a trailing `/v1`), where `/health` lives.
    pub fn root(&self) -> &str {
        self.base.strip_suffix("/v1").unwrap_or(&self.base)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A poisoned lock only means another task panicked mid-update; the data is still usable.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The endpoints of one role.
#[derive(Debug)]
pub struct Endpoints {
    list: Vec<Endpoint>,
    rotation: AtomicUsize,
}

/// A request's claim on an endpoint: counts as assigned until dropped.
pub struct Assignment<'a> {
    endpoint: &'a Endpoint,
    /// Index of the endpoint in the role's list.
    pub index: usize,
    /// This is the one probe of a recovering endpoint.
    probe: bool,
}

impl Drop for Assignment<'_> {
    fn drop(&mut self) {
        self.endpoint.assigned.fetch_sub(1, Ordering::Relaxed);
        // A probe dropped before its outcome was marked (its request was cancelled, e.g. a
        // sibling failed inside `try_join_all`) must not leave the endpoint waiting forever for
        // a probe that will never report: the next assignment probes again.
        if self.probe {
            self.endpoint.health().probing = false;
        }
    }
}

impl<'a> Assignment<'a> {
    /// The endpoint.
    pub fn endpoint(&self) -> &'a Endpoint {
        self.endpoint
    }

    /// Whether this is the one probe of a recovering endpoint.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Waits for a free in-flight slot on this endpoint; waiting requests of work started
    /// earlier (`in_order`) go first, the rest in arrival order.
    #[expect(
        clippy::expect_used,
        reason = "the semaphore is owned by the endpoint and never closed"
    )]
    pub async fn permit(&self) -> Permit {
        self.endpoint
            .permits
            .acquire(current_priority())
            .await
            .expect("endpoint semaphore is never closed")
    }
}

tokio::task_local! {
    static PRIORITY: Priority;
}

/// Runs `work` (one query of a run) so that its requests wait ahead of those of work with a
/// larger `order` at every endpoint's in-flight limit. Work outside `in_order` waits behind all
/// of it, first come first served among itself, for as long as ordered work keeps the endpoint
/// full (no ageing): nothing runs beside a run in one process today (`index` and `search` are
/// other commands), so nothing waits there.
pub async fn in_order<F: std::future::Future>(order: usize, work: F) -> F::Output {
    let order = Priority::try_from(order).unwrap_or(Priority::MAX);
    PRIORITY.scope(Priority::MAX - order, work).await
}

/// The priority of the current task's requests (`in_order`).
fn current_priority() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or(Priority::MIN)
}

impl Endpoints {
    /// Endpoints for the given base URLs, each admitting `max_in_flight` requests at once.
    pub fn new(bases: &[String], max_in_flight: usize) -> Self {
        Endpoints {
            list: bases
                .iter()
                .map(|b| Endpoint::new(b, max_in_flight))
                .collect(),
            rotation: AtomicUsize::new(0),
        }
    }

    /// All endpoints.
    pub fn all(&self) -> &[Endpoint] {
        &self.list
    }

    /// Picks the endpoint for the next attempt (see the module doc) and claims it.
    pub fn assign(&self) -> Assignment<'_> {
        let now = Instant::now();
        let n = self.list.len();
        let offset = self.rotation.fetch_add(1, Ordering::Relaxed);
        let order = (0..n).map(|k| (offset + k) % n);
        // An endpoint whose cooldown is over gets exactly one probe request; others wait for it.
        for i in order.clone() {
            let mut h = self.list[i].health();
            if h.down_until.is_some_and(|t| t <= now) && !h.probing {
                h.probing = true;
                drop(h);
                let mut a = self.claim(i);
                a.probe = true;
                return a;
            }
        }
        let mut best: Option<(usize, usize)> = None;
        let mut earliest: Option<(Instant, usize)> = None;
        for i in order {
            let ep = &self.list[i];
            match ep.health().down_until {
                None => {
                    let load = ep.assigned.load(Ordering::Relaxed);
                    if best.is_none_or(|(l, _)| load < l) {
                        best = Some((load, i));
                    }
                }
                Some(t) => {
                    if earliest.is_none_or(|(e, _)| t < e) {
                        earliest = Some((t, i));
                    }
                }
            }
        }
        let i = best
            .map(|(_, i)| i)
            .or(earliest.map(|(_, i)| i))
            .unwrap_or(offset % n.max(1));
        self.claim(i)
    }

    fn claim(&self, index: usize) -> Assignment<'_> {
        let endpoint = &self.list[index];
        endpoint.assigned.fetch_add(1, Ordering::Relaxed);
        Assignment {
            endpoint,
            index,
            probe: false,
        }
    }

    /// Records a success: the endpoint is healthy again. Returns whether it had been set aside
    /// (it is back in service).
    pub fn mark_ok(&self, index: usize) -> bool {
        let mut h = self.list[index].health();
        let was_down = h.down_until.is_some();
        *h = Health::default();
        was_down
    }

    /// Records an endpoint fault: the endpoint is set aside for a cooldown that doubles with each
    /// failed probe. Failures of requests already in flight when it was set aside do not extend it.
    /// Returns the cooldown when this call set it aside.
    pub fn mark_failed(&self, index: usize, policy: &RetryPolicy) -> Option<std::time::Duration> {
        let now = Instant::now();
        let mut h = self.list[index].health();
        if h.down_until.is_some_and(|t| t > now) {
            return None;
        }
        h.consecutive_failures += 1;
        let cooldown = set_aside_for(policy, h.consecutive_failures);
        h.down_until = Some(now + cooldown);
        h.probing = false;
        Some(cooldown)
    }

    /// Whether some endpoint other than `index` is currently available.
    pub fn has_other_available(&self, index: usize) -> bool {
        let now = Instant::now();
        self.list
            .iter()
            .enumerate()
            .any(|(i, ep)| i != index && ep.health().down_until.is_none_or(|t| t <= now))
    }

    /// Base URLs of the endpoints not in service: set aside, or past their cooldown but not yet
    /// shown back by a probe.
    pub fn out_of_service(&self) -> Vec<&str> {
        self.list
            .iter()
            .filter(|ep| ep.health().down_until.is_some())
            .map(|ep| ep.base.as_str())
            .collect()
    }

    /// Whether an endpoint is currently set aside.
    pub fn is_set_aside(&self, index: usize) -> bool {
        self.list[index]
            .health()
            .down_until
            .is_some_and(|t| t > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Endpoints {
        let bases: Vec<String> = (0..n).map(|i| format!("http://h{i}/v1")).collect();
        Endpoints::new(&bases, 4)
    }

    #[test]
    fn least_loaded_spreads_requests() {
        let e = eps(2);
        let a = e.assign();
        let b = e.assign();
        assert_ne!(a.index, b.index);
        drop(a);
        let c = e.assign();
        assert_ne!(c.index, b.index);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_does_not_lock_the_endpoint_out() {
        let e = eps(2);
        let p = RetryPolicy {
            replica_cooldown_ms: 1000,
            ..RetryPolicy::default()
        };
        e.mark_failed(0, &p);
        tokio::time::advance(std::time::Duration::from_millis(1001)).await;
        let probe = e.assign();
        assert_eq!(probe.index, 0);
        assert_eq!(e.assign().index, 1, "one probe at a time");
        // The probe's request is dropped before it reports (cancelled).
        drop(probe);
        assert_eq!(e.assign().index, 0, "the endpoint is probed again");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_endpoint_is_set_aside_then_probed_once() {
        let e = eps(2);
        let p = RetryPolicy {
            replica_cooldown_ms: 1000,
            ..RetryPolicy::default()
        };
        e.mark_failed(0, &p);
        assert!(e.is_set_aside(0));
        for _ in 0..5 {
            assert_eq!(e.assign().index, 1);
        }
        tokio::time::advance(std::time::Duration::from_millis(1001)).await;
        // The first assignment after the cooldown probes endpoint 0; while it runs, 0 gets no more.
        let probe = e.assign();
        assert_eq!(probe.index, 0);
        assert_eq!(e.assign().index, 1);
        e.mark_ok(0);
        drop(probe);
        let spread: Vec<usize> = (0..2).map(|_| e.assign().index).collect();
        assert!(spread.contains(&0));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_failures_do_not_compound_the_cooldown() {
        let e = eps(2);
        let p = RetryPolicy {
            replica_cooldown_ms: 1000,
            ..RetryPolicy::default()
        };
        for _ in 0..10 {
            e.mark_failed(0, &p);
        }
        tokio::time::advance(std::time::Duration::from_millis(1001)).await;
        assert!(!e.is_set_aside(0));
        // A failed probe doubles it.
        assert_eq!(e.assign().index, 0);
        e.mark_failed(0, &p);
        tokio::time::advance(std::time::Duration::from_millis(1500)).await;
        assert!(e.is_set_aside(0));
        tokio::time::advance(std::time::Duration::from_millis(600)).await;
        assert!(!e.is_set_aside(0));
    }

    #[tokio::test(start_paused = true)]
    async fn all_down_still_assigns_the_earliest() {
        let e = eps(2);
        let p = RetryPolicy::default();
        e.mark_failed(1, &p);
        tokio::time::advance(std::time::Duration::from_millis(10)).await;
        e.mark_failed(0, &p);
        assert_eq!(e.assign().index, 1);
    }

    #[test]
    fn root_strips_api_prefix() {
        let e = Endpoints::new(&["http://h:8000/v1/".to_string()], 1);
        assert_eq!(e.all()[0].root(), "http://h:8000");
    }
}
