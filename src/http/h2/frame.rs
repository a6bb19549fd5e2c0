//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte frame header, the codes and flags, and the
//! control frames legate writes. Payloads are parsed where they are handled.

use bytes::{BufMut, Bytes, BytesMut};

/// The length of a frame header.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value, which legate keeps for what it receives.
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// The initial flow-control window of a stream and of the connection.
pub const DEFAULT_WINDOW: i64 = 65_535;
/// The largest a flow-control window may grow.
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// An error code of RST_STREAM and GOAWAY (RFC 9113 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
}

/// A frame header.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Reads a frame header from the first `HEADER_LEN` bytes of `b`.
    pub fn parse(b: &[u8]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt.
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Writes a frame header.
pub fn put_head(dst: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    dst.put_slice(&head_bytes(len, kind, flags, stream));
}

pub fn head_bytes(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEADER_LEN] {
    let [_, l0, l1, l2] = (len as u32).to_be_bytes();
    let [s0, s1, s2, s3] = stream.to_be_bytes();
    [l0, l1, l2, kind, flags, s0, s1, s2, s3]
}

pub fn put_settings(dst: &mut BytesMut, settings: &[(u16, u32)]) {
    put_head(dst, settings.len() * 6, SETTINGS, 0, 0);
    for &(id, value) in settings {
        dst.put_u16(id);
        dst.put_u32(value);
    }
}

pub fn put_settings_ack(dst: &mut BytesMut) {
    put_head(dst, 0, SETTINGS, ACK, 0);
}

pub fn put_window_update(dst: &mut BytesMut, stream: u32, increment: u32) {
    put_head(dst, 4, WINDOW_UPDATE, 0, stream);
    dst.put_u32(increment);
}

pub fn put_rst_stream(dst: &mut BytesMut, stream: u32, reason: Reason) {
    put_head(dst, 4, RST_STREAM, 0, stream);
    dst.put_u32(reason.0);
}

pub fn put_goaway(dst: &mut BytesMut, last_stream: u32, reason: Reason) {
    put_head(dst, 8, GOAWAY, 0, 0);
    dst.put_u32(last_stream);
    dst.put_u32(reason.0);
}

pub fn put_ping_ack(dst: &mut BytesMut, payload: &[u8]) {
    put_head(dst, 8, PING, ACK, 0);
    dst.put_slice(payload);
}

/// Strips the pad length and padding of a PADDED frame's payload; `None` if the padding
/// is longer than the payload (a PROTOCOL_ERROR).
pub fn unpad(mut payload: Bytes) -> Option<Bytes> {
    let pad = usize::from(*payload.first()?);
    if pad >= payload.len() {
        return None;
    }
    payload.truncate(payload.len() - pad);
    Some(payload.slice(1..))
}

/// Reads a 31-bit big-endian value (a stream id or window increment) at `at`.
pub fn u31(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_round_trips() {
        let bytes = head_bytes(0x01_02_03, HEADERS, END_HEADERS | END_STREAM, 7);
        let head = Head::parse(&bytes);
        assert_eq!((head.len, head.kind, head.flags, head.stream), (0x01_02_03, HEADERS, 5, 7));
        assert!(head.has(END_STREAM) && !head.has(PADDED));
    }

    #[test]
    fn padding_is_stripped_and_overlong_padding_refused() {
        assert_eq!(unpad(Bytes::from_static(b"\x02abcXX")).as_deref(), Some(&b"abc"[..]));
        assert_eq!(unpad(Bytes::from_static(b"\x00")).as_deref(), Some(&b""[..]));
        assert_eq!(unpad(Bytes::from_static(b"\x03ab")), None);
        assert_eq!(unpad(Bytes::new()), None);
    }
}
