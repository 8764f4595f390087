//! Webhooks: each room event POSTed to every `webhook.urls` entry, as upstream sends them.
//!
//! The body is the protojson `WebhookEvent` (camelCase names, int64 as strings, unset
//! fields left out) with an `EV_` id and `created_at` in seconds;
//! `Content-Type: application/webhook+json`; `Authorization:` a JWT (no `Bearer`) signed
//! with `webhook.api_key`'s secret whose `sha256` claim is the base64 SHA-256 of the body.
//!
//! Rooms never wait for an endpoint: [`Notifier::on_event`] only queues. Each (URL, room)
//! pair (a room by its sid: a room made again under the same name is another room) has
//! its own bounded FIFO queue and one sender task, so a room's events arrive in order, and
//! a dead endpoint or a slow room holds up only itself. An event that finds its
//! queue full, or waited too long, is dropped, logged and counted; a failed POST is retried
//! with backoff (upstream's client: five attempts, 1 s doubling up to 30 s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use prometheus_client::metrics::counter::Counter;
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::guid;
use crate::room::{EventListener, RoomEvent};

/// Events waiting per (URL, room) before new ones are dropped (upstream's max depth).
const QUEUE_DEPTH: usize = 200;
/// An event older than this when its turn comes is dropped (upstream's max age).
const MAX_AGE: Duration = Duration::from_secs(30);
/// Attempts per event.
const ATTEMPTS: u32 = 5;
/// First retry delay; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// One POST's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Validity of a request's token.
const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
/// Prefix of event ids.
const EVENT_PREFIX: &str = "EV_";

/// Webhook counters, in `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    /// Events delivered (a 2xx, or a 4xx that retrying cannot fix).
    pub sent: Counter,
    /// Events given up after every attempt failed.
    pub failed: Counter,
    /// Events dropped unsent: queue full, or too old.
    pub dropped: Counter,
}

/// Why webhooks cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `webhook.api_key` is not one of `keys`.
    #[error(
        "webhook.api_key {0:?} is not one of the configured API keys; webhooks are signed with its secret, so add it to keys (or fix the name)"
    )]
    UnknownKey(String),
    /// URLs but no key.
    #[error("webhook.urls is set but webhook.api_key is empty; set it to one of the API keys")]
    NoKey,
    /// The HTTP client could not be built.
    #[error("cannot set up the webhook HTTP client: {0}")]
    Client(String),
}

struct Job {
    body: String,
    queued: Instant,
}

struct Shared {
    urls: Vec<String>,
    api_key: String,
    api_secret: String,
    client: reqwest::Client,
    metrics: WebhookMetrics,
    queues: Mutex<HashMap<(usize, String), mpsc::Sender<Job>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Sends room events to the configured URLs.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

impl Notifier {
    /// A notifier for `urls`, signing with `api_key` (whose secret is in `keys`).
    pub fn new(
        urls: Vec<String>,
        api_key: &str,
        keys: &std::collections::BTreeMap<String, String>,
        metrics: WebhookMetrics,
    ) -> Result<Self, WebhookError> {
        if api_key.is_empty() {
            return Err(WebhookError::NoKey);
        }
        let api_secret = keys
            .get(api_key)
            .ok_or_else(|| WebhookError::UnknownKey(api_key.to_string()))?
            .clone();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent("LiveKit")
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                urls,
                api_key: api_key.to_string(),
                api_secret,
                client,
                metrics,
                queues: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Stops taking events and waits, at most `deadline`, for what is queued to be sent.
    pub async fn flush(&self, deadline: Duration) {
        // Dropping the senders lets each queue's task finish what it holds and end.
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let tasks: Vec<JoinHandle<()>> = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let pending = tasks.len();
        if tokio::time::timeout(deadline, futures_util::future::join_all(tasks))
            .await
            .is_err()
        {
            warn!(pending, "webhooks not all sent within {deadline:?}");
        }
    }

    fn enqueue(&self, url: usize, room: &str, body: &str, last: bool) {
        let mut queues = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        let key = (url, room.to_string());
        let tx = queues
            .entry(key.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                let task = tokio::spawn(deliver(self.shared.clone(), url, rx));
                let mut tasks = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
                tasks.retain(|t| !t.is_finished());
                tasks.push(task);
                tx
            })
            .clone();
        if last {
            // The room is over: its queue's task ends once it has sent what it holds.
            queues.remove(&key);
        }
        let job = Job {
            body: body.to_string(),
            queued: Instant::now(),
        };
        if tx.try_send(job).is_err() {
            self.shared.metrics.dropped.inc();
            warn!(
                url = self.shared.urls[url],
                room, "webhook queue full; event dropped"
            );
        }
    }
}

impl EventListener for Notifier {
    fn on_event(&self, event: &RoomEvent) {
        let mut hook = event.to_webhook();
        hook.id = guid::new_id(EVENT_PREFIX);
        hook.created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let body = match serde_json::to_string(&hook) {
            Ok(b) => b,
            Err(e) => {
                warn!("cannot encode webhook: {e}");
                return;
            }
        };
        let last = matches!(event, RoomEvent::RoomFinished { .. });
        let room = &event.room().sid;
        for url in 0..self.shared.urls.len() {
            self.enqueue(url, room, &body, last);
        }
    }
}

/// Sends one queue's events in order.
async fn deliver(shared: Arc<Shared>, url: usize, mut rx: mpsc::Receiver<Job>) {
    let target = &shared.urls[url];
    while let Some(job) = rx.recv().await {
        if job.queued.elapsed() > MAX_AGE {
            shared.metrics.dropped.inc();
            warn!(url = target, "webhook older than {MAX_AGE:?}; dropped");
            continue;
        }
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match post(&shared, target, &job.body).await {
                Ok(()) => {
                    shared.metrics.sent.inc();
                    break;
                }
                Err(e) if attempt < ATTEMPTS => {
                    debug!(url = target, attempt, "webhook failed, retrying: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(e) => {
                    shared.metrics.failed.inc();
                    warn!(
                        url = target,
                        "webhook not delivered after {ATTEMPTS} attempts: {e}"
                    );
                    break;
                }
            }
        }
    }
}

/// Why one POST did not deliver an event.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {0}")]
    Status(u16),
}

/// One POST. A 4xx other than 429 is final (the receiver refuses it) and counts as done,
/// as upstream's client treats it.
async fn post(shared: &Shared, url: &str, body: &str) -> Result<(), PostError> {
    let token = sign(&shared.api_key, &shared.api_secret, body)?;
    let resp = shared
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/webhook+json")
        .header(reqwest::header::AUTHORIZATION, token)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| PostError::Transport(e.to_string()))?;
    let status = resp.status();
    if status.is_success()
        || (status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS)
    {
        if !status.is_success() {
            warn!(url, %status, "webhook refused by the receiver");
        }
        return Ok(());
    }
    if status == reqwest::StatusCode::NOT_IMPLEMENTED {
        return Ok(());
    }
    Err(PostError::Status(status.as_u16()))
}

/// The `Authorization` value for `body`.
fn sign(api_key: &str, api_secret: &str, body: &str) -> Result<String, PostError> {
    let hash = sha2::Sha256::digest(body.as_bytes());
    let sha = base64::engine::general_purpose::STANDARD.encode(hash);
    livekit_api::access_token::AccessToken::with_api_key(api_key, api_secret)
        .with_ttl(TOKEN_TTL)
        .with_sha256(&sha)
        .to_jwt()
        .map_err(|e| PostError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_verify_with_the_sdk_receiver() {
        let body = r#"{"event":"room_started","room":{"name":"r"}}"#;
        let token = sign("key", "a-secret-of-thirty-two-characters!", body).unwrap();
        let receiver = livekit_api::webhooks::WebhookReceiver::new(
            livekit_api::access_token::TokenVerifier::with_api_key(
                "key",
                "a-secret-of-thirty-two-characters!",
            ),
        );
        let event = receiver.receive(body, &token).expect("valid signature");
        assert_eq!(event.event, "room_started");
        assert!(
            receiver.receive(&body.replace('r', "x"), &token).is_err(),
            "a changed body fails the hash"
        );
    }
}
