//! A signal link: one WebSocket, attached to a participant's session in its room.
//!
//! The link only carries frames: requests go to the room (waiting while the room's inbox
//! is full, which slows a flooding client down instead of growing a queue), and the room's
//! messages come back on a bounded queue. When the socket closes, or stays silent past the
//! ping timeout, or cannot take a message within [`SEND_DEADLINE`], the link detaches from
//! its session, which stays in the room for the client to resume.

use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use livekit_protocol as proto;
use tracing::{Instrument, debug, info_span};

use super::codec::{Frame, decode_request, encode_response};
use crate::ids::ParticipantSid;
use crate::room::{LinkId, LinkMessage, LinkReceiver, RoomHandle};

/// Time the socket gets to take one message.
pub const SEND_DEADLINE: Duration = Duration::from_secs(5);

/// What a link is attached to.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The room.
    pub room: RoomHandle,
    /// The participant whose session it is.
    pub participant: ParticipantSid,
    /// This link.
    pub link: LinkId,
    /// Silence after which the client is gone.
    pub ping_timeout: Duration,
}

/// How a link ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// The client closed the socket (or it broke).
    ClientClosed,
    /// The room closed the link (after a `LeaveRequest`, or a resume replaced it).
    RoomClosed,
    /// No message within the ping timeout.
    Timeout,
    /// The socket did not take a message in time.
    Stalled,
}

/// Runs a link until it ends, then detaches it from its session (also if the link's task
/// panics or is cancelled: a guard does it then).
pub async fn run_link<S, K>(stream: S, sink: K, rx: LinkReceiver, at: Attachment) -> LinkEnd
where
    S: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
{
    let span = info_span!(
        "link",
        room = %at.room.name,
        participant = %at.participant,
        link = %at.link
    );
    async move {
        let mut guard = DetachGuard(Some(at.clone()));
        let end = pump(stream, sink, rx, &at).await;
        debug!(?end, "link ended");
        guard.0 = None;
        at.room.detach(&at.participant, at.link).await;
        end
    }
    .instrument(span)
    .await
}

/// Detaches a link whose task ends without doing it itself.
struct DetachGuard(Option<Attachment>);

impl Drop for DetachGuard {
    fn drop(&mut self) {
        if let Some(at) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { at.room.detach(&at.participant, at.link).await });
        }
    }
}

async fn pump<S, K>(mut stream: S, mut sink: K, mut rx: LinkReceiver, at: &Attachment) -> LinkEnd
where
    S: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
{
    let mut json = false;
    let mut last_seen = Instant::now();
    let mut ticker = tokio::time::interval(at.ping_timeout / 3);
    let end = loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(frame) = frame else { break LinkEnd::ClientClosed };
                last_seen = Instant::now();
                match &frame {
                    Frame::Text(t) => {
                        json = true;
                        let mut seed = vec![1u8];
                        seed.extend_from_slice(t.as_bytes());
                        crate::capture::save("signal_frame", &crate::capture::SIGNAL, &seed);
                    }
                    Frame::Binary(b) => {
                        let mut seed = vec![0u8];
                        seed.extend_from_slice(b);
                        crate::capture::save("signal_frame", &crate::capture::SIGNAL, &seed);
                    }
                    Frame::Close => {}
                }
                match decode_request(&frame) {
                    Ok(Some(req)) => {
                        if at.room.signal(&at.participant, at.link, req).await.is_err() {
                            break LinkEnd::RoomClosed;
                        }
                    }
                    Ok(None) => break LinkEnd::ClientClosed,
                    Err(e) => debug!("ignoring undecodable frame: {e}"),
                }
            }
            msg = rx.recv() => match msg {
                Some(LinkMessage::Signal(resp, _)) => {
                    if !send(&mut sink, encode_response(&resp, json)).await {
                        break LinkEnd::Stalled;
                    }
                }
                Some(LinkMessage::Close) | None => break LinkEnd::RoomClosed,
            },
            _ = ticker.tick() => {
                if last_seen.elapsed() > at.ping_timeout {
                    break LinkEnd::Timeout;
                }
            }
        }
    };
    if end == LinkEnd::RoomClosed {
        // What the room queued before closing (a LeaveRequest) still goes out.
        while let Some(LinkMessage::Signal(resp, _)) = rx.try_recv() {
            if !send(&mut sink, encode_response(&resp, json)).await {
                break;
            }
        }
    }
    let _ = tokio::time::timeout(SEND_DEADLINE, sink.send(Frame::Close)).await;
    end
}

/// Sends one frame within the deadline; false if the socket failed or stalled.
async fn send<K: Sink<Frame> + Unpin>(sink: &mut K, frame: Frame) -> bool {
    matches!(
        tokio::time::timeout(SEND_DEADLINE, sink.send(frame)).await,
        Ok(Ok(()))
    )
}

/// Sends a `LeaveRequest` on a socket that has no session (a refused resume) and closes it.
pub async fn refuse<K: Sink<Frame> + Unpin>(mut sink: K, leave: proto::LeaveRequest) {
    let resp = proto::SignalResponse {
        message: Some(proto::signal_response::Message::Leave(leave)),
    };
    let _ = send(&mut sink, encode_response(&resp, false)).await;
    let _ = send(&mut sink, Frame::Close).await;
}

/// Counts the links running, so that shutdown can let them send their last messages.
#[derive(Clone, Debug, Default)]
pub struct Links(std::sync::Arc<std::sync::atomic::AtomicUsize>);

/// Holds one count of [`Links`] while a link runs.
#[derive(Debug)]
pub struct LinkGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Links {
    /// Counts a link until the guard drops.
    pub fn enter(&self) -> LinkGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LinkGuard(self.0.clone())
    }

    /// Links running now.
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until no link runs, at most `deadline`.
    pub async fn wait_idle(&self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        while self.count() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
