//! The HTTP/1.1 codec against the framings RFC 9112 allows, and some it does not.

use bytes::BytesMut;
use http::StatusCode;

use super::codec::{HeadFraming, ResponseFraming, parse_head};
use crate::http::body::BodyError;

fn head(raw: &[u8], head_request: bool) -> Result<Option<(http::response::Parts, HeadFraming)>, BodyError> {
    parse_head(&mut BytesMut::from(raw), &mut Vec::new(), head_request)
}

fn framing(raw: &[u8]) -> (ResponseFraming, bool) {
    let (_, framing) = head(raw, false).unwrap().unwrap();
    (framing.body, framing.keep_alive)
}

#[test]
fn response_framing_follows_rfc_9112() {
    assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"), (ResponseFraming::Length(3), true));
    assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), (ResponseFraming::Empty, true));
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
        (ResponseFraming::Chunked, true)
    );
    // Both framing headers: chunked wins, the connection is not reused.
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
        (ResponseFraming::Chunked, false)
    );
    assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), (ResponseFraming::UntilClose, false));
    assert_eq!(framing(b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"), (ResponseFraming::Empty, true));
    assert!(!framing(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n").1);
    assert!(!framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").1);
    assert!(framing(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n").1);
    let (_, head_framing) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true).unwrap().unwrap();
    assert_eq!(head_framing.body, ResponseFraming::Empty);
}

#[test]
fn bad_heads_are_protocol_errors() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        // Bytes a header value may not hold (the map takes values unchecked: httparse's check
        // is the only one), and a folded line.
        b"HTTP/1.1 200 OK\r\nx-a: one\x01two\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: one\x7ftwo\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: one\r\n two\r\n\r\n",
    ] {
        assert!(head(raw, false).is_err(), "{}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn informational_responses_are_skipped() {
    let mut read =
        BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"[..]);
    let (parts, _) = parse_head(&mut read, &mut Vec::new(), false).unwrap().unwrap();
    assert_eq!(parts.status, StatusCode::CREATED);
    assert!(read.is_empty());
    // An informational response alone is not the answer yet.
    let mut read = BytesMut::from(&b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200"[..]);
    assert!(parse_head(&mut read, &mut Vec::new(), false).unwrap().is_none());
    assert_eq!(&read[..], b"HTTP/1.1 200");
}

#[test]
fn header_values_are_kept_byte_for_byte() {
    let (parts, _) =
        head(b"HTTP/1.1 200 OK\r\nx-a: one\r\nx-a: two\r\nServer:  nginx \r\ncontent-length: 0\r\n\r\n", false)
            .unwrap()
            .unwrap();
    let values: Vec<_> = parts.headers.get_all("x-a").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(values, ["one", "two"]);
    assert_eq!(parts.headers["server"], "nginx");
    let (parts, _) = head(b"HTTP/1.1 200 OK\r\nx-b: a\tb \xe9\r\ncontent-length: 0\r\n\r\n", false).unwrap().unwrap();
    assert_eq!(parts.headers["x-b"].as_bytes(), b"a\tb \xe9", "tab and obs-text are kept");
}
