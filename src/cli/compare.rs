//! `imagescope compare RUN_A RUN_B`: arguments, the text table, the JSON and the HTML page file.
//! The comparison itself is `crate::compare`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::compare::{self, Comparison, Cost};
use crate::metrics::paired::Bootstrap;

/// `compare` arguments.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline run folder (runs/<dataset>/<name>/<time>).
    pub run_a: PathBuf,
    /// The run to compare with it, of the same dataset and split.
    pub run_b: PathBuf,
    /// Bootstrap resamples for the intervals.
    #[arg(long, default_value_t = 2000)]
    pub resamples: usize,
    /// Seed of the bootstrap draws (the same seed gives the same intervals).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the comparison as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where to write the HTML page (default: compare-<A's name>-<A's time>.html in B's folder).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Moved queries to list in the text output (all are in the JSON and the page).
    #[arg(long, default_value_t = 20)]
    pub top: usize,
}

fn default_page(a: &Path, b: &Path) -> PathBuf {
    let part = |n: usize| {
        a.components()
            .rev()
            .nth(n)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    b.join(format!("compare-{}-{}.html", part(1), part(0)))
}

/// Runs `compare`.
pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    if !(1..=1_000_000).contains(&args.resamples) {
        anyhow::bail!(
            "--resamples {}: give a number from 1 to 1000000 (2000 is plenty for a 95% interval)",
            args.resamples
        );
    }
    let how = Bootstrap {
        resamples: args.resamples,
        seed: args.seed,
    };
    let c = compare::compare(&args.run_a, &args.run_b, how)?;
    let page = args
        .html
        .clone()
        .unwrap_or_else(|| default_page(&args.run_a, &args.run_b));
    let page_dir = page
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let html = compare::html::render(&c, page_dir)?;
    crate::files::write_atomic(&page, html)
        .map_err(|e| anyhow::anyhow!("cannot write the page {}: {e}", page.display()))?;
    let out = if args.json {
        serde_json::to_string_pretty(&c)? + "\n"
    } else {
        text(&c, args.top) + &format!("page: {}\n", page.display())
    };
    super::print(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn signed(v: f64) -> String {
    format!("{v:+.2}")
}

fn rank(r: Option<usize>) -> String {
    r.map_or("-".into(), |r| r.to_string())
}

fn pair(a: Option<&Cost>, b: Option<&Cost>, f: impl Fn(&Cost) -> String) -> String {
    format!("{}/{}", a.map_or("-".into(), &f), b.map_or("-".into(), &f))
}

/// The comparison as text.
pub fn text(c: &Comparison, top: usize) -> String {
    let mut out = format!(
        "compare {} {}\n  A: {}\n  B: {}\n{} shared queries ({} only in A, {} only in B); intervals: 95% paired bootstrap, {} resamples, seed {}\n",
        c.a.dataset,
        c.a.split,
        c.a.dir.display(),
        c.b.dir.display(),
        c.shared,
        c.only_a,
        c.only_b,
        c.resamples,
        c.seed
    );
    for n in &c.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    for s in &c.stages {
        let width = s
            .metrics
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        out.push_str(&format!(
            "\nafter {}\n{:<width$}  {:>7}  {:>7}  {:>7}  {:>18}  McNemar (A only/B only, p)\n",
            s.stage.as_str(),
            "metric",
            "A",
            "B",
            "B-A",
            "95% interval"
        ));
        for m in &s.metrics {
            let ci = m.ci.map_or("-".into(), |[lo, hi]| {
                format!("[{}, {}]", signed(lo), signed(hi))
            });
            let mc = m.mcnemar.map_or(String::new(), |t| {
                format!("{}/{}, p = {:.4}", t.a_only, t.b_only, t.p)
            });
            out.push_str(&format!(
                "{:<width$}  {:>7.2}  {:>7.2}  {:>7}  {ci:>18}  {mc}\n",
                m.name,
                m.a,
                m.b,
                signed(m.diff)
            ));
        }
    }
    if let Some(m) = &c.moves {
        out.push_str(&format!(
            "\nrank of the target after {}: {} better, {} worse, {} the same\n",
            m.stage.as_str(),
            m.better,
            m.worse,
            m.same
        ));
        if !m.moved.is_empty() {
            out.push_str("  query               A      B   (worst first; - = not in the kept ranking or failed)\n");
        }
        for mv in m.moved.iter().take(top) {
            out.push_str(&format!(
                "  {:<16}  {:>5}  {:>5}\n",
                mv.id,
                rank(mv.a),
                rank(mv.b)
            ));
        }
        if m.moved.len() > top {
            out.push_str(&format!(
                "  ... {} more (see the page)\n",
                m.moved.len() - top
            ));
        }
    }
    out.push_str("\ncost per role, A/B:\nrole        sent         cached       tokens in          tokens out         p50 ms\n");
    for r in &c.cost {
        let (a, b) = (r.a.as_ref(), r.b.as_ref());
        out.push_str(&format!(
            "{:<10}  {:<11}  {:<11}  {:<17}  {:<17}  {}\n",
            r.role,
            pair(a, b, |c| c.attempts.to_string()),
            pair(a, b, |c| c.cache_hits.to_string()),
            pair(a, b, |c| c.prompt_tokens.to_string()),
            pair(a, b, |c| c.completion_tokens.to_string()),
            pair(a, b, |c| c
                .latency_p50_ms
                .map_or("-".into(), |v| format!("{v:.0}"))),
        ));
    }
    if c.changes.is_empty() {
        out.push_str("\nwhat changed: nothing in the prompt copies or resolved configs\n");
    } else {
        out.push_str("\nwhat changed:\n");
        for f in &c.changes {
            out.push_str(&f.diff);
            if !f.diff.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}
