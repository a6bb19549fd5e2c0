//! HTTP/2, legate's own, for both ends: frames, HPACK, flow control and streams, written for a
//! proxy. Downstream, a connection's streams run in the connection's task; upstream, a
//! request's task opens its stream and one task drives the socket. The h2 crate, which legate
//! used before, spent most of an h2c request's instructions in its generic machinery (Huffman
//! coding, per-frame buffer copies, stream bookkeeping shared through locks); here a head is
//! a few copies and table lookups into the connection's write buffer, and large DATA payloads
//! are written from the buffers they were read into.

pub mod client;
mod conn;
pub use conn::PREFACE;
mod frame;
mod head;
mod hpack;
mod output;
pub mod server;
mod shared;
pub mod stream;
