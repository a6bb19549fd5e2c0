//! Transport sockets: `envoy.transport_sockets.tls` contexts → rustls configs, built once at
//! config time and shared by every connection; `raw_buffer` (plaintext) is no transport at all.
//!
//! Envoy's defaults are kept where they show on the wire or in `/stats`: TLS 1.2–1.3 for a
//! listener and 1.2 only for a cluster, the curves X25519 then P-256, BoringSSL's cipher
//! preference as a client (AES-128-GCM first); as a server legate takes the client's order,
//! which is what BoringSSL does in TLS 1.3 (in 1.2 it takes its own), ALPN from `alpn_protocols` (for a
//! cluster without any: the protocol of the pool, as Envoy's fallback does). A cluster's
//! certificate is checked only against `trusted_ca` and the SAN matchers, never against
//! `sni`, and not at all without a validation context, as in Envoy.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate, TlsParameters,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Name;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};

use super::error::{ConfigError, Result, join_path};
use super::proto::{self, ensure_only};

const TLS_TYPE_SUFFIX: &str = "TlsContext";

/// A listener's TLS: the server config every accepted connection handshakes with.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub certificates: Vec<Expiry>,
}

/// A certificate of a context (its own, or its trusted CA's first), under the name Envoy's
/// `ssl.certificate.<name>.expiration_unix_time_seconds` gives it, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub name: String,
    /// `notAfter`, in seconds since the Unix epoch.
    pub not_after: u64,
}

/// A cluster's TLS: the client config and what it sends as SNI.
#[derive(Debug)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// `sni`, or `None` to send none (rustls sends none for an IP address).
    pub sni: Option<ServerName<'static>>,
    /// Whether `alpn_protocols` was set; if not, each connection offers its pool's protocol.
    pub configured_alpn: bool,
    pub certificates: Vec<Expiry>,
}

/// The TLS of a listener's `transport_socket`: `None` for none or `raw_buffer`.
pub fn downstream(socket: Option<&TransportSocket>, path: &str) -> Result<Option<ServerTls>> {
    let Some(context) = unpack_context::<DownstreamTlsContext>(socket, path)? else { return Ok(None) };
    let path = &join_path(path, "typed_config");
    ensure_only(&context, &["common_tls_context", "require_client_certificate"], path)?;
    let common_path = join_path(path, "common_tls_context");
    let common = context.common_tls_context.unwrap_or_default();
    ensure_common(&common, &common_path)?;
    let versions = versions(common.tls_params.as_ref(), &join_path(&common_path, "tls_params"), true)?;
    let (chain, key, own) = match common.tls_certificates.as_slice() {
        [] => return Err(ConfigError::invalid(&common_path, "No TLS certificates found for server context")),
        [certificate] => certificate_and_key(certificate, &format!("{common_path}.tls_certificates[0]"))?,
        [_, _, ..] => {
            return Err(ConfigError::unsupported(
                format!("{common_path}.tls_certificates[1]"),
                "more than one certificate",
            ));
        }
    };
    let validation = validation_context(&common, &common_path)?;
    if validation.as_ref().is_some_and(|v| !v.san_matchers.is_empty()) {
        return Err(ConfigError::unsupported(
            format!("{common_path}.validation_context.match_typed_subject_alt_names"),
            "on a listener",
        ));
    }
    let required = context.require_client_certificate.is_some_and(|r| r.value);
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| ConfigError::invalid(&common_path, e.to_string()))?;
    let certificates = own.into_iter().chain(validation.as_ref().and_then(|v| v.ca.clone())).collect();
    let builder = match validation {
        Some(Validation { roots: Some(roots), .. }) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if required { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|e| ConfigError::invalid(&common_path, e.to_string()))?,
            )
        }
        // Without a CA, Envoy 1.40 asks for no certificate, `require_client_certificate` or not.
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ConfigError::invalid(format!("{common_path}.tls_certificates[0]"), e.to_string()))?;
    config.alpn_protocols = alpn(&common, &common_path)?;
    Ok(Some(ServerTls { config: Arc::new(config), certificates }))
}

/// The TLS of a cluster's `transport_socket`: `None` for none or `raw_buffer`.
pub fn upstream(socket: Option<&TransportSocket>, path: &str) -> Result<Option<ClientTls>> {
    let Some(context) = unpack_context::<UpstreamTlsContext>(socket, path)? else { return Ok(None) };
    let path = &join_path(path, "typed_config");
    // No `allow_renegotiation`: rustls never renegotiates.
    ensure_only(&context, &["common_tls_context", "sni", "max_session_keys"], path)?;
    let common_path = join_path(path, "common_tls_context");
    let common = context.common_tls_context.unwrap_or_default();
    ensure_common(&common, &common_path)?;
    let versions = versions(common.tls_params.as_ref(), &join_path(&common_path, "tls_params"), false)?;
    let provider = provider();
    let validation = validation_context(&common, &common_path)?;
    let mut certificates: Vec<Expiry> = validation.as_ref().and_then(|v| v.ca.clone()).into_iter().collect();
    let verifier = Arc::new(UpstreamVerifier { validation, algorithms: provider.signature_verification_algorithms });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| ConfigError::invalid(&common_path, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match common.tls_certificates.as_slice() {
        [] => builder.with_no_client_auth(),
        [certificate] => {
            let field = format!("{common_path}.tls_certificates[0]");
            let (chain, key, own) = certificate_and_key(certificate, &field)?;
            certificates.splice(0..0, own);
            builder.with_client_auth_cert(chain, key).map_err(|e| ConfigError::invalid(field, e.to_string()))?
        }
        [_, _, ..] => {
            return Err(ConfigError::unsupported(
                format!("{common_path}.tls_certificates[1]"),
                "more than one certificate",
            ));
        }
    };
    config.alpn_protocols = alpn(&common, &common_path)?;
    let configured_alpn = !config.alpn_protocols.is_empty();
    // Sessions are resumed (rustls keeps them per server name); `max_session_keys: 0` turns
    // resumption off, as in Envoy.
    if context.max_session_keys.is_some_and(|keys| keys.value == 0) {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let sni = if context.sni.is_empty() {
        None
    } else {
        Some(ServerName::try_from(context.sni.clone()).map_err(|_| {
            ConfigError::invalid(join_path(path, "sni"), format!("'{}' is not a valid server name", context.sni))
        })?)
    };
    config.enable_sni = sni.is_some();
    Ok(Some(ClientTls { config: Arc::new(config), sni, configured_alpn, certificates }))
}

/// The TLS context inside a `transport_socket`, or `None` for plaintext.
fn unpack_context<M: prost::Message + Name + Default>(
    socket: Option<&TransportSocket>,
    path: &str,
) -> Result<Option<M>> {
    let Some(socket) = socket else { return Ok(None) };
    let any = match &socket.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => {
            return Err(ConfigError::invalid(path, format!("transport socket '{}' has no typed_config", socket.name)));
        }
    };
    let name = proto::type_name(&any.type_url);
    if name == RawBuffer::full_name() {
        return Ok(None);
    }
    // The other side's context (a listener given an UpstreamTlsContext) is Envoy's error too.
    if name.ends_with(TLS_TYPE_SUFFIX) && name != M::full_name() && name.starts_with(M::PACKAGE) {
        return Err(ConfigError::invalid(
            join_path(path, "typed_config"),
            format!("expected @type {}, got {name}", M::full_name()),
        ));
    }
    proto::unpack(any, path).map(Some)
}

/// The protocol versions `tls_params` allows, of those rustls has (1.2 and 1.3); a minimum
/// below 1.2 allows 1.2, which every client of the last decade speaks.
fn versions(
    params: Option<&TlsParameters>,
    path: &str,
    server: bool,
) -> Result<Vec<&'static SupportedProtocolVersion>> {
    let Some(params) = params else {
        return Ok(if server {
            vec![&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            vec![&rustls::version::TLS12]
        });
    };
    ensure_only(params, &["tls_minimum_protocol_version", "tls_maximum_protocol_version"], path)?;
    let level = |value: i32, field: &str, auto: u8| match TlsProtocol::try_from(value) {
        Ok(TlsProtocol::TlsAuto) => Ok(auto),
        Ok(TlsProtocol::TlSv10 | TlsProtocol::TlSv11 | TlsProtocol::TlSv12) => Ok(2),
        Ok(TlsProtocol::TlSv13) => Ok(3),
        Err(_) => Err(ConfigError::invalid(join_path(path, field), "unknown value")),
    };
    let min = level(params.tls_minimum_protocol_version, "tls_minimum_protocol_version", 2)?;
    let max = level(params.tls_maximum_protocol_version, "tls_maximum_protocol_version", if server { 3 } else { 2 })?;
    if matches!(
        TlsProtocol::try_from(params.tls_maximum_protocol_version),
        Ok(TlsProtocol::TlSv10 | TlsProtocol::TlSv11)
    ) {
        return Err(ConfigError::unsupported(join_path(path, "tls_maximum_protocol_version"), "below TLSv1_2"));
    }
    if min > max {
        return Err(ConfigError::invalid(path, "minimum TLS protocol version is above the maximum"));
    }
    Ok([(3, &rustls::version::TLS13), (2, &rustls::version::TLS12)]
        .into_iter()
        .filter(|(level, _)| (min..=max).contains(level))
        .map(|(_, version)| version)
        .collect())
}

/// Certificates, a validation context, ALPN and protocol versions: no SDS, no certificate
/// providers, no custom handshakers or key logs.
fn ensure_common(common: &CommonTlsContext, path: &str) -> Result<()> {
    ensure_only(common, &["tls_params", "tls_certificates", "alpn_protocols", "validation_context"], path)
}

fn alpn(common: &CommonTlsContext, path: &str) -> Result<Vec<Vec<u8>>> {
    common
        .alpn_protocols
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.is_empty() || p.len() > 255 {
                return Err(ConfigError::invalid(
                    format!("{path}.alpn_protocols[{i}]"),
                    "Invalid ALPN protocol string",
                ));
            }
            Ok(p.as_bytes().to_vec())
        })
        .collect()
}

/// The ring provider with Envoy's (BoringSSL's) preferences: AES-128-GCM ahead of ChaCha20 and
/// AES-256-GCM, and the curves X25519 and P-256 only, so that a handshake between two legates
/// picks what one between two Envoys picks (`ssl.ciphers.*`, `ssl.curves.*`).
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as suite, kx_group};
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The chain, its key, and the first certificate's expiry.
fn certificate_and_key(
    certificate: &TlsCertificate,
    path: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, Option<Expiry>)> {
    ensure_only(certificate, &["certificate_chain", "private_key"], path)?;
    let chain_path = join_path(path, "certificate_chain");
    let chain_pem = pem_source(certificate.certificate_chain.as_ref(), &chain_path, "certificate chain")?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(&chain_path, format!("Failed to load certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(ConfigError::invalid(chain_path, "Failed to load certificate chain: no certificate found"));
    }
    let key_path = join_path(path, "private_key");
    let key_pem = pem_source(certificate.private_key.as_ref(), &key_path, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| ConfigError::invalid(key_path, format!("Failed to load private key: {e}")))?;
    let expiry = expiry(&chain[0], "unnamed_cert_", certificate.certificate_chain.as_ref());
    Ok((chain, key, expiry))
}

/// A PEM data source's bytes; a missing source is Envoy's "empty" error.
fn pem_source(source: Option<&DataSource>, path: &str, what: &str) -> Result<bytes::Bytes> {
    let source = source.ok_or_else(|| ConfigError::invalid(path, "value is required"))?;
    proto::data_source(source, path, what, None)?.ok_or_else(|| ConfigError::invalid(path, "value is required"))
}

/// A validation context: the CA to check the peer's chain against, and the names it must hold.
#[derive(Debug)]
struct Validation {
    roots: Option<Arc<RootCertStore>>,
    /// `match_typed_subject_alt_names`: the peer is accepted if its certificate is valid for one.
    san_matchers: Vec<ServerName<'static>>,
    /// The first trusted CA's expiry.
    ca: Option<Expiry>,
}

fn validation_context(common: &CommonTlsContext, path: &str) -> Result<Option<Validation>> {
    let Some(ValidationContextType::ValidationContext(context)) = &common.validation_context_type else {
        // The other kinds (SDS, combined, providers) are refused by `ensure_common`.
        return Ok(None);
    };
    let path = &join_path(path, "validation_context");
    ensure_only(context, &["trusted_ca", "match_typed_subject_alt_names"], path)?;
    let (roots, ca) = match &context.trusted_ca {
        None => (None, None),
        Some(source) => {
            let (roots, ca) = root_store(source, &join_path(path, "trusted_ca"))?;
            (Some(Arc::new(roots)), ca)
        }
    };
    let san_matchers = san_matchers(context, path)?;
    if roots.is_none() && !san_matchers.is_empty() {
        return Err(ConfigError::invalid(
            path,
            "SAN-based verification of peer certificates without trusted CA is insecure and not allowed",
        ));
    }
    Ok(Some(Validation { roots, san_matchers, ca }))
}

/// The trusted CAs, and the first one's expiry.
fn root_store(source: &DataSource, path: &str) -> Result<(RootCertStore, Option<Expiry>)> {
    let pem = proto::data_source(source, path, "trusted CA", None)?.unwrap_or_default();
    let mut roots = RootCertStore::empty();
    let mut first = None;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate
            .map_err(|e| ConfigError::invalid(path, format!("Failed to load trusted CA certificates: {e}")))?;
        if first.is_none() {
            first = expiry(&certificate, "unnamed_ca_cert_", Some(source));
        }
        roots
            .add(certificate)
            .map_err(|e| ConfigError::invalid(path, format!("Failed to load trusted CA certificates: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ConfigError::invalid(path, "Failed to load trusted CA certificates: no certificate found"));
    }
    Ok((roots, first))
}

/// DNS and IP address SANs matched exactly (a wildcard certificate name matches as in Envoy);
/// the other matchers and SAN types need the certificate's names, which legate does not parse.
fn san_matchers(context: &CertificateValidationContext, path: &str) -> Result<Vec<ServerName<'static>>> {
    let mut names = Vec::new();
    for (i, matcher) in context.match_typed_subject_alt_names.iter().enumerate() {
        let at = format!("{path}.match_typed_subject_alt_names[{i}]");
        let san_type = SanType::try_from(matcher.san_type).unwrap_or(SanType::Unspecified);
        if !matches!(san_type, SanType::Dns | SanType::IpAddress) {
            return Err(ConfigError::unsupported(join_path(&at, "san_type"), san_type.as_str_name()));
        }
        let string = matcher
            .matcher
            .as_ref()
            .ok_or_else(|| ConfigError::invalid(join_path(&at, "matcher"), "value is required"))?;
        let exact = match &string.match_pattern {
            Some(MatchPattern::Exact(exact)) if !string.ignore_case => exact,
            _ => return Err(ConfigError::unsupported(join_path(&at, "matcher"), "a matcher other than exact")),
        };
        let name = ServerName::try_from(exact.clone()).map_err(|_| {
            ConfigError::invalid(join_path(&at, "matcher.exact"), format!("'{exact}' is not a DNS name or IP address"))
        })?;
        let is_ip = matches!(name, ServerName::IpAddress(_));
        if is_ip != (san_type == SanType::IpAddress) {
            return Err(ConfigError::invalid(
                join_path(&at, "matcher.exact"),
                format!("'{exact}' is not of type {}", san_type.as_str_name()),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// Envoy's upstream certificate check: the chain against `trusted_ca` and the SAN matchers;
/// with no validation context, any certificate (the handshake's signatures are still checked).
#[derive(Debug)]
struct UpstreamVerifier {
    validation: Option<Validation>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(validation) = &self.validation else { return Ok(ServerCertVerified::assertion()) };
        let certificate = ParsedCertificate::try_from(end_entity)?;
        if let Some(roots) = &validation.roots {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &certificate,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        if !validation.san_matchers.is_empty()
            && !validation
                .san_matchers
                .iter()
                .any(|name| rustls::client::verify_server_name(&certificate, name).is_ok())
        {
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `certificate`'s expiry, named `<prefix><hash>` as Envoy names it: the hash is the first
/// eight hex digits of the SHA-256 of the source's `inline_bytes` (of nothing, for a file or
/// an inline string). `None` if its validity cannot be read.
fn expiry(certificate: &CertificateDer<'_>, prefix: &str, source: Option<&DataSource>) -> Option<Expiry> {
    let bytes: &[u8] = match source.and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(bytes)) => bytes,
        _ => &[],
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hash: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    Some(Expiry { name: format!("{prefix}{hash}"), not_after: not_after(certificate)? })
}

/// An X.509 certificate's `notAfter` in seconds since the Unix epoch, read from its DER:
/// Certificate → tbsCertificate → (version, serialNumber, signature, issuer) → validity.
fn not_after(certificate: &[u8]) -> Option<u64> {
    let (certificate, _) = der(certificate, 0x30)?;
    let (tbs, _) = der(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der(rest, 0xa0)?.1;
    }
    for tag in [0x02, 0x30, 0x30] {
        rest = der(rest, tag)?.1;
    }
    let (validity, _) = der(rest, 0x30)?;
    let (_, validity) = der_any(validity)?;
    let (tag, time, _) = der_element(validity)?;
    let text = std::str::from_utf8(time).ok()?;
    let full = match (tag, text.len()) {
        // UTCTime: YYMMDDHHMMSSZ, years 1950–2049.
        (0x17, 13) => {
            let year: u64 = text[..2].parse().ok()?;
            format!("{}{text}", if year < 50 { "20" } else { "19" })
        }
        // GeneralizedTime: YYYYMMDDHHMMSSZ.
        (0x18, 15) => text.to_owned(),
        _ => return None,
    };
    let field = |range: std::ops::Range<usize>| full.get(range)?.parse::<u64>().ok();
    let (year, month, day) = (field(0..4)?, field(4..6)?, field(6..8)?);
    let seconds = field(8..10)? * 3600 + field(10..12)? * 60 + field(12..14)?;
    Some(days_from_epoch(year, month, day)? * 86_400 + seconds)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (from 1970 on).
fn days_from_epoch(year: u64, month: u64, day: u64) -> Option<u64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    // Years counted from March, so that the leap day ends a year.
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era_days = y / 400 * 146_097;
    let year_of_era = y % 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719 468: days from 0000-03-01 to 1970-01-01.
    Some(era_days + day_of_era - 719_468)
}

/// One DER element of `tag` at the start of `input`: its content and what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = der_element(input)?;
    (found == tag).then_some((content, rest))
}

/// The first element, whatever its tag: its content and what follows it.
fn der_any(input: &[u8]) -> Option<(&[u8], &[u8])> {
    der_element(input).map(|(_, content, rest)| (content, rest))
}

fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, input) = input.split_first()?;
    let (length, input) = if first < 0x80 {
        (usize::from(first), input)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || input.len() < octets {
            return None;
        }
        let length = input[..octets].iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, &input[octets..])
    };
    (input.len() >= length).then(|| (tag, &input[..length], &input[length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_certificate(file: &str) -> CertificateDer<'static> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs").join(file);
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn not_after_reads_the_validity_of_the_test_certificates() {
        // `openssl x509 -enddate`: notAfter=Nov  4 12:11:55 2126 GMT (GeneralizedTime).
        assert_eq!(not_after(&test_certificate("server.pem")), Some(4_949_467_915));
        assert_eq!(not_after(&test_certificate("ca.pem")), Some(4_949_467_915));
        assert_eq!(not_after(b"\x30\x03\x02\x01\x01"), None);
    }

    #[test]
    fn days_from_epoch_counts_leap_years() {
        assert_eq!(days_from_epoch(1970, 1, 1), Some(0));
        assert_eq!(days_from_epoch(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_epoch(2026, 11, 28), Some(20_785));
    }

    #[test]
    fn expiry_names_a_file_certificate_after_the_hash_of_no_bytes() {
        let expiry = expiry(&test_certificate("server.pem"), "unnamed_cert_", None).unwrap();
        assert_eq!(expiry.name, "unnamed_cert_e3b0c442");
    }
}
