//! `aviary serve`: run the server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use aviary_server::config::{self, Overrides};
use clap::Args;

/// Flags mirror livekit-server's, so that it can be swapped in.
#[derive(Args)]
pub struct ServeArgs {
    /// Development mode: API key `devkey`, secret `secret`, HTTP on loopback only, debug
    /// logs, and a banner saying where to connect.
    #[arg(long)]
    dev: bool,
    /// Path to a livekit.yaml-style config file.
    #[arg(long, env = "LIVEKIT_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Config as a YAML string (env LIVEKIT_CONFIG).
    #[arg(long, env = "LIVEKIT_CONFIG")]
    config_body: Option<String>,
    /// IP address to listen on (repeatable).
    #[arg(long)]
    bind: Vec<String>,
    /// HTTP/WebSocket port (default 7880).
    #[arg(long)]
    port: Option<u16>,
    /// First UDP port for media (worker N uses port + N; default 7882 in dev mode).
    #[arg(long)]
    udp_port: Option<u16>,
    /// ICE/TCP port (default 7881).
    #[arg(long)]
    tcp_port: Option<u16>,
    /// IP advertised in ICE candidates.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// API keys as "key: secret" (env LIVEKIT_KEYS).
    #[arg(long, env = "LIVEKIT_KEYS")]
    keys: Option<String>,
    /// File of "key: secret" lines.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Redis host:port (accepted; multi-node is not implemented yet).
    #[arg(long)]
    redis_host: Option<String>,
    /// Serve Prometheus metrics at /metrics on this port.
    #[arg(long)]
    prometheus_port: Option<u16>,
}

fn init_logging(level: &str, json: bool) {
    // The config accepts upstream's names (checked in `config::load`).
    let level = match level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        other => other.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Our crates at the configured level; str0m's per-packet chatter one level quieter.
        tracing_subscriber::EnvFilter::new(format!(
            "{level},str0m=info,is=info,dimpl=info,sctp_proto=info"
        ))
    });
    // Colour only on a terminal: escape codes make a log file hard to read.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        dev: args.dev,
        config_file: args.config,
        config_body: args.config_body,
        bind: args.bind,
        port: args.port,
        udp_port: args.udp_port,
        tcp_port: args.tcp_port,
        node_ip: args.node_ip,
        keys: args.keys,
        key_file: args.key_file,
        redis_host: args.redis_host,
        prometheus_port: args.prometheus_port,
    };
    let loaded = match config::load(&overrides) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("aviary: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    init_logging(&loaded.config.logging.level, loaded.config.logging.json);
    for key in &loaded.unknown_keys {
        match config::likely_key(key) {
            Some(likely) => {
                tracing::warn!(key, "unknown config key ignored; did you mean {likely}?")
            }
            None => tracing::warn!(key, "unknown config key ignored"),
        }
    }
    for key in loaded.short_secrets() {
        tracing::error!(
            api_key = key,
            "API secret is shorter than {} characters: tokens signed with it can be forged by guessing it; use a long random secret",
            aviary_server::config::MIN_SECRET_LEN
        );
    }
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(aviary_server::serve(loaded.config))?;
    Ok(ExitCode::SUCCESS)
}
