//! Prometheus metrics. Workers count on their own handles (label `worker`), so the packet
//! path touches only its own atomics; room counts are read from the `RoomManager` at scrape.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::room::RoomManager;
use crate::webhook::WebhookMetrics;

/// The `worker` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    /// Worker index.
    pub worker: String,
}

/// The `worker` and `protocol` labels of the traffic counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabel {
    /// Worker index.
    pub worker: String,
    /// `udp` or `tcp` (ICE/TCP).
    pub protocol: &'static str,
}

/// What one worker carried over one transport protocol.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// Datagrams (or ICE/TCP frames) received.
    pub packets_in: Counter,
    /// Bytes received.
    pub bytes_in: Counter,
    /// Datagrams (or ICE/TCP frames) sent.
    pub packets_out: Counter,
    /// Bytes sent.
    pub bytes_out: Counter,
}

/// One worker's metric handles.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Over UDP.
    pub udp: Traffic,
    /// Over ICE/TCP, counted apart so that a client that fell back to TCP shows.
    pub tcp: Traffic,
    /// Datagrams dropped: no transport for them, unparseable, or a full send buffer.
    pub dropped: Counter,
    /// RTP packets received from publishers.
    pub rtp_in: Counter,
    /// RTP packets forwarded to consumers.
    pub rtp_forwarded: Counter,
    /// RED audio packets received from publishers.
    pub red_in: Counter,
    /// RED packets forwarded as RED (to subscribers that negotiated it).
    pub red_forwarded: Counter,
    /// RED packets forwarded as their primary Opus (to subscribers without RED).
    pub red_unwrapped: Counter,
    /// NACKs received from subscribers.
    pub nacks: Counter,
    /// PLIs/FIRs received from subscribers.
    pub plis_in: Counter,
    /// Keyframe requests sent to publishers.
    pub plis_out: Counter,
    /// Lossy data messages dropped at a full receiver.
    pub data_dropped: Counter,
    /// Reliable data messages handed to receivers.
    pub data_reliable_delivered: Counter,
    /// Receivers disconnected because their reliable data backed up.
    pub data_receivers_dropped: Counter,
    /// Rooms on this worker.
    pub rooms: Gauge,
    /// Peer connections on this worker.
    pub transports: Gauge,
    /// Live consumers (subscribed tracks) on this worker.
    pub consumers: Gauge,
    /// Live producers on this worker.
    pub producers: Gauge,
    /// Time the worker spent working (not waiting), in microseconds.
    pub busy_us: Counter,
    /// From receiving a media datagram to having sent what it caused, in seconds (sampled).
    pub forwarding_delay: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// Signaling counters.
#[derive(Clone, Debug, Default)]
pub struct SignalMetrics {
    /// Links closed because their queue was full (the client stopped reading).
    pub slow_links: Counter,
}

/// Panics anywhere in the process (counted by the hook `count_panics` installs): a
/// caught panic ends only a room or a connection, so without this nobody would see it.
static PANICS: std::sync::LazyLock<Counter> = std::sync::LazyLock::new(Counter::default);

/// Counts every panic in `aviary_panics_total`, then reports it as before. Installs its
/// hook once per process however often it is called.
pub fn count_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.inc();
            previous(info);
        }));
    });
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    rooms: Gauge,
    participants: Gauge,
    published_tracks: Gauge,
    /// Per-worker handles, by index.
    pub workers: Vec<WorkerMetrics>,
    /// Webhook deliveries.
    pub webhooks: WebhookMetrics,
    /// Signaling.
    pub signal: SignalMetrics,
    /// Bytes per second received and sent by all workers, as last sampled.
    byte_rate: std::sync::atomic::AtomicU64,
}

fn delay_buckets() -> impl Iterator<Item = f64> {
    // 5 µs .. ~40 ms
    prometheus_client::metrics::histogram::exponential_buckets(5e-6, 2.0, 14)
}

impl Metrics {
    /// Registers everything for `workers` workers.
    pub fn new(workers: usize) -> Arc<Self> {
        let mut registry = Registry::with_prefix("aviary");
        let rooms = Gauge::default();
        let participants = Gauge::default();
        let published_tracks = Gauge::default();
        registry.register("rooms", "Rooms on this node", rooms.clone());
        registry.register(
            "participants",
            "Participants on this node",
            participants.clone(),
        );
        registry.register(
            "published_tracks",
            "Tracks published on this node",
            published_tracks.clone(),
        );
        let signal = SignalMetrics::default();
        registry.register(
            "signal_links_too_slow",
            "Signal links closed because the client did not read what the server sent",
            signal.slow_links.clone(),
        );
        registry.register(
            "panics",
            "Panics caught in the server (each ended a room's media or a connection)",
            PANICS.clone(),
        );
        let webhooks = WebhookMetrics::default();
        registry.register(
            "webhooks_sent",
            "Webhook events delivered",
            webhooks.sent.clone(),
        );
        registry.register(
            "webhooks_failed",
            "Webhook events given up after every retry failed",
            webhooks.failed.clone(),
        );
        registry.register(
            "webhooks_dropped",
            "Webhook events dropped unsent (queue full or too old)",
            webhooks.dropped.clone(),
        );
        macro_rules! family {
            ($name:literal, $help:literal, $t:ty) => {{
                let f = Family::<WorkerLabel, $t>::default();
                registry.register($name, $help, f.clone());
                f
            }};
        }
        macro_rules! traffic {
            ($name:literal, $help:literal) => {{
                let f = Family::<TrafficLabel, Counter>::default();
                registry.register($name, $help, f.clone());
                f
            }};
        }
        let packets_in = traffic!("packets_in", "Datagrams (ICE/TCP frames) received");
        let bytes_in = traffic!("bytes_in", "Bytes received");
        let packets_out = traffic!("packets_out", "Datagrams (ICE/TCP frames) sent");
        let bytes_out = traffic!("bytes_out", "Bytes sent");
        let dropped = family!("dropped_packets", "Datagrams dropped", Counter);
        let rtp_in = family!(
            "rtp_received",
            "RTP packets received from publishers",
            Counter
        );
        let rtp_forwarded = family!(
            "rtp_forwarded",
            "RTP packets forwarded to subscribers",
            Counter
        );
        let red_in = family!(
            "rtp_red_received",
            "RED (RFC 2198) audio packets received from publishers",
            Counter
        );
        let red_forwarded = family!(
            "rtp_red_forwarded",
            "RED audio packets forwarded as RED",
            Counter
        );
        let red_unwrapped = family!(
            "rtp_red_unwrapped",
            "RED audio packets forwarded as their primary Opus to subscribers without RED",
            Counter
        );
        let nacks = family!("nacks", "NACKs received from subscribers", Counter);
        let plis_in = family!(
            "plis_received",
            "PLI/FIR received from subscribers",
            Counter
        );
        let plis_out = family!("plis_sent", "Keyframe requests sent to publishers", Counter);
        let data_dropped = family!("data_dropped", "Lossy data messages dropped", Counter);
        let data_reliable_delivered = family!(
            "data_reliable_delivered",
            "Reliable data messages handed to receivers",
            Counter
        );
        let data_receivers_dropped = family!(
            "data_receivers_dropped",
            "Receivers disconnected because reliable data to them backed up",
            Counter
        );
        let wrooms = family!("worker_rooms", "Rooms per worker", Gauge);
        let transports = family!("transports", "Peer connections per worker", Gauge);
        let consumers = family!(
            "subscribed_tracks",
            "Subscribed tracks (consumers) per worker",
            Gauge
        );
        let producers = family!(
            "producers",
            "Published streams (producers) per worker",
            Gauge
        );
        let busy = family!(
            "worker_busy_microseconds",
            "Time each worker spent working",
            Counter
        );
        let delay = Family::<WorkerLabel, Histogram, _>::new_with_constructor(
            (|| Histogram::new(delay_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "forwarding_delay_seconds",
            "Receive-to-send time of media datagrams inside a worker (sampled)",
            delay.clone(),
        );
        let workers = (0..workers)
            .map(|i| {
                let l = WorkerLabel {
                    worker: i.to_string(),
                };
                let traffic = |protocol| {
                    let l = TrafficLabel {
                        worker: i.to_string(),
                        protocol,
                    };
                    Traffic {
                        packets_in: packets_in.get_or_create(&l).clone(),
                        bytes_in: bytes_in.get_or_create(&l).clone(),
                        packets_out: packets_out.get_or_create(&l).clone(),
                        bytes_out: bytes_out.get_or_create(&l).clone(),
                    }
                };
                WorkerMetrics {
                    udp: traffic("udp"),
                    tcp: traffic("tcp"),
                    dropped: dropped.get_or_create(&l).clone(),
                    rtp_in: rtp_in.get_or_create(&l).clone(),
                    rtp_forwarded: rtp_forwarded.get_or_create(&l).clone(),
                    red_in: red_in.get_or_create(&l).clone(),
                    red_forwarded: red_forwarded.get_or_create(&l).clone(),
                    red_unwrapped: red_unwrapped.get_or_create(&l).clone(),
                    nacks: nacks.get_or_create(&l).clone(),
                    plis_in: plis_in.get_or_create(&l).clone(),
                    plis_out: plis_out.get_or_create(&l).clone(),
                    data_dropped: data_dropped.get_or_create(&l).clone(),
                    data_reliable_delivered: data_reliable_delivered.get_or_create(&l).clone(),
                    data_receivers_dropped: data_receivers_dropped.get_or_create(&l).clone(),
                    rooms: wrooms.get_or_create(&l).clone(),
                    transports: transports.get_or_create(&l).clone(),
                    consumers: consumers.get_or_create(&l).clone(),
                    producers: producers.get_or_create(&l).clone(),
                    busy_us: busy.get_or_create(&l).clone(),
                    forwarding_delay: delay.get_or_create(&l).clone(),
                }
            })
            .collect();
        Arc::new(Self {
            registry,
            rooms,
            participants,
            published_tracks,
            workers,
            webhooks,
            signal,
            byte_rate: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Tracks the workers forward now (consumers), as of their last flush.
    pub fn subscribed_tracks(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.consumers.get().max(0) as u64)
            .sum()
    }

    /// Bytes in and out of every worker so far.
    pub fn bytes_total(&self) -> u64 {
        self.workers
            .iter()
            .flat_map(|w| [&w.udp, &w.tcp])
            .map(|t| t.bytes_in.get() + t.bytes_out.get())
            .sum()
    }

    /// Records the byte rate a sampler measured.
    pub fn set_byte_rate(&self, bytes_per_sec: u64) {
        self.byte_rate
            .store(bytes_per_sec, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last sampled byte rate (in plus out).
    pub fn byte_rate(&self) -> u64 {
        self.byte_rate.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The text exposition, with room counts read now.
    pub fn render(&self, manager: &RoomManager) -> String {
        let (rooms, participants, tracks) = manager.counts();
        self.rooms.set(rooms as i64);
        self.participants.set(participants as i64);
        self.published_tracks.set(tracks as i64);
        self.encode()
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The `/metrics` endpoint, served on its own port.
pub fn routes(metrics: Arc<Metrics>, manager: Arc<RoomManager>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = metrics.render(&manager);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn a_caught_panic_is_counted() {
        let metrics = Metrics::new(1);
        count_panics();
        count_panics();
        let before = value(&metrics.encode(), "aviary_panics_total");
        let caught = std::panic::catch_unwind(|| panic!("a room's bug"));
        assert!(caught.is_err());
        // Other tests of this process may panic meanwhile; one hook counts each once.
        assert!(value(&metrics.encode(), "aviary_panics_total") > before);
    }

    #[test]
    fn udp_and_tcp_traffic_are_counted_apart() {
        let metrics = Metrics::new(2);
        metrics.workers[1].tcp.packets_in.inc_by(3);
        metrics.workers[1].udp.bytes_out.inc_by(100);
        let text = metrics.encode();
        assert_eq!(
            value(
                &text,
                r#"aviary_packets_in_total{worker="1",protocol="tcp"}"#
            ),
            3
        );
        assert_eq!(
            value(
                &text,
                r#"aviary_packets_in_total{worker="1",protocol="udp"}"#
            ),
            0
        );
        assert_eq!(
            value(
                &text,
                r#"aviary_bytes_out_total{worker="1",protocol="udp"}"#
            ),
            100
        );
        assert_eq!(metrics.bytes_total(), 100);
    }
}
