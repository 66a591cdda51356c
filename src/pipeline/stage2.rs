//! Stage 2: the reasoner writes yes/no propositions about the target, the verifier answers each
//! for each of the top-K candidates (all K × |Q| requests at once; the verifier's limits pace
//! them), and the top K are stably re-sorted by how many answers match (or, in logprob mode, by
//! the summed probability of the expected answers). Positions after K keep their order.

use crate::config::{DatasetName, Grounding, RerankMode, Role};
use crate::datasets::ImageKey;
use crate::roles::reasoner::{self, Expected, Proposition, PropositionParse};
use crate::roles::verifier;

use super::ask::{Asked, ask};
use super::context::{Ctx, Tally};
use super::stage1::RoundInput;
use crate::record::{S1Record, S2Record, VerdictRecord};

/// What the verifier judges a candidate from.
#[derive(Clone)]
enum Evidence {
    Image(crate::images::EncodedImage),
    Caption(String),
}

fn unchanged(s1: &S1Record, answers: Vec<String>, why: String) -> S2Record {
    S2Record {
        propositions: vec![],
        answers,
        candidates: vec![],
        verdicts: vec![],
        scores: vec![],
        ranking: s1.ranking.clone(),
        skipped: Some(why),
    }
}

fn score_of(verdicts: &[VerdictRecord], props: &[Proposition], mode: RerankMode) -> f64 {
    verdicts
        .iter()
        .zip(props)
        .map(|(v, p)| match (mode, &p.expected, v.yes) {
            (_, Expected::Other(_), _) | (_, _, None) => 0.0,
            (RerankMode::Count, Expected::Yes, Some(yes)) => f64::from(u8::from(yes)),
            (RerankMode::Count, Expected::No, Some(yes)) => f64::from(u8::from(!yes)),
            (RerankMode::ProbabilitySum, e, Some(yes)) => {
                let p_yes = v.p_yes.unwrap_or(if yes { 1.0 } else { 0.0 });
                if *e == Expected::Yes {
                    p_yes
                } else {
                    1.0 - p_yes
                }
            }
        })
        .sum()
}

/// Runs stage 2 for one round.
pub async fn run(ctx: &Ctx, input: &RoundInput, s1: &S1Record, tally: &mut Tally) -> S2Record {
    let Some(verifier_client) = &ctx.verifier else {
        return unchanged(s1, vec![], "no verifier configured".into());
    };
    let how = PropositionParse {
        original: ctx.parity(),
        normalize: ctx.params.normalize_expected_answers,
    };
    let req = match reasoner::propositions_request(
        &ctx.prompts,
        ctx.family,
        &input.instruction,
        &s1.edits,
        ctx.reasoner.server().response_schema,
    ) {
        Ok(r) => r,
        Err(e) => return unchanged(s1, vec![], e.to_string()),
    };
    let parse = |text: &str| reasoner::parse_propositions(text, how);
    let (props, answers) = match ask(
        &ctx.reasoner,
        &ctx.prompts,
        ctx.family,
        req,
        ctx.params.reask,
        parse,
    )
    .await
    {
        Ok(Asked::Parsed(p, ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            (p, ex.answers)
        }
        Ok(Asked::Unusable(ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            let last = ex.failures.last();
            let reason = last.map_or("unusable answer".into(), |f| f.reason.clone());
            tally.fallback(
                "s2.propositions",
                input.round,
                reason.clone(),
                last.map_or("", |f| f.raw.as_str()),
                "kept the stage-1 order",
            );
            return unchanged(s1, ex.answers, format!("no usable propositions: {reason}"));
        }
        Err((e, ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            tally.fallback(
                "s2.propositions",
                input.round,
                e.to_string(),
                "",
                "kept the stage-1 order",
            );
            return unchanged(s1, ex.answers, format!("the reasoner failed: {e}"));
        }
    };
    let k = match ctx.dataset {
        DatasetName::CirrSubset => ctx.params.top_k.min(5),
        _ => ctx.params.top_k,
    }
    .min(s1.ranking.len());
    let candidates: Vec<ImageKey> = s1.ranking[..k].to_vec();
    let max_side = verifier_client.server().image_max_side;
    let by_caption = verifier_client.server().grounding == Grounding::Caption;
    let mode = ctx.params.verifier_mode;

    // Every (candidate, proposition) request at once; results keep their (c, q) position.
    let per_candidate = candidates.iter().map(|c| {
        let props = &props;
        async move {
            let image = if by_caption {
                ctx.db
                    .caption(c)
                    .map(|t| Evidence::Caption(t.to_string()))
                    .ok_or_else(|| format!("image {c} has no stored caption"))
            } else {
                ctx.image_for(c, max_side).await.map(Evidence::Image)
            };
            let per_question = props.iter().map(|p| {
                let image = image.clone();
                async move {
                    let image = match image {
                        Ok(i) => i,
                        Err(e) => {
                            return (None, VerdictRecord::failed(e));
                        }
                    };
                    let built = match image {
                        Evidence::Image(i) => {
                            verifier::request(&ctx.prompts, ctx.family, i, &p.question, mode)
                        }
                        Evidence::Caption(t) => verifier::request_from_caption(
                            &ctx.prompts,
                            ctx.family,
                            &t,
                            &p.question,
                            mode,
                        ),
                    };
                    let req = match built {
                        Ok(r) => r,
                        Err(e) => {
                            return (None, VerdictRecord::failed(e.to_string()));
                        }
                    };
                    match verifier_client.chat(&req).await {
                        Ok(reply) => {
                            let v = verifier::decide(&reply.value, mode);
                            let meta = (reply.meta, reply.value.usage);
                            (
                                Some(meta),
                                VerdictRecord {
                                    yes: Some(v.yes),
                                    p_yes: v.p_yes,
                                    raw: crate::roles::cut(&reply.value.content, 500),
                                    note: v.note,
                                },
                            )
                        }
                        // The original reads an empty answer as "no" (no "yes" in it).
                        Err(e)
                            if ctx.parity()
                                && matches!(
                                    e.kind,
                                    crate::serving::ErrorKind::EmptyContent { .. }
                                ) =>
                        {
                            (
                                None,
                                VerdictRecord {
                                    yes: Some(false),
                                    p_yes: None,
                                    raw: String::new(),
                                    note: Some("empty answer, read as no (parity)".into()),
                                },
                            )
                        }
                        Err(e) => (None, VerdictRecord::failed(e.to_string())),
                    }
                }
            });
            futures::future::join_all(per_question).await
        }
    });
    let results = futures::future::join_all(per_candidate).await;
    let mut verdicts = Vec::with_capacity(k);
    for row in results {
        let mut out = Vec::with_capacity(row.len());
        for (meta, v) in row {
            if let Some((meta, usage)) = meta {
                tally.call(Role::Verifier, &meta, usage);
            }
            out.push(v);
        }
        verdicts.push(out);
    }
    let failed = verdicts
        .iter()
        .flatten()
        .filter(|v| v.yes.is_none())
        .count();
    if failed > 0 {
        tally.fallback(
            "s2.verify",
            input.round,
            format!("{failed} verifier request(s) failed"),
            &verdicts
                .iter()
                .flatten()
                .find(|v| v.yes.is_none())
                .map_or(String::new(), |v| v.raw.clone()),
            "counted as not matching",
        );
    }
    let scores: Vec<f64> = verdicts
        .iter()
        .map(|v| score_of(v, &props, ctx.params.rerank))
        .collect();
    let mut order: Vec<usize> = (0..k).collect();
    // Stable: ties keep the stage-1 order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut ranking: Vec<ImageKey> = order.iter().map(|&i| candidates[i].clone()).collect();
    ranking.extend(s1.ranking[k..].iter().cloned());
    S2Record {
        propositions: props,
        answers,
        candidates,
        verdicts,
        scores,
        ranking,
        skipped: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(yes: bool, p: Option<f64>) -> VerdictRecord {
        VerdictRecord {
            yes: Some(yes),
            p_yes: p,
            raw: String::new(),
            note: None,
        }
    }

    #[test]
    fn scores_count_matches_and_never_match_unrecognised_answers() {
        let props = vec![
            Proposition {
                question: "a".into(),
                expected: Expected::Yes,
            },
            Proposition {
                question: "b".into(),
                expected: Expected::No,
            },
            Proposition {
                question: "c".into(),
                expected: Expected::Other("true".into()),
            },
        ];
        assert_eq!(
            score_of(
                &[v(true, None), v(false, None), v(true, None)],
                &props,
                RerankMode::Count
            ),
            2.0
        );
        assert_eq!(
            score_of(
                &[v(false, None), v(true, None), v(true, None)],
                &props,
                RerankMode::Count
            ),
            0.0
        );
        let p = score_of(
            &[v(true, Some(0.9)), v(false, Some(0.2)), v(true, Some(1.0))],
            &props,
            RerankMode::ProbabilitySum,
        );
        assert!((p - 1.7).abs() < 1e-9);
    }
}
