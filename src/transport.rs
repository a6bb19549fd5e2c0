//! A connection's transport: plain TCP, or TLS over it (downstream and upstream). The
//! HTTP codecs read and write a [`Transport`], so a plaintext connection costs one branch a
//! read or write over the bare socket; handshakes and their `ssl.*` stats live here.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::config::tls::{ClientTls, Expiry, ServerTls};
use crate::stats::{Counter, Store};

/// A connected socket, plaintext or TLS.
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: the TLS session's state is large, and plaintext connections should not carry it.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The protocol ALPN settled on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }

    /// Passes on the end of a relayed stream as Envoy does: a TLS side sends its
    /// `close_notify` and leaves the socket open (BoringSSL's `SSL_shutdown`, no
    /// `shutdown(2)`), a plaintext side shuts its write half. Either way the peer may still
    /// send what it has left.
    pub fn poll_end_stream(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => {
                // Sent once however often this is polled.
                tls.get_mut().1.send_close_notify();
                Pin::new(&mut **tls).poll_flush(cx)
            }
        }
    }

    /// Reads what an idle connection received, into `buf`: Ready(0) once the peer closed it.
    /// A plaintext socket is read only when the reactor saw it readable, so an idle pool's
    /// checks cost no syscalls; TLS records (a session ticket) are taken in and yield nothing.
    pub fn poll_read_idle(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        match self {
            Transport::Plain(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                match tcp.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return Poll::Ready(result),
                }
            },
            Transport::Tls(_) => tokio_util::io::poll_read_buf(Pin::new(self), cx, buf),
        }
    }
}

/// Inlined, as are the writes, with the TLS side called out of line (`off_path`): a plaintext
/// read or write is then one branch before the socket's own. As calls of their own, the
/// five reads and four flushes of a proxied HTTP/1.1 request cost ≈ 200 instructions.
impl AsyncRead for Transport {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => off_path(|| Pin::new(&mut **tls).poll_read(cx, buf)),
        }
    }
}

/// A TLS write may leave records in the session's buffer when the socket fills; the codecs
/// call `poll_flush` once their own queue is empty, which pushes those out (and costs a
/// plaintext socket nothing).
impl AsyncWrite for Transport {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => off_path(|| Pin::new(&mut **tls).poll_write(cx, buf)),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Transport::Tls(tls) => off_path(|| Pin::new(&mut **tls).poll_write_vectored(cx, bufs)),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(tcp) => tcp.is_write_vectored(),
            Transport::Tls(tls) => tls.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(_) => Poll::Ready(Ok(())),
            Transport::Tls(tls) => off_path(|| Pin::new(&mut **tls).poll_flush(cx)),
        }
    }

    /// TLS sends its `close_notify` first, as Envoy does; then the write side is shut.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

/// Runs `tls` in a function of its own, so that the plaintext branch beside it stays small
/// enough to inline.
#[inline(never)]
fn off_path<R>(tls: impl FnOnce() -> R) -> R {
    tls()
}

/// Envoy's `ssl.*` stats of a listener or cluster, under `<prefix>ssl.`: the fixed counters,
/// and per handshake the protocol version, cipher and curve, each under its BoringSSL name.
pub struct TlsStats {
    store: Store,
    prefix: String,
    handshake: Counter,
    connection_error: Counter,
    session_reused: Counter,
    no_certificate: Counter,
    fail_verify_no_cert: Counter,
    fail_verify_error: Counter,
    fail_verify_san: Counter,
    /// The curve of the last full handshake: a resumed TLS 1.2 session exchanges no key, and
    /// BoringSSL counts the curve of the session it resumes, which this stands in for.
    last_curve: Mutex<Option<&'static str>>,
}

impl TlsStats {
    /// Registers the counters under `<scope>ssl.` (`scope` ends with a dot), as Envoy does
    /// when the TLS context is made: all of them, at 0, before any handshake; and the
    /// context's `certificates`' expiry gauges.
    pub fn new(store: &Store, scope: &str, certificates: &[Expiry]) -> TlsStats {
        let prefix = format!("{scope}ssl.");
        for certificate in certificates {
            let name = format!("{prefix}certificate.{}.expiration_unix_time_seconds", certificate.name);
            store.gauge(&name).set(certificate.not_after as i64);
        }
        let counter = |name: &str| store.counter(&format!("{prefix}{name}"));
        for never in [
            "fail_verify_cert_hash",
            "ocsp_staple_failed",
            "ocsp_staple_omitted",
            "ocsp_staple_responses",
            "ocsp_staple_requests",
            "was_key_usage_invalid",
        ] {
            counter(never);
        }
        TlsStats {
            handshake: counter("handshake"),
            connection_error: counter("connection_error"),
            session_reused: counter("session_reused"),
            no_certificate: counter("no_certificate"),
            fail_verify_no_cert: counter("fail_verify_no_cert"),
            fail_verify_error: counter("fail_verify_error"),
            fail_verify_san: counter("fail_verify_san"),
            last_curve: Mutex::new(None),
            store: store.clone(),
            prefix,
        }
    }

    /// Counts a finished handshake, as Envoy's `logHandshake` does.
    fn handshake_done(&self, state: &rustls::CommonState) {
        self.handshake.inc();
        if state.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.session_reused.inc();
        }
        let named = |kind: &str, name: Option<&str>| {
            if let Some(name) = name {
                self.store.counter(&format!("{}{kind}.{name}", self.prefix)).inc();
            }
        };
        named("ciphers", state.negotiated_cipher_suite().and_then(|s| cipher_name(s.suite())));
        named("versions", state.protocol_version().and_then(version_name));
        let curve = state.negotiated_key_exchange_group().and_then(|g| curve_name(g.name()));
        let curve = {
            let mut last_curve = self.last_curve.lock().unwrap_or_else(PoisonError::into_inner);
            if curve.is_some() {
                *last_curve = curve;
            }
            *last_curve
        };
        named("curves", curve);
        if state.peer_certificates().is_none_or(<[_]>::is_empty) {
            self.no_certificate.inc();
        }
    }

    /// Counts a handshake's outcome; a finished one is the connection's transport.
    fn counted(&self, handshake: io::Result<TlsStream<TcpStream>>) -> io::Result<Transport> {
        match handshake {
            Ok(stream) => {
                self.handshake_done(stream.get_ref().1);
                Ok(Transport::Tls(Box::new(stream)))
            }
            Err(e) => {
                self.handshake_failed(&e);
                Err(e)
            }
        }
    }

    /// Counts a failed handshake: why this side's verification of the peer failed, or else
    /// a connection error (as Envoy counts them, one or the other).
    fn handshake_failed(&self, error: &io::Error) {
        match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)) => {
                self.fail_verify_san.inc();
            }
            Some(rustls::Error::InvalidCertificate(_)) => self.fail_verify_error.inc(),
            Some(rustls::Error::NoCertificatesPresented) => self.fail_verify_no_cert.inc(),
            _ => self.connection_error.inc(),
        }
    }
}

/// Handshakes as the server of an accepted connection.
pub async fn accept(tcp: TcpStream, tls: &ServerTls, stats: &TlsStats) -> io::Result<Transport> {
    let handshake = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(tcp).await;
    stats.counted(handshake.map(TlsStream::Server))
}

/// Handshakes as the client of a connection to an upstream, offering `alpn` (if any) unless
/// the cluster's context names its own protocols.
pub async fn connect(
    tcp: TcpStream,
    tls: &ClientTls,
    alpn: Option<&'static [u8]>,
    stats: &TlsStats,
) -> io::Result<Transport> {
    let name = match (&tls.sni, tcp.peer_addr()) {
        (Some(sni), _) => sni.clone(),
        (None, Ok(peer)) => ServerName::IpAddress(peer.ip().into()),
        (None, Err(e)) => return Err(e),
    };
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let connecting = match alpn.filter(|_| !tls.configured_alpn) {
        Some(alpn) => connector.with_alpn(vec![alpn.to_vec()]).connect(name, tcp),
        None => connector.connect(name, tcp),
    };
    stats.counted(connecting.await.map(TlsStream::Client))
}

fn version_name(version: rustls::ProtocolVersion) -> Option<&'static str> {
    match version {
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        _ => None,
    }
}

/// The OpenSSL names Envoy's stats use.
fn cipher_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as S;
    Some(match suite {
        S::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        S::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        S::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

fn curve_name(group: rustls::NamedGroup) -> Option<&'static str> {
    match group {
        rustls::NamedGroup::X25519 => Some("X25519"),
        rustls::NamedGroup::secp256r1 => Some("P-256"),
        rustls::NamedGroup::secp384r1 => Some("P-384"),
        _ => None,
    }
}

/// Envoy's `server.days_until_first_cert_expiring`: whole days until the first of the
/// contexts' certificates expires at `now` (Unix seconds); 0 once one has expired, and
/// `u32::MAX` without any.
pub fn days_until_first_expiry<'a>(contexts: impl Iterator<Item = &'a [Expiry]>, now: u64) -> u32 {
    contexts
        .flatten()
        .map(|certificate| certificate.not_after.checked_sub(now).map_or(0, |left| left / 86_400))
        .min()
        .map_or(u32::MAX, |days| u32::try_from(days).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_until_first_expiry_takes_the_soonest_and_zero_once_one_expired() {
        let expiry = |not_after| Expiry { name: "c".into(), not_after };
        let listener = [expiry(100 * 86_400), expiry(30 * 86_400 + 5)];
        let cluster = [expiry(40 * 86_400)];
        assert_eq!(days_until_first_expiry([&listener[..], &cluster[..]].into_iter(), 0), 30);
        assert_eq!(days_until_first_expiry([&listener[..], &cluster[..]].into_iter(), 31 * 86_400), 0);
        assert_eq!(days_until_first_expiry(std::iter::empty(), 0), u32::MAX);
    }
}
