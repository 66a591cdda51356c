//! What `serve` reads from disk: gallery images (by database key only), their thumbnails (made
//! once, kept under `runs/serve/thumbs`), and the run folders' pages. A request never names a
//! file: a key is looked up in the gallery, a run page is matched against the run folders and
//! file names listed from disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::api::problem;
use crate::datasets::ImageKey;

/// A thumbnail's longer side, in pixels.
pub const THUMB_SIDE: u32 = 320;

/// One run folder.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunEntry {
    /// Its path under the runs folder (`dataset/name/time`).
    pub path: String,
    /// The report page's URL, when the run wrote one.
    pub report: Option<String>,
    /// Queries answered and failed, from `summary.json` when it is there.
    pub queries: Option<u64>,
    /// Of which failed.
    pub failed: Option<u64>,
    /// Comparison pages in the folder.
    pub compare: Vec<String>,
}

fn bytes_response(bytes: Vec<u8>, mime: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (header::CACHE_CONTROL, "private, max-age=3600".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        Body::from(bytes),
    )
        .into_response()
}

fn mime_of(bytes: &[u8]) -> &'static str {
    image::guess_format(bytes)
        .map(|f| f.to_mime_type())
        .unwrap_or("application/octet-stream")
}

/// The file of a gallery key, or the 404 to answer.
fn gallery_file(state: &AppState, key: &str) -> Result<PathBuf, Box<Response>> {
    let key_ = ImageKey(key.to_string());
    let ctx = &state.session.ctx;
    // In the folder as found at start and in the database (a file that failed to index is not).
    // Or an uploaded photo.
    ctx.paths
        .get(&key_)
        .filter(|_| ctx.db.contains(&key_))
        .cloned()
        .or_else(|| state.upload_file(&key_))
        .ok_or_else(|| {
            Box::new(problem(
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("no image {key:?} in this gallery; keys are the `key` of search results"),
            ))
        })
}

/// The answer for a gallery file that cannot be read: the key to the client, the path to the log
/// (a client off this machine has no business knowing where the photos are).
fn unreadable(key: &str, path: &Path, e: impl std::fmt::Display) -> Response {
    tracing::warn!(file = %path.display(), error = %e, "gallery file unreadable");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "unreadable",
        &format!(
            "the gallery image {key:?} cannot be read (its file changed or is gone since it was indexed: re-index the folder; the server's log names the file)"
        ),
    )
}

/// Where the thumbnail of `key` (whose file is `path`) is kept under `thumbs`: named by the key
/// and the file's size and time, so a changed file gets a new one.
pub(crate) fn thumbnail_file(thumbs: &Path, key: &str, path: &Path) -> PathBuf {
    let stamp = std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()));
    let name = blake3::hash(format!("{key}\0{stamp:?}\0{THUMB_SIDE}").as_bytes()).to_hex();
    thumbs.join(&name[..32])
}

/// `GET /api/images/{key}`: the image, its longer side at most 320 pixels.
#[utoipa::path(get, path = "/api/images/{key}", params(("key" = String, Path, description = "a gallery key")),
    responses((status = 200, description = "JPEG or the original format when already small"), (status = 404, body = super::api::Problem)))]
pub(crate) async fn thumbnail(
    State(state): State<Arc<AppState>>,
    UrlPath(key): UrlPath<String>,
) -> Response {
    let path = match gallery_file(&state, &key) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let cached = thumbnail_file(&state.thumbs, &key, &path);
    if let Ok(bytes) = tokio::fs::read(&cached).await {
        let mime = mime_of(&bytes);
        return bytes_response(bytes, mime);
    }
    let key_for_task = key.clone();
    let made = tokio::task::spawn_blocking(move || {
        let img = crate::images::load_for_role(&path, Some(THUMB_SIDE))
            .map_err(|e| Box::new(unreadable(&key_for_task, &path, e)))?;
        // A thumbnail that cannot be kept is still served.
        if let Err(e) = crate::files::write_atomic(&cached, img.bytes()) {
            tracing::warn!(file = %cached.display(), error = %e, "thumbnail not kept");
        }
        Ok::<_, Box<Response>>((img.bytes().to_vec(), img.mime()))
    })
    .await;
    match made {
        Ok(Ok((bytes, mime))) => bytes_response(bytes, mime),
        Ok(Err(r)) => *r,
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("making the thumbnail failed: {e}"),
        ),
    }
}

/// `GET /api/images/{key}/full`: the image file as it is.
#[utoipa::path(get, path = "/api/images/{key}/full", params(("key" = String, Path, description = "a gallery key")),
    responses((status = 200, description = "the image file"), (status = 404, body = super::api::Problem)))]
pub(crate) async fn full(
    State(state): State<Arc<AppState>>,
    UrlPath(key): UrlPath<String>,
) -> Response {
    let path = match gallery_file(&state, &key) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mime = mime_of(&bytes);
            bytes_response(bytes, mime)
        }
        Err(e) => unreadable(&key, &path, e),
    }
}

/// Run folders under `runs`: directories holding a `run.json`, three levels down
/// (`dataset/name/time`), newest first.
fn run_folders(runs: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for dataset in dirs(runs) {
        for name in dirs(&dataset) {
            for stamp in dirs(&name) {
                if stamp.join("run.json").is_file()
                    && let Ok(rel) = stamp.strip_prefix(runs)
                {
                    let rel = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                    out.push((rel, stamp));
                }
            }
        }
    }
    out.sort_by(|a, b| {
        let t = |p: &str| p.rsplit('/').next().unwrap_or("").to_string();
        t(&b.0).cmp(&t(&a.0)).then(a.0.cmp(&b.0))
    });
    out
}

/// A page a run folder may serve.
fn servable(name: &str) -> bool {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.');
    plain
        && ((name.starts_with("report") && name.ends_with(".html"))
            || (name.starts_with("compare-") && name.ends_with(".html"))
            || name == "summary.json"
            || name == "metrics.txt")
}

fn pages_of(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| servable(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `GET /api/runs`.
#[utoipa::path(get, path = "/api/runs", responses((status = 200, body = Vec<RunEntry>)))]
pub(crate) async fn runs(State(state): State<Arc<AppState>>) -> Response {
    let root = state.session.runs.clone();
    let listed = tokio::task::spawn_blocking(move || {
        run_folders(&root)
            .into_iter()
            .map(|(rel, dir)| {
                let pages = pages_of(&dir);
                let summary: Option<serde_json::Value> = std::fs::read(dir.join("summary.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                // `queries` is a number; `failed` a list of (id, reason).
                let count = |k: &str| {
                    let v = summary.as_ref()?.get(k)?;
                    v.as_u64().or_else(|| v.as_array().map(|a| a.len() as u64))
                };
                RunEntry {
                    report: pages
                        .iter()
                        .any(|p| p == "report.html")
                        .then(|| format!("/runs/{rel}/report.html")),
                    compare: pages
                        .iter()
                        .filter(|p| p.starts_with("compare-"))
                        .map(|p| format!("/runs/{rel}/{p}"))
                        .collect(),
                    queries: count("queries"),
                    failed: count("failed"),
                    path: rel,
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    axum::Json(listed).into_response()
}

/// The `file://` URL of each gallery image → its `/api/images/{key}/full` URL: a report's
/// pictures, written for a browser opening the file, work when served.
fn served_urls(paths: &HashMap<ImageKey, PathBuf>) -> HashMap<String, String> {
    paths
        .iter()
        .filter_map(|(k, p)| {
            let url = url::Url::from_file_path(std::path::absolute(p).ok()?).ok()?;
            Some((
                url.to_string(),
                format!("{}/full", super::api::image_url(k)),
            ))
        })
        .collect()
}

/// A report page with its gallery pictures pointed at `/api/images`. The report's template
/// escapes '/' in attributes as `&#x2f;`, so a URL is read back through that first.
pub(crate) fn rewrite_report(html: &str, urls: &HashMap<String, String>) -> String {
    static FILE_URL: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"file:(?://|&#x2[fF];&#x2[fF];)[^"'\s<>]+"#).ok()
    });
    match FILE_URL.as_ref() {
        Some(re) => re
            .replace_all(html, |c: &regex::Captures<'_>| {
                let found = &c[0];
                // minijinja's escapes, '&' last.
                let plain = found
                    .replace("&#x2f;", "/")
                    .replace("&#x2F;", "/")
                    .replace("&#x27;", "'")
                    .replace("&quot;", "\"")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&");
                urls.get(&plain)
                    .cloned()
                    .unwrap_or_else(|| found.to_string())
            })
            .into_owned(),
        None => html.to_string(),
    }
}

/// `GET /runs/{dataset}/{name}/{time}/{page}`: a run's report, comparison, summary or metrics.
pub(crate) async fn run_page(
    State(state): State<Arc<AppState>>,
    UrlPath(path): UrlPath<String>,
) -> Response {
    let not_found = || {
        problem(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("no run page {path:?}; /api/runs lists the runs and their pages"),
        )
    };
    let Some((dir, page)) = path.rsplit_once('/') else {
        return not_found();
    };
    let root = state.session.runs.clone();
    let (dir, page) = (dir.to_string(), page.to_string());
    let found = tokio::task::spawn_blocking(move || {
        // Only a listed run folder and a listed page of it: nothing from the request is joined
        // onto a path before it has been found on disk.
        let (_, folder) = run_folders(&root)
            .into_iter()
            .find(|(rel, _)| *rel == dir)?;
        let name = pages_of(&folder).into_iter().find(|n| *n == page)?;
        std::fs::read(folder.join(&name)).ok().map(|b| (name, b))
    })
    .await
    .ok()
    .flatten();
    let Some((name, bytes)) = found else {
        return not_found();
    };
    if name.ends_with(".html") {
        let urls = state
            .report_urls
            .get_or_init(|| served_urls(&state.session.ctx.paths));
        let html = rewrite_report(&String::from_utf8_lossy(&bytes), urls);
        return ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    }
    let mime = if name.ends_with(".json") {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    bytes_response(bytes, mime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_run_pages_are_servable() {
        for ok in [
            "report.html",
            "report-misses.html",
            "compare-a-b.html",
            "summary.json",
            "metrics.txt",
        ] {
            assert!(servable(ok), "{ok}");
        }
        for bad in [
            "queries.jsonl",
            "run.json",
            "../report.html",
            ".report.html",
            "report.html/x",
            "config.resolved.toml",
            "output.log",
        ] {
            assert!(!servable(bad), "{bad}");
        }
    }

    #[test]
    fn report_pictures_point_at_the_api() {
        let mut urls = HashMap::new();
        urls.insert(
            "file:///g/a%20b.jpg".to_string(),
            "/api/images/a%20b.jpg/full".to_string(),
        );
        let html = r#"<img src="file:///g/a%20b.jpg"><img src="file:///elsewhere.jpg">"#;
        assert_eq!(
            rewrite_report(html, &urls),
            r#"<img src="/api/images/a%20b.jpg/full"><img src="file:///elsewhere.jpg">"#
        );
        // As the report's template writes it.
        let escaped = r#"<img src="file:&#x2f;&#x2f;&#x2f;g&#x2f;a%20b.jpg">"#;
        assert_eq!(
            rewrite_report(escaped, &urls),
            r#"<img src="/api/images/a%20b.jpg/full">"#
        );
    }

    #[test]
    fn run_folders_are_found_three_levels_down() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let run = tmp.path().join("folder/demo/20260101T000000Z");
        std::fs::create_dir_all(&run).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(run.join("run.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(tmp.path().join("servers/x/y")).unwrap_or_else(|e| panic!("{e}"));
        let found = run_folders(tmp.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "folder/demo/20260101T000000Z");
    }
}
