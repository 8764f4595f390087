//! `aviary join`: join a room with Aviary's own client, publish files or the built-in demo,
//! record subscriptions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aviary_client::{JoinOptions, SessionEvent, join, media};
use clap::Args;

use crate::remote::Remote;

/// `join` flags.
#[derive(Args)]
pub struct JoinArgs {
    #[command(flatten)]
    remote: Remote,
    /// Room to join (needed unless --token names it).
    #[arg(long, required_unless_present = "token")]
    room: Option<String>,
    /// Participant identity (needed unless --token names it).
    #[arg(long, required_unless_present = "token")]
    identity: Option<String>,
    /// Join with this access token instead of signing one with the API key and secret.
    #[arg(long, env = "LIVEKIT_TOKEN", hide_env_values = true, conflicts_with_all = ["room", "identity"])]
    token: Option<String>,
    /// A file to publish in real time, looping: IVF (VP8, VP9, AV1), Ogg Opus, or H.264
    /// Annex-B (.h264). Repeatable.
    #[arg(long)]
    publish: Vec<PathBuf>,
    /// Publish a 440 Hz tone and a moving test pattern (built in; no files needed).
    #[arg(long)]
    publish_demo: bool,
    /// How long to stay, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Write every subscribed track to this directory (`<identity>-<track sid>.ivf/.ogg`).
    #[arg(long)]
    subscribe_to: Option<PathBuf>,
}

/// Runs `join`.
pub fn run(args: JoinArgs) -> anyhow::Result<ExitCode> {
    // Every file is checked before joining, so a typo costs no half-made session.
    let mut files = Vec::new();
    for path in &args.publish {
        match media::read_file(path) {
            Ok(f) => files.push((path.clone(), f)),
            Err(e) => {
                eprintln!("aviary: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    if args.publish_demo {
        files.extend(media::demo().context("the built-in demo media")?);
    }
    if let Some(dir) = &args.subscribe_to {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Checked here so that a bad --url is said as such, before any connection.
    args.remote.http_url()?;
    let token = match (&args.token, &args.room, &args.identity) {
        (Some(token), _, _) => token.clone(),
        (None, Some(room), Some(identity)) => args
            .remote
            .credentials
            .join_token(room, identity)
            .context("signing the token")?,
        // clap requires --room and --identity without --token.
        _ => anyhow::bail!("give --room and --identity, or --token"),
    };
    let url = args.remote.url.clone();
    let options = JoinOptions {
        url: url.clone(),
        token,
        publish: files,
        record_dir: args.subscribe_to.clone(),
        duration: args.duration,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime
        .block_on(join(options, |event| match event {
            SessionEvent::Joined {
                room,
                identity,
                sid,
            } => println!("joined room {room} at {url} as {identity} ({sid})"),
            SessionEvent::Published(p) => {
                println!("published {} {} from {}", p.sid, p.mime, p.path.display())
            }
            SessionEvent::Receiving {
                identity,
                track_sid,
                mime,
            } => println!("receiving {track_sid} ({mime}) from {identity}"),
        }))
        .context("join")?;
    for (path, frames) in &summary.recorded {
        println!("recorded {frames} frames to {}", path.display());
    }
    println!("left after {}", humantime::format_duration(args.duration));
    Ok(ExitCode::SUCCESS)
}
