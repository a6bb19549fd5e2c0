//! HPACK encoding with a dynamic table (RFC 7541 §2.3.2, §6.2.1): a field the peer saw before
//! on the connection goes out as a one- or two-byte index instead of its name and value.
//!
//! legate first encoded literals only, which is cheapest for legate but not for the peer: a
//! hyper upstream spent ≈ 1 µs more per request decoding legate's literal request heads than
//! HAProxy's indexed ones, and on a machine where the upstream is the bottleneck that is the
//! throughput. Fields that change on almost every message (`content-length`, the upstream
//! service time, `:path`) and sensitive ones (request ids, credentials) stay literals, so they
//! do not push the repeating ones out of the table.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use fnv::{FnvHashMap, FnvHasher};
use http::header::{self, HeaderName, HeaderValue};

use super::{
    INDEXED, LITERAL_WITH_INDEXING, LITERAL_WITHOUT_INDEXING, encode_field, encode_integer, encode_literal,
    static_name_index,
};
use crate::http::headers::X_ENVOY_UPSTREAM_SERVICE_TIME;

/// The table size legate's encoder uses at most: HTTP/2's default, which every decoder takes
/// without a size update. A larger one would hold more fields than a proxied head repeats.
const MAX_TABLE_SIZE: usize = 4096;
/// RFC 7541 §4.1: an entry's size is its name and value lengths plus 32.
const ENTRY_OVERHEAD: usize = 32;
/// Values longer than this are not indexed: a long value rarely repeats exactly.
const MAX_INDEXED_VALUE: usize = 256;
const SIZE_UPDATE: u8 = 0x20;

struct Entry {
    /// `None`: `:authority` (the one pseudo-header legate indexes).
    name: Option<HeaderName>,
    /// A copy: a value that is a slice of a received frame would keep the whole read buffer
    /// alive for as long as the entry lives.
    value: Bytes,
    hash: u64,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.as_ref().map_or(":authority".len(), |name| name.as_str().len()) + self.value.len() + ENTRY_OVERHEAD
    }
}

/// One connection's encoder: the dynamic table as the peer's decoder holds it.
pub struct Encoder {
    /// Newest first, as the peer indexes them.
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// Entries ever inserted: an entry's absolute number is its insertion count, so a
    /// number stays valid as newer entries shift the indices.
    inserted: u64,
    /// Absolute entry numbers by the hash of name and value.
    by_hash: FnvHashMap<u64, u64>,
    /// Size updates owed at the start of the next header block: the smallest the limit went
    /// to since the last block, and where it ended (RFC 7541 §4.2).
    size_update: Option<(usize, usize)>,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: MAX_TABLE_SIZE,
            inserted: 0,
            by_hash: FnvHashMap::default(),
            size_update: None,
        }
    }
}

impl Encoder {
    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the table shrinks to it (never grows past
    /// legate's own limit), signalled at the start of the next block.
    pub fn set_peer_limit(&mut self, limit: u32) {
        let max = (limit as usize).min(MAX_TABLE_SIZE);
        if max == self.max_size {
            return;
        }
        self.max_size = max;
        self.evict_to(max);
        let smallest = self.size_update.map_or(max, |(smallest, _)| smallest.min(max));
        self.size_update = Some((smallest, max));
    }

    /// Starts a header block: size updates owed go first.
    pub fn begin_block(&mut self, dst: &mut BytesMut) {
        if let Some((smallest, last)) = self.size_update.take() {
            if smallest != last {
                encode_integer(SIZE_UPDATE, 5, smallest, dst);
            }
            encode_integer(SIZE_UPDATE, 5, last, dst);
        }
    }

    /// Encodes `:authority`.
    pub fn authority(&mut self, value: &[u8], dst: &mut BytesMut) {
        self.encode(None, value, dst);
    }

    /// Encodes a regular field.
    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue, dst: &mut BytesMut) {
        if value.is_sensitive()
            || value.len() > MAX_INDEXED_VALUE
            || name == header::CONTENT_LENGTH
            || name == X_ENVOY_UPSTREAM_SERVICE_TIME
        {
            return encode_field(name, value, dst);
        }
        self.encode(Some(name), value.as_bytes(), dst);
    }

    fn encode(&mut self, name: Option<&HeaderName>, value: &[u8], dst: &mut BytesMut) {
        let name_text = name.map_or(":authority", HeaderName::as_str);
        let hash = {
            use std::hash::Hasher;
            let mut hasher = FnvHasher::default();
            hasher.write(name_text.as_bytes());
            hasher.write_u8(0);
            hasher.write(value);
            hasher.finish()
        };
        if let Some(index) = self.find(hash, name, value) {
            return encode_integer(INDEXED, 7, index, dst);
        }
        let static_index = if name.is_some() { static_name_index(name_text) } else { Some(1) };
        let size = name_text.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            return encode_literal(LITERAL_WITHOUT_INDEXING, name_text.as_bytes(), static_index, value, dst);
        }
        encode_literal(LITERAL_WITH_INDEXING, name_text.as_bytes(), static_index, value, dst);
        self.evict_to(self.max_size - size);
        let entry = Entry { name: name.cloned(), value: Bytes::copy_from_slice(value), hash };
        self.size += size;
        self.by_hash.insert(hash, self.inserted);
        self.inserted += 1;
        self.entries.push_front(entry);
    }

    /// The HPACK index of the entry holding exactly `name` and `value`.
    fn find(&self, hash: u64, name: Option<&HeaderName>, value: &[u8]) -> Option<usize> {
        let number = *self.by_hash.get(&hash)?;
        let position = (self.inserted - 1 - number) as usize;
        let entry = self.entries.get(position)?;
        (entry.name.as_ref() == name && entry.value == value).then_some(62 + position)
    }

    /// Evicts the oldest entries until the table takes at most `size`.
    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let Some(oldest) = self.entries.pop_back() else { break };
            self.size -= oldest.size();
            let number = self.inserted - 1 - self.entries.len() as u64;
            if self.by_hash.get(&oldest.hash) == Some(&number) {
                self.by_hash.remove(&oldest.hash);
            }
        }
    }
}
