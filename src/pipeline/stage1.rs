//! Stage 1: the reasoner turns (instruction, reference description) into target descriptions
//! (re-asked on unusable answers, then the documented fallback), the embedder encodes them, and
//! the image database ranks the gallery by the fused score (1 − τ)·cos(t, v) + τ·cos(t, c).

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::{DatasetName, Role};
use crate::datasets::ImageKey;
use crate::index::vectors::mean_query;
use crate::roles::embedder;
use crate::roles::reasoner::{self, ReasonInput, Reasoning};

use super::ask::{Asked, ask};
use super::context::{Ctx, Tally};
use crate::record::{Failure, S1Record};

/// What one round of one query asks.
#[derive(Debug, Clone)]
pub struct RoundInput {
    /// Round number (1 for single-turn queries).
    pub round: usize,
    /// Instruction of this round.
    pub instruction: String,
    /// Reference caption, "A blank image." or the running description.
    pub reference_description: String,
    /// Reference image (composed queries).
    pub reference: Option<ImageKey>,
    /// CIRR subset members.
    pub subset: Option<Vec<ImageKey>>,
    /// Skip the reasoner and search with the reference description itself (dialogue round 0).
    pub caption_only: bool,
    /// The image whose whole-gallery rank to record (a dialogue's target, for BRI).
    pub rank_target: Option<ImageKey>,
}

impl RoundInput {
    fn reason_input(&self) -> ReasonInput {
        ReasonInput {
            instruction: self.instruction.clone(),
            reference_description: self.reference_description.clone(),
            has_reference: self.reference.is_some(),
        }
    }
}

async fn reason(
    ctx: &Ctx,
    input: &RoundInput,
    tally: &mut Tally,
) -> Result<(Reasoning, Vec<String>), Failure> {
    if input.caption_only {
        return Ok((
            Reasoning {
                edits: vec![],
                descriptions: vec![input.reference_description.clone()],
            },
            vec![],
        ));
    }
    let ri = input.reason_input();
    let reference = ri.reference_description.clone();
    let parity = ctx.parity();
    let parse = move |text: &str| {
        if parity {
            reasoner::parse_reasoning_as_original(text, &reference)
        } else {
            reasoner::parse_reasoning(text)
        }
    };
    let req = reasoner::reason_request(
        &ctx.prompts,
        ctx.family,
        &ri,
        ctx.reasoner.server().response_schema,
    )
    .map_err(|e| Failure::new("prompt", e))?;
    match ask(
        &ctx.reasoner,
        &ctx.prompts,
        ctx.family,
        req,
        ctx.params.reask,
        parse,
    )
    .await
    {
        Ok(Asked::Parsed(r, ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            Ok((r, ex.answers))
        }
        Ok(Asked::Unusable(ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            let fb = reasoner::fallback(&ri, ctx.parity());
            let last = ex.failures.last();
            tally.fallback(
                "s1.reason",
                input.round,
                last.map_or("unusable answer".into(), |f| f.reason.clone()),
                last.map_or("", |f| f.raw.as_str()),
                &format!("searched with {:?}", fb.descriptions),
            );
            Ok((fb, ex.answers))
        }
        Err((e, ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            Err(Failure::serving(&e))
        }
    }
}

/// Runs stage 1 for one round.
pub async fn run(ctx: &Ctx, input: &RoundInput, tally: &mut Tally) -> Result<S1Record, Failure> {
    let (reasoning, answers) = reason(ctx, input, tally).await?;
    let reply = ctx
        .embedder
        .embed(&embedder::texts(&reasoning.descriptions))
        .await
        .map_err(|e| Failure::serving(&e))?;
    tally.call(Role::Embedder, &reply.meta, None);
    let vectors: Vec<Vec<f32>> = reply.value.into_iter().filter_map(embedder::unit).collect();
    let query = mean_query(&vectors).ok_or_else(|| {
        Failure::new(
            "embedding",
            "the embedder returned no usable vector for the descriptions",
        )
    })?;

    let subset: Option<HashSet<ImageKey>> = match (ctx.dataset, &input.subset) {
        (DatasetName::CirrSubset, Some(members)) => Some(
            members
                .iter()
                .filter(|m| Some(*m) != input.reference.as_ref())
                .cloned()
                .collect(),
        ),
        _ => None,
    };
    let exclude = ctx.params.exclude_reference && subset.is_none();
    let k = ctx.keep + usize::from(exclude && input.reference.is_some());
    let allowed = subset
        .map(|s| Arc::new(ctx.db.allowed_ids(&s)))
        .or_else(|| ctx.allowed.clone());
    // A search over a large gallery is tens of milliseconds of CPU (BENCHMARKS.md): it runs on the
    // blocking pool so that it never stalls the task that drives every other query.
    let (db, tau) = (ctx.db.clone(), ctx.params.tau as f32);
    let query_for_rank = if input.rank_target.is_some() {
        query.clone()
    } else {
        Vec::new()
    };
    let hits = tokio::task::spawn_blocking(move || db.search(&query, tau, k, allowed.as_deref()))
        .await
        .map_err(|e| Failure::new("search", format!("the gallery search crashed: {e}")))?
        .map_err(|e| Failure::new("search", e))?;
    let (ranking, scores): (Vec<ImageKey>, Vec<f32>) = hits
        .into_iter()
        .filter(|(key, _)| !(exclude && Some(key) == input.reference.as_ref()))
        .take(ctx.keep)
        .unzip();
    let gallery_rank = match &input.rank_target {
        Some(target) => gallery_rank(ctx, &ranking, target, query_for_rank, tau).await,
        None => None,
    };
    Ok(S1Record {
        edits: reasoning.edits,
        descriptions: reasoning.descriptions,
        answers,
        ranking,
        scores,
        gallery_rank,
    })
}

/// The target's rank in the whole gallery: its place in the kept ranking, or else one more exact
/// pass over the gallery (on the blocking pool). A rank that cannot be computed is left out (BRI
/// is then reported at the ranking's depth) and logged, not a failure of the query.
async fn gallery_rank(
    ctx: &Ctx,
    ranking: &[ImageKey],
    target: &ImageKey,
    query: Vec<f32>,
    tau: f32,
) -> Option<usize> {
    if let Some(p) = ranking.iter().position(|k| k == target) {
        return Some(p + 1);
    }
    let (db, target_for) = (ctx.db.clone(), target.clone());
    let allowed = ctx.allowed.clone();
    let found = tokio::task::spawn_blocking(move || {
        db.rank_of(&query, tau, &target_for, allowed.as_deref())
    })
    .await;
    match found {
        Ok(Ok(rank)) => rank,
        Ok(Err(e)) => {
            tracing::warn!("the gallery rank of {target} could not be computed: {e}");
            None
        }
        Err(e) => {
            tracing::warn!("the gallery rank of {target} crashed: {e}");
            None
        }
    }
}
