//! `aviary token create`: print a signed access token.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use livekit_api::access_token::{AccessToken, VideoGrants};

use crate::remote::Credentials;

/// Token subcommands.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the JWT alone on stdout.
    Create(CreateArgs),
}

/// `token create` flags. With no grant flag, the token grants joining the room.
#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    credentials: Credentials,
    /// Participant identity (needed to join).
    #[arg(long)]
    identity: Option<String>,
    /// Room name (needed to join or administer a room).
    #[arg(long)]
    room: Option<String>,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Grant roomJoin.
    #[arg(long)]
    join: bool,
    /// Grant roomAdmin (for this room).
    #[arg(long)]
    admin: bool,
    /// Grant roomList.
    #[arg(long)]
    list: bool,
    /// Grant roomCreate.
    #[arg(long)]
    create: bool,
    /// canPublish.
    #[arg(long)]
    can_publish: Option<bool>,
    /// canSubscribe.
    #[arg(long)]
    can_subscribe: Option<bool>,
    /// canPublishData.
    #[arg(long)]
    can_publish_data: Option<bool>,
    /// canUpdateOwnMetadata.
    #[arg(long)]
    can_update_metadata: Option<bool>,
    /// Participant metadata.
    #[arg(long)]
    metadata: Option<String>,
    /// Lifetime, e.g. 30m, 6h.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    valid_for: Duration,
}

/// The grants the flags ask for.
fn grants(a: &CreateArgs) -> VideoGrants {
    let any = a.join || a.admin || a.list || a.create;
    VideoGrants {
        room_join: a.join || !any,
        room_admin: a.admin,
        room_list: a.list,
        room_create: a.create,
        room: a.room.clone().unwrap_or_default(),
        can_publish: a.can_publish,
        can_subscribe: a.can_subscribe,
        can_publish_data: a.can_publish_data,
        can_update_own_metadata: a.can_update_metadata,
        ..Default::default()
    }
}

/// Runs a token subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::Create(a) = cmd;
    let g = grants(&a);
    if (g.room_join || g.room_admin) && a.room.is_none() {
        eprintln!("aviary: a token to join or administer a room needs --room");
        return Ok(ExitCode::from(2));
    }
    if g.room_join && a.identity.is_none() {
        eprintln!("aviary: a token to join needs --identity");
        return Ok(ExitCode::from(2));
    }
    let creds = &a.credentials;
    let mut token = AccessToken::with_api_key(&creds.api_key, &creds.api_secret)
        .with_identity(a.identity.as_deref().unwrap_or_default())
        .with_grants(g)
        .with_ttl(a.valid_for);
    if let Some(name) = &a.name {
        token = token.with_name(name);
    }
    if let Some(metadata) = &a.metadata {
        token = token.with_metadata(metadata);
    }
    let jwt = token.to_jwt().context("signing the token")?;
    println!("{jwt}");
    Ok(ExitCode::SUCCESS)
}
