//! The request cache: every model answer stored in SQLite under a key hashed from the role and the
//! full request body (model, messages, sampling, extra fields), with images replaced by the blake3
//! of their bytes. A rerun, a resumed run or a run with one changed prompt reuses every answer it
//! can and sends only the requests whose bodies changed.
//!
//! Only valid answers are stored (never errors or 5xx). A writer thread with its own connection
//! commits them (whatever is queued, in one transaction, in WAL mode), so no request waits on
//! SQLite; reads are short lookups run on the blocking pool. `kill -9` loses at most the requests
//! in flight and the answers still queued for the writer. Modes: `on` (read and write), `off`,
//! `read-only`, `write-only`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::config::Role;

/// How the cache is used.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    strum::EnumString,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum CacheMode {
    /// Read and write.
    #[default]
    On,
    /// Neither.
    Off,
    /// Read only: reuse answers, store nothing new.
    ReadOnly,
    /// Write only: always ask the servers, store the answers.
    WriteOnly,
}

/// A cache problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("request cache {path}: {message}")]
pub struct CacheError {
    /// The SQLite file.
    pub path: PathBuf,
    /// What failed.
    pub message: String,
}

/// Read connections of one cache (the blocking pool runs lookups side by side).
const READERS: usize = 4;

/// A cache write failure to inject (the fault simulator, `tests/sim.rs`): every batch after the
/// first `after_batches` fails as on a full disk. Never set in normal use.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFault {
    /// Batches stored first.
    pub after_batches: usize,
}

/// What the cache and its writer thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Answers queued for the writer.
    queued: std::sync::atomic::AtomicUsize,
    /// Answers the writer stored.
    stored: std::sync::atomic::AtomicUsize,
    /// Answers the writer could not store, or that came after `close`.
    unstored: std::sync::atomic::AtomicUsize,
    fault: Mutex<Option<CacheFault>>,
}

/// One answer on its way to the writer thread.
struct Row {
    key: String,
    role: Role,
    model: String,
    answer: String,
}

/// The request cache.
pub struct Cache {
    /// Read connections (short indexed lookups run on the blocking pool): several, so lookups of
    /// concurrent requests do not queue behind one lock (WAL lets readers run side by side).
    readers: Vec<Mutex<Connection>>,
    /// Where the next lookup starts looking for a free reader.
    next_reader: std::sync::atomic::AtomicUsize,
    /// Writes go to one writer thread with its own connection, so a request never waits for a
    /// SQLite commit; `None` once closed.
    writer: Mutex<Option<(std::sync::mpsc::Sender<Row>, std::thread::JoinHandle<()>)>>,
    shared: std::sync::Arc<Shared>,
    path: PathBuf,
    mode: CacheMode,
}

impl Drop for Cache {
    /// Waits for the writer thread to store every queued answer.
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: stores rows as they come, committing whatever is queued in one transaction.
/// A batch that cannot be stored is counted (`Cache::unstored`) and logged; the run goes on.
fn write_rows(
    mut conn: Connection,
    rows: std::sync::mpsc::Receiver<Row>,
    path: PathBuf,
    shared: std::sync::Arc<Shared>,
) {
    let mut batches = 0;
    while let Ok(first) = rows.recv() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let batch: Vec<Row> = std::iter::once(first).chain(rows.try_iter()).collect();
        let fault = *shared.fault.lock().unwrap_or_else(|e| e.into_inner());
        let injected = fault.is_some_and(|f| batches >= f.after_batches);
        batches += 1;
        let stored = if injected {
            Err("database or disk is full (injected)".to_string())
        } else {
            store(&mut conn, &batch, now).map_err(|e| e.to_string())
        };
        if stored.is_ok() {
            shared
                .stored
                .fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = stored {
            shared
                .unstored
                .fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                cache = %path.display(),
                "cache write failed: {e}; {} answer(s) not stored (a rerun asks for them again)",
                batch.len()
            );
        }
    }
}

/// Stores one batch in one transaction.
fn store(conn: &mut Connection, batch: &[Row], now: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO answers (key, role, model, answer, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for r in batch {
            stmt.execute(params![r.key, r.role.as_str(), r.model, r.answer, now])?;
        }
    }
    tx.commit()
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({}, {:?})", self.path.display(), self.mode)
    }
}

/// The key of a request: blake3 over the role, the checkpoint behind the served name (when known:
/// another checkpoint under the same name must not reuse these answers) and the canonical body.
/// Without a checkpoint the key is the role and body alone.
pub fn key(role: Role, checkpoint: Option<&str>, body: &serde_json::Value) -> String {
    let mut h = blake3::Hasher::new();
    h.update(role.as_str().as_bytes());
    h.update(&[0]);
    if let Some(c) = checkpoint {
        h.update(b"checkpoint:");
        h.update(c.as_bytes());
        h.update(&[0]);
    }
    h.update(body.to_string().as_bytes());
    h.finalize().to_hex().to_string()
}

impl Cache {
    /// Opens (creating) the cache at `path`.
    /// A file that is not a readable cache is an error that names both ways out; it is never
    /// reset silently (the answers in it may be all a run has).
    pub fn open(path: &Path, mode: CacheMode) -> Result<Self, CacheError> {
        let err = |e: rusqlite::Error| CacheError {
            path: path.to_path_buf(),
            message: format!(
                "{e}; the file is damaged or is not an imagescope cache. Run with `--cache off` to go on without it, or move it aside (`mv {p} {p}.damaged`) to start a new cache",
                p = path.display()
            ),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| CacheError {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 10000;
             CREATE TABLE IF NOT EXISTS answers (
                 key TEXT PRIMARY KEY,
                 role TEXT NOT NULL,
                 model TEXT NOT NULL,
                 answer TEXT NOT NULL,
                 created INTEGER NOT NULL
             );",
        )
        .map_err(err)?;
        // A damaged file can pass the pragmas above; reading the table's root page finds it.
        conn.query_row("SELECT COUNT(*) FROM answers WHERE key = ''", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(err)?;
        let mut readers = vec![Mutex::new(conn)];
        for _ in 1..READERS {
            let c = Connection::open(path).map_err(err)?;
            c.execute_batch("PRAGMA busy_timeout = 10000;")
                .map_err(err)?;
            readers.push(Mutex::new(c));
        }
        let writer_conn = Connection::open(path).map_err(err)?;
        writer_conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
            .map_err(err)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_path = path.to_path_buf();
        let shared = std::sync::Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("cache-writer".into())
            .spawn(move || write_rows(writer_conn, rx, thread_path, thread_shared))
            .map_err(|e| CacheError {
                path: path.to_path_buf(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Cache {
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            writer: Mutex::new(Some((tx, handle))),
            shared,
            path: path.to_path_buf(),
            mode,
        })
    }

    /// Stores every queued answer and stops the writer; later `put`s are dropped. Called on drop.
    pub fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, handle)) = writer {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A free read connection, or (all busy) the next one in turn.
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        let n = self.readers.len();
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for k in 0..n {
            if let Ok(guard) = self.readers[(start + k) % n].try_lock() {
                return guard;
            }
        }
        self.readers[start % n]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A stored answer, when reading is on, looked up on the blocking pool.
    pub async fn get_async(self: &std::sync::Arc<Self>, key: &str) -> Option<String> {
        if matches!(self.mode, CacheMode::Off | CacheMode::WriteOnly) {
            return None;
        }
        let (cache, key) = (self.clone(), key.to_string());
        tokio::task::spawn_blocking(move || cache.get(&key))
            .await
            .ok()
            .flatten()
    }

    /// A stored answer, when reading is on.
    pub fn get(&self, key: &str) -> Option<String> {
        if matches!(self.mode, CacheMode::Off | CacheMode::WriteOnly) {
            return None;
        }
        match self
            .conn()
            .query_row("SELECT answer FROM answers WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(cache = %self.path.display(), "cache read failed: {e}");
                None
            }
        }
    }

    /// Queues an answer for the writer thread, when writing is on: returns at once. A failure to
    /// write is logged, never fatal; `kill -9` loses the answers still queued (milliseconds' worth).
    pub fn put(&self, key: &str, role: Role, model: &str, answer: &str) {
        if matches!(self.mode, CacheMode::Off | CacheMode::ReadOnly) {
            return;
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let queued = writer.as_ref().is_some_and(|(tx, _)| {
            tx.send(Row {
                key: key.into(),
                role,
                model: model.into(),
                answer: answer.into(),
            })
            .is_ok()
        });
        let counter = if queued {
            &self.shared.queued
        } else {
            tracing::debug!(cache = %self.path.display(), "an answer after the cache was closed is not stored");
            &self.shared.unstored
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers not stored so far: the writer failed to, or they came after `close` (all of them
    /// once `close` has returned).
    pub fn unstored(&self) -> usize {
        self.shared
            .unstored
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers queued for the writer and answers it stored, so far. Once `close` has returned,
    /// every queued answer was stored or counted in `unstored`.
    pub fn writes(&self) -> (usize, usize) {
        let n = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::Relaxed);
        (n(&self.shared.queued), n(&self.shared.stored))
    }

    /// Makes the writer's batches fail as `fault` says (the fault simulator).
    #[doc(hidden)]
    pub fn inject_write_fault(&self, fault: Option<CacheFault>) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Number of stored answers.
    pub fn len(&self) -> usize {
        self.conn()
            .query_row("SELECT COUNT(*) FROM answers", [], |r| r.get::<_, i64>(0))
            .map_or(0, |n| n as usize)
    }

    /// Whether no answer is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_gate_reads_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        let c = Cache::open(&p, CacheMode::On).unwrap();
        let k = key(Role::Reasoner, None, &serde_json::json!({"a": 1}));
        assert_ne!(
            k,
            key(Role::Verifier, None, &serde_json::json!({"a": 1})),
            "the role is part of the key"
        );
        let a = key(Role::Reasoner, Some("/m/a"), &serde_json::json!({"a": 1}));
        assert_ne!(a, k, "a known checkpoint is part of the key");
        assert_ne!(
            a,
            key(Role::Reasoner, Some("/m/b"), &serde_json::json!({"a": 1})),
            "another checkpoint under the same served name is another key"
        );
        c.put(&k, Role::Reasoner, "m", "answer");
        c.close();
        assert_eq!(
            c.get(&k).as_deref(),
            Some("answer"),
            "stored once the writer is done"
        );
        let ro = Cache::open(&p, CacheMode::ReadOnly).unwrap();
        ro.put("other", Role::Reasoner, "m", "x");
        assert_eq!(ro.get("other"), None);
        assert_eq!(ro.get(&k).as_deref(), Some("answer"));
        let wo = Cache::open(&p, CacheMode::WriteOnly).unwrap();
        assert_eq!(wo.get(&k), None);
        let check: String = c
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn answers_a_full_disk_kept_out_are_counted_and_the_rest_stored() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(&dir.path().join("c.sqlite"), CacheMode::On).unwrap();
        c.put("before", Role::Verifier, "m", "yes");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while c.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the first answer was never stored"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        c.inject_write_fault(Some(CacheFault { after_batches: 1 }));
        for i in 0..3 {
            c.put(&format!("k{i}"), Role::Verifier, "m", "no");
        }
        c.close();
        assert_eq!(c.unstored(), 3, "every answer of a failed batch is counted");
        assert_eq!(c.writes(), (4, 1), "4 queued, 1 stored");
        c.put("late", Role::Verifier, "m", "yes");
        assert_eq!(
            c.unstored(),
            4,
            "an answer after close is counted as not stored"
        );
        assert_eq!(
            c.get("before").as_deref(),
            Some("yes"),
            "what was stored stays"
        );
        assert_eq!(c.get("k0"), None);
    }

    #[test]
    fn puts_return_at_once_while_the_database_is_locked_and_are_stored_after() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        let c = Cache::open(&p, CacheMode::On).unwrap();
        // Another process holds the write lock (a backup, a second run...).
        let other = Connection::open(&p).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        for i in 0..50 {
            c.put(&format!("k{i}"), Role::Verifier, "m", "yes");
        }
        // Every put returned although nothing could be written yet.
        other.execute_batch("COMMIT;").unwrap();
        c.close();
        assert_eq!(c.len(), 50, "all stored once the lock is gone");
        c.put("late", Role::Verifier, "m", "yes");
        assert_eq!(c.get("late"), None, "a closed cache stores nothing more");
    }
}
