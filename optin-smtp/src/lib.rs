//! SMTP as pure protocol: bytes in, typed commands, replies and content out.
//!
//! Nothing in here knows about sockets, tasks or time; "need more bytes" is an ordinary
//! result, and every negative reply the server gives is decided in [`refusal`]. This is
//! the bottom layer of optin-relay, a crate of its own so that nothing above can leak into
//! it: the relay's session and its delivery client do the I/O (the relay re-exports this
//! crate as `optin_relay::smtp`).

pub mod address;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod encode;
pub mod line;
pub mod params;
pub mod refusal;
pub mod reply;
pub mod sasl;
pub mod text;

pub use address::Address;
pub use command::{AuthMechanism, Command, parse_command};
pub use refusal::Refusal;
pub use reply::{Reply, Status};
