//! Serving HTTP to the internet: hyper with a timer, so that a client that sends its headers
//! a byte at a time (or keeps an idle connection open) is cut off, and caps on connections
//! in total and per client address, so that one address cannot take them all.
//!
//! `axum::serve` runs hyper without a timer, hence without either bound.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

/// Bounds on what HTTP clients can hold.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Time a client gets to send a request's headers; also how long a keep-alive
    /// connection may stay idle before its next request.
    pub header_timeout: Duration,
    /// Connections in the HTTP phase at once (a WebSocket counts until it is upgraded).
    pub max_connections: usize,
    /// Of those, from one IP address.
    pub max_per_ip: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 8192,
            max_per_ip: 256,
        }
    }
}

/// Serves `app` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, app: Router, limits: ServeLimits) -> io::Result<()> {
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                debug!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            debug!(%remote, "connection refused: too many connections");
            continue;
        };
        let ip = remote.ip();
        {
            let mut per_ip = per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= limits.max_per_ip {
                debug!(%remote, "connection refused: too many from this address");
                continue;
            }
            *n += 1;
        }
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let per_ip = per_ip.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                debug!(%remote, "http connection: {e}");
            }
            drop(permit);
            let mut per_ip = per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        });
    }
}
