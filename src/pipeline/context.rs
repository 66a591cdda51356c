//! What every stage needs (`Ctx`: parameters, prompts, role clients, the image database, gallery
//! paths) and what each query accumulates while it runs (`Tally`: requests, cache hits, tokens,
//! fallbacks).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{DatasetName, PipelineParams, Profile, Role};
use crate::datasets::ImageKey;
use crate::images::{self, EncodedImage};
use crate::index::ImageDb;
use crate::prompts::{Family, PromptSet};
use crate::serving::{CallMeta, RoleClient, Usage};

use super::ask::Exchange;
use crate::record::Fallback;

/// Shared, read-only context of a run.
pub struct Ctx {
    /// Resolved parameters.
    pub params: PipelineParams,
    /// Benchmark.
    pub dataset: DatasetName,
    /// Prompt family.
    pub family: Family,
    /// Templates.
    pub prompts: Arc<PromptSet>,
    /// Reasoner.
    pub reasoner: RoleClient,
    /// Verifier (when stage 2 runs).
    pub verifier: Option<RoleClient>,
    /// Evaluator (when stage 3 runs).
    pub evaluator: Option<RoleClient>,
    /// Embedder.
    pub embedder: RoleClient,
    /// The gallery's image database.
    pub db: Arc<ImageDb>,
    /// Gallery key → file.
    pub paths: HashMap<ImageKey, PathBuf>,
    /// The split's gallery when the database holds more images than it.
    pub allowed: Option<Arc<crate::index::AllowedIds>>,
    /// Ranking length kept per stage.
    pub keep: usize,
    /// Progress bars of stages 1, 2 and 3 (rounds done), when drawn.
    pub progress: Option<[indicatif::ProgressBar; 3]>,
    /// Gallery images held in memory at once, per image role (`image_permit`).
    pub images: ImagePools,
    /// Images outside the gallery that a query may name as its reference (`serve`'s uploads):
    /// never ranked, only read and described.
    pub outside: std::sync::RwLock<HashMap<ImageKey, OutsideImage>>,
}

/// An image outside the gallery: its file and the caption the captioner gave it.
#[derive(Debug, Clone)]
pub struct OutsideImage {
    /// The file.
    pub path: PathBuf,
    /// Its caption (stage 1's reference description).
    pub caption: String,
}

/// The images in memory across all queries: one pool per image role of `IMAGES_PER_SLOT` × that
/// role's request slots (× 2 for the evaluator, whose one request is built from a reference and a
/// candidate), so loaded images follow each server's capacity, not the queries in flight, and
/// stage 3 never waits behind stage 2's queue for the verifier.
#[derive(Debug)]
pub struct ImagePools {
    verifier: Arc<tokio::sync::Semaphore>,
    evaluator: Arc<tokio::sync::Semaphore>,
    /// How many permits there are (both pools): the bound on images in memory.
    pub bound: usize,
    /// The most permits held at once during the run.
    pub peak: std::sync::atomic::AtomicUsize,
}

impl ImagePools {
    /// Pools for these request slots. A stage-3 turn holds two images (reference and
    /// candidate), so the evaluator's pool counts two per request: a full server still has one
    /// turn's images ready behind each busy slot (with one per request it had none, and each
    /// slot idled while the next composite was built).
    pub fn new(verifier_slots: usize, evaluator_slots: usize) -> Self {
        let v = (IMAGES_PER_SLOT * verifier_slots).max(2);
        let e = (2 * IMAGES_PER_SLOT * evaluator_slots).max(2);
        ImagePools {
            verifier: Arc::new(tokio::sync::Semaphore::new(v)),
            evaluator: Arc::new(tokio::sync::Semaphore::new(e)),
            bound: v + e,
            peak: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Waits for `n` permits of `role`'s pool (the evaluator's, or else the verifier's).
    pub async fn acquire(&self, role: Role, n: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let pool = match role {
            Role::Evaluator => &self.evaluator,
            _ => &self.verifier,
        };
        let permit = pool.clone().acquire_many_owned(n).await.ok();
        let held =
            self.bound - self.verifier.available_permits() - self.evaluator.available_permits();
        self.peak
            .fetch_max(held, std::sync::atomic::Ordering::Relaxed);
        permit
    }
}

/// Images in memory per request slot of the image roles: one being sent and one ready behind it.
pub const IMAGES_PER_SLOT: usize = 2;

impl Ctx {
    /// Waits until `n` gallery images may be loaded for `role` (the verifier or the evaluator);
    /// hold the permit while the images (or the pixels decoded from them) are in use. Each role
    /// has its own pool of `IMAGES_PER_SLOT` × its request slots, so loaded images follow that
    /// server's capacity, not the number of queries in flight (128 queries × K candidates of
    /// megabyte photos would otherwise all be in memory while they wait for a slot), and one
    /// stage's queue cannot starve the other.
    pub async fn image_permit(
        &self,
        role: Role,
        n: u32,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.images.acquire(role, n).await
    }

    /// Counts one round through `stage` (0, 1, 2) on its progress bar.
    pub fn tick(&self, stage: usize) {
        if let Some(bars) = &self.progress {
            bars[stage].inc(1);
        }
    }
}

impl Ctx {
    /// The context of a run over `gallery`, with the clients of the roles its stages need.
    #[expect(
        clippy::too_many_arguments,
        reason = "each argument is a distinct part of a run, named at the call site"
    )]
    pub fn new(
        params: PipelineParams,
        dataset: DatasetName,
        prompts: Arc<PromptSet>,
        clients: &crate::serving::Clients,
        db: Arc<ImageDb>,
        gallery: Vec<crate::datasets::GalleryImage>,
        allowed: Option<HashSet<ImageKey>>,
        progress: Option<[indicatif::ProgressBar; 3]>,
    ) -> Result<Self, crate::config::ConfigError> {
        let slots = |role: Role| {
            clients
                .get(role)
                .map(|c| c.server().endpoints.len() * c.server().max_in_flight)
                .unwrap_or(0)
        };
        let images = ImagePools::new(slots(Role::Verifier), slots(Role::Evaluator));
        let allowed = allowed.map(|keys| Arc::new(db.allowed_ids(&keys)));
        Ok(Ctx {
            keep: 100.max(params.top_k + 1),
            params,
            dataset,
            family: Family::for_dataset(dataset),
            prompts,
            reasoner: clients.get(Role::Reasoner)?.clone(),
            verifier: clients.get(Role::Verifier).ok().cloned(),
            evaluator: clients.get(Role::Evaluator).ok().cloned(),
            embedder: clients.get(Role::Embedder)?.clone(),
            db,
            paths: gallery.into_iter().map(|g| (g.key, g.path)).collect(),
            allowed,
            progress,
            images,
            outside: Default::default(),
        })
    }

    /// Adds an image outside the gallery that queries may name as their reference.
    pub fn add_outside(&self, key: ImageKey, image: OutsideImage) {
        self.outside
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, image);
    }

    /// Forgets an image outside the gallery (`serve` removed its upload to stay within its
    /// disk allowance): queries naming it are refused from now on.
    pub fn remove_outside(&self, key: &ImageKey) {
        self.outside
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// The image outside the gallery named `key`, if one was added.
    pub fn outside_image(&self, key: &ImageKey) -> Option<OutsideImage> {
        self.outside
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// The stored caption of `key`: a gallery image's from the database, else an outside image's.
    pub fn caption(&self, key: &ImageKey) -> Option<String> {
        match self.db.caption(key) {
            Some(c) => Some(c.to_string()),
            None => self.outside_image(key).map(|o| o.caption),
        }
    }

    /// The file of `key`: a gallery image's, else an outside image's.
    pub fn path_of(&self, key: &ImageKey) -> Result<PathBuf, String> {
        match self.paths.get(key) {
            Some(p) => Ok(p.clone()),
            None => self
                .outside_image(key)
                .map(|o| o.path)
                .ok_or_else(|| format!("image {key} is not in the gallery")),
        }
    }

    /// The roles a run with these stages talks to (no captioner: galleries are indexed already).
    pub fn needed_roles(
        servers: &mut crate::config::ServersConfig,
        stages: &[crate::config::Stage],
    ) {
        use crate::config::Stage;
        servers.roles.retain(|r, _| match r {
            Role::Reasoner | Role::Embedder => true,
            Role::Verifier => stages.contains(&Stage::S2),
            Role::Evaluator => stages.contains(&Stage::S3),
            Role::Captioner => false,
        });
    }

    /// Whether the parity profile is on.
    pub fn parity(&self) -> bool {
        self.params.profile == Profile::Parity
    }

    /// Reads (and, when the role's server asks for it, shrinks) a gallery image for `role`.
    pub async fn image_for(
        &self,
        key: &ImageKey,
        max_side: Option<u32>,
    ) -> Result<EncodedImage, String> {
        let path = self.path_of(key)?;
        tokio::task::spawn_blocking(move || {
            images::load_for_role(&path, max_side).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("image loading crashed: {e}"))?
    }

    /// Decodes a gallery image into pixels (for the evaluator composite).
    pub async fn pixels(&self, key: &ImageKey) -> Result<image::DynamicImage, String> {
        let path = self.path_of(key)?;
        tokio::task::spawn_blocking(move || {
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            images::decode(&bytes, &path.display().to_string()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("image decoding crashed: {e}"))?
    }
}

/// Per-query counters.
#[derive(Debug, Default)]
pub struct Tally {
    /// HTTP attempts.
    pub requests: u32,
    /// Cache hits.
    pub cached: u32,
    /// Retries.
    pub retries: u32,
    /// Tokens per role.
    pub tokens: BTreeMap<String, Usage>,
    /// Fallbacks.
    pub fallbacks: Vec<Fallback>,
}

impl Tally {
    /// Counts one call.
    pub fn call(&mut self, role: Role, meta: &CallMeta, usage: Option<Usage>) {
        self.requests += meta.attempts;
        self.retries += meta.attempts.saturating_sub(1);
        self.cached += u32::from(meta.cached);
        if let (false, Some(u)) = (meta.cached, usage) {
            let t = self.tokens.entry(role.to_string()).or_default();
            t.prompt_tokens += u.prompt_tokens;
            t.completion_tokens += u.completion_tokens;
        }
    }

    /// Counts an exchange with re-asks.
    pub fn exchange(&mut self, role: Role, ex: &Exchange) {
        self.requests += ex.attempts;
        self.retries += ex.retries;
        self.cached += ex.cached;
        let t = self.tokens.entry(role.to_string()).or_default();
        t.prompt_tokens += ex.usage.prompt_tokens;
        t.completion_tokens += ex.usage.completion_tokens;
    }

    /// Records a fallback.
    pub fn fallback(
        &mut self,
        step: &str,
        round: usize,
        reason: impl Into<String>,
        raw: &str,
        action: &str,
    ) {
        self.fallbacks.push(Fallback {
            step: step.into(),
            round,
            reason: reason.into(),
            raw: crate::roles::cut(raw, 2000),
            action: action.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_evaluator_gets_images_while_the_verifier_pool_is_exhausted() {
        let pools = ImagePools::new(1, 1);
        assert_eq!(pools.bound, 2 + 4);
        // Stage 2 holds every verifier image and more candidates wait for one.
        let held = pools.acquire(Role::Verifier, 2).await;
        let waiting = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            pools.acquire(Role::Verifier, 1),
        )
        .await;
        assert!(waiting.is_err(), "the verifier pool is full");
        // A stage-3 turn (reference and candidate) still gets its images at once.
        let turn = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            pools.acquire(Role::Evaluator, 2),
        )
        .await;
        assert!(
            matches!(&turn, Ok(Some(_))),
            "stage 3 does not queue behind stage 2"
        );
        assert_eq!(pools.peak.load(std::sync::atomic::Ordering::Relaxed), 4);
        // And, while the first turn holds its two, a second turn's images are ready behind it.
        let next = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            pools.acquire(Role::Evaluator, 2),
        )
        .await;
        assert!(matches!(&next, Ok(Some(_))), "one turn ready behind");
        assert_eq!(pools.peak.load(std::sync::atomic::Ordering::Relaxed), 6);
        drop((held, turn, next));
    }
}
