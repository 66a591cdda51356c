//! The image database's SQLite store: one row per gallery image with its status, caption, content
//! hash and unit-length f32 vectors (image and caption); the fingerprint lives beside it in
//! `fingerprint.json`. SQLite is the source of truth; the usearch indexes are derived from it.
//!
//! WAL mode with `synchronous = NORMAL`: a committed transaction survives `kill -9` of the
//! process. Work is committed in small batches, so a crash loses at most the batch being written.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::datasets::{GalleryImage, ImageKey};

/// A store problem, naming the database file.
#[derive(Debug, thiserror::Error)]
#[error("image database {path}: {message}")]
pub struct StoreError {
    /// The SQLite file.
    pub path: PathBuf,
    /// What failed.
    pub message: String,
}

/// Why an image has no vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The file is missing, unreadable or not a decodable image (not retried unless asked).
    Image,
    /// A model server failed after its retries (retried on the next run).
    Server,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            FailureKind::Image => "image",
            FailureKind::Server => "server",
        }
    }
}

/// The outcome of indexing one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Captioned and embedded.
    Done {
        /// Row id.
        idx: u64,
        /// blake3 of the file.
        content_hash: String,
        /// The file's size and modification time when it was read (the quick change check).
        stamp: Option<Stamp>,
        /// The caption.
        caption: String,
        /// Unit image vector (absent for caption-only galleries).
        image_vec: Option<Vec<f32>>,
        /// Unit caption vector.
        caption_vec: Vec<f32>,
    },
    /// Failed, with the reason.
    Failed {
        /// Row id.
        idx: u64,
        /// Which kind of failure.
        kind: FailureKind,
        /// Why.
        error: String,
    },
}

/// An image still to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Row id (the usearch key).
    pub idx: u64,
    /// Gallery key.
    pub key: ImageKey,
    /// File.
    pub path: PathBuf,
}

/// Counts by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counts {
    /// Not yet indexed.
    pub pending: u64,
    /// Indexed.
    pub done: u64,
    /// Failed.
    pub failed: u64,
}

/// The SQLite store of one image database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// What the store recorded of a done image's file: row id, content hash, stamp.
pub type DoneFile = (u64, String, Option<Stamp>);

/// A file's size and modification time: the quick check that it is what was indexed (a differing
/// stamp sends the file to a hash comparison, which decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

impl Stamp {
    /// The stamp of a file now, if it can be read.
    pub fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        let mtime = m.modified().ok()?;
        let ns = match mtime.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        };
        Some(Stamp {
            size: m.len(),
            mtime_ns: ns,
        })
    }
}

/// Decodes a little-endian f32 blob.
pub fn unblob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let s = Store {
            conn,
            path: path.to_path_buf(),
        };
        s.exec(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS images (
                 idx INTEGER PRIMARY KEY,
                 key TEXT NOT NULL UNIQUE,
                 path TEXT NOT NULL,
                 status TEXT NOT NULL DEFAULT 'pending',
                 content_hash TEXT,
                 caption TEXT,
                 image_vec BLOB,
                 caption_vec BLOB,
                 error TEXT,
                 error_kind TEXT,
                 file_size INTEGER,
                 file_mtime_ns INTEGER
             );",
        )?;
        // Stores made before files were stamped get the two columns (empty: checked by hash once).
        let has_stamp: bool = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('images') WHERE name = 'file_size'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| s.err(e))?
            > 0;
        if !has_stamp {
            s.exec(
                "BEGIN;
                 ALTER TABLE images ADD COLUMN file_size INTEGER;
                 ALTER TABLE images ADD COLUMN file_mtime_ns INTEGER;
                 COMMIT;",
            )?;
        }
        Ok(s)
    }

    /// Runs `f`'s reads on one snapshot of the store: in WAL mode a read transaction sees the
    /// database as it was at its first read, so a digest and the rows read after it describe the
    /// same state even while `imagescope index` commits beside it.
    pub fn snapshot<T>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let out = f(self)?;
        // Read only: ending it either way is the same; commit says so.
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// blake3 over every done image's row id, content hash and caption, in row order: what a
    /// search and the captions can return. Re-indexing a changed photo, filling in a failed one or
    /// rebuilding the database in place changes it.
    pub fn content_digest(&self) -> Result<String, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT idx, COALESCE(content_hash, ''), COALESCE(caption, '') FROM images WHERE status = 'done' ORDER BY idx")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut h = blake3::Hasher::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let idx: i64 = r.get(0).map_err(|e| self.err(e))?;
            let hash: String = r.get(1).map_err(|e| self.err(e))?;
            let caption: String = r.get(2).map_err(|e| self.err(e))?;
            h.update(&idx.to_le_bytes());
            h.update(hash.as_bytes());
            h.update(&[0]);
            h.update(caption.as_bytes());
            h.update(&[0]);
        }
        Ok(h.finalize().to_hex()[..16].to_string())
    }

    /// Every done image: key → (row id, content hash, stamp when recorded).
    pub fn done_files(&self) -> Result<std::collections::HashMap<ImageKey, DoneFile>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT idx, key, COALESCE(content_hash, ''), file_size, file_mtime_ns FROM images WHERE status = 'done'")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let size: Option<i64> = r.get(3)?;
                let mtime: Option<i64> = r.get(4)?;
                Ok((
                    ImageKey(r.get(1)?),
                    (
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, String>(2)?,
                        size.zip(mtime).map(|(size, mtime_ns)| Stamp {
                            size: size as u64,
                            mtime_ns,
                        }),
                    ),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Sends rows back to `pending` (their photo changed): caption, vectors and hash cleared, so
    /// the next build captions and embeds them again.
    pub fn reset(&mut self, idxs: &[u64]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |e: rusqlite::Error| StoreError {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(e)?;
        for idx in idxs {
            tx.execute(
                "UPDATE images SET status = 'pending', content_hash = NULL, caption = NULL, image_vec = NULL,
                 caption_vec = NULL, error = NULL, error_kind = NULL, file_size = NULL, file_mtime_ns = NULL
                 WHERE idx = ?1",
                params![*idx as i64],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// Records the stamps of rows found unchanged by their hash (so the next check is quick).
    pub fn set_stamps(&mut self, stamps: &[(u64, Stamp)]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |e: rusqlite::Error| StoreError {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(e)?;
        for (idx, s) in stamps {
            tx.execute(
                "UPDATE images SET file_size = ?2, file_mtime_ns = ?3 WHERE idx = ?1",
                params![*idx as i64, s.size as i64, s.mtime_ns],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(|e| self.err(e))
    }

    /// Adds gallery images not yet known (new rows get the next ids); returns how many were new.
    pub fn register(&mut self, images: &[GalleryImage]) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| StoreError {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut added = 0;
        {
            let mut stmt = tx
                .prepare("INSERT OR IGNORE INTO images (key, path) VALUES (?1, ?2)")
                .map_err(|e| StoreError {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for img in images {
                added += stmt
                    .execute(params![img.key.as_str(), img.path.to_string_lossy()])
                    .map_err(|e| StoreError {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
            }
        }
        tx.commit().map_err(|e| StoreError {
            path,
            message: e.to_string(),
        })?;
        Ok(added)
    }

    /// Images still to index: pending ones, server failures, and image failures if `retry_images`.
    pub fn pending(&self, retry_images: bool) -> Result<Vec<Pending>, StoreError> {
        let sql = if retry_images {
            "SELECT idx, key, path FROM images WHERE status != 'done' ORDER BY idx"
        } else {
            "SELECT idx, key, path FROM images WHERE status = 'pending' OR (status = 'failed' AND error_kind = 'server') ORDER BY idx"
        };
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Pending {
                    idx: r.get::<_, i64>(0)? as u64,
                    key: ImageKey(r.get(1)?),
                    path: PathBuf::from(r.get::<_, String>(2)?),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Writes a batch of outcomes in one transaction.
    pub fn commit(&mut self, batch: &[Outcome]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |e: rusqlite::Error| StoreError {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(e)?;
        for o in batch {
            match o {
                Outcome::Done {
                    idx,
                    content_hash,
                    stamp,
                    caption,
                    image_vec,
                    caption_vec,
                } => {
                    tx.execute(
                        "UPDATE images SET status = 'done', content_hash = ?2, caption = ?3, image_vec = ?4,
                         caption_vec = ?5, error = NULL, error_kind = NULL, file_size = ?6, file_mtime_ns = ?7
                         WHERE idx = ?1",
                        params![
                            *idx as i64,
                            content_hash,
                            caption,
                            image_vec.as_deref().map(blob),
                            blob(caption_vec),
                            stamp.map(|s| s.size as i64),
                            stamp.map(|s| s.mtime_ns)
                        ],
                    )
                    .map_err(e)?;
                }
                Outcome::Failed { idx, kind, error } => {
                    tx.execute(
                        "UPDATE images SET status = 'failed', error = ?2, error_kind = ?3 WHERE idx = ?1",
                        params![*idx as i64, error, kind.as_str()],
                    )
                    .map_err(e)?;
                }
            }
        }
        tx.commit().map_err(e)
    }

    /// Counts by status.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let mut c = Counts::default();
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*) FROM images GROUP BY status")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (status, n) = row.map_err(|e| self.err(e))?;
            match status.as_str() {
                "done" => c.done = n,
                "failed" => c.failed = n,
                _ => c.pending += n,
            }
        }
        Ok(c)
    }

    /// Failed images with their reasons.
    pub fn failures(&self) -> Result<Vec<(ImageKey, String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, COALESCE(error_kind, ''), COALESCE(error, '') FROM images WHERE status = 'failed' ORDER BY idx")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((ImageKey(r.get(0)?), r.get(1)?, r.get(2)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Calls `f(idx, key, caption, image_vec, caption_vec)` for every indexed image, in id order.
    pub fn for_each_done(
        &self,
        mut f: impl FnMut(u64, ImageKey, String, Option<Vec<f32>>, Vec<f32>),
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT idx, key, caption, image_vec, caption_vec FROM images WHERE status = 'done' ORDER BY idx")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let idx: i64 = r.get(0).map_err(|e| self.err(e))?;
            let key: String = r.get(1).map_err(|e| self.err(e))?;
            let caption: Option<String> = r.get(2).map_err(|e| self.err(e))?;
            let image: Option<Vec<u8>> = r.get(3).map_err(|e| self.err(e))?;
            let cap: Option<Vec<u8>> = r.get(4).map_err(|e| self.err(e))?;
            f(
                idx as u64,
                ImageKey(key),
                caption.unwrap_or_default(),
                image.as_deref().map(unblob),
                cap.as_deref().map(unblob).unwrap_or_default(),
            );
        }
        Ok(())
    }

    /// Calls `f(idx, key, caption, caption_dim, image_dim)` for every indexed image, in id order,
    /// without reading the vectors themselves (opening a database needs only these).
    pub fn for_each_done_meta(
        &self,
        mut f: impl FnMut(u64, ImageKey, String, usize, Option<usize>),
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT idx, key, caption, length(caption_vec), length(image_vec) FROM images WHERE status = 'done' ORDER BY idx",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let idx: i64 = r.get(0).map_err(|e| self.err(e))?;
            let key: String = r.get(1).map_err(|e| self.err(e))?;
            let caption: Option<String> = r.get(2).map_err(|e| self.err(e))?;
            let cap: Option<i64> = r.get(3).map_err(|e| self.err(e))?;
            let img: Option<i64> = r.get(4).map_err(|e| self.err(e))?;
            f(
                idx as u64,
                ImageKey(key),
                caption.unwrap_or_default(),
                cap.unwrap_or(0) as usize / 4,
                img.map(|n| n as usize / 4),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_commit_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let imgs: Vec<GalleryImage> = (0..3)
            .map(|i| GalleryImage {
                key: ImageKey(format!("k{i}")),
                path: PathBuf::from(format!("/x/{i}.png")),
            })
            .collect();
        assert_eq!(s.register(&imgs).unwrap(), 3);
        assert_eq!(s.register(&imgs).unwrap(), 0, "registration is idempotent");
        let p = s.pending(false).unwrap();
        s.commit(&[
            Outcome::Done {
                idx: p[0].idx,
                content_hash: "h".into(),
                stamp: None,
                caption: "a cat".into(),
                image_vec: Some(vec![1.0, 0.0]),
                caption_vec: vec![0.0, 1.0],
            },
            Outcome::Failed {
                idx: p[1].idx,
                kind: FailureKind::Image,
                error: "zero bytes".into(),
            },
            Outcome::Failed {
                idx: p[2].idx,
                kind: FailureKind::Server,
                error: "HTTP 500".into(),
            },
        ])
        .unwrap();
        let again: Vec<String> = s
            .pending(false)
            .unwrap()
            .into_iter()
            .map(|p| p.key.0)
            .collect();
        assert_eq!(
            again,
            vec!["k2"],
            "server failures are retried, image failures are not"
        );
        assert_eq!(s.pending(true).unwrap().len(), 2);
        let mut seen = vec![];
        s.for_each_done(|_, k, c, i, v| seen.push((k.0, c, i, v)))
            .unwrap();
        assert_eq!(
            seen,
            vec![(
                "k0".into(),
                "a cat".into(),
                Some(vec![1.0, 0.0]),
                vec![0.0, 1.0]
            )]
        );
        let mut meta = vec![];
        s.for_each_done_meta(|_, k, c, cd, id| meta.push((k.0, c, cd, id)))
            .unwrap();
        assert_eq!(meta, vec![("k0".into(), "a cat".into(), 2, Some(2))]);
        let check: String = s
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(
            s.counts().unwrap(),
            Counts {
                pending: 0,
                done: 1,
                failed: 2
            }
        );
    }
}
