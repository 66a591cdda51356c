//! Stage 3: the evaluator looks at the top α candidates in order, each as one composite image of
//! (reference or black, candidate), and the first it accepts moves to rank 1. Turns run one after
//! another for a query (the original's turn-batched loop gives the same result); other queries
//! keep the evaluator busy meanwhile.

use crate::config::{Grounding, Role};
use crate::datasets::ImageKey;
use crate::roles::evaluator;

use super::context::{Ctx, Tally};
use super::stage1::RoundInput;
use crate::record::{DecisionRecord, S3Record};

async fn judge(
    ctx: &Ctx,
    input: &RoundInput,
    reference: Option<image::DynamicImage>,
    candidate: &ImageKey,
    tally: &mut Tally,
) -> Result<(bool, String, String, Option<String>), String> {
    let client = ctx.evaluator.as_ref().ok_or("no evaluator configured")?;
    let req = if client.server().grounding == Grounding::Caption {
        let caption = |k: &ImageKey| {
            ctx.caption(k)
                .ok_or_else(|| format!("image {k} has no stored caption"))
        };
        let reference_caption = input.reference.as_ref().map(caption).transpose()?;
        evaluator::request_from_captions(
            &ctx.prompts,
            ctx.family,
            reference_caption.as_deref(),
            &caption(candidate)?,
            &input.instruction,
        )
        .map_err(|e| e.to_string())?
    } else {
        image_request(ctx, input, reference, candidate).await?
    };
    let reply = client.chat(&req).await.map_err(|e| e.to_string())?;
    tally.call(Role::Evaluator, &reply.meta, reply.value.usage);
    let d = evaluator::decide(&reply.value.content, ctx.params.evaluator_parse);
    Ok((
        d.accepted,
        d.explanation,
        crate::roles::cut(&reply.value.content, 2000),
        d.note,
    ))
}

/// The image-grounded request: the composite of (reference or black, candidate).
async fn image_request(
    ctx: &Ctx,
    input: &RoundInput,
    reference: Option<image::DynamicImage>,
    candidate: &ImageKey,
) -> Result<crate::serving::ChatRequest, String> {
    let cand = ctx.pixels(candidate).await?;
    let composite =
        tokio::task::spawn_blocking(move || evaluator::composite_png(reference.as_ref(), &cand))
            .await
            .map_err(|e| format!("composite crashed: {e}"))?
            .map_err(|e| e.to_string())?;
    evaluator::request(
        &ctx.prompts,
        ctx.family,
        composite,
        &input.instruction,
        input.reference.is_some(),
    )
    .map_err(|e| e.to_string())
}

/// Runs stage 3 for one round on the stage-2 ranking.
pub async fn run(
    ctx: &Ctx,
    input: &RoundInput,
    ranking: &[ImageKey],
    tally: &mut Tally,
) -> S3Record {
    let by_caption = ctx
        .evaluator
        .as_ref()
        .is_some_and(|c| c.server().grounding == Grounding::Caption);
    // Each turn holds its own permits (the reference and the candidate) from the evaluator's
    // pool, only while its composite is built and judged: no permit waits across the α calls,
    // and the reference is read again each turn (from the page cache) rather than kept.
    let reference_key = input.reference.as_ref().filter(|_| !by_caption);
    let images = 1 + u32::from(reference_key.is_some());
    let mut decisions = Vec::new();
    let mut accepted = None;
    for (turn, candidate) in ranking.iter().take(ctx.params.alpha).enumerate() {
        let _permit = if by_caption {
            None
        } else {
            ctx.image_permit(Role::Evaluator, images).await
        };
        let reference = match reference_key {
            Some(key) => match ctx.pixels(key).await {
                Ok(img) => Some(img),
                Err(e) => {
                    tally.fallback("s3.reference", input.round, e, "", "kept the stage-2 order");
                    return S3Record {
                        decisions,
                        accepted: None,
                        ranking: ranking.to_vec(),
                    };
                }
            },
            None => None,
        };
        let judged = judge(ctx, input, reference, candidate, tally).await;
        match judged {
            Ok((yes, explanation, raw, note)) => {
                decisions.push(DecisionRecord {
                    turn,
                    candidate: candidate.clone(),
                    accepted: Some(yes),
                    explanation,
                    raw,
                    note,
                });
                if yes {
                    accepted = Some(turn);
                    break;
                }
            }
            Err(e) => {
                tally.fallback(
                    "s3.evaluate",
                    input.round,
                    e.clone(),
                    "",
                    "read as a rejection",
                );
                decisions.push(DecisionRecord {
                    turn,
                    candidate: candidate.clone(),
                    accepted: None,
                    explanation: e,
                    raw: String::new(),
                    note: None,
                });
            }
        }
    }
    let mut out = ranking.to_vec();
    if let Some(t) = accepted {
        let chosen = out.remove(t);
        out.insert(0, chosen);
    }
    S3Record {
        decisions,
        accepted,
        ranking: out,
    }
}
