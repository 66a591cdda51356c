//! The image database: every gallery image captioned and embedded once, stored under
//! `data/image_db/<dataset>/<fingerprint>/`:
//!
//! - `fingerprint.json`: what built it (`fingerprint`); its hash is the folder name;
//! - `store.sqlite`: status, caption, content hash and unit-length f32 vectors per image (`store`);
//! - `vectors-<options>-<content>.usearch` (`vectors-exact-f32-3fa9….usearch`, ...): the fused
//!   index of [image; caption] vectors derived from the store (`vectors`), one per `[index]`
//!   setting used, named by the store state (`Store::content_digest`) it was built from;
//! - `built-<options>.json`: which store state each setting's current index was built from.
//!
//! `build` fills it (resumably); `ImageDb` opens it for searching, rebuilding the indexes from the
//! store when they are missing or stale. `expected_dir` and `open_existing` (`open_existing_rows`
//! for `run`, which reads the rows, settles its identity, then loads the vectors with
//! `DbRows::index_vectors`) are the one lookup `run`, `index`, `search` and `serve` share: which
//! folder a configuration means, and opening it with the embedder check.

pub mod build;
pub mod fingerprint;
pub mod freshness;
pub mod import;
pub mod store;
pub mod vectors;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::datasets::ImageKey;

use fingerprint::Fingerprint;
use store::{Store, StoreError};
use vectors::{VectorError, VectorOptions, Vectors};

/// Store file name.
pub const STORE_FILE: &str = "store.sqlite";
const FINGERPRINT_FILE: &str = "fingerprint.json";
/// What an index built with `options` was built from (`built-exact-f32.json`, ...).
fn built_file(options: VectorOptions) -> String {
    format!("built-{}.json", options.tag())
}

/// Earlier builds kept one index per database, whatever its options, in these files; they are
/// removed when an index is next rebuilt.
const LEGACY_FILES: [&str; 2] = ["vectors.usearch", "built.json"];

/// An image-database problem.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The SQLite store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// usearch failed.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// A file or folder problem.
    #[error("{0}")]
    Input(String),
    /// The configuration lacks what indexing needs.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The caption prompt failed to render.
    #[error(transparent)]
    Prompt(#[from] crate::prompts::PromptError),
    /// The database was built differently from what the configuration asks for.
    #[error(
        "the image database {dir} was built with different settings:\n  {}\nbuild a new one (omit --index-dir, or pass a new folder) or change the configuration back",
        diffs.join("\n  ")
    )]
    Mismatch {
        /// The folder.
        dir: PathBuf,
        /// What differs (path: built → wanted).
        diffs: Vec<String>,
    },
    /// The database has no indexed image.
    #[error("the image database {0} holds no indexed image; run `imagescope index` first")]
    Empty(PathBuf),
}

/// The database name of a dataset (CIRR's two protocols share one gallery database; a folder is
/// named after its absolute path, however it is reached).
pub fn db_name(d: crate::config::DatasetName, root: &Path) -> String {
    match d {
        crate::config::DatasetName::CirrSubset => "cirr".into(),
        crate::config::DatasetName::Folder => folder_db_name(root),
        other => other.as_str().into(),
    }
}

/// `folder-<basename>-<8 hex of blake3(absolute path)>`.
pub fn folder_db_name(folder: &Path) -> String {
    let abs = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
    let base = abs
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let tag = &blake3::hash(abs.to_string_lossy().as_bytes()).to_hex()[..8];
    format!("folder-{base}-{tag}")
}

/// The fingerprint of indexing with these servers, prompts and caption source (a captions file's
/// blake3, or the configured captioner).
pub fn expected_fingerprint(
    servers: &crate::config::ServersConfig,
    servers_path: &Path,
    prompts: &crate::prompts::PromptSet,
    family: crate::prompts::Family,
    captions_file_hash: Option<String>,
) -> Result<Fingerprint, IndexError> {
    use crate::config::Role;
    let embedder = servers.role(Role::Embedder, servers_path)?;
    let captions = match captions_file_hash {
        Some(blake3) => fingerprint::CaptionSource::File { blake3 },
        None => {
            let captioner = servers.role(Role::Captioner, servers_path)?;
            let rendered = prompts.render(
                family,
                crate::prompts::PromptKind::Caption,
                &serde_json::json!({}),
            )?;
            return Ok(Fingerprint::for_model(
                captioner,
                &prompts.fingerprint_of(&rendered.templates),
                embedder,
            ));
        }
    };
    Ok(Fingerprint {
        version: fingerprint::VERSION,
        captions,
        embedder: fingerprint::EmbedderPrint::of(embedder),
        preprocessing: fingerprint::PREPROCESSING.into(),
    })
}

/// The folder of the database a configuration asks for: `<image_db_root>/<name>/<fingerprint>`,
/// the fingerprint made from the configured captioner (or the captions file), caption prompt and
/// embedder. One lookup for `run`, `index` and `search`.
pub fn expected_dir(
    servers: &crate::config::ServersConfig,
    servers_path: &Path,
    prompts: &crate::prompts::PromptSet,
    family: crate::prompts::Family,
    captions_file: Option<&Path>,
    image_db_root: &Path,
    name: &str,
) -> Result<PathBuf, IndexError> {
    let captions_hash = match captions_file {
        Some(file) => Some(build::load_captions(file)?.1),
        None => None,
    };
    let fp = expected_fingerprint(servers, servers_path, prompts, family, captions_hash)?;
    Ok(db_dir(image_db_root, name, &fp))
}

/// Opens a built database to search it with the configured embedder: it must exist (`build_hint`
/// says how to build it), its vectors must come from the same embedder model and normalisation,
/// and the `[index]` settings apply.
pub fn open_existing(
    dir: &Path,
    servers: &crate::config::ServersConfig,
    servers_path: &Path,
    options: &crate::config::IndexSection,
    build_hint: &str,
) -> Result<ImageDb, IndexError> {
    open_existing_rows(dir, servers, servers_path, options, build_hint)?.index_vectors()
}

/// `open_existing` but for the vector index, which the caller loads or builds once it knows it
/// will search (`DbRows::index_vectors`, which applies every `[index]` setting): a run checks its
/// identity first, so a refused resume builds nothing.
pub fn open_existing_rows(
    dir: &Path,
    servers: &crate::config::ServersConfig,
    servers_path: &Path,
    options: &crate::config::IndexSection,
    build_hint: &str,
) -> Result<DbRows, IndexError> {
    if !dir.join(STORE_FILE).exists() {
        return Err(IndexError::Input(format!(
            "no image database at {} for this configuration; {build_hint}",
            dir.display()
        )));
    }
    let mut db = DbRows::open(dir, options.vector_options())?;
    db.ef_search = Some(options.ef_search);
    let embedder = servers.role(crate::config::Role::Embedder, servers_path)?;
    if let Some(fp) = db.fingerprint()
        && (fp.embedder.model != embedder.model
            || fp.embedder.normalize != embedder.normalize
            || matches!(
                (&fp.embedder.checkpoint, &embedder.checkpoint),
                (Some(a), Some(b)) if a != b
            ))
    {
        return Err(IndexError::Input(format!(
            "the image database {} was embedded by {:?} (checkpoint {}, normalize = {}), but the configured embedder is {:?} (checkpoint {}, normalize = {}); queries must be embedded by the same weights as the gallery. Build a database for this embedder (`imagescope index` without index_dir), or serve the checkpoint that built this one",
            dir.display(),
            fp.embedder.model,
            show_checkpoint(fp.embedder.checkpoint.as_deref()),
            fp.embedder.normalize,
            embedder.model,
            show_checkpoint(embedder.checkpoint.as_deref()),
            embedder.normalize
        )));
    }
    Ok(db)
}

fn show_checkpoint(c: Option<&str>) -> String {
    c.map_or_else(|| "unknown".to_string(), |c| format!("{c:?}"))
}

/// The images a search may return, as the database's row ids (`ImageDb::allowed_ids`).
#[derive(Debug, Clone, Default)]
pub struct AllowedIds(HashSet<u64>);

/// The folder of a dataset's database with this fingerprint.
pub fn db_dir(image_db_root: &Path, dataset: &str, fp: &Fingerprint) -> PathBuf {
    image_db_root.join(dataset).join(fp.id())
}

fn read_fingerprint(dir: &Path) -> Result<Option<Fingerprint>, IndexError> {
    let path = dir.join(FINGERPRINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| IndexError::Input(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        IndexError::Input(format!(
            "{} is not a fingerprint this version reads: {e}",
            path.display()
        ))
    })
}

/// Refuses a database built differently from `wanted`: other settings, or other weights under
/// the same served names (checkpoints known on both sides that differ). A checkpoint the
/// database does not record cannot be checked, which is said once as a warning.
pub fn check_fingerprint(dir: &Path, wanted: &Fingerprint) -> Result<(), IndexError> {
    let Some(built) = read_fingerprint(dir)? else {
        return Ok(());
    };
    let (plain_built, plain_wanted) = (built.without_checkpoints(), wanted.without_checkpoints());
    if plain_built != plain_wanted {
        return Err(IndexError::Mismatch {
            dir: dir.to_path_buf(),
            diffs: plain_built.diff(&plain_wanted),
        });
    }
    let (conflicts, unchecked) = built.checkpoint_conflicts(wanted);
    if !conflicts.is_empty() {
        return Err(IndexError::Input(format!(
            "the image database {} was built by other weights under the same served name:\n  {}\nits captions and vectors must not be mixed with these. Move it aside (`mv {} {}.old`) and index again, or pass a new folder with --index-dir, or serve the checkpoint that built it",
            dir.display(),
            conflicts.join("\n  "),
            dir.display(),
            dir.display()
        )));
    }
    for u in unchecked {
        tracing::warn!("{}: {u}", dir.display());
    }
    Ok(())
}

/// Creates the folder and its fingerprint file, or checks an existing one.
pub(crate) fn prepare_dir(dir: &Path, fp: &Fingerprint) -> Result<(), IndexError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| IndexError::Input(format!("cannot create {}: {e}", dir.display())))?;
    check_fingerprint(dir, fp)?;
    let path = dir.join(FINGERPRINT_FILE);
    if !path.exists() {
        let json =
            serde_json::to_string_pretty(fp).map_err(|e| IndexError::Input(e.to_string()))?;
        crate::files::write_atomic(&path, json)
            .map_err(|e| IndexError::Input(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// What a saved vector index was built from: an index is loaded only when all of it matches.
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct Built {
    done: u64,
    options: VectorOptions,
    caption_dim: usize,
    image_dim: Option<usize>,
    /// `Store::content_digest` of the rows it was built from (read in one snapshot with them),
    /// which also names its file (`Vectors::file_name`): `index` re-embeds a changed photo in
    /// place (same row, same count) and rebuilds only the setting it opens, so another setting's
    /// saved index is known stale by this.
    #[serde(default)]
    content: String,
}

/// Builds the usearch index of `options` from the store, saves it under the name of the store
/// state it was built from and records that state. `expected` is the digest of the state the
/// caller read its keys and captions at: if the store has changed since, nothing is built and the
/// caller is told to run again.
pub(crate) fn rebuild_vectors(
    dir: &Path,
    store: &Store,
    options: VectorOptions,
    expected: Option<&str>,
) -> Result<Option<Vectors>, IndexError> {
    // The digest and the rows from one snapshot: the file is named, and the record written, by
    // the state the vectors really come from.
    let (content, rows) = store.snapshot(|s| {
        let content = s.content_digest()?;
        let mut rows = Vec::new();
        s.for_each_done(|idx, _, _, image, caption| rows.push((idx, image, caption)))?;
        Ok((content, rows))
    })?;
    if let Some(expected) = expected
        && expected != content
    {
        // The caller read its keys and captions from the earlier state: these vectors would not
        // match them.
        return Err(IndexError::Input(format!(
            "the image database {} changed while it was being opened (is `imagescope index` writing to it?); nothing was started: run the same command again once indexing has finished",
            dir.display()
        )));
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let built = Built {
        done: rows.len() as u64,
        options,
        caption_dim: rows[0].2.len(),
        image_dim: rows.iter().find_map(|r| r.1.as_ref().map(Vec::len)),
        content,
    };
    let vectors = Vectors::build(rows, options)?;
    let name = Vectors::file_name(options, &built.content);
    vectors.save(dir, &name)?;
    let json =
        serde_json::to_string_pretty(&built).map_err(|e| IndexError::Input(e.to_string()))?;
    let built_name = built_file(options);
    crate::files::write_atomic(&dir.join(&built_name), json)
        .map_err(|e| IndexError::Input(format!("cannot write {built_name}: {e}")))?;
    Vectors::remove_others(dir, options, &name);
    for legacy in LEGACY_FILES {
        let _ = std::fs::remove_file(dir.join(legacy));
    }
    Ok(Some(vectors))
}

/// The database's indexed photos by the blake3 hash of their file's bytes, as `index` recorded
/// it (rows from before hashes were recorded are left out); of photos with the same bytes, the
/// first key in order. `serve` answers an upload of a gallery photo's exact bytes with that photo.
pub fn keys_by_content(dir: &Path) -> Result<HashMap<String, ImageKey>, IndexError> {
    let store = Store::open(&dir.join(STORE_FILE))?;
    let mut done: Vec<(ImageKey, String)> = store
        .done_files()?
        .into_iter()
        .filter(|(_, (_, hash, _))| !hash.is_empty())
        .map(|(key, (_, hash, _))| (key, hash))
        .collect();
    done.sort();
    let mut out = HashMap::new();
    for (key, hash) in done {
        out.entry(hash).or_insert(key);
    }
    Ok(out)
}

/// An opened image database, ready to search.
pub struct ImageDb {
    dir: PathBuf,
    fingerprint: Option<Fingerprint>,
    vectors: Vectors,
    keys: HashMap<u64, ImageKey>,
    ids: HashMap<ImageKey, u64>,
    captions: HashMap<ImageKey, String>,
}

/// An image database whose rows are read (keys, captions, what built it, the content digest) and
/// whose vector index is not yet loaded or built: enough to decide a run's identity and refuse a
/// resume before an index is built for nothing (`index_vectors` makes the `ImageDb`).
pub struct DbRows {
    dir: PathBuf,
    store: Store,
    options: VectorOptions,
    /// HNSW's search breadth from `[index]`, applied by `index_vectors` (`None`: the default).
    ef_search: Option<usize>,
    fingerprint: Option<Fingerprint>,
    /// `Store::content_digest`, read in one snapshot with the rows (see `Built::content`).
    content: String,
    order: Vec<u64>,
    caption_dim: usize,
    image_dim: Option<usize>,
    keys: HashMap<u64, ImageKey>,
    ids: HashMap<ImageKey, u64>,
    captions: HashMap<ImageKey, String>,
}

impl DbRows {
    /// Reads the rows of the database in `dir`, to be searched with `options`.
    pub fn open(dir: &Path, options: VectorOptions) -> Result<Self, IndexError> {
        let store_path = dir.join(STORE_FILE);
        if !store_path.exists() {
            return Err(IndexError::Empty(dir.to_path_buf()));
        }
        let store = Store::open(&store_path)?;
        let mut keys = HashMap::new();
        let mut ids = HashMap::new();
        let mut captions = HashMap::new();
        let mut order = Vec::new();
        let mut dims: Option<(usize, Option<usize>)> = None;
        // The digest and the rows from one snapshot, as `rebuild_vectors` reads them.
        let content = store.snapshot(|s| {
            let content = s.content_digest()?;
            s.for_each_done_meta(|idx, key, caption, caption_dim, image_dim| {
                dims.get_or_insert((caption_dim, image_dim));
                order.push(idx);
                keys.insert(idx, key.clone());
                ids.insert(key.clone(), idx);
                captions.insert(key, caption);
            })?;
            Ok(content)
        })?;
        let Some((caption_dim, image_dim)) = dims else {
            return Err(IndexError::Empty(dir.to_path_buf()));
        };
        Ok(DbRows {
            dir: dir.to_path_buf(),
            fingerprint: read_fingerprint(dir)?,
            store,
            options,
            ef_search: None,
            content,
            order,
            caption_dim,
            image_dim,
            keys,
            ids,
            captions,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What built it.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.fingerprint.as_ref()
    }

    /// The store's content digest when its rows were read (`Store::content_digest`).
    pub fn content(&self) -> &str {
        &self.content
    }

    /// The store, for checks over its rows (`freshness::refuse_changed`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether `key` is indexed.
    pub fn contains(&self, key: &ImageKey) -> bool {
        self.ids.contains_key(key)
    }

    /// Indexed images.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether empty (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Loads the vector index saved for these rows and options, or builds it if it is missing or
    /// stale.
    pub fn index_vectors(self) -> Result<ImageDb, IndexError> {
        let DbRows {
            dir,
            store,
            options,
            ef_search,
            fingerprint,
            content,
            order,
            caption_dim,
            image_dim,
            keys,
            ids,
            captions,
        } = self;
        let wanted = Built {
            done: order.len() as u64,
            options,
            caption_dim,
            image_dim,
            content,
        };
        let recorded: Option<Built> = std::fs::read_to_string(dir.join(built_file(options)))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        vectors::sweep_temps(&dir);
        // Only a file named by the recorded state is loaded: one saved by an earlier version
        // (`vectors-<setting>.usearch`) cannot be told from a late save of another state's, so
        // it is built again, once.
        let name = Vectors::file_name(options, &wanted.content);
        let loaded = if recorded.as_ref() == Some(&wanted) && dir.join(&name).is_file() {
            Vectors::load(&dir, &name, options, order, caption_dim, image_dim).ok()
        } else {
            None
        };
        let vectors = match loaded {
            Some(v) => v,
            None => {
                tracing::info!(dir = %dir.display(), "building the vector indexes from the store");
                rebuild_vectors(&dir, &store, options, Some(&wanted.content))?
                    .ok_or_else(|| IndexError::Empty(dir.clone()))?
            }
        };
        let db = ImageDb {
            dir,
            fingerprint,
            vectors,
            keys,
            ids,
            captions,
        };
        if let Some(ef) = ef_search {
            db.set_ef_search(ef);
        }
        Ok(db)
    }
}

impl ImageDb {
    /// Opens the database in `dir`, rebuilding its indexes if they are missing or stale.
    pub fn open(dir: &Path, options: VectorOptions) -> Result<Self, IndexError> {
        DbRows::open(dir, options)?.index_vectors()
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What built it.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.fingerprint.as_ref()
    }

    /// Sets HNSW's search breadth (no effect on exact search).
    pub fn set_ef_search(&self, ef: usize) {
        self.vectors.set_ef_search(ef);
    }

    /// Indexed images.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Whether image vectors exist (otherwise searches use τ = 1).
    pub fn has_images(&self) -> bool {
        self.vectors.has_images()
    }

    /// An image's caption.
    pub fn caption(&self, key: &ImageKey) -> Option<&str> {
        self.captions.get(key).map(String::as_str)
    }

    /// Whether an image is indexed.
    pub fn contains(&self, key: &ImageKey) -> bool {
        self.ids.contains_key(key)
    }

    /// Every indexed key, in gallery order.
    pub fn keys(&self) -> Vec<ImageKey> {
        self.vectors
            .ids()
            .iter()
            .filter_map(|id| self.keys.get(id).cloned())
            .collect()
    }

    /// The rank (from 1) of `key` in the whole gallery, or among `allowed`, for the fused score of
    /// `query`; `None` when `key` is not indexed. Costs one exact pass over the gallery.
    pub fn rank_of(
        &self,
        query: &[f32],
        tau: f32,
        key: &ImageKey,
        allowed: Option<&AllowedIds>,
    ) -> Result<Option<usize>, IndexError> {
        let Some(&id) = self.ids.get(key) else {
            return Ok(None);
        };
        Ok(self
            .vectors
            .rank_of(query, tau, id, allowed.map(|a| &a.0))?)
    }

    /// The row ids of `keys` (those indexed), made once for the searches restricted to them: a
    /// split's gallery is converted when a run starts, not for every query.
    pub fn allowed_ids<'a>(&self, keys: impl IntoIterator<Item = &'a ImageKey>) -> AllowedIds {
        AllowedIds(
            keys.into_iter()
                .filter_map(|k| self.ids.get(k).copied())
                .collect(),
        )
    }

    /// The top `k` images for the fused score of `query` (a unit or mean description vector),
    /// restricted to `allowed` keys when given.
    pub fn search(
        &self,
        query: &[f32],
        tau: f32,
        k: usize,
        allowed: Option<&AllowedIds>,
    ) -> Result<Vec<(ImageKey, f32)>, IndexError> {
        Ok(self
            .vectors
            .search(query, tau, k, allowed.map(|a| &a.0))?
            .into_iter()
            .filter_map(|(id, s)| self.keys.get(&id).map(|k| (k.clone(), s)))
            .collect())
    }
}
