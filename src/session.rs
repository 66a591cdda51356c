//! An indexed folder opened for searching (`search`, `chat` and `serve`): where to search and
//! with what (`SearchTarget`, the command-line options they share), and `open`, which asks the
//! servers which weights they serve, checks the image database against them, loads the gallery
//! and opens the request cache.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::config::{
    DatasetName, ExperimentConfig, IndexSection, PipelineParams, ServersConfig, Stage,
};
use crate::datasets::{self, DatasetSpec};
use crate::index;
use crate::pipeline::context::Ctx;
use crate::prompts::{Family, PromptSet};
use crate::serving::{Cache, CacheMode, Clients};

/// Where to search and with what.
#[derive(Debug, Clone, Args)]
pub struct SearchTarget {
    /// The indexed folder (default: the experiment's dataset root, when its dataset is a folder).
    #[arg(long)]
    pub folder: Option<PathBuf>,
    /// A servers file or an experiment file (its [pipeline] parameters are used).
    #[arg(long, default_value = "configs/servers/vllm.toml")]
    pub config: PathBuf,
    /// The captions file the folder was indexed with, if it was (default: the experiment's).
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// The image database folder, when not the one the configuration names.
    #[arg(long)]
    pub index_dir: Option<PathBuf>,
    /// Prompt templates (with a servers file).
    #[arg(long, default_value = "prompts")]
    pub prompts: PathBuf,
    /// Results shown.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Stages to run, e.g. s1 or s1,s2,s3.
    #[arg(long, value_delimiter = ',', default_value = "s1,s2,s3")]
    pub stages: Vec<Stage>,
    /// The request cache: on (repeated searches and earlier dialogue turns cost nothing), off,
    /// read-only or write-only.
    #[arg(long, value_enum, default_value = "on")]
    pub cache: CacheMode,
}

/// An indexed folder opened for searching: the servers asked which weights they serve, the image
/// database checked against them, the request cache open (`search`, `chat` and `serve`).
pub struct Session {
    /// The context every query of the session runs in.
    pub ctx: Ctx,
    /// The folder searched (absolute).
    pub folder: PathBuf,
    /// The runs folder (request cache, pages).
    pub runs: PathBuf,
    /// The captioner, for images outside the gallery (`serve`'s uploads), when asked for: the
    /// client, or why there is none (no captioner configured, or it did not answer).
    pub captioner: Result<crate::serving::RoleClient, String>,
}

/// What an experiment file adds to a search target: its dataset's folder, captions and database.
#[derive(Default)]
struct FromExperiment {
    folder: Option<PathBuf>,
    captions: Option<PathBuf>,
    index_dir: Option<PathBuf>,
}

/// Opens `t` for searching.
pub async fn open(t: &SearchTarget) -> anyhow::Result<Session> {
    open_for(t, false).await
}

/// Opens `t` for searching; with `captioner`, also the captioner (its absence is not an error:
/// the session says why it has none).
pub async fn open_for(t: &SearchTarget, captioner: bool) -> anyhow::Result<Session> {
    let (servers, servers_path, prompts_dir, db_root, runs, mut params, index_options, from_exp): (
        ServersConfig,
        PathBuf,
        PathBuf,
        PathBuf,
        PathBuf,
        PipelineParams,
        IndexSection,
        FromExperiment,
    ) = if crate::config::is_servers_file(&t.config)? {
        let defaults = PipelineParams::defaults();
        (
            ServersConfig::load(&t.config)?,
            t.config.clone(),
            t.prompts.clone(),
            PathBuf::from("data/image_db"),
            PathBuf::from("runs"),
            defaults,
            IndexSection::default(),
            FromExperiment::default(),
        )
    } else {
        let exp = ExperimentConfig::load(&t.config)?;
        let from_exp = FromExperiment {
            folder: (exp.dataset.name == DatasetName::Folder).then(|| exp.dataset.root.clone()),
            captions: exp.captions.clone(),
            index_dir: exp.index_dir.clone(),
        };
        (
            exp.servers,
            exp.servers_path,
            exp.prompts_dir,
            exp.image_db_root,
            exp.runs_dir,
            exp.pipeline,
            exp.index,
            from_exp,
        )
    };
    let Some(folder_arg) = t.folder.clone().or(from_exp.folder) else {
        anyhow::bail!(
            "say which indexed folder to search with --folder DIR ({} names no folder dataset)",
            t.config.display()
        );
    };
    let captions = t.captions.clone().or(from_exp.captions);
    if !t.stages.contains(&Stage::S1) {
        anyhow::bail!("--stages must include s1");
    }
    params.stages = t.stages.clone();
    let folder = std::path::absolute(&folder_arg)?;
    let prompts = Arc::new(PromptSet::load(&prompts_dir)?);
    let dir = match t.index_dir.clone().or(from_exp.index_dir) {
        Some(d) => d,
        None => index::expected_dir(
            &servers,
            &servers_path,
            &prompts,
            Family::General,
            captions.as_deref(),
            &db_root,
            &index::folder_db_name(&folder),
        )?,
    };
    let hint = format!(
        "{} is not indexed with this configuration: run `imagescope index --folder {} --config {}` first{}",
        folder.display(),
        folder_arg.display(),
        t.config.display(),
        if captions.is_some() {
            ""
        } else {
            " (add --captions FILE if you indexed with one)"
        }
    );
    let mut needed = servers.clone();
    Ctx::needed_roles(&mut needed, &params.stages);
    let captioner_servers = captioner.then(|| {
        let mut only = servers.clone();
        only.roles
            .retain(|r, _| *r == crate::config::Role::Captioner);
        only
    });
    let (servers, _) = crate::serving::models::resolve(&needed, &servers_path).await?;
    let db = Arc::new(index::open_existing(
        &dir,
        &servers,
        &servers_path,
        &index_options,
        &hint,
    )?);
    let gallery = datasets::load_gallery(&DatasetSpec {
        name: DatasetName::Folder,
        root: folder.clone(),
        split: "all".into(),
        image_ext: None,
    })?;
    let cache = Arc::new(Cache::open(&runs.join("cache.sqlite"), t.cache)?);
    let clients = Clients::new(&servers, &servers_path)?.with_cache(cache.clone());
    let captioner = match captioner_servers {
        None => Err("not asked for".to_string()),
        Some(only) if only.roles.is_empty() => Err(format!(
            "{} configures no captioner ([roles.captioner])",
            servers_path.display()
        )),
        Some(only) => match crate::serving::models::resolve(&only, &servers_path).await {
            Ok((resolved, _)) => Clients::new(&resolved, &servers_path)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    c.with_cache(cache)
                        .get(crate::config::Role::Captioner)
                        .cloned()
                        .map_err(|e| e.to_string())
                }),
            Err(e) => Err(format!("the captioner did not answer at start: {e}")),
        },
    };
    let ctx = Ctx::new(
        params,
        DatasetName::Folder,
        prompts,
        &clients,
        db,
        gallery,
        None,
        None,
    )?;
    Ok(Session {
        ctx,
        folder,
        runs,
        captioner,
    })
}
