//! Page requests in flight: at most `[http] max_concurrency` HTTP requests to Graph at
//! once, and pages of different groups that wait for one travel together in a JSON batch
//! (`POST /v1.0/$batch`, at most 20 requests).
//!
//! There is no dispatcher task. A page request joins the queue and then, while it has no
//! answer, takes a request slot and sends its share of what waits at the head of the
//! queue: one page as a plain `GET`, several (same Graph, same token) as one batch. Each
//! answer goes back to its page, whose retry loop treats it exactly like the answer of a
//! plain `GET`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{oneshot, Semaphore};

use super::retry::{attempt, is_retryable, Answer, Failure};
use super::{graph_error, FetchError, GraphClient};
use crate::config::secret::Secret;

/// Graph takes at most this many requests in one batch.
pub const MAX_BATCH: usize = 20;

type Reply = oneshot::Sender<Result<Answer, Failure>>;

/// One page waiting to be sent.
struct Waiting {
    /// Which task waits for it.
    id: u64,
    /// The absolute page URL.
    url: String,
    /// The page URL relative to `{graph}/v1.0`, when it can go in a batch.
    relative: Option<String>,
    /// `{graph}/v1.0`
    base: String,
    token: Secret,
    reply: Reply,
}

/// The queue of pages and the request slots.
pub(super) struct Requests {
    queue: Mutex<VecDeque<Waiting>>,
    slots: Semaphore,
    /// Slots taken by tasks that have not yet taken their pages.
    claimed: AtomicUsize,
    /// The id of the next page queued.
    next_id: std::sync::atomic::AtomicU64,
}

impl Requests {
    pub(super) fn new(max_concurrency: usize) -> Self {
        Self {
            queue: Mutex::default(),
            slots: Semaphore::new(max_concurrency.max(1)),
            claimed: AtomicUsize::new(0),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The task's own page `own`, if nobody took it yet, and the pages that share its
    /// request: the queue is spread over the free request slots (this one included), at
    /// most 20 pages a request. So pages share a request only when there are more of them
    /// than slots, and a slow page (a batch is answered when its last page is) holds up as
    /// few others as possible. A task sends its own page, never only another's: carrying
    /// a slow page of another app (a gateway's, throttled) would hold up its own group.
    fn take(&self, own: u64) -> Vec<Waiting> {
        let mut q = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let others = self.claimed.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let share = q.len().div_ceil(self.slots.available_permits() + others + 1).clamp(1, MAX_BATCH);
        let Some(head) = q.iter().position(|w| w.id == own).and_then(|i| q.remove(i)) else { return Vec::new() };
        let mut out = vec![head];
        if out[0].relative.is_some() {
            let mut i = 0;
            while i < q.len() && out.len() < share {
                if q[i].relative.is_some() && q[i].base == out[0].base && q[i].token == out[0].token {
                    out.extend(q.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        out
    }
}

/// `{"responses": [...]}`
#[derive(Deserialize)]
struct BatchAnswer<'a> {
    #[serde(borrow)]
    responses: Vec<ItemAnswer<'a>>,
}

#[derive(Deserialize)]
struct ItemAnswer<'a> {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, serde_json::Value>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

impl GraphClient {
    /// One attempt at `GET url` with `token`, sent alone or in a batch with other pages.
    pub(super) async fn get_page(&self, graph: &str, url: &str, token: &Secret) -> Result<Answer, Failure> {
        let base = format!("{}/v1.0", graph.trim_end_matches('/'));
        // Batched URLs are relative to the version; anything else goes alone.
        let relative = url.strip_prefix(&base).filter(|r| r.starts_with('/')).map(str::to_owned);
        let (reply, mut answer) = oneshot::channel();
        let id = self.requests.next_id.fetch_add(1, Ordering::Relaxed);
        self.requests.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(Waiting {
            id,
            url: url.to_owned(),
            relative,
            base,
            token: token.clone(),
            reply,
        });
        loop {
            let slot = tokio::select! {
                biased;
                a = &mut answer => return a.unwrap_or_else(|_| Err(Failure::Fatal(stopped(url)))),
                s = self.requests.slots.acquire() => s,
            };
            let Ok(_slot) = slot else { return Err(Failure::Fatal(stopped(url))) };
            self.requests.claimed.fetch_add(1, Ordering::Relaxed);
            // Pages woken by the same answer queue up first, to share this request.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let pages = self.requests.take(id);
            if pages.is_empty() {
                // Another task took this page and is sending it.
                break;
            }
            self.send_pages(pages).await;
        }
        answer.await.unwrap_or_else(|_| Err(Failure::Fatal(stopped(url))))
    }

    async fn send_pages(&self, mut pages: Vec<Waiting>) {
        self.stats.count_request();
        if pages.len() == 1 {
            if let Some(p) = pages.pop() {
                tracing::debug!(url = p.url, "GET");
                let req = self
                    .http(&p.url)
                    .get(&p.url)
                    .bearer_auth(p.token.expose())
                    .header(super::THROTTLE_PRIORITY.0, super::THROTTLE_PRIORITY.1)
                    .header(ACCEPT, "application/json");
                let _ = p.reply.send(attempt(req).await);
            }
            return;
        }
        let base = pages[0].base.clone();
        let url = format!("{base}/$batch");
        let requests: Vec<_> = pages
            .iter()
            .enumerate()
            .map(|(i, p)| serde_json::json!({"id": i.to_string(), "method": "GET", "url": p.relative}))
            .collect();
        let body = serde_json::json!({ "requests": requests }).to_string();
        tracing::debug!(url, pages = pages.len(), "POST (JSON batch)");
        let req = self
            .http(&url)
            .post(&url)
            .bearer_auth(pages[0].token.expose())
            .header(super::THROTTLE_PRIORITY.0, super::THROTTLE_PRIORITY.1)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let answer = match attempt(req).await {
            Ok(a) if a.status == StatusCode::OK => {
                self.stats.note_limit(&a.headers);
                a
            }
            // Throttled, unavailable or a rejected token: each page retries or renews as if
            // it had been alone.
            Ok(a) if is_retryable(a.status) || a.status == StatusCode::UNAUTHORIZED => {
                for p in pages {
                    let _ = p.reply.send(Ok(a.clone()));
                }
                return;
            }
            // The batch itself was refused: say so, rather than blame a page.
            Ok(a) => {
                let refused = match graph_error(&url, &a) {
                    FetchError::Graph { url, status, code, message } => {
                        FetchError::BatchRefused { url, status, code, message }
                    }
                    other => other,
                };
                for p in pages {
                    let _ = p.reply.send(Err(Failure::Fatal(refused.clone())));
                }
                return;
            }
            Err(e) => {
                for p in pages {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let parsed = serde_json::from_slice::<BatchAnswer>(&answer.body);
        for (i, p) in pages.into_iter().enumerate() {
            let id = i.to_string();
            let r = match &parsed {
                Err(e) => Err(bad(&p.url, &format!("the $batch answer is not a batch: {e}"))),
                Ok(b) => match b.responses.iter().find(|r| r.id == id) {
                    None => Err(bad(&p.url, "the $batch answer left this request out")),
                    Some(r) => item_answer(&p.url, r),
                },
            };
            let _ = p.reply.send(r);
        }
    }
}

fn item_answer(url: &str, r: &ItemAnswer<'_>) -> Result<Answer, Failure> {
    let status = StatusCode::from_u16(r.status).map_err(|e| bad(url, &format!("in the $batch answer: {e}")))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        let Some(v) = v.as_str() else { continue };
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            headers.insert(k, v);
        }
    }
    let body = r.body.map(|b| b.get().as_bytes().to_vec()).unwrap_or_default();
    Ok(Answer { status, headers, body })
}

fn bad(url: &str, detail: &str) -> Failure {
    Failure::Fatal(FetchError::BadPage { url: url.to_owned(), detail: detail.to_owned() })
}

fn stopped(url: &str) -> FetchError {
    FetchError::Internal(format!("the request for {url} was dropped before it was answered"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task takes its own page (and those that share its request), never only another's:
    /// a slow page at the head of the queue (another app's) is left to its own task.
    #[test]
    fn a_task_takes_its_own_page_not_the_head_of_the_queue() {
        let r = Requests::new(4);
        let page = |id, base: &str, token: &str| Waiting {
            id,
            url: format!("{base}/x/{id}"),
            relative: Some(format!("/x/{id}")),
            base: base.to_owned(),
            token: Secret::new(token.to_owned()),
            reply: oneshot::channel().0,
        };
        r.queue.lock().unwrap().extend([page(0, "https://slow", "a"), page(1, "https://fast", "b")]);
        r.claimed.fetch_add(1, Ordering::Relaxed);
        let took: Vec<u64> = r.take(1).iter().map(|w| w.id).collect();
        assert_eq!(took, [1]);
        r.claimed.fetch_add(1, Ordering::Relaxed);
        assert!(r.take(1).is_empty(), "taken already");
        r.claimed.fetch_add(1, Ordering::Relaxed);
        assert_eq!(r.take(0).iter().map(|w| w.id).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn item_answers_keep_status_headers_and_the_body_as_sent() {
        let b: BatchAnswer = serde_json::from_str(
            r#"{"responses":[
              {"id":"1","status":429,"headers":{"Retry-After":"3"},"body":{"error":{"code":"TooManyRequests"}}},
              {"id":"0","status":200,"body":{"value":[]}}]}"#,
        )
        .unwrap();
        let a = item_answer("u", &b.responses[0]).ok().unwrap();
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(a.headers.get("retry-after").unwrap(), "3");
        let a = item_answer("u", &b.responses[1]).ok().unwrap();
        assert_eq!(a.body, br#"{"value":[]}"#);
    }
}
