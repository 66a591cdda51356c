//! The capacity model both scheduling benchmarks read from `benches/schedule.toml`
//! (`schedule.rs`, the re-implemented flow, and `shipped.rs`, the shipped binary): per simulated
//! server its slots and costs, and the CIRCO-shaped workload.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ServerModel {
    pub max_num_seqs: usize,
    /// Milliseconds per 1,000 prompt tokens.
    pub prefill_ms_per_1k: f64,
    /// Milliseconds per image in the prompt.
    pub image_ms: f64,
    /// Milliseconds per output token.
    pub decode_ms_per_token: f64,
    /// Output tokens of each answer.
    pub output_tokens: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Workload {
    pub queries: usize,
    /// Each value is one pipelined run.
    pub queries_in_flight: Vec<usize>,
    pub reasoner_prompt_tokens: usize,
    pub descriptions: usize,
    pub propositions: usize,
    pub top_k: usize,
    pub evaluator_turns: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub workload: Workload,
    pub reasoner: ServerModel,
    pub verifier: ServerModel,
    pub evaluator: ServerModel,
    pub embedder: ServerModel,
}
