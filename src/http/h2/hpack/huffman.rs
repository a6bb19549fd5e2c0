//! The HPACK Huffman code (RFC 7541 Appendix B), decoding side only: legate never
//! Huffman-codes what it sends, so only the peer's strings pass through here.

use bytes::{BufMut, BytesMut};

/// Code length in bits of every symbol: the bytes 0..=255, then EOS. The code is canonical
/// (codes are handed out in order of length, then symbol), so these lengths define it fully.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;
/// Codes up to this long (every letter and digit, and the punctuation common in URLs and
/// ETags, '?' and '"' included) take one lookup in a 2 KiB table; longer ones compare the
/// input against per-length bounds.
const FAST_BITS: u32 = 10;

struct DecodeTables {
    /// Indexed by the next `FAST_BITS` input bits: `length << 8 | byte` when they start with a
    /// code of at most `FAST_BITS` bits, 0 when the code is longer.
    fast: [u16; 1 << FAST_BITS],
    /// Per length L: one past the last L-bit code, aligned to the top of a 32-bit window, so a
    /// window starts with an L-bit code when it is below `limit[L]` but not `limit[L - 1]`. u64
    /// because the bound for the longest codes is 2^32.
    limit: [u64; MAX_CODE_LEN + 1],
    /// Per length L: the first L-bit code, and the position of its symbol in `symbols`.
    first_code: [u32; MAX_CODE_LEN + 1],
    first_position: [u16; MAX_CODE_LEN + 1],
    /// Every symbol, in code order.
    symbols: [u16; 257],
}

const fn build_decode_tables() -> DecodeTables {
    let mut tables = DecodeTables {
        fast: [0; 1 << FAST_BITS],
        limit: [0; MAX_CODE_LEN + 1],
        first_code: [0; MAX_CODE_LEN + 1],
        first_position: [0; MAX_CODE_LEN + 1],
        symbols: [0; 257],
    };
    let mut code: u32 = 0;
    let mut position = 0;
    let mut len = 1;
    while len <= MAX_CODE_LEN {
        tables.first_code[len] = code;
        tables.first_position[len] = position as u16;
        let mut symbol = 0;
        while symbol < CODE_LENGTHS.len() {
            if CODE_LENGTHS[symbol] as usize == len {
                tables.symbols[position] = symbol as u16;
                if len as u32 <= FAST_BITS {
                    // Every fast-table slot whose leading bits are this code decodes to it.
                    let spread = FAST_BITS - len as u32;
                    let mut slot = code << spread;
                    while slot < (code + 1) << spread {
                        tables.fast[slot as usize] = ((len << 8) | symbol) as u16;
                        slot += 1;
                    }
                }
                position += 1;
                code += 1;
            }
            symbol += 1;
        }
        tables.limit[len] = (code as u64) << (32 - len);
        code <<= 1;
        len += 1;
    }
    // A complete code leaves no 32-bit window undecodable, which is what lets `next_symbol`
    // search the lengths without a bound check.
    assert!(tables.limit[MAX_CODE_LEN] == 1 << 32, "Huffman code lengths do not form a complete code");
    tables
}

static DECODE_TABLES: DecodeTables = build_decode_tables();

/// The longest output `encoded_len` bytes can decode to: the shortest code has 5 bits.
pub fn max_decoded_len(encoded_len: usize) -> usize {
    encoded_len * 8 / 5
}

/// Appends the decoding of `src` to `dst`. Per RFC 7541 §5.2, fails when the string contains
/// EOS or ends in more than 7 bits of padding or in padding that is not all ones; the error
/// says which, for logs.
pub fn decode(src: &[u8], dst: &mut BytesMut) -> Result<(), &'static str> {
    dst.reserve(max_decoded_len(src.len()));
    // Input bits not yet decoded, the next one in the most significant position; zero past them.
    let mut pending: u64 = 0;
    let mut pending_len: u32 = 0;
    let mut rest = src;
    loop {
        // Refilling whenever 32 bits or fewer are pending keeps more than MAX_CODE_LEN of them
        // while input lasts, so a code that does not fit can only be the end of the string.
        if pending_len <= 32 {
            if let Some((chunk, tail)) = rest.split_first_chunk::<4>() {
                pending |= u64::from(u32::from_be_bytes(*chunk)) << (32 - pending_len);
                pending_len += 32;
                rest = tail;
            } else {
                for &byte in rest {
                    pending |= u64::from(byte) << (56 - pending_len);
                    pending_len += 8;
                }
                rest = &[];
            }
        }
        if pending_len == 0 {
            return Ok(());
        }
        let (symbol, code_len) = next_symbol(pending);
        if code_len > pending_len {
            return if pending_len > 7 {
                Err("Huffman padding longer than 7 bits")
            } else if pending >> (64 - pending_len) != (1 << pending_len) - 1 {
                Err("Huffman padding not all ones")
            } else {
                Ok(())
            };
        }
        if symbol == EOS {
            return Err("Huffman EOS symbol in string");
        }
        dst.put_u8(symbol as u8);
        pending <<= code_len;
        pending_len -= code_len;
    }
}

/// The symbol whose code starts `pending`, and the code's length.
fn next_symbol(pending: u64) -> (u16, u32) {
    let tables = &DECODE_TABLES;
    let fast = tables.fast[(pending >> (64 - FAST_BITS)) as usize];
    if fast != 0 {
        return (fast & 0xff, u32::from(fast >> 8));
    }
    let window = pending >> 32;
    let mut len = FAST_BITS as usize + 1;
    while window >= tables.limit[len] {
        len += 1;
    }
    let offset = (window >> (32 - len)) as u32 - tables.first_code[len];
    let symbol = tables.symbols[usize::from(tables.first_position[len]) + offset as usize];
    (symbol, len as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Canonical codes computed independently of the decode tables: (code, length) per symbol.
    fn canonical_codes() -> Vec<(u32, u32)> {
        let mut order: Vec<usize> = (0..CODE_LENGTHS.len()).collect();
        order.sort_by_key(|&symbol| (CODE_LENGTHS[symbol], symbol));
        let mut codes = vec![(0, 0); CODE_LENGTHS.len()];
        let (mut code, mut prev_len) = (0u32, 0u32);
        for symbol in order {
            let len = u32::from(CODE_LENGTHS[symbol]);
            code <<= len - prev_len;
            codes[symbol] = (code, len);
            code += 1;
            prev_len = len;
        }
        codes
    }

    fn encode(src: &[u8]) -> Vec<u8> {
        let codes = canonical_codes();
        let mut out = Vec::new();
        let (mut acc, mut acc_len) = (0u64, 0u32);
        for &byte in src {
            let (code, len) = codes[usize::from(byte)];
            acc = (acc << len) | u64::from(code);
            acc_len += len;
            while acc_len >= 8 {
                acc_len -= 8;
                out.push((acc >> acc_len) as u8);
            }
        }
        if acc_len > 0 {
            let pad = 8 - acc_len;
            out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }

    fn decoded(src: &[u8]) -> Result<Vec<u8>, &'static str> {
        let mut dst = BytesMut::new();
        decode(src, &mut dst).map(|()| dst.to_vec())
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
    }

    #[test]
    fn canonical_codes_match_rfc_appendix_b() {
        let codes = canonical_codes();
        assert_eq!(codes[0], (0x1ff8, 13));
        assert_eq!(codes[usize::from(b' ')], (0x14, 6));
        assert_eq!(codes[usize::from(b'0')], (0x0, 5));
        assert_eq!(codes[usize::from(b'A')], (0x21, 6));
        assert_eq!(codes[usize::from(b'a')], (0x3, 5));
        assert_eq!(codes[usize::from(b'z')], (0x7b, 7));
        assert_eq!(codes[usize::from(b'~')], (0x1ffd, 13));
        assert_eq!(codes[255], (0x3ffffee, 26));
        assert_eq!(codes[usize::from(EOS)], (0x3fffffff, 30));
    }

    #[test]
    fn decodes_rfc_7541_strings() {
        let vectors = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            ("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", "https://www.example.com"),
            ("9bd9 ab", "gzip"),
            (
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ];
        for (encoded, plain) in vectors {
            assert_eq!(decoded(&hex(encoded)).unwrap(), plain.as_bytes(), "{plain}");
            assert_eq!(encode(plain.as_bytes()), hex(encoded), "{plain}");
        }
    }

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decoded(&encode(&all)).unwrap(), all);
        for byte in 0..=255u8 {
            let run = [byte; 9];
            assert_eq!(decoded(&encode(&run)).unwrap(), run);
        }
        assert_eq!(decoded(b"").unwrap(), b"");
    }

    #[test]
    fn max_decoded_len_is_reached_by_5_bit_codes() {
        let zeros = encode(b"00000000");
        assert_eq!(zeros.len(), 5);
        assert_eq!(decoded(&zeros).unwrap().len(), max_decoded_len(zeros.len()));
    }

    #[test]
    fn rejects_eos_in_string() {
        // 'a' (00011), EOS (30 ones), 5 bits of padding.
        assert_eq!(decoded(&[0x1f, 0xff, 0xff, 0xff, 0xff]), Err("Huffman EOS symbol in string"));
    }

    #[test]
    fn rejects_padding_longer_than_7_bits() {
        // 'a' then 11 ones.
        assert_eq!(decoded(&[0x1f, 0xff]), Err("Huffman padding longer than 7 bits"));
        assert_eq!(decoded(&[0xff]), Err("Huffman padding longer than 7 bits"));
    }

    #[test]
    fn rejects_padding_not_all_ones() {
        // 'a' then padding 000.
        assert_eq!(decoded(&[0x18]), Err("Huffman padding not all ones"));
        // 'a' then padding 110.
        assert_eq!(decoded(&[0x1e]), Err("Huffman padding not all ones"));
        // 'a' then padding 111 is fine.
        assert_eq!(decoded(&[0x1f]).unwrap(), b"a");
    }
}
