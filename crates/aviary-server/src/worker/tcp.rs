//! ICE over TCP (passive, RFC 4571 framing: a 2-byte length before each packet).
//!
//! One acceptor thread owns the TCP port. A new connection's first frame must be a STUN
//! binding request; its USERNAME names the transport, the [`UfragRegistry`] names the worker
//! owning it, and the connection is handed to that worker, which reads and writes it in its
//! own event loop like its UDP socket.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aviary_sfu::demux;
use tracing::{debug, warn};

use super::{WorkerCommand, WorkerHandle};

/// Longest frame accepted (a frame carries one UDP-sized packet).
pub(crate) const MAX_FRAME: usize = 1500 * 2;
/// Time a new connection gets to send its whole first frame (one deadline, however the
/// bytes trickle in).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections that may be waiting for their first frame at once.
const MAX_PENDING: usize = 64;
/// Of those, from one IP address.
const MAX_PENDING_PER_IP: usize = 8;
/// Bytes queued toward a slow TCP peer before further packets are dropped (as UDP would).
pub(crate) const MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// ICE/TCP connections adopted per transport; past it the oldest is closed.
pub(crate) const MAX_PER_TRANSPORT: usize = 4;
/// An adopted connection that sends nothing for this long is closed (ICE checks come
/// every few seconds on a live one).
pub(crate) const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Which worker owns which local ICE ufrag; written when transports come and go, read once
/// per new TCP connection.
#[derive(Clone, Default)]
pub struct UfragRegistry(Arc<Mutex<HashMap<String, usize>>>);

impl UfragRegistry {
    pub(crate) fn insert(&self, ufrag: &str, worker: usize) {
        self.lock().insert(ufrag.to_string(), worker);
    }

    pub(crate) fn remove(&self, ufrag: &str) {
        self.lock().remove(ufrag);
    }

    fn get(&self, ufrag: &str) -> Option<usize> {
        self.lock().get(ufrag).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Splits complete RFC 4571 frames off the front of `buf`.
pub fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, io::Error> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 2 {
        let len = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "oversized frame",
            ));
        }
        if buf.len() < at + 2 + len {
            break;
        }
        frames.push(buf[at + 2..at + 2 + len].to_vec());
        at += 2 + len;
    }
    buf.drain(..at);
    Ok(frames)
}

/// Appends one framed packet to `out`.
pub(crate) fn frame(packet: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    out.extend_from_slice(packet);
}

/// Starts the acceptor thread.
pub(crate) fn start_acceptor(
    listener: TcpListener,
    registry: UfragRegistry,
    workers: Vec<WorkerHandle>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let pending = Arc::new(AtomicUsize::new(0));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    std::thread::Builder::new()
        .name("aviary-ice-tcp".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let stream = match conn {
                    Ok(s) => s,
                    Err(e) => {
                        debug!("tcp accept: {e}");
                        continue;
                    }
                };
                let Ok(ip) = stream.peer_addr().map(|a| a.ip()) else {
                    continue;
                };
                if pending.load(Ordering::Relaxed) >= MAX_PENDING {
                    continue;
                }
                {
                    let mut per_ip = per_ip.lock().unwrap_or_else(|e| e.into_inner());
                    let n = per_ip.entry(ip).or_insert(0);
                    if *n >= MAX_PENDING_PER_IP {
                        debug!(%ip, "too many ice-tcp handshakes from one address");
                        continue;
                    }
                    *n += 1;
                }
                pending.fetch_add(1, Ordering::Relaxed);
                let (registry, workers, pending, per_ip) = (
                    registry.clone(),
                    workers.clone(),
                    pending.clone(),
                    per_ip.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name("aviary-ice-tcp-hello".into())
                    .spawn(move || {
                        if let Err(e) = hand_off(stream, &registry, &workers) {
                            debug!("ice-tcp connection refused: {e}");
                        }
                        pending.fetch_sub(1, Ordering::Relaxed);
                        let mut per_ip = per_ip.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(n) = per_ip.get_mut(&ip) {
                            *n -= 1;
                            if *n == 0 {
                                per_ip.remove(&ip);
                            }
                        }
                    });
                if let Err(e) = spawned {
                    warn!("cannot start ice-tcp handshake thread: {e}");
                }
            }
        })
}

/// Reads the first frame and gives the connection to the worker its ufrag names.
fn hand_off(
    mut stream: TcpStream,
    registry: &UfragRegistry,
    workers: &[WorkerHandle],
) -> io::Result<()> {
    let remote = stream.peer_addr()?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut len = [0u8; 2];
    read_by(&mut stream, &mut len, deadline)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "oversized frame",
        ));
    }
    let mut first = vec![0u8; len];
    read_by(&mut stream, &mut first, deadline)?;
    let ufrag = demux::stun_local_ufrag(&first)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "first frame is not STUN"))?;
    let worker = registry
        .get(ufrag)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown ufrag"))?;
    stream.set_read_timeout(None)?;
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    let handle = workers
        .get(worker)
        .ok_or_else(|| io::Error::other("no such worker"))?;
    handle.send(WorkerCommand::AdoptTcp {
        stream,
        remote,
        first,
    });
    Ok(())
}

/// Fills `buf` from `stream` before `deadline`, however the bytes are split.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake too slow",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[at..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads() {
        let mut wire = Vec::new();
        frame(b"hello", &mut wire);
        frame(b"", &mut wire);
        frame(b"world!", &mut wire);
        let mut buf = wire[..4].to_vec();
        assert!(take_frames(&mut buf).unwrap().is_empty());
        buf.extend_from_slice(&wire[4..]);
        let frames = take_frames(&mut buf).unwrap();
        assert_eq!(frames, vec![b"hello".to_vec(), vec![], b"world!".to_vec()]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frames_are_an_error() {
        let mut buf = vec![0xff, 0xff, 0, 0];
        assert!(take_frames(&mut buf).is_err());
    }
}
