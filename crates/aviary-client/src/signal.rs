//! The `/rtc` WebSocket: connect with a token, send requests, receive responses.

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use livekit_protocol::signal_request::Message as Req;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;

/// A signaling connection.
pub struct Signal {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// WebSocket settings for signaling: tungstenite grows its read buffer by
/// `read_buffer_size` and zeroes that much on every read attempt, so its 128 KiB default
/// costs a 128 KiB memset each time a peer's event loop polls the socket (the load
/// tester's main cost before this). Signaling messages are small.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// `ws://` or `wss://` for an http(s) or ws(s) URL.
pub fn ws_base(url: &str) -> Result<String, ClientError> {
    let url = url.trim_end_matches('/');
    if let Some(r) = url.strip_prefix("http://") {
        Ok(format!("ws://{r}"))
    } else if let Some(r) = url.strip_prefix("https://") {
        Ok(format!("wss://{r}"))
    } else if url.starts_with("ws://") || url.starts_with("wss://") {
        Ok(url.to_string())
    } else {
        Err(ClientError::BadUrl(url.into()))
    }
}

/// Opens `<url>/rtc` with `token`. A refusal comes back with the server's reason (the body
/// of its HTTP answer), an unreachable server with the system's.
pub async fn open(
    url: &str,
    token: &str,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, ClientError> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let base = ws_base(url)?;
    let rtc = format!(
        "{base}/rtc?access_token={token}&protocol=16&sdk=aviary&version={}&auto_subscribe=1",
        env!("CARGO_PKG_VERSION")
    );
    match tokio_tungstenite::connect_async_with_config(rtc.as_str(), Some(ws_config()), true).await
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .filter(|b| !b.is_empty());
            Err(ClientError::Refused {
                status: status.as_u16(),
                reason: body.unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string()),
            })
        }
        Err(WsError::Io(e)) => Err(ClientError::Unreachable {
            url: base,
            reason: e.to_string(),
        }),
        Err(WsError::Url(_)) => Err(ClientError::BadUrl(url.to_string())),
        Err(e) => Err(ClientError::Signal(e.to_string())),
    }
}

impl Signal {
    /// Connects to `<url>/rtc` with `token`.
    pub async fn connect(url: &str, token: &str) -> Result<Self, ClientError> {
        Ok(Self {
            ws: open(url, token).await?,
        })
    }

    /// Sends one request.
    pub async fn send(&mut self, msg: Req) -> Result<(), ClientError> {
        let bytes = proto::SignalRequest { message: Some(msg) }.encode_to_vec();
        self.ws
            .send(WsMessage::Binary(bytes.into()))
            .await
            .map_err(|e| ClientError::Signal(e.to_string()))
    }

    /// The next response; `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Result<Option<proto::SignalResponse>, ClientError> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Signal(e.to_string())),
                Some(Ok(WsMessage::Binary(b))) => {
                    if let Ok(r) = proto::SignalResponse::decode(b.as_ref()) {
                        return Ok(Some(r));
                    }
                }
                Some(Ok(WsMessage::Close(_))) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Says goodbye.
    pub async fn leave(mut self) {
        let _ = self.send(Req::Leave(proto::LeaveRequest::default())).await;
        let _ = self.ws.close(None).await;
    }
}

/// The candidate line from a trickled `RTCIceCandidateInit` JSON.
pub fn candidate_line(init: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(init).ok()?;
    Some(v.get("candidate")?.as_str()?.to_string())
}
