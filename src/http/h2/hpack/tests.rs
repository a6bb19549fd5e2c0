//! HPACK decoding against RFC 7541 Appendix C, bad input, and encode/decode round trips.

use http::header;

use super::*;

fn hex(s: &str) -> Bytes {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
}

fn name_text(name: &Name) -> &str {
    match name {
        Name::Method => ":method",
        Name::Scheme => ":scheme",
        Name::Authority => ":authority",
        Name::Path => ":path",
        Name::Protocol => ":protocol",
        Name::Status => ":status",
        Name::Header(name) => name.as_str(),
        Name::Malformed => "<malformed>",
    }
}

fn decode_fields(decoder: &mut Decoder, block: &Bytes) -> Result<Vec<(Name, Bytes, usize, bool)>, DecodeError> {
    let mut fields = Vec::new();
    decoder.decode(block, |field| fields.push((field.name, field.value, field.size, field.never_indexed)))?;
    Ok(fields)
}

fn text(value: &Bytes) -> String {
    String::from_utf8(value.to_vec()).unwrap()
}

/// Decodes `block` and returns its fields as text, checking each reported size.
fn decode_text(decoder: &mut Decoder, block: &Bytes) -> Vec<(String, String)> {
    decode_fields(decoder, block)
        .unwrap()
        .into_iter()
        .map(|(name, value, size, _)| {
            let name = name_text(&name).to_owned();
            let value = text(&value);
            assert_eq!(size, name.len() + value.len() + 32, "size of {name}");
            (name, value)
        })
        .collect()
}

fn table_text(decoder: &Decoder) -> Vec<(String, String)> {
    let sum: usize = decoder.dynamic.iter().map(|entry| entry.size).sum();
    assert_eq!(sum, decoder.dynamic_size);
    decoder.dynamic.iter().map(|entry| (name_text(&entry.name).to_owned(), text(&entry.value))).collect()
}

fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields.iter().map(|&(name, value)| (name.to_owned(), value.to_owned())).collect()
}

fn integer(bytes: &[u8], prefix_bits: u32) -> Result<usize, DecodeError> {
    let block = Bytes::copy_from_slice(bytes);
    let mut reader = Reader { block: &block, pos: 0 };
    let value = reader.integer(prefix_bits)?;
    assert_eq!(reader.pos, block.len());
    Ok(value)
}

fn encoded_integer(flags: u8, prefix_bits: u32, value: usize) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode_integer(flags, prefix_bits, value, &mut dst);
    dst.to_vec()
}

#[test]
fn c1_integer_representation() {
    // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42 at an octet boundary.
    for (bytes, prefix_bits, value) in [(&[0x0a][..], 5, 10), (&[0x1f, 0x9a, 0x0a], 5, 1337), (&[0x2a], 8, 42)] {
        assert_eq!(integer(bytes, prefix_bits), Ok(value));
        assert_eq!(encoded_integer(0, prefix_bits, value), bytes);
    }
    // Bits above the prefix belong to the representation, not the integer.
    assert_eq!(integer(&[0xea], 5), Ok(10));
    assert_eq!(encoded_integer(0xe0, 5, 10), [0xea]);
}

#[test]
fn integer_edge_cases() {
    // Exactly the prefix maximum needs a zero continuation byte.
    assert_eq!(integer(&[0x1f, 0x00], 5), Ok(31));
    assert_eq!(encoded_integer(0, 5, 31), [0x1f, 0x00]);
    assert_eq!(integer(&[0x1e], 5), Ok(30));
    // The largest accepted: four continuation bytes.
    assert_eq!(integer(&[0x7f, 0xff, 0xff, 0xff, 0x7f], 7), Ok(127 + (1 << 28) - 1));
    for value in [0, 1, 126, 127, 128, 255, 4096, 1 << 20, 127 + (1 << 28) - 1] {
        assert_eq!(integer(&encoded_integer(0, 7, value), 7), Ok(value), "{value}");
    }
    // Even a redundant zero fifth continuation byte is refused.
    assert_eq!(integer(&[0x7f, 0x80, 0x80, 0x80, 0x80, 0x00], 7), Err(DecodeError("integer too large")));
    assert_eq!(integer(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f], 7), Err(DecodeError("integer too large")));
    assert_eq!(integer(&[0x7f, 0x80], 7), Err(DecodeError("truncated header block")));
    assert_eq!(integer(&[0x7f], 7), Err(DecodeError("truncated header block")));
}

#[test]
fn huge_index_is_rejected_not_overflowed() {
    let mut decoder = Decoder::new(4096);
    assert_eq!(decode_fields(&mut decoder, &hex("ff ff ff ff 7f")), Err(DecodeError("index beyond the dynamic table")));
    assert_eq!(decode_fields(&mut decoder, &hex("ff ff ff ff ff 0f")), Err(DecodeError("integer too large")));
}

#[test]
fn c2_1_literal_with_indexing() {
    let mut decoder = Decoder::new(4096);
    let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
    assert_eq!(decode_text(&mut decoder, &block), pairs(&[("custom-key", "custom-header")]));
    assert_eq!(table_text(&decoder), pairs(&[("custom-key", "custom-header")]));
    assert_eq!(decoder.dynamic_size, 55);
}

#[test]
fn c2_2_literal_without_indexing() {
    let mut decoder = Decoder::new(4096);
    let block = hex("040c 2f73 616d 706c 652f 7061 7468");
    let fields = decode_fields(&mut decoder, &block).unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].0, Name::Path);
    assert_eq!(fields[0].1, "/sample/path");
    assert_eq!(fields[0].2, 49);
    assert!(!fields[0].3);
    assert!(decoder.dynamic.is_empty());
    assert_eq!(decoder.dynamic_size, 0);
}

#[test]
fn c2_3_literal_never_indexed() {
    let mut decoder = Decoder::new(4096);
    let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
    let fields = decode_fields(&mut decoder, &block).unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].0, Name::Header(HeaderName::from_static("password")));
    assert_eq!(fields[0].1, "secret");
    assert_eq!(fields[0].2, 46);
    assert!(fields[0].3);
    assert!(decoder.dynamic.is_empty());
}

#[test]
fn c2_4_indexed_field() {
    let mut decoder = Decoder::new(4096);
    let fields = decode_fields(&mut decoder, &hex("82")).unwrap();
    assert_eq!(fields, [(Name::Method, Bytes::from_static(b"GET"), 42, false)]);
    assert!(decoder.dynamic.is_empty());
}

/// The three requests of C.3 (raw) or C.4 (Huffman), decoded in turn by one decoder.
fn check_requests(blocks: [&str; 3]) {
    let mut decoder = Decoder::new(4096);
    let first = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
    assert_eq!(decode_text(&mut decoder, &hex(blocks[0])), pairs(&first));
    assert_eq!(table_text(&decoder), pairs(&[(":authority", "www.example.com")]));
    assert_eq!(decoder.dynamic_size, 57);

    let second = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    assert_eq!(decode_text(&mut decoder, &hex(blocks[1])), pairs(&second));
    assert_eq!(table_text(&decoder), pairs(&[("cache-control", "no-cache"), (":authority", "www.example.com")]));
    assert_eq!(decoder.dynamic_size, 110);

    let third = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    assert_eq!(decode_text(&mut decoder, &hex(blocks[2])), pairs(&third));
    let table = [("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")];
    assert_eq!(table_text(&decoder), pairs(&table));
    assert_eq!(decoder.dynamic_size, 164);
}

#[test]
fn c3_requests_without_huffman() {
    check_requests([
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ]);
}

#[test]
fn c4_requests_with_huffman() {
    check_requests([
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ]);
}

/// The three responses of C.5 (raw) or C.6 (Huffman), with a 256-byte table that evicts.
fn check_responses(blocks: [&str; 3]) {
    const DATE_1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE_2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const LOCATION: &str = "https://www.example.com";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    let mut decoder = Decoder::new(256);

    let first = [(":status", "302"), ("cache-control", "private"), ("date", DATE_1), ("location", LOCATION)];
    assert_eq!(decode_text(&mut decoder, &hex(blocks[0])), pairs(&first));
    let table = [("location", LOCATION), ("date", DATE_1), ("cache-control", "private"), (":status", "302")];
    assert_eq!(table_text(&decoder), pairs(&table));
    assert_eq!(decoder.dynamic_size, 222);

    let second = [(":status", "307"), ("cache-control", "private"), ("date", DATE_1), ("location", LOCATION)];
    assert_eq!(decode_text(&mut decoder, &hex(blocks[1])), pairs(&second));
    let table = [(":status", "307"), ("location", LOCATION), ("date", DATE_1), ("cache-control", "private")];
    assert_eq!(table_text(&decoder), pairs(&table));
    assert_eq!(decoder.dynamic_size, 222);

    let third = [
        (":status", "200"),
        ("cache-control", "private"),
        ("date", DATE_2),
        ("location", LOCATION),
        ("content-encoding", "gzip"),
        ("set-cookie", COOKIE),
    ];
    assert_eq!(decode_text(&mut decoder, &hex(blocks[2])), pairs(&third));
    let table = [("set-cookie", COOKIE), ("content-encoding", "gzip"), ("date", DATE_2)];
    assert_eq!(table_text(&decoder), pairs(&table));
    assert_eq!(decoder.dynamic_size, 215);
}

#[test]
fn c5_responses_without_huffman() {
    check_responses([
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 \
         3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 \
         7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 \
         6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ]);
}

#[test]
fn c6_responses_with_huffman() {
    check_responses([
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad \
         1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 \
         e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ]);
}

#[test]
fn invalid_indices_are_rejected() {
    let mut decoder = Decoder::new(4096);
    assert_eq!(decode_fields(&mut decoder, &hex("80")), Err(DecodeError("index 0")));
    assert_eq!(decode_fields(&mut decoder, &hex("be")), Err(DecodeError("index beyond the dynamic table")));
    // A literal whose name index (62) is beyond the empty dynamic table.
    assert_eq!(decode_fields(&mut decoder, &hex("7e 01 61")), Err(DecodeError("index beyond the dynamic table")));
    assert_eq!(decode_fields(&mut decoder, &hex("bd")).unwrap()[0].0, Name::Header(header::WWW_AUTHENTICATE));
}

#[test]
fn truncated_strings_are_rejected() {
    let mut decoder = Decoder::new(4096);
    assert_eq!(
        decode_fields(&mut decoder, &hex("04 05 6162")),
        Err(DecodeError("string literal runs past the header block"))
    );
    assert_eq!(decode_fields(&mut decoder, &hex("04")), Err(DecodeError("truncated header block")));
    assert_eq!(
        decode_fields(&mut decoder, &hex("00 01")),
        Err(DecodeError("string literal runs past the header block"))
    );
}

#[test]
fn invalid_huffman_is_rejected() {
    let mut decoder = Decoder::new(4096);
    // :path with a Huffman value: 'a' then padding 000.
    assert_eq!(decode_fields(&mut decoder, &hex("04 81 18")), Err(DecodeError("Huffman padding not all ones")));
    // 'a' then 11 bits of padding.
    assert_eq!(decode_fields(&mut decoder, &hex("04 82 1fff")), Err(DecodeError("Huffman padding longer than 7 bits")));
    // 'a', EOS, padding.
    assert_eq!(
        decode_fields(&mut decoder, &hex("04 85 1fff ffff ff")),
        Err(DecodeError("Huffman EOS symbol in string"))
    );
    // Same in a literal name.
    assert_eq!(decode_fields(&mut decoder, &hex("00 81 18 01 61")), Err(DecodeError("Huffman padding not all ones")));
    // 'a' then padding 111 is fine, and so is an empty Huffman string.
    assert_eq!(decode_text(&mut decoder, &hex("04 81 1f 00 81 1f 80")), pairs(&[(":path", "a"), ("a", "")]));
}

#[test]
fn table_size_updates() {
    let mut decoder = Decoder::new(4096);
    let mut block = BytesMut::new();
    encode_integer(0x20, 5, 4096, &mut block);
    block.put_u8(0x82);
    assert_eq!(decode_text(&mut decoder, &block.freeze()), pairs(&[(":method", "GET")]));

    // Two updates in a row at the start are allowed (0, which empties the table, then 64);
    // the last one sticks.
    decode_text(&mut decoder, &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"));
    assert_eq!(decoder.dynamic_size, 55);
    assert_eq!(decode_text(&mut decoder, &hex("20 3f 21")), pairs(&[]));
    assert_eq!(decoder.capacity, 64);
    assert!(decoder.dynamic.is_empty());
    assert_eq!(decoder.dynamic_size, 0);

    let mut too_big = BytesMut::new();
    encode_integer(0x20, 5, 4097, &mut too_big);
    assert_eq!(
        decode_fields(&mut decoder, &too_big.freeze()),
        Err(DecodeError("table size update above SETTINGS_HEADER_TABLE_SIZE"))
    );
    assert_eq!(decode_fields(&mut decoder, &hex("82 20")), Err(DecodeError("table size update after a field")));
}

#[test]
fn size_update_evicts_oldest_entries() {
    let mut decoder = Decoder::new(4096);
    // custom-key: custom-header (55), then cache-control: no-cache (53).
    decode_text(&mut decoder, &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"));
    decode_text(&mut decoder, &hex("5808 6e6f 2d63 6163 6865"));
    assert_eq!(decoder.dynamic_size, 108);
    // Shrinking to 60 keeps only the newest entry.
    assert_eq!(decode_text(&mut decoder, &hex("3f 1d be")), pairs(&[("cache-control", "no-cache")]));
    assert_eq!(table_text(&decoder), pairs(&[("cache-control", "no-cache")]));
    assert_eq!(decoder.dynamic_size, 53);
}

#[test]
fn entry_larger_than_table_empties_it() {
    let mut decoder = Decoder::new(100);
    decode_text(&mut decoder, &hex("5808 6e6f 2d63 6163 6865"));
    assert_eq!(decoder.dynamic_size, 53);
    // cache-control with a 60-byte value: 13 + 60 + 32 = 105 > 100.
    let mut block = BytesMut::from(&[0x58, 60][..]);
    block.put_slice(&[b'x'; 60]);
    let fields = decode_fields(&mut decoder, &block.freeze()).unwrap();
    assert_eq!(fields[0].1.len(), 60);
    assert_eq!(fields[0].2, 105);
    assert!(decoder.dynamic.is_empty());
    assert_eq!(decoder.dynamic_size, 0);
}

#[test]
fn malformed_names() {
    let mut decoder = Decoder::new(4096);
    // Uppercase "Custom-Key: x", with incremental indexing, then indexed back.
    let fields = decode_fields(&mut decoder, &hex("400a 4375 7374 6f6d 2d4b 6579 0178 be")).unwrap();
    let expected = (Name::Malformed, Bytes::from_static(b"x"), 10 + 1 + 32, false);
    assert_eq!(fields, [expected.clone(), expected]);
    assert_eq!(decoder.dynamic_size, 43);
    // Unknown pseudo-header ":foo", an empty name, a name with a space.
    for block in ["00 043a 666f 6f 0178", "00 00 0178", "00 0261 20 0178"] {
        let fields = decode_fields(&mut decoder, &hex(block)).unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].0, Name::Malformed, "{block}");
        assert_eq!(fields[0].1, "x");
    }
    // A Huffman-coded uppercase name: "A" (100001, padding 11).
    let fields = decode_fields(&mut decoder, &hex("00 8187 0178")).unwrap();
    assert_eq!(fields[0].0, Name::Malformed);
    assert_eq!(fields[0].2, 1 + 1 + 32);
}

#[test]
fn pseudo_header_names() {
    let mut decoder = Decoder::new(4096);
    let block = hex("00 093a 7072 6f74 6f63 6f6c 0977 6562 736f 636b 6574");
    let fields = decode_fields(&mut decoder, &block).unwrap();
    assert_eq!(fields, [(Name::Protocol, Bytes::from_static(b"websocket"), 9 + 9 + 32, false)]);
}

#[test]
fn values_are_passed_unchecked() {
    let mut decoder = Decoder::new(4096);
    // :path "/a\n" with incremental indexing: the caller refuses the value, not HPACK.
    let fields = decode_fields(&mut decoder, &hex("44 03 2f61 0a")).unwrap();
    assert_eq!(fields, [(Name::Path, Bytes::from_static(b"/a\n"), 5 + 3 + 32, false)]);
    assert_eq!(decoder.dynamic_size, 40);
}

#[test]
fn raw_values_share_the_block_unless_indexed() {
    let mut decoder = Decoder::new(4096);
    let block = hex("040c 2f73 616d 706c 652f 7061 7468 440c 2f73 616d 706c 652f 7061 7468");
    let fields = decode_fields(&mut decoder, &block).unwrap();
    let within_block = |value: &Bytes| block.as_ptr_range().contains(&value.as_ptr());
    assert!(within_block(&fields[0].1));
    assert!(!within_block(&fields[1].1));
    assert_eq!(fields[0].1, fields[1].1);
}

#[test]
fn encoder_name_indices_match_static_table() {
    for (position, entry) in STATIC_TABLE.iter().enumerate() {
        if let Name::Header(name) = &entry.name {
            let first = STATIC_TABLE.iter().position(|other| other.name == entry.name).unwrap() + 1;
            assert_eq!(static_name_index(name.as_str()), Some(first), "{name}");
            assert_eq!(entry.name_len, name.as_str().len());
        } else {
            assert!(position < 14);
        }
    }
    assert_eq!(static_name_index("x-custom"), None);
}

#[test]
fn encode_status_bytes() {
    let cases: [(u16, &[u8]); 5] =
        [(200, &[0x88]), (500, &[0x8e]), (304, &[0x8b]), (503, b"\x08\x03503"), (101, b"\x08\x03101")];
    for (status, expected) in cases {
        let mut dst = BytesMut::new();
        encode_status(status, &mut dst);
        assert_eq!(&dst[..], expected, "{status}");
    }
}

#[test]
fn encode_field_bytes() {
    let mut dst = BytesMut::new();
    encode_field(&header::CONTENT_TYPE, &HeaderValue::from_static("text/html"), &mut dst);
    // Name index 31 needs a continuation byte after the 4-bit prefix.
    assert_eq!(&dst[..], b"\x0f\x10\x09text/html");

    let mut dst = BytesMut::new();
    let mut secret = HeaderValue::from_static("k");
    secret.set_sensitive(true);
    encode_field(&HeaderName::from_static("x-key"), &secret, &mut dst);
    assert_eq!(&dst[..], b"\x10\x05x-key\x01k");

    // `:authority` through the encoder: indexed by name, then added to the table (§6.2.1).
    let mut dst = BytesMut::new();
    Encoder::default().authority(b"example.com", &mut dst);
    assert_eq!(&dst[..], b"\x41\x0bexample.com");
}

#[test]
fn round_trip_request_and_response() {
    let mut decoder = Decoder::new(4096);
    let mut token = HeaderValue::from_static("Bearer abc");
    token.set_sensitive(true);
    let long_value = HeaderValue::from_str(&"v".repeat(300)).unwrap();
    let regular: Vec<(HeaderName, HeaderValue)> = vec![
        (header::USER_AGENT, HeaderValue::from_static("legate-test/1.0")),
        (header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate")),
        (header::AUTHORIZATION, token),
        (HeaderName::from_static("x-request-id"), HeaderValue::from_static("4f1c")),
        (HeaderName::from_static("x-long"), long_value),
        (header::COOKIE, HeaderValue::from_static("")),
    ];

    let mut block = BytesMut::new();
    let pseudo: [(Pseudo, &[u8], Name); 4] = [
        (Pseudo::Method, b"GET", Name::Method),
        (Pseudo::Scheme, b"https", Name::Scheme),
        (Pseudo::Path, b"/search?q=hpack", Name::Path),
        (Pseudo::Method, b"PATCH", Name::Method),
    ];
    for (kind, value, _) in &pseudo {
        encode_pseudo(*kind, value, &mut block);
    }
    for (name, value) in &regular {
        encode_field(name, value, &mut block);
    }
    let fields = decode_fields(&mut decoder, &block.freeze()).unwrap();
    let mut expected: Vec<(Name, HeaderValue)> =
        pseudo.into_iter().map(|(_, value, name)| (name, HeaderValue::from_bytes(value).unwrap())).collect();
    expected.extend(regular.into_iter().map(|(name, value)| (Name::Header(name), value)));
    assert_eq!(fields.len(), expected.len());
    for ((name, value, size, never_indexed), (expected_name, expected_value)) in fields.iter().zip(&expected) {
        assert_eq!(name, expected_name);
        assert_eq!(value, expected_value.as_bytes());
        assert_eq!(*never_indexed, expected_value.is_sensitive(), "{name:?}");
        assert_eq!(*size, name_text(name).len() + value.len() + 32);
    }

    let mut block = BytesMut::new();
    encode_status(503, &mut block);
    encode_field(&header::CONTENT_TYPE, &HeaderValue::from_static("application/json"), &mut block);
    let mut cookie = HeaderValue::from_static("session=1; HttpOnly");
    cookie.set_sensitive(true);
    encode_field(&header::SET_COOKIE, &cookie, &mut block);
    encode_field(&HeaderName::from_static("x-upstream"), &HeaderValue::from_static("b"), &mut block);
    encode_status(200, &mut block);
    let fields = decode_fields(&mut decoder, &block.freeze()).unwrap();
    let text: Vec<_> = fields
        .iter()
        .map(|(name, value, _, never_indexed)| (name_text(name), std::str::from_utf8(value).unwrap(), *never_indexed))
        .collect();
    assert_eq!(
        text,
        [
            (":status", "503", false),
            ("content-type", "application/json", false),
            ("set-cookie", "session=1; HttpOnly", true),
            ("x-upstream", "b", false),
            (":status", "200", false),
        ]
    );
    // Encoding never touches the peer's dynamic table.
    assert!(decoder.dynamic.is_empty());
}

/// Encodes a header block: `:authority`, then `fields`.
fn encode_with(encoder: &mut Encoder, authority: &str, fields: &[(HeaderName, HeaderValue)]) -> Bytes {
    let mut block = BytesMut::new();
    encoder.begin_block(&mut block);
    encoder.authority(authority.as_bytes(), &mut block);
    for (name, value) in fields {
        encoder.field(name, value, &mut block);
    }
    block.freeze()
}

#[test]
fn the_encoder_indexes_repeated_fields_and_the_peer_table_stays_in_step() {
    let mut encoder = Encoder::default();
    let mut decoder = Decoder::new(4096);
    let stable = vec![
        (header::USER_AGENT, HeaderValue::from_static("h2load nghttp2/1.52.0")),
        (HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http")),
        (HeaderName::from_static("x-envoy-expected-rq-timeout-ms"), HeaderValue::from_static("15000")),
    ];
    let first = encode_with(&mut encoder, "example.com", &stable);
    let second = encode_with(&mut encoder, "example.com", &stable);
    assert_eq!(second.len(), 4, "four fields seen before are one index byte each: {second:?}");
    for block in [first, second] {
        let decoded = decode_text(&mut decoder, &block);
        assert_eq!(decoded[0], (":authority".to_owned(), "example.com".to_owned()));
        assert_eq!(decoded.len(), 4);
    }

    // Many distinct fields: entries are evicted, and every block still decodes to what was
    // encoded (an index into an entry the decoder no longer holds would fail or differ).
    for round in 0..300usize {
        let mut fields = stable.clone();
        fields
            .push((HeaderName::from_static("x-varying"), HeaderValue::from_str(&"v".repeat(40 + round % 90)).unwrap()));
        fields.push((header::CONTENT_LENGTH, HeaderValue::from(round)));
        let mut secret = HeaderValue::from_str(&format!("id-{round}")).unwrap();
        secret.set_sensitive(true);
        fields.push((HeaderName::from_static("x-request-id"), secret));
        if round == 100 {
            // The peer lowers its table size to 0, then raises it: both updates lead the block.
            encoder.set_peer_limit(0);
            encoder.set_peer_limit(4096);
        }
        let authority = format!("host-{}.example", round % 5);
        let block = encode_with(&mut encoder, &authority, &fields);
        if round == 100 {
            assert_eq!(&block[..3], b"\x20\x3f\xe1", "size updates to 0 then 4096 open the block");
        }
        let decoded = decode_text(&mut decoder, &block);
        let mut expected = vec![(":authority".to_owned(), authority)];
        expected.extend(fields.iter().map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned())));
        assert_eq!(decoded, expected, "round {round}");
    }
}
