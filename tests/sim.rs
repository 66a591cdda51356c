//! A seeded fault simulator: the real prepare → drive → finish (and resume), in process, over
//! worlds of each task shape — composed queries (CIRR), text-to-image (Flickr30K) and dialogue
//! (VisDial) — served by fake model servers (TEST DOUBLES: they run no model) with two reasoner
//! replicas, under schedules drawn from one seed each: random but valid limits, retries, queries
//! in flight and stages; seeded faults on every fake (5xx, 429 with and without Retry-After, a
//! body that is not JSON or cut in half, an empty answer, an answer of the wrong shape, a slow
//! answer, a hang past the timeout); a replica (a reasoner, or the one verifier) that dies or
//! hangs after some queries and comes back after some more; and the run stopped after a random
//! number of finished queries and resumed, possibly with other scheduling settings (limits,
//! queries in flight, affinity). In half the schedules the method's own parameters are drawn too
//! (profile, τ, top-K, α, re-asks, verifier rule (the `logprob` one with `probability-sum`
//! re-ranking among them) and evaluator parsing, the reference excluded or not,
//! expected answers normalised or not, the `[index]` search and quantization), each distinct set
//! with its own fault-free baseline; and in a third of the stopped ones the resume is first tried
//! with a change of what decides the answers (τ, top-K, re-asks, the index search, the reasoner's
//! temperature), which must be refused, naming that key, with the run folder untouched. After every
//! schedule the invariants below are checked.
//!
//! ```bash
//! cargo test --test sim -- --nocapture                      # SIM_SEEDS=60 schedules from seed 0
//! SIM_SEEDS=1000 SIM_SEED_BASE=5000 cargo test --test sim -- --nocapture
//! SIM_SEED=1234 cargo test --test sim -- --nocapture        # replay one schedule and its faults
//! ```
//!
//! A seed picks its world's task shape (seed % 3) and everything else. `SIM_WORLDS=N` runs N worlds
//! of each shape (default 4 for 300 seeds or more, else 2), spread over `SIM_THREADS` threads
//! (default one per core); a world takes its shape's next seed when it is free. A fault is a
//! function of the seed, the request body and how many times that body was sent
//! (`FakeServer::set_chaos`), never of arrival order, so a seed's faults replay; outages start and
//! end at counts of finished queries.
//!
//! Time is paused: each thread's runtime starts with `start_paused`, so its clock moves only when
//! the runtime has nothing to do (no task ready, no I/O event waiting) and no blocking call is in
//! flight, and then jumps to the next timer. The fakes answer on the same thread, and nothing in
//! the run path waits on anything outside the runtime but blocking calls (the cache's writer
//! thread is never waited on mid-run; no schedule sets a `rate`, whose limiter sleeps in real
//! time), so a 0.5 s timeout fires only when a fake has chosen to hang (700 ms), never because
//! the machine is busy; a slow answer (20 ms) no longer races the timeout. Timeouts, hangs and
//! backoffs cost no wall time. What stays the machine's is the order in which blocking work (the
//! disk, image decoding, the index) completes: with several queries in flight it can change
//! which ones had finished when a stop or an outage came. `SIM_VERBOSE=1` prints each schedule
//! with a digest of what it left (records, counters); in two runs of seeds 0-119, 91 of 120
//! digests matched, the others being schedules that stop, lose a replica or use the cache with
//! queries in flight. A seed's faults replay exactly whatever the order.
//! The last line printed is `simulated schedules: N, violations: 0`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use imagescope::config::{ExperimentConfig, Stage};
use imagescope::datasets::ImageKey;
use imagescope::pipeline::run::RunOptions;
use imagescope::record::{QueryRecord, Status};
use imagescope::runs::folder::JournalFault;
use imagescope::serving::CacheMode;
use imagescope::serving::cache::CacheFault;
use support::env::{Env, write_cirr, write_flickr, write_visdial};
use support::fake_server::Outage;

const QUERIES: [(u64, usize, &str, usize); 6] = [
    (100, 0, "blue car", 1),
    (101, 10, "white cat", 9),
    (102, 0, "red bus", 2),
    (103, 7, "black dog sofa", 8),
    (104, 3, "green tree", 4),
    (105, 5, "yellow taxi", 6),
];

/// The task shapes the worlds are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Shape {
    Composed,
    TextToImage,
    Dialogue,
}

const SHAPES: [Shape; 3] = [Shape::Composed, Shape::TextToImage, Shape::Dialogue];

/// A replica out of service during part of a run.
#[derive(Debug, Clone, Copy)]
struct OutagePlan {
    /// The second reasoner replica (`false`: the verifier, the role's only endpoint).
    reasoner: bool,
    hung: bool,
    /// After this many finished queries.
    after: usize,
    /// Back after this many more (`None`: until the run ends).
    back_after: Option<usize>,
}

/// The method's own parameters (`[pipeline]` and `[index]`), drawn: `None` keeps the default.
/// They change the answers, so each distinct set has its own fault-free baseline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Method {
    profile: Option<&'static str>,
    /// τ in hundredths.
    tau: Option<u8>,
    top_k: Option<usize>,
    alpha: Option<usize>,
    reask: Option<u32>,
    verifier_mode: Option<&'static str>,
    /// Stage 2's order: `probability-sum` only with the `logprob` verifier (the fakes send
    /// log-probabilities when asked, as vLLM does).
    rerank: Option<&'static str>,
    evaluator_parse: Option<&'static str>,
    exclude_reference: Option<bool>,
    normalize_expected_answers: Option<bool>,
    /// `[index]` search and quantization.
    index: Option<(&'static str, &'static str)>,
}

impl Method {
    fn draw(rng: &mut fastrand::Rng) -> Method {
        // Half the schedules keep every default (one baseline serves them all).
        if rng.bool() {
            return Method::default();
        }
        let maybe = |rng: &mut fastrand::Rng| rng.u8(0..3) > 0;
        let top_k = maybe(rng).then(|| [1, 2, 4, 20][rng.usize(0..4)]);
        let verifier_mode =
            maybe(rng).then(|| ["substring", "first-word", "logprob"][rng.usize(0..3)]);
        let rerank = match verifier_mode {
            Some("logprob") => maybe(rng).then(|| ["count", "probability-sum"][rng.usize(0..2)]),
            _ => maybe(rng).then_some("count"),
        };
        Method {
            profile: maybe(rng).then(|| ["default", "parity"][rng.usize(0..2)]),
            tau: maybe(rng).then(|| [0, 15, 50, 100][rng.usize(0..4)]),
            top_k,
            // alpha ≤ top_k (the configuration refuses more; the default alpha is 3).
            alpha: (maybe(rng) || top_k.is_some_and(|k| k < 3))
                .then(|| rng.usize(1..=top_k.unwrap_or(3).min(3))),
            reask: maybe(rng).then(|| rng.u32(0..3)),
            verifier_mode,
            rerank,
            evaluator_parse: maybe(rng).then(|| ["strict", "tolerant"][rng.usize(0..2)]),
            exclude_reference: maybe(rng).then(|| rng.bool()),
            normalize_expected_answers: maybe(rng).then(|| rng.bool()),
            index: maybe(rng).then(|| {
                [
                    ("exact", "f32"),
                    ("exact", "f16"),
                    ("exact", "i8"),
                    ("hnsw", "f32"),
                    ("hnsw", "f16"),
                ][rng.usize(0..5)]
            }),
        }
    }

    /// The `[pipeline]` lines and the `[index]` table of these parameters.
    fn toml(&self) -> (String, String) {
        let mut pipeline = String::new();
        let mut line = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                pipeline.push_str(&format!("{k} = {v}\n"));
            }
        };
        line("profile", self.profile.map(|v| format!("{v:?}")));
        line("tau", self.tau.map(|t| format!("{}", f64::from(t) / 100.0)));
        line("top_k", self.top_k.map(|v| v.to_string()));
        line("alpha", self.alpha.map(|v| v.to_string()));
        line("reask", self.reask.map(|v| v.to_string()));
        line(
            "verifier_mode",
            self.verifier_mode.map(|v| format!("{v:?}")),
        );
        line("rerank", self.rerank.map(|v| format!("{v:?}")));
        line(
            "evaluator_parse",
            self.evaluator_parse.map(|v| format!("{v:?}")),
        );
        line(
            "exclude_reference",
            self.exclude_reference.map(|v| v.to_string()),
        );
        line(
            "normalize_expected_answers",
            self.normalize_expected_answers.map(|v| v.to_string()),
        );
        let index = self.index.map_or_else(String::new, |(search, q)| {
            format!("\n[index]\nsearch = {search:?}\nquantization = {q:?}\n")
        });
        (pipeline, index)
    }
}

/// A change of what decides the answers, tried when a stopped schedule resumes: the resume must
/// be refused, naming this key, with the run folder untouched, and the run then resume unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentityChange {
    Tau,
    TopK,
    Reask,
    IndexSearch,
    ReasonerTemperature,
}

impl IdentityChange {
    /// The key the refusal must name.
    fn key(self) -> &'static str {
        match self {
            IdentityChange::Tau => "pipeline.tau",
            IdentityChange::TopK => "pipeline.top_k",
            IdentityChange::Reask => "pipeline.reask",
            IdentityChange::IndexSearch => "index.search",
            IdentityChange::ReasonerTemperature => "roles.reasoner.sampling.temperature",
        }
    }

    /// The schedule with this change made (a value other than the one in effect).
    fn apply(self, s: &Schedule) -> Schedule {
        let mut m = s.method.clone();
        let mut temperature = s.reasoner_temperature;
        match self {
            IdentityChange::Tau => m.tau = Some(if m.tau == Some(50) { 100 } else { 50 }),
            IdentityChange::TopK => {
                m.top_k = Some(if m.top_k.unwrap_or(20) == 20 { 4 } else { 20 })
            }
            IdentityChange::Reask => m.reask = Some(if m.reask == Some(1) { 0 } else { 1 }),
            IdentityChange::IndexSearch => {
                let hnsw = m.index.is_some_and(|(search, _)| search == "hnsw");
                m.index = Some(if hnsw {
                    ("exact", "f32")
                } else {
                    ("hnsw", "f32")
                });
            }
            IdentityChange::ReasonerTemperature => temperature = Some(0.7),
        }
        Schedule {
            method: m,
            reasoner_temperature: temperature,
            ..s.clone()
        }
    }
}

/// One schedule, drawn from its seed.
#[derive(Debug, Clone)]
struct Schedule {
    seed: u64,
    shape: Shape,
    queries_in_flight: usize,
    max_in_flight: usize,
    max_retries: u32,
    stages: Vec<Stage>,
    /// Faults per 1000 attempts on every fake.
    per_mille: u64,
    /// Stop after this many finished queries, then resume.
    stop_after: Option<usize>,
    /// Whether the resumed part sees faults too.
    faults_on_resume: bool,
    /// Per-attempt timeout (the fault-free baselines wait longer).
    timeout_secs: f64,
    /// Verifier and evaluator grounded by the stored captions (text requests) rather than
    /// images: 3 schedules in 4, as image-grounded stage 3 costs a composite per turn.
    captions: bool,
    affinity: bool,
    outage: Option<OutagePlan>,
    /// Other scheduling settings for the resumed part (max_in_flight, queries in flight,
    /// affinity), which a resume must accept.
    resume_changes: bool,
    /// The disk fills while the first invocation writes its journal: the run must stop naming
    /// the journal and `--resume`, keep what it wrote, and resume once the disk is back.
    journal_fault: Option<JournalFault>,
    /// The request cache on: after the schedule, a fresh run from the cache with healthy
    /// servers must rank as the fault-free run did (no failed answer was stored).
    cache: bool,
    /// With the cache on, its disk fills during the first invocation: the run goes on whole,
    /// its summary says how many answers were not stored, and the run from the cache asks for
    /// those again.
    cache_fault: Option<CacheFault>,
    /// The method's own parameters.
    method: Method,
    /// Only set by an `IdentityChange`.
    reasoner_temperature: Option<f64>,
    /// Tried first when the run resumes (1 stopped schedule in 3).
    identity_change: Option<IdentityChange>,
}

fn schedule(seed: u64) -> Schedule {
    let mut rng = fastrand::Rng::with_seed(seed);
    let stages = match rng.u8(0..3) {
        0 => vec![Stage::S1],
        1 => vec![Stage::S1, Stage::S2],
        _ => vec![Stage::S1, Stage::S2, Stage::S3],
    };
    Schedule {
        seed,
        shape: SHAPES[(seed % 3) as usize],
        queries_in_flight: [1, 2, 3, 8][rng.usize(0..4)],
        max_in_flight: [1, 2, 4, 16][rng.usize(0..4)],
        max_retries: rng.u32(0..5),
        stages,
        per_mille: [0, 30, 100, 250, 500][rng.usize(0..5)],
        stop_after: rng.bool().then(|| rng.usize(0..QUERIES.len())),
        faults_on_resume: rng.bool(),
        captions: rng.u8(0..4) > 0,
        timeout_secs: TIMEOUT_SECS,
        affinity: rng.bool(),
        outage: (rng.u8(0..3) == 0).then(|| {
            let hung = rng.bool();
            OutagePlan {
                reasoner: rng.u8(0..4) > 0,
                hung,
                after: rng.usize(0..3),
                // A hung replica always comes back: hung to the end, every request to it waits
                // out its timeout on every retry, which costs minutes and tests nothing more.
                back_after: (hung || rng.bool()).then(|| rng.usize(1..3)),
            }
        }),
        resume_changes: rng.bool(),
        journal_fault: (rng.u8(0..5) == 0).then(|| JournalFault {
            after_writes: rng.usize(0..4),
            short: rng.bool(),
        }),
        cache: rng.u8(0..4) == 0,
        cache_fault: (rng.u8(0..3) == 0).then(|| CacheFault {
            after_batches: rng.usize(0..4),
        }),
        method: Method::draw(&mut rng),
        reasoner_temperature: None,
        identity_change: (rng.u8(0..3) == 0).then(|| {
            [
                IdentityChange::Tau,
                IdentityChange::TopK,
                IdentityChange::Reask,
                IdentityChange::IndexSearch,
                IdentityChange::ReasonerTemperature,
            ][rng.usize(0..5)]
        }),
    }
}

/// Writes the schedule's servers file and experiment; returns the experiment's path.
fn configs(env: &Env, s: &Schedule) -> PathBuf {
    let servers = env.servers_text(
        |role| {
            let grounding = if s.captions && matches!(role, "verifier" | "evaluator") {
                "grounding = \"caption\"\n"
            } else {
                ""
            };
            format!(
                "max_in_flight = {}\ntimeout_secs = {}\naffinity = {}\n{grounding}",
                s.max_in_flight, s.timeout_secs, s.affinity
            )
        },
        |role| {
            let sampling = match s.reasoner_temperature {
                Some(t) if role == "reasoner" => format!("[roles.{role}.sampling]\ntemperature = {t}\n"),
                _ => String::new(),
            };
            format!(
                "[roles.{role}.retry]\nmax_retries = {}\ninitial_backoff_ms = 1\nmax_backoff_ms = 4\nmax_retry_after_ms = 10\nreplica_cooldown_ms = 30\n{sampling}",
                s.max_retries
            )
        },
    );
    // A file name of its own for every configuration written (a resume may change it).
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let tag = format!("{}-{}", s.seed, WRITTEN.fetch_add(1, Relaxed));
    let servers_path = env.path(&format!("sim/servers-{tag}.toml"));
    std::fs::create_dir_all(servers_path.parent().unwrap()).unwrap();
    std::fs::write(&servers_path, servers).unwrap();
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    let (dataset, split) = match s.shape {
        Shape::Composed => ("cirr", "val"),
        Shape::TextToImage => ("flickr30k", "test"),
        Shape::Dialogue => ("visdial", "val"),
    };
    let (method, index) = s.method.toml();
    let exp = format!(
        "servers = {:?}\nprompts = {:?}\nruns = {:?}\nimage_db = {:?}\n\n[dataset]\nname = \"{dataset}\"\nroot = {:?}\nsplit = \"{split}\"\n\n[pipeline]\nqueries_in_flight = {}\n{method}{index}",
        servers_path.display().to_string(),
        prompts.display().to_string(),
        env.path(&format!("sim/runs-{}", s.seed))
            .display()
            .to_string(),
        env.path("data/image_db").display().to_string(),
        env.data.display().to_string(),
        s.queries_in_flight,
    );
    let path = env.path(&format!("sim/exp-{tag}.toml"));
    std::fs::write(&path, exp).unwrap();
    path
}

const TIMEOUT_SECS: f64 = 0.5;

/// Schedules whose disk filled mid-journal, and schedules run again from their cache.
static DISK_FULL: AtomicUsize = AtomicUsize::new(0);
static FROM_CACHE: AtomicUsize = AtomicUsize::new(0);
static CACHE_FULL: AtomicUsize = AtomicUsize::new(0);
/// The distinct method settings run (each with its fault-free baseline).
static METHODS: std::sync::Mutex<Vec<Method>> = std::sync::Mutex::new(Vec::new());
/// Resumes refused for a change of what decides the answers.
static REFUSED: AtomicUsize = AtomicUsize::new(0);
const HANG: Duration = Duration::from_millis(700);

fn set_faults(env: &Env, seed: Option<u64>, per_mille: u64) {
    let fakes = [&env.captioner, &env.verifier, &env.evaluator, &env.embedder]
        .into_iter()
        .chain(env.reasoner.iter());
    for (i, f) in fakes.enumerate() {
        // Each fake its own stream of faults, all from the schedule's seed.
        f.set_chaos(
            seed.map(|s| s.wrapping_mul(31).wrapping_add(i as u64)),
            per_mille,
            HANG,
        );
    }
}

fn options(s: &Schedule, resume: Option<PathBuf>) -> RunOptions {
    RunOptions {
        split: None,
        limit: None,
        queries: None,
        stages: Some(s.stages.clone()),
        run_name: format!("seed-{}", s.seed),
        resume,
        cache: if s.cache {
            CacheMode::On
        } else {
            CacheMode::Off
        },
        allow_partial: false,
    }
}

/// Puts the schedule's replica out of service or back.
fn set_outage(env: &Env, plan: &OutagePlan, on: bool) {
    let fake = if plan.reasoner {
        &env.reasoner[1]
    } else {
        &env.verifier
    };
    fake.set_outage(on.then_some(if plan.hung {
        Outage::Hung(HANG)
    } else {
        Outage::Dead
    }));
}

/// What one invocation (prepare, drive, finish) left. `finished(n)` is called as the n-th
/// query finishes.
async fn invoke(
    exp: &ExperimentConfig,
    opts: &RunOptions,
    stop_after: Option<usize>,
    (fault, cache_fault): (Option<JournalFault>, Option<CacheFault>),
    mut finished: impl FnMut(usize),
) -> Result<(PathBuf, bool), String> {
    let mut prepared = imagescope::pipeline::prepare::prepare(exp, opts)
        .await
        .map_err(|e| format!("prepare: {e}"))?;
    prepared.folder.inject_journal_fault(fault);
    if let Some(cache) = prepared.clients.cache() {
        cache.inject_write_fault(cache_fault);
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut done = 0;
    if stop_after == Some(0) {
        let _ = tx.send(true);
    }
    let interrupted = imagescope::pipeline::run::drive(&prepared, rx, |_| {
        done += 1;
        finished(done);
        if stop_after == Some(done) {
            let _ = tx.send(true);
        }
    })
    .await
    .map_err(|e| format!("drive: {e}"))?;
    let report =
        imagescope::pipeline::finish::finish(&prepared, interrupted, true, Default::default())
            .map_err(|e| format!("finish: {e}"))?;
    // Once the run has finished, every answer queued for the cache was stored or counted as
    // not, and those not stored are said in the summary, with their number.
    if let Some(cache) = prepared.clients.cache() {
        let ((queued, stored), n) = (cache.writes(), cache.unstored());
        if queued != stored + n {
            return Err(format!(
                "finish: {queued} answers queued for the cache, {stored} stored and {n} counted as not"
            ));
        }
        if n > 0 {
            CACHE_FULL.fetch_add(1, Relaxed);
            let said = format!("{n} answer(s) could not be stored in the request cache");
            if !report.notes.iter().any(|note| note.starts_with(&said)) {
                return Err(format!(
                    "finish: {n} answers not stored in the cache, not said in {:?}",
                    report.notes
                ));
            }
        }
    }
    Ok((report.folder, interrupted))
}

/// The last record of each query in a journal, and how many lines could not be read.
fn journal(folder: &Path) -> (BTreeMap<String, QueryRecord>, usize) {
    let mut last = BTreeMap::new();
    let skipped = imagescope::runs::folder::read_journal(&folder.join("queries.jsonl"), |r| {
        last.insert(r.id.clone(), r);
    })
    .unwrap();
    (last, skipped)
}

/// Fault-free final rankings by (stages, caption grounding, method), query id → ranking
/// (`None`: the query did not end done without a fallback there either).
type Baselines = HashMap<(Vec<Stage>, bool, Method), BTreeMap<String, Option<Vec<ImageKey>>>>;

/// Ends a schedule early: its replica back in service, and what it broke.
fn end(env: &Env, s: &Schedule, broken: Vec<String>) -> Vec<String> {
    if let Some(plan) = &s.outage {
        set_outage(env, plan, false);
    }
    broken
}

/// Runs one schedule; returns the invariants it broke (empty: none).
async fn simulate(env: &Env, s: &Schedule, baselines: &mut Baselines) -> Vec<String> {
    let mut broken = Vec::new();
    // The fault-free rankings of these stages, once.
    let key = (s.stages.clone(), s.captions, s.method.clone());
    if !baselines.contains_key(&key) {
        let clean = Schedule {
            seed: 1_000_000_000 + baselines.len() as u64,
            per_mille: 0,
            stop_after: None,
            outage: None,
            max_retries: 4,
            timeout_secs: 10.0,
            ..s.clone()
        };
        set_faults(env, None, 0);
        let exp = ExperimentConfig::load(&configs(env, &clean)).unwrap();
        let (folder, _) = invoke(&exp, &options(&clean, None), None, (None, None), |_| {})
            .await
            .unwrap();
        let (records, _) = journal(&folder);
        let last = *s.stages.iter().max().unwrap();
        let rankings = records
            .values()
            .map(|r| {
                let clean = r.status == Status::Done && r.fallbacks.is_empty();
                let ranking = clean.then(|| r.ranking_after(last).map(<[ImageKey]>::to_vec));
                (r.id.clone(), ranking.flatten())
            })
            .collect();
        baselines.insert(key.clone(), rankings);
        let mut methods = METHODS.lock().unwrap();
        if !methods.contains(&s.method) {
            methods.push(s.method.clone());
        }
    }
    set_faults(env, Some(s.seed), s.per_mille);
    let exp = ExperimentConfig::load(&configs(env, s)).unwrap();
    // The outage begins and ends at counts of finished queries (over the run and its resume).
    let finished_before = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let down = AtomicBool::new(false);
    let outage = |n: usize| {
        let n = n + finished_before.load(Relaxed);
        finished.store(n, Relaxed);
        if let Some(plan) = &s.outage {
            if n == plan.after {
                set_outage(env, plan, true);
                down.store(true, Relaxed);
            }
            if plan.back_after.is_some_and(|b| n == plan.after + b) {
                set_outage(env, plan, false);
                down.store(false, Relaxed);
            }
        }
    };
    if s.outage.is_some_and(|p| p.after == 0) {
        outage(0);
    }
    // The only verifier dead (not hung: a hung server still lists its models) when a run that
    // needs it starts: the run must refuse to start, naming the verifier (nothing is lost:
    // nothing began). Then, as a user would, bring it back and start again.
    let verifier_dead = || {
        down.load(Relaxed)
            && s.stages.contains(&Stage::S2)
            && s.outage.is_some_and(|p| !p.reasoner && !p.hung)
    };
    let refused = |what: &str, got: &Result<(PathBuf, bool), String>| -> Option<String> {
        match got {
            Ok(_) => Some(format!("the {what} started with its only verifier dead")),
            Err(e) if e.starts_with("prepare:") && e.contains("verifier") => None,
            Err(e) => Some(format!("the {what} refused for another reason: {e}")),
        }
    };
    let dead_at_start = verifier_dead();
    let faults = (s.journal_fault, s.cache_fault.filter(|_| s.cache));
    let mut first = invoke(&exp, &options(s, None), s.stop_after, faults, outage).await;
    if dead_at_start && let Some(plan) = &s.outage {
        if let Some(broken) = refused("run", &first) {
            return end(env, s, vec![broken]);
        }
        set_outage(env, plan, false);
        down.store(false, Relaxed);
        first = invoke(&exp, &options(s, None), s.stop_after, faults, |_| {}).await;
    }
    // A full disk stops the run with an error that names the journal and how to go on; what the
    // journal held by then is kept through the resume.
    let mut kept_before_full = Vec::new();
    let (folder, interrupted) = match first {
        Ok(x) => x,
        Err(e) if s.journal_fault.is_some() && e.starts_with("drive:") => {
            if !(e.contains("cannot write the journal") && e.contains("--resume")) {
                return end(env, s, vec![format!("a full disk was reported as {e:?}")]);
            }
            let Some(folder) = run_folder(env, s) else {
                return end(env, s, vec!["no run folder after the disk filled".into()]);
            };
            kept_before_full = journal(&folder).0.into_keys().collect();
            DISK_FULL.fetch_add(1, Relaxed);
            (folder, true)
        }
        Err(e) => return end(env, s, vec![format!("the run did not complete: {e}")]),
    };
    let mut resumed = false;
    if interrupted {
        resumed = true;
        // Queries in flight when the stop came may have finished after it.
        finished_before.store(finished.load(Relaxed), Relaxed);
        if !s.faults_on_resume {
            set_faults(env, None, 0);
        }
        let exp = if s.resume_changes {
            let changed = Schedule {
                max_in_flight: s.max_in_flight % 16 + 1,
                queries_in_flight: s.queries_in_flight % 8 + 1,
                affinity: !s.affinity,
                ..s.clone()
            };
            ExperimentConfig::load(&configs(env, &changed)).unwrap()
        } else {
            exp
        };
        // Likewise when the verifier is still dead as the run resumes.
        let dead_at_resume = verifier_dead();
        // A change of what decides the answers is refused before any query is asked, naming
        // what changed, the run folder as it was; then the run resumes as it was.
        if let Some(change) = s.identity_change.filter(|_| !dead_at_resume) {
            let files = ["queries.jsonl", "run.json", "config.resolved.toml"];
            let read = |f: &str| std::fs::read(folder.join(f)).ok();
            let before: Vec<_> = files.iter().map(|f| read(f)).collect();
            let changed = change.apply(s);
            let exp = ExperimentConfig::load(&configs(env, &changed)).unwrap();
            let resume = options(&changed, Some(folder.clone()));
            let got = invoke(&exp, &resume, None, (None, None), |_| {}).await;
            let refused = matches!(&got, Err(e) if e.starts_with("prepare:")
                && e.contains("cannot resume")
                && e.contains(change.key()));
            if !refused {
                let got = got.map(|(folder, _)| folder);
                return end(
                    env,
                    s,
                    vec![format!(
                        "a resume with {} changed gave {got:?}",
                        change.key()
                    )],
                );
            }
            for (f, was) in files.iter().zip(&before) {
                if read(f) != *was {
                    return end(env, s, vec![format!("a refused resume changed {f}")]);
                }
            }
            REFUSED.fetch_add(1, Relaxed);
        }
        let resume = options(s, Some(folder.clone()));
        let mut again = invoke(&exp, &resume, None, (None, None), outage).await;
        if dead_at_resume && let Some(plan) = &s.outage {
            if let Some(broken) = refused("resume", &again) {
                return end(env, s, vec![broken]);
            }
            set_outage(env, plan, false);
            down.store(false, Relaxed);
            again = invoke(&exp, &resume, None, (None, None), |_| {}).await;
        }
        if let Err(e) = again {
            return end(env, s, vec![format!("the resume did not complete: {e}")]);
        }
    }
    if let Some(plan) = &s.outage {
        set_outage(env, plan, false);
    }
    // Every query ends done or failed with a kind; the journal reads whole.
    let (records, skipped) = journal(&folder);
    // A short write leaves one cut line, which readers skip.
    let cut = usize::from(s.journal_fault.is_some_and(|f| f.short));
    if skipped > cut {
        broken.push(format!("{skipped} journal lines unreadable"));
    }
    for id in &kept_before_full {
        if !records.contains_key(id) {
            broken.push(format!(
                "query {id}, journaled before the disk filled, lost"
            ));
        }
    }
    let expected = &baselines[&key];
    for id in expected.keys() {
        match records.get(id) {
            None => broken.push(format!("query {id} lost")),
            Some(r) if r.status == Status::Failed => {
                if r.failure_kind.is_none() || r.error.is_none() {
                    broken.push(format!("query {id} failed without a kind and a reason"));
                }
            }
            Some(r) => {
                let last = *s.stages.iter().max().unwrap();
                let Some(ranking) = r.ranking_after(last) else {
                    broken.push(format!("query {id} done without a ranking"));
                    continue;
                };
                // A query answered without a fallback ranks as the fault-free run did.
                if r.fallbacks.is_empty()
                    && let Some(Some(clean)) = expected.get(id)
                    && clean.as_slice() != ranking
                {
                    broken.push(format!(
                        "query {id}: ranking {ranking:?} differs from the fault-free {clean:?}"
                    ));
                }
            }
        }
    }
    if records.len() != expected.len() {
        broken.push(format!(
            "{} records for {} queries",
            records.len(),
            expected.len()
        ));
    }
    // Counters add up: every attempt ended in a success, a failure or a retry (an attempt cut
    // off by the stop has none of them).
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("summary.json")).unwrap()).unwrap();
    for (role, c) in summary["roles"].as_object().unwrap() {
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let ended = n("successes") + n("failures") + n("retries");
        if (resumed && n("attempts") < ended) || (!resumed && n("attempts") != ended) {
            broken.push(format!(
                "{role}: {} attempts, {} successes + {} failures + {} retries",
                n("attempts"),
                n("successes"),
                n("failures"),
                n("retries")
            ));
        }
    }
    if s.cache && broken.is_empty() {
        broken.extend(from_cache(env, s, expected).await);
    }
    broken
}

/// The run folder of a schedule's first invocation (the only one under its run name).
fn run_folder(env: &Env, s: &Schedule) -> Option<PathBuf> {
    let dataset = match s.shape {
        Shape::Composed => "cirr",
        Shape::TextToImage => "flickr30k",
        Shape::Dialogue => "visdial",
    };
    let parent = env.path(&format!("sim/runs-{}/{dataset}/seed-{}", s.seed, s.seed));
    let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    (found.len() == 1).then(|| found.remove(0))
}

/// A fresh run of the schedule's queries from its request cache, the servers healthy: every
/// query the fault-free run answered cleanly must be answered the same (a failed or cut answer
/// stored in the cache would be read back here).
async fn from_cache(
    env: &Env,
    s: &Schedule,
    expected: &BTreeMap<String, Option<Vec<ImageKey>>>,
) -> Vec<String> {
    set_faults(env, None, 0);
    let again = Schedule {
        stop_after: None,
        outage: None,
        journal_fault: None,
        ..s.clone()
    };
    let exp = ExperimentConfig::load(&configs(env, &again)).unwrap();
    let mut opts = options(&again, None);
    opts.run_name = format!("seed-{}-from-cache", s.seed);
    let folder = match invoke(&exp, &opts, None, (None, None), |_| {}).await {
        Ok((folder, _)) => folder,
        Err(e) => return vec![format!("the run from the cache did not complete: {e}")],
    };
    FROM_CACHE.fetch_add(1, Relaxed);
    let (records, _) = journal(&folder);
    let last = *s.stages.iter().max().unwrap();
    let mut broken = Vec::new();
    for (id, clean) in expected {
        let Some(clean) = clean else { continue };
        let got = records.get(id);
        let same = got.is_some_and(|r| {
            r.status == Status::Done
                && r.fallbacks.is_empty()
                && r.ranking_after(last) == Some(clean.as_slice())
        });
        if !same {
            broken.push(format!(
                "query {id} from the cache: {:?} (fallbacks {:?}, error {:?}), not the fault-free {clean:?}",
                got.and_then(|r| r.ranking_after(last)),
                got.map(|r| &r.fallbacks),
                got.and_then(|r| r.error.as_ref()),
            ));
        }
    }
    broken
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        return vec![s];
    }
    let n: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let base: u64 = std::env::var("SIM_SEED_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (base..base + n).collect()
}

/// A world of `shape`: its fakes, gallery, annotation file and image database.
async fn make_world(shape: Shape) -> Env {
    let (env, dataset, split) = match shape {
        Shape::Composed => {
            let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 2).await;
            write_cirr(&env.data, &QUERIES);
            (env, "cirr", "val")
        }
        Shape::TextToImage => {
            let env = Env::start("images", |i| format!("{i}"), 2).await;
            write_flickr(
                &env.data,
                &[
                    (7, "white dog"),
                    (9, "white cat"),
                    (1, "blue car"),
                    (8, "black dog sofa"),
                    (6, "black dog"),
                ],
            );
            (env, "flickr30k", "test")
        }
        Shape::Dialogue => {
            let env = Env::start("unlabeled2017", |i| format!("{:012}", i + 1), 2).await;
            write_visdial(
                &env.data,
                &serde_json::json!([
                    {"img": "unlabeled2017/000000000009.png", "dialog": ["a dog", "is it black? yes", "is it on a sofa? yes"]},
                    {"img": "unlabeled2017/000000000010.png", "dialog": ["a cat", "what colour? white", "is it alone? yes"]},
                    {"img": "unlabeled2017/000000000002.png", "dialog": ["a car", "is it blue? yes"]},
                ]),
            );
            (env, "visdial", "val")
        }
    };
    let config = env.configs(dataset, split, "", None);
    env.index(&config).await;
    env
}

/// A digest of what a schedule left: the last record of each query (without its timings; the
/// fakes' ports, which errors name, left out) and the attempts, retries and failures of each
/// role. Replays of a seed give the same digest when the order in which its queries finished
/// did not matter (see the module's doc).
fn outcome(env: &Env, s: &Schedule) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(folder) = run_folder(env, s) {
        for (_, mut r) in journal(&folder).0 {
            r.timings_ms.clear();
            let line = serde_json::to_string(&r).unwrap();
            let mut parts = line.split("127.0.0.1:");
            parts.next().hash(&mut h);
            for part in parts {
                part.trim_start_matches(|c: char| c.is_ascii_digit())
                    .hash(&mut h);
            }
        }
        if let Ok(bytes) = std::fs::read(folder.join("summary.json")) {
            let summary: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            for (role, c) in summary["roles"].as_object().into_iter().flatten() {
                for k in ["attempts", "retries", "failures", "successes"] {
                    (role, k, c[k].as_u64()).hash(&mut h);
                }
            }
        }
    }
    h.finish()
}

/// The seeds of one task shape, taken one at a time by that shape's worlds, whichever thread
/// they run on, so a world slowed by costly schedules takes fewer of them.
struct SeedQueue {
    seeds: Vec<u64>,
    next: AtomicUsize,
}

impl SeedQueue {
    fn take(&self) -> Option<u64> {
        self.seeds.get(self.next.fetch_add(1, Relaxed)).copied()
    }
}

/// One world (its own fakes, gallery and image database) working through its shape's seeds;
/// returns the seeds whose schedule broke an invariant.
async fn world(env: Env, queue: std::sync::Arc<SeedQueue>) -> Vec<u64> {
    let mut baselines = HashMap::new();
    let mut violations = Vec::new();
    while let Some(seed) = queue.take() {
        let s = schedule(seed);
        let t = std::time::Instant::now();
        let broken = simulate(&env, &s, &mut baselines).await;
        if std::env::var_os("SIM_VERBOSE").is_some() {
            println!(
                "seed {seed}: {:.2} s, outcome {:016x} {s:?}",
                t.elapsed().as_secs_f64(),
                outcome(&env, &s)
            );
        }
        if !broken.is_empty() {
            println!("SIM_SEED={seed} broke: {broken:?}\n  schedule: {s:?}");
            violations.push(seed);
        }
    }
    set_faults(&env, None, 0);
    violations
}

/// Worlds of `shares` on one thread, in one runtime whose clock is paused (see the module's doc).
fn thread_of_worlds(shares: Vec<(Shape, std::sync::Arc<SeedQueue>)>) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        // Every world is built before any schedule runs: building one runs the real `index`
        // binary, whose wait would otherwise let another world's clock run on.
        let mut worlds = Vec::new();
        for (shape, queue) in shares {
            if !queue.seeds.is_empty() {
                worlds.push((make_world(shape).await, queue));
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (env, seeds) in worlds {
            tasks.spawn(world(env, seeds));
        }
        tasks.join_all().await.into_iter().flatten().collect()
    })
}

#[test]
fn seeded_schedules_of_faults_and_stops_keep_every_invariant() {
    let started = std::time::Instant::now();
    let seeds = seeds();
    // SIM_WORLDS worlds per shape (default 4 for long runs, 2 for the 60 of a plain `cargo
    // test`): each world's fakes carry one schedule's faults at a time, and a thread with
    // several worlds has another to run while one waits on the disk or an image.
    let per_shape: usize = std::env::var("SIM_WORLDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if seeds.len() >= 300 { 4 } else { 2 })
        .clamp(1, 8);
    // SIM_THREADS threads (default: one per core), each with a paused clock of its own.
    let threads: usize = std::env::var("SIM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 16);
    let mut per_thread: Vec<Vec<(Shape, std::sync::Arc<SeedQueue>)>> = vec![Vec::new(); threads];
    let mut next = 0;
    for (k, shape) in SHAPES.into_iter().enumerate() {
        let queue = std::sync::Arc::new(SeedQueue {
            seeds: seeds
                .iter()
                .copied()
                .filter(|s| s % 3 == k as u64)
                .collect(),
            next: AtomicUsize::new(0),
        });
        for _ in 0..per_shape.min(queue.seeds.len()) {
            per_thread[next % threads].push((shape, queue.clone()));
            next += 1;
        }
    }
    let handles: Vec<_> = per_thread
        .into_iter()
        .map(|shares| std::thread::spawn(move || thread_of_worlds(shares)))
        .collect();
    // A thread that panicked (a broken harness, not an invariant) is said after the others'
    // violations are.
    let mut panicked = 0;
    let mut violations: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| {
            h.join().unwrap_or_else(|_| {
                panicked += 1;
                Vec::new()
            })
        })
        .collect();
    violations.sort_unstable();
    println!(
        "simulated schedules: {}, violations: {} ({:.0} s; the disk filled under the journal in {}, under the cache in {}; {} run again from their cache; {} resumes refused for a changed identity; {} method settings)",
        seeds.len(),
        violations.len(),
        started.elapsed().as_secs_f64(),
        DISK_FULL.load(Relaxed),
        CACHE_FULL.load(Relaxed),
        FROM_CACHE.load(Relaxed),
        REFUSED.load(Relaxed),
        METHODS.lock().unwrap().len(),
    );
    assert!(
        violations.is_empty(),
        "replay with SIM_SEED=<seed>: {violations:?}"
    );
    assert_eq!(
        panicked, 0,
        "{panicked} simulator thread(s) panicked (see above)"
    );
}
