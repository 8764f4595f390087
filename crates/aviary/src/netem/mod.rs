//! `aviary netem`: a userspace UDP shaper to put between clients and a server, for tests
//! and for users' own experiments where `tc netem` is not available.
//!
//! Clients send to `--listen`; each client address is a flow with its own socket toward
//! `--forward`, so the server sees one peer per client. Toward the client (the downlink a
//! subscriber receives on) each flow has a bottleneck of `--rate` with a `--queue`; toward
//! the server `--uplink-rate` (default: none). Delay and random loss apply both ways.
//! Settings change at run time with lines on stdin: `rate 400k`, `uplink-rate 2m`,
//! `queue 32k`, `delay 40ms`, `loss 5%` (both ways), `downlink-loss 5%`, `uplink-loss 5%`,
//! `reorder 10%` (that share held back by `reorder-delay`, 30 ms unless set, both ways)
//! (each answered `ok` or with what was wrong); `stats` answers
//! `ok passed=N lost=N overflowed=N reordered=N`, both directions of every flow so far.

use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use aviary_client::link::{Link, LinkParams, LinkStats, Verdict};

/// Datagrams one direction of one flow may have scheduled and not yet sent; past this the
/// shaper is behind and drops (it never holds more than the queue allows anyway).
const IN_FLIGHT: usize = 4096;
/// Client addresses served at once; datagrams from more are dropped.
const MAX_FLOWS: usize = 1024;

#[derive(Args, Debug)]
pub struct NetemArgs {
    /// Where clients send (give this address to the server as `--node-ip`, with the same
    /// port as its UDP port, and bind the server elsewhere with `--bind`).
    #[arg(long)]
    listen: SocketAddr,
    /// The server's UDP address.
    #[arg(long)]
    forward: SocketAddr,
    /// Bottleneck toward each client, bits per second (`500k`, `1.5m`; `0` for none).
    #[arg(long, value_parser = parse_rate, default_value = "0")]
    rate: u64,
    /// Bottleneck toward the server, bits per second (`0` for none).
    #[arg(long, value_parser = parse_rate, default_value = "0")]
    uplink_rate: u64,
    /// Bytes each bottleneck queues before dropping (`64k`).
    #[arg(long, value_parser = parse_size, default_value = "64k")]
    queue: usize,
    /// Bytes a bottleneck lets through at once after a quiet spell (its bucket's depth).
    /// Deeper than a packet or two, it makes a bandwidth probe's burst look like capacity.
    #[arg(long, value_parser = parse_size, default_value = "1500")]
    burst: usize,
    /// One-way delay added in each direction (`40ms`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    delay: Duration,
    /// Random loss in each direction (`2%` or `0.02`).
    #[arg(long, value_parser = parse_loss, default_value = "0")]
    loss: f64,
    /// Share of datagrams held back by `--reorder-delay` in each direction, so that later
    /// ones overtake them (`5%`).
    #[arg(long, value_parser = parse_loss, default_value = "0")]
    reorder: f64,
    /// How long a reordered datagram is held back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30ms")]
    reorder_delay: Duration,
    /// Seed of the random losses.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Datagrams waiting for their time to be sent.
type Scheduled = mpsc::Sender<(Instant, Vec<u8>)>;

/// What every link of the process did, for `stats`.
#[derive(Default)]
struct Totals {
    passed: AtomicU64,
    lost: AtomicU64,
    overflowed: AtomicU64,
    reordered: AtomicU64,
}

impl Totals {
    fn add(&self, s: LinkStats) {
        self.passed.fetch_add(s.passed, Ordering::Relaxed);
        self.lost.fetch_add(s.lost, Ordering::Relaxed);
        self.overflowed.fetch_add(s.overflowed, Ordering::Relaxed);
        self.reordered.fetch_add(s.reordered, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        format!(
            "ok passed={} lost={} overflowed={} reordered={}",
            self.passed.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.overflowed.load(Ordering::Relaxed),
            self.reordered.load(Ordering::Relaxed)
        )
    }
}

/// One datagram through `link`, counted in `totals`.
fn offer(link: &mut Link, totals: &Totals, params: &LinkParams, bytes: usize) -> Verdict {
    let before = link.stats;
    let verdict = link.offer(params, Instant::now().into_std(), bytes);
    totals.add(link.stats.since(&before));
    verdict
}

/// Both directions' settings, shared by every flow and changed from stdin.
#[derive(Clone, Copy, Debug)]
struct Settings {
    down: LinkParams,
    up: LinkParams,
}

pub fn run(args: NetemArgs) -> anyhow::Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn serve(args: NetemArgs) -> anyhow::Result<()> {
    let listen = Arc::new(
        UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?,
    );
    let base = LinkParams {
        queue: args.queue,
        burst: args.burst,
        delay: args.delay,
        loss: args.loss,
        reorder: args.reorder,
        reorder_delay: args.reorder_delay,
        ..Default::default()
    };
    let settings = Arc::new(Mutex::new(Settings {
        down: LinkParams {
            rate: (args.rate > 0).then_some(args.rate),
            ..base
        },
        up: LinkParams {
            rate: (args.uplink_rate > 0).then_some(args.uplink_rate),
            ..base
        },
    }));
    println!(
        "netem listening on {} forwarding to {}",
        args.listen, args.forward
    );
    let totals = Arc::new(Totals::default());
    tokio::spawn(control(settings.clone(), totals.clone()));

    let mut flows: HashMap<SocketAddr, (Link, Scheduled)> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = listen.recv_from(&mut buf).await?;
        let next_seed = args.seed.wrapping_add(2 * flows.len() as u64);
        if flows.len() >= MAX_FLOWS && !flows.contains_key(&client) {
            continue;
        }
        let flow = match flows.get_mut(&client) {
            Some(f) => f,
            None => {
                let f = open_flow(
                    &listen,
                    client,
                    args.forward,
                    next_seed,
                    settings.clone(),
                    totals.clone(),
                )
                .await
                .with_context(|| format!("cannot open a flow for {client}"))?;
                flows.entry(client).or_insert(f)
            }
        };
        let params = settings.lock().map(|s| s.up).unwrap_or_default();
        if let Verdict::Deliver(at) = offer(&mut flow.0, &totals, &params, n) {
            let _ = flow.1.try_send((at.into(), buf[..n].to_vec()));
        }
    }
}

/// A socket toward the server for one client, with the tasks that carry each direction.
async fn open_flow(
    listen: &Arc<UdpSocket>,
    client: SocketAddr,
    forward: SocketAddr,
    seed: u64,
    settings: Arc<Mutex<Settings>>,
    totals: Arc<Totals>,
) -> anyhow::Result<(Link, Scheduled)> {
    let upstream = Arc::new(UdpSocket::bind(SocketAddr::new(listen.local_addr()?.ip(), 0)).await?);
    upstream.connect(forward).await?;
    // Toward the server: sent at the time the link says.
    let (up_tx, up_rx) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(deliver(up_rx, {
        let upstream = upstream.clone();
        move |data: Vec<u8>| {
            let upstream = upstream.clone();
            async move {
                let _ = upstream.send(&data).await;
            }
        }
    }));
    // Toward the client: through the downlink, sent from the listening socket.
    let (down_tx, down_rx) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(deliver(down_rx, {
        let listen = listen.clone();
        move |data: Vec<u8>| {
            let listen = listen.clone();
            async move {
                let _ = listen.send_to(&data, client).await;
            }
        }
    }));
    tokio::spawn(async move {
        let mut link = Link::new(seed + 1);
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = upstream.recv(&mut buf).await {
            let params = settings.lock().map(|s| s.down).unwrap_or_default();
            if let Verdict::Deliver(at) = offer(&mut link, &totals, &params, n) {
                let _ = down_tx.try_send((at.into(), buf[..n].to_vec()));
            }
        }
    });
    Ok((Link::new(seed), up_tx))
}

/// Sends each datagram at its time: in the order they were scheduled, but for those
/// held back to be reordered, which later ones overtake.
async fn deliver<F, Fut>(mut rx: mpsc::Receiver<(Instant, Vec<u8>)>, send: F)
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Earliest first; equal times in arrival order.
    let mut waiting: BinaryHeap<std::cmp::Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next = waiting.peek().map(|std::cmp::Reverse((at, _, _))| *at);
        tokio::select! {
            // While IN_FLIGHT wait here the channel fills up, and the sender drops: the
            // bound on what one direction holds.
            got = rx.recv(), if waiting.len() < IN_FLIGHT => match got {
                Some((at, data)) => {
                    seq += 1;
                    waiting.push(std::cmp::Reverse((at, seq, data)));
                }
                None if waiting.is_empty() => return,
                None => {
                    // Nothing more comes: send what waits, each at its time.
                    while let Some(std::cmp::Reverse((at, _, data))) = waiting.pop() {
                        tokio::time::sleep_until(at).await;
                        send(data).await;
                    }
                    return;
                }
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                if let Some(std::cmp::Reverse((_, _, data))) = waiting.pop() {
                    send(data).await;
                }
            }
        }
    }
}

/// Reads setting changes from stdin until it closes.
async fn control(settings: Arc<Mutex<Settings>>, totals: Arc<Totals>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "stats" {
            println!("{}", totals.line());
            continue;
        }
        let reply = match settings.lock() {
            Ok(mut s) => match apply(&mut s, &line) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("error: {e}"),
            },
            Err(_) => "error: settings unavailable".to_string(),
        };
        println!("{reply}");
    }
}

/// One control line: `<setting> <value>`.
fn apply(s: &mut Settings, line: &str) -> anyhow::Result<()> {
    let mut words = line.split_whitespace();
    let (Some(key), Some(value), None) = (words.next(), words.next(), words.next()) else {
        bail!("expected `<setting> <value>`, e.g. `rate 400k`; got {line:?}");
    };
    let rate = |v: &str| parse_rate(v).map(|r| (r > 0).then_some(r));
    match key {
        "rate" => s.down.rate = rate(value)?,
        "uplink-rate" => s.up.rate = rate(value)?,
        "queue" => {
            let q = parse_size(value)?;
            (s.down.queue, s.up.queue) = (q, q);
        }
        "delay" => {
            let d = humantime::parse_duration(value).map_err(|e| anyhow::anyhow!("{e}"))?;
            (s.down.delay, s.up.delay) = (d, d);
        }
        "loss" => {
            let l = parse_loss(value)?;
            (s.down.loss, s.up.loss) = (l, l);
        }
        "downlink-loss" => s.down.loss = parse_loss(value)?,
        "uplink-loss" => s.up.loss = parse_loss(value)?,
        "reorder" => {
            let r = parse_loss(value)?;
            (s.down.reorder, s.up.reorder) = (r, r);
        }
        "reorder-delay" => {
            let d = humantime::parse_duration(value).map_err(|e| anyhow::anyhow!("{e}"))?;
            (s.down.reorder_delay, s.up.reorder_delay) = (d, d);
        }
        other => bail!(
            "unknown setting {other:?}: rate, uplink-rate, queue, delay, loss, downlink-loss, \
             uplink-loss, reorder or reorder-delay"
        ),
    }
    Ok(())
}

/// `500k`, `1.5m`, `2000000` (bits per second).
pub(crate) fn parse_rate(v: &str) -> anyhow::Result<u64> {
    scaled(v, 1000.0).with_context(|| format!("bad rate {v:?}: expected e.g. 500k or 1.5m"))
}

/// `64k`, `1m`, `1500` (bytes).
pub(crate) fn parse_size(v: &str) -> anyhow::Result<usize> {
    scaled(v, 1024.0)
        .map(|n| n as usize)
        .with_context(|| format!("bad size {v:?}: expected e.g. 64k"))
}

fn scaled(v: &str, unit: f64) -> anyhow::Result<u64> {
    let v = v.trim().to_ascii_lowercase();
    let (num, mul) = match v.chars().last() {
        Some('k') => (&v[..v.len() - 1], unit),
        Some('m') => (&v[..v.len() - 1], unit * unit),
        Some('g') => (&v[..v.len() - 1], unit * unit * unit),
        _ => (v.as_str(), 1.0),
    };
    let n: f64 = num.parse()?;
    if !n.is_finite() || n < 0.0 {
        bail!("not a non-negative number");
    }
    Ok((n * mul) as u64)
}

/// `2%` or `0.02`.
pub(crate) fn parse_loss(v: &str) -> anyhow::Result<f64> {
    let l = match v.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>()? / 100.0,
        None => v.trim().parse::<f64>()?,
    };
    if !(0.0..=1.0).contains(&l) {
        bail!("bad loss {v:?}: expected between 0% and 100%");
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_as_written() {
        assert_eq!(parse_rate("500k").unwrap(), 500_000);
        assert_eq!(parse_rate("1.5M").unwrap(), 1_500_000);
        assert_eq!(parse_size("64k").unwrap(), 65_536);
        assert_eq!(parse_loss("5%").unwrap(), 0.05);
        assert_eq!(parse_loss("0.02").unwrap(), 0.02);
        assert!(parse_loss("150%").is_err());
        assert!(parse_rate("fast").is_err());

        let mut s = Settings {
            down: LinkParams::default(),
            up: LinkParams::default(),
        };
        apply(&mut s, "rate 400k").unwrap();
        assert_eq!(s.down.rate, Some(400_000));
        assert_eq!(s.up.rate, None);
        apply(&mut s, "rate 0").unwrap();
        assert_eq!(s.down.rate, None);
        apply(&mut s, "loss 5%").unwrap();
        assert_eq!((s.down.loss, s.up.loss), (0.05, 0.05));
        apply(&mut s, "uplink-loss 0").unwrap();
        assert_eq!((s.down.loss, s.up.loss), (0.05, 0.0));
        apply(&mut s, "delay 40ms").unwrap();
        assert_eq!(s.up.delay, Duration::from_millis(40));
        apply(&mut s, "reorder 10%").unwrap();
        apply(&mut s, "reorder-delay 50ms").unwrap();
        assert_eq!((s.down.reorder, s.up.reorder), (0.1, 0.1));
        assert_eq!(s.down.reorder_delay, Duration::from_millis(50));
        let e = apply(&mut s, "speed 1m").unwrap_err().to_string();
        assert!(e.contains("unknown setting \"speed\""), "{e}");
        assert!(apply(&mut s, "rate").is_err());
    }
}
