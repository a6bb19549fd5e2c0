//! The listener filters that look at a connection's first bytes without taking them, for
//! what its filter chain is chosen by: the TLS inspector (`envoy.filters.listener.tls_inspector`:
//! the ClientHello's server name and ALPN) and the HTTP inspector
//! (`envoy.filters.listener.http_inspector`: a plaintext connection's HTTP version). The
//! bytes stay in the socket for the chosen chain.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::http::h2::PREFACE;
use crate::stats::{Counter, Histogram, HistogramUnit, Store};

/// `tls_inspector.*`, shared by every listener with the inspector, as Envoy's are.
pub struct TlsInspectorStats {
    client_hello_too_large: Counter,
    tls_found: Counter,
    tls_not_found: Counter,
    alpn_found: Counter,
    alpn_not_found: Counter,
    sni_found: Counter,
    sni_not_found: Counter,
    bytes_processed: Histogram,
}

impl TlsInspectorStats {
    pub fn new(store: &Store) -> TlsInspectorStats {
        let c = |name: &str| store.counter(&format!("tls_inspector.{name}"));
        TlsInspectorStats {
            client_hello_too_large: c("client_hello_too_large"),
            tls_found: c("tls_found"),
            tls_not_found: c("tls_not_found"),
            alpn_found: c("alpn_found"),
            alpn_not_found: c("alpn_not_found"),
            sni_found: c("sni_found"),
            sni_not_found: c("sni_not_found"),
            bytes_processed: store.histogram("tls_inspector.bytes_processed", HistogramUnit::Bytes),
        }
    }
}

/// `http_inspector.*`, shared by every listener with the inspector, as Envoy's are.
pub struct HttpInspectorStats {
    http10_found: Counter,
    http11_found: Counter,
    http2_found: Counter,
    http_not_found: Counter,
    read_error: Counter,
}

impl HttpInspectorStats {
    pub fn new(store: &Store) -> HttpInspectorStats {
        let c = |name: &str| store.counter(&format!("http_inspector.{name}"));
        HttpInspectorStats {
            http10_found: c("http10_found"),
            http11_found: c("http11_found"),
            http2_found: c("http2_found"),
            http_not_found: c("http_not_found"),
            read_error: c("read_error"),
        }
    }
}

/// What the listener filters found. Without them: no TLS, no server name, no protocols.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inspected {
    /// TLS was found: its transport protocol is `tls`, else `raw_buffer`.
    pub tls: bool,
    /// The ClientHello's server name, lowercased; empty without one.
    pub server_name: String,
    /// The ClientHello's ALPN protocols, in the client's order, or the one the HTTP
    /// inspector found.
    pub alpn: Vec<String>,
}

/// The most of a ClientHello the TLS inspector reads, as Envoy's (BoringSSL's largest record).
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The most the HTTP inspector reads looking for the end of a request line, as Envoy's.
const MAX_REQUEST_LINE: usize = 64 * 1024;

/// How long to wait before looking again at bytes that do not decide yet: the socket stays
/// readable while the bytes already seen sit in it, so its readiness cannot say when more
/// arrive. A ClientHello or a request line nearly always comes in one segment.
const PEEK_AGAIN: Duration = Duration::from_millis(1);

/// How a look at a connection's first bytes ended.
enum Peeked<R> {
    Decided(R, usize),
    /// The client closed before the bytes decided.
    Closed,
    /// `max` bytes did not decide.
    Undecided,
}

/// The first look's size, doubled while it is filled without deciding (as Envoy's listener
/// filter buffer grows): most ClientHellos and request lines fit.
const FIRST_PEEK: usize = 2048;

/// Peeks at `tcp` until `decide` settles on the bytes so far (`None`: it needs more), at
/// most `max` bytes.
async fn peek_until<R>(tcp: &TcpStream, max: usize, decide: impl Fn(&[u8]) -> Option<R>) -> std::io::Result<Peeked<R>> {
    let mut buf = vec![0; FIRST_PEEK.min(max)];
    let mut seen = 0;
    loop {
        let read = tcp.peek(&mut buf).await?;
        if read == 0 {
            return Ok(Peeked::Closed);
        }
        if let Some(decided) = decide(&buf[..read]) {
            return Ok(Peeked::Decided(decided, read));
        }
        if read == max {
            return Ok(Peeked::Undecided);
        }
        if read == buf.len() {
            buf.resize((buf.len() * 2).min(max), 0);
        } else if read == seen {
            tokio::time::sleep(PEEK_AGAIN).await;
        }
        seen = read;
    }
}

/// The TLS inspector: reads the ClientHello into `inspected`. `false`: the connection is to
/// be closed (the client closed first, or its ClientHello is too large, as Envoy closes it).
pub async fn inspect_tls(
    tcp: &TcpStream,
    stats: &TlsInspectorStats,
    inspected: &mut Inspected,
) -> std::io::Result<bool> {
    let peeked = peek_until(tcp, MAX_CLIENT_HELLO, |bytes| match parse(bytes) {
        Parse::Incomplete => None,
        parsed => Some(parsed),
    })
    .await?;
    match peeked {
        Peeked::Decided(Parse::Hello(hello), read) => {
            stats.tls_found.inc();
            let found = |found: bool, yes: &Counter, no: &Counter| if found { yes.inc() } else { no.inc() };
            found(!hello.server_name.is_empty(), &stats.sni_found, &stats.sni_not_found);
            found(!hello.alpn.is_empty(), &stats.alpn_found, &stats.alpn_not_found);
            stats.bytes_processed.record(read as u64);
            *inspected = hello;
        }
        Peeked::Decided(_, read) => {
            stats.tls_not_found.inc();
            stats.bytes_processed.record(read as u64);
        }
        Peeked::Undecided => {
            stats.client_hello_too_large.inc();
            return Ok(false);
        }
        Peeked::Closed => return Ok(false),
    }
    Ok(true)
}

/// The HTTP inspector: on a connection not found to be TLS, sets the application protocol to
/// `http/1.1`, `http/1.0` or `h2c` by its first request line or HTTP/2's preface. `false`:
/// the connection is to be closed (the client closed first, or no line end in 64 KiB).
pub async fn inspect_http(
    tcp: &TcpStream,
    stats: &HttpInspectorStats,
    inspected: &mut Inspected,
) -> std::io::Result<bool> {
    if inspected.tls {
        return Ok(true);
    }
    match peek_until(tcp, MAX_REQUEST_LINE, http_version).await? {
        Peeked::Decided(Some(protocol), _) => {
            let found = match protocol {
                "h2c" => &stats.http2_found,
                "http/1.1" => &stats.http11_found,
                _ => &stats.http10_found,
            };
            found.inc();
            inspected.alpn = vec![protocol.to_owned()];
        }
        Peeked::Decided(None, _) => stats.http_not_found.inc(),
        Peeked::Undecided => {
            stats.read_error.inc();
            return Ok(false);
        }
        Peeked::Closed => return Ok(false),
    }
    Ok(true)
}

/// The application protocol a connection's first bytes show: `Some(Some(_))` HTTP found,
/// `Some(None)` not HTTP, `None` more bytes needed.
fn http_version(bytes: &[u8]) -> Option<Option<&'static str>> {
    let shared = bytes.len().min(PREFACE.len());
    if bytes[..shared] == PREFACE[..shared] {
        return (bytes.len() >= PREFACE.len()).then_some(Some("h2c"));
    }
    if bytes.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        return Some(None);
    }
    let line_end = bytes.iter().position(|b| *b == b'\n');
    let line = &bytes[..line_end.map_or(bytes.len(), |end| end + 1)];
    let mut no_headers = [];
    let mut request = httparse::Request::new(&mut no_headers);
    match (request.parse(line), line_end) {
        (Err(_), _) => Some(None),
        (Ok(_), Some(_)) => Some(Some(if request.version == Some(1) { "http/1.1" } else { "http/1.0" })),
        (Ok(_), None) => None,
    }
}

/// What a prefix of a connection's bytes is.
#[derive(Debug, PartialEq, Eq)]
enum Parse {
    Hello(Inspected),
    NotTls,
    /// A ClientHello so far: more bytes are needed.
    Incomplete,
}

/// Reads a ClientHello from the TLS records at the start of `bytes`: the handshake message
/// may span records.
fn parse(bytes: &[u8]) -> Parse {
    let mut handshake = Vec::new();
    let mut records = bytes;
    loop {
        let Some(&[content_type, major, _, high, low]) = records.get(..5).map(|h| <&[u8; 5]>::try_from(h).unwrap())
        else {
            // Too short for a record header: still TLS-like if what there is fits one.
            let plausible = records.first().is_none_or(|t| *t == 22) && records.get(1).is_none_or(|m| *m == 3);
            return if plausible { Parse::Incomplete } else { Parse::NotTls };
        };
        // A handshake record of TLS 1.0 or later.
        if content_type != 22 || major != 3 {
            return Parse::NotTls;
        }
        let length = usize::from(u16::from_be_bytes([high, low]));
        let Some(fragment) = records.get(5..5 + length) else { return Parse::Incomplete };
        handshake.extend_from_slice(fragment);
        records = &records[5 + length..];
        match handshake.as_slice() {
            [1, a, b, c, body @ ..] => {
                let size = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
                if body.len() >= size {
                    return client_hello(&body[..size]).map_or(Parse::NotTls, Parse::Hello);
                }
            }
            // Any other handshake message first is no ClientHello.
            [_, ..] => return Parse::NotTls,
            [] => {}
        }
    }
}

/// A byte reader over a ClientHello's fields; `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A field prefixed with its length in `width` bytes.
    fn vector(&mut self, width: usize) -> Option<Reader<'a>> {
        let length = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(length).map(Reader)
    }
}

/// The server name and ALPN protocols of a ClientHello's body.
fn client_hello(body: &[u8]) -> Option<Inspected> {
    let mut hello = Reader(body);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vector(1)?; // legacy_session_id
    hello.vector(2)?; // cipher_suites
    hello.vector(1)?; // legacy_compression_methods
    let mut inspected = Inspected { tls: true, ..Inspected::default() };
    let Some(mut extensions) = hello.vector(2) else { return Some(inspected) };
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vector(2)?;
        match kind {
            // server_name: the first host_name entry.
            0 => {
                let mut names = data.vector(2)?;
                while !names.0.is_empty() {
                    let name_type = names.u8()?;
                    let name = names.vector(2)?;
                    if name_type == 0 {
                        inspected.server_name = String::from_utf8_lossy(name.0).to_ascii_lowercase();
                        break;
                    }
                }
            }
            // application_layer_protocol_negotiation
            16 => {
                let mut protocols = data.vector(2)?;
                while !protocols.0.is_empty() {
                    inspected.alpn.push(String::from_utf8_lossy(protocols.vector(1)?.0).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(inspected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `server_name` with `alpn`.
    fn client_hello_bytes(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_client_hello_gives_its_server_name_and_alpn() {
        let bytes = client_hello_bytes("API.Example.com", &[b"h2", b"http/1.1"]);
        let expected =
            Inspected { tls: true, server_name: "api.example.com".into(), alpn: vec!["h2".into(), "http/1.1".into()] };
        assert_eq!(parse(&bytes), Parse::Hello(expected));
        for cut in [1, 4, 5, 40, bytes.len() - 1] {
            assert_eq!(parse(&bytes[..cut]), Parse::Incomplete, "the first {cut} bytes");
        }
    }

    #[test]
    fn a_hello_split_over_records_is_joined() {
        let bytes = client_hello_bytes("a.test", &[]);
        let body = &bytes[5..];
        let (first, second) = body.split_at(30);
        let mut split = Vec::new();
        for part in [first, second] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        let Parse::Hello(hello) = parse(&split) else { panic!("no hello in {split:?}") };
        assert_eq!((hello.server_name.as_str(), hello.alpn.len()), ("a.test", 0));
    }

    #[test]
    fn the_first_request_line_or_the_preface_gives_the_http_version() {
        assert_eq!(http_version(b"GET /a HTTP/1.1\r\nhost: x\r\n"), Some(Some("http/1.1")));
        assert_eq!(http_version(b"POST / HTTP/1.0\r\n"), Some(Some("http/1.0")));
        assert_eq!(http_version(PREFACE), Some(Some("h2c")));
        assert_eq!(http_version(&PREFACE[..10]), None);
        assert_eq!(http_version(b"GET /a HT"), None);
        assert_eq!(http_version(b"\r\nGET / HTTP/1.1\r\n"), Some(None));
        assert_eq!(http_version(b"SSH-2.0-OpenSSH\r\n"), Some(None));
        assert_eq!(http_version(&[22, 3, 1, 0, 200]), Some(None));
    }

    #[test]
    fn anything_else_is_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        assert_eq!(parse(b"PRI * HTTP/2.0"), Parse::NotTls);
        assert_eq!(parse(&[22, 2]), Parse::NotTls);
        assert_eq!(parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), Parse::NotTls, "a ServerHello");
    }
}
