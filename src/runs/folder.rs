//! Run folders: `runs/<dataset>/<run-name>/<UTC timestamp>/`, created atomically (two runs started
//! in the same second get `-2`, `-3`... rather than colliding), holding `run.json` (version, the
//! run's identity and scheduling (`crate::identity`), checked on `--resume`), `config.resolved.toml`, `prompts/` (the templates used),
//! `output.log`, `queries.jsonl` (the journal: one line per finished query, appended and flushed),
//! `metrics.json`, `metrics.txt`, `summary.json` and submission files on test splits.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::record::{QueryRecord, Status};

/// `run.json`: what a run folder belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// imagescope version that started it.
    pub version: String,
    /// blake3 of `config.resolved.toml` (everything, scheduling included; informational).
    pub config_hash: String,
    /// blake3 of `identity` (what decides the answers; `--resume` requires it unchanged).
    #[serde(default)]
    pub identity_hash: String,
    /// The run's identity (`crate::identity::RunIdentity`), as JSON.
    #[serde(default)]
    pub identity: serde_json::Value,
    /// How the work was scheduled (endpoints, limits...); a resume may change it.
    #[serde(default)]
    pub scheduling: serde_json::Value,
    /// Scheduling changes made by resumes, each with its time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scheduling_changes: Vec<String>,
    /// What each role's server said about its weights.
    #[serde(default)]
    pub models: BTreeMap<crate::config::Role, crate::identity::ModelIdentity>,
    /// Dataset.
    pub dataset: String,
    /// Split.
    pub split: String,
    /// Profile.
    pub profile: String,
    /// When it started (UTC, RFC 3339).
    pub started: String,
    /// When it was resumed, if it was.
    #[serde(default)]
    pub resumed: Vec<String>,
}

/// A run-folder problem.
#[derive(Debug, thiserror::Error)]
#[error("run folder {path}: {message}")]
pub struct FolderError {
    /// The folder.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub message: String,
}

/// Reads a journal line by line (one record in memory at a time), calling `each` with every
/// readable record in file order. A query run again after a resume appears again later in the
/// file; callers keep the last. Returns how many lines could not be read (a crash mid-write).
pub fn read_journal(path: &Path, mut each: impl FnMut(QueryRecord)) -> std::io::Result<usize> {
    use std::io::BufRead as _;
    let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
    // Bytes, not `read_line`: a line cut mid-character by a crash is skipped, not an error.
    let mut line = Vec::new();
    let mut skipped = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(skipped);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<QueryRecord>(&line) {
            Ok(r) => each(r),
            Err(_) => skipped += 1,
        }
    }
}

fn last_byte(path: &Path) -> Option<u8> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::End(-1)).ok()?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b).ok()?;
    Some(b[0])
}

fn write_line(journal: &Mutex<std::fs::File>, path: &Path, s: &str) -> Result<(), FolderError> {
    write_bytes(journal, path, s.as_bytes())
}

fn write_bytes(journal: &Mutex<std::fs::File>, path: &Path, s: &[u8]) -> Result<(), FolderError> {
    let mut f = journal.lock().unwrap_or_else(|e| e.into_inner());
    f.write_all(s)
        .and_then(|()| f.flush())
        .map_err(|e| FolderError {
            path: path.to_path_buf(),
            message: format!(
                "cannot write the journal: {e}; what it holds stays: free the disk and continue with --resume {}",
                path.display()
            ),
        })
}

/// One batch of records as journal lines, in one write after `delay` (a slow disk, injected),
/// failing as `fault` says (a full disk, injected: half the bytes first when it is a short
/// write). A record that cannot be serialised is named in the error; those before it are written.
fn write_records(
    journal: &Mutex<std::fs::File>,
    path: &Path,
    records: &[QueryRecord],
    delay: Option<std::time::Duration>,
    fault: Option<JournalFault>,
) -> Result<(), FolderError> {
    let mut batch: Vec<u8> = Vec::new();
    let mut bad = None;
    for record in records {
        let whole = batch.len();
        if let Err(e) = serde_json::to_writer(&mut batch, record) {
            batch.truncate(whole);
            bad = Some(FolderError {
                path: path.to_path_buf(),
                message: format!("cannot write query {} to the journal: {e}", record.id),
            });
            break;
        }
        batch.push(b'\n');
    }
    if !batch.is_empty() {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        if let Some(f) = fault {
            if f.short {
                write_bytes(journal, path, &batch[..batch.len() / 2])?;
            }
            return Err(FolderError {
                path: path.to_path_buf(),
                message: format!(
                    "cannot write the journal: {} (injected); what it holds stays: free the disk and continue with --resume {}",
                    std::io::Error::from(std::io::ErrorKind::StorageFull),
                    path.display()
                ),
            });
        }
        write_bytes(journal, path, &batch)?;
    }
    bad.map_or(Ok(()), Err)
}

/// Fault injection for benchmarks and tests: `IMAGESCOPE_FAULT_JOURNAL_DELAY_MS=N` makes every
/// journal write wait N ms first, as on a slow or remote disk. Unset in normal use.
fn journal_fault_delay() -> Option<std::time::Duration> {
    std::env::var("IMAGESCOPE_FAULT_JOURNAL_DELAY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(std::time::Duration::from_millis)
}

/// The journal's writer (`RunFolder::journal_writer`): an async task, so it stops with its
/// runtime; `finish` it before the runtime ends, or what is still queued is lost.
#[must_use = "call `finish` to write every queued record"]
pub struct JournalWriter {
    tx: tokio::sync::mpsc::Sender<QueryRecord>,
    handle: tokio::task::JoinHandle<Result<usize, FolderError>>,
    path: PathBuf,
}

impl JournalWriter {
    /// Queues a finished query for the journal; waits only while the queue is full.
    pub async fn send(&self, record: QueryRecord) -> Result<(), FolderError> {
        self.tx.send(record).await.map_err(|_| FolderError {
            path: self.path.clone(),
            message: "the journal writer stopped (see the error that follows)".into(),
        })
    }

    /// Writes every queued record and returns the writer's first error, if any.
    /// Returns how many writes it made.
    pub async fn finish(self) -> Result<usize, FolderError> {
        drop(self.tx);
        self.handle.await.map_err(|e| FolderError {
            path: self.path.clone(),
            message: format!("the journal writer stopped: {e}"),
        })?
    }
}

/// An open run folder.
pub struct RunFolder {
    path: PathBuf,
    journal: std::sync::Arc<Mutex<std::fs::File>>,
    faults: Option<JournalFault>,
}

/// A journal write failure to inject (the fault simulator, `tests/sim.rs`): the disk fills after
/// some writes. Never set in normal use.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalFault {
    /// Writes that succeed first.
    pub after_writes: usize,
    /// The failing write puts half its bytes on disk first (a short write), else none.
    pub short: bool,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A run folder checked for a resume (`RunFolder::check_resume`) and not yet written to.
#[derive(Debug)]
pub struct PendingResume {
    path: PathBuf,
    info: RunInfo,
    done: HashSet<String>,
    ends_mid_line: bool,
}

impl PendingResume {
    /// Resumes: opens the journal for appending (ending a partly written last line) and records
    /// the resume and its scheduling in `run.json`. Returns the folder, its updated info and the
    /// ids of the queries already done.
    pub fn commit(self) -> Result<(RunFolder, RunInfo, HashSet<String>), FolderError> {
        let folder = RunFolder::open_journal(self.path)?;
        // A partial last line must not glue onto the next record.
        if self.ends_mid_line {
            folder.raw_append("\n")?;
        }
        folder.write_json("run.json", &self.info)?;
        Ok((folder, self.info, self.done))
    }
}

impl RunFolder {
    /// Creates a new folder `runs_dir/<dataset>/<run_name>/<timestamp>[-n]`.
    /// A run name is one plain folder name: letters, digits, `.`, `_` and `-`, not starting with
    /// `.` (so it cannot climb out of the runs folder or hide).
    pub fn create(runs_dir: &Path, dataset: &str, run_name: &str) -> Result<Self, FolderError> {
        let plain = !run_name.is_empty()
            && run_name.len() <= 100
            && !run_name.starts_with('.')
            && run_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !plain {
            return Err(FolderError {
                path: runs_dir.join(dataset),
                message: format!(
                    "run name {run_name:?} is not a plain folder name; use letters, digits, '.', '_' and '-' (not starting with '.'), e.g. --run-name tau-0.2"
                ),
            });
        }
        let parent = runs_dir.join(dataset).join(run_name);
        let err = |path: &Path, e: std::io::Error| FolderError {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&parent).map_err(|e| err(&parent, e))?;
        let stamp: String = now_rfc3339()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        for n in 1..1000 {
            let name = if n == 1 {
                stamp.clone()
            } else {
                format!("{stamp}-{n}")
            };
            let path = parent.join(name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Self::open_journal(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err(&path, e)),
            }
        }
        Err(FolderError {
            path: parent,
            message: "could not find a free folder name".into(),
        })
    }

    fn open_journal(path: PathBuf) -> Result<Self, FolderError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.join("queries.jsonl"))
            .map_err(|e| FolderError {
                path: path.clone(),
                message: format!("cannot open the journal: {e}"),
            })?;
        Ok(RunFolder {
            path,
            journal: std::sync::Arc::new(Mutex::new(file)),
            faults: None,
        })
    }

    /// Opens an existing folder to resume it: `check_resume`, then `PendingResume::commit`.
    pub fn resume(
        path: &Path,
        expected: &RunInfo,
    ) -> Result<(Self, RunInfo, HashSet<String>), FolderError> {
        Self::check_resume(path, expected)?.commit()
    }

    /// Checks a folder for a resume, writing nothing: `run.json` against `expected` (version and
    /// identity), and the ids of the queries the journal holds as done (the last record of an id
    /// counts; failed ones run again). The journal is streamed, not held. A partly written last
    /// line (a crash mid-write) is ignored. Nothing is written until `commit`, so a run that stops
    /// between the two (its index could not be built) leaves the folder as it was.
    pub fn check_resume(path: &Path, expected: &RunInfo) -> Result<PendingResume, FolderError> {
        let bad = |message: String| FolderError {
            path: path.to_path_buf(),
            message,
        };
        let info_text = std::fs::read_to_string(path.join("run.json"))
            .map_err(|e| bad(format!("no readable run.json ({e}); is this a run folder?")))?;
        let mut info: RunInfo = serde_json::from_str(&info_text)
            .map_err(|e| bad(format!("run.json is not valid: {e}")))?;
        if info.version != expected.version {
            return Err(bad(format!(
                "it was made by imagescope {}, this is {}; start a new run instead of resuming",
                info.version, expected.version
            )));
        }
        if info.identity.is_null() {
            return Err(bad(
                "it was started by an imagescope that did not record what decides its answers (its identity), so a resume could mix two configurations unseen; start a new run".into(),
            ));
        }
        if info.identity_hash != expected.identity_hash {
            let diffs = crate::identity::differences(&info.identity, &expected.identity);
            return Err(bad(format!(
                "cannot resume: what decides its answers changed since it started:\n  - {}\nundo the change, or start a new run (without --resume) to answer with the new setting",
                if diffs.is_empty() {
                    "the identity's layout (a newer imagescope)".to_string()
                } else {
                    diffs.join("\n  - ")
                }
            )));
        }
        let now = now_rfc3339();
        let mut sched = Vec::new();
        crate::identity::diff_paths("", &info.scheduling, &expected.scheduling, &mut sched);
        for (key, a, b) in sched {
            let change = format!("{now}: {key}: {a} → {b}");
            tracing::info!("resume with a scheduling change: {key}: {a} → {b}");
            info.scheduling_changes.push(change);
        }
        info.scheduling = expected.scheduling.clone();
        info.config_hash = expected.config_hash.clone();
        info.models = expected.models.clone();
        let journal = path.join("queries.jsonl");
        let mut done: HashSet<String> = HashSet::new();
        let skipped = match read_journal(&journal, |r| {
            if r.status == Status::Done {
                done.insert(r.id);
            } else {
                done.remove(&r.id);
            }
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(bad(format!("cannot read queries.jsonl: {e}"))),
        };
        if skipped > 0 {
            tracing::warn!(
                "{skipped} unreadable journal line(s) ignored (a crash mid-write); those queries run again"
            );
        }
        let ends_mid_line = last_byte(&journal).is_some_and(|b| b != b'\n');
        info.resumed.push(now);
        Ok(PendingResume {
            path: path.to_path_buf(),
            info,
            done,
            ends_mid_line,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw_append(&self, s: &str) -> Result<(), FolderError> {
        write_line(&self.journal, &self.path, s)
    }

    /// Starts the journal's writer: records sent to it are serialised and appended, in the order
    /// sent, on the blocking pool (one call per batch), so no query waits for the disk. Every
    /// record queued by the time the disk is free (up to `capacity`) goes into one write, so a slow disk costs one wait per
    /// batch, not one per query; lines stay whole and in order. The channel holds `capacity`
    /// records; when the disk falls that far behind, `send` waits (back-pressure) rather than
    /// holding an unbounded queue in memory.
    pub fn journal_writer(&self, capacity: usize) -> JournalWriter {
        self.journal_writer_with(capacity, journal_fault_delay())
    }

    /// Makes this folder's journal writes fail as `fault` says (the fault simulator).
    #[doc(hidden)]
    pub fn inject_journal_fault(&mut self, fault: Option<JournalFault>) {
        self.faults = fault;
    }

    /// `journal_writer`, every write waiting `delay` first (fault injection).
    ///
    /// The writer is an async task that hands each batch to the blocking pool and waits for it,
    /// rather than one blocking thread held for the whole run: a blocking call that lasts the
    /// run would keep a runtime with paused time (the fault simulator's) from ever advancing
    /// its clock. Batches are written one at a time, in order.
    fn journal_writer_with(
        &self,
        capacity: usize,
        delay: Option<std::time::Duration>,
    ) -> JournalWriter {
        let capacity = capacity.max(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<QueryRecord>(capacity);
        let (journal, path, fault) = (self.journal.clone(), self.path.clone(), self.faults);
        let handle = tokio::spawn(async move {
            let mut writes = 0;
            let mut records = Vec::with_capacity(capacity);
            while rx.recv_many(&mut records, capacity).await > 0 {
                let batch = std::mem::take(&mut records);
                let (file, at) = (journal.clone(), path.clone());
                let injected = fault.filter(|f| writes >= f.after_writes);
                tokio::task::spawn_blocking(move || {
                    write_records(&file, &at, &batch, delay, injected)
                })
                .await
                .map_err(|e| FolderError {
                    path: path.clone(),
                    message: format!("the journal writer stopped: {e}"),
                })??;
                writes += 1;
            }
            Ok(writes)
        });
        JournalWriter {
            tx,
            handle,
            path: self.path.clone(),
        }
    }

    /// Writes a pretty JSON file in the folder.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> Result<(), FolderError> {
        let text = serde_json::to_string_pretty(value).map_err(|e| FolderError {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        self.write_text(name, &(text + "\n"))
    }

    /// Writes a text file in the folder (atomically: a temporary file renamed into place).
    pub fn write_text(&self, name: &str, text: &str) -> Result<(), FolderError> {
        let path = self.path.join(name);
        crate::files::write_atomic(&path, text).map_err(|e| FolderError {
            path: path.clone(),
            message: e.to_string(),
        })
    }

    /// Copies the prompt templates used into `prompts/`.
    pub fn copy_prompts(&self, files: &BTreeMap<String, String>) -> Result<(), FolderError> {
        for (name, text) in files {
            let path = self.path.join("prompts").join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| FolderError {
                    path: parent.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
            crate::files::write_atomic(&path, text).map_err(|e| FolderError {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// `RunInfo` for a new run: `identity` and `scheduling` as `crate::identity` splits them.
    pub fn info(
        config_hash: String,
        (identity, identity_hash): (serde_json::Value, String),
        scheduling: serde_json::Value,
        dataset: &str,
        split: &str,
        profile: &str,
    ) -> RunInfo {
        RunInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_hash,
            identity_hash,
            identity,
            scheduling,
            scheduling_changes: Vec::new(),
            models: BTreeMap::new(),
            dataset: dataset.into(),
            split: split.into(),
            profile: profile.into(),
            started: now_rfc3339(),
            resumed: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_info() -> RunInfo {
        RunFolder::info(
            "abc".into(),
            (
                serde_json::json!({"prompts": {"general/a.j2": "11"}}),
                "id1".into(),
            ),
            serde_json::json!({"roles": {"reasoner": {"max_in_flight": 4}}}),
            "cirr",
            "val",
            "default",
        )
    }

    #[test]
    fn runs_started_in_the_same_second_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunFolder::create(dir.path(), "cirr", "x").unwrap();
        let b = RunFolder::create(dir.path(), "cirr", "x").unwrap();
        assert_ne!(a.path(), b.path());
    }

    #[test]
    fn resume_checks_version_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::create(dir.path(), "cirr", "x").unwrap();
        let info = test_info();
        f.write_json("run.json", &info).unwrap();
        let mut other = info.clone();
        other.identity = serde_json::json!({"prompts": {"general/a.j2": "22"}});
        other.identity_hash = "def".into();
        let err = RunFolder::resume(f.path(), &other)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("prompts/general/a.j2 changed since this run started"),
            "{err}"
        );
        let mut moved = info.clone();
        moved.scheduling = serde_json::json!({"roles": {"reasoner": {"max_in_flight": 9}}});
        let (_, resumed, _) = RunFolder::resume(f.path(), &moved).unwrap();
        assert_eq!(resumed.scheduling_changes.len(), 1, "{resumed:?}");
        assert!(resumed.scheduling_changes[0].contains("roles.reasoner.max_in_flight: 4 → 9"));
        let mut old = info.clone();
        old.version = "0.0.1".into();
        assert!(
            RunFolder::resume(f.path(), &old)
                .err()
                .unwrap()
                .to_string()
                .contains("imagescope")
        );
        assert!(RunFolder::resume(f.path(), &info).is_ok());
        assert!(
            RunFolder::resume(dir.path(), &info)
                .err()
                .unwrap()
                .to_string()
                .contains("run folder?")
        );
    }

    fn line(id: &str, status: &str) -> String {
        format!(
            "{{\"id\":\"{id}\",\"status\":\"{status}\",\"reference\":null,\"targets\":[],\"rounds\":[],\"fallbacks\":[],\"timings_ms\":{{}},\"tokens\":{{}},\"requests\":0,\"cached\":0,\"note\":\"café\"}}\n"
        )
    }

    #[test]
    fn journal_is_streamed_and_survives_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::create(dir.path(), "cirr", "x").unwrap();
        let info = test_info();
        f.write_json("run.json", &info).unwrap();
        let mut text = line("1", "done") + &line("2", "failed") + &line("3", "done");
        text += &line("2", "done");
        text += &line("1", "failed");
        // A crash cut the last record inside the two-byte "é".
        let cut = line("4", "done");
        let at = cut.find('é').unwrap() + 1;
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&cut.as_bytes()[..at]);
        std::fs::write(f.path().join("queries.jsonl"), &bytes).unwrap();
        let mut seen = Vec::new();
        let skipped = read_journal(&f.path().join("queries.jsonl"), |r| seen.push(r.id)).unwrap();
        assert_eq!(
            (seen, skipped),
            (
                vec!["1", "2", "3", "2", "1"]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>(),
                1
            )
        );
        let (_, _, done) = RunFolder::resume(f.path(), &info).unwrap();
        let mut done: Vec<String> = done.into_iter().collect();
        done.sort();
        assert_eq!(done, ["2", "3"], "the last record of each query counts");
        // The cut line is closed, so the next record starts on its own line.
        let after = std::fs::read(f.path().join("queries.jsonl")).unwrap();
        assert_eq!(after.last(), Some(&b'\n'));
    }

    fn record(i: usize) -> QueryRecord {
        QueryRecord {
            id: format!("q{i}"),
            status: Status::Done,
            error: None,
            failure_kind: None,
            reference: None,
            targets: vec![],
            rounds: vec![],
            fallbacks: vec![],
            timings_ms: BTreeMap::new(),
            tokens: BTreeMap::new(),
            requests: 1,
            cached: 0,
            retries: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_moves_while_the_writer_waits_for_records() {
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::create(dir.path(), "cirr", "x").unwrap();
        let writer = f.journal_writer_with(4, None);
        writer.send(record(0)).await.unwrap();
        // A writer held on the blocking pool for the whole run would hold the paused clock too,
        // and this sleep would never end.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::time::sleep(std::time::Duration::from_secs(1)),
        )
        .await
        .unwrap();
        writer.send(record(1)).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), 2, "one write per batch");
        let mut ids = Vec::new();
        read_journal(&f.path().join("queries.jsonl"), |r| ids.push(r.id)).unwrap();
        assert_eq!(ids, ["q0", "q1"]);
    }

    #[tokio::test]
    async fn a_full_disk_stops_the_writer_naming_resume_and_keeps_what_was_written() {
        for short in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut f = RunFolder::create(dir.path(), "cirr", "x").unwrap();
            f.inject_journal_fault(Some(JournalFault {
                after_writes: 1,
                short,
            }));
            let writer = f.journal_writer_with(1, None);
            writer.send(record(0)).await.unwrap();
            // The writer takes one record a batch (capacity 1); the second batch fails, and a
            // send after it finds the writer stopped.
            let mut sent = 1;
            while sent < 10 && writer.send(record(sent)).await.is_ok() {
                sent += 1;
            }
            assert!(sent < 10, "the writer went on after the disk filled");
            let e = writer.finish().await.unwrap_err();
            assert!(
                e.message.contains("cannot write the journal") && e.message.contains("--resume"),
                "{e}"
            );
            let mut ids = Vec::new();
            let cut = read_journal(&f.path().join("queries.jsonl"), |r| ids.push(r.id)).unwrap();
            assert_eq!(ids, ["q0"], "the first write stays");
            assert_eq!(cut, usize::from(short), "a short write leaves one cut line");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_queued_faster_than_the_disk_are_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::create(dir.path(), "cirr", "x").unwrap();
        // A small queue and a slow disk (2 ms a write): the sender waits while the queue is
        // full, and the writer takes what has queued up meanwhile in one write.
        let writer = f.journal_writer_with(8, Some(std::time::Duration::from_millis(2)));
        for i in 0..2_000 {
            writer.send(record(i)).await.unwrap();
        }
        let writes = writer.finish().await.unwrap();
        // One write per line would be 2,000 (and 4 s of waiting); batches take several each.
        assert!(writes < 1_000, "{writes} writes for 2,000 records");
        let mut ids = Vec::new();
        let skipped = read_journal(&f.path().join("queries.jsonl"), |r| ids.push(r.id)).unwrap();
        assert_eq!(skipped, 0, "no line cut");
        let expected: Vec<String> = (0..2_000).map(|i| format!("q{i}")).collect();
        assert_eq!(ids, expected);
    }
}
