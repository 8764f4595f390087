//! `aviary`: the LiveKit-compatible SFU and its command-line tools.

mod errors;
mod join;
mod load_test;
mod netem;
mod remote;
mod room;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aviary", version, about = "A LiveKit-compatible WebRTC SFU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// Access tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Manage rooms through RoomService.
    Room(room::RoomArgs),
    /// Join a room: publish media files, record what arrives.
    Join(join::JoinArgs),
    /// Load a server with synthetic publishers and subscribers and report what arrived.
    LoadTest(load_test::LoadTestArgs),
    /// Shape UDP between clients and a server: rate, queue, delay, loss (a userspace netem).
    Netem(netem::NetemArgs),
}

/// Servers and load tests hold a socket per participant: raise the descriptor limit to the
/// hard limit the system allows.
pub(crate) fn raise_fd_limit() {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < hard
    {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Netem(args) => netem::run(args),
        Command::Token(cmd) => token::run(cmd),
        Command::Room(args) => room::run(args),
        Command::Join(args) => join::run(args),
        Command::LoadTest(args) => load_test::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aviary: {}", errors::describe(&e));
            ExitCode::FAILURE
        }
    }
}
