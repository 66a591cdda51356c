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
//! Affinity: a request about an image (`assign_for` with its key) goes to the healthy endpoint
//! that ranks first for that key by rendezvous (highest-random-weight) hashing, so the requests
//! about one image meet the same server's prefix and encoder caches, and a replica that leaves or
//! returns moves only its own share of images. The rank is bounded: an endpoint already holding
//! as many requests as [`AFFINITY_BOUND`] × (the mean load + 1) and twice its slots (a full
//! set in flight and as many waiting) is passed over for the next in the key's order, so one hot
//! image cannot pile onto one replica.
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
    /// A hash of `base`: the endpoint's name in rendezvous hashing, so reordering the list in the
    /// servers file moves no image.
    id: u64,
    permits: Arc<PrioritySemaphore>,
    assigned: AtomicUsize,
    health: Mutex<Health>,
}

impl Endpoint {
    fn new(base: &str, max_in_flight: usize) -> Self {
        let base = base.trim_end_matches('/').to_string();
        let digest = blake3::hash(base.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_bytes()[..8]);
        Endpoint {
            id: u64::from_le_bytes(first),
            base,
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
    /// In-flight slots of each endpoint.
    slots: usize,
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

    /// A free in-flight slot on this endpoint, if one is free now and nobody waits for it.
    pub fn try_permit(&self) -> Option<Permit> {
        self.endpoint.permits.try_acquire(current_priority()).ok()
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

/// How far above the mean load (plus one request) an endpoint may be and still take the
/// requests of the images that rank it first.
pub const AFFINITY_BOUND: f64 = 1.25;

/// An endpoint's weight for a key: a 64-bit mix of both (SplitMix64's finaliser), so each key
/// orders the endpoints its own way and removing one endpoint keeps every other key's first.
fn rendezvous(key: u64, endpoint: u64) -> u64 {
    let mut z = key ^ endpoint.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The affinity key of an image hash (hex): its first 16 hex digits.
pub fn affinity_key(image_hash: &str) -> Option<u64> {
    u64::from_str_radix(image_hash.get(..16)?, 16).ok()
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
            slots: max_in_flight,
            rotation: AtomicUsize::new(0),
        }
    }

    /// All endpoints.
    pub fn all(&self) -> &[Endpoint] {
        &self.list
    }

    /// Picks the endpoint for the next attempt without an affinity key.
    #[cfg(test)]
    pub fn assign(&self) -> Assignment<'_> {
        self.assign_for(None)
    }

    /// Picks the endpoint for the next attempt (see the module doc) and claims it: with a
    /// request's affinity key (its image's hash), the endpoint the key ranks first among the
    /// healthy ones unless it is over the load bound; without one, the least loaded.
    pub fn assign_for(&self, key: Option<u64>) -> Assignment<'_> {
        if let Some(key) = key
            && self.list.len() > 1
            && let Some(i) = self.by_affinity(key)
        {
            return self.claim(i);
        }
        self.assign_least_loaded()
    }

    /// The healthy endpoint first in `key`'s rendezvous order whose load is within the bound;
    /// `None` if a recovering endpoint is due its probe (least-loaded assignment sends it) or
    /// none is healthy.
    fn by_affinity(&self, key: u64) -> Option<usize> {
        let now = Instant::now();
        let mut healthy = Vec::with_capacity(self.list.len());
        for (i, ep) in self.list.iter().enumerate() {
            let h = ep.health();
            match h.down_until {
                None => healthy.push((rendezvous(key, ep.id), i)),
                Some(t) if t <= now && !h.probing => return None,
                Some(_) => {}
            }
        }
        if healthy.is_empty() {
            return None;
        }
        let load = |i: usize| self.list[i].assigned.load(Ordering::Relaxed);
        let total: usize = healthy.iter().map(|&(_, i)| load(i)).sum();
        // Home keeps an image's requests until it holds more than 1.25 × the mean load (+1) and
        // also a second full set of slots' worth waiting: at low load a replica with a few more
        // requests than an idle one is no overload, and spilling there computes the image again.
        let bound = (AFFINITY_BOUND * (total as f64 / healthy.len() as f64 + 1.0))
            .max((2 * self.slots) as f64);
        healthy.sort_unstable_by_key(|&(w, _)| std::cmp::Reverse(w));
        let home = healthy
            .iter()
            .map(|&(_, i)| i)
            .find(|&i| (load(i) as f64) < bound)
            .unwrap_or(healthy[0].1);
        Some(home)
    }

    fn assign_least_loaded(&self) -> Assignment<'_> {
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

    fn key(i: u64) -> u64 {
        rendezvous(i, 99)
    }

    #[tokio::test(start_paused = true)]
    async fn an_image_keeps_its_replica_and_images_spread_evenly() {
        let e = eps(2);
        let mut first = [0usize; 2];
        for i in 0..2000 {
            let a = e.assign_for(Some(key(i)));
            let again = e.assign_for(Some(key(i)));
            assert_eq!(a.index, again.index, "key {i}");
            first[a.index] += 1;
        }
        assert!(
            first.iter().all(|&n| (800..=1200).contains(&n)),
            "{first:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_set_aside_moves_only_its_own_images() {
        let e = eps(3);
        let before: Vec<usize> = (0..300).map(|i| e.assign_for(Some(key(i))).index).collect();
        let p = RetryPolicy {
            replica_cooldown_ms: 60_000,
            ..RetryPolicy::default()
        };
        e.mark_failed(2, &p);
        for (i, &was) in before.iter().enumerate() {
            let now = e.assign_for(Some(key(i as u64))).index;
            assert_ne!(now, 2);
            if was != 2 {
                assert_eq!(now, was, "key {i} moved though its replica is healthy");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_hot_image_spills_past_the_load_bound() {
        let e = eps(2);
        let k = key(7);
        let home = e.assign_for(Some(k)).index;
        // Hold the requests of one image: past 1.25 × (mean + 1) the next go elsewhere.
        let held: Vec<_> = (0..20).map(|_| e.assign_for(Some(k))).collect();
        let at_home = held.iter().filter(|a| a.index == home).count();
        assert!((10..20).contains(&at_home), "{at_home} of 20 at home");
        // Without a key: least-loaded, as before.
        let other = 1 - home;
        let loads = |i: usize| e.list[i].assigned.load(Ordering::Relaxed);
        if loads(other) != loads(home) {
            let lighter = if loads(other) < loads(home) {
                other
            } else {
                home
            };
            assert_eq!(e.assign().index, lighter);
        }
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
