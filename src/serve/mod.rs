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
mod uploads;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
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

pub use uploads::{MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS};

/// Searches running or waiting, as a multiple of those allowed at once, before new ones are
/// told to come back later (503).
pub const QUEUE_FACTOR: usize = 4;

/// The cookie the page's token is kept in once `/?token=` has been checked: its name carries the
/// token's hash, because browsers share cookies across the ports of a host and two servers there
/// must not overwrite (or be sent) each other's.
fn token_cookie(want: &blake3::Hash) -> String {
    format!("imagescope_token_{}", &want.to_hex()[..8])
}

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
    /// Disk kept for uploaded photos and their captions (MiB): past it, the photos uploaded
    /// longest ago are removed (a search naming one is told to upload it again); the one being
    /// answered and any a running search uses are kept.
    #[arg(long, default_value_t = 2048)]
    pub uploads_max_mib: u64,
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) session: Session,
    /// Searches allowed at once (the experiment's `queries_in_flight`).
    pub(crate) searches: Arc<tokio::sync::Semaphore>,
    /// Searches running now (reported by `/health`; the disconnect test watches it fall).
    pub(crate) running: Arc<AtomicUsize>,
    /// Searches started and not finished, running or waiting for their turn.
    pub(crate) admitted: Arc<AtomicUsize>,
    /// Results per event unless a search says (`--top`).
    pub(crate) top: usize,
    /// The token's hash, when one is required.
    token: Option<blake3::Hash>,
    /// Thumbnails, made once.
    pub(crate) thumbs: PathBuf,
    /// Uploaded photos and their captions.
    pub(crate) uploads: PathBuf,
    /// The disk those may take (`--uploads-max-mib`).
    pub(crate) uploads_max_bytes: u64,
    /// Uploads searches are using now, by key, with how many (`uploads::UploadHold`).
    pub(crate) uploads_held: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Held while an upload is checked and described (one at a time).
    pub(crate) upload_lock: tokio::sync::Mutex<()>,
    /// The database's photos by the blake3 hash of their bytes (`index::keys_by_content`): an
    /// upload of one of them is that photo.
    pub(crate) gallery_by_content: std::collections::HashMap<String, crate::datasets::ImageKey>,
    /// The page's template environment.
    pub(crate) pages: minijinja::Environment<'static>,
    /// Each gallery image's `file://` URL → its API URL, made at the first report served.
    pub(crate) report_urls: std::sync::OnceLock<std::collections::HashMap<String, String>>,
}

impl AppState {
    /// The configured stages' names (`s1`...), for `/health` and the page.
    pub(crate) fn stage_names(&self) -> Vec<String> {
        self.session
            .ctx
            .params
            .stages
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Whether a search may name `key` as its reference: a photo of the gallery's database, or
    /// one uploaded.
    pub(crate) fn can_reference(&self, key: &crate::datasets::ImageKey) -> bool {
        self.session.ctx.db.contains(key) || self.upload_file(key).is_some()
    }

    /// The file of the upload `key`, if it is one this session knows and its file is still
    /// there (another `serve` over the same runs folder may have removed it).
    pub(crate) fn upload_file(&self, key: &crate::datasets::ImageKey) -> Option<PathBuf> {
        self.session
            .ctx
            .outside_image(key)
            .map(|o| o.path)
            .filter(|p| p.is_file())
    }
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
    let session = crate::session::open_for(&args.target, true).await?;
    if let Err(why) = &session.captioner {
        tracing::info!(%why, "no captioner: uploaded photos cannot be searched from");
    }
    let thumbs = session.runs.join("serve").join("thumbs");
    let uploads = session.runs.join("serve").join("uploads");
    for dir in [&thumbs, &uploads] {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create the folder {}: {e}", dir.display()))?;
    }
    let gallery_by_content = match crate::index::keys_by_content(session.ctx.db.dir()) {
        Ok(by) => by
            .into_iter()
            .filter(|(_, key)| session.ctx.db.contains(key))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "the gallery's photo hashes could not be read: an upload of a gallery photo is described as a new photo");
            Default::default()
        }
    };
    let searches = Arc::new(tokio::sync::Semaphore::new(
        session.ctx.params.queries_in_flight.max(1),
    ));
    let state = Arc::new(AppState {
        session,
        searches,
        running: Arc::new(AtomicUsize::new(0)),
        admitted: Arc::new(AtomicUsize::new(0)),
        top: args.target.top,
        token,
        thumbs,
        uploads: uploads.clone(),
        uploads_max_bytes: args.uploads_max_mib.saturating_mul(1 << 20),
        uploads_held: Default::default(),
        upload_lock: tokio::sync::Mutex::new(()),
        gallery_by_content,
        pages: page::environment()?,
        report_urls: std::sync::OnceLock::new(),
    });
    uploads::keep_within_allowance(&state, None);
    let restored = uploads::restore(&state, &uploads);
    if restored > 0 {
        tracing::info!(restored, "uploaded photos kept from earlier");
    }
    Ok(router(state))
}

fn router(state: Arc<AppState>) -> Router {
    let guarded = Router::new()
        .route("/", get(page::index))
        .route("/api/search", post(api::search))
        .route(
            "/api/uploads",
            post(uploads::upload).layer(DefaultBodyLimit::max(uploads::MAX_UPLOAD_BYTES)),
        )
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
        .layer(axum::middleware::map_response(frame_guard))
        .fallback(|| async {
            api::problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such page: / is the page, /openapi.json lists the API",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `app` on `listener` until `stop` resolves. Every connection has Nagle's algorithm off:
/// an SSE stream is many small writes, each of which would otherwise wait for the client's
/// delayed ACK (measured: +29 ms a search, `benches/serve.rs`).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
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
    serve_on(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
    Cookie,
}

/// The token, from `Authorization: Bearer`, `?token=` or the page's cookie `cookie`.
fn presented(headers: &HeaderMap, query: Option<&str>, cookie: &str) -> Option<(String, Source)> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| (t.to_string(), Source::Header));
    let from_query = || {
        url::form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| (v.into_owned(), Source::Query))
    };
    let from_cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(cookie)?.strip_prefix('='))
            // The value is percent-encoded when set (a token may hold ';' or any character).
            .and_then(|t| {
                url::form_urlencoded::parse(format!("t={t}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            })
            .map(|t| (t, Source::Cookie))
    };
    bearer.or_else(from_query).or_else(from_cookie)
}

/// Whether a `Host` header names this machine's loopback (any port).
fn loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn require_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // A page of another site may send the browser here (a link, an <img>): it is refused before
    // anything runs. Browsers say so in Sec-Fetch-Site.
    let refused = {
        // In a block of its own: nothing borrowed from `req` may live across an await.
        let fetch = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let cross_site = matches!(fetch("sec-fetch-site").as_str(), "cross-site" | "same-site");
        // A link from elsewhere to the bare page is fine: it runs nothing (in a frame it is not:
        // see `frame_guard`).
        let bare_page = req.method() == axum::http::Method::GET
            && req.uri().path() == "/"
            && req.uri().query().is_none()
            && fetch("sec-fetch-mode") == "navigate"
            && fetch("sec-fetch-dest") == "document";
        cross_site && !bare_page
    };
    if refused {
        return api::problem(
            StatusCode::FORBIDDEN,
            "cross-site",
            "a page of another site asked for this; open imagescope's own page instead",
        );
    }
    let Some(want) = state.token else {
        // Without a token, only names of this machine: a site whose name was re-pointed at
        // 127.0.0.1 (DNS rebinding) cannot read the photos.
        // HTTP/2 names the host in the URI's authority, not in a Host header.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        if !loopback_host(host.as_deref()) {
            return api::problem(
                StatusCode::FORBIDDEN,
                "host",
                "this server answers only to 127.0.0.1, localhost or [::1]; to serve other names, bind another address with a token",
            );
        }
        return next.run(req).await;
    };
    let cookie = token_cookie(&want);
    let got = presented(req.headers(), req.uri().query(), &cookie);
    // `blake3::Hash` compares in constant time.
    let Some((token, source)) = got.filter(|(t, _)| blake3::hash(t.as_bytes()) == want) else {
        return api::problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs its token: send `Authorization: Bearer TOKEN` (or open the page as /?token=TOKEN)",
        );
    };
    let mut resp = next.run(req).await;
    if source == Source::Query {
        // The page's own calls, pictures and report links then carry it without a URL.
        let value: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
        let cookie = format!("{cookie}={value}; HttpOnly; SameSite=Strict; Path=/");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// No page of this server may be shown inside another site's frame (clickjacking).
async fn frame_guard(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    resp
}

/// `/health`: up, and what it serves.
#[utoipa::path(get, path = "/health", responses((status = 200, body = api::Health)))]
async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(api::Health {
        status: "ok".into(),
        images: state.session.ctx.db.len(),
        stages: state.stage_names(),
        searches_running: state.running.load(Ordering::SeqCst),
        uploads: state.session.captioner.is_ok(),
    })
}

/// The API's description.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "imagescope serve",
        description = "Language-guided image retrieval (ImageScope) over an indexed folder: search, images, runs."
    ),
    paths(
        api::search,
        uploads::upload,
        files::thumbnail,
        files::full,
        files::runs,
        health
    ),
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
    fn the_token_is_read_from_the_header_the_query_or_the_cookie() {
        let mut h = HeaderMap::new();
        let got = |h: &HeaderMap, q| presented(h, q, "imagescope_token_ab12cd34");
        assert_eq!(
            got(&h, Some("q=x&token=abc")),
            Some(("abc".into(), Source::Query))
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static(
                "imagescope_token_00000000=x; imagescope_token_ab12cd34=c%3Bk",
            ),
        );
        assert_eq!(got(&h, None), Some(("c;k".into(), Source::Cookie)));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(got(&h, None), Some(("xyz".into(), Source::Header)));
        assert_eq!(got(&HeaderMap::new(), Some("q=x")), None);
    }

    #[test]
    fn only_loopback_names_are_this_machine() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.0.0.1",
        ] {
            assert!(loopback_host(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "192.168.1.2:8080",
            "[2001:db8::1]:80",
            "",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(Some(bad)), "{bad}");
        }
        assert!(!loopback_host(None));
    }
}
