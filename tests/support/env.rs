//! An end-to-end test environment: the five roles served by fake servers (test doubles) over a
//! `World`, a small benchmark written to disk in its official format, and helpers that run the
//! real `imagescope` binary on it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::fake_server::FakeServer;
use super::world::World;

/// The twelve images of the test world, by index.
pub const IMAGES: [&str; 12] = [
    "red car",
    "blue car",
    "red bus",
    "blue bus",
    "green tree",
    "two green trees",
    "black dog",
    "white dog",
    "black dog sofa",
    "white cat",
    "black cat",
    "yellow flower",
];

pub struct Env {
    pub dir: tempfile::TempDir,
    pub world: World,
    pub captioner: FakeServer,
    pub reasoner: Vec<FakeServer>,
    pub verifier: FakeServer,
    pub evaluator: FakeServer,
    pub embedder: FakeServer,
    pub data: PathBuf,
}

impl Env {
    /// Fake servers over the twelve images written under `data/<layout>` with `name(i)` as the
    /// file stem and `images_dir` as their folder.
    pub async fn start(
        images_dir: &str,
        name: impl Fn(usize) -> String,
        reasoner_replicas: usize,
    ) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data/bench");
        let (world, _) = World::create(&data.join(images_dir), &IMAGES, name);
        let captioner = FakeServer::start("llava", 32).await;
        let verifier = FakeServer::start("paligemma", 32).await;
        let evaluator = FakeServer::start("internvl", 32).await;
        let embedder = FakeServer::start("clip", 32).await;
        let mut reasoner = Vec::new();
        for _ in 0..reasoner_replicas {
            let r = FakeServer::start("llama", 32).await;
            World::reasoner(&r);
            reasoner.push(r);
        }
        world.captioner(&captioner);
        world.verifier(&verifier);
        world.evaluator(&evaluator);
        world.embedder(&embedder);
        Env {
            dir,
            world,
            captioner,
            reasoner,
            verifier,
            evaluator,
            embedder,
            data,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A servers file for the five fakes: per role its endpoints, model and API, then the lines
    /// `keys(role)` gives (settings of `[roles.<role>]`), the embedder's shape, then `tables(role)`
    /// (sub-tables such as `[roles.<role>.retry]`).
    pub fn servers_text(
        &self,
        keys: impl Fn(&str) -> String,
        tables: impl Fn(&str) -> String,
    ) -> String {
        let reasoners: Vec<String> = self
            .reasoner
            .iter()
            .map(|r| format!("{:?}", r.base_url()))
            .collect();
        let one = |f: &FakeServer| vec![format!("{:?}", f.base_url())];
        let mut servers = String::new();
        for (role, model, endpoints, extra) in [
            ("captioner", "llava", one(&self.captioner), ""),
            ("reasoner", "llama", reasoners, ""),
            ("verifier", "paligemma", one(&self.verifier), ""),
            ("evaluator", "internvl", one(&self.evaluator), ""),
            (
                "embedder",
                "clip",
                one(&self.embedder),
                "embed_shape = \"vllm-messages\"\ndimension = 32\n",
            ),
        ] {
            servers.push_str(&format!(
                "[roles.{role}]\nendpoints = [{}]\nmodel = \"{model}\"\napi = \"vllm\"\n{}{extra}{}\n",
                endpoints.join(", "),
                keys(role),
                tables(role)
            ));
        }
        servers
    }

    /// Writes servers.toml and an experiment file; returns the experiment's path.
    pub fn configs(
        &self,
        dataset: &str,
        split: &str,
        pipeline: &str,
        prompts: Option<&Path>,
    ) -> PathBuf {
        let servers = self.servers_text(
            |_| "max_in_flight = 8\ntimeout_secs = 10\n".into(),
            |role| format!("[roles.{role}.retry]\nmax_retries = 3\ninitial_backoff_ms = 5\nmax_backoff_ms = 20\nreplica_cooldown_ms = 200\n"),
        );
        std::fs::write(self.path("servers.toml"), servers).unwrap();
        let prompts = prompts.map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts"),
            Path::to_path_buf,
        );
        let exp = format!(
            "servers = \"servers.toml\"\nprompts = {:?}\nruns = \"runs\"\nimage_db = \"data/image_db\"\n\n[dataset]\nname = \"{dataset}\"\nroot = \"data/bench\"\nsplit = \"{split}\"\n\n[pipeline]\n{pipeline}\n",
            prompts.display().to_string()
        );
        let path = self.path(&format!("{dataset}.toml"));
        std::fs::write(&path, exp).unwrap();
        path
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagescope"));
        c.current_dir(self.dir.path()).args(args).kill_on_drop(true);
        c
    }

    pub async fn imagescope(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Builds the image database of `config`'s gallery.
    pub async fn index(&self, config: &Path) {
        let (code, out, err) = self
            .imagescope(&["index", "--json", "--config", config.to_str().unwrap()])
            .await;
        assert_eq!(code, 0, "index failed: {out}\n{err}");
    }

    /// Runs the pipeline and returns its JSON report.
    pub async fn run(&self, config: &Path, extra: &[&str]) -> Value {
        let mut args = vec!["run", "--json", "--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (code, out, err) = self.imagescope(&args).await;
        assert_eq!(code, 0, "run failed: {out}\n{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
    }

    /// The journal records of a run folder.
    pub fn journal(folder: &Path) -> Vec<Value> {
        std::fs::read_to_string(folder.join("queries.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A metric of one stage in a run report (`{"metrics": {"s1": {"R@1": ...}}}`).
    pub fn metric(report: &Value, stage: &str, name: &str) -> f64 {
        report["metrics"][stage][name]
            .as_f64()
            .unwrap_or_else(|| panic!("no {stage} {name}: {report}"))
    }
}

/// CIRR files for the twelve images and the given queries (pairid, reference, caption, target).
pub fn write_cirr(root: &Path, queries: &[(u64, usize, &str, usize)]) {
    let key = |i: usize| format!("dev-{i}-0-img0");
    let split: serde_json::Map<String, Value> = (0..IMAGES.len())
        .map(|i| (key(i), json!(format!("./dev/{}.png", key(i)))))
        .collect();
    std::fs::create_dir_all(root.join("image_splits")).unwrap();
    std::fs::create_dir_all(root.join("captions")).unwrap();
    std::fs::write(
        root.join("image_splits/split.rc2.val.json"),
        Value::Object(split).to_string(),
    )
    .unwrap();
    let recs: Vec<Value> = queries
        .iter()
        .map(|(id, r, caption, t)| {
            let mut members: Vec<String> = vec![key(*r), key(*t)];
            for i in 0..IMAGES.len() {
                if members.len() < 6 && !members.contains(&key(i)) {
                    members.push(key(i));
                }
            }
            json!({"pairid": id, "reference": key(*r), "target_hard": key(*t), "target_soft": {key(*t): 1.0},
                   "caption": caption, "img_set": {"id": 1, "members": members, "reference_rank": 0, "target_rank": 1}})
        })
        .collect();
    std::fs::write(
        root.join("captions/cap.rc2.val.json"),
        Value::Array(recs).to_string(),
    )
    .unwrap();
}

/// A Flickr30K `test_1k_flickr.csv` under `root`: one row (one caption) per `(image number, caption)`.
pub fn write_flickr(root: &Path, rows: &[(usize, &str)]) {
    let mut csv = String::from("filename,raw,split\n");
    for (f, c) in rows {
        csv.push_str(&format!("{f}.png,\"[\"\"{c}\"\"]\",test\n"));
    }
    std::fs::write(root.join("test_1k_flickr.csv"), csv).unwrap();
}

/// VisDial's search space over the twelve `unlabeled2017/NNNNNNNNNNNN.png` images and its
/// queries file under `root`: `dialogues` as VisDial writes them (`{"img", "dialog"}`).
pub fn write_visdial(root: &Path, dialogues: &Value) {
    let space: Vec<String> = (0..IMAGES.len())
        .map(|i| format!("unlabeled2017/{:012}.png", i + 1))
        .collect();
    std::fs::write(
        root.join("Search_Space_val_50k.json"),
        serde_json::to_string(&space).unwrap(),
    )
    .unwrap();
    std::fs::write(
        root.join("VisDial_v1.0_queries_val.json"),
        dialogues.to_string(),
    )
    .unwrap();
}
