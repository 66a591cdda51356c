//! Watching a role's servers during a run: which `/metrics` pages stand for each endpoint (its
//! own, or each worker's behind vLLM's router, listed by [`router_workers`]), read at the start
//! and the end and sampled in between by [`Monitor`], whose `finish` turns them into
//! [`ServerFigures`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::page::{Reading, read_page};
use super::{ClientSide, ServerFigures, figures};
use crate::serving::RoleClient;

/// Most workers read behind one router: a longer list is cut (and says nothing more useful).
const MAX_WORKERS: usize = 64;

/// The worker URLs of vLLM's router's `GET /list_workers` answer (`{"urls": ["http://...", ...]}`),
/// each once, at most [`MAX_WORKERS`]; `None` for any other answer (a vLLM server's 404, a page
/// that is not that shape, a URL that is not plain http(s) with a host, or carries a user name or
/// password).
pub fn router_workers(body: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut urls: Vec<String> = Vec::new();
    for u in v.get("urls")?.as_array()? {
        let text = u.as_str()?.trim_end_matches('/');
        let parsed = reqwest::Url::parse(text).ok()?;
        let plain = matches!(parsed.scheme(), "http" | "https")
            && parsed.host().is_some()
            && parsed.username().is_empty()
            && parsed.password().is_none();
        if !plain {
            return None;
        }
        // The URL as parsed ("http:/host" reads as "http://host"), without its trailing slash.
        let url = parsed.as_str().trim_end_matches('/').to_string();
        if !urls.contains(&url) && urls.len() < MAX_WORKERS {
            urls.push(url);
        }
    }
    Some(urls)
}

/// The pages that stand for endpoint `index`: its own `/metrics`, or each worker's when the
/// endpoint is vLLM's router. The flag says which.
async fn pages_of(client: &RoleClient, index: usize, limit: Duration) -> (Vec<String>, bool) {
    let root = client.endpoint_root(index);
    let listed = tokio::time::timeout(limit, client.get_url(&format!("{root}/list_workers"))).await;
    match listed {
        Ok(Ok((200, body))) => match router_workers(&body) {
            Some(urls) if !urls.is_empty() => {
                (urls.iter().map(|u| format!("{u}/metrics")).collect(), true)
            }
            _ => (vec![format!("{root}/metrics")], false),
        },
        _ => (vec![format!("{root}/metrics")], false),
    }
}

/// Reads one page for `served`; `None` if it cannot be had within `limit`.
async fn scrape(client: &RoleClient, url: &str, limit: Duration) -> Option<Reading> {
    let served = client.server().model.clone();
    match tokio::time::timeout(limit, client.get_url(url)).await {
        Ok(Ok((200, body))) => Some(read_page(&body, &served)),
        _ => None,
    }
}

/// Every page of a role, read at once.
async fn scrape_all(
    client: &RoleClient,
    pages: &[String],
    limit: Duration,
) -> Vec<Option<Reading>> {
    futures::future::join_all(pages.iter().map(|u| scrape(client, u, limit))).await
}

/// A role's readings at the start of a run, and the samples taken since.
struct Watched {
    client: RoleClient,
    /// The `/metrics` URLs read, fixed at the start.
    pages: Vec<String>,
    /// How many of them are router workers.
    router_workers: usize,
    start: Vec<Option<Reading>>,
    samples: Vec<Vec<Option<Reading>>>,
}

/// Reads the servers' pages at the start of a run and samples them until [`Monitor::finish`].
pub struct Monitor {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Watched>>,
}

/// How long one page may take before it counts as not read.
const SCRAPE_LIMIT: Duration = Duration::from_secs(2);

impl Monitor {
    /// Reads every endpoint's page now (the run's start), then samples every `every`.
    pub async fn start(clients: Vec<RoleClient>, every: Duration) -> Monitor {
        // Every role at once, within one limit per step: a server that does not answer delays
        // the run's start by twice SCRAPE_LIMIT at most (the router question, then the page).
        let starts = futures::future::join_all(clients.iter().map(|c| async move {
            let given = &c.server().metrics_urls;
            if !given.is_empty() {
                let start = scrape_all(c, given, SCRAPE_LIMIT).await;
                return (given.clone(), 0, start);
            }
            let n = c.server().endpoints.len();
            let found =
                futures::future::join_all((0..n).map(|i| pages_of(c, i, SCRAPE_LIMIT))).await;
            // Each server once, even when two routers share workers or a worker is an endpoint.
            let mut pages: Vec<String> = Vec::new();
            let mut router_workers = 0;
            for (list, router) in found {
                for p in list {
                    if !pages.contains(&p) {
                        router_workers += usize::from(router);
                        pages.push(p);
                    }
                }
            }
            let start = scrape_all(c, &pages, SCRAPE_LIMIT).await;
            (pages, router_workers, start)
        }))
        .await;
        let mut watched: Vec<Watched> = clients
            .into_iter()
            .zip(starts)
            .map(|(client, (pages, router_workers, start))| Watched {
                client,
                pages,
                router_workers,
                start,
                samples: Vec::new(),
            })
            .collect();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // Roles whose servers answered nothing at the start are not sampled.
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    () = tokio::time::sleep(every) => {}
                }
                let live: Vec<&mut Watched> = watched
                    .iter_mut()
                    .filter(|w| w.start.iter().any(Option::is_some))
                    .collect();
                let ticks = futures::future::join_all(
                    live.iter()
                        .map(|w| scrape_all(&w.client, &w.pages, SCRAPE_LIMIT)),
                );
                // The run's end does not wait for a sample in progress.
                let ticks = tokio::select! {
                    _ = stopped.changed() => break,
                    t = ticks => t,
                };
                for (w, tick) in live.into_iter().zip(ticks) {
                    w.samples.push(tick);
                }
            }
            watched
        });
        Monitor { stop, task }
    }

    /// Reads every page once more (the run's end) and returns each role's figures.
    pub async fn finish(self) -> BTreeMap<String, ServerFigures> {
        let _ = self.stop.send(true);
        let Ok(watched) = self.task.await else {
            return BTreeMap::new();
        };
        let ends = futures::future::join_all(watched.iter().map(|w| async {
            if w.start.iter().any(Option::is_some) {
                scrape_all(&w.client, &w.pages, SCRAPE_LIMIT).await
            } else {
                vec![None; w.start.len()]
            }
        }))
        .await;
        let mut out = BTreeMap::new();
        for (w, end) in watched.into_iter().zip(ends) {
            let stats = w.client.stats().snapshot();
            let client = ClientSide {
                endpoints: w.client.server().endpoints.len(),
                max_in_flight: w.client.server().max_in_flight,
                attempts: stats.attempts,
                slot_waits: stats.slot_waits,
            };
            let mut f = figures(&w.start, &end, &w.samples, client);
            f.router_workers = w.router_workers;
            out.insert(w.client.role().to_string(), f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routers_worker_list_is_read_and_nothing_else_is() {
        let body = r#"{"urls":["http://127.0.0.1:8013","http://10.0.0.2:8003/"]}"#;
        assert_eq!(
            router_workers(body),
            Some(vec![
                "http://127.0.0.1:8013".to_string(),
                "http://10.0.0.2:8003".to_string()
            ])
        );
        assert_eq!(
            router_workers(r#"{"urls":["http://a:1","http://a:1/","http://b:2"]}"#),
            Some(vec!["http://a:1".to_string(), "http://b:2".to_string()]),
            "each worker once"
        );
        // Found by tests/fuzz.rs: a URL is returned as parsed, so only http(s):// comes out.
        assert_eq!(
            router_workers(r#"{"urls":["http:/127.0.0.1:8013"]}"#),
            Some(vec!["http://127.0.0.1:8013".to_string()])
        );
        let many: Vec<String> = (0..100).map(|i| format!("http://w{i}:8000")).collect();
        let body = serde_json::json!({ "urls": many }).to_string();
        assert_eq!(router_workers(&body).map(|u| u.len()), Some(MAX_WORKERS));
        for other in [
            r#"{"detail":"Not Found"}"#,
            r#"{"urls":"http://a"}"#,
            r#"{"urls":[1]}"#,
            r#"{"urls":["file:///etc/passwd"]}"#,
            r#"{"urls":["http://user:pw@evil:80"]}"#,
            r#"{"urls":["http://"]}"#,
            r#"{"urls":["ftp://files:21"]}"#,
            "not json",
        ] {
            assert_eq!(router_workers(other), None, "{other}");
        }
    }
}
