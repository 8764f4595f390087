//! `aviary room ...`: RoomService through the official Rust server SDK's Twirp client.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use livekit_api::services::room::{CreateRoomOptions, RoomClient};
use livekit_protocol as proto;

use crate::errors::service_error;
use crate::remote::Remote;

/// `room` flags.
#[derive(Args)]
pub struct RoomArgs {
    #[command(flatten)]
    remote: Remote,
    /// Machine-readable output (protojson).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: RoomCommand,
}

/// Room subcommands.
#[derive(Subcommand)]
pub enum RoomCommand {
    /// Create a room (or return the existing one).
    Create {
        /// Room name.
        name: String,
        /// Seconds an empty room lives.
        #[arg(long, default_value_t = 0)]
        empty_timeout: u32,
        /// Seconds a room lives after its last participant left.
        #[arg(long, default_value_t = 0)]
        departure_timeout: u32,
        /// Participant limit (0: unlimited).
        #[arg(long, default_value_t = 0)]
        max_participants: u32,
        /// Room metadata.
        #[arg(long, default_value = "")]
        metadata: String,
    },
    /// List rooms.
    List,
    /// Delete a room (everyone in it is disconnected).
    Delete {
        /// Room name.
        name: String,
    },
    /// List a room's participants.
    Participants {
        /// Room name.
        name: String,
    },
    /// Set a room's metadata.
    UpdateMetadata {
        /// Room name.
        name: String,
        /// New metadata.
        metadata: String,
    },
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

fn rooms_table(rooms: &[proto::Room]) -> String {
    table(
        &[
            "NAME",
            "SID",
            "PARTICIPANTS",
            "MAX",
            "EMPTY_TIMEOUT",
            "METADATA",
        ],
        rooms
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.sid.clone(),
                    r.num_participants.to_string(),
                    r.max_participants.to_string(),
                    r.empty_timeout.to_string(),
                    r.metadata.clone(),
                ]
            })
            .collect(),
    )
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

/// Runs a room subcommand.
pub fn run(args: RoomArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RoomArgs) -> anyhow::Result<ExitCode> {
    let url = args.remote.http_url()?;
    let creds = &args.remote.credentials;
    let client = RoomClient::with_api_key(&url, &creds.api_key, &creds.api_secret);
    let failed = |call: &str| {
        let url = url.clone();
        let call = call.to_string();
        move |e| service_error(&call, &url, e)
    };
    let json = args.json;
    match args.command {
        RoomCommand::Create {
            name,
            empty_timeout,
            departure_timeout,
            max_participants,
            metadata,
        } => {
            let options = CreateRoomOptions {
                empty_timeout,
                departure_timeout,
                max_participants,
                metadata,
                ..Default::default()
            };
            let room = client
                .create_room(&name, options)
                .await
                .map_err(failed("CreateRoom"))?;
            print(json, &room, || rooms_table(std::slice::from_ref(&room)))?;
        }
        RoomCommand::List => {
            let rooms = client
                .list_rooms(Vec::new())
                .await
                .map_err(failed("ListRooms"))?;
            print(json, &rooms, || rooms_table(&rooms))?;
        }
        RoomCommand::Delete { name } => {
            client
                .delete_room(&name)
                .await
                .map_err(failed("DeleteRoom"))?;
            print(json, &serde_json::json!({ "deleted": name }), || {
                format!("deleted room {name}")
            })?;
        }
        RoomCommand::Participants { name } => {
            let participants = client
                .list_participants(&name)
                .await
                .map_err(failed("ListParticipants"))?;
            print(json, &participants, || {
                table(
                    &["IDENTITY", "SID", "NAME", "STATE", "TRACKS", "METADATA"],
                    participants
                        .iter()
                        .map(|p| {
                            let state = proto::participant_info::State::try_from(p.state)
                                .map(|s| s.as_str_name().to_string())
                                .unwrap_or_else(|_| p.state.to_string());
                            vec![
                                p.identity.clone(),
                                p.sid.clone(),
                                p.name.clone(),
                                state,
                                p.tracks.len().to_string(),
                                p.metadata.clone(),
                            ]
                        })
                        .collect(),
                )
            })?;
        }
        RoomCommand::UpdateMetadata { name, metadata } => {
            let room = client
                .update_room_metadata(&name, &metadata)
                .await
                .map_err(failed("UpdateRoomMetadata"))?;
            print(json, &room, || rooms_table(std::slice::from_ref(&room)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
