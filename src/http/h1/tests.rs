//! HTTP/1.1 framing both sides share, and request heads, against what RFC 9112 allows and
//! what Envoy refuses.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version};
use tokio::io::AsyncReadExt;

use super::framing::{Chunk, Decoded, chunk_size_line, decode_chunked, protocol_error};
use super::outgoing::Outgoing;
use super::request::{self, BodyFraming, HeadError, RequestHead};
use crate::http::body::BodyError;

/// Decodes all of `wire`, fed `step` bytes at a time, into data and trailers.
fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut read = BytesMut::new();
    let mut chunk = Chunk::Size;
    let mut fed = 0;
    loop {
        match decode_chunked(&mut read, &mut chunk)? {
            Decoded::Frame(frame) => match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    return Ok((data, trailers));
                }
            },
            Decoded::Again => {}
            Decoded::End => return Ok((data, trailers)),
            Decoded::NeedMore => {
                if fed == wire.len() {
                    return Err(protocol_error("truncated"));
                }
                let next = (fed + step).min(wire.len());
                read.extend_from_slice(&wire[fed..next]);
                fed = next;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_however_they_are_split() {
    let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
    for step in [1, 2, 7, wire.len()] {
        let (data, trailers) = dechunk(wire, step).unwrap();
        assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
        assert!(trailers.is_none());
    }
    let (data, trailers) = dechunk(b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n", 4).unwrap();
    assert_eq!(data, b"abc");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    for bad in [&b"x\r\n"[..], b"3\r\nabcXY", b"3\nabc\r\n", b"fffffffffffffffff\r\n"] {
        assert!(dechunk(bad, 1).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn chunk_size_lines_are_formatted() {
    let mut line = [0; 18];
    let at = chunk_size_line(0x1a2b, &mut line);
    assert_eq!(&line[at..], b"1a2b\r\n");
    assert_eq!(chunk_size_line(usize::MAX, &mut line), 0);
}

fn parse(raw: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    request::parse(&mut BytesMut::from(raw), &mut Vec::new())
}

fn refused(raw: &[u8]) -> (StatusCode, &'static str) {
    let error = parse(raw).err().unwrap_or_else(|| panic!("accepted: {}", String::from_utf8_lossy(raw)));
    (error.status, error.details)
}

#[test]
fn request_heads_parse_into_parts_and_framing() {
    let mut read =
        BytesMut::from(&b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Y:  z \r\n\r\nhelloGET"[..]);
    let head = request::parse(&mut read, &mut Vec::new()).unwrap().unwrap();
    assert_eq!(head.parts.method, Method::POST);
    assert_eq!(head.parts.uri, "/a?b=1");
    assert_eq!(head.parts.version, Version::HTTP_11);
    assert_eq!(head.parts.headers["host"], "x");
    assert_eq!(head.parts.headers["x-y"], "z");
    assert_eq!(head.body, BodyFraming::Length(5));
    assert!(head.keep_alive);
    assert_eq!(&read[..], b"helloGET", "only the head is taken off the buffer");

    assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none(), "a partial head waits for more");
    let head = parse(b"GET http://example.com/abs HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
    assert_eq!(head.parts.uri.authority().unwrap(), "example.com");
    assert!(!head.keep_alive);
    assert_eq!(head.body, BodyFraming::None);
    let head = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap();
    assert_eq!(head.parts.version, Version::HTTP_10);
    assert!(head.keep_alive);
    assert!(!parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
    let head = parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nTE: trailers\r\n\r\n").unwrap().unwrap();
    assert_eq!(head.body, BodyFraming::Chunked);
    assert!(head.trailers);
}

#[test]
fn request_targets_take_what_envoys_parser_takes() {
    // Envoy passes these on; the URI type cannot hold them raw, so they come escaped.
    let head = parse(b"GET /a<b>c`d?q HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
    assert_eq!(head.parts.uri, "/a%3Cb%3Ec%60d?q");
    // Envoy refuses any byte above 0x7F in the target, even valid UTF-8.
    assert_eq!(refused("GET /caf\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n".as_bytes()).0, StatusCode::BAD_REQUEST);
}

#[test]
fn expect_100_continue_is_answered_by_the_codec_and_not_forwarded() {
    let head = parse(b"PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
    assert!(head.expect_continue);
    assert!(!head.parts.headers.contains_key("expect"));
    let head = parse(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap();
    assert!(!head.expect_continue, "no body to wait for");
}

#[test]
fn heads_envoy_refuses_get_its_status_and_details() {
    let bad = (StatusCode::BAD_REQUEST, "http1.codec_error");
    assert_eq!(refused(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n"), bad);
    assert_eq!(refused(b"GET / HTTP/1.1\r\nx-a: one\x01two\r\n\r\n"), bad, "a control byte in a value");
    assert_eq!(refused(b"GET / HTTP/1.1\r\nx-a: one\x7f\r\n\r\n"), bad, "DEL in a value");
    assert_eq!(refused(b"GET / HTTP/1.1\r\nx-a: one\r\n two\r\n\r\n"), bad, "a folded line");
    assert_eq!(refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), bad, "an HTTP/2 preface");
    assert_eq!(refused(b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"), bad);
    assert_eq!(refused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), bad);
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (StatusCode::BAD_REQUEST, "http1.content_length_and_chunked_not_allowed")
    );
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        (StatusCode::NOT_IMPLEMENTED, "http1.invalid_transfer_encoding")
    );
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    assert_eq!(
        refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "http1.headers_too_large")
    );
}

/// What `Outgoing` puts on a real socket for a head and `frames`, chunked or not, each
/// flushed before the next is queued unless it was copied behind the unsent head.
async fn written(chunked: bool, frames: &[Bytes]) -> Vec<u8> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    let mut out = Outgoing::default();
    out.start_head().extend_from_slice(b"HEAD\r\n");
    for frame in frames {
        if !out.frame_is_empty() {
            std::future::poll_fn(|cx| out.poll_flush(&mut server, cx)).await.unwrap();
        }
        out.set_frame(frame.clone(), chunked);
    }
    if chunked {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        out.set_last_chunk(Some(&trailers));
    }
    std::future::poll_fn(|cx| out.poll_flush(&mut server, cx)).await.unwrap();
    assert!(out.is_empty());
    drop(server);
    let mut wire = Vec::new();
    client.read_to_end(&mut wire).await.unwrap();
    wire
}

#[tokio::test]
async fn small_frames_ride_behind_the_head_and_large_ones_follow_it_uncopied() {
    let small = Bytes::from_static(b"hello");
    let large = Bytes::from(vec![b'x'; 5000]);
    let frames = [small.clone(), small.clone(), large.clone(), small.clone()];
    let plain = written(false, &frames).await;
    assert_eq!(plain, [&b"HEAD\r\nhellohello"[..], &large, b"hello"].concat());
    let chunked = written(true, &frames).await;
    let expected = [
        &b"HEAD\r\n5\r\nhello\r\n5\r\nhello\r\n1388\r\n"[..],
        &large,
        b"\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n",
    ];
    assert_eq!(chunked, expected.concat());
}
