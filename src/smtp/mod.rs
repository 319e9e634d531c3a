//! SMTP as pure protocol: bytes in, typed commands, replies and content out.
//!
//! Nothing in here knows about sockets, tasks or time; "need more bytes" is an ordinary
//! result, and every negative reply the server gives is decided in [`refusal`]. The session
//! ([`crate::session`]) and the delivery client ([`crate::delivery::client`]) do the I/O.

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
