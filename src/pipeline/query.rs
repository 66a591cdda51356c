//! One query through its stages: a single round for text-to-image and composed queries; for a
//! dialogue, round 0 (the caption alone, outside the parity profile) and then one round per turn,
//! with the first target description of each round carried into the next as the running
//! description (method.md §8.6). A server failure after retries ends the query as failed, with
//! what it had done so far; it never stops other queries.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::config::Stage;
use crate::datasets::{Instruction, Query};
use crate::roles::reasoner::BLANK_REFERENCE;

use super::context::{Ctx, Tally};
use super::stage1::{self, RoundInput};
use super::{stage2, stage3};
use crate::record::{Failure, QueryRecord, RoundRecord, Status};

fn add_ms(t: &mut BTreeMap<String, u64>, stage: &str, since: Instant) {
    *t.entry(stage.into()).or_default() += since.elapsed().as_millis() as u64;
}

/// Called as each stage of a round ends, with the round as it stands (`serve` streams these);
/// returns whether the round goes on to its next stage (`false`: the round ends there, as if
/// the later stages were not configured).
pub type Observer<'a> = &'a (dyn Fn(Stage, &RoundRecord) -> bool + Sync);

async fn run_round(
    ctx: &Ctx,
    input: &RoundInput,
    tally: &mut Tally,
    timings: &mut BTreeMap<String, u64>,
    observe: Option<Observer<'_>>,
) -> Result<RoundRecord, (Failure, RoundRecord)> {
    let mut record = RoundRecord {
        round: input.round,
        instruction: input.instruction.clone(),
        reference_description: input.reference_description.clone(),
        s1: None,
        s2: None,
        s3: None,
    };
    let t = Instant::now();
    let s1 = match stage1::run(ctx, input, tally).await {
        Ok(s) => s,
        Err(e) => return Err((e.context("stage 1"), record)),
    };
    add_ms(timings, "s1", t);
    ctx.tick(0);
    // What an observer sees is a copy; without one nothing is copied.
    let seen = |record: &RoundRecord, stage: Stage| {
        observe.is_none_or(|observe| {
            observe(
                stage,
                &RoundRecord {
                    s1: Some(s1.clone()),
                    ..record.clone()
                },
            )
        })
    };
    let mut go_on = seen(&record, Stage::S1);
    let stages = &ctx.params.stages;
    if go_on && !input.caption_only && stages.contains(&Stage::S2) {
        let t = Instant::now();
        record.s2 = Some(stage2::run(ctx, input, &s1, tally).await);
        add_ms(timings, "s2", t);
        ctx.tick(1);
        go_on = seen(&record, Stage::S2);
    }
    if go_on && !input.caption_only && stages.contains(&Stage::S3) {
        let t = Instant::now();
        let base = record
            .s2
            .as_ref()
            .map_or(&s1.ranking, |s| &s.ranking)
            .clone();
        record.s3 = Some(stage3::run(ctx, input, &base, tally).await);
        add_ms(timings, "s3", t);
        ctx.tick(2);
        let _ = seen(&record, Stage::S3);
    }
    record.s1 = Some(s1);
    Ok(record)
}

/// The record of a query whose task ended without one (it panicked: a bug, said as such).
pub fn lost(q: &Query, why: &str) -> QueryRecord {
    QueryRecord {
        id: q.id.clone(),
        status: Status::Failed,
        failure_kind: Some("internal".into()),
        error: Some(format!("internal error, please report it: {why}")),
        reference: q.reference.clone(),
        targets: q.targets.clone(),
        rounds: vec![],
        fallbacks: vec![],
        timings_ms: Default::default(),
        tokens: Default::default(),
        requests: 0,
        cached: 0,
        retries: 0,
    }
}

/// Runs every stage of one query and returns its record.
pub async fn run(ctx: &Ctx, q: &Query) -> QueryRecord {
    run_observed(ctx, q, None).await
}

/// `run`, telling `observe` as each stage of each round ends.
pub async fn run_observed(ctx: &Ctx, q: &Query, observe: Option<Observer<'_>>) -> QueryRecord {
    let mut tally = Tally::default();
    let mut timings = BTreeMap::new();
    let mut rounds = Vec::new();
    let mut error = None;
    let inputs: Vec<RoundInput> = match &q.instruction {
        Instruction::Text { text } => {
            let reference_description = match &q.reference {
                Some(r) => match ctx.caption(r) {
                    Some(c) => c.trim().to_string(),
                    None => {
                        error = Some(Failure::new(
                            "reference-missing",
                            format!(
                                "the reference image {r} is not in the image database (it failed to index?)"
                            ),
                        ));
                        String::new()
                    }
                },
                None => BLANK_REFERENCE.to_string(),
            };
            vec![RoundInput {
                round: 1,
                instruction: text.clone(),
                reference_description,
                reference: q.reference.clone(),
                subset: q.subset.clone(),
                caption_only: false,
                rank_target: None,
            }]
        }
        Instruction::Dialogue { caption, turns } => {
            // Rounds are built as they run: each needs the previous round's description.
            let mut running = caption.clone();
            if !ctx.parity() {
                let round0 = RoundInput {
                    round: 0,
                    instruction: caption.clone(),
                    reference_description: caption.clone(),
                    reference: None,
                    subset: None,
                    caption_only: true,
                    rank_target: q.targets.first().cloned(),
                };
                match run_round(ctx, &round0, &mut tally, &mut timings, observe).await {
                    Ok(r) => rounds.push(r),
                    Err((e, r)) => {
                        rounds.push(r);
                        error = Some(e);
                    }
                }
            }
            for (i, turn) in turns.iter().enumerate() {
                if error.is_some() {
                    break;
                }
                let input = RoundInput {
                    round: i + 1,
                    instruction: turn.clone(),
                    reference_description: running.clone(),
                    reference: None,
                    subset: None,
                    caption_only: false,
                    rank_target: q.targets.first().cloned(),
                };
                match run_round(ctx, &input, &mut tally, &mut timings, observe).await {
                    Ok(r) => {
                        if let Some(d) = r.s1.as_ref().and_then(|s| s.descriptions.first()) {
                            running = d.clone();
                        }
                        rounds.push(r);
                    }
                    Err((e, r)) => {
                        rounds.push(r);
                        error = Some(e);
                    }
                }
            }
            vec![]
        }
    };
    for input in inputs {
        if error.is_some() {
            break;
        }
        match run_round(ctx, &input, &mut tally, &mut timings, observe).await {
            Ok(r) => rounds.push(r),
            Err((e, r)) => {
                rounds.push(r);
                error = Some(e);
            }
        }
    }
    QueryRecord {
        id: q.id.clone(),
        status: if error.is_some() {
            Status::Failed
        } else {
            Status::Done
        },
        failure_kind: error.as_ref().map(|f| f.kind.clone()),
        error: error.map(|f| f.message),
        reference: q.reference.clone(),
        targets: q.targets.clone(),
        rounds,
        fallbacks: tally.fallbacks,
        timings_ms: timings,
        tokens: tally.tokens,
        requests: tally.requests,
        cached: tally.cached,
        retries: tally.retries,
    }
}
