//! Shared helpers of the integration tests: the fake model server (a test double) and config
//! builders.
#![allow(dead_code)]

pub mod env;
pub mod fake_server;
pub mod proxy;
pub mod world;

use std::path::Path;

use imagescope::config::{Role, ServersConfig};
use imagescope::images::EncodedImage;
use imagescope::serving::{ChatRequest, Message, Part, Speaker};

/// A servers config with one role pointing at `endpoints`, with extra TOML lines for that role.
pub fn servers(role: Role, model: &str, endpoints: &[String], extra: &str) -> ServersConfig {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let shape = if role == Role::Embedder {
        "embed_shape = \"vllm-messages\"\n"
    } else {
        ""
    };
    let text = format!(
        "[roles.{role}]\nendpoints = [{}]\nmodel = {model:?}\napi = \"vllm\"\n{shape}{extra}\n",
        list.join(", ")
    );
    ServersConfig::parse(&text, Path::new("test-servers.toml")).unwrap()
}

/// A question about one image, as the verifier asks it (the image first), answered in at most
/// `max_tokens` tokens.
pub fn about(image: &EncodedImage, question: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        messages: vec![Message {
            speaker: Speaker::User,
            parts: vec![Part::Image(image.clone()), Part::Text(question.into())],
        }],
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

/// One of the demo's photos (`data/demo/photos`, gathered by `launch/demo/collect.sh`).
pub fn demo_photo(name: &str) -> EncodedImage {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/demo/photos")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run launch/demo/collect.sh",
        p.display()
    );
    EncodedImage::from_file(&p).unwrap()
}

/// Copies a folder tree (a prompts folder, say) so a test can edit the copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// The CPU demo's experiment (`configs/vllm-cpu-demo.toml`) written as `dir/experiment.toml`:
/// its servers file `servers`, `top` lines added beside it (say `captions = "..."`), `pipeline`
/// lines added to its `[pipeline]`, prompts and photos from the repository, runs and image
/// database inside `dir`. For the live tests over real servers.
pub fn demo_experiment(
    dir: &Path,
    servers: &Path,
    top: &str,
    pipeline: &str,
) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exp = std::fs::read_to_string(root.join("configs/vllm-cpu-demo.toml"))
        .unwrap()
        .replace(
            "servers = \"servers/vllm-cpu.toml\"",
            &format!("servers = {servers:?}\n{top}"),
        )
        .replace("\"../prompts\"", &format!("{:?}", root.join("prompts")))
        .replace("\"../runs\"", &format!("{:?}", dir.join("runs")))
        .replace(
            "\"../data/image_db\"",
            &format!("{:?}", dir.join("image_db")),
        )
        .replace("\"../data/demo\"", &format!("{:?}", root.join("data/demo")))
        .replace(
            "profile = \"default\"",
            &format!("profile = \"default\"\n{pipeline}"),
        );
    let path = dir.join("experiment.toml");
    std::fs::write(&path, exp).unwrap();
    path
}

/// What `search`, `chat` and `serve` open for the experiment `config`: its own prompts, the top 10,
/// stages S1-S3, the request cache as `cache` says.
pub fn search_target(
    config: std::path::PathBuf,
    cache: imagescope::serving::CacheMode,
) -> imagescope::session::SearchTarget {
    imagescope::session::SearchTarget {
        folder: None,
        config,
        captions: None,
        index_dir: None,
        prompts: std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts")),
        top: 10,
        stages: vec![
            imagescope::config::Stage::S1,
            imagescope::config::Stage::S2,
            imagescope::config::Stage::S3,
        ],
        cache,
    }
}

/// Serves `args` (whatever host they name) on a free loopback port, in the background; returns
/// its base URL.
pub async fn serve(args: &imagescope::serve::ServeArgs) -> String {
    let app = imagescope::serve::app(args).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(imagescope::serve::serve_on(
        listener,
        app,
        std::future::pending(),
    ));
    base
}
