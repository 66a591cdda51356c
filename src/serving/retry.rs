//! Backoff arithmetic: a pure function of the policy, the attempt number, the server's
//! `Retry-After` and a random number, so it can be tested exactly.

use std::time::Duration;

use crate::config::RetryPolicy;

/// Delay before retry number `attempt` (0 = the first retry).
///
/// Without `Retry-After` it is "equal jitter" exponential backoff: half of
/// `min(initial · 2^attempt, max_backoff)` plus a random share of the other half, with `unit` in
/// `[0, 1)`. With `Retry-After` the server's wish is honoured but capped at `max_retry_after_ms`,
/// because a server asking for an hour should not stall a run for an hour.
pub fn backoff_delay(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(Duration::from_millis(policy.max_retry_after_ms));
    }
    let exp = policy
        .initial_backoff_ms
        .saturating_mul(1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX));
    let cap = exp.min(policy.max_backoff_ms) as f64;
    let unit = unit.clamp(0.0, 1.0);
    Duration::from_secs_f64((cap / 2.0 + cap / 2.0 * unit) / 1000.0)
}

/// Parses a `Retry-After` header: seconds (integer or decimal), or an HTTP date (by `httpdate`),
/// read as the time left until then (zero for a date in the past). Anything else is `None`, and the
/// caller falls back to exponential backoff.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, std::time::SystemTime::now())
}

fn parse_retry_after_at(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86_400)),
    )
}

/// How long a failed replica is set aside: the cooldown doubled per consecutive failure, at most
/// 32 times the cooldown.
pub fn set_aside_for(policy: &RetryPolicy, consecutive_failures: u32) -> Duration {
    let factor = 1u64 << consecutive_failures.saturating_sub(1).min(5);
    Duration::from_millis(policy.replica_cooldown_ms.saturating_mul(factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            max_retry_after_ms: 2000,
            replica_cooldown_ms: 500,
        }
    }

    #[test]
    fn exponential_and_capped() {
        let p = policy();
        let at = |a, u| backoff_delay(&p, a, None, u).as_millis();
        assert_eq!(at(0, 1.0), 100);
        assert_eq!(at(1, 1.0), 200);
        assert_eq!(at(3, 1.0), 800);
        assert_eq!(at(4, 1.0), 1000);
        assert_eq!(at(60, 1.0), 1000);
        assert_eq!(at(2, 0.0), 200);
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let p = policy();
        assert_eq!(
            backoff_delay(&p, 0, Some(Duration::from_secs(1)), 0.5),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff_delay(&p, 0, Some(Duration::from_secs(3600)), 0.5),
            Duration::from_millis(2000)
        );
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:27:30 GMT").unwrap();
        assert_eq!(
            parse_retry_after_at(date, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after(date), Some(Duration::ZERO), "in the past");
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn set_aside_grows_then_stops() {
        let p = policy();
        assert_eq!(set_aside_for(&p, 1), Duration::from_millis(500));
        assert_eq!(set_aside_for(&p, 2), Duration::from_millis(1000));
        assert_eq!(set_aside_for(&p, 50), Duration::from_millis(16000));
    }
}
