//! The retrieval pipeline: each query flows through its stages as soon as its inputs are ready,
//! with no barrier between stages, so every model server is busy at once.
//!
//! - `ask`: a request, its parse and the re-asks;
//! - `stage1`, `stage2`, `stage3`: the method's stages, written once for every task;
//! - `query`: one query (or dialogue) through its rounds and stages;
//! - `context`: shared context and per-query counters;
//! - `prepare`, `run`, `finish`: `imagescope run` in three parts: get ready (queries, image
//!   database, clients, run folder), drive the queries (the loop), score from the journal.

pub mod ask;
pub mod context;
pub mod finish;
pub mod prepare;
pub mod query;
pub mod run;
pub mod stage1;
pub mod stage2;
pub mod stage3;
