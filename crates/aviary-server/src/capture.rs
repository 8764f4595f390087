//! Seed capture for the fuzz corpora: with `AVIARY_CAPTURE_DIR` set, the first inputs of
//! each kind the server reads from clients (signaling frames, datagrams, Twirp bodies,
//! tokens) are written there, one file each, so that corpora start from real traffic (see
//! `fuzz/README.md`). Off, it costs one relaxed atomic load per call.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Inputs kept per kind.
const PER_KIND: usize = 400;

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("AVIARY_CAPTURE_DIR").map(PathBuf::from))
        .as_ref()
}

/// Keeps `bytes` as a seed of `kind` (the fuzz target's name), if capturing.
pub fn save(kind: &'static str, counter: &AtomicUsize, bytes: &[u8]) {
    let Some(dir) = dir() else {
        return;
    };
    let n = counter.fetch_add(1, Ordering::Relaxed);
    if n >= PER_KIND {
        return;
    }
    let path = dir.join(kind);
    let _ = std::fs::create_dir_all(&path);
    let _ = std::fs::write(path.join(format!("{}-{n:04}", std::process::id())), bytes);
}

/// Counters, one per kind.
pub static SIGNAL: AtomicUsize = AtomicUsize::new(0);
/// Datagrams.
pub static DATAGRAM: AtomicUsize = AtomicUsize::new(0);
/// Twirp bodies.
pub static TWIRP: AtomicUsize = AtomicUsize::new(0);
/// Access tokens.
pub static TOKEN: AtomicUsize = AtomicUsize::new(0);
