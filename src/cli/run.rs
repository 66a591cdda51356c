//! `imagescope run`: the command around the library's three parts (`pipeline::prepare`, `drive`,
//! `finish`): progress bars while it runs, then the HTML report from the finished folder and the
//! summary as text or JSON.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{PipelineParams, Stage};
use crate::datasets::Query;
use crate::pipeline::finish::{RunReport, metrics_text};
use crate::pipeline::run::RunOptions;
use crate::record::Status;

/// A bar of finished queries and one bar per stage counting rounds through it (a dialogue has one
/// round per turn, plus round 0 outside the parity profile, which runs stage 1 only).
fn progress_bars(
    todo: &[&Query],
    params: &PipelineParams,
) -> Option<([indicatif::ProgressBar; 3], indicatif::ProgressBar)> {
    if todo.is_empty() {
        return None;
    }
    let round0 = u64::from(params.profile != crate::config::Profile::Parity);
    let turns: u64 = todo
        .iter()
        .map(|q| match &q.instruction {
            crate::datasets::Instruction::Text { .. } => 1,
            crate::datasets::Instruction::Dialogue { turns, .. } => turns.len() as u64,
        })
        .sum();
    let dialogues = todo
        .iter()
        .filter(|q| matches!(q.instruction, crate::datasets::Instruction::Dialogue { .. }))
        .count() as u64;
    let multi = indicatif::MultiProgress::new();
    let make = |len: u64, name: &str| {
        let b = multi.add(indicatif::ProgressBar::new(len));
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "{name:>7} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{msg}}"
        )) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    };
    let has = |s: Stage| params.stages.contains(&s);
    let stages = [
        make(turns + round0 * dialogues, "s1"),
        make(if has(Stage::S2) { turns } else { 0 }, "s2"),
        make(if has(Stage::S3) { turns } else { 0 }, "s3"),
    ];
    let queries = make(todo.len() as u64, "queries");
    Some((stages, queries))
}

/// One line on the replicas of the run's roles that are set aside now ("" when all serve).
pub fn replica_status(ctx: &crate::pipeline::context::Ctx) -> String {
    let clients = [
        Some(&ctx.reasoner),
        ctx.verifier.as_ref(),
        ctx.evaluator.as_ref(),
        Some(&ctx.embedder),
    ];
    clients
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let (out, all) = c.replicas_out();
            (!out.is_empty()).then(|| {
                format!(
                    "{}: {} of {all} replicas set aside ({})",
                    c.role(),
                    out.len(),
                    out.join(", ")
                )
            })
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs the experiment at `config` (already loaded as `exp`) and prints the summary.
pub async fn run(
    exp: &crate::config::ExperimentConfig,
    config: &Path,
    opts: RunOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Listening starts before anything is prepared, so a signal at any moment stops the run the
    // same way, and a second one during `finish` exits at once.
    let stop = crate::pipeline::run::stop_signals();
    let mut prepared = crate::pipeline::prepare::prepare(exp, &opts).await?;
    let bars = if json {
        None
    } else {
        progress_bars(&prepared.todo(), &prepared.params)
    };
    if let (Some((stages, _)), Some(ctx)) = (&bars, std::sync::Arc::get_mut(&mut prepared.ctx)) {
        ctx.progress = Some(stages.clone());
    }
    let queries_bar = bars.as_ref().map(|(_, q)| q.clone());
    // Beside the bars: which replicas are set aside, refreshed each second (the warnings in the
    // log say when and why).
    let some_failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let message = |failed: bool, replicas: &str| {
        let failed = if failed { "(some failed)" } else { "" };
        format!("{failed} {replicas}").trim().to_string()
    };
    let status = queries_bar.clone().map(|bar| {
        let (ctx, failed) = (prepared.ctx.clone(), some_failed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
                bar.set_message(message(failed, &replica_status(&ctx)));
            }
        })
    });
    // What the servers report of their own work, read now and at the end, sampled between.
    let monitor = crate::serving::server_metrics::Monitor::start(
        prepared.clients.all().cloned().collect(),
        std::time::Duration::from_secs(2),
    )
    .await;
    let driven = crate::pipeline::run::drive(&prepared, stop, |record| {
        if let Some(b) = &queries_bar {
            b.inc(1);
            if record.status == Status::Failed
                && !some_failed.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                b.set_message(message(true, &replica_status(&prepared.ctx)));
            }
        }
    })
    .await;
    if let Some(task) = status {
        // Awaited, so its share of the context is gone before `prepared` is dropped below.
        task.abort();
        let _ = task.await;
    }
    let interrupted = match driven {
        Ok(i) => i,
        Err(e) => {
            crate::logging::close_file();
            return Err(e.into());
        }
    };
    if let Some((stages, queries)) = &bars {
        queries.finish();
        stages.iter().for_each(indicatif::ProgressBar::finish);
    }
    let servers = monitor.finish().await;
    let report =
        crate::pipeline::finish::finish(&prepared, interrupted, opts.allow_partial, servers);
    // Every queued log line and cache answer is written before the summary is printed.
    crate::logging::close_file();
    drop(prepared);
    let report = report?;
    // The HTML pages are made from the folder as written; a failure there loses no result.
    if let Err(e) = crate::report::from_run_folder(&report.folder).and_then(|input| {
        crate::report::write_all(&input, &report.folder).map_err(|e| crate::report::ReportError {
            dir: report.folder.clone(),
            message: e.to_string(),
        })
    }) {
        tracing::warn!("{e}");
    }
    let text = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report, config)
    };
    super::print(&text)?;
    Ok(if report.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// The human-readable end-of-run summary.
pub fn render(report: &RunReport, config: &Path) -> String {
    let mut out = String::new();
    for n in &report.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&metrics_text(&report.metrics, report.partial.as_ref()));
    out.push_str(&format!(
        "\n{} queries ({} finished earlier), {} failed\n",
        report.queries,
        report.resumed,
        report.failed.len()
    ));
    if !report.failures_by_kind.is_empty() {
        let kinds: Vec<String> = report
            .failures_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!("  failed by kind: {}\n", kinds.join(", ")));
    }
    for (id, e) in report.failed.iter().take(20) {
        out.push_str(&format!("  failed {id}: {e}\n"));
    }
    out.push_str("\nrole          sent  cached  tokens in/out      p50 ms  p95 ms  errors\n");
    for (role, s) in &report.roles {
        let errors: u64 = s.errors.values().sum();
        out.push_str(&format!(
            "{role:<10}  {:>6}  {:>6}  {:>8}/{:<8}  {:>6}  {:>6}  {:>6}\n",
            s.attempts,
            s.cache_hits,
            s.prompt_tokens,
            s.completion_tokens,
            s.latency_p50_ms.map_or("-".into(), |v| format!("{v:.0}")),
            s.latency_p95_ms.map_or("-".into(), |v| format!("{v:.0}")),
            errors
        ));
    }
    out.push_str(&servers_table(&report.servers, &report.roles));
    if !report.fallbacks.is_empty() {
        let f: Vec<String> = report
            .fallbacks
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!("fallbacks: {}\n", f.join(", ")));
    }
    for s in &report.submissions {
        out.push_str(&format!("submission: {}\n", s.display()));
    }
    out.push_str(&format!("run folder: {}\n", report.folder.display()));
    out.push_str(&format!(
        "report: {}\n",
        report.folder.join("report.html").display()
    ));
    if report.interrupted {
        out.push_str(&format!(
            "interrupted; finished queries are saved. Resume with:\n  imagescope run --config {} --resume {}\n",
            config.display(),
            report.folder.display()
        ));
    }
    out
}

/// The servers' own figures per role ("-": the server does not report it), then the advice.
fn servers_table(
    servers: &std::collections::BTreeMap<String, crate::serving::server_metrics::ServerFigures>,
    roles: &std::collections::BTreeMap<String, crate::serving::StatsSnapshot>,
) -> String {
    let reported: Vec<_> = servers
        .iter()
        .filter(|(_, f)| f.endpoints_read > 0)
        .collect();
    if reported.is_empty() {
        return String::new();
    }
    let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let mut out = String::from(
        "\nservers (their /metrics, counting every client; \"-\": not reported; own cached: this run's answers)\nrole        prompt tok  prefix hit  own cached  mm hit   gen tok  queue ≤p50/p95 s  kv peak  waiting\n",
    );
    for (role, f) in &reported {
        out.push_str(&format!(
            "{role:<10}  {:>10}  {:>10}  {:>10}  {:>6}  {:>8}  {:>15}  {:>7}  {:>7}\n",
            n(f.prompt_tokens),
            pct(f.prefix_cache_hit_rate),
            n(roles.get(*role).and_then(|r| r.cached_prompt_tokens)),
            pct(f.mm_cache_hit_rate),
            n(f.generation_tokens),
            format!("{}/{}", secs(f.queue_p50_s), secs(f.queue_p95_s)),
            pct(f.kv_cache_peak),
            f.waiting_mean
                .map_or("-".to_string(), |w| format!("{w:.1}")),
        ));
    }
    for (role, f) in &reported {
        // Servers, not endpoints: a router's endpoint stands for each of its workers.
        let servers = f.servers.max(f.endpoints);
        if f.endpoints_read < servers {
            out.push_str(&format!(
                "  {role}: {} of {} servers reported\n",
                f.endpoints_read, servers
            ));
        }
        for a in &f.advice {
            out.push_str(&format!("  advice, {role}: {a}\n"));
        }
    }
    out
}
