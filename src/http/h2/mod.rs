//! Downstream HTTP/2, legate's own: frames, HPACK, flow control and streams, written for a
//! proxy that runs a connection's streams in the connection's task. The h2 crate, which
//! legate served with before, spent most of an h2c request's instructions in its generic
//! machinery (a dynamic-table HPACK encoder with Huffman coding, per-frame buffer copies,
//! stream bookkeeping shared through locks); here a response head is a few copies into the
//! connection's write buffer, and large DATA payloads are written from the upstream's
//! buffers without a copy.

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
