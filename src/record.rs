//! What the pipeline records per query: one JSON line in the run's journal with everything
//! method.md §9 lists (descriptions, rankings, verifier answers, evaluator decisions) plus timings,
//! tokens, request counts and every fallback with the raw text that caused it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Stage;
use crate::datasets::ImageKey;
use crate::metrics::predictions::{Prediction, Predictions};
use crate::roles::reasoner::{Edit, Proposition};
use crate::serving::Usage;

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every requested stage ran (possibly with fallbacks).
    Done,
    /// A server failed after its retries; scored as a miss.
    Failed,
}

/// A documented fallback taken, with the answer that caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    /// Stage and step (`s1.reason`, `s2.propositions`, ...).
    pub step: String,
    /// Dialogue round (0 for single-turn queries).
    pub round: usize,
    /// What was wrong.
    pub reason: String,
    /// The raw answer (cut).
    pub raw: String,
    /// What was done instead.
    pub action: String,
}

/// Stage 1 of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct S1Record {
    /// Typed edits.
    pub edits: Vec<Edit>,
    /// Target descriptions searched with.
    pub descriptions: Vec<String>,
    /// Raw reasoner answers (more than one after re-asks).
    pub answers: Vec<String>,
    /// Top of the ranking.
    pub ranking: Vec<ImageKey>,
    /// Fused scores of `ranking`.
    pub scores: Vec<f32>,
    /// Dialogues: the rank (from 1) of the query's target in the whole gallery after this stage
    /// 1, also when it is beyond `ranking`; BRI is measured on it. Stages 2 and 3 reorder only
    /// the top K, so a target beyond the kept ranking keeps this rank after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gallery_rank: Option<usize>,
}

/// One verifier answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// Yes / no; `None` when the request failed.
    pub yes: Option<bool>,
    /// P(yes) in logprob mode.
    pub p_yes: Option<f64>,
    /// Raw answer, or the error.
    pub raw: String,
    /// A note when the mode's rule could not be applied as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl VerdictRecord {
    /// A request that produced no verdict, with the reason.
    pub fn failed(reason: impl Into<String>) -> Self {
        VerdictRecord {
            yes: None,
            p_yes: None,
            raw: reason.into(),
            note: None,
        }
    }
}

/// Stage 2 of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct S2Record {
    /// Propositions verified (empty when stage 2 was skipped).
    pub propositions: Vec<Proposition>,
    /// Raw reasoner answers.
    pub answers: Vec<String>,
    /// The verified candidates (the top K of stage 1).
    pub candidates: Vec<ImageKey>,
    /// `verdicts[c][q]`: candidate c, proposition q.
    pub verdicts: Vec<Vec<VerdictRecord>>,
    /// Stage-2 score per candidate.
    pub scores: Vec<f64>,
    /// The re-ranked ranking.
    pub ranking: Vec<ImageKey>,
    /// Why stage 2 left the ranking as it was, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// One evaluator decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Turn (rank position evaluated, from 0).
    pub turn: usize,
    /// The candidate.
    pub candidate: ImageKey,
    /// Accepted; `None` when the request failed.
    pub accepted: Option<bool>,
    /// The explanation, or the error.
    pub explanation: String,
    /// Raw answer.
    pub raw: String,
    /// A note when the decision marker was not found as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Stage 3 of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct S3Record {
    /// Decisions in order.
    pub decisions: Vec<DecisionRecord>,
    /// The turn whose candidate was moved to rank 1.
    pub accepted: Option<usize>,
    /// Final ranking.
    pub ranking: Vec<ImageKey>,
}

/// One round of a query (single-turn queries have one, round 1; dialogues one per turn, and
/// round 0 for the caption alone outside the parity profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number.
    pub round: usize,
    /// The instruction of this round.
    pub instruction: String,
    /// The reference description reasoned from.
    pub reference_description: String,
    /// Stage 1.
    pub s1: Option<S1Record>,
    /// Stage 2.
    pub s2: Option<S2Record>,
    /// Stage 3.
    pub s3: Option<S3Record>,
}

impl RoundRecord {
    /// The ranking after `stage` (a stage not run keeps the previous stage's ranking).
    pub fn ranking_after(&self, stage: Stage) -> Option<&[ImageKey]> {
        let s1 = self.s1.as_ref().map(|s| s.ranking.as_slice());
        let s2 = self.s2.as_ref().map(|s| s.ranking.as_slice()).or(s1);
        let s3 = self.s3.as_ref().map(|s| s.ranking.as_slice()).or(s2);
        match stage {
            Stage::S1 => s1,
            Stage::S2 => s2,
            Stage::S3 => s3,
        }
    }
}

/// Everything about one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// Query id.
    pub id: String,
    /// Outcome.
    pub status: Status,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kind of failure, for counting: a serving error's label (`context-length`, `connect`,
    /// `timeout`, `http-500`, `media-load`, `empty-content`, ...) or the pipeline's own
    /// (`prompt`, `embedding`, `search`, `reference-missing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<String>,
    /// Reference image.
    pub reference: Option<ImageKey>,
    /// Ground truth.
    pub targets: Vec<ImageKey>,
    /// Rounds.
    pub rounds: Vec<RoundRecord>,
    /// Fallbacks taken.
    pub fallbacks: Vec<Fallback>,
    /// Milliseconds per stage.
    pub timings_ms: BTreeMap<String, u64>,
    /// Tokens per role.
    pub tokens: BTreeMap<String, Usage>,
    /// Model requests made (HTTP attempts, retries included).
    pub requests: u32,
    /// Answers served from the request cache.
    pub cached: u32,
    /// Retries among the requests.
    #[serde(default)]
    pub retries: u32,
}

impl QueryRecord {
    /// The final round's ranking after `stage`.
    pub fn ranking_after(&self, stage: Stage) -> Option<&[ImageKey]> {
        self.rounds.last().and_then(|r| r.ranking_after(stage))
    }
}

/// The predictions of every query after `stage`.
pub fn predictions<'a>(
    records: impl IntoIterator<Item = &'a QueryRecord>,
    stage: Stage,
    dialogue: bool,
) -> Predictions {
    let mut p = Predictions::default();
    for r in records.into_iter().filter(|r| r.status == Status::Done) {
        if dialogue {
            let ranks: std::collections::BTreeMap<usize, usize> = r
                .rounds
                .iter()
                .filter_map(|round| Some((round.round, round.s1.as_ref()?.gallery_rank?)))
                .collect();
            if !ranks.is_empty() {
                p.gallery_ranks.insert(r.id.clone(), ranks);
            }
        }
        let pred = if dialogue {
            Prediction::Rounds(
                r.rounds
                    .iter()
                    .filter_map(|round| {
                        round
                            .ranking_after(stage)
                            .map(|k| (round.round, k.to_vec()))
                    })
                    .collect(),
            )
        } else {
            match r.ranking_after(stage) {
                Some(k) => Prediction::Ranking(k.to_vec()),
                None => continue,
            }
        };
        p.entries.insert(r.id.clone(), pred);
    }
    p
}

/// Why a query stopped: a kind to count failures by, and the message with the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Short label (see `QueryRecord::failure_kind`).
    pub kind: String,
    /// What happened, with role, endpoint and the server's words where there were any.
    pub message: String,
}

impl Failure {
    /// A failure of the pipeline itself.
    pub fn new(kind: &str, message: impl std::fmt::Display) -> Self {
        Failure {
            kind: kind.into(),
            message: message.to_string(),
        }
    }

    /// A model server's failure, labelled by its typed kind.
    pub fn serving(e: &crate::serving::ServingError) -> Self {
        Failure {
            kind: e.kind.label(),
            message: e.to_string(),
        }
    }

    /// The same failure with a prefix saying where it happened.
    pub fn context(self, at: &str) -> Self {
        Failure {
            kind: self.kind,
            message: format!("{at}: {}", self.message),
        }
    }
}
