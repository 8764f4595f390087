//! Aviary's LiveKit layer: configuration, access tokens, WebSocket signaling, rooms and
//! participants, the Twirp RoomService, and the media worker threads that run
//! `aviary-sfu` routers.
#![deny(missing_docs)]

pub mod addresses;
pub mod auth;
pub mod banner;
#[doc(hidden)]
pub mod capture;
pub mod config;
pub mod connection_quality;
#[doc(hidden)]
pub mod fuzzing;
pub mod guid;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod room;
pub mod signal;
pub mod webhook;
pub mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::auth::KeyProvider;
use crate::config::Config;
use crate::http::AppState;
use crate::http::serve::ServeLimits;
use crate::room::{EventListener, RoomManager, RoomSettings};
use crate::worker::{WorkerConfig, WorkerPool};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A bind address is not an IP address.
    #[error("invalid bind address {0:?}")]
    BadBindAddress(String),
    /// A socket could not be bound or a thread not started.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Webhooks are configured wrong.
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
}

/// Time rooms get to tell their participants and close at shutdown.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// Time signal links get to send their last messages at shutdown.
const LINK_FLUSH_DEADLINE: Duration = Duration::from_secs(2);
/// Time queued webhooks (`room_finished` among them) get to go out at shutdown.
const WEBHOOK_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the server until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let node_ips = addresses::advertised_ips(&config);
    let first_udp_port = config.rtc.udp_port.unwrap_or(config.rtc.port_range_start);
    let metrics = metrics::Metrics::new(threads);
    metrics::count_panics();
    let workers = WorkerPool::start(&WorkerConfig {
        metrics: metrics.clone(),
        threads,
        bind_ip: addresses::media_bind_ip(&config),
        first_udp_port,
        node_ips: node_ips.clone(),
        tcp_port: Some(config.rtc.tcp_port),
        congestion_control: config.rtc.congestion_control.enabled.then(|| {
            aviary_sfu::CongestionControl {
                allow_pause: config.rtc.congestion_control.allow_pause,
                ..Default::default()
            }
        }),
    })?;
    let settings = RoomSettings::new(
        config.room.clone(),
        config.limit.clone(),
        config.region.clone(),
        guid::new_id(guid::NODE_PREFIX),
    );
    let notifier = if config.webhook.urls.is_empty() {
        None
    } else {
        let n = webhook::Notifier::new(
            config.webhook.urls.clone(),
            &config.webhook.api_key,
            &config.keys,
            metrics.webhooks.clone(),
        )?;
        info!(urls = ?config.webhook.urls, "webhooks on");
        Some(n)
    };
    let listeners: Vec<Arc<dyn EventListener>> = notifier
        .iter()
        .map(|n| Arc::new(n.clone()) as Arc<dyn EventListener>)
        .collect();
    let manager = Arc::new(
        RoomManager::new(settings, workers.handles(), listeners).with_metrics(metrics.clone()),
    );
    let sampler = {
        // The byte rate limit.bytes_per_sec is checked against.
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = metrics.bytes_total();
            loop {
                tick.tick().await;
                let now = metrics.bytes_total();
                metrics.set_byte_rate(now.saturating_sub(last));
                last = now;
            }
        })
    };
    let state = AppState {
        manager: manager.clone(),
        keys: Arc::new(KeyProvider::new(config.keys.clone())),
        links: signal::Links::default(),
    };
    let links = state.links.clone();
    let mut app = http::app(state);
    if config.development {
        app = app.merge(http::dev_page::routes());
    }

    let binds: Vec<String> = if config.bind_addresses.is_empty() {
        vec!["0.0.0.0".into()]
    } else {
        config.bind_addresses.clone()
    };
    let mut servers = tokio::task::JoinSet::new();
    let mut http_addrs = Vec::new();
    for b in &binds {
        let ip: IpAddr = b
            .parse()
            .map_err(|_| ServeError::BadBindAddress(b.clone()))?;
        let addr = SocketAddr::new(ip, config.port);
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if ip.is_ipv6() && binds.len() > 1 => {
                // ::1 is optional in dev mode: hosts without IPv6 still serve IPv4.
                warn!(%addr, "skipping bind: {e}");
                continue;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e}; choose another port with --port"),
                )
                .into());
            }
        };
        http_addrs.push(listener.local_addr()?);
        let app = app.clone();
        servers
            .spawn(async move { http::serve::serve(listener, app, ServeLimits::default()).await });
    }

    let listening = banner::Listening {
        http: http_addrs,
        udp_ports: (
            workers.get(0).udp_addr.port(),
            workers.get(workers.len() - 1).udp_addr.port(),
        ),
        tcp_port: workers.tcp_addr.map(|a| a.port()),
        advertised: node_ips,
    };
    match config.keys.iter().next() {
        Some((key, secret)) if config.development => {
            // Printed, not logged: it is for the person who just typed `serve --dev`.
            println!(
                "{}",
                listening.dev_banner(env!("CARGO_PKG_VERSION"), key, secret)
            );
        }
        _ => info!(
            url = %listening.sdk_url(),
            http = ?listening.http,
            udp_ports = ?listening.udp_ports,
            tcp_port = ?listening.tcp_port,
            advertised = ?listening.advertised,
            workers = workers.len(),
            "serving"
        ),
    }

    if let Some(port) = config.prometheus.port.or(config.prometheus_port) {
        let routes = metrics::routes(metrics.clone(), manager.clone());
        for b in &binds {
            let Ok(ip) = b.parse::<IpAddr>() else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(%addr, "metrics at /metrics");
                    let routes = routes.clone();
                    servers.spawn(async move {
                        http::serve::serve(listener, routes, ServeLimits::default()).await
                    });
                }
                Err(e) if ip.is_ipv6() && binds.len() > 1 => {
                    warn!(%addr, "skipping metrics bind: {e}");
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot serve metrics on {addr}: {e}; choose another port with --prometheus-port"
                        ),
                    )
                    .into());
                }
            }
        }
    }

    tokio::select! {
        _ = shutdown_signal() => info!("shutting down: telling every participant; a second signal exits at once"),
        Some(r) = servers.join_next() => warn!("http server stopped: {r:?}"),
    }
    // Nothing new is taken from here on.
    servers.abort_all();
    tokio::spawn(async {
        shutdown_signal().await;
        warn!("second signal: exiting now");
        std::process::exit(1);
    });
    manager.close_all(SHUTDOWN_DEADLINE).await;
    // Links send the LeaveRequests their rooms queued, then close.
    links.wait_idle(LINK_FLUSH_DEADLINE).await;
    if let Some(n) = &notifier {
        n.flush(WEBHOOK_FLUSH_DEADLINE).await;
    }
    sampler.abort();
    workers.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
