//! The `/rtc` signaling session: one WebSocket per participant, protobuf (or JSON) frames.

mod codec;
mod session;

pub use codec::{Frame, decode_request, encode_response};
pub use session::{SessionContext, run_session};
