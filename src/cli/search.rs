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

use serde_json::json;

use crate::config::Stage;
use crate::datasets::{ImageKey, Instruction, Query};
use crate::record::{QueryRecord, Status};
use crate::session::SearchTarget;
use crate::session::{Session, open};

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
