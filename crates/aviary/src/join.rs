//! `aviary join`: join a room with Aviary's own client, publish files, record subscriptions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aviary_client::{JoinOptions, join, media};
use clap::Args;
use livekit_api::access_token::{AccessToken, VideoGrants};

use crate::remote::Remote;

/// `join` flags.
#[derive(Args)]
pub struct JoinArgs {
    #[command(flatten)]
    remote: Remote,
    /// Room to join.
    #[arg(long)]
    room: String,
    /// Participant identity.
    #[arg(long)]
    identity: String,
    /// A file to publish in real time, looping: IVF (VP8, VP9, AV1), Ogg Opus, or H.264
    /// Annex-B (.h264). Repeatable.
    #[arg(long)]
    publish: Vec<PathBuf>,
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
    if let Some(dir) = &args.subscribe_to {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let token = AccessToken::with_api_key(&args.remote.api_key, &args.remote.api_secret)
        .with_identity(&args.identity)
        .with_grants(VideoGrants {
            room_join: true,
            room: args.room.clone(),
            ..Default::default()
        })
        .to_jwt()
        .context("signing the token")?;
    let options = JoinOptions {
        url: args.remote.url.clone(),
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
        .block_on(join(options, |p| {
            println!("published {} {} from {}", p.sid, p.mime, p.path.display());
        }))
        .context("session")?;
    for (path, frames) in &summary.recorded {
        println!("recorded {frames} frames to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
