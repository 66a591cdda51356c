//! `imagescope report` on a small run against the fake servers (test doubles): structure of the
//! HTML, images linked, ground truth marked, and model or data text escaped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use support::env::{Env, write_cirr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_a_small_run_has_its_structure_and_escapes_what_it_shows() {
    let env = Env::start("dev", |i| format!("dev-{i}-0-img0"), 1).await;
    write_cirr(
        &env.data,
        &[
            (100, 0, "blue car", 1),
            (101, 10, "white cat", 9),
            (102, 7, "<script>alert('x')</script> black dog sofa", 8),
        ],
    );
    let config = env.configs("cirr", "val", "", None);
    env.index(&config).await;
    let report = env.run(&config, &[]).await;
    let folder = PathBuf::from(report["folder"].as_str().unwrap());
    let html = std::fs::read_to_string(folder.join("report.html")).expect("run writes the report");
    assert!(html.starts_with("<!doctype html>"));
    for needle in [
        "<h2>Metrics</h2>",
        "<th>s1</th><th>s2</th><th>s3</th>",
        "<h2>Recall@K after each stage</h2>",
        "<svg",
        "Queries (3 of 3)",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
    assert_eq!(html.matches("<polyline").count(), 3, "one curve per stage");
    assert_eq!(html.matches("<section class=\"query\"").count(), 3);
    assert!(html.contains("class=\"hit\""), "the ground truth is marked");
    // The template engine escapes '/' in values as "&#x2f;" (a browser reads it back as '/').
    let unescaped = html.replace("&#x2f;", "/");
    let image = env.data.join("dev/dev-9-0-img0.png");
    let url = url::Url::from_file_path(&image).unwrap();
    assert!(
        unescaped.contains(&format!("src=\"{url}\"")),
        "images are linked by file URL"
    );
    assert!(
        !html.contains("<script>"),
        "no markup from data or models reaches the page"
    );
    assert!(html.contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt;"));
    assert!(!html.contains("<script") && !html.contains("javascript:"));
    // Query 101 is a miss after stage 1 only: the misses page lists no query; the changed page lists it.
    let misses = std::fs::read_to_string(folder.join("report-misses.html")).unwrap();
    assert!(
        misses.contains("Queries (0 of 0)"),
        "every query is at rank 1 after stage 3"
    );
    let changed = std::fs::read_to_string(folder.join("report-changed.html")).unwrap();
    assert!(
        changed.contains("id=\"q101\""),
        "stage 2 changed query 101's top 10"
    );

    // The command rebuilds the pages from the folder alone.
    std::fs::remove_file(folder.join("report.html")).unwrap();
    let (code, out, err) = env.imagescope(&["report", folder.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("report.html"));
    assert!(folder.join("report.html").exists());
}
