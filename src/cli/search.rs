//! `imagescope search` (text or image + edit) and `imagescope chat` (a dialogue refined turn by
//! turn) over a folder indexed with `imagescope index --folder`. Both run the same stages as
//! `run`, for one query, through the request cache: in chat, earlier rounds cost nothing again.
//!
//! `search --json` prints `{"query": {...}, "results": [{"rank", "key", "path", "score"}]}`:
//! `rank` from 1, `key` the path relative to the folder, `path` the file, `score` the stage-1
//! fused score (stages 2 and 3 reorder the top; they do not rescore).

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use crate::config::{
    DatasetName, ExperimentConfig, IndexSection, PipelineParams, ServersConfig, Stage,
};
use crate::datasets::{self, DatasetSpec, ImageKey, Instruction, Query};
use crate::index;
use crate::pipeline::context::Ctx;
use crate::prompts::{Family, PromptSet};
use crate::record::{QueryRecord, Status};
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
}

/// An indexed folder opened for searching: the servers asked which weights they serve, the image
/// database checked against them, the request cache open (`search`, `chat` and `serve`).
pub(crate) struct Session {
    /// The context every query of the session runs in.
    pub(crate) ctx: Ctx,
    /// The folder searched (absolute).
    pub(crate) folder: PathBuf,
    /// The runs folder (request cache, pages).
    pub(crate) runs: PathBuf,
}

/// What an experiment file adds to a search target: its dataset's folder, captions and database.
#[derive(Default)]
struct FromExperiment {
    folder: Option<PathBuf>,
    captions: Option<PathBuf>,
    index_dir: Option<PathBuf>,
}

/// Opens `t` for searching.
pub(crate) async fn open(t: &SearchTarget) -> anyhow::Result<Session> {
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
    let cache = Arc::new(Cache::open(&runs.join("cache.sqlite"), CacheMode::On)?);
    let clients = Clients::new(&servers, &servers_path)?.with_cache(cache);
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
    Ok(Session { ctx, folder, runs })
}

/// The key of `image` in the folder, when it lies inside it and is indexed.
fn key_in_folder(s: &Session, image: &Path) -> Option<ImageKey> {
    let key = ImageKey::under(&s.folder, &std::path::absolute(image).ok()?)?;
    s.ctx.db.contains(&key).then_some(key)
}

fn results(s: &Session, record: &QueryRecord, top: usize) -> serde_json::Value {
    let last = record.rounds.last();
    let stage = s
        .ctx
        .params
        .stages
        .iter()
        .copied()
        .max()
        .unwrap_or(Stage::S1);
    let ranking: Vec<ImageKey> = last
        .and_then(|r| r.ranking_after(stage))
        .map(<[ImageKey]>::to_vec)
        .unwrap_or_default();
    let scores: HashMap<&ImageKey, f32> = last
        .and_then(|r| r.s1.as_ref())
        .map(|s1| {
            s1.ranking
                .iter()
                .zip(&s1.scores)
                .map(|(k, v)| (k, *v))
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<serde_json::Value> = ranking
        .iter()
        .take(top)
        .enumerate()
        .map(|(i, k)| {
            json!({
                "rank": i + 1,
                "key": k.as_str(),
                "path": s.ctx.paths.get(k).map(|p| p.display().to_string()),
                "score": scores.get(k).map(|v| (*v as f64 * 1e4).round() / 1e4),
            })
        })
        .collect();
    json!(rows)
}

fn table(rows: &serde_json::Value) -> String {
    let mut out = String::from("rank  score   image\n");
    for r in rows.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>4}  {:>6}  {}\n",
            r["rank"],
            r["score"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.4}")),
            r["path"]
                .as_str()
                .unwrap_or_else(|| r["key"].as_str().unwrap_or(""))
        ));
    }
    out
}

/// Runs `search`.
pub async fn search(
    t: SearchTarget,
    text: String,
    image: Option<PathBuf>,
    json_out: bool,
    open_html: bool,
) -> anyhow::Result<ExitCode> {
    if text.trim().is_empty() {
        anyhow::bail!("the query text is empty; say what you are looking for");
    }
    let s = open(&t).await?;
    let reference = match &image {
        None => None,
        Some(p) => Some(key_in_folder(&s, p).ok_or_else(|| {
            anyhow::anyhow!(
                "the reference image {} must be one of the indexed images of {} (its caption is what the reasoner reads)",
                p.display(),
                s.folder.display()
            )
        })?),
    };
    let query = Query {
        id: "search".into(),
        reference: reference.clone(),
        instruction: Instruction::Text { text: text.clone() },
        targets: vec![],
        subset: None,
        aspects: vec![],
        shared_concept: None,
    };
    let record = crate::pipeline::query::run(&s.ctx, &query).await;
    if record.status == Status::Failed {
        anyhow::bail!(
            "the search failed: {}",
            record.error.clone().unwrap_or_default()
        );
    }
    let rows = results(&s, &record, t.top);
    if open_html {
        let dir = s.runs.join("search");
        std::fs::create_dir_all(&dir)?;
        let input = crate::report::ReportInput::from_records(
            format!("imagescope search: {text}"),
            s.ctx.params.stages.clone(),
            vec![],
            s.ctx.paths.clone(),
            [record.clone()],
        );
        let page = dir.join(format!(
            "search-{}.html",
            &blake3::hash(text.as_bytes()).to_hex()[..8]
        ));
        crate::files::write_atomic(
            &page,
            crate::report::render(&input, crate::report::View::All),
        )?;
        eprintln_safe(&format!("page: {}", std::path::absolute(&page)?.display()));
    }
    let out = if json_out {
        serde_json::to_string_pretty(&json!({
            "query": {"text": text, "reference": reference.map(|k| k.0), "stages": s.ctx.params.stages},
            "results": rows,
        }))? + "\n"
    } else {
        table(&rows)
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn eprintln_safe(s: &str) {
    let _ = writeln!(std::io::stderr(), "{s}");
}

/// Runs `chat`: the first line describes the photo, each later line adds a "question? answer"
/// turn (or any refinement); after each, the current top results are printed. An empty line or
/// end of input ends the chat.
pub async fn chat(t: SearchTarget) -> anyhow::Result<ExitCode> {
    let s = open(&t).await?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut caption: Option<String> = None;
    let mut turns: Vec<String> = Vec::new();
    writeln!(
        out,
        "Describe the photo you are looking for (an empty line ends):"
    )?;
    out.flush()?;
    for line in stdin.lock().lines() {
        let line = line?;
        let line = line.trim().to_string();
        if line.is_empty() {
            break;
        }
        match &caption {
            None => caption = Some(line),
            Some(_) => turns.push(line),
        }
        let query = Query {
            id: "chat".into(),
            reference: None,
            instruction: Instruction::Dialogue {
                caption: caption.clone().unwrap_or_default(),
                turns: turns.clone(),
            },
            targets: vec![],
            subset: None,
            aspects: vec![],
            shared_concept: None,
        };
        let record = crate::pipeline::query::run(&s.ctx, &query).await;
        if record.status == Status::Failed {
            writeln!(
                out,
                "that turn failed: {}",
                record.error.clone().unwrap_or_default()
            )?;
        } else {
            if let Some(d) = record
                .rounds
                .last()
                .and_then(|r| r.s1.as_ref())
                .and_then(|s1| s1.descriptions.first())
            {
                writeln!(out, "looking for: {d}")?;
            }
            write!(out, "{}", table(&results(&s, &record, t.top)))?;
        }
        writeln!(
            out,
            "Add a detail (\"is it indoors? no\"), or an empty line to stop:"
        )?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
