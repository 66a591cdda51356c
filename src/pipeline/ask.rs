//! Asking a role with re-asks: send a request, parse the answer, and while it is unusable send
//! the conversation back with the parse error, up to `reask` times; then give the caller the
//! failure so it can apply its documented fallback. Every answer's raw text is kept.

use crate::prompts::{Family, PromptSet};
use crate::roles::{ParseFailure, reasoner};
use crate::serving::{CallMeta, ChatRequest, RoleClient, ServingError, Usage};

/// The answers of one question, in order.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Exchange {
    /// Raw text of every answer received.
    pub answers: Vec<String>,
    /// Why each unusable answer was refused.
    pub failures: Vec<ParseFailure>,
    /// Tokens over all requests.
    pub usage: Usage,
    /// HTTP attempts over all requests (retries included).
    pub attempts: u32,
    /// Answers served from the request cache.
    pub cached: u32,
    /// Retries (attempts beyond the first, per request).
    pub retries: u32,
}

/// How asking ended.
#[derive(Debug)]
pub enum Asked<T> {
    /// A usable answer.
    Parsed(T, Exchange),
    /// Every answer was unusable; the caller falls back.
    Unusable(Exchange),
}

/// Sends `req`, parses with `parse`, and re-asks up to `reask` times on a parse failure. Serving
/// errors (after the client's own retries) end the exchange with `Err`.
pub async fn ask<T>(
    client: &RoleClient,
    prompts: &PromptSet,
    family: Family,
    req: ChatRequest,
    reask: u32,
    parse: impl Fn(&str) -> Result<T, ParseFailure>,
) -> Result<Asked<T>, (ServingError, Exchange)> {
    let mut exchange = Exchange::default();
    let mut current = req;
    for round in 0..=reask {
        let reply = match client.chat(&current).await {
            Ok(r) => r,
            Err(e) => {
                exchange.attempts += e.attempts;
                return Err((e, exchange));
            }
        };
        add(&mut exchange, &reply.meta, reply.value.usage);
        let text = reply.value.content;
        exchange.answers.push(text.clone());
        match parse(&text) {
            Ok(v) => return Ok(Asked::Parsed(v, exchange)),
            Err(failure) => {
                if round < reask {
                    match reasoner::reask_request(prompts, family, &current, &text, &failure) {
                        Ok(next) => current = next,
                        Err(e) => {
                            tracing::warn!("cannot build the re-ask request: {e}");
                            exchange.failures.push(failure);
                            break;
                        }
                    }
                }
                exchange.failures.push(failure);
            }
        }
    }
    Ok(Asked::Unusable(exchange))
}

fn add(ex: &mut Exchange, meta: &CallMeta, usage: Option<Usage>) {
    ex.attempts += meta.attempts;
    ex.cached += u32::from(meta.cached);
    ex.retries += meta.attempts.saturating_sub(1);
    if let (false, Some(u)) = (meta.cached, usage) {
        ex.usage.prompt_tokens += u.prompt_tokens;
        ex.usage.completion_tokens += u.completion_tokens;
    }
}
