//! `imagescope prompt render` and `imagescope prompt try`: build one role's request from the
//! prompt templates and sample inputs, print its exact JSON body (images shortened to a hash)
//! without any server, or send it and print the raw answer and the parsed result.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::config::{DatasetName, EvaluatorParse, Role, RoleServer, ServersConfig, VerifierMode};
use crate::images::{self, EncodedImage};
use crate::prompts::{Family, PromptSet};
use crate::roles::reasoner::{self, Edit, PropositionParse, ReasonInput};
use crate::roles::{captioner, evaluator, verifier};
use crate::serving::wire::{self, ImageRendering};
use crate::serving::{ChatRequest, RoleClient};

/// Which reasoner request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReasonerStep {
    /// Stage 1: edits and target descriptions.
    Reason,
    /// Stage 2a: yes/no propositions.
    Propositions,
}

/// Inputs of `prompt render` / `prompt try`.
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// captioner, reasoner, verifier, evaluator or embedder.
    #[arg(long)]
    pub role: Role,
    /// Dataset whose prompt family to use (cirr, fashioniq-dress, visdial...).
    #[arg(long, default_value = "cirr")]
    pub dataset: DatasetName,
    /// Reasoner request to build.
    #[arg(long, value_enum, default_value = "reason")]
    pub step: ReasonerStep,
    /// The instruction (reasoner, evaluator).
    #[arg(long, default_value = "make the dog black and put it on a sofa")]
    pub instruction: String,
    /// The reference caption; leave it out for text-to-image ("A blank image.").
    #[arg(long)]
    pub reference_caption: Option<String>,
    /// An edit for the propositions request, as "Kind: text" (repeatable).
    #[arg(long = "edit")]
    pub edits: Vec<String>,
    /// The verifier's question.
    #[arg(long, default_value = "Is the dog black?")]
    pub question: String,
    /// The image (captioner, verifier, embedder) or the candidate (evaluator).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The evaluator's reference image (black when left out).
    #[arg(long)]
    pub reference_image: Option<PathBuf>,
    /// Verifier decision mode.
    #[arg(long, value_enum, default_value = "substring")]
    pub mode: VerifierModeArg,
    /// Embedder: embed this text instead of the image.
    #[arg(long)]
    pub text: Option<String>,
    /// Servers file giving the model name and sampling.
    #[arg(long, default_value = "configs/servers/vllm.toml")]
    pub config: PathBuf,
    /// Prompt templates folder.
    #[arg(long, default_value = "prompts")]
    pub prompts: PathBuf,
}

/// Verifier modes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifierModeArg {
    /// "yes" anywhere.
    Substring,
    /// First word.
    FirstWord,
    /// P(yes) from logprobs.
    Logprob,
}

impl From<VerifierModeArg> for VerifierMode {
    fn from(m: VerifierModeArg) -> Self {
        match m {
            VerifierModeArg::Substring => VerifierMode::Substring,
            VerifierModeArg::FirstWord => VerifierMode::FirstWord,
            VerifierModeArg::Logprob => VerifierMode::Logprob,
        }
    }
}

/// A request ready to render or send.
enum Built {
    Chat(ChatRequest),
    Embed(Vec<crate::serving::EmbedInput>),
}

fn load_image(path: Option<&Path>, what: &str) -> anyhow::Result<EncodedImage> {
    match path {
        Some(p) => Ok(EncodedImage::from_file(p)?),
        None => {
            tracing::info!("no --{what} given; using a generated 64x64 test image");
            Ok(crate::doctor::probe_image())
        }
    }
}

fn parse_edits(raw: &[String]) -> anyhow::Result<Vec<Edit>> {
    raw.iter()
        .map(|e| {
            let (kind, text) = e
                .split_once(':')
                .with_context(|| format!("--edit {e:?} must look like \"Kind: text\""))?;
            Ok(Edit {
                kind: kind.trim().to_string(),
                text: text.trim().to_string(),
            })
        })
        .collect()
}

fn reason_input(a: &PromptArgs) -> ReasonInput {
    ReasonInput {
        instruction: a.instruction.clone(),
        reference_description: a
            .reference_caption
            .clone()
            .unwrap_or_else(|| reasoner::BLANK_REFERENCE.to_string()),
        has_reference: a.reference_caption.is_some(),
    }
}

fn build(
    a: &PromptArgs,
    prompts: &PromptSet,
    schema: Option<crate::config::ResponseSchema>,
) -> anyhow::Result<Built> {
    let family = Family::for_dataset(a.dataset);
    Ok(match a.role {
        Role::Captioner => Built::Chat(captioner::request(
            prompts,
            family,
            load_image(a.image.as_deref(), "image")?,
        )?),
        Role::Reasoner => Built::Chat(match a.step {
            ReasonerStep::Reason => {
                reasoner::reason_request(prompts, family, &reason_input(a), schema)?
            }
            ReasonerStep::Propositions => reasoner::propositions_request(
                prompts,
                family,
                &a.instruction,
                &parse_edits(&a.edits)?,
                schema,
            )?,
        }),
        Role::Verifier => Built::Chat(verifier::request(
            prompts,
            family,
            load_image(a.image.as_deref(), "image")?,
            &a.question,
            a.mode.into(),
        )?),
        Role::Evaluator => {
            let candidate = load_image(a.image.as_deref(), "image")?;
            let cand = images::decode(candidate.bytes(), "candidate")?;
            let reference = match &a.reference_image {
                Some(p) => Some(images::decode(
                    EncodedImage::from_file(p)?.bytes(),
                    &p.display().to_string(),
                )?),
                None => None,
            };
            let composite = evaluator::composite_png(reference.as_ref(), &cand)?;
            Built::Chat(evaluator::request(
                prompts,
                family,
                composite,
                &a.instruction,
                reference.is_some(),
            )?)
        }
        Role::Embedder => Built::Embed(match &a.text {
            Some(t) => vec![crate::serving::EmbedInput::Text(t.clone())],
            None => vec![crate::serving::EmbedInput::Image(load_image(
                a.image.as_deref(),
                "image",
            )?)],
        }),
    })
}

fn server_of(a: &PromptArgs) -> anyhow::Result<(RoleServer, PathBuf)> {
    let (servers, path): (ServersConfig, PathBuf) = crate::doctor::load_servers(&a.config)
        .with_context(|| "prompt commands read the model name and sampling from a servers file; pass --config")?;
    Ok((servers.role(a.role, &path)?.clone(), path))
}

/// The exact request body (images as hash placeholders), with no server involved.
pub fn render(a: &PromptArgs) -> anyhow::Result<Value> {
    let prompts = PromptSet::load(&a.prompts)?;
    let (server, _) = server_of(a)?;
    Ok(match build(a, &prompts, server.response_schema)? {
        Built::Chat(req) => wire::chat_body(&req, &server, ImageRendering::Placeholder),
        Built::Embed(inputs) => Value::Array(wire::embed_bodies(
            &inputs,
            &server,
            ImageRendering::Placeholder,
        )?),
    })
}

/// Sends the request and returns the raw answer with the parsed result.
pub async fn try_it(a: &PromptArgs) -> anyhow::Result<Value> {
    let prompts = PromptSet::load(&a.prompts)?;
    let (server, path) = server_of(a)?;
    let client = RoleClient::new(a.role, &server, &path)?;
    Ok(match build(a, &prompts, server.response_schema)? {
        Built::Embed(inputs) => {
            let reply = client.embed(&inputs).await?;
            let v = reply.value.first().cloned().unwrap_or_default();
            json!({"dimension": v.len(), "head": v.iter().take(8).collect::<Vec<_>>(), "attempts": reply.meta.attempts})
        }
        Built::Chat(req) => {
            let reply = client.chat(&req).await?;
            let raw = reply.value.content.clone();
            let parsed = match a.role {
                Role::Captioner => serde_json::to_value(captioner::parse(&raw))?,
                Role::Reasoner => match a.step {
                    ReasonerStep::Reason => serde_json::to_value(reasoner::parse_reasoning(&raw))?,
                    ReasonerStep::Propositions => {
                        serde_json::to_value(reasoner::parse_propositions(
                            &raw,
                            PropositionParse {
                                original: false,
                                normalize: true,
                            },
                        ))?
                    }
                },
                Role::Verifier => {
                    serde_json::to_value(verifier::decide(&reply.value, a.mode.into()))?
                }
                Role::Evaluator => json!({
                    "strict": evaluator::decide(&raw, EvaluatorParse::Strict),
                    "tolerant": evaluator::decide(&raw, EvaluatorParse::Tolerant),
                }),
                Role::Embedder => Value::Null,
            };
            json!({
                "raw": raw,
                "finish_reason": format!("{:?}", reply.value.finish_reason),
                "usage": reply.value.usage,
                "parsed": parsed,
                "latency_ms": reply.meta.latency.as_millis() as u64,
            })
        }
    })
}
