//! Loaders and metrics on the real annotation files vendored in `tests/fixtures/benchmarks` (see its
//! `SOURCES.md`) and on small hand-made fixtures in `tests/fixtures/`, checked against official figures and by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use imagescope::config::DatasetName;
use imagescope::datasets::{DatasetSpec, ImageKey, Instruction, load_gallery, load_queries};
use imagescope::metrics::{predictions, protocol};
use serde_json::{Value, json};

fn samples(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/benchmarks")
        .join(sub)
}

fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
}

fn spec(name: DatasetName, root: PathBuf, split: &str) -> DatasetSpec {
    DatasetSpec {
        name,
        root,
        split: split.into(),
        image_ext: None,
    }
}

#[test]
fn cirr_counts_match_the_official_files() {
    for (split, queries, gallery) in [("val", 4181, 2297), ("test1", 4148, 2315)] {
        let s = spec(DatasetName::Cirr, samples("cirr"), split);
        let q = load_queries(&s).unwrap();
        assert_eq!(q.len(), queries, "{split} queries");
        assert_eq!(load_gallery(&s).unwrap().len(), gallery, "{split} gallery");
        assert!(
            q.iter()
                .all(|q| q.subset.as_ref().is_some_and(|m| m.len() == 6))
        );
    }
    let val = load_queries(&spec(DatasetName::Cirr, samples("cirr"), "val")).unwrap();
    let first = &val[0];
    assert_eq!(first.id, "12060");
    assert_eq!(first.reference, Some(ImageKey::from("dev-244-0-img0")));
    assert_eq!(first.targets, vec![ImageKey::from("dev-1028-1-img1")]);
    assert_eq!(
        first.instruction,
        Instruction::Text {
            text: "show three bottles of soft drink".into()
        }
    );
    // test1 pair 27098 has a blank caption, which becomes "the same image".
    let test = load_queries(&spec(DatasetName::Cirr, samples("cirr"), "test")).unwrap();
    let blank = test.iter().find(|q| q.id == "27098").unwrap();
    assert_eq!(
        blank.instruction,
        Instruction::Text {
            text: "the same image".into()
        }
    );
    assert!(test.iter().all(|q| q.targets.is_empty()));
}

#[test]
fn circo_counts_and_ground_truth() {
    let val = load_queries(&spec(DatasetName::Circo, samples("circo"), "val")).unwrap();
    let test = load_queries(&spec(DatasetName::Circo, samples("circo"), "test")).unwrap();
    assert_eq!((val.len(), test.len()), (220, 800));
    assert_eq!(val[0].reference, Some(ImageKey::from("000000271520.jpg")));
    assert_eq!(val[0].targets.len(), 3);
    assert_eq!(val[0].targets[0], ImageKey::from("000000355099.jpg"));
    assert!(test.iter().all(|q| q.targets.is_empty()));
}

#[test]
fn fashioniq_counts_per_category() {
    for (name, queries, gallery) in [
        (DatasetName::FashioniqDress, 2017, 3817),
        (DatasetName::FashioniqShirt, 2038, 6346),
        (DatasetName::FashioniqToptee, 1961, 5373),
    ] {
        let s = spec(name, samples("fashioniq"), "val");
        assert_eq!(load_queries(&s).unwrap().len(), queries, "{name}");
        let g = load_gallery(&s).unwrap();
        assert_eq!(g.len(), gallery, "{name}");
        assert!(g[0].path.to_string_lossy().ends_with(".png"));
    }
    let jpg = DatasetSpec {
        image_ext: Some("jpg".into()),
        ..spec(DatasetName::FashioniqDress, samples("fashioniq"), "val")
    };
    assert!(
        load_gallery(&jpg).unwrap()[0]
            .path
            .to_string_lossy()
            .ends_with(".jpg")
    );
}

#[test]
fn visdial_dialogues_over_the_search_space() {
    let s = spec(DatasetName::Visdial, samples("visdial"), "val");
    let q = load_queries(&s).unwrap();
    assert_eq!(q.len(), 2064);
    assert_eq!(load_gallery(&s).unwrap().len(), 50_000);
    match &q[0].instruction {
        Instruction::Dialogue { caption, turns } => {
            assert!(caption.starts_with("a bedroom"));
            assert_eq!(turns.len(), 10);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(q[0].targets, vec![ImageKey::from("000000185565.jpg")]);
}

#[test]
fn circo_official_example_scores_to_four_decimals() {
    let queries = load_queries(&spec(DatasetName::Circo, samples("circo"), "val")).unwrap();
    let preds =
        predictions::read(DatasetName::Circo, &samples("circo/submission_val.json")).unwrap();
    let s = protocol::score(DatasetName::Circo, &queries, &preds, Default::default()).unwrap();
    let expect = [
        ("mAP@5", 0.4861),
        ("mAP@10", 0.5178),
        ("mAP@25", 0.5400),
        ("mAP@50", 0.6020),
        ("Recall@5", 0.9091),
        ("Recall@10", 0.9091),
        ("Recall@25", 1.3636),
        ("Recall@50", 3.6364),
        ("semantic_mAP@10/comparative_statement", 1.0500),
        ("semantic_mAP@10/direct_addressing", 0.9197),
        ("semantic_mAP@10/statement_with_conjunction", 0.6183),
        ("semantic_mAP@10/viewpoint", 0.6173),
        ("semantic_mAP@10/spatial_relations_background", 0.1808),
        ("semantic_mAP@10/addition", 0.0871),
        ("semantic_mAP@10/compare_change", 0.0242),
        ("semantic_mAP@10/cardinality", 0.0),
        ("semantic_mAP@10/negation", 0.0),
    ];
    for (name, value) in expect {
        let got = s.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(format!("{got:.4}"), format!("{value:.4}"), "{name}");
    }
    assert!(s.missing.is_empty());
}

#[test]
fn flickr_csv_with_quoted_commas_and_metrics_by_hand() {
    let s = spec(DatasetName::Flickr30k, fixtures("flickr"), "test");
    let q = load_queries(&s).unwrap();
    let ids: Vec<&str> = q.iter().map(|q| q.id.as_str()).collect();
    assert_eq!(
        ids,
        ["100.jpg#0", "100.jpg#1", "200.jpg#0", "200.jpg#1"],
        "the train row is skipped"
    );
    assert_eq!(
        q[0].instruction,
        Instruction::Text {
            text: "A man, in a hat, sits.".into()
        }
    );
    assert_eq!(
        q[1].instruction,
        Instruction::Text {
            text: "He says \"hi\" to a dog.".into()
        }
    );
    let g = load_gallery(&s).unwrap();
    assert_eq!(
        g.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(),
        ["100.jpg", "200.jpg"]
    );

    // Ranks 1, 2, 6, missing → R@1 25, R@5 50, R@10 75.
    let preds = predictions::parse(
        DatasetName::Flickr30k,
        &json!({
            "100.jpg#0": ["100.jpg", "200.jpg"],
            "100.jpg#1": ["200.jpg", "100.jpg"],
            "200.jpg#0": ["a", "b", "c", "d", "e", "200.jpg"],
            "200.jpg#1": ["100.jpg"],
        }),
        Path::new("p.json"),
    )
    .unwrap();
    let m = protocol::score(DatasetName::Flickr30k, &q, &preds, Default::default()).unwrap();
    assert_eq!(m.to_json(), json!({"R@1": 25.0, "R@5": 50.0, "R@10": 75.0}));
}

#[test]
fn mscoco_csv_with_python_literal_captions() {
    let q = load_queries(&spec(DatasetName::Mscoco, fixtures("mscoco"), "test")).unwrap();
    assert_eq!(q.len(), 4);
    assert_eq!(
        q[1].instruction,
        Instruction::Text {
            text: "A cat's nap.".into()
        }
    );
    assert_eq!(
        q[3].targets,
        vec![ImageKey::from("COCO_val2014_000000000002.jpg")]
    );
}

#[test]
fn visdial_rounds_scored_by_hand() {
    let s = spec(DatasetName::Visdial, fixtures("visdial"), "val");
    let q = load_queries(&s).unwrap();
    let preds =
        predictions::read(DatasetName::Visdial, &fixtures("visdial/predictions.json")).unwrap();
    let m = protocol::score(DatasetName::Visdial, &q, &preds, Default::default()).unwrap();
    // Ranks by round: d0 3→1, d1 1→4, d2 none→2.
    let third = 100.0 / 3.0;
    assert!((m.get("Hits@1/round1").unwrap() - third).abs() < 1e-9);
    assert!((m.get("Hits@1/round2").unwrap() - 2.0 * third).abs() < 1e-9);
    assert!((m.get("Hits@5/round1").unwrap() - 2.0 * third).abs() < 1e-9);
    assert_eq!(m.get("Hits@5/round2"), Some(100.0));
    // BRI over lists 4 deep: best 0-based ranks d0 (2, 0), d1 (0, 0), d2 (not found = 4, 1). The
    // name says the depth: a missing target counts as rank 4, not as the gallery's size.
    let bri = ((3f64.ln() / 2.0) + 0.0 + (5f64.ln() + 2f64.ln()) / 2.0) / 3.0;
    assert!(m.get("BRI").is_none());
    assert!(
        (m.get("BRI@4").unwrap() - bri).abs() < 1e-9,
        "{:?}",
        m.metrics
    );
    // A run records the whole-gallery rank of a target beyond its list: with d2's at 1,000 in
    // round 1 every rank is known, and the literature's BRI is reported, named without a depth.
    // A gallery rank where the list has the target changes nothing (the list's rank is used).
    let mut with_gallery = preds.clone();
    with_gallery
        .gallery_ranks
        .insert("2".into(), [(1, 1000), (2, 2)].into());
    with_gallery
        .gallery_ranks
        .insert("0".into(), [(1, 77)].into());
    let g = protocol::score(DatasetName::Visdial, &q, &with_gallery, Default::default()).unwrap();
    let exact = ((3f64.ln() / 2.0) + 0.0 + (1000f64.ln() + 2f64.ln()) / 2.0) / 3.0;
    assert!(g.get("BRI@4").is_none());
    assert!(
        (g.get("BRI").unwrap() - exact).abs() < 1e-9,
        "{:?}",
        g.metrics
    );
    assert_eq!(g.get("Hits@5/round2"), m.get("Hits@5/round2"));
    // Hits@K are read from the lists only: a gallery rank of 1 for a target missing from its list
    // (an approximate search can do that) makes no hit.
    let mut odd = preds.clone();
    odd.gallery_ranks.insert("2".into(), [(1, 1)].into());
    let o = protocol::score(DatasetName::Visdial, &q, &odd, Default::default()).unwrap();
    assert_eq!(o.get("Hits@1/round1"), m.get("Hits@1/round1"));
}

fn copy_cirr(dir: &Path) {
    for f in [
        "cap.rc2.test1.json",
        "split.rc2.test1.json",
        "cap.rc2.val.json",
        "split.rc2.val.json",
    ] {
        std::fs::copy(samples("cirr").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn path_traversal_in_a_split_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_cirr(dir.path());
    let path = dir.path().join("split.rc2.val.json");
    let mut split: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    split.insert("dev-244-0-img0".into(), json!("../../etc/passwd"));
    std::fs::write(&path, serde_json::to_vec(&split).unwrap()).unwrap();
    let err = load_gallery(&spec(DatasetName::Cirr, dir.path().into(), "val"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("../../etc/passwd") && err.contains("leaves the dataset root"),
        "{err}"
    );
    assert!(err.contains("split.rc2.val.json"), "{err}");
}

#[test]
fn malformed_record_names_file_index_and_field() {
    let dir = tempfile::tempdir().unwrap();
    copy_cirr(dir.path());
    let path = dir.path().join("cap.rc2.val.json");
    let mut recs: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    recs[7].as_object_mut().unwrap().remove("caption");
    std::fs::write(&path, serde_json::to_vec(&recs).unwrap()).unwrap();
    let err = load_queries(&spec(DatasetName::Cirr, dir.path().into(), "val"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cap.rc2.val.json") && err.contains("record 7") && err.contains("caption"),
        "{err}"
    );
    // A wrong type deep inside a record is named by its path.
    recs[7]["caption"] = "fine".into();
    recs[9]["img_set"]["members"][2] = 42.into();
    std::fs::write(&path, serde_json::to_vec(&recs).unwrap()).unwrap();
    let err = load_queries(&spec(DatasetName::Cirr, dir.path().into(), "val"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record 9") && err.contains("img_set.members[2]"),
        "{err}"
    );
}

#[test]
fn duplicate_query_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_cirr(dir.path());
    let path = dir.path().join("cap.rc2.val.json");
    let mut recs: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let dup = recs[0].clone();
    recs.push(dup);
    std::fs::write(&path, serde_json::to_vec(&recs).unwrap()).unwrap();
    let err = load_queries(&spec(DatasetName::Cirr, dir.path().into(), "val"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("12060") && err.contains("twice"), "{err}");
}

#[test]
fn unknown_split_and_missing_root_say_what_to_do() {
    let err = load_queries(&spec(DatasetName::Cirr, samples("cirr"), "train"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("val, test1"), "{err}");
    let err = load_queries(&spec(
        DatasetName::Circo,
        PathBuf::from("/nonexistent/CIRCO"),
        "val",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("/nonexistent/CIRCO") && err.contains("--data"),
        "{err}"
    );
}

#[test]
fn a_missing_annotation_file_lists_where_it_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    copy_cirr(dir.path());
    std::fs::remove_file(dir.path().join("cap.rc2.val.json")).unwrap();
    let err = load_queries(&spec(DatasetName::Cirr, dir.path().into(), "val"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("captions/cap.rc2.val.json") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn malformed_csvs_name_the_file_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("test_1k_flickr.csv");
    std::fs::write(&csv, "filename,captions\n1.jpg,\"[\"\"a\"\"]\"\n").unwrap();
    let err = load_queries(&spec(DatasetName::Flickr30k, dir.path().into(), "test"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test_1k_flickr.csv") && err.contains("`raw`"),
        "{err}"
    );
    std::fs::write(&csv, "filename,raw\n1.jpg,\"[\"\"a\"\", \"\"b\n").unwrap();
    let err = load_queries(&spec(DatasetName::Flickr30k, dir.path().into(), "test"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("test_1k_flickr.csv"), "{err}");
    std::fs::write(&csv, "filename,raw\n../../etc/passwd,\"[\"\"a\"\"]\"\n").unwrap();
    let err = load_queries(&spec(DatasetName::Flickr30k, dir.path().into(), "test"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record 0") && err.contains("filename"),
        "{err}"
    );
}
