//! The reader of a server's Prometheus `/metrics` page: its sample lines ([`samples`]), the
//! series this module knows by the names vLLM has given them, one page's values for one served
//! model ([`read_page`]) and the quantiles of its queue-time histogram.

use std::collections::BTreeMap;

/// A counter or gauge this module reads, by the names vLLM has used for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Series {
    PromptTokens,
    GenerationTokens,
    PrefixQueries,
    PrefixHits,
    OldPrefixQueries,
    OldPrefixHits,
    PromptTokensCached,
    MmQueries,
    MmHits,
    Preemptions,
    KvUsage,
    OldKvUsage,
    Running,
    Waiting,
}

impl Series {
    /// The series a metric name stands for: vLLM ≥ 0.9 names, and the `gpu_` ones before them.
    pub(super) fn of(name: &str) -> Option<Series> {
        Some(match name {
            "vllm:prompt_tokens_total" => Series::PromptTokens,
            "vllm:generation_tokens_total" => Series::GenerationTokens,
            "vllm:prefix_cache_queries_total" => Series::PrefixQueries,
            "vllm:prefix_cache_hits_total" => Series::PrefixHits,
            "vllm:gpu_prefix_cache_queries_total" => Series::OldPrefixQueries,
            "vllm:gpu_prefix_cache_hits_total" => Series::OldPrefixHits,
            "vllm:prompt_tokens_cached_total" => Series::PromptTokensCached,
            "vllm:mm_cache_queries_total" => Series::MmQueries,
            "vllm:mm_cache_hits_total" => Series::MmHits,
            "vllm:num_preemptions_total" => Series::Preemptions,
            "vllm:kv_cache_usage_perc" => Series::KvUsage,
            "vllm:gpu_cache_usage_perc" => Series::OldKvUsage,
            "vllm:num_requests_running" => Series::Running,
            "vllm:num_requests_waiting" => Series::Waiting,
            _ => return None,
        })
    }
}

/// The series of one `/metrics` page that concern one served model, summed over engines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub(super) values: BTreeMap<Series, f64>,
    /// `vllm:request_queue_time_seconds` buckets: (upper bound, cumulative count), ascending.
    pub(super) queue: Vec<(f64, f64)>,
}

impl Reading {
    /// The value read for a metric name this module knows (`vllm:prompt_tokens_total`, ...).
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.values.get(&Series::of(metric)?).copied()
    }

    /// Whether the page had any series this module reads.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.queue.is_empty()
    }
}

/// One sample line of a Prometheus text page: its metric name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleLine<'a> {
    /// Metric name (with any `_bucket`/`_total` suffix, as written).
    pub name: &'a str,
    /// Label pairs, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

/// The sample lines of a Prometheus text page that can be read; comments (`# HELP`, `# TYPE`)
/// and lines that are not samples are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = SampleLine<'_>> {
    text.lines().filter_map(sample_line)
}

fn sample_line(line: &str) -> Option<SampleLine<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            while chars
                .peek()
                .is_some_and(|(_, c)| *c == ',' || c.is_whitespace())
            {
                chars.next();
            }
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
            }
            let key = inner[start..eq?].trim();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(SampleLine {
        name,
        labels,
        value,
    })
}

/// Reads a Prometheus text page: the series for `served` (samples labelled with another
/// `model_name` are left out; unlabelled ones are kept), summed over engines.
pub fn read_page(text: &str, served: &str) -> Reading {
    let mut out = Reading::default();
    let mut queue: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples(text) {
        let label = |k: &str| {
            s.labels
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        if label("model_name").is_some_and(|m| m != served) || !s.value.is_finite() {
            continue;
        }
        if let Some(series) = Series::of(s.name) {
            let v = out.values.entry(series).or_default();
            if matches!(series, Series::KvUsage | Series::OldKvUsage) {
                // A share per engine: the fullest one, not their sum.
                *v = v.max(s.value);
            } else {
                *v += s.value;
            }
        } else if s.name == "vllm:request_queue_time_seconds_bucket" {
            let le = match label("le") {
                Some("+Inf" | "Inf") => f64::INFINITY,
                Some(v) => match v.parse::<f64>() {
                    Ok(x) if !x.is_nan() => x,
                    _ => continue,
                },
                None => continue,
            };
            queue.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
    }
    out.queue = queue.into_values().collect();
    out.queue.sort_by(|a, b| a.0.total_cmp(&b.0));
    // The old names stand in only where the new ones are missing.
    for (old, new) in [
        (Series::OldPrefixQueries, Series::PrefixQueries),
        (Series::OldPrefixHits, Series::PrefixHits),
        (Series::OldKvUsage, Series::KvUsage),
    ] {
        if let Some(v) = out.values.remove(&old) {
            out.values.entry(new).or_insert(v);
        }
    }
    out
}

/// An upper bound on the `q` quantile of a cumulative histogram: the upper bound of the bucket
/// that holds it (the open last bucket answers its lower bound, so there it is a lower bound:
/// the quantile is past vLLM's largest bucket, 960 s). Not interpolated: with vLLM's
/// buckets (0.3 s, 0.5 s, ...) interpolation would report 0.15 s for queues that were all under
/// a millisecond. `None` when empty.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower = 0.0;
    for &(upper, count) in buckets {
        if count >= rank {
            return Some(if upper.is_infinite() { lower } else { upper });
        }
        lower = upper;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="verifier"} 1000.0
vllm:prompt_tokens_total{engine="0",model_name="other"} 77.0
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="verifier"} 800.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="verifier"} 200.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="verifier"} 3.0
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_bucket{engine="0",le="0.5",model_name="verifier"} 5.0
vllm:request_queue_time_seconds_bucket{engine="0",le="1.0",model_name="verifier"} 9.0
vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf",model_name="verifier"} 10.0
vllm:request_queue_time_seconds_count{engine="0",model_name="verifier"} 10.0
"#;

    #[test]
    fn a_page_is_read_for_its_served_model_only() {
        let r = read_page(PAGE, "verifier");
        assert_eq!(r.values[&Series::PromptTokens], 1000.0);
        assert_eq!(r.values[&Series::Waiting], 3.0);
        assert_eq!(r.queue, vec![(0.5, 5.0), (1.0, 9.0), (f64::INFINITY, 10.0)]);
        assert!(read_page(PAGE, "nobody").is_empty());
        assert!(read_page("not a metrics page {{{", "verifier").is_empty());
    }

    #[test]
    fn sample_lines_with_escapes_timestamps_and_junk() {
        let page = "# TYPE x counter\nx_total{a=\"q\\\"uote\",b=\"new\\nline\",} 3 1700000000000\nbad line here\n{no=\"name\"} 1\ny +Inf\nz{a=\"unterminated} 2\n";
        let got: Vec<SampleLine> = samples(page).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "x_total");
        assert_eq!(
            got[0].labels,
            vec![("a", "q\"uote".to_string()), ("b", "new\nline".to_string())]
        );
        assert_eq!(got[0].value, 3.0);
        assert_eq!((got[1].name, got[1].value), ("y", f64::INFINITY));
    }

    #[test]
    fn quantiles_are_the_upper_bounds_of_their_buckets() {
        let b = [(0.5, 5.0), (1.0, 9.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.5, &b), Some(0.5));
        assert_eq!(histogram_quantile(0.7, &b), Some(1.0));
        // The open last bucket answers its lower bound.
        assert_eq!(histogram_quantile(0.99, &b), Some(1.0));
        assert_eq!(histogram_quantile(0.5, &[]), None);
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0)]), None);
    }
}
