//! Frames on the wire: binary protobuf, or protojson text for clients that send text.

use livekit_protocol as proto;
use prost::Message as _;

/// One WebSocket frame, independent of the WebSocket library (so tests need no socket).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Binary data: a protobuf message.
    Binary(Vec<u8>),
    /// Text: a protojson message.
    Text(String),
    /// The peer closed (or should be closed).
    Close,
}

/// Decodes a client frame. `Ok(None)` for frames that carry no request (close).
pub fn decode_request(frame: &Frame) -> Result<Option<proto::SignalRequest>, String> {
    match frame {
        Frame::Binary(b) => proto::SignalRequest::decode(b.as_slice())
            .map(Some)
            .map_err(|e| format!("bad protobuf: {e}")),
        Frame::Text(t) => serde_json::from_str(t)
            .map(Some)
            .map_err(|e| format!("bad json: {e}")),
        Frame::Close => Ok(None),
    }
}

/// Encodes a response in the format the client uses.
pub fn encode_response(msg: &proto::SignalResponse, json: bool) -> Frame {
    if json {
        // Serializing a generated message cannot fail; fall back to protobuf if it ever did.
        match serde_json::to_string(msg) {
            Ok(s) => Frame::Text(s),
            Err(_) => Frame::Binary(msg.encode_to_vec()),
        }
    } else {
        Frame::Binary(msg.encode_to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::signal_request::Message;

    #[test]
    fn binary_and_json_requests_decode_alike() {
        let req = proto::SignalRequest {
            message: Some(Message::Ping(42)),
        };
        let bin = Frame::Binary(req.encode_to_vec());
        assert_eq!(decode_request(&bin).unwrap(), Some(req.clone()));
        let json = Frame::Text(r#"{"ping":"42"}"#.into());
        assert_eq!(decode_request(&json).unwrap(), Some(req));
        assert!(decode_request(&Frame::Binary(vec![0xff, 0xff])).is_err());
        assert!(decode_request(&Frame::Text("{".into())).is_err());
    }

    #[test]
    fn json_responses_use_protojson_names() {
        let msg = proto::SignalResponse {
            message: Some(proto::signal_response::Message::PongResp(proto::Pong {
                last_ping_timestamp: 5,
                timestamp: 6,
            })),
        };
        let Frame::Text(t) = encode_response(&msg, true) else {
            panic!("expected text");
        };
        assert!(
            t.contains("pongResp") && t.contains("lastPingTimestamp"),
            "{t}"
        );
    }
}
