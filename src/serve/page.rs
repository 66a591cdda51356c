//! The page on `/`: one minijinja template (`page.html`, auto-escaped, in the binary) with its
//! plain JavaScript inline. With JavaScript the page streams `/api/search` and re-orders the
//! grid as each stage lands; without it, the form's `GET /?q=...` is answered here with the
//! final ranking.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::api::{self, Message, SearchRequest};

const PAGE: &str = include_str!("page.html");

/// The template environment (HTML auto-escaping by the template's name).
pub(crate) fn environment() -> anyhow::Result<minijinja::Environment<'static>> {
    let mut env = minijinja::Environment::new();
    env.add_template("page.html", PAGE)?;
    Ok(env)
}

/// The page's query string.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    /// A search to answer without JavaScript.
    #[serde(default)]
    q: Option<String>,
    /// The token (checked by the middleware, which keeps it in a cookie for the page's calls).
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "read by the token check, accepted here so the page parses it"
    )]
    token: Option<String>,
}

/// `GET /`.
pub(crate) async fn index(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let mut answer = None;
    let mut error = None;
    if let Some(q) = query.q.as_deref().filter(|q| !q.trim().is_empty()) {
        let req = SearchRequest {
            text: Some(q.to_string()),
            ..SearchRequest::default()
        };
        let ctx = &state.session.ctx;
        match api::plan(&req, &ctx.params.stages, state.top, |k| {
            state.can_reference(k)
        }) {
            Err(why) => error = Some(why),
            Ok(plan) => match api::admit(&state) {
                Err(_) => {
                    error = Some(
                        "the server is busy with other searches; try again in a moment".into(),
                    );
                }
                Ok(admission) => {
                    let (mut rx, _guard) = api::start(state.clone(), plan, admission, false, None);
                    while let Some(m) = rx.recv().await {
                        if let Message::Done(a) = m {
                            error = a.error.as_ref().map(|p| p.message.clone());
                            answer = Some(a);
                        }
                    }
                }
            },
        }
    }
    let stages = state.stage_names();
    let rendered = state.pages.get_template("page.html").and_then(|t| {
        t.render(minijinja::context! {
            q => query.q.clone().unwrap_or_default(),
            images => state.session.ctx.db.len(),
            stages => stages,
            folder => state.session.folder.display().to_string(),
            results => minijinja::Value::from(minijinja::value::Serde(answer.as_ref().map(|a| a.results.clone()).unwrap_or_default())),
            error => error,
            uploads => state.session.captioner.is_ok(),
        })
    });
    match rendered {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("page template error (a bug: please report it): {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_shows() {
        let env = environment().unwrap_or_else(|e| panic!("{e}"));
        let html = env
            .get_template("page.html")
            .and_then(|t| {
                t.render(minijinja::context! {
                    q => "<script>alert(1)</script>",
                    images => 3,
                    stages => vec!["s1"],
                    folder => "/p",
                    results => minijinja::Value::from(minijinja::value::Serde(Vec::<api::ResultRow>::new())),
                    error => Option::<String>::None,
                })
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!html.contains("<script>alert(1)"));
        assert!(html.contains("&lt;script&gt;alert(1)"));
    }
}
