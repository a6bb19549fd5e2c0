//! HTTP/1.1: the downstream server, and the framing and writing it shares with the
//! upstream client (`crate::upstream::h1_client`).

pub mod framing;
pub mod outgoing;
mod request;
pub mod server;
#[cfg(test)]
mod tests;
