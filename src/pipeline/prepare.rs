//! Getting a run ready (`imagescope run`, part 1 of 3): the command-line overrides, the split's
//! queries (parity cap, `--queries`, `--limit`), the gallery and its image database, the role
//! clients on the request cache, and the run folder (new: resolved config and prompt copies; or
//! reopened with `--resume`, keeping only the ids already done, and only if the run's identity is
//! unchanged). The only requests sent here ask each server which checkpoint it serves.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::config::{
    DatasetName, DatasetSection, ExperimentConfig, IndexSection, PipelineParams, Role,
    ServersConfig, Stage,
};
use crate::datasets::{self, DatasetSpec, ImageKey, Query};
use crate::identity::{self, IdentitySource, ModelIdentity, QuerySelection, RunIdentity};
use crate::index::{self, DbRows};
use crate::prompts::{Family, PromptSet};
use crate::runs::folder::RunFolder;
use crate::serving::{Cache, CacheMode, Clients};

use super::context::Ctx;
use super::run::{RunError, RunOptions};

/// A run ready to drive: what it answers, with what, and where it writes.
pub struct Prepared {
    /// The dataset section after the overrides.
    pub dataset: DatasetSection,
    /// The pipeline parameters after the overrides.
    pub params: PipelineParams,
    /// The queries of the run, in dataset order (finished ones included).
    pub queries: Vec<Query>,
    /// What a reader of the numbers must know (the parity profile's CIRR cap, ...).
    pub notes: Vec<String>,
    /// The run folder.
    pub folder: RunFolder,
    /// Ids finished before this invocation (`--resume`).
    pub done: HashSet<String>,
    /// The role clients (their counters make the per-role summary).
    pub clients: Clients,
    /// What every stage reads, shared by the query tasks; set `progress` (through
    /// `Arc::get_mut`, before `drive`) to draw stage bars.
    pub ctx: Arc<Ctx>,
}

impl Prepared {
    /// The queries still to answer, in dataset order.
    pub fn todo(&self) -> Vec<&Query> {
        self.queries
            .iter()
            .filter(|q| !self.done.contains(&q.id))
            .collect()
    }
}

#[derive(Serialize)]
struct Resolved<'a> {
    dataset: &'a DatasetSection,
    pipeline: &'a PipelineParams,
    prompts: String,
    image_db: String,
    index: &'a IndexSection,
    servers: &'a ServersConfig,
}

fn overrides(
    exp: &ExperimentConfig,
    opts: &RunOptions,
) -> Result<(DatasetSection, PipelineParams), RunError> {
    let mut dataset = exp.dataset.clone();
    if let Some(s) = &opts.split {
        dataset.split = s.clone();
    }
    if opts.limit.is_some() {
        dataset.limit = opts.limit;
    }
    let mut params = exp.pipeline.clone();
    if let Some(stages) = &opts.stages {
        if !stages.contains(&Stage::S1) {
            return Err(RunError::Other(
                "--stages must include s1; stages 2 and 3 refine its ranking".into(),
            ));
        }
        params.stages = stages.clone();
    }
    Ok((dataset, params))
}

/// The split's queries after the parity cap, `--queries` and `--limit`, with the notes to print.
fn select_queries(
    spec: &DatasetSpec,
    dataset: &DatasetSection,
    params: &PipelineParams,
    ids: Option<&[String]>,
) -> Result<(Vec<Query>, Vec<String>), RunError> {
    let mut queries: Vec<Query> = datasets::load_queries(spec)?;
    let mut notes = Vec::new();
    if let Some(note) = parity_cap(&mut queries, dataset.name, &dataset.split, params.profile) {
        notes.push(note);
    }
    if let Some(ids) = ids {
        let known: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
        let unknown: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !known.contains(id))
            .collect();
        if !unknown.is_empty() {
            let first: Vec<&str> = queries.iter().take(5).map(|q| q.id.as_str()).collect();
            return Err(RunError::Other(format!(
                "--queries: {} not in the {} {} split (its first ids: {})",
                unknown.join(", "),
                dataset.name.as_str(),
                dataset.split,
                first.join(", ")
            )));
        }
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        queries.retain(|q| wanted.contains(q.id.as_str()));
    }
    if let Some(n) = dataset.limit {
        queries.truncate(n);
    }
    Ok((queries, notes))
}

/// Prepares a run (or a resumed one) of `exp` with the command-line `opts`. Asks each needed
/// role's server which checkpoint it serves (`serving::models`) before anything else is decided.
pub async fn prepare(exp: &ExperimentConfig, opts: &RunOptions) -> Result<Prepared, RunError> {
    let (dataset, params) = overrides(exp, opts)?;
    let spec = DatasetSpec {
        name: dataset.name,
        root: dataset.root.clone(),
        split: dataset.split.clone(),
        image_ext: dataset.image_ext.clone(),
    };
    let (queries, notes) = select_queries(&spec, &dataset, &params, opts.queries.as_deref())?;
    let gallery = datasets::load_gallery(&spec)?;
    let family = Family::for_dataset(dataset.name);
    let prompts = Arc::new(PromptSet::load(&exp.prompts_dir)?);

    let mut servers = exp.servers.clone();
    Ctx::needed_roles(&mut servers, &params.stages);
    let (servers, models) = crate::serving::models::resolve(&servers, &exp.servers_path)
        .await
        .map_err(|e| RunError::Other(e.to_string()))?;

    // The database's rows: its vector index is loaded (or built) once the run is known to go on.
    let rows = open_db(exp, &servers, &prompts, family)?;
    index::freshness::refuse_changed(
        rows.store(),
        &gallery,
        &format!(
            "Index them again with `imagescope index --config {}`",
            exp.path.display()
        ),
    )?;
    let db_content = rows.content().to_string();
    let missing = gallery.iter().filter(|g| !rows.contains(&g.key)).count();
    if missing > 0 {
        tracing::warn!(
            "{missing} of {} gallery images are not in the image database and cannot be retrieved",
            gallery.len()
        );
    }
    let gallery_keys: HashSet<ImageKey> = gallery.iter().map(|g| g.key.clone()).collect();
    let allowed = (rows.len() != gallery_keys.len() || missing > 0).then_some(gallery_keys);

    // `--cache off` never opens the file, so a damaged cache cannot stop a run that does not use it.
    let clients = Clients::new(&servers, &exp.servers_path)?;
    let clients = match opts.cache {
        CacheMode::Off => clients,
        mode => clients.with_cache(Arc::new(Cache::open(
            &exp.runs_dir.join("cache.sqlite"),
            mode,
        )?)),
    };

    let used = used_prompts(&prompts, family);
    let resolved = Resolved {
        dataset: &dataset,
        pipeline: &params,
        prompts: exp.prompts_dir.display().to_string(),
        image_db: rows.dir().display().to_string(),
        index: &exp.index,
        servers: &servers,
    };
    let resolved_toml = toml::to_string(&resolved).map_err(|e| RunError::Other(e.to_string()))?;
    let hash = blake3::hash(resolved_toml.as_bytes()).to_hex().to_string();
    let (identity, scheduling) = identity_of(
        &dataset,
        &params,
        &queries,
        &used,
        &servers,
        &models,
        (&rows, &db_content),
        exp,
    );
    let profile: &str = params.profile.into();
    let mut info = RunFolder::info(
        hash,
        identity.to_json_and_hash(),
        scheduling,
        dataset.name.as_str(),
        &dataset.split,
        profile,
    );
    info.models = models;
    // A resume whose identity changed is refused here, before any index is built for it; the
    // folder is written to only once the index is ready, and a new run's folder made only then,
    // so an index that cannot be built (or a Ctrl-C while it builds) leaves no trace.
    let resumed = match &opts.resume {
        Some(path) => Some(RunFolder::check_resume(path, &info)?),
        None => None,
    };
    let db = Arc::new(rows.index_vectors()?);
    let (folder, done) = match resumed {
        Some(pending) => {
            let (f, _, done) = pending.commit()?;
            // The scheduling may have changed; the file says what this invocation uses.
            f.write_text("config.resolved.toml", &resolved_toml)?;
            (f, done)
        }
        None => {
            let f = RunFolder::create(&exp.runs_dir, dataset.name.as_str(), &opts.run_name)?;
            f.write_json("run.json", &info)?;
            f.write_text("config.resolved.toml", &resolved_toml)?;
            f.copy_prompts(&used)?;
            (f, HashSet::new())
        }
    };
    if let Err(e) = crate::logging::log_to_file(&folder.path().join("output.log")) {
        tracing::warn!("cannot write output.log: {e}");
    }
    tracing::info!(folder = %folder.path().display(), queries = queries.len(), "run started");
    let ctx = Arc::new(Ctx::new(
        params.clone(),
        dataset.name,
        prompts,
        &clients,
        db,
        gallery,
        allowed,
        None,
    )?);
    Ok(Prepared {
        dataset,
        params,
        queries,
        notes,
        folder,
        done,
        clients,
        ctx,
    })
}

/// The templates a run of `family` can render, by file name: its own folder's and `general/`'s
/// (the fallback) templates and the `_` pieces they include (`PromptSet::referenced`).
fn used_prompts(prompts: &PromptSet, family: Family) -> BTreeMap<String, String> {
    let own = format!("{}/", family.dir());
    let roots: Vec<String> = prompts
        .files()
        .keys()
        .filter(|name| name.starts_with(&own) || name.starts_with("general/"))
        .filter(|name| !crate::prompts::is_piece(name))
        .cloned()
        .collect();
    prompts
        .referenced(&roots)
        .into_iter()
        .filter_map(|n| prompts.files().get(&n).map(|t| (n, t.clone())))
        .collect()
}

/// The run's identity (what decides its answers) and its scheduling (`crate::identity`).
#[allow(clippy::too_many_arguments)]
fn identity_of(
    dataset: &DatasetSection,
    params: &PipelineParams,
    queries: &[Query],
    used: &BTreeMap<String, String>,
    servers: &ServersConfig,
    models: &BTreeMap<Role, ModelIdentity>,
    (db, db_content): (&DbRows, &str),
    exp: &ExperimentConfig,
) -> (RunIdentity, serde_json::Value) {
    let (pipeline, pipeline_sched) = identity::pipeline_parts(params);
    let mut roles = BTreeMap::new();
    let mut roles_sched = serde_json::Map::new();
    for (role, server) in &servers.roles {
        let model = models.get(role).cloned().unwrap_or(ModelIdentity {
            served: server.model.clone(),
            checkpoint: server.checkpoint.clone(),
            source: IdentitySource::ServedName,
            max_model_len: None,
        });
        let (id, sched) = identity::role_parts(server, &model);
        roles.insert(*role, id);
        roles_sched.insert(role.as_str().to_string(), sched);
    }
    // What built the database (checkpoints included) and what it holds now: re-indexing a
    // changed photo in place, or filling in failed ones, changes the content digest.
    let image_db = serde_json::json!({
        "fingerprint": db.fingerprint().map_or_else(|| db.dir().display().to_string(), |f| f.id()),
        "checkpoints": db.fingerprint().map(|f| {
            f.checkpoints()
                .into_iter()
                .map(|(path, c)| (path.to_string(), serde_json::json!(c)))
                .collect::<serde_json::Map<_, _>>()
        }),
        "content": db_content,
    });
    let identity = RunIdentity {
        dataset: dataset.name.as_str().to_string(),
        split: dataset.split.clone(),
        queries: QuerySelection::of(queries.iter().map(|q| q.id.as_str())),
        pipeline,
        prompts: used
            .iter()
            .map(|(n, t)| (n.clone(), identity::content_hash(t)))
            .collect(),
        roles,
        image_db,
        index: serde_json::to_value(exp.index).unwrap_or_default(),
    };
    let scheduling = serde_json::json!({"pipeline": pipeline_sched, "roles": roles_sched});
    (identity, scheduling)
}

fn open_db(
    exp: &ExperimentConfig,
    servers: &ServersConfig,
    prompts: &PromptSet,
    family: Family,
) -> Result<DbRows, RunError> {
    let dir = match &exp.index_dir {
        Some(d) => d.clone(),
        None => index::expected_dir(
            &exp.servers,
            &exp.servers_path,
            prompts,
            family,
            exp.captions.as_deref(),
            &exp.image_db_root,
            &index::db_name(exp.dataset.name, &exp.dataset.root),
        )
        .map_err(|e| {
            RunError::Other(format!(
                "cannot tell which image database to use ({e}); configure the captioner that built it, or set index_dir in {}",
                exp.path.display()
            ))
        })?,
    };
    let hint = format!(
        "build it with `imagescope index --config {}`",
        exp.path.display()
    );
    Ok(index::open_existing_rows(
        &dir,
        servers,
        &exp.servers_path,
        &exp.index,
        &hint,
    )?)
}

/// The original code's data loader keeps only the first 2,400 CIRR val queries (of 4,181, "only
/// for testing"); the parity profile does the same and says so. Returns the note.
pub fn parity_cap(
    queries: &mut Vec<Query>,
    dataset: DatasetName,
    split: &str,
    profile: crate::config::Profile,
) -> Option<String> {
    const CIRR_VAL_CAP: usize = 2400;
    let cirr = matches!(dataset, DatasetName::Cirr | DatasetName::CirrSubset);
    if profile != crate::config::Profile::Parity || !cirr || split != "val" {
        return None;
    }
    let all = queries.len();
    if all <= CIRR_VAL_CAP {
        return None;
    }
    queries.truncate(CIRR_VAL_CAP);
    Some(format!(
        "parity profile: CIRR val cut to its first {CIRR_VAL_CAP} of {all} queries, as the original's data loader does; use profile = \"default\" for the full split"
    ))
}
