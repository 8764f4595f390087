//! Each room runs as one task that owns its [`RoomCore`]: it takes inputs from signal
//! links, RoomService calls and its media worker, keeps the core's timers, and carries out
//! the core's outputs (link sends, worker commands, events to listeners).
//!
//! Rooms share nothing but the registry and the workers, so one busy room never makes
//! another wait. Every queue a client can fill is bounded: a room's inbox makes a link
//! wait, and a link that cannot keep up with its room is closed (its session stays; the
//! client resumes and catches up).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use livekit_protocol as proto;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, warn};

use super::admission::{JoinError, JoinRequest, ResumeError, ResumeRequest};
use super::core::{Now, RoomCore};
use super::output::{Output, RoomEvent};
use super::session::LinkId;
use super::{DisconnectReason, RoomEndReason};
use crate::ids::{ParticipantSid, RoomName, RoomSid};
use crate::worker::{MediaEvent, WorkerCommand, WorkerHandle};

/// Inputs queued for one room before senders wait.
const INBOX: usize = 256;

/// Messages a room may queue on one link before the link is closed as too slow.
pub const LINK_QUEUE: usize = 1024;
/// Bytes a room may queue on one link (encoded messages) before the link is closed as too
/// slow: a client that stops reading costs at most this much.
pub const LINK_BYTES: usize = 4 << 20;

/// What a room sends down a signal link.
#[derive(Debug)]
pub enum LinkMessage {
    /// A message for the client, and its encoded size.
    Signal(Box<proto::SignalResponse>, usize),
    /// Close the socket once what came before is sent.
    Close,
}

/// The room's end of a signal link.
#[derive(Debug, Clone)]
pub struct LinkSender {
    /// The link.
    pub id: LinkId,
    tx: mpsc::Sender<LinkMessage>,
    /// Bytes queued and not yet taken by the link.
    queued: Arc<AtomicUsize>,
}

/// The link's end.
#[derive(Debug)]
pub struct LinkReceiver {
    rx: mpsc::Receiver<LinkMessage>,
    queued: Arc<AtomicUsize>,
}

/// A new link's two ends, bounded by [`LINK_QUEUE`] messages and [`LINK_BYTES`] bytes.
pub fn link_channel(id: LinkId) -> (LinkSender, LinkReceiver) {
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        LinkSender {
            id,
            tx,
            queued: queued.clone(),
        },
        LinkReceiver { rx, queued },
    )
}

/// Why a message could not be queued on a link.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Past its message or byte bound: the client is not reading.
    Full,
    /// The link is gone.
    Closed,
}

impl LinkSender {
    fn send(&self, message: Box<proto::SignalResponse>) -> Result<(), Refused> {
        let bytes = prost::Message::encoded_len(message.as_ref());
        if self.queued.load(Ordering::Relaxed) + bytes > LINK_BYTES {
            return Err(Refused::Full);
        }
        match self.tx.try_send(LinkMessage::Signal(message, bytes)) {
            Ok(()) => {
                self.queued.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Refused::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Closed),
        }
    }

    fn close(&self) {
        let _ = self.tx.try_send(LinkMessage::Close);
    }
}

impl LinkReceiver {
    /// The next message; its bytes no longer count against the link's bound.
    pub async fn recv(&mut self) -> Option<LinkMessage> {
        let m = self.rx.recv().await;
        self.taken(&m);
        m
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<LinkMessage> {
        let m = self.rx.try_recv().ok();
        self.taken(&m);
        m
    }

    fn taken(&self, m: &Option<LinkMessage>) {
        if let Some(LinkMessage::Signal(_, bytes)) = m {
            self.queued.fetch_sub(*bytes, Ordering::Relaxed);
        }
    }
}

/// Consumes a room's domain events (webhooks today). Called on the room's task: it must
/// not block.
pub trait EventListener: Send + Sync {
    /// One event, in the room's order.
    fn on_event(&self, event: &RoomEvent);
}

/// A call run on a room's task with its core.
type Call = Box<dyn FnOnce(&mut RoomCore, Now) + Send>;

/// One input of a room.
pub(super) enum RoomInput {
    Join {
        req: JoinRequest,
        link: LinkSender,
        reply: oneshot::Sender<Result<ParticipantSid, JoinError>>,
    },
    Resume {
        req: ResumeRequest,
        link: LinkSender,
        reply: oneshot::Sender<Result<ParticipantSid, ResumeError>>,
    },
    Signal {
        from: ParticipantSid,
        link: LinkId,
        request: proto::SignalRequest,
    },
    Detach {
        participant: ParticipantSid,
        link: LinkId,
    },
    Call(Call),
}

/// The room is gone (closed, or its task ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the room is closed")]
pub struct RoomGone;

/// A handle to a running room.
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomInput>,
    /// The room's sid.
    pub sid: RoomSid,
    /// The room's name.
    pub name: RoomName,
}

impl std::fmt::Debug for RoomHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomHandle")
            .field("sid", &self.sid)
            .field("name", &self.name)
            .finish()
    }
}

impl RoomHandle {
    /// Runs `f` on the room's task and returns what it returns.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RoomCore, Now) -> T + Send + 'static,
    ) -> Result<T, RoomGone> {
        let (reply, rx) = oneshot::channel();
        let call: Call = Box::new(move |core, now| {
            let _ = reply.send(f(core, now));
        });
        self.tx
            .send(RoomInput::Call(call))
            .await
            .map_err(|_| RoomGone)?;
        rx.await.map_err(|_| RoomGone)
    }

    /// Joins a participant on `link`.
    pub async fn join(
        &self,
        req: JoinRequest,
        link: LinkSender,
    ) -> Result<ParticipantSid, JoinError> {
        self.attach(
            |reply| RoomInput::Join { req, link, reply },
            JoinError::RoomClosed,
        )
        .await
    }

    /// Resumes a session on `link`.
    pub async fn resume(
        &self,
        req: ResumeRequest,
        link: LinkSender,
    ) -> Result<ParticipantSid, ResumeError> {
        self.attach(
            |reply| RoomInput::Resume { req, link, reply },
            ResumeError::RoomClosed,
        )
        .await
    }

    async fn attach<E>(
        &self,
        input: impl FnOnce(oneshot::Sender<Result<ParticipantSid, E>>) -> RoomInput,
        closed: E,
    ) -> Result<ParticipantSid, E> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(input(reply)).await.is_err() {
            return Err(closed);
        }
        rx.await.unwrap_or(Err(closed))
    }

    /// A request from a participant's link; waits while the room's inbox is full.
    pub async fn signal(
        &self,
        from: &ParticipantSid,
        link: LinkId,
        request: proto::SignalRequest,
    ) -> Result<(), RoomGone> {
        self.tx
            .send(RoomInput::Signal {
                from: from.clone(),
                link,
                request,
            })
            .await
            .map_err(|_| RoomGone)
    }

    /// The link went away.
    pub async fn detach(&self, participant: &ParticipantSid, link: LinkId) {
        let _ = self
            .tx
            .send(RoomInput::Detach {
                participant: participant.clone(),
                link,
            })
            .await;
    }

    /// Whether the room's task has ended.
    pub fn is_gone(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What a room's task shares with the rest of the server.
#[derive(Clone)]
pub(super) struct RoomContext {
    pub(super) worker: WorkerHandle,
    pub(super) listeners: Arc<[Arc<dyn EventListener>]>,
    /// Written after every input: what ListRooms and metrics read without asking the room.
    pub(super) summary: Arc<Mutex<RoomSummary>>,
    /// Called once when the room has closed, before it stops taking inputs.
    pub(super) on_closed: Arc<dyn Fn(&RoomSid) + Send + Sync>,
    /// Where the room counts what it drops.
    pub(super) metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A room as seen from outside, kept current by its task.
#[derive(Clone, Debug, Default)]
pub struct RoomSummary {
    /// The room's info.
    pub info: proto::Room,
    /// Participants, hidden ones included.
    pub participants: usize,
    /// Published tracks.
    pub tracks: usize,
}

/// Starts a room's task; returns its handle.
pub(super) fn spawn(core: RoomCore, ctx: RoomContext) -> (RoomHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let handle = RoomHandle {
        tx,
        sid: core.sid(),
        name: RoomName::new(core.info().name.clone()),
    };
    let span = tracing::info_span!("room", name = core.info().name, sid = core.info().sid);
    let task = tokio::spawn(run(core, rx, ctx).instrument(span));
    (handle, task)
}

/// Closes the room's media, deregisters it and reports it finished if the task ends without
/// closing (a panic): links close with the task's senders, and clients rejoin a new room.
struct Guard {
    ctx: RoomContext,
    sid: RoomSid,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            warn!(room = %self.sid, "room task ended abnormally; closing its media");
            self.ctx.worker.send(WorkerCommand::CloseRoom {
                room: self.sid.clone(),
            });
            (self.ctx.on_closed)(&self.sid);
            let room = self
                .ctx
                .summary
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .info
                .clone();
            let finished = RoomEvent::RoomFinished {
                room,
                reason: RoomEndReason::RoomEndUnknown,
            };
            for l in self.ctx.listeners.iter() {
                l.on_event(&finished);
            }
        }
    }
}

struct Task {
    core: RoomCore,
    ctx: RoomContext,
    links: HashMap<LinkId, LinkSender>,
    media_rx: mpsc::UnboundedReceiver<MediaEvent>,
}

async fn run(core: RoomCore, mut inbox: mpsc::Receiver<RoomInput>, ctx: RoomContext) {
    let mut guard = Guard {
        ctx: ctx.clone(),
        sid: core.sid(),
        done: false,
    };
    let (media_tx, media_rx) = mpsc::unbounded_channel();
    ctx.worker.send(WorkerCommand::OpenRoom {
        room: core.sid(),
        events: media_tx,
    });
    let mut t = Task {
        core,
        ctx,
        links: HashMap::new(),
        media_rx,
    };
    t.dispatch();
    loop {
        let deadline = t.core.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = inbox.recv() => match input {
                Some(input) => t.handle_input(input),
                // Every handle is gone: the server is going away.
                None => t.core.close(
                    Now::system(),
                    DisconnectReason::ServerShutdown,
                    RoomEndReason::RoomEndServerShutdown,
                ),
            },
            event = t.media_rx.recv() => t.handle_media(event),
            _ = sleep => t.core.handle_timeout(Now::system()),
        }
        t.dispatch();
        t.publish_summary();
        if t.core.is_closed() {
            break;
        }
    }
    (t.ctx.on_closed)(&t.core.sid());
    guard.done = true;
    // Whatever was already queued finds the room closed.
    inbox.close();
    while let Ok(input) = inbox.try_recv() {
        match input {
            RoomInput::Join { reply, .. } => {
                let _ = reply.send(Err(JoinError::RoomClosed));
            }
            RoomInput::Resume { reply, .. } => {
                let _ = reply.send(Err(ResumeError::RoomClosed));
            }
            RoomInput::Signal { .. } | RoomInput::Detach { .. } | RoomInput::Call(_) => {}
        }
    }
    // Links still open get their last messages and close with the task's senders.
    debug!("room task done");
}

impl Task {
    fn handle_input(&mut self, input: RoomInput) {
        let now = Now::system();
        match input {
            RoomInput::Join { req, link, reply } => {
                self.attach(now, link, reply, |core, id| core.join(now, req, id));
            }
            RoomInput::Resume { req, link, reply } => {
                self.attach(now, link, reply, |core, id| core.resume(now, req, id));
            }
            RoomInput::Signal {
                from,
                link,
                request,
            } => self.core.handle_signal(now, &from, link, request),
            RoomInput::Detach { participant, link } => {
                self.links.remove(&link);
                self.core.detach(now, &participant, link);
            }
            RoomInput::Call(call) => call(&mut self.core, now),
        }
    }

    /// Attaches a new link to a session (`attach` joins or resumes) and answers the link.
    fn attach<E>(
        &mut self,
        now: Now,
        link: LinkSender,
        reply: oneshot::Sender<Result<ParticipantSid, E>>,
        attach: impl FnOnce(&mut RoomCore, LinkId) -> Result<ParticipantSid, E>,
    ) {
        let id = link.id;
        // In before the core's first message to it is dispatched.
        self.links.insert(id, link);
        match attach(&mut self.core, id) {
            Ok(sid) => {
                if reply.send(Ok(sid.clone())).is_err() {
                    // The link gave up waiting: the session is left detached.
                    self.links.remove(&id);
                    self.core.detach(now, &sid, id);
                }
            }
            Err(e) => {
                self.links.remove(&id);
                let _ = reply.send(Err(e));
            }
        }
    }

    fn handle_media(&mut self, event: Option<MediaEvent>) {
        let now = Now::system();
        match event {
            Some(MediaEvent::RoomFailed) => {
                // The worker dropped the failed router; a fresh one serves the rejoins.
                self.reopen_media();
                self.core.handle_media(now, MediaEvent::RoomFailed);
            }
            Some(event) => self.core.handle_media(now, event),
            None => {
                // The worker let go of the room without saying why: its thread ended.
                self.core.handle_media(now, MediaEvent::RoomFailed);
                if self.ctx.worker.is_alive() {
                    self.reopen_media();
                } else {
                    warn!("the room's media worker is gone; closing the room");
                    self.core.close(
                        now,
                        DisconnectReason::StateMismatch,
                        RoomEndReason::RoomEndUnknown,
                    );
                }
            }
        }
    }

    fn reopen_media(&mut self) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.media_rx = rx;
        self.ctx.worker.send(WorkerCommand::OpenRoom {
            room: self.core.sid(),
            events: tx,
        });
    }

    /// Carries out the core's outputs, in order.
    fn dispatch(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Signal { to, link, message } => {
                    let Some(tx) = self.links.get(&link) else {
                        continue;
                    };
                    if let Err(e) = tx.send(message) {
                        // A client that does not read its socket must not make the room
                        // queue without end: its link goes, its session stays.
                        if e == Refused::Full {
                            warn!(participant = %to, %link, "signal link cannot keep up; closing it");
                            if let Some(m) = &self.ctx.metrics {
                                m.signal.slow_links.inc();
                            }
                        }
                        if let Some(tx) = self.links.remove(&link) {
                            tx.close();
                        }
                        self.core.detach(Now::system(), &to, link);
                    }
                }
                Output::CloseLink(link) => {
                    if let Some(tx) = self.links.remove(&link) {
                        tx.close();
                    }
                }
                Output::Media(cmd) => self.ctx.worker.send(cmd),
                Output::Event(event) => {
                    for l in self.ctx.listeners.iter() {
                        l.on_event(&event);
                    }
                }
            }
        }
    }

    fn publish_summary(&self) {
        let summary = RoomSummary {
            info: self.core.info().clone(),
            participants: self.core.participants().len(),
            tracks: self
                .core
                .participants()
                .iter()
                .map(|p| p.info.tracks.len())
                .sum(),
        };
        *self.ctx.summary.lock().unwrap_or_else(|e| e.into_inner()) = summary;
    }
}
