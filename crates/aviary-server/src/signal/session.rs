//! One participant's signaling session, generic over the frame stream and sink.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aviary_sfu::TransportDirection;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use livekit_protocol as proto;
use livekit_protocol::signal_request::Message as Req;
use livekit_protocol::signal_response::Message as Resp;
use tracing::{Instrument, debug, info_span, warn};

use super::codec::{Frame, decode_request, encode_response};
use crate::room::{
    DisconnectReason, Joined, RoomManager, ServiceError, SessionMessage, quality, reconnect_request,
};
use crate::worker::{MediaEvent, PeerKey, WorkerCommand, WorkerHandle};

/// What a session needs from the server.
#[derive(Clone)]
pub struct SessionContext {
    /// The rooms.
    pub manager: Arc<RoomManager>,
    /// The worker owning this participant's room.
    pub worker: WorkerHandle,
}

/// How a session ended.
enum End {
    /// The client left or went away.
    Client,
    /// The server told it to leave (already removed from the room).
    Server,
    /// No message within the ping timeout.
    Timeout,
}

struct Session {
    ctx: SessionContext,
    key: PeerKey,
    room_name: String,
    json: bool,
    offer_id: u32,
    publisher_offer_ids: VecDeque<u32>,
    active: bool,
    /// Whether our candidates were trickled, by `SignalTarget`.
    trickled: [bool; 2],
    /// A media connection failed: the client is to join again.
    reconnect: bool,
    last_seen: Instant,
    ping_timeout: Duration,
}

/// Runs a joined participant's session until it ends, then removes it from the room and
/// closes its media.
pub async fn run_session<S, K>(stream: S, sink: K, joined: Joined, ctx: SessionContext)
where
    S: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
{
    let span = info_span!(
        "session",
        room = joined.room_name,
        participant = joined.participant_sid
    );
    run(stream, sink, joined, ctx).instrument(span).await
}

async fn run<S, K>(mut stream: S, mut sink: K, joined: Joined, ctx: SessionContext)
where
    S: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
{
    let Joined {
        response,
        room_name,
        room_sid,
        participant_sid,
        mut rx,
        mut media_rx,
        ..
    } = joined;
    let ping_timeout = Duration::from_secs(response.ping_timeout.max(1) as u64);
    let mut s = Session {
        key: PeerKey {
            room: room_sid,
            participant: participant_sid,
        },
        ctx,
        room_name,
        json: false,
        offer_id: 0,
        publisher_offer_ids: VecDeque::new(),
        active: false,
        trickled: [false; 2],
        reconnect: false,
        last_seen: Instant::now(),
        ping_timeout,
    };
    // Encoded and dropped before the await: a local still in scope would live in this
    // future for the whole session, and the JoinResponse lists every other participant.
    let join = encode_response(
        &proto::SignalResponse {
            message: Some(Resp::Join(response)),
        },
        false,
    );
    if sink.send(join).await.is_err() {
        s.cleanup(End::Client);
        return;
    }
    let mut ticker = tokio::time::interval(ping_timeout / 3);
    let end = loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(frame) = frame else { break End::Client };
                s.last_seen = Instant::now();
                if let Frame::Text(_) = frame {
                    s.json = true;
                }
                match decode_request(&frame) {
                    Ok(Some(req)) => {
                        let (replies, leave) = s.handle_request(req);
                        if send_all(&mut sink, &replies, s.json).await.is_err() {
                            break End::Client;
                        }
                        if leave {
                            break End::Client;
                        }
                    }
                    Ok(None) => break End::Client,
                    Err(e) => debug!("ignoring undecodable frame: {e}"),
                }
            }
            msg = rx.recv() => match msg {
                Some(SessionMessage::Signal(resp)) => {
                    if sink.send(encode_response(&resp, s.json)).await.is_err() {
                        break End::Client;
                    }
                }
                Some(SessionMessage::Leave(leave)) => {
                    let resp = proto::SignalResponse { message: Some(Resp::Leave(leave)) };
                    let _ = sink.send(encode_response(&resp, s.json)).await;
                    break End::Server;
                }
                None => break End::Server,
            },
            event = media_rx.recv() => {
                let replies = match event {
                    Some(e) => s.handle_media(e),
                    None => {
                        // The worker is gone (its thread ended): no media for this session.
                        s.reconnect = true;
                        Vec::new()
                    }
                };
                if send_all(&mut sink, &replies, s.json).await.is_err() {
                    break End::Client;
                }
                if s.reconnect {
                    // Its media connection is gone: out of the room, and the SDK joins again.
                    s.ctx.manager.leave(
                        &s.room_name,
                        &s.key.participant,
                        DisconnectReason::StateMismatch,
                    );
                    let leave = proto::SignalResponse {
                        message: Some(Resp::Leave(reconnect_request())),
                    };
                    let _ = sink.send(encode_response(&leave, s.json)).await;
                    break End::Server;
                }
            }
            _ = ticker.tick() => {
                if s.last_seen.elapsed() > s.ping_timeout {
                    break End::Timeout;
                }
            }
        }
    };
    let _ = sink.send(Frame::Close).await;
    s.cleanup(end);
}

async fn send_all<K: Sink<Frame> + Unpin>(
    sink: &mut K,
    replies: &[proto::SignalResponse],
    json: bool,
) -> Result<(), K::Error> {
    for r in replies {
        sink.send(encode_response(r, json)).await?;
    }
    Ok(())
}

fn response(message: Resp) -> proto::SignalResponse {
    proto::SignalResponse {
        message: Some(message),
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Pulls the `candidate:...` line out of a trickled `RTCIceCandidateInit` JSON.
fn candidate_line(init: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(init).ok()?;
    Some(v.get("candidate")?.as_str()?.to_string())
}

impl Session {
    /// Handles one client request; returns the replies and whether the session ends.
    fn handle_request(&mut self, req: proto::SignalRequest) -> (Vec<proto::SignalResponse>, bool) {
        let Some(msg) = req.message else {
            return (Vec::new(), false);
        };
        let mut replies = Vec::new();
        match msg {
            Req::Offer(sd) => {
                self.publisher_offer_ids.push_back(sd.id);
                self.ctx.worker.send(WorkerCommand::PublisherOffer {
                    key: self.key.clone(),
                    sdp: sd.sdp,
                });
            }
            Req::Answer(sd) => self.ctx.worker.send(WorkerCommand::SubscriberAnswer {
                key: self.key.clone(),
                sdp: sd.sdp,
            }),
            Req::Trickle(t) => {
                let target = if t.target == proto::SignalTarget::Subscriber as i32 {
                    TransportDirection::Subscriber
                } else {
                    TransportDirection::Publisher
                };
                match candidate_line(&t.candidate_init) {
                    Some(candidate) => self.ctx.worker.send(WorkerCommand::Candidate {
                        key: self.key.clone(),
                        target,
                        candidate,
                    }),
                    None => debug!(init = t.candidate_init, "unparseable candidate"),
                }
            }
            Req::Leave(_) => {
                self.ctx.manager.leave(
                    &self.room_name,
                    &self.key.participant,
                    DisconnectReason::ClientInitiated,
                );
                return (replies, true);
            }
            Req::Ping(ts) => replies.push(response(Resp::Pong(ts))),
            Req::PingReq(ping) => replies.push(response(Resp::PongResp(proto::Pong {
                last_ping_timestamp: ping.timestamp,
                timestamp: unix_ms(),
            }))),
            Req::UpdateMetadata(update) => {
                let result = self.ctx.manager.update_own_metadata(
                    &self.room_name,
                    &self.key.participant,
                    &update,
                );
                use proto::request_response::Reason;
                // Current SDKs wait for a RequestResponse to every request that has an id.
                let (reason, message) = match result {
                    Ok(()) => (Reason::Ok, String::new()),
                    Err(e @ ServiceError::PermissionDenied(_)) => {
                        (Reason::NotAllowed, e.to_string())
                    }
                    Err(e @ ServiceError::InvalidArgument(_)) => {
                        (Reason::LimitExceeded, e.to_string())
                    }
                    Err(e) => (Reason::NotFound, e.to_string()),
                };
                if update.request_id != 0 || reason != Reason::Ok {
                    replies.push(response(Resp::RequestResponse(proto::RequestResponse {
                        request_id: update.request_id,
                        reason: reason as i32,
                        message,
                        ..Default::default()
                    })));
                }
            }
            Req::AddTrack(req) => {
                match self
                    .ctx
                    .manager
                    .add_track(&self.room_name, &self.key.participant, &req)
                {
                    Ok(track) => replies.push(response(Resp::TrackPublished(
                        proto::TrackPublishedResponse {
                            cid: req.cid,
                            track: Some(track),
                        },
                    ))),
                    Err(e) => {
                        // Told, as upstream does, so that the SDK fails the publish at once
                        // instead of waiting for its timeout.
                        warn!(cid = req.cid, "track refused: {e}");
                        use proto::request_response::{Reason, Request};
                        let reason = match e {
                            ServiceError::PermissionDenied(_) => Reason::NotAllowed,
                            ServiceError::InvalidArgument(_) => Reason::LimitExceeded,
                            ServiceError::Unsupported(_) => Reason::UnsupportedType,
                            _ => Reason::NotFound,
                        };
                        replies.push(response(Resp::RequestResponse(proto::RequestResponse {
                            request_id: 0,
                            reason: reason as i32,
                            message: e.to_string(),
                            request: Some(Request::AddTrack(req)),
                        })));
                    }
                }
            }
            Req::Mute(m) => self.ctx.manager.set_track_muted(
                &self.room_name,
                &self.key.participant,
                &m.sid,
                m.muted,
            ),
            Req::Subscription(sub) => {
                if let Err(e) = self.ctx.manager.set_subscriptions(
                    &self.room_name,
                    &self.key.participant,
                    &sub.track_sids,
                    &sub.participant_tracks,
                    sub.subscribe,
                ) {
                    debug!("subscription change refused: {e}");
                }
            }
            Req::TrackSetting(settings) => self.ctx.manager.update_track_settings(
                &self.room_name,
                &self.key.participant,
                &settings,
            ),
            other => debug!(?other, "request not handled yet"),
        }
        (replies, false)
    }

    /// Our candidates are in every offer and answer; they are also trickled once per
    /// connection, as LiveKit does, for clients that only look at trickled candidates.
    fn trickle_once(
        &mut self,
        sdp: &str,
        target: proto::SignalTarget,
        out: &mut Vec<proto::SignalResponse>,
    ) {
        let done = &mut self.trickled[target as usize];
        if *done {
            return;
        }
        *done = true;
        // Bundled: every candidate belongs to the first m-line.
        let mid = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .unwrap_or("0")
            .trim_end();
        for line in sdp.lines().filter_map(|l| l.strip_prefix("a=candidate:")) {
            let init = serde_json::json!({
                "candidate": format!("candidate:{}", line.trim_end()),
                "sdpMid": mid,
                "sdpMLineIndex": 0,
            });
            out.push(response(Resp::Trickle(proto::TrickleRequest {
                candidate_init: init.to_string(),
                target: target as i32,
                ..Default::default()
            })));
        }
    }

    fn handle_media(&mut self, event: MediaEvent) -> Vec<proto::SignalResponse> {
        let mut out = Vec::new();
        match event {
            MediaEvent::SubscriberOffer(sdp) => {
                self.offer_id += 1;
                out.push(response(Resp::Offer(proto::SessionDescription {
                    r#type: "offer".into(),
                    sdp: sdp.clone(),
                    id: self.offer_id,
                    ..Default::default()
                })));
                self.trickle_once(&sdp, proto::SignalTarget::Subscriber, &mut out);
            }
            MediaEvent::PublisherAnswer(sdp) => {
                let id = self.publisher_offer_ids.pop_front().unwrap_or(0);
                out.push(response(Resp::Answer(proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp: sdp.clone(),
                    id,
                    ..Default::default()
                })));
                self.trickle_once(&sdp, proto::SignalTarget::Publisher, &mut out);
            }
            MediaEvent::Connected(direction) => {
                debug!(?direction, "media connected");
                if !self.active {
                    self.active = true;
                    self.ctx
                        .manager
                        .set_active(&self.room_name, &self.key.participant);
                }
            }
            MediaEvent::Closed(direction) => {
                warn!(
                    ?direction,
                    "media connection lost; asking the client to reconnect"
                );
                self.reconnect = true;
            }
            MediaEvent::SubscribedLayers {
                track_sid,
                max_layer,
            } => {
                let track =
                    self.ctx
                        .manager
                        .track_info(&self.room_name, &self.key.participant, &track_sid);
                if let Some(track) = track {
                    out.push(response(Resp::SubscribedQualityUpdate(
                        quality::subscribed_qualities(&track, max_layer),
                    )));
                }
            }
            MediaEvent::Speakers(speakers) => {
                out.push(response(Resp::SpeakersChanged(proto::SpeakersChanged {
                    speakers,
                })));
            }
            MediaEvent::ProducerCreated(media) => {
                self.ctx
                    .manager
                    .producer_created(&self.room_name, &self.key.participant, &media);
            }
            MediaEvent::TrackEnded { track_sid } => {
                let had = self.ctx.manager.unpublish_track(
                    &self.room_name,
                    &self.key.participant,
                    &track_sid,
                );
                if had {
                    out.push(response(Resp::TrackUnpublished(
                        proto::TrackUnpublishedResponse { track_sid },
                    )));
                }
            }
            MediaEvent::NegotiationFailed(direction, reason) => {
                warn!(?direction, reason, "negotiation failed");
                if direction == TransportDirection::Publisher {
                    // That offer will get no answer; the next answer belongs to the next offer.
                    self.publisher_offer_ids.pop_front();
                }
            }
        }
        out
    }

    fn cleanup(&self, end: End) {
        let reason = match end {
            End::Client => DisconnectReason::ClientInitiated,
            End::Server => DisconnectReason::UnknownReason,
            End::Timeout => DisconnectReason::SignalClose,
        };
        // A server-initiated end already removed the participant; leave() is then a no-op.
        self.ctx
            .manager
            .leave(&self.room_name, &self.key.participant, reason);
        self.ctx.worker.send(WorkerCommand::RemovePeer {
            key: self.key.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Claims, VideoGrants};
    use crate::config::{LimitConfig, RoomConfig};
    use crate::room::JoinRequest;

    /// A lost media connection (the worker reports `Closed`) ends the session with a
    /// `LeaveRequest` asking for a full reconnect, and takes the participant out of the room.
    #[tokio::test]
    async fn a_lost_media_connection_asks_the_client_to_rejoin() {
        let (worker, commands) = WorkerHandle::detached();
        let manager = Arc::new(RoomManager::new(
            RoomConfig::default(),
            LimitConfig::default(),
            String::new(),
            vec![worker.clone()],
        ));
        let claims = Claims {
            sub: "ada".into(),
            video: VideoGrants {
                room_join: true,
                room: "r".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let joined = manager
            .join(
                JoinRequest {
                    claims,
                    client_protocol: 16,
                    auto_subscribe: true,
                },
                Instant::now(),
            )
            .expect("join");
        let ctx = SessionContext {
            manager: manager.clone(),
            worker,
        };
        // A client that says nothing, and a sink that keeps what the server sends.
        let frames_in = futures_util::stream::pending::<Frame>();
        let (tx, mut from_server) = tokio::sync::mpsc::unbounded_channel::<Frame>();
        let frames_out = Box::pin(futures_util::sink::unfold(tx, |tx, f: Frame| async move {
            tx.send(f).map_err(|_| ())?;
            Ok::<_, ()>(tx)
        }));
        let session = tokio::spawn(run_session(frames_in, frames_out, joined, ctx));

        // The session told the worker about its peer; the worker now reports its loss.
        let events = loop {
            match commands
                .recv_timeout(Duration::from_secs(5))
                .expect("AddPeer")
            {
                WorkerCommand::AddPeer { events, .. } => break events,
                _ => continue,
            }
        };
        events
            .send(MediaEvent::Closed(TransportDirection::Subscriber))
            .unwrap();

        let mut leave = None;
        while let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_secs(5), from_server.recv()).await
        {
            if let Frame::Binary(b) = &frame
                && let Ok(resp) = <proto::SignalResponse as prost::Message>::decode(b.as_slice())
                && let Some(Resp::Leave(l)) = resp.message
            {
                leave = Some(l);
            }
            if frame == Frame::Close {
                break;
            }
        }
        let leave = leave.expect("a LeaveRequest before the close");
        assert_eq!(leave.action, proto::leave_request::Action::Reconnect as i32);
        assert!(leave.can_reconnect);
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the session ends")
            .unwrap();
        assert!(
            manager
                .list_participants("r")
                .unwrap_or_default()
                .is_empty(),
            "ada left the room"
        );
    }
}
