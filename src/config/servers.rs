//! The servers file: which model server plays each of the five roles, and how to talk to it.
//!
//! A servers file (`configs/servers/*.toml`) has one `[roles.<role>]` table per role. It names
//! endpoints, the served model, the API flavour, the *name* of the environment variable that holds
//! an API key (never the key itself), limits, retry policy, sampling defaults and extra JSON fields
//! merged into every request body. Parsing is strict: unknown keys and bad values are errors that
//! name the file, the key and the allowed values.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The longest per-attempt time limit accepted, in seconds (a day).
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// The slowest accepted rate limit: one request per 1,000 s.
const MIN_RATE: f64 = 0.001;
/// The fastest accepted rate limit.
const MAX_RATE: f64 = 1_000_000.0;

/// One of the five model roles of the method.
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
pub enum Role {
    /// Describes every gallery image once (LLaVA-1.6 in the paper).
    Captioner,
    /// Reasons target descriptions and propositions (Llama-3-8B-Instruct).
    Reasoner,
    /// Answers yes/no propositions about a candidate image (PaliGemma-3B).
    Verifier,
    /// Accepts or rejects a (reference, candidate) pair (InternVL2-8B).
    Evaluator,
    /// Turns text and images into vectors (CLIP ViT-L/14).
    Embedder,
}

impl Role {
    /// All roles, in pipeline order.
    pub const ALL: &[Role] = <Role as strum::VariantArray>::VARIANTS;

    /// The lower-case name used in config files and logs.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether this role is sent images in chat requests.
    pub fn sees_images(self) -> bool {
        matches!(self, Role::Captioner | Role::Verifier | Role::Evaluator)
    }
}

/// Which server software speaks at the endpoint; decides health paths and dialect quirks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiFlavour {
    /// vLLM's OpenAI-compatible server (`/health`, `/v1/...`).
    Vllm,
    /// Hugging Face text-generation-inference (`/health`, `/v1/chat/completions`).
    Tgi,
    /// Any other OpenAI-compatible API (no health route; `/models` is probed instead).
    Openai,
    /// michaelfeil/infinity embedding server (`/health`, `/embeddings`).
    Infinity,
}

/// How embedding requests are shaped (serving.md §A1.4 and §A3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmbedShape {
    /// vLLM `/v1/embeddings` with a chat `messages` content part: text and images, one per request.
    VllmMessages,
    /// infinity `/embeddings` with `input` plus `modality`: text and images, batched.
    Infinity,
    /// Plain OpenAI `input` strings: text only, batched.
    OpenaiInput,
}

impl EmbedShape {
    /// Whether this request shape can carry images.
    pub fn supports_images(self) -> bool {
        !matches!(self, EmbedShape::OpenaiInput)
    }
}

/// How images are handed to a vision server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageTransport {
    /// Base64 `data:` URLs inside the request (works everywhere).
    #[default]
    DataUrl,
    /// Plain absolute file paths, for vLLM servers started with `--allowed-local-media-path`.
    LocalPath,
}

/// What a verifier or evaluator looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grounding {
    /// The image's pixels (a vision-language model).
    #[default]
    Image,
    /// The image's stored caption (any text model): the caption-grounded profile.
    Caption,
}

/// How a reasoner is asked to follow a JSON schema (grammar-constrained decoding), which makes
/// weak models produce answers of the right shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseSchema {
    /// OpenAI's `response_format: {"type": "json_schema", ...}` (vLLM, OpenAI).
    Openai,
    /// llama-cpp-python's `response_format: {"type": "json_object", "schema": ...}`.
    LlamaCpp,
}

/// Retry policy of one role: capped exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = never retry).
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds; doubles each retry.
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Ceiling of the exponential delay, in milliseconds.
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Ceiling on a server's `Retry-After`, in milliseconds.
    #[serde(default = "defaults::max_retry_after_ms")]
    pub max_retry_after_ms: u64,
    /// How long a failed replica is set aside before it is probed again, in milliseconds.
    #[serde(default = "defaults::replica_cooldown_ms")]
    pub replica_cooldown_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: defaults::max_retries(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            max_retry_after_ms: defaults::max_retry_after_ms(),
            replica_cooldown_ms: defaults::replica_cooldown_ms(),
        }
    }
}

/// Default sampling of one role. Every field is sent explicitly, because vLLM otherwise applies the
/// model's own `generation_config.json` (serving.md §A1.1).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// Maximum generated tokens.
    pub max_tokens: Option<u32>,
    /// Stop strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Seed, for servers that honour it.
    pub seed: Option<u64>,
}

/// Everything about one role's server(s), as written in the servers file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleServer {
    /// Base URLs, each up to and including the API prefix (e.g. `http://127.0.0.1:8001/v1`).
    pub endpoints: Vec<String>,
    /// Model name the server serves (the `model` field of every request).
    pub model: String,
    /// The weights behind `model`, when you want to name them yourself (a path, a hub id with
    /// revision, a hash). It wins over what the server reports (vLLM's `/v1/models` `root`), so
    /// the same weights at different paths on different hosts count as one model. It is part of
    /// the request cache key and the image database's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Server software at the endpoints.
    pub api: ApiFlavour,
    /// Name of the environment variable holding the API key; the key itself never goes in a file.
    pub api_key_env: Option<String>,
    /// Requests in flight at once, per endpoint.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Request rate for the whole role (all endpoints together), requests per second.
    pub requests_per_second: Option<f64>,
    /// Burst allowed above the rate.
    pub burst: Option<u32>,
    /// With several endpoints: requests about the same image go to the same replica (rendezvous
    /// hashing of the image over the healthy replicas, bounded so one image cannot overload one),
    /// where its prefix and encoder caches are warm; text-only requests go to the least-loaded.
    /// Every request with an image also carries `X-Session-ID: <image hash>`, for a router's
    /// `consistent_hash` policy. `false`: least-loaded for everything.
    #[serde(default = "defaults::yes")]
    pub affinity: bool,
    /// The Prometheus pages that tell what this role's servers did in a run, when the endpoints'
    /// own `/metrics` do not: full URLs (`http://gpu-a:8003/metrics`), read instead. Empty (the
    /// default): each endpoint's `/metrics`, or the workers of an endpoint that is vLLM's router
    /// (it lists them at `GET /list_workers`). Give them for another router (the production
    /// stack's), or when the router's workers are known to the client by other addresses. A page
    /// on another host than the endpoints' is asked without the role's API key (vLLM's
    /// `/metrics` needs none).
    #[serde(default)]
    pub metrics_urls: Vec<String>,
    /// Time limit of one request attempt, in seconds.
    #[serde(default = "defaults::timeout_secs")]
    pub timeout_secs: f64,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Default sampling parameters.
    #[serde(default)]
    pub sampling: Sampling,
    /// Free-form fields merged into each request body (`repetition_penalty`, `structured_outputs`...).
    #[serde(default)]
    pub extra_body: BTreeMap<String, serde_json::Value>,
    /// How images reach vision servers.
    #[serde(default)]
    pub image_transport: ImageTransport,
    /// Chat roles on vLLM ≥ 0.11 (its multimodal processor cache on, as by default): every image
    /// carries a `uuid` (its content hash), and once a replica has answered a request with an
    /// image's bytes, later requests to it name the image by the uuid alone (`"image_url": null`),
    /// sparing the bytes and the server's decoding. The value is how many images to count on per
    /// replica (vLLM keeps a 4 GiB LRU of processed images by default: hundreds of large LLaVA
    /// images, thousands of PaliGemma ones). A wrong guess (evicted, restarted, another API
    /// process) is a cache-miss error from vLLM, and the request goes again at once with the
    /// bytes. Absent: the bytes every time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uuids: Option<usize>,
    /// Reasoner: constrain answers to the expected JSON schema, in this server's dialect.
    pub response_schema: Option<ResponseSchema>,
    /// Verifier and evaluator: judge from the image (default) or from its stored caption.
    #[serde(default)]
    pub grounding: Grounding,
    /// Vision roles and the embedder: images whose longer side exceeds this many pixels are
    /// resized (and re-encoded as JPEG) before sending; absent = sent as they are.
    pub image_max_side: Option<u32>,
    /// Embedder only: request shape.
    pub embed_shape: Option<EmbedShape>,
    /// Embedder only: the client L2-normalises returned vectors (default true). Indexing and
    /// stage 1 make every vector unit length themselves (cosine similarity, as the method), so
    /// `false` changes no ranking; it changes the vectors `prompt try --role embedder` shows, and,
    /// being part of the image database's fingerprint, a change builds a new database.
    #[serde(default = "defaults::yes")]
    pub normalize: bool,
    /// Embedder only: expected vector dimension; answers of any other length are errors.
    pub dimension: Option<usize>,
    /// Embedder only: whether the server embeds images (false gives a caption-only index).
    pub images: Option<bool>,
}

impl RoleServer {
    /// Per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs)
    }

    /// Whether this embedder server accepts image inputs.
    pub fn embeds_images(&self) -> bool {
        self.images
            .unwrap_or_else(|| self.embed_shape.is_some_and(EmbedShape::supports_images))
    }
}

/// The parsed servers file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServersConfig {
    /// One entry per configured role. Roles a command does not use may be left out.
    pub roles: BTreeMap<Role, RoleServer>,
}

impl ServersConfig {
    /// Reads and validates a servers file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = super::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates servers-file text; `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: ServersConfig = super::parse_toml(text, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The server of `role`, or an error naming the file and the missing table.
    pub fn role(&self, role: Role, path: &Path) -> Result<&RoleServer, ConfigError> {
        self.roles.get(&role).ok_or_else(|| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("roles.{role}"),
            message: format!(
                "no [roles.{role}] table; add one with `endpoints`, `model` and `api`"
            ),
        })
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        for (role, s) in &self.roles {
            [
                check_endpoints,
                check_limits,
                check_sampling,
                check_role_fields,
            ]
            .iter()
            .try_for_each(|check| check(*role, s))
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })?;
        }
        Ok(())
    }
}

/// The endpoints: http(s) URLs without credentials in them.
fn check_endpoints(role: Role, s: &RoleServer) -> Result<(), (String, String)> {
    let k = |field: &str| format!("roles.{role}.{field}");
    if s.endpoints.is_empty() {
        return Err((k("endpoints"), "needs at least one base URL".into()));
    }
    for (field, e) in s
        .endpoints
        .iter()
        .map(|e| ("endpoints", e))
        .chain(s.metrics_urls.iter().map(|e| ("metrics_urls", e)))
    {
        let parsed = reqwest::Url::parse(e).ok();
        if let Some(u) = parsed
            .as_ref()
            .filter(|u| !u.username().is_empty() || u.password().is_some())
        {
            let mut shown = u.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            return Err((
                k(field),
                format!(
                    "{shown} carries a user name or password in the URL, which would end up in logs and run folders; remove it and put the NAME of an environment variable holding the key in api_key_env"
                ),
            ));
        }
        let ok = parsed
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .unwrap_or(false);
        if !ok {
            let example = if field == "endpoints" {
                "http://127.0.0.1:8000/v1"
            } else {
                "http://127.0.0.1:8000/metrics"
            };
            return Err((
                k(field),
                format!("{e:?} is not an http(s) URL such as \"{example}\""),
            ));
        }
    }
    Ok(())
}

/// The model, key variable, concurrency, rate, image size and timeout.
fn check_limits(role: Role, s: &RoleServer) -> Result<(), (String, String)> {
    let k = |field: &str| format!("roles.{role}.{field}");
    if s.model.trim().is_empty() {
        return Err((k("model"), "must name the served model".into()));
    }
    if s.checkpoint.as_ref().is_some_and(|c| c.trim().is_empty()) {
        return Err((
            k("checkpoint"),
            "must name the weights (a path, hub id or hash), or be left out to ask the server"
                .into(),
        ));
    }
    if let Some(var) = &s.api_key_env {
        let valid = !var.is_empty() && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((
                k("api_key_env"),
                "must be the NAME of an environment variable (letters, digits, _), not a key"
                    .into(),
            ));
        }
    }
    if s.max_in_flight == 0 {
        return Err((k("max_in_flight"), "must be at least 1".into()));
    }
    if let Some(r) = s.requests_per_second
        && !(r.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r))
    {
        return Err((
            k("requests_per_second"),
            format!(
                "{r} is outside {MIN_RATE}..={MAX_RATE} requests per second; leave it out for no rate limit"
            ),
        ));
    }
    if s.image_max_side.is_some_and(|m| m < 16) {
        return Err((k("image_max_side"), "must be at least 16 pixels".into()));
    }
    if s.burst == Some(0) {
        return Err((k("burst"), "must be at least 1".into()));
    }
    if !(s.timeout_secs.is_finite() && s.timeout_secs > 0.0 && s.timeout_secs <= MAX_TIMEOUT_SECS) {
        return Err((
            k("timeout_secs"),
            format!("must be a positive number of seconds, at most {MAX_TIMEOUT_SECS} (a day)"),
        ));
    }
    Ok(())
}

/// Sampling and retry settings.
fn check_sampling(role: Role, s: &RoleServer) -> Result<(), (String, String)> {
    let k = |field: &str| format!("roles.{role}.{field}");
    if let Some(t) = s.sampling.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err((k("sampling.temperature"), format!("{t} is outside 0..=2")));
    }
    if let Some(p) = s.sampling.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err((k("sampling.top_p"), format!("{p} is outside (0, 1]")));
    }
    if s.retry.initial_backoff_ms > s.retry.max_backoff_ms {
        return Err((
            k("retry.initial_backoff_ms"),
            "must not exceed retry.max_backoff_ms".into(),
        ));
    }
    Ok(())
}

/// What only some roles may set (shapes, images, grounding, api), and fields imagescope owns.
fn check_role_fields(role: Role, s: &RoleServer) -> Result<(), (String, String)> {
    let k = |field: &str| format!("roles.{role}.{field}");
    let reserved = ["model", "messages", "stream", "input"];
    if let Some(field) = s.extra_body.keys().find(|f| reserved.contains(&f.as_str())) {
        return Err((
            k(&format!("extra_body.{field}")),
            format!("`{field}` is set by imagescope itself; remove it from extra_body"),
        ));
    }
    match (role == Role::Embedder, s.embed_shape) {
        (true, None) => {
            return Err((
                    k("embed_shape"),
                    "the embedder needs a request shape: one of \"vllm-messages\", \"infinity\", \"openai-input\"".into(),
                ));
        }
        (false, Some(_)) => {
            return Err((
                k("embed_shape"),
                "only the embedder has a request shape".into(),
            ));
        }
        _ => {}
    }
    if role == Role::Embedder {
        if s.images == Some(true) && !s.embed_shape.is_some_and(EmbedShape::supports_images) {
            return Err((
                    k("images"),
                    "embed_shape \"openai-input\" carries text only; use \"vllm-messages\" or \"infinity\" for images".into(),
                ));
        }
        if s.dimension == Some(0) {
            return Err((k("dimension"), "must be at least 1".into()));
        }
    }
    if let Some(n) = s.image_uuids {
        let why = if role == Role::Embedder || role == Role::Reasoner {
            Some("only the roles that send images in chat requests (captioner, verifier, evaluator) name them by uuid".to_string())
        } else if s.api != ApiFlavour::Vllm {
            Some(
                "only vLLM (0.11 or newer) takes images by uuid; remove it for this server"
                    .to_string(),
            )
        } else if s.image_transport != ImageTransport::DataUrl {
            Some("with image_transport = \"local-path\" the request carries a file path, not the bytes: there is nothing to spare; remove image_uuids".to_string())
        } else if n == 0 {
            Some(
                "how many images per replica to count on: at least 1 (e.g. 2048), or remove it"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(why) = why {
            return Err((k("image_uuids"), why));
        }
    }
    if s.grounding == Grounding::Caption && !matches!(role, Role::Verifier | Role::Evaluator) {
        return Err((
            k("grounding"),
            "only the verifier and the evaluator can judge from captions".into(),
        ));
    }
    if role != Role::Embedder && s.api == ApiFlavour::Infinity {
        return Err((
            k("api"),
            "infinity serves embeddings only; use \"vllm\", \"tgi\" or \"openai\"".into(),
        ));
    }
    Ok(())
}

mod defaults {
    pub fn max_retries() -> u32 {
        4
    }
    pub fn initial_backoff_ms() -> u64 {
        500
    }
    pub fn max_backoff_ms() -> u64 {
        20_000
    }
    pub fn max_retry_after_ms() -> u64 {
        60_000
    }
    pub fn replica_cooldown_ms() -> u64 {
        5_000
    }
    pub fn max_in_flight() -> usize {
        16
    }
    pub fn timeout_secs() -> f64 {
        300.0
    }
    pub fn yes() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(text: &str) -> Result<ServersConfig, ConfigError> {
        ServersConfig::parse(text, &PathBuf::from("servers.toml"))
    }

    const MINIMAL: &str = r#"
[roles.reasoner]
endpoints = ["http://127.0.0.1:8001/v1"]
model = "llama"
api = "vllm"
"#;

    #[test]
    fn minimal_role_gets_documented_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        let r = &cfg.roles[&Role::Reasoner];
        assert_eq!(r.max_in_flight, 16);
        assert_eq!(r.retry.max_retries, 4);
        assert_eq!(r.timeout(), Duration::from_secs(300));
    }

    #[test]
    fn image_uuids_only_where_vllm_gets_the_bytes_in_chat() {
        let verifier = |api: &str, extra: &str| {
            format!(
                "[roles.verifier]\nendpoints = [\"http://127.0.0.1:8003/v1\"]\nmodel = \"v\"\napi = \"{api}\"\n{extra}"
            )
        };
        let ok = parse(&verifier("vllm", "image_uuids = 2048\n")).unwrap();
        assert_eq!(ok.roles[&Role::Verifier].image_uuids, Some(2048));
        for (text, says) in [
            (verifier("tgi", "image_uuids = 2048\n"), "only vLLM"),
            (verifier("vllm", "image_uuids = 0\n"), "at least 1"),
            (
                verifier(
                    "vllm",
                    "image_uuids = 8\nimage_transport = \"local-path\"\n",
                ),
                "nothing to spare",
            ),
            (format!("{MINIMAL}image_uuids = 8\n"), "chat requests"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("image_uuids") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse(&format!("{MINIMAL}max_inflight = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("servers.toml"), "{err}");
        assert!(err.contains("max_inflight"), "{err}");
    }

    #[test]
    fn bad_flavour_lists_allowed_values() {
        let err = parse(&MINIMAL.replace("\"vllm\"", "\"ollama\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ollama") && err.contains("vllm") && err.contains("tgi"),
            "{err}"
        );
    }

    #[test]
    fn embedder_without_shape_is_refused() {
        let text = MINIMAL.replace("reasoner", "embedder");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("roles.embedder.embed_shape"), "{err}");
        assert!(err.contains("vllm-messages"), "{err}");
    }

    #[test]
    fn api_key_value_in_place_of_a_name_is_refused() {
        let err = parse(&format!("{MINIMAL}api_key_env = \"sk-abc.def\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_key_env"), "{err}");
    }

    #[test]
    fn non_url_endpoint_is_refused() {
        let err =
            parse(&MINIMAL.replace("http://127.0.0.1:8001/v1", "localhost:8001")).unwrap_err();
        assert!(
            err.to_string().contains("roles.reasoner.endpoints"),
            "{err}"
        );
    }

    #[test]
    fn metrics_urls_are_checked_like_endpoints() {
        let ok = parse(&format!(
            "{MINIMAL}metrics_urls = [\"http://gpu-a:8003/metrics\"]\n"
        ))
        .unwrap();
        assert_eq!(
            ok.roles[&Role::Reasoner].metrics_urls,
            ["http://gpu-a:8003/metrics"]
        );
        for bad in ["gpu-a:8003/metrics", "http://user:pw@gpu-a:8003/metrics"] {
            let err = parse(&format!("{MINIMAL}metrics_urls = [{bad:?}]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("roles.reasoner.metrics_urls"), "{bad}: {err}");
            assert!(!err.contains("pw@"), "the password is not repeated: {err}");
        }
    }

    #[test]
    fn reserved_extra_body_field_is_refused() {
        let err = parse(&format!(
            "{MINIMAL}[roles.reasoner.extra_body]\nmodel = \"x\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("extra_body.model"), "{err}");
    }

    #[test]
    fn shipped_servers_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/servers");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = ServersConfig::load(&path).unwrap();
                // The CPU stack has no captioner (its galleries are indexed from captions files).
                for role in [
                    Role::Reasoner,
                    Role::Verifier,
                    Role::Evaluator,
                    Role::Embedder,
                ] {
                    assert!(
                        cfg.roles.contains_key(&role),
                        "{} lacks the {role}",
                        path.display()
                    );
                }
                n += 1;
            }
        }
        assert!(n >= 1);
    }
}
