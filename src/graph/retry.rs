//! Sending one request with retries: 429, 503, 504 and connection failures,
//! honouring `Retry-After`, otherwise capped exponential backoff with jitter.

use std::future::Future;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};

use super::{FetchError, GraphClient};

/// The longest `Retry-After` usersync honours; a longer one fails the fetch
/// rather than retrying early or hanging an hourly job.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// A complete answer: status, headers and the whole body.
#[derive(Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Why one attempt got no answer.
#[derive(Clone)]
pub(super) enum Failure {
    /// Not worth retrying: the request cannot be built or its answer cannot be used.
    Fatal(FetchError),
    /// A connection failure or timeout: retried.
    Transient(String),
}

impl Failure {
    pub(super) fn of(e: &reqwest::Error) -> Self {
        if e.is_builder() {
            Self::Fatal(FetchError::Request(chain(e)))
        } else {
            Self::Transient(chain(e))
        }
    }
}

impl GraphClient {
    /// Sends `build()` until it gets an answer that is not retried, or gives up. The
    /// request is built anew for every attempt (building can fail: a certificate signs).
    pub(super) async fn try_send(
        &self,
        url: &str,
        build: impl Fn() -> Result<RequestBuilder, FetchError>,
    ) -> Result<Answer, FetchError> {
        self.with_retries(url, || async {
            let request = build().map_err(Failure::Fatal)?;
            self.stats.count_request();
            attempt(request).await
        })
        .await
    }

    /// Runs `attempt` until it gives an answer that is not retried, or gives up.
    pub(super) async fn with_retries<F: Future<Output = Result<Answer, Failure>>>(
        &self,
        url: &str,
        attempt: impl Fn() -> F,
    ) -> Result<Answer, FetchError> {
        let mut retries = 0u32;
        loop {
            let answer = attempt().await;
            if let Ok(a) = &answer {
                self.stats.note_limit(&a.headers);
            }
            let (why, retry_after) = match answer {
                Ok(a) if is_retryable(a.status) => (
                    format!("HTTP {}", a.status),
                    retry_after(&a.headers, SystemTime::UNIX_EPOCH + crate::model::date::since_epoch()),
                ),
                Ok(a) => return Ok(a),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(why)) => (why, None),
            };
            if retries >= self.max_retries {
                return Err(FetchError::Exhausted { url: url.to_owned(), attempts: retries + 1, last: why });
            }
            retries += 1;
            self.stats.count_retry();
            let delay = retry_after.unwrap_or_else(|| backoff(retries));
            if delay > MAX_RETRY_AFTER {
                return Err(FetchError::RetryAfterTooLong {
                    url: url.to_owned(),
                    seconds: delay.as_secs(),
                    limit: MAX_RETRY_AFTER.as_secs(),
                });
            }
            tracing::warn!(url, reason = %why, wait_ms = delay.as_millis(), retry = retries, max_retries = self.max_retries, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// The most bytes of one response body usersync reads, after decompression: a hostile or
/// broken endpoint cannot make it exhaust memory. A Graph page of 999 members is about
/// 200 KB; a batch of 20 pages about 4 MB.
pub const BODY_CAP: usize = 64 << 20;

/// Sends `req` and reads its whole answer, at most [`BODY_CAP`] bytes of body.
pub(super) async fn attempt(req: RequestBuilder) -> Result<Answer, Failure> {
    let mut resp = req.send().await.map_err(|e| Failure::of(&e))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let too_large = |url: &reqwest::Url| Failure::Fatal(FetchError::TooLarge { url: url.to_string(), limit: BODY_CAP });
    if resp.content_length().is_some_and(|n| n > BODY_CAP as u64) {
        return Err(too_large(resp.url()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Failure::of(&e))? {
        if body.len() + chunk.len() > BODY_CAP {
            return Err(too_large(resp.url()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer { status, headers, body })
}

pub(super) fn is_retryable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 503 | 504)
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `Retry-After` as decimal seconds or an HTTP date.
#[must_use]
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Delay before retry `n` (1-based): 1 s, 2 s, 4 s … capped at 60 s, then
/// "equal jitter": a random point in the upper half.
#[must_use]
pub fn backoff(n: u32) -> Duration {
    let base = Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(BACKOFF_CAP);
    let half = base / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after(&h("2.128"), now), Some(Duration::from_millis(2128)));
        assert_eq!(retry_after(&h("10"), now), Some(Duration::from_secs(10)));
        assert_eq!(retry_after(&h("Wed, 21 Oct 2015 07:28:10 GMT"), now), Some(Duration::from_secs(10)));
        assert_eq!(retry_after(&h("Wed, 21 Oct 2015 07:27:00 GMT"), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&h("-1"), now), None);
        assert_eq!(retry_after(&h("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        for _ in 0..100 {
            let b1 = backoff(1);
            assert!(b1 >= Duration::from_millis(500) && b1 <= Duration::from_secs(1));
            let b3 = backoff(3);
            assert!(b3 >= Duration::from_secs(2) && b3 <= Duration::from_secs(4));
            let b20 = backoff(20);
            assert!(b20 >= Duration::from_secs(30) && b20 <= Duration::from_secs(60));
        }
    }
}
