//! Building an image database: every pending image is read, decoded and (if configured) resized
//! on blocking threads, captioned and embedded through the role clients, and committed to the
//! store by one writer thread in small transactions. Images stream through a bounded
//! `buffer_unordered`, so memory stays flat and the servers' limits set the pace. A rerun (after a
//! crash or with new files in a folder) only touches images not yet done; unreadable images are
//! recorded with their reason and reported, never fatal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::datasets::GalleryImage;
use crate::images::{self, EncodedImage};
use crate::prompts::{Family, PromptSet};
use crate::roles::{captioner, embedder};
use crate::serving::{EmbedInput, RoleClient};

use super::store::{FailureKind, Outcome, Pending, Store};
use super::{IndexError, fingerprint::Fingerprint};

/// An image ready to send to each role.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// blake3 of the file bytes.
    pub content_hash: String,
    /// The file's size and modification time, taken before it was read.
    pub stamp: Option<super::store::Stamp>,
    /// What the captioner gets.
    pub for_captioner: EncodedImage,
    /// What the embedder gets.
    pub for_embedder: EncodedImage,
}

fn fit(img: &image::DynamicImage, max: u32) -> image::DynamicImage {
    if img.width().max(img.height()) <= max {
        img.clone()
    } else {
        img.resize(max, max, image::imageops::FilterType::Triangle)
    }
}

/// Reads, validates and prepares one image (blocking: call it on a blocking thread).
pub fn prepare(
    path: &Path,
    captioner_max: Option<u32>,
    embedder_max: Option<u32>,
) -> Result<Prepared, String> {
    let stamp = super::store::Stamp::of(path);
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.is_empty() {
        return Err("zero-byte file".into());
    }
    let what = path.display().to_string();
    let original = EncodedImage::from_bytes(bytes, &what).map_err(|e| e.to_string())?;
    let (pixels, rotated) =
        images::decode_oriented(original.bytes(), &what).map_err(|e| e.to_string())?;
    let content_hash = original.hash().to_string();
    let for_role = |max: Option<u32>| -> Result<EncodedImage, String> {
        let too_big = max.is_some_and(|m| pixels.width().max(pixels.height()) > m);
        if !rotated && !too_big {
            return Ok(original.clone());
        }
        let img = match max {
            Some(m) => fit(&pixels, m),
            None => pixels.clone(),
        };
        images::encode_jpeg(&img, &what).map_err(|e| e.to_string())
    };
    Ok(Prepared {
        content_hash,
        stamp,
        for_captioner: for_role(captioner_max)?,
        for_embedder: for_role(embedder_max)?,
    })
}

/// Captions given instead of a captioner (`--captions FILE`): a JSON object `{key: caption}` or a
/// CSV with a `caption` column and a `key`, `image` or `filename` column.
pub fn load_captions(path: &Path) -> Result<(HashMap<String, String>, String), IndexError> {
    let bytes = std::fs::read(path).map_err(|e| {
        IndexError::Input(format!("cannot read captions file {}: {e}", path.display()))
    })?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let bad = |m: String| IndexError::Input(format!("captions file {}: {m}", path.display()));
    let map: HashMap<String, String> = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        let headers = r.headers().map_err(|e| bad(e.to_string()))?.clone();
        let col = |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim()));
        let (Some(k), Some(c)) = (col(&["key", "image", "filename"]), col(&["caption"])) else {
            return Err(bad(
                "needs a `caption` column and a `key`, `image` or `filename` column".into(),
            ));
        };
        let mut m = HashMap::new();
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| bad(format!("row {i}: {e}")))?;
            m.insert(
                rec.get(k).unwrap_or("").trim().to_string(),
                rec.get(c).unwrap_or("").trim().to_string(),
            );
        }
        m
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("expected a JSON object of key → caption: {e}")))?
    };
    Ok((map, hash))
}

/// Who captions.
pub enum Captions {
    /// A captioner model.
    Model {
        /// Its client.
        client: RoleClient,
        /// Prompt templates.
        prompts: Arc<PromptSet>,
        /// Prompt family.
        family: Family,
    },
    /// A captions file's content.
    File(HashMap<String, String>),
}

/// What to build.
pub struct BuildInput {
    /// Database folder.
    pub dir: PathBuf,
    /// Gallery images (new ones are registered).
    pub gallery: Vec<GalleryImage>,
    /// What builds it.
    pub fingerprint: Fingerprint,
    /// Caption source.
    pub captions: Captions,
    /// Embedder client.
    pub embedder: RoleClient,
    /// Images in flight at once.
    pub concurrency: usize,
    /// Retry images that failed to decode before.
    pub retry_failed: bool,
    /// Draw progress bars (when stderr is a terminal).
    pub progress: bool,
}

/// What a build did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BuildReport {
    /// Database folder.
    pub dir: PathBuf,
    /// Images in the gallery.
    pub gallery: usize,
    /// Images new to the database in this run.
    pub registered: usize,
    /// Images whose photo changed since they were indexed (captioned and embedded again).
    pub changed: usize,
    /// Images worked on in this run.
    pub processed: usize,
    /// Images indexed in total.
    pub done: u64,
    /// Images failed in total, with kind and reason.
    pub failures: Vec<(String, String, String)>,
    /// Wall time of this run.
    pub seconds: f64,
}

struct Ctx {
    captions: Captions,
    embedder: RoleClient,
    embeds_images: bool,
    captioner_max: Option<u32>,
    embedder_max: Option<u32>,
    bars: Option<[ProgressBar; 3]>,
}

fn bar(multi: &MultiProgress, len: u64, name: &str) -> ProgressBar {
    let b = multi.add(ProgressBar::new(len));
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
    {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_prefix(name.to_string());
    b
}

fn tick(ctx: &Ctx, i: usize) {
    if let Some(b) = &ctx.bars {
        b[i].inc(1);
    }
}

fn server_failure(idx: u64, e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed {
        idx,
        kind: FailureKind::Server,
        error: e.to_string(),
    }
}

async fn process(p: Pending, ctx: &Ctx) -> Outcome {
    let idx = p.idx;
    let path = p.path.clone();
    let (cmax, emax) = (ctx.captioner_max, ctx.embedder_max);
    let prepared = match tokio::task::spawn_blocking(move || prepare(&path, cmax, emax)).await {
        Ok(Ok(prep)) => prep,
        Ok(Err(e)) => {
            return Outcome::Failed {
                idx,
                kind: FailureKind::Image,
                error: e,
            };
        }
        Err(e) => {
            return Outcome::Failed {
                idx,
                kind: FailureKind::Image,
                error: format!("decoding crashed: {e}"),
            };
        }
    };
    tick(ctx, 0);
    let caption = async {
        match &ctx.captions {
            Captions::File(map) => map
                .get(p.key.as_str())
                .filter(|c| !c.is_empty())
                .cloned()
                .ok_or_else(|| {
                    (
                        FailureKind::Image,
                        format!("the captions file has no caption for {}", p.key),
                    )
                }),
            Captions::Model {
                client,
                prompts,
                family,
            } => {
                let req = captioner::request(prompts, *family, prepared.for_captioner.clone())
                    .map_err(|e| (FailureKind::Server, e.to_string()))?;
                let reply = client
                    .chat(&req)
                    .await
                    .map_err(|e| (FailureKind::Server, e.to_string()))?;
                captioner::parse(&reply.value.content)
                    .map_err(|e| (FailureKind::Server, format!("captioner: {e}")))
            }
        }
    };
    let image_vec = async {
        if !ctx.embeds_images {
            return Ok(None);
        }
        let r = ctx
            .embedder
            .embed(&[embedder::image(prepared.for_embedder.clone())])
            .await?;
        Ok::<_, crate::serving::ServingError>(r.value.into_iter().next())
    };
    let (caption, image_vec) = tokio::join!(caption, image_vec);
    let caption = match caption {
        Ok(c) => c,
        Err((kind, error)) => return Outcome::Failed { idx, kind, error },
    };
    tick(ctx, 1);
    let image_vec = match image_vec {
        Ok(v) => match v.map(embedder::unit) {
            Some(None) => return server_failure(idx, "the image embedding is a zero vector"),
            other => other.flatten(),
        },
        Err(e) => return server_failure(idx, e),
    };
    let caption_vec = match ctx
        .embedder
        .embed(&[EmbedInput::Text(caption.clone())])
        .await
    {
        Ok(r) => match r.value.into_iter().next().and_then(embedder::unit) {
            Some(v) => v,
            None => return server_failure(idx, "the caption embedding is empty or zero"),
        },
        Err(e) => return server_failure(idx, e),
    };
    tick(ctx, 2);
    Outcome::Done {
        idx,
        content_hash: prepared.content_hash,
        stamp: prepared.stamp,
        caption,
        image_vec,
        caption_vec,
    }
}

/// Builds (or continues building) a database, then its vector indexes.
pub async fn build(input: BuildInput) -> Result<BuildReport, IndexError> {
    let started = Instant::now();
    super::prepare_dir(&input.dir, &input.fingerprint)?;
    let mut store = Store::open(&input.dir.join(super::STORE_FILE))?;
    let registered = store.register(&input.gallery)?;
    // Photos replaced since they were indexed are captioned and embedded again.
    let fresh = super::freshness::check(&store, &input.gallery, true)?;
    if !fresh.changed.is_empty() {
        tracing::warn!(
            "{} photo(s) changed since they were indexed; captioning and embedding them again",
            fresh.changed.len()
        );
        let idxs: Vec<u64> = fresh.changed.iter().map(|c| c.0).collect();
        store.reset(&idxs)?;
    }
    store.set_stamps(&fresh.restamp)?;
    let changed = fresh.changed.len();
    let pending = store.pending(input.retry_failed)?;
    let processed = pending.len();
    let bars = (input.progress && processed > 0).then(|| {
        let multi = MultiProgress::new();
        let n = processed as u64;
        [
            bar(&multi, n, "decode"),
            bar(&multi, n, "caption"),
            bar(&multi, n, "embed"),
        ]
    });
    let ctx = Ctx {
        embeds_images: input.fingerprint.embedder.images,
        captioner_max: match &input.captions {
            Captions::Model { client, .. } => client.server().image_max_side,
            Captions::File(_) => None,
        },
        embedder_max: input.embedder.server().image_max_side,
        captions: input.captions,
        embedder: input.embedder,
        bars,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Outcome>(256);
    let writer = std::thread::spawn(move || -> Result<Store, IndexError> {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < 64 {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            store.commit(&batch)?;
        }
        Ok(store)
    });
    let ctx_ref = &ctx;
    let mut results = futures::stream::iter(pending)
        .map(|p| process(p, ctx_ref))
        .buffer_unordered(input.concurrency.max(1));
    while let Some(outcome) = results.next().await {
        if tx.send(outcome).await.is_err() {
            break; // the writer stopped; its error is reported below
        }
    }
    drop(results);
    drop(tx);
    if let Some(b) = &ctx.bars {
        b.iter().for_each(ProgressBar::finish);
    }
    let store = writer
        .join()
        .map_err(|_| IndexError::Input("the database writer thread crashed".into()))??;
    let vectors_started = Instant::now();
    super::rebuild_vectors(&input.dir, &store, Default::default(), None)?;
    tracing::info!(
        seconds = vectors_started.elapsed().as_secs_f64(),
        "vector indexes built"
    );
    let counts = store.counts()?;
    Ok(BuildReport {
        dir: input.dir,
        gallery: input.gallery.len(),
        registered,
        changed,
        processed,
        done: counts.done,
        failures: store
            .failures()?
            .into_iter()
            .map(|(k, kind, e)| (k.0, kind, e))
            .collect(),
        seconds: started
            .elapsed()
            .as_secs_f64()
            .max(Duration::ZERO.as_secs_f64()),
    })
}
