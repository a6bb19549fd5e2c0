//! HPACK (RFC 7541), the header compression of HTTP/2.
//!
//! Decoding covers the whole format. Encoding indexes the fields that repeat in a dynamic
//! table (`encoder.rs`) and writes raw literals, never Huffman-coded: coding strings costs
//! legate more than the bytes it saves, where a one-byte index saves the peer's decoder work.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};

mod encoder;
mod huffman;

pub use encoder::Encoder;

/// What a decoded field's name is. Pseudo-headers get their own variants because
/// `HeaderName` cannot hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    Method,
    Scheme,
    Authority,
    Path,
    Protocol,
    Status,
    Header(HeaderName),
    /// A name HTTP/2 does not allow in a message: uppercase characters, an unknown
    /// pseudo-header (":foo"), an empty name or bytes not valid in a field name. The block
    /// still decodes (the dynamic table must stay in step); the message is malformed.
    Malformed,
}

/// The request pseudo-header fields legate sends (`:status` has `encode_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Scheme,
    Path,
}

/// One decoded field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Name,
    /// The value's bytes, unchecked: the caller checks them as what the name makes them (a
    /// header value, a path, a method), once.
    pub value: Bytes,
    /// HPACK's size of the field (name + value + 32), for the caller's header list limit.
    pub size: usize,
    /// Sent as never indexed, which a proxy must keep when it forwards the field
    /// (RFC 7541 §7.1.3).
    pub never_indexed: bool,
}

/// A failure to decode a header block: an HTTP/2 COMPRESSION_ERROR, fatal to the connection.
/// The text says what was wrong, for logs.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

/// RFC 7541 §4.1: an entry's size is its name and value lengths plus this overhead.
const ENTRY_OVERHEAD: usize = 32;

/// A table entry: the field as decoded, plus the raw name length HPACK sizes entries by.
struct Entry {
    name: Name,
    value: Bytes,
    name_len: usize,
    size: usize,
}

const fn static_entry(name: Name, raw_name: &str, value: &'static str) -> Entry {
    Entry {
        name,
        value: Bytes::from_static(value.as_bytes()),
        name_len: raw_name.len(),
        size: raw_name.len() + value.len() + ENTRY_OVERHEAD,
    }
}

/// `from_static` runs at compile time here, so a static-table hit never parses a name.
const fn static_header(name: &'static str, value: &'static str) -> Entry {
    static_entry(Name::Header(HeaderName::from_static(name)), name, value)
}

/// RFC 7541 Appendix A; HPACK index `i` is `STATIC_TABLE[i - 1]`, the dynamic table follows.
static STATIC_TABLE: [Entry; 61] = [
    static_entry(Name::Authority, ":authority", ""),
    static_entry(Name::Method, ":method", "GET"),
    static_entry(Name::Method, ":method", "POST"),
    static_entry(Name::Path, ":path", "/"),
    static_entry(Name::Path, ":path", "/index.html"),
    static_entry(Name::Scheme, ":scheme", "http"),
    static_entry(Name::Scheme, ":scheme", "https"),
    static_entry(Name::Status, ":status", "200"),
    static_entry(Name::Status, ":status", "204"),
    static_entry(Name::Status, ":status", "206"),
    static_entry(Name::Status, ":status", "304"),
    static_entry(Name::Status, ":status", "400"),
    static_entry(Name::Status, ":status", "404"),
    static_entry(Name::Status, ":status", "500"),
    static_header("accept-charset", ""),
    static_header("accept-encoding", "gzip, deflate"),
    static_header("accept-language", ""),
    static_header("accept-ranges", ""),
    static_header("accept", ""),
    static_header("access-control-allow-origin", ""),
    static_header("age", ""),
    static_header("allow", ""),
    static_header("authorization", ""),
    static_header("cache-control", ""),
    static_header("content-disposition", ""),
    static_header("content-encoding", ""),
    static_header("content-language", ""),
    static_header("content-length", ""),
    static_header("content-location", ""),
    static_header("content-range", ""),
    static_header("content-type", ""),
    static_header("cookie", ""),
    static_header("date", ""),
    static_header("etag", ""),
    static_header("expect", ""),
    static_header("expires", ""),
    static_header("from", ""),
    static_header("host", ""),
    static_header("if-match", ""),
    static_header("if-modified-since", ""),
    static_header("if-none-match", ""),
    static_header("if-range", ""),
    static_header("if-unmodified-since", ""),
    static_header("last-modified", ""),
    static_header("link", ""),
    static_header("location", ""),
    static_header("max-forwards", ""),
    static_header("proxy-authenticate", ""),
    static_header("proxy-authorization", ""),
    static_header("range", ""),
    static_header("referer", ""),
    static_header("refresh", ""),
    static_header("retry-after", ""),
    static_header("server", ""),
    static_header("set-cookie", ""),
    static_header("strict-transport-security", ""),
    static_header("transfer-encoding", ""),
    static_header("user-agent", ""),
    static_header("vary", ""),
    static_header("via", ""),
    static_header("www-authenticate", ""),
];

const FIRST_DYNAMIC_INDEX: usize = STATIC_TABLE.len() + 1;

/// The first byte of each field representation (RFC 7541 §6).
const INDEXED: u8 = 0x80;
const LITERAL_WITH_INDEXING: u8 = 0x40;
const LITERAL_WITHOUT_INDEXING: u8 = 0x00;
const LITERAL_NEVER_INDEXED: u8 = 0x10;
/// Huffman values are split off the scratch buffer; reserving at least this much at a time
/// lets many of them share one allocation.
const SCRATCH_CHUNK: usize = 4096;

/// The decoding half of one HTTP/2 connection's HPACK context.
pub struct Decoder {
    /// Newest first, so HPACK index 62 is `dynamic[0]`.
    dynamic: VecDeque<Entry>,
    /// Sum of the sizes of the entries in `dynamic`.
    dynamic_size: usize,
    /// The table's maximum size as the peer last set it.
    capacity: usize,
    /// The SETTINGS_HEADER_TABLE_SIZE we advertised: the peer's size updates may not exceed it.
    max_table_size: usize,
    /// Huffman output.
    scratch: BytesMut,
}

/// How a literal field representation treats the dynamic table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexing {
    Incremental,
    Without,
    Never,
}

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE this endpoint advertised (4096 by default);
    /// the peer's dynamic table size updates may not exceed it.
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            dynamic: VecDeque::new(),
            dynamic_size: 0,
            capacity: max_table_size,
            max_table_size,
            scratch: BytesMut::new(),
        }
    }

    /// Decodes one complete header block (HEADERS plus any CONTINUATION payloads, joined),
    /// calling `field` with each field in order. A field whose name HTTP/2 does not allow
    /// comes as `Name::Malformed`. Raw values not entering the dynamic table are zero-copy
    /// slices of `block`. On error, the fields already passed to `field` are to be discarded
    /// with the connection.
    pub fn decode(&mut self, block: &Bytes, mut field: impl FnMut(Field)) -> Result<(), DecodeError> {
        let mut reader = Reader { block, pos: 0 };
        let mut fields_started = false;
        while let Some(first) = reader.peek() {
            let decoded = match first {
                0x80.. => {
                    let entry = self.entry(reader.integer(7)?)?;
                    Field {
                        name: entry.name.clone(),
                        value: entry.value.clone(),
                        size: entry.size,
                        never_indexed: false,
                    }
                }
                0x40..0x80 => self.literal(&mut reader, 6, Indexing::Incremental)?,
                0x20..0x40 => {
                    if fields_started {
                        return Err(DecodeError("table size update after a field"));
                    }
                    self.resize(reader.integer(5)?)?;
                    continue;
                }
                0x10..0x20 => self.literal(&mut reader, 4, Indexing::Never)?,
                _ => self.literal(&mut reader, 4, Indexing::Without)?,
            };
            fields_started = true;
            field(decoded);
        }
        Ok(())
    }

    /// Applies a dynamic table size update.
    fn resize(&mut self, new_capacity: usize) -> Result<(), DecodeError> {
        if new_capacity > self.max_table_size {
            return Err(DecodeError("table size update above SETTINGS_HEADER_TABLE_SIZE"));
        }
        self.capacity = new_capacity;
        self.evict_down_to(new_capacity);
        Ok(())
    }

    /// Decodes a literal field representation whose name index has `prefix_bits` bits.
    fn literal(&mut self, reader: &mut Reader<'_>, prefix_bits: u32, indexing: Indexing) -> Result<Field, DecodeError> {
        let (name, name_len) = match reader.integer(prefix_bits)? {
            0 => {
                let (huffman, range) = reader.string()?;
                self.name(huffman, &reader.block[range])?
            }
            index => {
                let entry = self.entry(index)?;
                (entry.name.clone(), entry.name_len)
            }
        };
        let (huffman, range) = reader.string()?;
        let (value, value_len) = self.value(reader.block, huffman, range, indexing == Indexing::Incremental)?;
        let size = name_len + value_len + ENTRY_OVERHEAD;
        let never_indexed = indexing == Indexing::Never;
        if indexing == Indexing::Incremental {
            self.insert(Entry { name: name.clone(), value: value.clone(), name_len, size });
        }
        Ok(Field { name, value, size, never_indexed })
    }

    /// A literal name and its length as HPACK sizes it.
    fn name(&mut self, huffman: bool, raw: &[u8]) -> Result<(Name, usize), DecodeError> {
        if !huffman {
            return Ok((parse_name(raw), raw.len()));
        }
        self.decode_huffman(raw)?;
        Ok((parse_name(&self.scratch), self.scratch.len()))
    }

    /// A literal value and its length as HPACK sizes it. A value going into the dynamic
    /// table gets its own allocation: sharing the block's or the scratch buffer's would keep
    /// that whole buffer alive as long as the entry.
    fn value(
        &mut self,
        block: &Bytes,
        huffman: bool,
        range: Range<usize>,
        for_table: bool,
    ) -> Result<(Bytes, usize), DecodeError> {
        if !huffman {
            let len = range.len();
            let value = if for_table { Bytes::copy_from_slice(&block[range]) } else { block.slice(range) };
            return Ok((value, len));
        }
        self.decode_huffman(&block[range])?;
        let len = self.scratch.len();
        let value = if for_table { Bytes::copy_from_slice(&self.scratch) } else { self.scratch.split().freeze() };
        Ok((value, len))
    }

    /// Decodes a Huffman string into the scratch buffer, replacing what it held.
    fn decode_huffman(&mut self, encoded: &[u8]) -> Result<(), DecodeError> {
        self.scratch.clear();
        let needed = huffman::max_decoded_len(encoded.len());
        if self.scratch.capacity() < needed {
            // A whole chunk at a time, so the values split off next share one allocation.
            self.scratch.reserve(needed.max(SCRATCH_CHUNK));
        }
        huffman::decode(encoded, &mut self.scratch).map_err(DecodeError)
    }

    fn entry(&self, index: usize) -> Result<&Entry, DecodeError> {
        match index {
            0 => Err(DecodeError("index 0")),
            1..FIRST_DYNAMIC_INDEX => Ok(&STATIC_TABLE[index - 1]),
            _ => self.dynamic.get(index - FIRST_DYNAMIC_INDEX).ok_or(DecodeError("index beyond the dynamic table")),
        }
    }

    fn insert(&mut self, entry: Entry) {
        // RFC 7541 §4.4: an entry larger than the table empties it and is not added.
        if entry.size > self.capacity {
            self.evict_down_to(0);
            return;
        }
        self.evict_down_to(self.capacity - entry.size);
        self.dynamic_size += entry.size;
        self.dynamic.push_front(entry);
    }

    fn evict_down_to(&mut self, size: usize) {
        while self.dynamic_size > size
            && let Some(oldest) = self.dynamic.pop_back()
        {
            self.dynamic_size -= oldest.size;
        }
    }
}

fn parse_name(raw: &[u8]) -> Name {
    match raw {
        b":method" => Name::Method,
        b":scheme" => Name::Scheme,
        b":authority" => Name::Authority,
        b":path" => Name::Path,
        b":protocol" => Name::Protocol,
        b":status" => Name::Status,
        // Rejects uppercase, which HTTP/2 forbids, and ':', so unknown pseudo-headers too.
        _ => HeaderName::from_lowercase(raw).map_or(Name::Malformed, Name::Header),
    }
}

/// A read position in a header block.
struct Reader<'a> {
    block: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.block.get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Result<u8, DecodeError> {
        let byte = self.peek().ok_or(DecodeError("truncated header block"))?;
        self.pos += 1;
        Ok(byte)
    }

    /// An integer with a `prefix_bits`-bit prefix (RFC 7541 §5.1), starting at the current byte.
    fn integer(&mut self, prefix_bits: u32) -> Result<usize, DecodeError> {
        let prefix_max = (1 << prefix_bits) - 1;
        let mut value = usize::from(self.next_byte()?) & prefix_max;
        if value < prefix_max {
            return Ok(value);
        }
        // Four continuation bytes carry 28 bits, more than any index, string length or table
        // size can need; a longer integer is garbage or an attempt at overflow.
        for shift in [0, 7, 14, 21] {
            let byte = self.next_byte()?;
            value += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError("integer too large"))
    }

    /// A string literal's Huffman flag and position in the block (RFC 7541 §5.2).
    fn string(&mut self) -> Result<(bool, Range<usize>), DecodeError> {
        let huffman = self.peek().is_some_and(|first| first & 0x80 != 0);
        let len = self.integer(7)?;
        if len > self.block.len() - self.pos {
            return Err(DecodeError("string literal runs past the header block"));
        }
        let start = self.pos;
        self.pos += len;
        Ok((huffman, start..self.pos))
    }
}

/// Encodes a pseudo-header: a one-byte indexed field when the static table holds exactly
/// `value`, else a literal without indexing, its name indexed when the static table has it.
pub fn encode_pseudo(pseudo: Pseudo, value: &[u8], dst: &mut BytesMut) {
    let indexed = match (pseudo, value) {
        (Pseudo::Method, b"GET") => Some(2),
        (Pseudo::Method, b"POST") => Some(3),
        (Pseudo::Path, b"/") => Some(4),
        (Pseudo::Path, b"/index.html") => Some(5),
        (Pseudo::Scheme, b"http") => Some(6),
        (Pseudo::Scheme, b"https") => Some(7),
        _ => None,
    };
    if let Some(index) = indexed {
        dst.put_u8(INDEXED | index);
        return;
    }
    let (name, static_index) = match pseudo {
        Pseudo::Method => (":method", 2),
        Pseudo::Path => (":path", 4),
        Pseudo::Scheme => (":scheme", 6),
    };
    encode_literal(LITERAL_WITHOUT_INDEXING, name.as_bytes(), Some(static_index), value, dst);
}

/// Encodes `:status`; `status` must be a valid HTTP status code (100..=999), as
/// `http::StatusCode` guarantees.
pub fn encode_status(status: u16, dst: &mut BytesMut) {
    debug_assert!((100..1000).contains(&status), "invalid HTTP status {status}");
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            let digit = |place: u16| b'0' + (status / place % 10) as u8;
            // Literal without indexing, name `:status` (index 8), a raw 3-byte value.
            dst.put_slice(&[LITERAL_WITHOUT_INDEXING | 8, 3, digit(100), digit(10), digit(1)]);
            return;
        }
    };
    dst.put_u8(INDEXED | index);
}

/// Encodes a regular field as a literal without indexing, or never indexed when the value is
/// sensitive, its name indexed when the static table has it.
pub fn encode_field(name: &HeaderName, value: &HeaderValue, dst: &mut BytesMut) {
    let representation = if value.is_sensitive() { LITERAL_NEVER_INDEXED } else { LITERAL_WITHOUT_INDEXING };
    let name = name.as_str();
    encode_literal(representation, name.as_bytes(), static_name_index(name), value.as_bytes(), dst);
}

/// The index of `name` in the static table. The `match` compiles to a length switch and a
/// few comparisons: cheap enough to run for every header of every message.
fn static_name_index(name: &str) -> Option<usize> {
    let index = match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    };
    Some(index)
}

/// A literal field representation with a raw (never Huffman) name and value; the name as a
/// static-table index when there is one.
fn encode_literal(representation: u8, name: &[u8], static_index: Option<usize>, value: &[u8], dst: &mut BytesMut) {
    // One reservation for the whole field; its integers rarely take more than 3 bytes each.
    dst.reserve(name.len() + value.len() + 9);
    // An indexed name takes a 6-bit prefix in a literal added to the table, 4 bits otherwise
    // (RFC 7541 §6.2).
    let prefix_bits = if representation == LITERAL_WITH_INDEXING { 6 } else { 4 };
    match static_index {
        Some(index) => encode_integer(representation, prefix_bits, index, dst),
        None => {
            dst.put_u8(representation);
            encode_string(name, dst);
        }
    }
    encode_string(value, dst);
}

fn encode_string(raw: &[u8], dst: &mut BytesMut) {
    encode_integer(0, 7, raw.len(), dst);
    dst.put_slice(raw);
}

/// Encodes `value` with a `prefix_bits`-bit prefix (RFC 7541 §5.1); `flags` holds the bits of
/// the first byte above the prefix.
fn encode_integer(flags: u8, prefix_bits: u32, value: usize, dst: &mut BytesMut) {
    let prefix_max = (1 << prefix_bits) - 1;
    if value < prefix_max {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | prefix_max as u8);
    let mut rest = value - prefix_max;
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

#[cfg(test)]
mod tests;
