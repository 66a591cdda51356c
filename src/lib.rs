//! imagescope: the ImageScope method (WWW 2025) as a client of OpenAI-compatible model servers.
//!
//! Data flows one way: dataset → queries → stages → rankings → metrics and reports. Model servers
//! (vLLM, TGI, infinity, any OpenAI-compatible API) do the inference; this crate builds requests,
//! schedules them within each server's limits, parses answers defensively and keeps records.
//! ARCHITECTURE.md is the map: modules, flow and invariants.
//!
//! Invariants:
//! - only `serving` speaks HTTP (clippy's `disallowed-methods` bans building clients elsewhere);
//! - API keys are read from environment variables by `serving` and never printed or stored.

pub mod chat;
pub mod cli;
pub mod compare;
pub mod config;
pub mod datasets;
pub mod doctor;
pub mod files;
pub mod identity;
pub mod images;
pub mod index;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod prompts;
pub mod ranking;
pub mod record;
pub mod report;
pub mod roles;
pub mod runs;
pub mod serve;
pub mod serving;
pub mod session;
