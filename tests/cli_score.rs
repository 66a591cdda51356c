//! `imagescope score` and `imagescope check-submission` as a user runs them, on the official
//! example files vendored in `tests/fixtures/benchmarks`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn samples(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/benchmarks")
        .join(sub)
}

fn imagescope(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imagescope"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_cirr(file: &Path) -> (i32, String, String) {
    let data = samples("cirr");
    imagescope(&[
        "check-submission",
        "--dataset",
        "cirr",
        "--split",
        "test1",
        "--data",
        data.to_str().unwrap(),
        file.to_str().unwrap(),
    ])
}

#[test]
fn official_cirr_examples_pass() {
    for (file, metric) in [
        ("test1_pred_ranks_recall.json", "recall"),
        ("test1_pred_ranks_recall_subset.json", "recall_subset"),
    ] {
        let (code, out, err) = check_cirr(&samples("cirr").join(file));
        assert_eq!(code, 0, "{file}: {out}{err}");
        assert!(
            out.contains(&format!("CIRR {metric} submission for 4148 queries")),
            "{out}"
        );
    }
}

fn edited_copy(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let mut v: serde_json::Map<String, Value> = serde_json::from_slice(
        &std::fs::read(samples("cirr/test1_pred_ranks_recall.json")).unwrap(),
    )
    .unwrap();
    edit(&mut v);
    let path = dir.join("edited.json");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    path
}

#[test]
fn a_reference_inserted_fails_naming_the_pair() {
    let dir = tempfile::tempdir().unwrap();
    // Pair 12064's reference is test1-83-0-img1 (datasets.md §1.2).
    let path = edited_copy(dir.path(), |v| {
        v.get_mut("12064").unwrap().as_array_mut().unwrap()[10] =
            Value::String("test1-83-0-img1".into());
    });
    let (code, _, err) = check_cirr(&path);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("pair id 12064") && err.contains("reference"),
        "{err}"
    );
}

#[test]
fn a_query_removed_fails_naming_the_pair() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_copy(dir.path(), |v| {
        v.remove("12065");
    });
    let (code, _, err) = check_cirr(&path);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("pair id 12065") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn official_circo_test_example_passes() {
    let data = samples("circo");
    let file = samples("circo/submission_test.json");
    let (code, out, err) = imagescope(&[
        "check-submission",
        "--dataset",
        "circo",
        "--split",
        "test",
        "--data",
        data.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn score_json_uses_the_benchmarks_metric_names() {
    let data = samples("circo");
    let file = samples("circo/submission_val.json");
    let (code, out, err) = imagescope(&[
        "score",
        "--dataset",
        "circo",
        "--split",
        "val",
        "--data",
        data.to_str().unwrap(),
        "--predictions",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = v
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .take(5)
        .collect();
    assert_eq!(keys, ["mAP@5", "mAP@10", "mAP@25", "mAP@50", "Recall@5"]);
    assert_eq!(format!("{:.4}", v["mAP@50"].as_f64().unwrap()), "0.6020");
}

#[test]
fn scoring_a_test_split_points_to_the_server() {
    let data = samples("cirr");
    let file = samples("cirr/test1_pred_ranks_recall.json");
    let (code, _, err) = imagescope(&[
        "score",
        "--dataset",
        "cirr",
        "--split",
        "test1",
        "--data",
        data.to_str().unwrap(),
        "--predictions",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("evaluation server"), "{err}");
}

#[test]
fn unknown_dataset_name_lists_the_choices() {
    let (code, _, err) = imagescope(&["score", "--dataset", "cifar10", "--predictions", "x.json"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cirr-subset") && err.contains("visdial"),
        "{err}"
    );
}

/// A finished run folder as `imagescope run` leaves it, reduced to what `fashioniq` reads.
fn category_run(
    dir: &Path,
    category: &str,
    s1: (f64, f64),
    s3: (f64, f64),
    partial: bool,
) -> PathBuf {
    let run = dir.join(category);
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("run.json"),
        serde_json::json!({"dataset": format!("fashioniq-{category}"), "split": "val"}).to_string(),
    )
    .unwrap();
    let mut metrics = serde_json::json!({
        "s1": {"R@10": s1.0, "R@50": s1.1},
        "s3": {"R@10": s3.0, "R@50": s3.1},
    });
    if partial {
        metrics["partial"] =
            serde_json::json!({"answered": 5, "failed": 0, "unanswered": 7, "total": 12});
    }
    std::fs::write(run.join("metrics.json"), metrics.to_string()).unwrap();
    run
}

#[test]
fn fashioniq_prints_each_category_and_the_average_the_paper_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = category_run(dir.path(), "dress", (20.0, 40.0), (30.0, 50.0), false);
    let s = category_run(dir.path(), "shirt", (10.0, 30.0), (20.0, 40.0), false);
    let t = category_run(dir.path(), "toptee", (30.0, 50.0), (40.0, 60.0), false);
    let (code, out, err) = imagescope(&[
        "fashioniq",
        t.to_str().unwrap(),
        d.to_str().unwrap(),
        s.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let table: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(table["s1"]["average"]["R@10"], 20.0, "{table}");
    assert_eq!(table["s3"]["average"]["R@50"], 50.0, "{table}");
    assert_eq!(table["s3"]["shirt"]["R@10"], 20.0, "{table}");
    let (code, text, _) = imagescope(&[
        "fashioniq",
        d.to_str().unwrap(),
        s.to_str().unwrap(),
        t.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(text.contains("average R@10"), "{text}");

    // A partial category run is not averaged with whole-split numbers.
    let p = category_run(
        &dir.path().join("p"),
        "toptee",
        (1.0, 2.0),
        (3.0, 4.0),
        true,
    );
    let (code, _, err) = imagescope(&[
        "fashioniq",
        d.to_str().unwrap(),
        s.to_str().unwrap(),
        p.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("partial run"), "{err}");
    // Two runs of one category: refused, naming it.
    let (code, _, err) = imagescope(&[
        "fashioniq",
        d.to_str().unwrap(),
        d.to_str().unwrap(),
        s.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("two runs of fashioniq-dress"), "{err}");
}
