//! `imagescope search` and `imagescope chat` over a folder indexed with `index --folder`, against
//! fake model servers (test doubles over the tiny solid-colour world of tests/support/world.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::env::Env;
use tokio::io::AsyncWriteExt as _;

async fn indexed_folder() -> (Env, PathBuf, String) {
    let env = Env::start("photos", |i| format!("img{i:02}"), 1).await;
    env.configs("folder", "all", "", None);
    let servers = env.path("servers.toml").display().to_string();
    let folder = env.data.join("photos");
    let (code, out, err) = env
        .imagescope(&[
            "index",
            "--folder",
            folder.to_str().unwrap(),
            "--config",
            &servers,
            "--prompts",
            concat!(env!("CARGO_MANIFEST_DIR"), "/prompts"),
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    (env, folder, servers)
}

fn search_args<'a>(folder: &'a str, servers: &'a str) -> Vec<&'a str> {
    vec![
        "--folder",
        folder,
        "--config",
        servers,
        "--prompts",
        concat!(env!("CARGO_MANIFEST_DIR"), "/prompts"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_text_and_by_image_plus_edit_prints_stable_json() {
    let (env, folder, servers) = indexed_folder().await;
    let f = folder.to_str().unwrap().to_string();
    let mut args = vec!["search", "white cat", "--json", "--top", "3"];
    args.extend(search_args(&f, &servers));
    let (code, out, err) = env.imagescope(&args).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["query", "results"]);
    let first = &v["results"][0];
    let fields: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        ["rank", "key", "path", "score"],
        "documented, stable field order"
    );
    assert_eq!(first["rank"], 1);
    assert_eq!(
        first["key"], "img09.png",
        "stages 2 and 3 find the white cat: {out}"
    );
    assert_eq!(v["results"].as_array().unwrap().len(), 3);

    // Composed: the black cat as reference, the edit in words.
    let reference = folder.join("img10.png");
    let mut args = vec![
        "search",
        "white cat",
        "--json",
        "--image",
        reference.to_str().unwrap(),
    ];
    args.extend(search_args(&f, &servers));
    let (code, out, err) = env.imagescope(&args).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["query"]["reference"], "img10.png");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["key"] != "img10.png"),
        "the reference is not a result"
    );

    // The table, and a page with thumbnails.
    let mut args = vec!["search", "yellow flower", "--open", "--stages", "s1"];
    args.extend(search_args(&f, &servers));
    let (code, out, err) = env.imagescope(&args).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("rank  score   image") && out.contains("img11.png"),
        "{out}"
    );
    let page = err
        .lines()
        .find_map(|l| l.strip_prefix("page: "))
        .expect("page path on stderr");
    assert!(std::fs::read_to_string(page).unwrap().contains("img11.png"));

    let mut args = vec!["search", "  "];
    args.extend(search_args(&f, &servers));
    let (code, _, err) = env.imagescope(&args).await;
    assert_eq!(code, 2);
    assert!(err.contains("empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_refines_turn_by_turn_through_a_pseudo_terminal() {
    let (env, folder, servers) = indexed_folder().await;
    let bin = env!("CARGO_BIN_EXE_imagescope");
    let command = format!(
        "{bin} chat --top 2 --folder {} --config {servers} --prompts {}",
        folder.display(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/prompts")
    );
    // `script` gives the program a pseudo-terminal, as a person at a keyboard would.
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(env.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in ["a dog", "is it on a sofa? yes", ""] {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("rank  score   image").count(),
        2,
        "results after each turn: {text}"
    );
    let last = text.rsplit("rank  score   image").next().unwrap();
    let first_row = last.lines().nth(1).unwrap_or("");
    assert!(
        first_row.contains("img08.png"),
        "the black dog on a sofa tops the second turn: {text}"
    );
    assert!(text.contains("looking for: "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_uses_the_run_commands_database_lookup_and_its_checks() {
    let (env, folder, servers) = indexed_folder().await;
    let f = folder.to_str().unwrap().to_string();
    // A folder nobody indexed: the same message shape as `run`, with the command to fix it.
    let other = env.data.join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let o = other.to_str().unwrap().to_string();
    let mut args = vec!["search", "white cat"];
    args.extend(search_args(&o, &servers));
    let (code, _, err) = env.imagescope(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no image database at") && err.contains("imagescope index --folder"),
        "{err}"
    );
    // Another embedder model than the one that built the database: refused, as `run` refuses.
    let text = std::fs::read_to_string(&servers).unwrap();
    let (head, tail) = text.split_once("[roles.embedder]").unwrap();
    let tail = tail.replacen("model = \"clip\"", "model = \"other-clip\"", 1);
    let changed = env.path("other-embedder.toml");
    std::fs::write(&changed, format!("{head}[roles.embedder]{tail}")).unwrap();
    let idx = env.path("data/image_db");
    let dbs: Vec<PathBuf> = std::fs::read_dir(&idx)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dbs.len(), 1, "{dbs:?}");
    let c = changed.to_str().unwrap().to_string();
    let db = dbs[0].to_str().unwrap().to_string();
    let mut args = vec!["search", "white cat", "--index-dir", &db];
    args.extend(search_args(&f, &c));
    let (code, _, err) = env.imagescope(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("queries must be embedded by the same weights as the gallery"),
        "{err}"
    );
}
