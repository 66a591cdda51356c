//! `imagescope index`: build (or continue building) the image database of a benchmark gallery or
//! of a folder of the user's own images; `imagescope index import` brings in an original
//! ImageScope `image_db`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::config::{DatasetName, ExperimentConfig, Role, ServersConfig};
use crate::datasets::{self, DatasetSpec, GalleryImage};
use crate::index::build::{self, BuildInput, Captions};
use crate::index::{db_dir, db_name, expected_fingerprint as fingerprint, import};
use crate::prompts::{Family, PromptSet};
use crate::serving::{Clients, RoleClient};

/// `index` arguments.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IndexCmd {
    /// `import` an original ImageScope image_db instead of building.
    #[command(subcommand)]
    pub action: Option<IndexAction>,
    /// Experiment file (dataset gallery), or with --folder a servers or experiment file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Index every image under this folder instead of a benchmark gallery.
    #[arg(long)]
    pub folder: Option<PathBuf>,
    /// Take captions from this JSON ({key: caption}) or CSV file instead of the captioner.
    #[arg(long)]
    pub captions: Option<PathBuf>,
    /// Also retry images that failed to read or decode before.
    #[arg(long)]
    pub retry_failed: bool,
    /// Use (and check) this database folder instead of the one named by the fingerprint.
    #[arg(long)]
    pub index_dir: Option<PathBuf>,
    /// Images in flight at once (default: the captioner's and embedder's limits added).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Prompt templates folder (with a servers file; an experiment file names its own).
    #[arg(long, default_value = "prompts")]
    pub prompts: PathBuf,
    /// Print the report as JSON (also after `import`).
    #[arg(long, global = true)]
    pub json: bool,
}

/// `index` subcommands.
#[derive(Debug, Subcommand)]
pub enum IndexAction {
    /// Import an original ImageScope `image_db/<dataset>` folder.
    Import {
        /// The folder holding image_caption.json and <clip_version>/*.npy.
        dir: PathBuf,
        /// Dataset name the database is for.
        #[arg(long)]
        dataset: DatasetName,
        /// Which <clip_version> subfolder (needed when there are several).
        #[arg(long)]
        clip_version: Option<String>,
        /// The CLIP model that made the vectors (the embedder that must be used at query time).
        #[arg(long, default_value = "laion/CLIP-ViT-L-14-laion2B-s32B-b82K")]
        embedder_model: String,
        /// Root of the image databases.
        #[arg(long, default_value = "data/image_db")]
        image_db: PathBuf,
    },
}

struct Plan {
    captions: Option<PathBuf>,
    servers: ServersConfig,
    servers_path: PathBuf,
    prompts: PromptSet,
    family: Family,
    gallery: Vec<GalleryImage>,
    db_root: PathBuf,
    db: String,
}

fn plan(cmd: &IndexCmd) -> anyhow::Result<Plan> {
    let config = cmd.config.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "index needs --config (an experiment file, or a servers file with --folder)"
        )
    })?;
    if let Some(folder) = &cmd.folder {
        let (servers, servers_path, prompts_dir, db_root) =
            if crate::config::is_servers_file(config)? {
                let servers = ServersConfig::load(config)?;
                (
                    servers,
                    config.to_path_buf(),
                    cmd.prompts.clone(),
                    PathBuf::from("data/image_db"),
                )
            } else {
                let exp = ExperimentConfig::load(config)?;
                (
                    exp.servers,
                    exp.servers_path,
                    exp.prompts_dir,
                    exp.image_db_root,
                )
            };
        let abs = std::path::absolute(folder)?;
        if !abs.is_dir() {
            anyhow::bail!("--folder {} is not a folder", folder.display());
        }
        let gallery = datasets::load_gallery(&DatasetSpec {
            name: DatasetName::Folder,
            root: abs.clone(),
            split: "all".into(),
            image_ext: None,
        })?;
        return Ok(Plan {
            captions: cmd.captions.clone(),
            servers,
            servers_path,
            prompts: PromptSet::load(&prompts_dir)?,
            family: Family::General,
            gallery,
            db_root,
            db: crate::index::folder_db_name(&abs),
        });
    }
    let exp = ExperimentConfig::load(config)?;
    let spec = DatasetSpec {
        name: exp.dataset.name,
        root: exp.dataset.root.clone(),
        split: exp.dataset.split.clone(),
        image_ext: exp.dataset.image_ext.clone(),
    };
    Ok(Plan {
        captions: cmd.captions.clone().or(exp.captions.clone()),
        family: Family::for_dataset(spec.name),
        gallery: datasets::load_gallery(&spec)?,
        prompts: PromptSet::load(&exp.prompts_dir)?,
        db: db_name(spec.name, &spec.root),
        db_root: exp.image_db_root,
        servers: exp.servers,
        servers_path: exp.servers_path,
    })
}

fn out(json: bool, value: &impl serde::Serialize, text: String) -> anyhow::Result<()> {
    let s = if json {
        serde_json::to_string_pretty(value)? + "\n"
    } else {
        text
    };
    std::io::stdout().write_all(s.as_bytes())?;
    Ok(())
}

/// Runs `index`.
pub async fn run(cmd: IndexCmd) -> anyhow::Result<ExitCode> {
    if let Some(IndexAction::Import {
        dir,
        dataset,
        clip_version,
        embedder_model,
        image_db,
    }) = &cmd.action
    {
        let r = import::import(
            dir,
            &db_name(*dataset, dir),
            clip_version.as_deref(),
            embedder_model,
            image_db,
        )?;
        let text = format!(
            "imported {} images ({}-dimensional vectors) into {}\nuse it with `index_dir = \"{}\"` in an experiment file\n",
            r.images,
            r.dimension,
            r.dir.display(),
            r.dir.display()
        );
        out(cmd.json, &r, text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let p = plan(&cmd)?;
    let (captions, captions_hash) = match &p.captions {
        Some(file) => {
            let (map, hash) = build::load_captions(file)?;
            (Some(map), Some(hash))
        }
        None => (None, None),
    };
    let mut servers = p.servers.clone();
    servers
        .roles
        .retain(|r, _| *r == Role::Embedder || (*r == Role::Captioner && captions.is_none()));
    // The weights behind each served name go into the fingerprint: another checkpoint under the
    // same name cannot extend this database.
    let (servers, _) = crate::serving::models::resolve(&servers, &p.servers_path).await?;
    let fp = fingerprint(
        &servers,
        &p.servers_path,
        &p.prompts,
        p.family,
        captions_hash,
    )?;
    let dir = std::path::absolute(
        cmd.index_dir
            .clone()
            .unwrap_or_else(|| db_dir(&p.db_root, &p.db, &fp)),
    )?;
    let clients = Clients::new(&servers, &p.servers_path)?;
    let embedder: RoleClient = clients.get(Role::Embedder)?.clone();
    let captions = match captions {
        Some(map) => Captions::File(map),
        None => Captions::Model {
            client: clients.get(Role::Captioner)?.clone(),
            prompts: Arc::new(p.prompts),
            family: p.family,
        },
    };
    let limit = |c: &RoleClient| c.server().max_in_flight * c.server().endpoints.len();
    let concurrency = cmd.concurrency.unwrap_or_else(|| {
        let cap = match &captions {
            Captions::Model { client, .. } => limit(client),
            Captions::File(_) => 0,
        };
        (cap + limit(&embedder)).clamp(1, 512)
    });
    let report = build::build(BuildInput {
        dir,
        gallery: p.gallery,
        fingerprint: fp,
        captions,
        embedder,
        concurrency,
        retry_failed: cmd.retry_failed,
        progress: !cmd.json,
    })
    .await?;
    let server_failures = report.failures.iter().filter(|f| f.1 == "server").count();
    let mut text = format!(
        "{} of {} gallery images indexed in {} ({} new, {} changed since indexed, {} worked on this run, {:.1}s)\n",
        report.done,
        report.gallery,
        report.dir.display(),
        report.registered,
        report.changed,
        report.processed,
        report.seconds
    );
    if !report.failures.is_empty() {
        text.push_str(&format!("{} image(s) failed:\n", report.failures.len()));
        for (key, kind, error) in report.failures.iter().take(50) {
            text.push_str(&format!("  - {key} [{kind}]: {error}\n"));
        }
        if report.failures.len() > 50 {
            text.push_str(&format!(
                "  ... and {} more (see --json)\n",
                report.failures.len() - 50
            ));
        }
        if server_failures > 0 {
            text.push_str("server failures are retried when you run the same command again\n");
        }
    }
    out(cmd.json, &report, text)?;
    Ok(if server_failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
