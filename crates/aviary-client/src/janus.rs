//! Just enough of Janus's WebSocket API (subprotocol `janus-protocol`) and its VideoRoom
//! plugin for the load tester to drive Janus as a peer SFU: one session and one plugin
//! handle per simulated participant, publish one track, subscribe to feeds.
//!
//! Janus answers a plugin `message` with an `ack` and delivers the result later as an
//! `event` (carrying the SDP as `jsep`); synchronous requests such as `create` come back as
//! `success` with the plugin's data. Events that arrive while a request waits for its reply
//! are queued for [`Janus::next_event`].

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;

/// Janus's error code for "room already exists".
const ROOM_EXISTS: i64 = 427;

/// One Janus session with one VideoRoom handle.
pub struct Janus {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: u64,
    handle: u64,
    next_transaction: u64,
    queued: VecDeque<Value>,
}

/// Something Janus told a handle.
#[derive(Debug, Clone)]
pub enum JanusEvent {
    /// A VideoRoom event: the plugin's data, and the SDP if one came with it.
    Plugin {
        /// `plugindata.data`.
        data: Value,
        /// `jsep`: (`type`, `sdp`).
        jsep: Option<(String, String)>,
    },
    /// A remote ICE candidate line (`None` for end-of-candidates).
    Trickle(Option<String>),
    /// The PeerConnection is up (`webrtcup`).
    WebrtcUp,
    /// The PeerConnection or the handle went away.
    Hangup(String),
}

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Signal(e.to_string())
}

impl Janus {
    /// Opens the WebSocket, creates a session and attaches the VideoRoom plugin.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let mut request = url.into_client_request().map_err(err)?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "janus-protocol".parse().map_err(err)?,
        );
        let (ws, _) = tokio_tungstenite::connect_async_with_config(
            request,
            Some(crate::signal::ws_config()),
            true,
        )
        .await
        .map_err(err)?;
        let mut janus = Self {
            ws,
            session: 0,
            handle: 0,
            next_transaction: 1,
            queued: VecDeque::new(),
        };
        let created = janus.request(json!({"janus": "create"})).await?;
        janus.session = id_of(&created)?;
        let attached = janus
            .request(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await?;
        janus.handle = id_of(&attached)?;
        Ok(janus)
    }

    /// Creates a VideoRoom room (VP8 video, Opus audio) unless it exists already.
    pub async fn create_room(&mut self, room: u64, publishers: usize) -> Result<(), ClientError> {
        let reply = self
            .message(
                json!({
                    "request": "create", "room": room, "publishers": publishers.max(1),
                    "videocodec": "vp8", "audiocodec": "opus", "bitrate": 0,
                    "fir_freq": 0, "permanent": false,
                }),
                None,
            )
            .await?;
        match plugin_error(&reply) {
            Some((ROOM_EXISTS, _)) | None => Ok(()),
            Some((code, msg)) => Err(ClientError::Server(format!("janus {code}: {msg}"))),
        }
    }

    /// Joins `room` as a publisher; the `joined` event (with the feed id) follows.
    pub async fn join_publisher(&mut self, room: u64, display: &str) -> Result<(), ClientError> {
        self.message(
            json!({"request": "join", "ptype": "publisher", "room": room, "display": display}),
            None,
        )
        .await
        .map(drop)
    }

    /// Sends the publisher's offer; the answer comes as an event with `jsep`.
    pub async fn publish(&mut self, offer_sdp: &str) -> Result<(), ClientError> {
        self.message(
            json!({"request": "publish"}),
            // Our simulcast offers list their rids low to high.
            Some(json!({"type": "offer", "sdp": offer_sdp, "rid_order": "lmh"})),
        )
        .await?;
        self.end_of_candidates().await
    }

    /// Joins `room` as a subscriber to `feeds`; Janus's offer comes as the `attached` event.
    pub async fn join_subscriber(&mut self, room: u64, feeds: &[u64]) -> Result<(), ClientError> {
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        self.message(
            json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
            None,
        )
        .await
        .map(drop)
    }

    /// Answers the subscriber offer and starts the media.
    pub async fn start(&mut self, answer_sdp: &str) -> Result<(), ClientError> {
        self.message(
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer_sdp})),
        )
        .await?;
        self.end_of_candidates().await
    }

    /// Our candidates are all in the SDP.
    async fn end_of_candidates(&mut self) -> Result<(), ClientError> {
        self.send(json!({"janus": "trickle", "candidate": {"completed": true}}))
            .await
            .map(drop)
    }

    /// The next event for this handle; `None` when the connection closed.
    pub async fn next_event(&mut self) -> Result<Option<JanusEvent>, ClientError> {
        loop {
            let msg = match self.queued.pop_front() {
                Some(m) => m,
                None => match self.read().await? {
                    Some(m) => m,
                    None => return Ok(None),
                },
            };
            if let Some(e) = parse_event(&msg)? {
                return Ok(Some(e));
            }
        }
    }

    /// Keeps the session alive (Janus ends sessions silent for `session_timeout`).
    pub async fn keepalive(&mut self) -> Result<(), ClientError> {
        self.send(json!({"janus": "keepalive"})).await.map(drop)
    }

    /// Leaves: destroys the session (which detaches the handle and hangs up).
    pub async fn leave(mut self) {
        let _ = self.send(json!({"janus": "destroy"})).await;
        let _ = self.ws.close(None).await;
    }

    /// A plugin message; returns the synchronous reply (`success`) or the `ack`.
    async fn message(&mut self, body: Value, jsep: Option<Value>) -> Result<Value, ClientError> {
        let mut msg = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let reply = self.request(msg).await?;
        if let Some((code, text)) = plugin_error(&reply)
            && code != ROOM_EXISTS
        {
            return Err(ClientError::Server(format!("janus {code}: {text}")));
        }
        Ok(reply)
    }

    /// Sends `msg` and waits for the reply with its transaction, queueing anything else.
    async fn request(&mut self, msg: Value) -> Result<Value, ClientError> {
        let transaction = self.send(msg).await?;
        loop {
            let Some(reply) = self.read().await? else {
                return Err(ClientError::Server("janus closed the connection".into()));
            };
            let kind = reply["janus"].as_str().unwrap_or_default();
            let ours = reply["transaction"].as_str() == Some(transaction.as_str());
            match kind {
                "success" | "ack" if ours => return Ok(reply),
                "error" if ours => {
                    return Err(ClientError::Server(format!(
                        "janus {}: {}",
                        reply["error"]["code"], reply["error"]["reason"]
                    )));
                }
                _ => self.queued.push_back(reply),
            }
        }
    }

    async fn send(&mut self, mut msg: Value) -> Result<String, ClientError> {
        let transaction = format!("t{}", self.next_transaction);
        self.next_transaction += 1;
        msg["transaction"] = json!(transaction);
        if self.session != 0 {
            msg["session_id"] = json!(self.session);
        }
        if self.handle != 0 {
            msg["handle_id"] = json!(self.handle);
        }
        self.ws
            .send(WsMessage::Text(msg.to_string().into()))
            .await
            .map_err(err)?;
        Ok(transaction)
    }

    async fn read(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(err(e)),
                Some(Ok(WsMessage::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        return Ok(Some(v));
                    }
                }
                Some(Ok(WsMessage::Close(_))) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }
}

fn id_of(reply: &Value) -> Result<u64, ClientError> {
    reply["data"]["id"]
        .as_u64()
        .ok_or_else(|| ClientError::Server(format!("janus: no id in {reply}")))
}

/// `(error_code, error)` of a VideoRoom reply that failed.
fn plugin_error(reply: &Value) -> Option<(i64, String)> {
    let data = &reply["plugindata"]["data"];
    let code = data["error_code"].as_i64()?;
    Some((code, data["error"].as_str().unwrap_or_default().to_string()))
}

fn parse_event(msg: &Value) -> Result<Option<JanusEvent>, ClientError> {
    Ok(match msg["janus"].as_str().unwrap_or_default() {
        "event" => {
            if let Some((code, text)) = plugin_error(msg) {
                return Err(ClientError::Server(format!("janus {code}: {text}")));
            }
            let jsep = msg.get("jsep").and_then(|j| {
                Some((
                    j["type"].as_str()?.to_string(),
                    j["sdp"].as_str()?.to_string(),
                ))
            });
            Some(JanusEvent::Plugin {
                data: msg["plugindata"]["data"].clone(),
                jsep,
            })
        }
        "trickle" => {
            let c = &msg["candidate"];
            Some(JanusEvent::Trickle(
                c["candidate"].as_str().map(str::to_string),
            ))
        }
        "webrtcup" => Some(JanusEvent::WebrtcUp),
        "hangup" | "detached" => Some(JanusEvent::Hangup(
            msg["reason"].as_str().unwrap_or("detached").to_string(),
        )),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse() {
        let joined = json!({"janus": "event", "sender": 1, "plugindata": {"plugin": "janus.plugin.videoroom",
            "data": {"videoroom": "joined", "room": 1234, "id": 77}}});
        match parse_event(&joined) {
            Ok(Some(JanusEvent::Plugin { data, jsep: None })) => assert_eq!(data["id"], 77),
            other => panic!("{other:?}"),
        }
        let answer = json!({"janus": "event", "plugindata": {"data": {"videoroom": "event", "configured": "ok"}},
            "jsep": {"type": "answer", "sdp": "v=0\r\n"}});
        match parse_event(&answer) {
            Ok(Some(JanusEvent::Plugin {
                jsep: Some((t, s)), ..
            })) => {
                assert_eq!((t.as_str(), s.as_str()), ("answer", "v=0\r\n"))
            }
            other => panic!("{other:?}"),
        }
        let failed = json!({"janus": "event", "plugindata": {"data": {"videoroom": "event",
            "error_code": 426, "error": "No such room"}}});
        assert!(parse_event(&failed).is_err());
        let trickle = json!({"janus": "trickle", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.2 5000 typ host"}});
        assert!(matches!(
            parse_event(&trickle),
            Ok(Some(JanusEvent::Trickle(Some(_))))
        ));
        let done = json!({"janus": "trickle", "candidate": {"completed": true}});
        assert!(matches!(
            parse_event(&done),
            Ok(Some(JanusEvent::Trickle(None)))
        ));
        assert!(matches!(parse_event(&json!({"janus": "media"})), Ok(None)));
    }
}
