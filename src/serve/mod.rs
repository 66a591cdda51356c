//! `imagescope serve`: one process that opens an indexed folder (its image database, the model
//! servers' clients and the request cache) once and answers a web page and an HTTP API:
//!
//! - `POST /api/search` runs one query (text; a gallery image plus an edit; or a dialogue) and
//!   answers as Server-Sent Events, one `stage` event as each stage ends (S1's ranking, then S2's
//!   re-ranking with the verdicts, then S3's promotion), then `done`, or `error`; with
//!   `"stream": false` (or without `Accept: text/event-stream`) one JSON answer at the end.
//! - `GET /api/images/{key}` (a thumbnail, made once and kept on disk) and `/api/images/{key}/full`:
//!   only keys of the database are served; nothing from a request names a file.
//! - `GET /api/runs` lists the run folders; `/runs/...` serves their report pages.
//! - `GET /openapi.json` (from the types, by utoipa) and `GET /health`.
//! - `GET /` the page (`page.html`, rendered by minijinja; plain JavaScript, every asset in the
//!   binary). Without JavaScript, `/?q=...` answers with the final ranking.
//!
//! Safe by default: it binds 127.0.0.1; another address needs a token (`--token` or
//! `IMAGESCOPE_SERVE_TOKEN`), checked on every call but `/health`; request bodies are capped;
//! searches at once are bounded by the experiment's `queries_in_flight` (model requests by each
//! server's own limits, as in `run`); a search whose client goes away is cancelled.

mod api;
mod files;
mod page;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use utoipa::OpenApi as _;

use crate::session::{SearchTarget, Session};

/// The environment variable a token may come from instead of `--token`.
pub const TOKEN_ENV: &str = "IMAGESCOPE_SERVE_TOKEN";

/// Request bodies above this are refused (413): a search is a few lines of text.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `imagescope serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// What to search: an experiment (its dataset folder, captions and database) or a servers
    /// file with `--folder`.
    #[command(flatten)]
    pub target: SearchTarget,
    /// Address to bind. Anything but a loopback address needs a token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The token every API call must carry (`Authorization: Bearer TOKEN`, or `?token=TOKEN`).
    /// Prefer the environment variable: a command line is visible to other users.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) session: Session,
    /// Searches allowed at once (the experiment's `queries_in_flight`).
    pub(crate) searches: Arc<tokio::sync::Semaphore>,
    /// Searches running now (reported by `/health`; the disconnect test watches it fall).
    pub(crate) running: Arc<AtomicUsize>,
    /// The token's hash, when one is required.
    token: Option<blake3::Hash>,
    /// Thumbnails, made once.
    pub(crate) thumbs: PathBuf,
    /// The page's template environment.
    pub(crate) pages: minijinja::Environment<'static>,
}

/// Why `serve` would not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback address without a token.
    #[error(
        "binding {0} (not a loopback address) lets other machines search your photos and spend your model servers' time: set a token with {TOKEN_ENV}=... (or --token), or bind 127.0.0.1"
    )]
    NeedsToken(IpAddr),
    /// An empty token.
    #[error("the token is empty: set {TOKEN_ENV} to a long random string")]
    EmptyToken,
}

/// Checks the address/token rule; returns the token's hash when one is set.
pub fn token_rule(host: IpAddr, token: Option<&str>) -> Result<Option<blake3::Hash>, ServeError> {
    match token {
        Some(t) if t.trim().is_empty() => Err(ServeError::EmptyToken),
        Some(t) => Ok(Some(blake3::hash(t.as_bytes()))),
        None if host.is_loopback() => Ok(None),
        None => Err(ServeError::NeedsToken(host)),
    }
}

/// Opens the session and builds the app (the tests serve it on a port of their own).
pub async fn app(args: &ServeArgs) -> anyhow::Result<Router> {
    let token = token_rule(args.host, args.token.as_deref())?;
    let session = crate::session::open(&args.target).await?;
    let thumbs = session.runs.join("serve").join("thumbs");
    std::fs::create_dir_all(&thumbs).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the thumbnails folder {}: {e}",
            thumbs.display()
        )
    })?;
    let searches = Arc::new(tokio::sync::Semaphore::new(
        session.ctx.params.queries_in_flight.max(1),
    ));
    let state = Arc::new(AppState {
        session,
        searches,
        running: Arc::new(AtomicUsize::new(0)),
        token,
        thumbs,
        pages: page::environment()?,
    });
    Ok(router(state))
}

fn router(state: Arc<AppState>) -> Router {
    let guarded = Router::new()
        .route("/", get(page::index))
        .route("/api/search", post(api::search))
        .route("/api/images/{key}", get(files::thumbnail))
        .route("/api/images/{key}/full", get(files::full))
        .route("/api/runs", get(files::runs))
        .route("/runs/{*path}", get(files::run_page))
        .route("/openapi.json", get(openapi))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Runs `serve` until Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let app = app(&args).await?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e} (another --port?)"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "serving");
    eprintln!("imagescope serve: http://{bound}/ (Ctrl-C stops)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The token, from `Authorization: Bearer` or `?token=`.
fn presented(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    bearer.or_else(|| {
        url::form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    })
}

async fn require_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(want) = state.token {
        let got = presented(req.headers(), req.uri().query());
        // `blake3::Hash` compares in constant time.
        if got.is_none_or(|t| blake3::hash(t.as_bytes()) != want) {
            return api::problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server needs its token: send `Authorization: Bearer TOKEN` (or open the page as /?token=TOKEN)",
            );
        }
    }
    next.run(req).await
}

/// `/health`: up, and what it serves.
#[utoipa::path(get, path = "/health", responses((status = 200, body = api::Health)))]
async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(api::Health {
        status: "ok".into(),
        images: state.session.ctx.db.len(),
        stages: state
            .session
            .ctx
            .params
            .stages
            .iter()
            .map(|s| s.to_string())
            .collect(),
        searches_running: state.running.load(Ordering::SeqCst),
    })
}

/// The API's description.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "imagescope serve",
        description = "Language-guided image retrieval (ImageScope) over an indexed folder: search, images, runs."
    ),
    paths(api::search, files::thumbnail, files::full, files::runs, health),
    components(schemas(
        api::SearchRequest,
        api::StageEvent,
        api::ResultRow,
        api::Verdict,
        api::SearchAnswer,
        api::Problem,
        api::Health,
        files::RunEntry
    ))
)]
pub struct ApiDoc;

async fn openapi() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_needed_off_loopback_only() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let any: IpAddr = "0.0.0.0".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert!(matches!(token_rule(lo, None), Ok(None)));
        assert!(matches!(
            token_rule(any, None),
            Err(ServeError::NeedsToken(_))
        ));
        assert!(matches!(
            token_rule(any, Some(" ")),
            Err(ServeError::EmptyToken)
        ));
        assert!(matches!(token_rule(any, Some("s3cret")), Ok(Some(_))));
        assert!(matches!(
            token_rule("::1".parse().unwrap_or(lo), None),
            Ok(None)
        ));
    }

    #[test]
    fn the_token_is_read_from_the_header_or_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h, Some("q=x&token=abc")).as_deref(), Some("abc"));
        h.insert(
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(presented(&h, None).as_deref(), Some("xyz"));
        assert_eq!(presented(&HeaderMap::new(), Some("q=x")), None);
    }
}
