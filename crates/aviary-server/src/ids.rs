//! Typed ids: a room sid, a participant sid, a track sid and an identity are all strings
//! on the wire, and mixing them up is the bug these types prevent.

use std::borrow::Borrow;
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string that already is such an id.
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            /// The id as sent on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string, for protocol messages.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                Self(s.clone())
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

string_id!(
    /// A room's sid (`RM_…`), unique per room instance: a room closed and made again under
    /// the same name gets a new one.
    RoomSid
);
string_id!(
    /// A room's name, chosen by the application (the token's `room`).
    RoomName
);
string_id!(
    /// A participant's sid (`PA_…`), one per session: a resume keeps it, a new join does not.
    ParticipantSid
);
string_id!(
    /// A participant's identity, chosen by the application (the token's `sub`).
    Identity
);
string_id!(
    /// A published track's sid (`TR_…`).
    TrackSid
);
