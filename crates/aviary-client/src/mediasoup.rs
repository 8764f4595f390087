//! The load tester's side of bench/mediasoup/server.mjs: the small JSON-over-WebSocket
//! signaling we wrote in front of a mediasoup worker (mediasoup has none of its own), so
//! that the same simulated peers load mediasoup as they load Aviary and Janus.
//!
//! A publisher sends `publish` and, once `ready`, its offer; the answer comes back. A
//! subscriber sends `subscribe` and gets an offer for every producer of the room, which it
//! answers. Candidates travel inside the SDP.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;

/// One peer's signaling connection.
pub struct Mediasoup {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the signaling server told a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediasoupEvent {
    /// A publisher may send its offer.
    Ready,
    /// The answer to a publisher's offer.
    Answer(String),
    /// A subscriber's offer.
    Offer(String),
    /// Something else (a pong).
    Other,
}

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Signal(e.to_string())
}

impl Mediasoup {
    /// Opens the WebSocket.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(
            url,
            Some(crate::signal::ws_config()),
            true,
        )
        .await
        .map_err(err)?;
        Ok(Self { ws })
    }

    async fn send(&mut self, msg: Value) -> Result<(), ClientError> {
        self.ws
            .send(WsMessage::Text(msg.to_string().into()))
            .await
            .map_err(err)
    }

    /// Asks to publish into `room`; [`MediasoupEvent::Ready`] follows.
    pub async fn publish(&mut self, room: &str) -> Result<(), ClientError> {
        self.send(json!({"type": "publish", "room": room})).await
    }

    /// Asks for everything published in `room`; an offer follows.
    pub async fn subscribe(&mut self, room: &str) -> Result<(), ClientError> {
        self.send(json!({"type": "subscribe", "room": room})).await
    }

    /// A publisher's offer.
    pub async fn offer(&mut self, sdp: &str) -> Result<(), ClientError> {
        self.send(json!({"type": "offer", "sdp": sdp})).await
    }

    /// A subscriber's answer.
    pub async fn answer(&mut self, sdp: &str) -> Result<(), ClientError> {
        self.send(json!({"type": "answer", "sdp": sdp})).await
    }

    /// Keeps the connection visibly alive.
    pub async fn keepalive(&mut self) -> Result<(), ClientError> {
        self.send(json!({"type": "ping"})).await
    }

    /// The next event; `None` once the server closed the connection. An `error` from the
    /// server is returned as one.
    pub async fn next_event(&mut self) -> Result<Option<MediasoupEvent>, ClientError> {
        loop {
            let Some(frame) = self.ws.next().await else {
                return Ok(None);
            };
            let text = match frame.map_err(err)? {
                WsMessage::Text(t) => t.to_string(),
                WsMessage::Close(_) => return Ok(None),
                _ => continue,
            };
            let msg: Value = serde_json::from_str(&text).map_err(err)?;
            let sdp = || msg["sdp"].as_str().unwrap_or_default().to_string();
            return Ok(Some(match msg["type"].as_str() {
                Some("ready") => MediasoupEvent::Ready,
                Some("answer") => MediasoupEvent::Answer(sdp()),
                Some("offer") => MediasoupEvent::Offer(sdp()),
                Some("error") => {
                    return Err(ClientError::Server(format!(
                        "mediasoup signaling: {}",
                        msg["message"]
                            .as_str()
                            .unwrap_or("an error without a message")
                    )));
                }
                _ => MediasoupEvent::Other,
            }));
        }
    }

    /// Closes the connection (the server closes the peer's transport).
    pub async fn leave(mut self) {
        let _ = self.ws.close(None).await;
    }
}
