//! The request cache: every model answer stored in SQLite under a key hashed from the role and the
//! full request body (model, messages, sampling, extra fields), with images replaced by the blake3
//! of their bytes. A rerun, a resumed run or a run with one changed prompt reuses every answer it
//! can and sends only the requests whose bodies changed.
//!
//! Only valid answers are stored (never errors or 5xx). Each answer is committed on its own in WAL
//! mode, so `kill -9` loses at most the requests in flight. Modes: `on` (read and write), `off`,
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

/// The request cache.
pub struct Cache {
    conn: Mutex<Connection>,
    path: PathBuf,
    mode: CacheMode,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({}, {:?})", self.path.display(), self.mode)
    }
}

/// The key of a request: blake3 over the role and the canonical body.
pub fn key(role: Role, body: &serde_json::Value) -> String {
    let mut h = blake3::Hasher::new();
    h.update(role.as_str().as_bytes());
    h.update(&[0]);
    h.update(body.to_string().as_bytes());
    h.finalize().to_hex().to_string()
}

impl Cache {
    /// Opens (creating) the cache at `path`.
    pub fn open(path: &Path, mode: CacheMode) -> Result<Self, CacheError> {
        let err = |e: rusqlite::Error| CacheError {
            path: path.to_path_buf(),
            message: e.to_string(),
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
        Ok(Cache {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            mode,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Stores an answer, when writing is on. A failure to write is logged, never fatal.
    pub fn put(&self, key: &str, role: Role, model: &str, answer: &str) {
        if matches!(self.mode, CacheMode::Off | CacheMode::ReadOnly) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Err(e) = self.conn().execute(
            "INSERT OR REPLACE INTO answers (key, role, model, answer, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key, role.as_str(), model, answer, now],
        ) {
            tracing::warn!(cache = %self.path.display(), "cache write failed: {e}");
        }
    }

    /// `PRAGMA integrity_check` answered "ok".
    pub fn integrity_ok(&self) -> bool {
        self.conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .is_ok_and(|s| s == "ok")
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
        let k = key(Role::Reasoner, &serde_json::json!({"a": 1}));
        assert_ne!(
            k,
            key(Role::Verifier, &serde_json::json!({"a": 1})),
            "the role is part of the key"
        );
        c.put(&k, Role::Reasoner, "m", "answer");
        assert_eq!(c.get(&k).as_deref(), Some("answer"));
        let ro = Cache::open(&p, CacheMode::ReadOnly).unwrap();
        ro.put("other", Role::Reasoner, "m", "x");
        assert_eq!(ro.get("other"), None);
        assert_eq!(ro.get(&k).as_deref(), Some("answer"));
        let wo = Cache::open(&p, CacheMode::WriteOnly).unwrap();
        assert_eq!(wo.get(&k), None);
        assert!(c.integrity_ok());
    }
}
