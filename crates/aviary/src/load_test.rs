//! `aviary load-test`: synthetic publishers and subscribers against a server.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use aviary_client::link::LinkParams;
use aviary_client::load::{self, LoadOptions, LoadReport, Progress, Target};
use clap::Args;

use crate::remote::Remote;

/// `load-test` flags.
#[derive(Args)]
pub struct LoadTestArgs {
    #[command(flatten)]
    remote: Remote,
    /// Room to load.
    #[arg(long)]
    room: String,
    /// A room shape from LiveKit's published benchmarks; the flags below override its parts.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Publishers of one video track each [default: 1, or the preset's].
    #[arg(long)]
    video_publishers: Option<usize>,
    /// Publishers of one audio track each [default: 0, or the preset's].
    #[arg(long)]
    audio_publishers: Option<usize>,
    /// Subscribers [default: 10, or the preset's].
    #[arg(long)]
    subscribers: Option<usize>,
    /// Length of the measured run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Bitrate of each video track, e.g. 600k, 1.5M [default: 600k, or the preset's].
    #[arg(long, value_parser = parse_bitrate)]
    video_bitrate: Option<u64>,
    /// Send each video track as three simulcast layers (rids q, h, f with 10 %, 30 % and
    /// 60 % of --video-bitrate).
    #[arg(long)]
    simulcast: bool,
    /// Shape every subscriber's downlink to this rate (e.g. 400k), inside the load tester:
    /// the same bad link in front of any server.
    #[arg(long, value_parser = crate::netem::parse_rate)]
    subscriber_rate: Option<u64>,
    /// Bytes the shaped downlink queues before it drops.
    #[arg(long, value_parser = crate::netem::parse_size, default_value = "32k")]
    subscriber_queue: usize,
    /// Random loss on each subscriber's downlink, e.g. 5%.
    #[arg(long, value_parser = crate::netem::parse_loss, default_value = "0")]
    subscriber_loss: f64,
    /// Delay added to each subscriber's downlink.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    subscriber_delay: Duration,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// The server is Janus (its WebSocket API at --url, e.g. ws://127.0.0.1:8188), driven
    /// through its VideoRoom plugin: for side-by-side benchmarks.
    #[arg(long)]
    janus: bool,
    /// VideoRoom room number with --janus (created when missing).
    #[arg(long, default_value_t = 1234)]
    janus_room: u64,
    /// The server is a mediasoup worker behind bench/mediasoup/server.mjs (its WebSocket at
    /// --url, e.g. ws://127.0.0.1:4443): for side-by-side benchmarks.
    #[arg(long, conflicts_with = "janus")]
    mediasoup: bool,
    /// Local IP address for the media sockets (default: the one that routes to the server).
    #[arg(long)]
    local_ip: Option<std::net::IpAddr>,
    /// Runtime threads driving the simulated participants.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The shapes of LiveKit's published benchmarks (docs.livekit.io, "Benchmarking"), so that
/// a user can run the same on their own hardware.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Preset {
    /// One 720p simulcast camera and its microphone to many (default 500 subscribers).
    Livestream,
    /// Ten speakers to many listeners (default 500), no video.
    Audio,
    /// N × N: N simulcast cameras and N microphones, N subscribers (default 10). Each
    /// simulated participant either publishes or subscribes, so N publish and N subscribe
    /// on separate connections; the tracks forwarded are those of an N-person meeting (plus
    /// each subscriber's own camera).
    Meeting,
}

/// How many of each, at what bitrate: a preset's, with the flags given on top.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Shape {
    video_publishers: usize,
    audio_publishers: usize,
    subscribers: usize,
    video_bitrate: u64,
    simulcast: bool,
}

impl Shape {
    fn of(args: &LoadTestArgs) -> Shape {
        let base = match args.preset {
            None => Shape {
                video_publishers: 1,
                audio_publishers: 0,
                subscribers: 10,
                video_bitrate: 600_000,
                simulcast: false,
            },
            Some(Preset::Livestream) => Shape {
                video_publishers: 1,
                audio_publishers: 1,
                subscribers: 500,
                video_bitrate: 1_700_000,
                simulcast: true,
            },
            Some(Preset::Audio) => Shape {
                video_publishers: 0,
                audio_publishers: 10,
                subscribers: 500,
                video_bitrate: 0,
                simulcast: false,
            },
            Some(Preset::Meeting) => {
                let n = args.subscribers.unwrap_or(10);
                Shape {
                    video_publishers: n,
                    audio_publishers: n,
                    subscribers: n,
                    video_bitrate: 1_700_000,
                    simulcast: true,
                }
            }
        };
        Shape {
            video_publishers: args.video_publishers.unwrap_or(base.video_publishers),
            audio_publishers: args.audio_publishers.unwrap_or(base.audio_publishers),
            subscribers: args.subscribers.unwrap_or(base.subscribers),
            video_bitrate: args.video_bitrate.unwrap_or(base.video_bitrate),
            simulcast: args.simulcast || base.simulcast,
        }
    }
}

fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000.0),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000.0),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("not a bitrate: {s:?}"))?;
    if v <= 0.0 {
        return Err("bitrate must be positive".into());
    }
    Ok((v * mult) as u64)
}

fn report_json(r: &LoadReport, shape: &Shape) -> serde_json::Value {
    serde_json::json!({
        "shape": {
            "video_publishers": shape.video_publishers,
            "audio_publishers": shape.audio_publishers,
            "subscribers": shape.subscribers,
            "video_bitrate_bps": shape.video_bitrate,
            "simulcast": shape.simulcast,
        },
        "subscribers_connected": r.subscribers_connected,
        "join_ms_p50": r.join_ms_p50,
        "join_ms_p99": r.join_ms_p99,
        "first_media_ms_p50": r.first_media_ms_p50,
        "first_media_ms_p99": r.first_media_ms_p99,
        "packets_received": r.packets_received,
        "loss_percent": r.loss_percent,
        "audio_loss_percent": r.audio_loss_percent,
        "video": video_json(r),
        "bitrate_per_subscriber_bps": r.bitrate_per_subscriber,
        "delay_ms_p50": r.delay_ms_p50,
        "delay_ms_p99": r.delay_ms_p99,
        "seconds": r.seconds,
        "tracks": r.tracks.iter().map(|t| serde_json::json!({
            "kind": t.kind,
            "publisher": t.publisher,
            "packets_sent": t.packets_sent,
            "packets_received": t.packets_received,
        })).collect::<Vec<_>>(),
    })
}

/// Per (subscriber, video track) pair, averaged: what a viewer saw.
fn video_json(r: &LoadReport) -> serde_json::Value {
    let v = &r.video;
    let streams = v.streams.max(1) as f64;
    let frames = v.counts.frames.max(1) as f64;
    serde_json::json!({
        "streams": v.streams,
        "frames_per_s": v.counts.frames as f64 / streams / r.seconds.max(1e-9),
        "freezes_per_stream": v.counts.freezes as f64 / streams,
        "frozen_percent": 100.0 * v.counts.frozen.as_secs_f64() / streams / r.seconds.max(1e-9),
        "loss_percent": v.loss_percent(),
        "layers_percent": v.counts.frames_by_layer.map(|n| 100.0 * n as f64 / frames),
        "settled_frames_per_s": v.settled.frames as f64 / streams / (r.seconds / 2.0).max(1e-9),
        "settled_frozen_percent":
            100.0 * v.settled.frozen.as_secs_f64() / streams / (r.seconds / 2.0).max(1e-9),
    })
}

fn report_table(r: &LoadReport, shape: &Shape) -> String {
    let mut out = format!(
        "room                   {} video publishers ({} kbps{}), {} audio publishers, {} subscribers\n",
        shape.video_publishers,
        shape.video_bitrate / 1000,
        if shape.simulcast { ", simulcast" } else { "" },
        shape.audio_publishers,
        shape.subscribers,
    );
    out.push_str(&format!(
        "subscribers connected  {}\njoin time p50 / p99    {:.1} / {:.1} ms\n\
         first media p50 / p99  {:.1} / {:.1} ms\n\
         packets received       {}\nloss                   {:.3} %\n\
         bitrate / subscriber   {:.0} kbps\nforwarding delay p50 / p99  {:.2} / {:.2} ms\n\n",
        r.subscribers_connected,
        r.join_ms_p50,
        r.join_ms_p99,
        r.first_media_ms_p50,
        r.first_media_ms_p99,
        r.packets_received,
        r.loss_percent,
        r.bitrate_per_subscriber / 1000.0,
        r.delay_ms_p50,
        r.delay_ms_p99,
    ));
    if r.video.streams > 0 {
        let v = video_json(r);
        out.push_str(&format!(
            "video per subscriber   {:.1} frames/s decoded, {:.2} freezes (> {} ms), {:.1} % frozen, \
             {:.2} % loss after repair, frames per layer (low/mid/high) {} %\n\n",
            v["frames_per_s"].as_f64().unwrap_or_default(),
            v["freezes_per_stream"].as_f64().unwrap_or_default(),
            aviary_client::load::FREEZE.as_millis(),
            v["frozen_percent"].as_f64().unwrap_or_default(),
            v["loss_percent"].as_f64().unwrap_or_default(),
            r.video
                .counts
                .frames_by_layer
                .map(|n| format!("{:.0}", 100.0 * n as f64 / r.video.counts.frames.max(1) as f64))
                .join("/"),
        ));
    }
    out.push_str("TRACK  KIND   PUBLISHER    SENT      RECEIVED (all subscribers)\n");
    for (i, t) in r.tracks.iter().enumerate() {
        out.push_str(&format!(
            "{i:<5}  {:<5}  {:<11}  {:<8}  {}\n",
            t.kind, t.publisher, t.packets_sent, t.packets_received
        ));
    }
    out
}

/// Runs `load-test`.
pub fn run(args: LoadTestArgs) -> anyhow::Result<ExitCode> {
    crate::raise_fd_limit();
    let (credentials, room) = (args.remote.credentials.clone(), args.room.clone());
    // Signing cannot fail with a key and secret in hand; an empty token would be refused.
    let token =
        Arc::new(move |identity: &str| credentials.join_token(&room, identity).unwrap_or_default());
    let target = if args.janus {
        Target::Janus {
            url: args.remote.url.clone(),
            room: args.janus_room,
        }
    } else if args.mediasoup {
        Target::Mediasoup {
            url: args.remote.url.clone(),
            room: args.room.clone(),
        }
    } else {
        Target::Livekit {
            url: args.remote.url.clone(),
            token,
        }
    };
    let shape = Shape::of(&args);
    let options = LoadOptions {
        target,
        local_ip: args.local_ip,
        video_publishers: shape.video_publishers,
        audio_publishers: shape.audio_publishers,
        subscribers: shape.subscribers,
        duration: args.duration,
        video_bitrate: shape.video_bitrate,
        simulcast: shape.simulcast,
        subscriber_link: (args.subscriber_rate.is_some()
            || args.subscriber_loss > 0.0
            || !args.subscriber_delay.is_zero())
        .then(|| LinkParams {
            rate: args.subscriber_rate.filter(|r| *r > 0),
            queue: args.subscriber_queue,
            delay: args.subscriber_delay,
            loss: args.subscriber_loss,
            ..LinkParams::default()
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let progress = Arc::new(Progress::default());
    let show = !args.json;
    let started = Instant::now();
    let watcher = {
        let progress = progress.clone();
        let subscribers = shape.subscribers;
        let duration = args.duration;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut shown = usize::MAX;
            let mut ticks = 0u64;
            let mut joined_at = None;
            let mut error_shown = false;
            loop {
                tick.tick().await;
                ticks += 1;
                if !error_shown && let Some(e) = progress.first_error.get() {
                    // At once, not after the run: a wrong key or a server that is not there
                    // shows here within a second.
                    error_shown = true;
                    eprintln!("\nfirst error: {e}");
                }
                let index = progress.phase.load(Ordering::Relaxed).min(4);
                let phase = ["joining", "warm-up", "measuring", "draining", "leaving"][index];
                if index != shown {
                    // One line per phase change, for scripts that sample the server meanwhile.
                    shown = index;
                    eprintln!("\nphase: {phase}");
                }
                if index > 0 && joined_at.is_none() {
                    joined_at = Some(Instant::now());
                }
                if !show || !ticks.is_multiple_of(5) {
                    continue;
                }
                let connected = progress.subscribers_connected.load(Ordering::Relaxed);
                // Joining fills the bar by subscribers connected, then by the test's time.
                let done = match joined_at {
                    None => connected as f64 / subscribers.max(1) as f64,
                    Some(at) => at.elapsed().as_secs_f64() / duration.as_secs_f64().max(0.001),
                };
                eprint!(
                    "\r[{}] {:>4}s {phase:<9} subscribers {connected}/{subscribers}  received {} packets  ",
                    progress_bar(done, 24),
                    started.elapsed().as_secs(),
                    progress.packets_received.load(Ordering::Relaxed),
                );
                let _ = std::io::stderr().flush();
            }
        })
    };
    let result = runtime.block_on(load::run(options, progress));
    watcher.abort();
    let report = result.context("load test")?;
    eprintln!("\nphase: done");
    if show {
        eprintln!();
        print!("{}", report_table(&report, &shape));
    } else {
        println!("{}", report_json(&report, &shape));
    }
    Ok(ExitCode::SUCCESS)
}

/// A text progress bar `width` cells wide for a fraction done (clamped to 0..=1).
fn progress_bar(done: f64, width: usize) -> String {
    let filled = ((done.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "#".repeat(filled), "-".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bars() {
        assert_eq!(progress_bar(0.0, 4), "----");
        assert_eq!(progress_bar(0.5, 4), "##--");
        assert_eq!(progress_bar(7.0, 4), "####");
        assert_eq!(progress_bar(f64::NAN, 4).len(), 4);
    }

    fn shape(argv: &[&str]) -> Shape {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadTestArgs,
        }
        let argv = ["load-test", "--room", "r"].iter().chain(argv);
        Shape::of(&<Cli as clap::Parser>::parse_from(argv).args)
    }

    #[test]
    fn presets_give_livekits_shapes_and_flags_override_their_parts() {
        let plain = shape(&[]);
        assert_eq!(
            (
                plain.video_publishers,
                plain.audio_publishers,
                plain.subscribers
            ),
            (1, 0, 10)
        );
        assert_eq!((plain.video_bitrate, plain.simulcast), (600_000, false));
        let meeting = shape(&["--preset", "meeting", "--subscribers", "4"]);
        assert_eq!(
            (
                meeting.video_publishers,
                meeting.audio_publishers,
                meeting.subscribers
            ),
            (4, 4, 4)
        );
        assert!(meeting.simulcast);
        let audio = shape(&["--preset", "audio", "--audio-publishers", "3"]);
        assert_eq!(
            (
                audio.video_publishers,
                audio.audio_publishers,
                audio.subscribers
            ),
            (0, 3, 500)
        );
        let live = shape(&["--preset", "livestream", "--video-bitrate", "1M"]);
        assert_eq!((live.video_bitrate, live.simulcast), (1_000_000, true));
        assert_eq!((live.video_publishers, live.audio_publishers), (1, 1));
    }

    #[test]
    fn bitrates() {
        assert_eq!(parse_bitrate("600k"), Ok(600_000));
        assert_eq!(parse_bitrate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_bitrate("9000"), Ok(9000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("-1k").is_err());
    }
}
