//! Stage 2: the reasoner writes yes/no propositions about the target, the verifier answers each
//! for each of the top-K candidates (`CANDIDATES_AT_ONCE` candidates at a time per query, all of a
//! candidate's first question alone, then the rest at once, so they meet the image's cached prefix;
//! the verifier's limits pace them), and the top K are stably
//! re-sorted by how many answers match (or, in logprob mode, by
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

/// Candidates of one query whose images are loaded at once. Each candidate's questions go out
/// together after its first, so this many candidates keep `CANDIDATES_AT_ONCE` × |questions| requests queued per
/// query (plenty to keep a verifier busy with 128 queries in flight) while a query holds at most
/// this many loaded images instead of all K.
pub const CANDIDATES_AT_ONCE: usize = 4;

/// Stage 2a: the reasoner's propositions and its raw answers, or the record of a stage 2 that
/// leaves the stage-1 order (with the fallback noted).
async fn propositions(
    ctx: &Ctx,
    input: &RoundInput,
    s1: &S1Record,
    tally: &mut Tally,
) -> Result<(Vec<Proposition>, Vec<String>), S2Record> {
    let how = PropositionParse {
        original: ctx.parity(),
        normalize: ctx.params.normalize_expected_answers,
    };
    let req = reasoner::propositions_request(
        &ctx.prompts,
        ctx.family,
        &input.instruction,
        &s1.edits,
        ctx.reasoner.server().response_schema,
    )
    .map_err(|e| unchanged(s1, vec![], e.to_string()))?;
    let parse = |text: &str| reasoner::parse_propositions(text, how);
    let asked = ask(
        &ctx.reasoner,
        &ctx.prompts,
        ctx.family,
        req,
        ctx.params.reask,
        parse,
    )
    .await;
    let keep = "kept the stage-1 order";
    match asked {
        Ok(Asked::Parsed(p, ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            Ok((p, ex.answers))
        }
        Ok(Asked::Unusable(ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            let last = ex.failures.last();
            let reason = last.map_or("unusable answer".into(), |f| f.reason.clone());
            let raw = last.map_or("", |f| f.raw.as_str());
            tally.fallback("s2.propositions", input.round, reason.clone(), raw, keep);
            Err(unchanged(
                s1,
                ex.answers,
                format!("no usable propositions: {reason}"),
            ))
        }
        Err((e, ex)) => {
            tally.exchange(Role::Reasoner, &ex);
            tally.fallback("s2.propositions", input.round, e.to_string(), "", keep);
            Err(unchanged(
                s1,
                ex.answers,
                format!("the reasoner failed: {e}"),
            ))
        }
    }
}

/// The note of a verdict the parity profile read from an empty answer (the original's rule:
/// no "yes" in it). It decides the ranking as a "no" does, and is counted as a fallback, so a
/// record shows where a server's non-answer, not the model, chose the order.
const EMPTY_READ_AS_NO: &str = "empty answer, read as no (parity)";

type Verdict = (
    Option<(crate::serving::CallMeta, Option<crate::serving::Usage>)>,
    VerdictRecord,
);

/// One verifier request: a question about one candidate's evidence.
async fn verify_one(
    ctx: &Ctx,
    client: &crate::serving::RoleClient,
    evidence: &Evidence,
    question: &str,
) -> Verdict {
    let mode = ctx.params.verifier_mode;
    let built = match evidence {
        Evidence::Image(i) => {
            verifier::request(&ctx.prompts, ctx.family, i.clone(), question, mode)
        }
        Evidence::Caption(t) => {
            verifier::request_from_caption(&ctx.prompts, ctx.family, t, question, mode)
        }
    };
    let req = match built {
        Ok(r) => r,
        Err(e) => return (None, VerdictRecord::failed(e.to_string())),
    };
    match client.chat(&req).await {
        Ok(reply) => {
            let v = verifier::decide(&reply.value, mode);
            let verdict = VerdictRecord {
                yes: Some(v.yes),
                p_yes: v.p_yes,
                raw: crate::roles::cut(&reply.value.content, 500),
                note: v.note,
            };
            (Some((reply.meta, reply.value.usage)), verdict)
        }
        // The original reads an empty answer as "no" (no "yes" in it).
        Err(e)
            if ctx.parity() && matches!(e.kind, crate::serving::ErrorKind::EmptyContent { .. }) =>
        {
            let verdict = VerdictRecord {
                yes: Some(false),
                p_yes: None,
                raw: String::new(),
                note: Some(EMPTY_READ_AS_NO.into()),
            };
            (None, verdict)
        }
        Err(e) => (None, VerdictRecord::failed(e.to_string())),
    }
}

/// Stage 2b: every question about every candidate; `verdicts[c][q]` keeps each answer at its
/// (candidate, question) position whatever order they finish in.
async fn verify_all(
    ctx: &Ctx,
    client: &crate::serving::RoleClient,
    candidates: &[ImageKey],
    props: &[Proposition],
) -> Vec<Vec<Verdict>> {
    use futures::StreamExt as _;
    let max_side = client.server().image_max_side;
    let by_caption = client.server().grounding == Grounding::Caption;
    // Owned keys: a closure over `&ImageKey` would not be `Send` for every lifetime, which a
    // query task (`tokio::spawn`) needs.
    futures::stream::iter(candidates.iter().cloned())
        .map(|c: ImageKey| async move {
            // Held until this candidate's questions are answered (no permit needed for captions).
            let _permit = if by_caption {
                None
            } else {
                ctx.image_permit(crate::config::Role::Verifier, 1).await
            };
            let evidence = if by_caption {
                ctx.db
                    .caption(&c)
                    .map(|t| Evidence::Caption(t.to_string()))
                    .ok_or_else(|| format!("image {c} has no stored caption"))
            } else {
                ctx.image_for(&c, max_side).await.map(Evidence::Image)
            };
            let evidence = match evidence {
                Ok(e) => e,
                Err(e) => {
                    return props
                        .iter()
                        .map(|_| (None, VerdictRecord::failed(e.clone())))
                        .collect();
                }
            };
            // About an image, the first question goes alone and the rest together once it is
            // answered: by then the server has the image's tokens in its prefix cache, so the
            // others reuse them instead of all computing them side by side (a server caches a
            // prefix only once it is computed). BENCHMARKS.md, "Model work".
            let mut verdicts = Vec::with_capacity(props.len());
            let mut rest = props.iter();
            if matches!(evidence, Evidence::Image(_))
                && props.len() > 1
                && let Some(first) = rest.next()
            {
                verdicts.push(verify_one(ctx, client, &evidence, &first.question).await);
            }
            let asks = rest.map(|p| verify_one(ctx, client, &evidence, &p.question));
            verdicts.extend(futures::future::join_all(asks).await);
            verdicts
        })
        .buffered(CANDIDATES_AT_ONCE)
        .collect()
        .await
}

/// Runs stage 2 for one round.
pub async fn run(ctx: &Ctx, input: &RoundInput, s1: &S1Record, tally: &mut Tally) -> S2Record {
    let Some(client) = &ctx.verifier else {
        return unchanged(s1, vec![], "no verifier configured".into());
    };
    let (props, answers) = match propositions(ctx, input, s1, tally).await {
        Ok(p) => p,
        Err(record) => return record,
    };
    let k = match ctx.dataset {
        DatasetName::CirrSubset => ctx.params.top_k.min(5),
        _ => ctx.params.top_k,
    }
    .min(s1.ranking.len());
    let candidates: Vec<ImageKey> = s1.ranking[..k].to_vec();
    let mut verdicts = Vec::with_capacity(k);
    for row in verify_all(ctx, client, &candidates, &props).await {
        let mut out = Vec::with_capacity(row.len());
        for (meta, v) in row {
            if let Some((meta, usage)) = meta {
                tally.call(Role::Verifier, &meta, usage);
            }
            out.push(v);
        }
        verdicts.push(out);
    }
    let first_failed = verdicts.iter().flatten().find(|v| v.yes.is_none());
    if let Some(example) = first_failed {
        let failed = verdicts
            .iter()
            .flatten()
            .filter(|v| v.yes.is_none())
            .count();
        tally.fallback(
            "s2.verify",
            input.round,
            format!("{failed} verifier request(s) failed"),
            &example.raw.clone(),
            "counted as not matching",
        );
    }
    let empty = verdicts
        .iter()
        .flatten()
        .filter(|v| v.note.as_deref() == Some(EMPTY_READ_AS_NO))
        .count();
    if empty > 0 {
        tally.fallback(
            "s2.verify",
            input.round,
            format!("{empty} verifier answer(s) empty after the role's retries"),
            "",
            "read as no, as the original does (parity)",
        );
    }
    // The logprob rule decided by the first word: those verdicts come from the answers' words,
    // not the probabilities it was configured to read (a server that ignores `logprobs`, or no
    // yes/no token among the first token's alternatives), whichever the re-ranking.
    if ctx.params.verifier_mode == crate::config::VerifierMode::Logprob {
        let unscored: Vec<&VerdictRecord> = verdicts
            .iter()
            .flatten()
            .filter(|v| {
                v.yes.is_some() && v.p_yes.is_none() && v.note.as_deref() != Some(EMPTY_READ_AS_NO)
            })
            .collect();
        if let Some(example) = unscored.first() {
            tally.fallback(
                "s2.verify",
                input.round,
                format!(
                    "{} verifier answer(s) without a yes/no probability: {}",
                    unscored.len(),
                    example.note.as_deref().unwrap_or("no log-probabilities")
                ),
                &example.raw.clone(),
                match ctx.params.rerank {
                    crate::config::RerankMode::ProbabilitySum => {
                        "decided by the first word (probability 1 or 0 in the sum)"
                    }
                    crate::config::RerankMode::Count => "decided by the first word",
                },
            );
        }
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
