//! The experiment file: a servers file, a dataset and the pipeline's parameters.
//!
//! Swapping a model backend means pointing `servers` at another file; nothing else changes. The
//! `profile` picks a coherent set of defaults (`parity` reproduces the original code's behaviour,
//! `default` uses the official protocols and robust parsing); any single parameter can still be set
//! explicitly, and the resolved values are what a run folder records. The `[index]` table says how
//! stage 1 searches the image database (exact by default; HNSW, f16 and i8 as options).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index_options::{DEFAULT_EF_SEARCH, Quantization, SearchMode, VectorOptions};
use super::{ConfigError, ServersConfig};

/// Benchmark (or user gallery) a run works on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum DatasetName {
    /// CIRR, full-gallery protocol.
    Cirr,
    /// CIRR, subset protocol (`img_set.members`).
    CirrSubset,
    /// CIRCO.
    Circo,
    /// FashionIQ, dress category.
    FashioniqDress,
    /// FashionIQ, shirt category.
    FashioniqShirt,
    /// FashionIQ, top/tee category.
    FashioniqToptee,
    /// Flickr30K 1k test, text to image.
    Flickr30k,
    /// MSCOCO 5k test, text to image.
    Mscoco,
    /// VisDial chat-based retrieval.
    Visdial,
    /// A user's own folder of images.
    Folder,
}

impl DatasetName {
    /// The folder the dataset conventionally lives in under `data/` (the original's layout).
    pub fn conventional_folder(self) -> &'static str {
        match self {
            DatasetName::Cirr | DatasetName::CirrSubset => "CIRR",
            DatasetName::Circo => "CIRCO",
            DatasetName::FashioniqDress
            | DatasetName::FashioniqShirt
            | DatasetName::FashioniqToptee => "FashionIQ",
            DatasetName::Flickr30k => "Flickr30K",
            DatasetName::Mscoco => "MSCOCO",
            DatasetName::Visdial => "VisDial",
            DatasetName::Folder => ".",
        }
    }

    /// The command-line and file spelling (`cirr-subset`, `fashioniq-dress`, ...).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A pipeline stage.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Stage {
    /// Reasoning and CLIP retrieval.
    S1,
    /// Proposition verification and re-ranking.
    S2,
    /// Evaluator acceptance.
    S3,
}

impl Stage {
    /// The stage's name in files and on the command line: `s1`, `s2`, `s3`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A coherent set of behaviour defaults.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Profile {
    /// Official protocols and robust parsing.
    #[default]
    Default,
    /// The original code's behaviour, defects included, for reproduction.
    Parity,
}

/// How a verifier answer becomes yes or no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifierMode {
    /// "yes" anywhere in the lower-cased answer (the original).
    Substring,
    /// The first word of the answer.
    FirstWord,
    /// P(yes) from the first token's `top_logprobs`.
    Logprob,
}

/// How the evaluator's decision is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvaluatorParse {
    /// Exact, case-sensitive `ANSWER: Yes` (the original).
    Strict,
    /// Case, brackets, markdown and punctuation tolerated.
    Tolerant,
}

/// How stage 2 orders the top-K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RerankMode {
    /// Number of propositions answered as expected (the original).
    Count,
    /// Sum of the probabilities of the expected answers (needs `verifier_mode = "logprob"`).
    ProbabilitySum,
}

/// The `[dataset]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Which benchmark.
    pub name: DatasetName,
    /// Dataset root folder (e.g. `data/CIRR`), relative to the experiment file.
    pub root: PathBuf,
    /// Split: `val`, `test`, `test1`...
    pub split: String,
    /// FashionIQ image extension (`png` or `jpg`).
    pub image_ext: Option<String>,
    /// Answer only the first N queries.
    pub limit: Option<usize>,
}

/// The `[pipeline]` table, as written (every field optional; the profile fills the rest).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSection {
    profile: Option<Profile>,
    tau: Option<f64>,
    top_k: Option<usize>,
    alpha: Option<usize>,
    stages: Option<Vec<Stage>>,
    queries_in_flight: Option<usize>,
    reask: Option<u32>,
    verifier_mode: Option<VerifierMode>,
    evaluator_parse: Option<EvaluatorParse>,
    rerank: Option<RerankMode>,
    exclude_reference: Option<bool>,
    normalize_expected_answers: Option<bool>,
}

/// The pipeline parameters after the profile's defaults are applied and ranges are checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineParams {
    /// The profile the defaults came from.
    pub profile: Profile,
    /// Weight of text→caption similarity in stage 1.
    pub tau: f64,
    /// Candidates verified in stage 2.
    pub top_k: usize,
    /// Candidates evaluated in stage 3.
    pub alpha: usize,
    /// Stages to run.
    pub stages: Vec<Stage>,
    /// Queries being worked on at once (default 128). Enough to keep the busiest server full:
    /// at least its slots × a query's latency ÷ the slot-seconds one query uses there (Little's law).
    pub queries_in_flight: usize,
    /// Times an unusable reasoner answer is re-asked with the parse error (0 = the original).
    pub reask: u32,
    /// Verifier decision rule.
    pub verifier_mode: VerifierMode,
    /// Evaluator decision parse.
    pub evaluator_parse: EvaluatorParse,
    /// Stage-2 ordering.
    pub rerank: RerankMode,
    /// Remove the reference image from the ranking (CIRR protocol).
    pub exclude_reference: bool,
    /// Read "True"/true/"Yes"/"yes" all as yes in expected answers.
    pub normalize_expected_answers: bool,
}

/// The `[index]` table: how stage 1 searches the image database.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSection {
    /// `exact` (default: the original's brute-force scores) or `hnsw` (graph search).
    #[serde(default)]
    pub search: SearchMode,
    /// `f32` (default), `f16`, or `i8` (exact search only).
    #[serde(default)]
    pub quantization: Quantization,
    /// HNSW's search breadth (BENCHMARKS.md has its recall and speed at 123k images).
    #[serde(default = "default_ef_search")]
    pub ef_search: usize,
}

fn default_ef_search() -> usize {
    DEFAULT_EF_SEARCH
}

impl Default for IndexSection {
    fn default() -> Self {
        IndexSection {
            search: SearchMode::Exact,
            quantization: Quantization::F32,
            ef_search: default_ef_search(),
        }
    }
}

impl IndexSection {
    /// What the vector index is built with (a change rebuilds it; `ef_search` does not).
    pub fn vector_options(&self) -> VectorOptions {
        VectorOptions {
            mode: self.search,
            quantization: self.quantization,
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("index.{key}"),
            message: message.into(),
        };
        if self.search == SearchMode::Hnsw && self.quantization == Quantization::I8 {
            return Err(bad(
                "quantization",
                "\"i8\" works with search = \"exact\" only; use \"f16\" or \"f32\" with HNSW",
            ));
        }
        if self.ef_search == 0 {
            return Err(bad("ef_search", "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    servers: PathBuf,
    prompts: Option<PathBuf>,
    runs: Option<PathBuf>,
    image_db: Option<PathBuf>,
    index_dir: Option<PathBuf>,
    captions: Option<PathBuf>,
    dataset: DatasetSection,
    #[serde(default)]
    pipeline: PipelineSection,
    #[serde(default)]
    index: IndexSection,
}

/// A loaded, validated experiment with every path resolved.
#[derive(Debug, Clone)]
pub struct ExperimentConfig {
    /// The experiment file itself.
    pub path: PathBuf,
    /// The servers file it names.
    pub servers_path: PathBuf,
    /// The servers file's content.
    pub servers: ServersConfig,
    /// Prompt templates folder.
    pub prompts_dir: PathBuf,
    /// Where run folders go.
    pub runs_dir: PathBuf,
    /// Root of the image databases (`data/image_db`).
    pub image_db_root: PathBuf,
    /// An explicit image database folder (for imported or hand-made ones); otherwise the folder is
    /// derived from the fingerprint of the configured captioner and embedder.
    pub index_dir: Option<PathBuf>,
    /// Captions file the gallery is indexed with instead of a captioner (`imagescope index`
    /// uses it, and runs look up the database it built).
    pub captions: Option<PathBuf>,
    /// The dataset table, with `root` resolved.
    pub dataset: DatasetSection,
    /// Resolved pipeline parameters.
    pub pipeline: PipelineParams,
    /// How the image database is searched.
    pub index: IndexSection,
}

impl ExperimentConfig {
    /// Loads an experiment file and the servers file it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = super::read_text(path)?;
        let raw: RawExperiment = super::parse_toml(&text, path)?;
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Canonical, so run folders and messages show clean absolute paths.
        let canonical = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        let base = canonical.as_path();
        let servers_path = join_clean(base, &raw.servers);
        let servers = ServersConfig::load(&servers_path)?;
        let mut dataset = raw.dataset;
        dataset.root = join_clean(base, &dataset.root);
        if let Some(ext) = &dataset.image_ext
            && !matches!(ext.as_str(), "png" | "jpg" | "jpeg" | "webp")
        {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "dataset.image_ext".into(),
                message: format!("{ext:?} is not one of \"png\", \"jpg\", \"jpeg\", \"webp\""),
            });
        }
        let pipeline = resolve_pipeline(raw.pipeline, path)?;
        raw.index.validate(path)?;
        Ok(ExperimentConfig {
            path: path.to_path_buf(),
            servers_path,
            servers,
            prompts_dir: join_clean(
                base,
                &raw.prompts.unwrap_or_else(|| PathBuf::from("../prompts")),
            ),
            runs_dir: join_clean(base, &raw.runs.unwrap_or_else(|| PathBuf::from("../runs"))),
            image_db_root: join_clean(
                base,
                &raw.image_db
                    .unwrap_or_else(|| PathBuf::from("../data/image_db")),
            ),
            index_dir: raw.index_dir.map(|d| join_clean(base, &d)),
            captions: raw.captions.map(|c| join_clean(base, &c)),
            dataset,
            pipeline,
            index: raw.index,
        })
    }
}

/// `base/rel` with `.` and `..` resolved lexically (the target may not exist yet).
fn join_clean(base: &Path, rel: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

impl PipelineParams {
    /// The `default` profile's parameters (what an empty `[pipeline]` table resolves to).
    pub fn defaults() -> Self {
        resolve_pipeline(PipelineSection::default(), Path::new("(defaults)")).unwrap_or_else(|_| {
            PipelineParams {
                profile: Profile::Default,
                tau: 0.15,
                top_k: 20,
                alpha: 3,
                stages: vec![Stage::S1, Stage::S2, Stage::S3],
                queries_in_flight: 128,
                reask: 2,
                verifier_mode: VerifierMode::Substring,
                evaluator_parse: EvaluatorParse::Tolerant,
                rerank: RerankMode::Count,
                exclude_reference: true,
                normalize_expected_answers: true,
            }
        })
    }
}

fn resolve_pipeline(p: PipelineSection, path: &Path) -> Result<PipelineParams, ConfigError> {
    let profile = p.profile.unwrap_or_default();
    let parity = profile == Profile::Parity;
    let bad = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: format!("pipeline.{key}"),
        message,
    };
    let params = PipelineParams {
        profile,
        tau: p.tau.unwrap_or(0.15),
        top_k: p.top_k.unwrap_or(20),
        alpha: p.alpha.unwrap_or(3),
        stages: p
            .stages
            .unwrap_or_else(|| vec![Stage::S1, Stage::S2, Stage::S3]),
        queries_in_flight: p.queries_in_flight.unwrap_or(128),
        reask: p.reask.unwrap_or(if parity { 0 } else { 2 }),
        verifier_mode: p.verifier_mode.unwrap_or(VerifierMode::Substring),
        evaluator_parse: p.evaluator_parse.unwrap_or(if parity {
            EvaluatorParse::Strict
        } else {
            EvaluatorParse::Tolerant
        }),
        rerank: p.rerank.unwrap_or(RerankMode::Count),
        exclude_reference: p.exclude_reference.unwrap_or(!parity),
        normalize_expected_answers: p.normalize_expected_answers.unwrap_or(!parity),
    };
    if !(0.0..=1.0).contains(&params.tau) {
        return Err(bad("tau", format!("{} is outside 0..=1", params.tau)));
    }
    if params.top_k == 0 {
        return Err(bad("top_k", "must be at least 1".into()));
    }
    if params.alpha > params.top_k {
        return Err(bad(
            "alpha",
            format!(
                "{} exceeds top_k = {}; stage 3 looks only at the top_k",
                params.alpha, params.top_k
            ),
        ));
    }
    if params.stages.is_empty() || !params.stages.contains(&Stage::S1) {
        return Err(bad(
            "stages",
            "must include \"s1\"; stages 2 and 3 refine its ranking".into(),
        ));
    }
    if params.queries_in_flight == 0 {
        return Err(bad("queries_in_flight", "must be at least 1".into()));
    }
    if params.rerank == RerankMode::ProbabilitySum && params.verifier_mode != VerifierMode::Logprob
    {
        return Err(bad(
            "rerank",
            "\"probability-sum\" needs verifier_mode = \"logprob\"".into(),
        ));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(text: &str) -> Result<PipelineParams, ConfigError> {
        let section: PipelineSection = super::super::parse_toml(text, Path::new("exp.toml"))?;
        resolve_pipeline(section, Path::new("exp.toml"))
    }

    #[test]
    fn parity_profile_reproduces_the_original() {
        let p = pipeline("profile = \"parity\"").unwrap();
        assert_eq!(p.reask, 0);
        assert_eq!(p.evaluator_parse, EvaluatorParse::Strict);
        assert!(!p.exclude_reference);
        assert!(!p.normalize_expected_answers);
        assert_eq!((p.tau, p.top_k, p.alpha), (0.15, 20, 3));
    }

    #[test]
    fn explicit_value_beats_profile() {
        let p = pipeline("profile = \"parity\"\nexclude_reference = true").unwrap();
        assert!(p.exclude_reference);
    }

    #[test]
    fn out_of_range_tau_names_key() {
        let err = pipeline("tau = 1.5").unwrap_err().to_string();
        assert!(
            err.contains("pipeline.tau") && err.contains("exp.toml"),
            "{err}"
        );
    }

    #[test]
    fn unknown_verifier_mode_lists_choices() {
        let err = pipeline("verifier_mode = \"maybe\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("substring") && err.contains("logprob"),
            "{err}"
        );
    }

    #[test]
    fn names_are_spelled_once_for_files_and_the_command_line() {
        use strum::VariantArray as _;
        let names: Vec<&str> = DatasetName::VARIANTS.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            names,
            [
                "cirr",
                "cirr-subset",
                "circo",
                "fashioniq-dress",
                "fashioniq-shirt",
                "fashioniq-toptee",
                "flickr30k",
                "mscoco",
                "visdial",
                "folder"
            ]
        );
        for d in DatasetName::VARIANTS {
            assert_eq!(d.as_str().parse::<DatasetName>().unwrap(), *d);
            assert_eq!(d.to_string(), d.as_str());
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str(), "serde agrees");
            let clap_parsed = <DatasetName as clap::ValueEnum>::from_str(d.as_str(), false);
            assert_eq!(clap_parsed.unwrap(), *d, "clap agrees");
        }
        assert!("cifar".parse::<DatasetName>().is_err());
        for s in Stage::VARIANTS {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<Stage>().unwrap(), *s);
        }
        let stages: Vec<&str> = Stage::VARIANTS.iter().map(|s| s.as_str()).collect();
        assert_eq!(stages, ["s1", "s2", "s3"]);
        let profile: &str = Profile::Parity.into();
        assert_eq!(serde_json::to_value(Profile::Parity).unwrap(), profile);
    }

    fn index(text: &str) -> Result<IndexSection, ConfigError> {
        let section: IndexSection = super::super::parse_toml(text, Path::new("exp.toml"))?;
        section.validate(Path::new("exp.toml"))?;
        Ok(section)
    }

    #[test]
    fn index_table_defaults_to_exact_f32_and_refuses_hnsw_with_i8() {
        assert_eq!(index("").unwrap(), IndexSection::default());
        assert_eq!(IndexSection::default().search, SearchMode::Exact);
        let h = index("search = \"hnsw\"\nquantization = \"f16\"\nef_search = 512").unwrap();
        assert_eq!(
            (h.search, h.quantization, h.ef_search),
            (SearchMode::Hnsw, Quantization::F16, 512)
        );
        let err = index("search = \"hnsw\"\nquantization = \"i8\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("index.quantization") && err.contains("exact"),
            "{err}"
        );
        let err = index("ef_search = 0").unwrap_err().to_string();
        assert!(err.contains("index.ef_search"), "{err}");
        let err = index("search = \"annoy\"").unwrap_err().to_string();
        assert!(err.contains("exact") && err.contains("hnsw"), "{err}");
    }

    #[test]
    fn shipped_example_experiment_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cirr-val.toml");
        let cfg = ExperimentConfig::load(&path).unwrap();
        assert_eq!(cfg.dataset.name, DatasetName::Cirr);
        assert!(cfg.servers_path.ends_with("servers/vllm.toml"));
    }
}
