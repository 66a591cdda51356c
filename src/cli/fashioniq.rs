//! `imagescope fashioniq DRESS SHIRT TOPTEE`: the table the paper reports for FashionIQ, R@10 and
//! R@50 of each category and their average, after each stage, from the three category runs'
//! `metrics.json` (`metrics::protocol::fashioniq_average`). A partial run's answered-only numbers
//! are never averaged with whole-split ones: a partial run is refused, naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::metrics::protocol::{Scored, fashioniq_average};

/// The stage → metrics of one category run, and its dataset name.
fn read_run(dir: &Path) -> anyhow::Result<(String, BTreeMap<String, Scored>)> {
    let read = |name: &str| -> anyhow::Result<serde_json::Value> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e}; is this a finished run folder?",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))
    };
    let info = read("run.json")?;
    let dataset = info["dataset"].as_str().unwrap_or_default().to_string();
    let metrics = read("metrics.json")?;
    if let Some(p) = metrics.get("partial") {
        anyhow::bail!(
            "{} is a partial run ({} of {} queries answered); resume it before averaging the categories",
            dir.display(),
            p["answered"],
            p["total"]
        );
    }
    let mut stages = BTreeMap::new();
    for (stage, table) in metrics.as_object().into_iter().flatten() {
        let rows: Vec<(String, f64)> = table
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
            .collect();
        stages.insert(
            stage.clone(),
            Scored {
                metrics: rows,
                ..Default::default()
            },
        );
    }
    Ok((dataset, stages))
}

/// Runs the command.
pub fn run(dirs: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let mut by_category: BTreeMap<String, BTreeMap<String, Scored>> = BTreeMap::new();
    for d in dirs {
        let (dataset, stages) = read_run(d)?;
        let Some(category) = dataset.strip_prefix("fashioniq-") else {
            anyhow::bail!(
                "{} is a run of {dataset:?}, not of a FashionIQ category (fashioniq-dress, -shirt, -toptee)",
                d.display()
            );
        };
        if by_category.insert(category.to_string(), stages).is_some() {
            anyhow::bail!("two runs of fashioniq-{category} given; give one run per category");
        }
    }
    let missing: Vec<&str> = ["dress", "shirt", "toptee"]
        .into_iter()
        .filter(|c| !by_category.contains_key(*c))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "no run of {} given; the average is over the three categories",
            missing.join(", ")
        );
    }
    let stages: Vec<String> = by_category["dress"]
        .keys()
        .filter(|s| by_category.values().all(|c| c.contains_key(*s)))
        .cloned()
        .collect();
    let mut table = serde_json::Map::new();
    let mut text = format!("{:<8}", "stage");
    for c in ["dress", "shirt", "toptee", "average"] {
        text.push_str(&format!("  {:>8} {:>8}", format!("{c} R@10"), "R@50"));
    }
    text.push('\n');
    for stage in &stages {
        let per: Vec<&Scored> = ["dress", "shirt", "toptee"]
            .iter()
            .map(|c| &by_category[*c][stage])
            .collect();
        let avg = fashioniq_average(&per);
        let mut row = serde_json::Map::new();
        text.push_str(&format!("{stage:<8}"));
        for (c, s) in ["dress", "shirt", "toptee"].iter().zip(&per) {
            let (r10, r50) = (s.get("R@10"), s.get("R@50"));
            row.insert(c.to_string(), serde_json::json!({"R@10": r10, "R@50": r50}));
            let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
            text.push_str(&format!("  {:>13} {:>8}", cell(r10), cell(r50)));
        }
        let get = |n: &str| avg.iter().find(|(k, _)| k == n).map(|x| x.1);
        row.insert(
            "average".into(),
            serde_json::json!({"R@10": get("avg R@10"), "R@50": get("avg R@50")}),
        );
        text.push_str(&format!(
            "  {:>13.2} {:>8.2}\n",
            get("avg R@10").unwrap_or(f64::NAN),
            get("avg R@50").unwrap_or(f64::NAN)
        ));
        table.insert(stage.clone(), serde_json::Value::Object(row));
    }
    let out = if json {
        serde_json::to_string_pretty(&serde_json::Value::Object(table))? + "\n"
    } else {
        text
    };
    super::print(&out)?;
    Ok(ExitCode::SUCCESS)
}
