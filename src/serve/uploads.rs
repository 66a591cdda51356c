//! Photos sent to `serve` as a search's reference (`POST /api/uploads`): checked (size, format,
//! pixels) before anything is decoded, kept once under `runs/serve/uploads/` by content hash,
//! described by the captioner, and added to the session as images outside the gallery
//! (`upload:<hash>` keys), which a search may name as its reference but which are never ranked.
//! Uploads kept on disk are added again when `serve` starts. They are kept within
//! `--uploads-max-mib` of disk: past it, those uploaded longest ago (sending a photo again counts
//! as uploading it) are removed, the newest always kept. A photo whose bytes are a gallery
//! photo's is that photo: its key and indexed caption are answered, no model is asked, nothing is
//! kept, and a search from it leaves it out of its results as a benchmark's reference is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::api::problem;
use crate::datasets::ImageKey;
use crate::pipeline::context::OutsideImage;
use crate::roles::captioner;

/// Uploads larger than this are refused (413): a phone's photo is a few megabytes.
pub const MAX_UPLOAD_BYTES: usize = 20 * 1024 * 1024;

/// Uploads with more pixels than this are refused before decoding (a small file can declare a
/// huge image: 100 megapixels would be 400 MB decoded).
pub const MAX_UPLOAD_PIXELS: u64 = 50_000_000;

/// The key prefix of uploads. Upload keys have no extension and gallery keys always have one, so
/// the two cannot meet (and the gallery is looked up first).
pub const KEY_PREFIX: &str = "upload:";

/// What an upload became.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Uploaded {
    /// The key to name as a search's `reference`.
    key: String,
    /// What the captioner saw (the reference description stage 1 reasons from).
    caption: String,
    /// Width in pixels.
    width: u32,
    /// Height in pixels.
    height: u32,
    /// The photo is a gallery photo's exact bytes: `key` is that photo's and `caption` the one
    /// it was indexed with, and a search from it leaves it out of its results (unless the
    /// configured profile keeps references, as `parity` does).
    in_gallery: bool,
}

/// Why an upload was refused, before any model was asked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Empty,
    NotAnImage(String),
    OtherFormat(&'static str),
    TooManyPixels { width: u32, height: u32 },
}

impl Refused {
    fn message(&self) -> String {
        match self {
            Refused::Empty => "the upload is empty: send the photo's bytes as the body".into(),
            Refused::NotAnImage(why) => {
                format!("the upload is not a PNG, JPEG or WebP image: {why}")
            }
            Refused::OtherFormat(ext) => format!(
                "the upload is a {} image; send it as PNG, JPEG or WebP (what browsers show and model servers read)",
                ext.to_uppercase()
            ),
            Refused::TooManyPixels { width, height } => format!(
                "the photo is {width}×{height} pixels, over {} megapixels: send a smaller copy",
                MAX_UPLOAD_PIXELS / 1_000_000
            ),
        }
    }
}

/// Checks an upload from its header alone (no pixels decoded): its format, extension and size.
pub(crate) fn check(bytes: &[u8]) -> Result<(&'static str, u32, u32), Refused> {
    if bytes.is_empty() {
        return Err(Refused::Empty);
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Refused::NotAnImage(e.to_string()))?;
    let format = reader
        .format()
        .ok_or_else(|| Refused::NotAnImage("its first bytes name no image format".into()))?;
    let ext = match format {
        image::ImageFormat::Png => "png",
        image::ImageFormat::Jpeg => "jpg",
        image::ImageFormat::WebP => "webp",
        other => {
            return Err(Refused::OtherFormat(
                other.extensions_str().first().copied().unwrap_or("other"),
            ));
        }
    };
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| Refused::NotAnImage(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(Refused::NotAnImage(format!("{width}×{height} pixels")));
    }
    if u64::from(width) * u64::from(height) > MAX_UPLOAD_PIXELS {
        return Err(Refused::TooManyPixels { width, height });
    }
    Ok((ext, width, height))
}

/// The key of an upload whose bytes hash to `hash` (blake3).
pub(crate) fn key_of(hash: &blake3::Hash) -> ImageKey {
    ImageKey(format!("{KEY_PREFIX}{}", &hash.to_hex()[..16]))
}

/// The blake3 hash of a file's bytes.
fn file_hash(path: &Path) -> Option<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).ok()?).ok()?;
    Some(h.finalize())
}

/// The caption file beside an upload.
fn caption_file(image: &Path) -> PathBuf {
    image.with_extension("caption.txt")
}

/// The key of the upload kept as `photo`, if that is an upload's photo file
/// (`<16 hex of its hash>.<ext>`; not a caption file or a temporary file of `write_atomic`).
fn photo_key(photo: &Path) -> Option<ImageKey> {
    let name = photo.file_name()?.to_str()?;
    if name.ends_with(".caption.txt") || name.starts_with('.') {
        return None;
    }
    let stem = name.split('.').next().filter(|s| s.len() == 16)?;
    Some(ImageKey(format!("{KEY_PREFIX}{stem}")))
}

/// One upload kept on disk: its key, its photo file, the caption file beside it if there is
/// one, the bytes of both, and when it was last uploaded.
#[derive(Debug, Clone, PartialEq)]
struct Kept {
    key: ImageKey,
    photo: PathBuf,
    caption: Option<PathBuf>,
    bytes: u64,
    at: std::time::SystemTime,
}

/// The uploads kept in `dir`: every photo file with a 16-character hash stem (captioned or not).
fn kept_in(dir: &Path) -> Vec<Kept> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let files: Vec<std::fs::DirEntry> = entries.flatten().collect();
    // The caption files the photos here would have.
    let captions_wanted: std::collections::HashSet<PathBuf> = files
        .iter()
        .map(|e| e.path())
        .filter(|p| photo_key(p).is_some())
        .map(|p| caption_file(&p))
        .collect();
    let mut out = Vec::new();
    for entry in files {
        let photo = entry.path();
        if photo.to_string_lossy().ends_with(".caption.txt") {
            // A caption whose photo is gone (removed by another `serve` while this one was
            // describing it) would never be counted or removed.
            if !captions_wanted.contains(&photo) {
                let _ = std::fs::remove_file(&photo);
            }
            continue;
        }
        let Some(key) = photo_key(&photo) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let caption = caption_file(&photo);
        let caption_meta = std::fs::metadata(&caption).ok();
        // When it was last sent: its caption's time (refreshed by each upload of the photo; the
        // photo's own time names its thumbnail, so it is left alone), else the photo's.
        let at = caption_meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .or_else(|| meta.modified().ok())
            .unwrap_or(std::time::UNIX_EPOCH);
        out.push(Kept {
            key,
            bytes: meta.len() + caption_meta.as_ref().map_or(0, |m| m.len()),
            caption: caption_meta.map(|_| caption),
            at,
            photo,
        });
    }
    out
}

/// Which kept uploads to remove so that the rest take at most `max_bytes`: photos never
/// described first (a `serve` stopped while captioning), then the least recently uploaded (ties
/// by file name, so the choice does not depend on the folder's listing order); never `newest`
/// (the upload being answered) or one in `held` (a search is using it), and when none is being
/// answered (at start), never the most recently uploaded described one.
fn over_allowance(
    kept: Vec<Kept>,
    max_bytes: u64,
    newest: Option<&Path>,
    held: &std::collections::HashSet<PathBuf>,
) -> Vec<Kept> {
    let mut total: u64 = kept.iter().map(|k| k.bytes).sum();
    let mut rest: Vec<Kept> = kept
        .into_iter()
        .filter(|k| Some(k.photo.as_path()) != newest && !held.contains(&k.photo))
        .collect();
    rest.sort_by(|a, b| {
        (a.caption.is_some(), a.at, &a.photo).cmp(&(b.caption.is_some(), b.at, &b.photo))
    });
    if newest.is_none() && rest.last().is_some_and(|k| k.caption.is_some()) {
        rest.pop();
    }
    let mut out = Vec::new();
    for k in rest {
        if total <= max_bytes {
            break;
        }
        total -= k.bytes;
        out.push(k);
    }
    out
}

/// Marks the upload whose photo is `photo` as sent now (its caption file's time), so it is the
/// last to go when uploads are over their allowance.
fn mark_sent(photo: &Path) -> std::io::Result<()> {
    std::fs::File::options()
        .write(true)
        .open(caption_file(photo))?
        .set_modified(std::time::SystemTime::now())
}

/// A search's hold on the upload it searches from: while any is held, that upload is not
/// removed to stay within the allowance.
pub(crate) struct UploadHold {
    state: Arc<AppState>,
    key: String,
}

impl UploadHold {
    /// Holds `key` if it names an upload.
    pub(crate) fn new(state: &Arc<AppState>, key: &str) -> Option<Self> {
        if !key.starts_with(KEY_PREFIX) {
            return None;
        }
        *held_keys(state).entry(key.to_string()).or_insert(0) += 1;
        Some(UploadHold {
            state: state.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for UploadHold {
    fn drop(&mut self) {
        let mut held = held_keys(&self.state);
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

fn held_keys(
    state: &AppState,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
    state
        .uploads_held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes the uploads past the allowance (`over_allowance`) from disk (with their thumbnails)
/// and from the session; a search naming one is then told to upload the photo again. Returns how
/// many were removed.
pub(crate) fn keep_within_allowance(state: &AppState, newest: Option<&Path>) -> usize {
    // Held throughout, so a search cannot take up an upload between this choice and its removal.
    let held_keys = held_keys(state);
    let held = held_keys
        .keys()
        .filter_map(|k| state.session.ctx.outside_image(&ImageKey(k.clone())))
        .map(|o| o.path)
        .collect();
    let gone = over_allowance(
        kept_in(&state.uploads),
        state.uploads_max_bytes,
        newest,
        &held,
    );
    let mut removed = 0;
    for k in gone {
        // Its thumbnail too, if one was made (named by the photo's size and time).
        let _ = std::fs::remove_file(super::files::thumbnail_file(
            &state.thumbs,
            k.key.as_str(),
            &k.photo,
        ));
        if let Err(e) = std::fs::remove_file(&k.photo) {
            tracing::warn!(file = %k.photo.display(), error = %e, "cannot remove an upload past the allowance");
            continue;
        }
        if let Some(c) = &k.caption {
            let _ = std::fs::remove_file(c);
        }
        state.session.ctx.remove_outside(&k.key);
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(
            removed,
            max_mib = state.uploads_max_bytes >> 20,
            "removed the uploads sent longest ago, to stay within --uploads-max-mib"
        );
    }
    removed
}

/// Adds the uploads kept in `dir` (each image with its caption file) to the session; returns how
/// many. Files without a caption (a `serve` stopped while captioning) are left for the next upload
/// of the same photo.
pub(crate) fn restore(state: &AppState, dir: &Path) -> usize {
    let mut n = 0;
    for k in kept_in(dir) {
        let Some(caption) = k.caption.and_then(|c| std::fs::read_to_string(c).ok()) else {
            continue;
        };
        let caption = caption.trim().to_string();
        if caption.is_empty() {
            continue;
        }
        state.session.ctx.add_outside(
            k.key,
            OutsideImage {
                path: k.photo,
                caption,
            },
        );
        n += 1;
    }
    n
}

/// `POST /api/uploads`: a photo to search from (its bytes as the body: PNG, JPEG or WebP, at most
/// 20 MiB and 50 megapixels). Answers its key, to send as a search's `reference`, and its caption.
#[utoipa::path(post, path = "/api/uploads",
    request_body(content = Vec<u8>, content_type = "image/*", description = "the photo's bytes (PNG, JPEG or WebP)"),
    responses(
        (status = 200, body = Uploaded),
        (status = 400, body = super::api::Problem, description = "not a PNG, JPEG or WebP image, or too many pixels"),
        (status = 413, description = "over 20 MiB"),
        (status = 502, body = super::api::Problem, description = "the captioner failed"),
        (status = 503, body = super::api::Problem, description = "no captioner to describe it"),
    ))]
pub(crate) async fn upload(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                &format!(
                    "the photo is over {} MiB: send a smaller copy",
                    MAX_UPLOAD_BYTES >> 20
                ),
            );
        }
        Err(e) => return problem(e.status(), "bad-upload", &e.body_text()),
    };
    let (ext, width, height) = match check(&body) {
        Ok(c) => c,
        Err(r) => return problem(StatusCode::BAD_REQUEST, "bad-upload", &r.message()),
    };
    let hash = blake3::hash(&body);
    let ctx = &state.session.ctx;
    // A gallery photo sent back: that photo, as "edit this" would name it (no captioner needed),
    // if its file still holds these bytes (it may have been replaced or removed since `index`).
    if let Some(key) = state.gallery_by_content.get(hash.to_hex().as_str())
        && let Ok(file) = ctx.path_of(key)
        && tokio::task::spawn_blocking(move || file_hash(&file))
            .await
            .ok()
            .flatten()
            == Some(hash)
    {
        return Json(Uploaded {
            key: key.0.clone(),
            caption: ctx.db.caption(key).unwrap_or_default().to_string(),
            width,
            height,
            in_gallery: true,
        })
        .into_response();
    }
    let key = key_of(&hash);
    // One upload is described at a time: two of the same photo at once caption it once, and
    // decoded pixels (up to 50 megapixels) are held for one photo only.
    let _one_at_a_time = state.upload_lock.lock().await;
    if let Some(known) = ctx.outside_image(&key) {
        if known.path.is_file() {
            // Sent again: the last to go when uploads are over their allowance.
            if let Err(e) = mark_sent(&known.path) {
                tracing::debug!(file = %known.path.display(), error = %e, "upload's time not refreshed");
            }
            return Json(Uploaded {
                key: key.0,
                caption: known.caption,
                width,
                height,
                in_gallery: false,
            })
            .into_response();
        }
        // Removed from disk meanwhile (another `serve` over the same runs folder kept within its
        // allowance, or a person): kept and described again below.
        ctx.remove_outside(&key);
    }
    let client = match &state.session.captioner {
        Ok(c) => c.clone(),
        Err(why) => {
            // Why (a file, a server's address) goes to the log, not to the client.
            tracing::warn!(%why, "an upload with no captioner");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-captioner",
                "an uploaded photo must be described by a captioner, and this server has none that answered when it started (its log says why). Pick a gallery photo as the reference instead (\"edit this\"), or serve with a configuration whose [roles.captioner] is running",
            );
        }
    };
    let name = key.as_str().trim_start_matches(KEY_PREFIX);
    let path = state.uploads.join(format!("{name}.{ext}"));
    // Written under a temporary name and renamed, so a file under the final name is whole.
    let written = {
        let (path, body) = (path.clone(), body.clone());
        tokio::task::spawn_blocking(move || crate::files::write_atomic(&path, &body)).await
    };
    if let Err(e) = written
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        tracing::warn!(file = %path.display(), error = %e, "upload not kept");
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            "the photo could not be kept on this server's disk (see its log)",
        );
    }
    let max = client.server().image_max_side;
    let prepared = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || crate::index::build::prepare(&path, max, None)).await
    };
    let prepared = match prepared.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(p) => p,
        Err(e) => {
            // The header was fine but the pixels were not (a cut file): nothing is kept.
            let _ = std::fs::remove_file(&path);
            let e = e.replace(&path.display().to_string(), "the upload");
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-upload",
                &Refused::NotAnImage(e).message(),
            );
        }
    };
    let caption = async {
        let req = captioner::request(&ctx.prompts, ctx.family, prepared.for_captioner)
            .map_err(|e| e.to_string())?;
        let reply = client.chat(&req).await.map_err(|e| e.to_string())?;
        captioner::parse(&reply.value.content).map_err(|e| format!("its answer: {e}"))
    }
    .await;
    let caption = match caption {
        Ok(c) => c,
        Err(e) => {
            // Nothing is kept of a photo that was not described.
            let _ = std::fs::remove_file(&path);
            return problem(
                StatusCode::BAD_GATEWAY,
                "captioner",
                &format!("the captioner could not describe the photo: {e}"),
            );
        }
    };
    // Removed while it was being described (another `serve` over the same runs folder kept
    // within its allowance): kept again, so the key answered can be searched from.
    if !path.is_file()
        && let Err(e) = crate::files::write_atomic(&path, &body)
    {
        tracing::warn!(file = %path.display(), error = %e, "upload not kept");
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            "the photo could not be kept on this server's disk (see its log)",
        );
    }
    if let Err(e) = crate::files::write_atomic(&caption_file(&path), &caption) {
        // Kept for this run of `serve` only.
        tracing::warn!(file = %path.display(), error = %e, "upload caption not kept");
    }
    ctx.add_outside(
        key.clone(),
        OutsideImage {
            path: path.clone(),
            caption: caption.clone(),
        },
    );
    {
        let (state, path) = (state.clone(), path.clone());
        let _ =
            tokio::task::spawn_blocking(move || keep_within_allowance(&state, Some(&path))).await;
    }
    Json(Uploaded {
        key: key.0,
        caption,
        width,
        height,
        in_gallery: false,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(name: &str, bytes: u64, secs: u64) -> Kept {
        Kept {
            key: ImageKey(format!("{KEY_PREFIX}{name}")),
            photo: PathBuf::from(name),
            caption: Some(PathBuf::from(format!("{name}.caption.txt"))),
            bytes,
            at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        }
    }

    fn names(v: Vec<Kept>) -> Vec<String> {
        v.into_iter()
            .map(|k| k.photo.display().to_string())
            .collect()
    }

    #[test]
    fn the_uploads_sent_longest_ago_go_first_and_the_newest_never() {
        let none = std::collections::HashSet::new();
        let all = vec![
            kept("c", 30, 3),
            kept("a", 30, 1),
            kept("b", 30, 2),
            kept("d", 30, 4),
        ];
        // Within the allowance: nothing goes.
        assert!(over_allowance(all.clone(), 120, None, &none).is_empty());
        // 120 bytes kept, 70 allowed: the two oldest go.
        assert_eq!(
            names(over_allowance(all.clone(), 70, None, &none)),
            ["a", "b"]
        );
        // Nothing allowed: all go but the one being answered, whatever its time; with none
        // being answered (at start), but the last uploaded.
        assert_eq!(
            names(over_allowance(all.clone(), 0, None, &none)),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(over_allowance(all.clone(), 0, Some(Path::new("a")), &none)),
            ["b", "c", "d"]
        );
        // One a search is using stays too.
        let held = [PathBuf::from("b")].into_iter().collect();
        assert_eq!(
            names(over_allowance(all.clone(), 0, Some(Path::new("a")), &held)),
            ["c", "d"]
        );
        // Same time: by name; the one being answered stays whatever its name.
        let tied = vec![kept("y", 10, 5), kept("x", 10, 5)];
        assert_eq!(names(over_allowance(tied.clone(), 10, None, &none)), ["x"]);
        assert_eq!(
            names(over_allowance(tied, 0, Some(Path::new("x")), &none)),
            ["y"]
        );
        // A photo never described goes first, however recent, and is not the one kept at start.
        let mut orphan = kept("z", 10, 9);
        orphan.caption = None;
        let with_orphan = vec![kept("a", 10, 1), orphan];
        assert_eq!(
            names(over_allowance(with_orphan.clone(), 10, None, &none)),
            ["z"]
        );
        assert_eq!(names(over_allowance(with_orphan, 0, None, &none)), ["z"]);
    }

    #[test]
    fn a_photo_sent_again_is_the_last_to_go_and_a_caption_without_its_photo_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let none = std::collections::HashSet::new();
        let upload = |stem: &str, age: u64| {
            let photo = dir.path().join(format!("{stem}.png"));
            std::fs::write(&photo, [0u8; 100]).unwrap();
            std::fs::write(caption_file(&photo), "A photo.").unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            for f in [photo.clone(), caption_file(&photo)] {
                std::fs::File::options()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
            }
            photo
        };
        let older = upload("aaaaaaaaaaaaaaaa", 600);
        let newer = upload("bbbbbbbbbbbbbbbb", 60);
        let lone_caption = dir.path().join("cccccccccccccccc.caption.txt");
        std::fs::write(&lone_caption, "A photo.").unwrap();
        // As uploaded, the older goes first.
        let gone = over_allowance(kept_in(dir.path()), 120, None, &none);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].photo, older);
        // The caption without a photo was removed by the listing.
        assert!(!lone_caption.exists());
        // Sent again, the older is now the last to go; its photo's time (which names its
        // thumbnail) is left as it was.
        let photo_time = std::fs::metadata(&older).unwrap().modified().unwrap();
        mark_sent(&older).unwrap();
        let gone = over_allowance(kept_in(dir.path()), 120, None, &none);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].photo, newer);
        assert_eq!(
            std::fs::metadata(&older).unwrap().modified().unwrap(),
            photo_time
        );
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(w, h)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn an_upload_is_checked_from_its_header() {
        assert_eq!(check(&png(3, 2)), Ok(("png", 3, 2)));
        assert_eq!(check(b""), Err(Refused::Empty));
        let mut gif = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(2, 2)
            .write_to(&mut gif, image::ImageFormat::Gif)
            .unwrap();
        assert_eq!(check(gif.get_ref()), Err(Refused::OtherFormat("gif")));
        assert!(Refused::OtherFormat("gif").message().contains("GIF image"));
        // A PNG's signature and nothing after it.
        assert!(matches!(
            check(b"\x89PNG\r\n\x1a\n"),
            Err(Refused::NotAnImage(_))
        ));
        assert!(matches!(check(b"hello"), Err(Refused::NotAnImage(_))));
        // A PNG header that declares 10,000 × 10,000 pixels, with no pixels behind it.
        let mut huge = png(1, 1);
        huge[16..20].copy_from_slice(&10_000u32.to_be_bytes());
        huge[20..24].copy_from_slice(&10_000u32.to_be_bytes());
        let crc = crc32fast::hash(&huge[12..29]);
        huge[29..33].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            check(&huge),
            Err(Refused::TooManyPixels {
                width: 10_000,
                height: 10_000
            })
        );
        assert!(
            Refused::TooManyPixels {
                width: 1,
                height: 2
            }
            .message()
            .contains("50 megapixels")
        );
    }

    #[test]
    fn the_same_bytes_are_the_same_key() {
        assert_eq!(key_of(&blake3::hash(b"abc")), key_of(&blake3::hash(b"abc")));
        assert_ne!(key_of(&blake3::hash(b"abc")), key_of(&blake3::hash(b"abd")));
        assert!(
            key_of(&blake3::hash(b"abc"))
                .as_str()
                .starts_with(KEY_PREFIX)
        );
        assert_eq!(
            key_of(&blake3::hash(b"abc")).as_str().len(),
            KEY_PREFIX.len() + 16
        );
    }
}
