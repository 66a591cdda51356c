//! `imagescope doctor`: checks every role's every endpoint before a long run is started.
//!
//! Per endpoint: is it reachable (`/health`, where the server has one), does it serve the
//! configured model (`/models`), and does one tiny real round trip work (a short chat; an image
//! chat for vision roles; one text and, where supported, one image embedding with its dimension).
//! The report is a table; any failed check makes the command exit non-zero.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{ApiFlavour, ConfigError, Role, RoleServer, ServersConfig};
use crate::images::EncodedImage;
use crate::serving::{ChatRequest, EmbedInput, ErrorKind, Message, Part, RoleClient, Speaker};

/// Outcome of one check.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "lowercase")]
pub enum Check {
    /// Passed, with a short note.
    Ok(String),
    /// Not applicable to this server.
    Skipped(String),
    /// Failed, with the reason.
    Fail(String),
}

impl Check {
    fn is_fail(&self) -> bool {
        matches!(self, Check::Fail(_))
    }
    fn cell(&self) -> String {
        match self {
            Check::Ok(s) => format!("ok {s}"),
            Check::Skipped(s) => format!("- {s}"),
            Check::Fail(_) => "FAIL".into(),
        }
    }
}

/// The checks of one endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointReport {
    /// Role.
    pub role: Role,
    /// Base URL.
    pub endpoint: String,
    /// `/health` probe.
    pub health: Check,
    /// `/models` lists the configured model.
    pub model: Check,
    /// One real request.
    pub round_trip: Check,
    /// Round-trip latency in milliseconds.
    pub latency_ms: Option<u64>,
}

impl EndpointReport {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.health.is_fail() || self.model.is_fail() || self.round_trip.is_fail()
    }

    /// The failure reasons, each naming the role and endpoint.
    pub fn reasons(&self) -> Vec<String> {
        [
            ("health", &self.health),
            ("model", &self.model),
            ("round trip", &self.round_trip),
        ]
        .into_iter()
        .filter_map(|(what, c)| match c {
            Check::Fail(r) => Some(format!("{} @ {}: {what}: {r}", self.role, self.endpoint)),
            _ => None,
        })
        .collect()
    }
}

/// Loads a servers file, or the servers file named by an experiment file.
pub fn load_servers(path: &Path) -> Result<(ServersConfig, std::path::PathBuf), ConfigError> {
    let text = crate::config::read_text(path)?;
    let value: toml::Table = crate::config::parse_toml(&text, path)?;
    if value.contains_key("roles") {
        Ok((ServersConfig::parse(&text, path)?, path.to_path_buf()))
    } else if value.contains_key("servers") {
        let exp = crate::config::ExperimentConfig::load(path)?;
        Ok((exp.servers, exp.servers_path))
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            key: "roles".into(),
            message:
                "neither a servers file ([roles.*] tables) nor an experiment file (servers = ...)"
                    .into(),
        })
    }
}

/// Runs every check of every endpoint, endpoints concurrently.
pub async fn run(
    servers: &ServersConfig,
    path: &Path,
    timeout: Duration,
) -> Result<Vec<EndpointReport>, ConfigError> {
    let mut jobs = Vec::new();
    for (role, server) in &servers.roles {
        for endpoint in &server.endpoints {
            let mut one = server.clone();
            one.endpoints = vec![endpoint.clone()];
            one.retry.max_retries = 0;
            one.timeout_secs = one.timeout_secs.min(timeout.as_secs_f64());
            let client = RoleClient::new(*role, &one, path)?;
            jobs.push(check_endpoint(client, *role, one));
        }
    }
    Ok(futures::future::join_all(jobs).await)
}

async fn check_endpoint(client: RoleClient, role: Role, server: RoleServer) -> EndpointReport {
    let endpoint = server.endpoints[0].trim_end_matches('/').to_string();
    let health = match server.api {
        ApiFlavour::Openai => Check::Skipped("no health route".into()),
        _ => match client.probe_get(0, "/health", true).await {
            Ok((200, _)) => Check::Ok("200".into()),
            Ok((status, body)) => {
                Check::Fail(format!("/health answered HTTP {status}: {}", body.trim()))
            }
            Err(e) => Check::Fail(e.to_string()),
        },
    };
    let model = match client.probe_get(0, "/models", false).await {
        Ok((200, body)) => {
            let served = crate::serving::models::served_names(&body);
            if served.iter().any(|m| m == &server.model) {
                Check::Ok(String::new())
            } else if served.is_empty() {
                Check::Fail(format!("/models listed no models: {}", body.trim()))
            } else {
                Check::Fail(format!(
                    "configured model {:?} is not served; the server has {}",
                    server.model,
                    served.join(", ")
                ))
            }
        }
        Ok((404, _)) if server.api == ApiFlavour::Tgi => Check::Skipped("no /models".into()),
        Ok((status, body)) => {
            Check::Fail(format!("/models answered HTTP {status}: {}", body.trim()))
        }
        Err(e) => Check::Fail(e.to_string()),
    };
    let start = Instant::now();
    let round_trip =
        if health.is_fail() && matches!(&health, Check::Fail(m) if m.starts_with("connection")) {
            Check::Fail("skipped: the server is unreachable".into())
        } else {
            round_trip(&client, role, &server).await
        };
    let latency_ms = (!round_trip.is_fail()).then(|| start.elapsed().as_millis() as u64);
    EndpointReport {
        role,
        endpoint,
        health,
        model,
        round_trip,
        latency_ms,
    }
}

/// A small, real image: a 64×64 colour gradient.
pub fn probe_image() -> EncodedImage {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding a valid in-memory RGB image to PNG cannot fail; an empty buffer would be refused below.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    EncodedImage::from_bytes(out.into_inner(), "doctor probe image")
        .unwrap_or_else(|_| unreachable_probe())
}

#[expect(
    clippy::panic,
    reason = "a PNG the image crate just encoded is always recognised"
)]
fn unreachable_probe() -> EncodedImage {
    panic!("probe image not recognised as PNG")
}

async fn round_trip(client: &RoleClient, role: Role, server: &RoleServer) -> Check {
    if role == Role::Embedder {
        let text = match client
            .embed(&[EmbedInput::Text("a photo of a dog".into())])
            .await
        {
            Ok(r) => r.value.into_iter().next().map_or(0, |v| v.len()),
            Err(e) => return Check::Fail(format!("text embedding: {}", e.kind)),
        };
        if let Some(fail) = text_window(client).await {
            return fail;
        }
        if !server.embeds_images() {
            return Check::Ok(format!("text dim {text} (text only)"));
        }
        match client.embed(&[EmbedInput::Image(probe_image())]).await {
            Ok(r) => {
                let image = r.value.into_iter().next().map_or(0, |v| v.len());
                if image == text {
                    Check::Ok(format!("dim {text} (text+image)"))
                } else {
                    Check::Fail(format!(
                        "text vectors have {text} dimensions but image vectors {image}"
                    ))
                }
            }
            Err(e) => Check::Fail(format!("image embedding: {}", e.kind)),
        }
    } else {
        let mut parts = Vec::new();
        let sends_images =
            role.sees_images() && server.grounding == crate::config::Grounding::Image;
        if sends_images {
            parts.push(Part::Image(probe_image()));
            parts.push(Part::Text(
                "What colours does this image show? Answer in a few words.".into(),
            ));
        } else {
            parts.push(Part::Text("Reply with the single word OK.".into()));
        }
        let req = ChatRequest {
            messages: vec![Message {
                speaker: Speaker::User,
                parts,
            }],
            max_tokens: Some(16),
            ..Default::default()
        };
        match client.chat(&req).await {
            Ok(r) => Check::Ok(format!("{:?}", shorten(&r.value.content, 24))),
            Err(e) => Check::Fail(match &e.kind {
                ErrorKind::Http { .. } | ErrorKind::Connect(_) | ErrorKind::Timeout(_) => {
                    e.kind.to_string()
                }
                other => format!(
                    "{} chat: {other}",
                    if role.sees_images() { "image" } else { "text" }
                ),
            }),
        }
    }
}

/// Words the two texts of the window probe share before they differ: past 20 tokens (where
/// infinity 0.0.78 cuts a hub CLIP) and, with every word one letter, inside CLIP's 77 tokens both for
/// a BPE tokenizer (a letter and its space are one token) and for a byte-level one (two).
const WINDOW_PROBE_WORDS: usize = 27;

/// Two texts of single letters that differ only after their first [`WINDOW_PROBE_WORDS`] words.
pub fn window_probe_texts() -> [String; 2] {
    let head: Vec<String> = (0..WINDOW_PROBE_WORDS)
        .map(|i| char::from(b'a' + (i % 26) as u8).to_string())
        .collect();
    let head = head.join(" ");
    [format!("{head} x y z"), format!("{head} q r s")]
}

/// Whether the embedder reads a description to its end: the same vector for two texts that differ
/// only after their 27th word means it cuts text early (found on infinity 0.0.78, which reads a
/// CLIP's window from the config's generation default of 20 tokens), and every longer description
/// would be embedded by its first words only. `None` when it reads them, or the probe failed (the
/// text round trip above says why).
async fn text_window(client: &RoleClient) -> Option<Check> {
    let [a, b] = window_probe_texts();
    let reply = client
        .embed(&[EmbedInput::Text(a), EmbedInput::Text(b)])
        .await
        .ok()?;
    let [x, y] = reply.value.as_slice() else {
        return None;
    };
    let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
    let norms =
        x.iter().map(|p| p * p).sum::<f32>().sqrt() * y.iter().map(|q| q * q).sum::<f32>().sqrt();
    (norms > 0.0 && dot / norms > 0.999_999).then(|| {
        Check::Fail(format!(
            "the embedder gave one vector to two texts that differ only after word {WINDOW_PROBE_WORDS}: it cuts text short, so longer descriptions are embedded by their first words only (infinity 0.0.78 cuts a CLIP at 20 tokens unless the model's config.json has \"max_length\": 77; see launch/infinity/embedder.sh)"
        ))
    })
}

fn shorten(s: &str, n: usize) -> String {
    let s = s.trim().replace(['\n', '\r'], " ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Formats the reports as a table followed by one line per failure.
pub fn render(reports: &[EndpointReport]) -> String {
    let header = [
        "role",
        "endpoint",
        "health",
        "model",
        "round trip",
        "latency",
    ];
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            [
                r.role.to_string(),
                r.endpoint.clone(),
                r.health.cell(),
                r.model.cell(),
                r.round_trip.cell(),
                r.latency_ms.map_or("-".into(), |ms| format!("{ms} ms")),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    let failures: Vec<String> = reports.iter().flat_map(EndpointReport::reasons).collect();
    if failures.is_empty() {
        out.push_str(&format!("\nall {} endpoint(s) healthy\n", reports.len()));
    } else {
        out.push_str(&format!("\n{} problem(s):\n", failures.len()));
        for f in failures {
            out.push_str(&format!("  - {f}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_probe_texts_differ_only_after_their_shared_words() {
        let [a, b] = window_probe_texts();
        let (a, b): (Vec<&str>, Vec<&str>) = (
            a.split_whitespace().collect(),
            b.split_whitespace().collect(),
        );
        assert_eq!(a[..WINDOW_PROBE_WORDS], b[..WINDOW_PROBE_WORDS]);
        assert_ne!(a[WINDOW_PROBE_WORDS], b[WINDOW_PROBE_WORDS]);
        // Inside CLIP's 77 tokens even for a byte-level tokenizer (start and end tokens besides).
        for t in window_probe_texts() {
            assert!(t.len() <= 75, "{} bytes", t.len());
        }
    }
}
