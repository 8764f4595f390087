//! The `/rtc` signaling link: one WebSocket per participant session at a time, protobuf
//! (or JSON) frames.

mod codec;
mod link;

pub use codec::{Frame, decode_request, encode_response};
pub use link::{Attachment, LinkEnd, LinkGuard, Links, SEND_DEADLINE, refuse, run_link};
