//! Access log config: Envoy's `AccessLog` for the file, stdout and stderr loggers becomes an
//! [`AccessLogSpec`] whose format strings are already compiled into operators, so a bad
//! command operator fails the config, not a request. Pure: opening files and rendering
//! lines belong to `http::access_log`.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog as AccessLogProto;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as FormatProto;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat as FileFormat;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use http::HeaderName;
use prost::Name;

use super::error::{ConfigError, Result};
use super::proto;

/// Envoy's default access log format, used when a logger configures none.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \
\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// A validated access log: where lines go and how each line is built.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSpec {
    /// Where the lines go.
    pub sink: LogSink,
    /// How each line is built.
    pub format: Format,
}

/// Where an access log writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSink {
    /// Append to this file (created if missing).
    File(PathBuf),
    /// The process's stdout (the stdout logger, or a file logger on `/dev/stdout`).
    Stdout,
    /// The process's stderr.
    Stderr,
}

/// A compiled log line format.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// A format string; Envoy adds no newline, so the string carries its own.
    Text(TextFormat),
    /// One JSON object per line.
    Json(JsonFormat),
}

/// A compiled text format.
#[derive(Debug, Clone, PartialEq)]
pub struct TextFormat {
    /// The compiled format string.
    pub template: Template,
    /// Missing values print as nothing instead of `-`.
    pub omit_empty_values: bool,
}

/// A compiled JSON format: keys sorted, as Envoy always sorts them.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonFormat {
    /// The top-level keys, sorted, with their compiled values.
    pub fields: Vec<(String, JsonValue)>,
    /// Keys whose value is null are left out.
    pub omit_empty_values: bool,
    /// A value made of one operator keeps its type (numbers stay numbers, missing is
    /// null); false only for the deprecated `FileAccessLog.json_format`, which renders
    /// every value as a string.
    pub typed: bool,
}

/// One value in a JSON format.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue {
    /// A format string: typed when it is one operator, else a string.
    Template(Template),
    /// A number constant, printed as is.
    Number(f64),
    /// A nested object, keys sorted.
    Object(Vec<(String, JsonValue)>),
    /// A list, elements in order.
    List(Vec<JsonValue>),
}

/// A parsed format string: literal text and command operators.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Text copied as is (`%%` already unescaped).
    Literal(String),
    /// A command operator.
    Operator(Operator),
}

/// A command operator such as `%REQ(USER-AGENT):10%`.
#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    /// What to print.
    pub command: Command,
    /// The `:Z` suffix: keep at most this many bytes of the value.
    pub max_length: Option<usize>,
}

/// What an operator prints; each variant is named after its Envoy operator
/// (`RequestHeader` is `%REQ(...)%` / `%REQUEST_HEADER(...)%`, `ResponseCode` is
/// `%RESPONSE_CODE%`).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    StartTime(TimeFormat),
    RequestHeader(HeaderRef),
    RequestHeaderWithoutQuery(HeaderRef),
    ResponseHeader(HeaderRef),
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    Protocol,
    UpstreamHost,
    UpstreamCluster,
    UpstreamRemoteAddress,
    UpstreamRemoteAddressWithoutPort,
    UpstreamRemotePort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    RouteName,
    Hostname,
}

/// A header to print, with the `?` alternative tried when the first is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRef {
    /// The header tried first.
    pub main: HeaderKey,
    /// The header after `?`, tried when the first is absent.
    pub alternative: Option<HeaderKey>,
}

/// A header name resolved at config time, pseudo-headers mapped to request parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    /// `:method`.
    Method,
    /// `:path`, query included.
    Path,
    /// `:authority`, and `host`, which Envoy treats as the same header.
    Authority,
    /// `:scheme`.
    Scheme,
    /// `:status` (response side only).
    Status,
    /// A regular header, lowercased.
    Name(HeaderName),
    /// A name no message can carry (an unknown pseudo-header): always missing, as in Envoy.
    Never,
}

/// How `%START_TIME%` prints, always in UTC.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeFormat {
    /// Envoy's `%Y-%m-%dT%H:%M:%E3SZ`.
    Default,
    /// A `%START_TIME(...)%` format.
    Custom(Vec<TimePiece>),
}

/// A piece of a strftime-style time format.
#[derive(Debug, Clone, PartialEq)]
pub enum TimePiece {
    /// Text copied as is.
    Literal(String),
    /// `%Y`
    Year,
    /// `%y`
    Year2,
    /// `%C`
    Century,
    /// `%m`
    Month,
    /// `%d`
    Day,
    /// `%e`
    DaySpacePadded,
    /// `%H`
    Hour,
    /// `%I`
    Hour12,
    /// `%p`
    AmPm,
    /// `%M`
    Minute,
    /// `%S`
    Second,
    /// `%j`
    DayOfYear,
    /// `%a`
    WeekdayShort,
    /// `%A`
    WeekdayLong,
    /// `%b`, `%h`
    MonthShort,
    /// `%B`
    MonthLong,
    /// `%u`: Monday is 1, Sunday 7.
    WeekdayFromMonday,
    /// `%w`: Sunday is 0.
    WeekdayFromSunday,
    /// `%z`: always `+0000`.
    Offset,
    /// `%Ez`: always `+00:00`.
    OffsetColon,
    /// `%Z`: always `UTC`.
    Zone,
    /// `%s`: seconds since the epoch.
    EpochSeconds,
    /// `%f` (9 digits), `%Nf`, `%E#f`; `None` for `%E*f` (trailing zeros dropped).
    Fraction(Option<u8>),
    /// `%E#S`: seconds with # fraction digits; `None` for `%E*S`.
    SecondsWithFraction(Option<u8>),
}

impl AccessLogSpec {
    /// Validates the `access_log` list of the message at `path` (`admin`, a connection
    /// manager, a TCP proxy).
    pub fn from_protos(protos: &[AccessLogProto], path: &str) -> Result<Vec<Self>> {
        protos.iter().enumerate().map(|(i, log)| Self::from_proto(log, &format!("{path}.access_log[{i}]"))).collect()
    }

    /// Validates one `AccessLog` entry; `path` names it in errors (`...access_log[0]`).
    pub fn from_proto(proto: &AccessLogProto, path: &str) -> Result<Self> {
        if proto.filter.is_some() {
            return Err(ConfigError::unsupported(format!("{path}.filter"), "access log filters"));
        }
        let Some(ConfigType::TypedConfig(any)) = &proto.config_type else {
            return Self::from_name(&proto.name, path);
        };
        let typed_path = format!("{path}.typed_config");
        let name = proto::type_name(&any.type_url);
        if name == FileAccessLog::full_name() {
            Self::from_file(&proto::unpack::<FileAccessLog>(any, path)?, &typed_path)
        } else if name == StdoutAccessLog::full_name() {
            let stdout = proto::unpack::<StdoutAccessLog>(any, path)?;
            let format = match &stdout.access_log_format {
                Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => {
                    Format::from_proto(f, &format!("{typed_path}.log_format"))?
                }
                None => Format::envoy_default(),
            };
            Ok(Self { sink: LogSink::Stdout, format })
        } else if name == StderrAccessLog::full_name() {
            let stderr = proto::unpack::<StderrAccessLog>(any, path)?;
            let format = match &stderr.access_log_format {
                Some(stderr_access_log::AccessLogFormat::LogFormat(f)) => {
                    Format::from_proto(f, &format!("{typed_path}.log_format"))?
                }
                None => Format::envoy_default(),
            };
            Ok(Self { sink: LogSink::Stderr, format })
        } else {
            Err(proto::unexpected_type(any, path))
        }
    }

    /// Without typed_config Envoy builds the named logger from its empty config: fine for
    /// stdout/stderr, a validation failure for the file logger (it needs a path).
    fn from_name(name: &str, path: &str) -> Result<Self> {
        let format = Format::envoy_default();
        match name {
            "envoy.access_loggers.stdout" => Ok(Self { sink: LogSink::Stdout, format }),
            "envoy.access_loggers.stderr" => Ok(Self { sink: LogSink::Stderr, format }),
            "envoy.access_loggers.file" | "envoy.file_access_log" => Err(ConfigError::invalid(
                format!("{path}.typed_config.path"),
                "value length must be at least 1 characters",
            )),
            _ if name.starts_with("envoy.access_loggers.") => {
                Err(ConfigError::unsupported(format!("{path}.name"), format!("access logger {name}")))
            }
            _ => Err(ConfigError::invalid(
                format!("{path}.typed_config"),
                format!("Didn't find a registered implementation for name: '{name}'"),
            )),
        }
    }

    // The deprecated `format` and `json_format` fields are still honoured by Envoy.
    #[allow(deprecated)]
    fn from_file(file: &FileAccessLog, path: &str) -> Result<Self> {
        if file.path.is_empty() {
            return Err(ConfigError::invalid(format!("{path}.path"), "value length must be at least 1 characters"));
        }
        let format = match &file.access_log_format {
            None => Format::envoy_default(),
            // Envoy treats an empty legacy format string as "use the default".
            Some(FileFormat::Format(text)) if text.is_empty() => Format::envoy_default(),
            Some(FileFormat::Format(text)) => Format::Text(TextFormat {
                template: Template::parse(text, &format!("{path}.format"))?,
                omit_empty_values: false,
            }),
            Some(FileFormat::JsonFormat(json)) => {
                Format::Json(JsonFormat::from_struct(json, false, false, &format!("{path}.json_format"))?)
            }
            Some(FileFormat::TypedJsonFormat(_)) => {
                return Err(ConfigError::unsupported(
                    format!("{path}.typed_json_format"),
                    "typed_json_format (use log_format.json_format)",
                ));
            }
            Some(FileFormat::LogFormat(f)) => Format::from_proto(f, &format!("{path}.log_format"))?,
        };
        let sink = match file.path.as_str() {
            "/dev/stdout" => LogSink::Stdout,
            "/dev/stderr" => LogSink::Stderr,
            other => LogSink::File(PathBuf::from(other)),
        };
        Ok(Self { sink, format })
    }
}

impl Format {
    /// Envoy's default text format ([`DEFAULT_FORMAT`]).
    pub fn envoy_default() -> Self {
        let template = Template::parse(DEFAULT_FORMAT, "").expect("Envoy's default format is valid");
        Format::Text(TextFormat { template, omit_empty_values: false })
    }

    /// Compiles a `SubstitutionFormatString`; `path` names it in errors.
    // `text_format` is deprecated but still accepted by Envoy.
    #[allow(deprecated)]
    pub fn from_proto(proto: &SubstitutionFormatString, path: &str) -> Result<Self> {
        if !proto.formatters.is_empty() {
            return Err(ConfigError::unsupported(format!("{path}.formatters"), "formatter extensions"));
        }
        let omit_empty_values = proto.omit_empty_values;
        let text = |s: &str, field: &str| -> Result<Self> {
            let template = Template::parse(s, &format!("{path}.{field}"))?;
            Ok(Format::Text(TextFormat { template, omit_empty_values }))
        };
        match &proto.format {
            None => {
                Err(ConfigError::invalid(path, "one of text_format, json_format or text_format_source is required"))
            }
            Some(FormatProto::TextFormat(s)) => text(s, "text_format"),
            Some(FormatProto::JsonFormat(json)) => Ok(Format::Json(JsonFormat::from_struct(
                json,
                true,
                omit_empty_values,
                &format!("{path}.json_format"),
            )?)),
            Some(FormatProto::TextFormatSource(source)) => match &source.specifier {
                Some(Specifier::InlineString(s)) => text(s, "text_format_source.inline_string"),
                Some(Specifier::InlineBytes(bytes)) => match std::str::from_utf8(bytes) {
                    Ok(s) => text(s, "text_format_source.inline_bytes"),
                    Err(_) => Err(ConfigError::invalid(
                        format!("{path}.text_format_source.inline_bytes"),
                        "format is not valid UTF-8",
                    )),
                },
                Some(Specifier::Filename(_)) => Err(ConfigError::unsupported(
                    format!("{path}.text_format_source.filename"),
                    "access log format read from a file",
                )),
                Some(Specifier::EnvironmentVariable(_)) => Err(ConfigError::unsupported(
                    format!("{path}.text_format_source.environment_variable"),
                    "access log format read from an environment variable",
                )),
                None => Err(ConfigError::invalid(
                    format!("{path}.text_format_source"),
                    "a data source needs one of inline_string, inline_bytes, filename, environment_variable",
                )),
            },
        }
    }
}

impl JsonFormat {
    /// Compiles a JSON format dictionary.
    pub fn from_struct(json: &Struct, typed: bool, omit_empty_values: bool, path: &str) -> Result<Self> {
        Ok(Self { fields: json_object(json, path)?, omit_empty_values, typed })
    }
}

/// Sorted keys, each value compiled.
fn json_object(json: &Struct, path: &str) -> Result<Vec<(String, JsonValue)>> {
    let mut entries: Vec<_> = json.fields.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter().map(|(key, value)| Ok((key.clone(), json_value(value, &format!("{path}.{key}"))?))).collect()
}

fn json_value(value: &Value, path: &str) -> Result<JsonValue> {
    match &value.kind {
        Some(Kind::StringValue(s)) => Ok(JsonValue::Template(Template::parse(s, path)?)),
        Some(Kind::NumberValue(n)) => Ok(JsonValue::Number(*n)),
        Some(Kind::StructValue(s)) => Ok(JsonValue::Object(json_object(s, path)?)),
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| json_value(v, &format!("{path}[{i}]")))
            .collect::<Result<_>>()
            .map(JsonValue::List),
        _ => Err(ConfigError::invalid(
            path,
            "Only string values, nested structs, list values and number values are supported in structured access log format.",
        )),
    }
}

impl Template {
    /// Parses a format string; `path` names the field in errors.
    pub fn parse(format: &str, path: &str) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut pos = 0;
        while pos < format.len() {
            let Some(offset) = format[pos..].find('%') else {
                literal.push_str(&format[pos..]);
                break;
            };
            literal.push_str(&format[pos..pos + offset]);
            pos += offset;
            if format[pos + 1..].starts_with('%') {
                literal.push('%');
                pos += 2;
                continue;
            }
            let Some(scan) = scan_command(&format[pos..]) else {
                return Err(ConfigError::invalid(
                    path,
                    format!("Incorrect configuration: {format}. Couldn't find valid command at position {pos}"),
                ));
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Operator(operator(&scan, path)?));
            pos += scan.len;
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self { pieces })
    }

    /// The literal and operator pieces, in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }
}

/// One `%COMMAND(params):N%` token as scanned, before its command is checked.
struct Scan<'a> {
    command: &'a str,
    params: Option<&'a str>,
    max_length: Option<usize>,
    len: usize,
}

/// Scans `%[A-Z0-9_]+(\([^)]*\))?(:[0-9]+)?%` at the start of `s`, Envoy's token grammar.
fn scan_command(s: &str) -> Option<Scan<'_>> {
    let bytes = s.as_bytes();
    let name_len =
        bytes[1..].iter().take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_').count();
    if name_len == 0 {
        return None;
    }
    let mut i = 1 + name_len;
    let command = &s[1..i];
    let mut params = None;
    if bytes.get(i) == Some(&b'(') {
        let close = i + 1 + s[i + 1..].find(')')?;
        params = Some(&s[i + 1..close]);
        i = close + 1;
    }
    let mut max_length = None;
    if bytes.get(i) == Some(&b':') {
        let digits = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        max_length = Some(s[i + 1..i + 1 + digits].parse().ok()?);
        i += 1 + digits;
    }
    (bytes.get(i) == Some(&b'%')).then_some(Scan { command, params, max_length, len: i + 1 })
}

fn operator(scan: &Scan<'_>, path: &str) -> Result<Operator> {
    let name = scan.command;
    let plain = |command: Command| -> Result<Command> {
        if scan.params.is_some() || scan.max_length.is_some() {
            return Err(ConfigError::invalid(path, format!("{name} does not take any parameters or length")));
        }
        Ok(command)
    };
    let command = match name {
        "REQ" | "REQUEST_HEADER" => Command::RequestHeader(header_ref(scan, true, path)?),
        "REQ_WITHOUT_QUERY" => Command::RequestHeaderWithoutQuery(header_ref(scan, true, path)?),
        "RESP" | "RESPONSE_HEADER" => Command::ResponseHeader(header_ref(scan, false, path)?),
        "START_TIME" => {
            if scan.max_length.is_some() {
                return Err(ConfigError::invalid(path, format!("{name} does not allow length to be specified.")));
            }
            match scan.params {
                None | Some("") => Command::StartTime(TimeFormat::Default),
                Some(spec) => Command::StartTime(TimeFormat::Custom(parse_time_format(spec))),
            }
        }
        "RESPONSE_CODE" => plain(Command::ResponseCode)?,
        "RESPONSE_FLAGS" => plain(Command::ResponseFlags)?,
        "RESPONSE_CODE_DETAILS" => plain(Command::ResponseCodeDetails)?,
        "BYTES_RECEIVED" => plain(Command::BytesReceived)?,
        "BYTES_SENT" => plain(Command::BytesSent)?,
        "DURATION" => plain(Command::Duration)?,
        "PROTOCOL" => plain(Command::Protocol)?,
        "UPSTREAM_HOST" => plain(Command::UpstreamHost)?,
        "UPSTREAM_CLUSTER" => plain(Command::UpstreamCluster)?,
        "UPSTREAM_REMOTE_ADDRESS" => plain(Command::UpstreamRemoteAddress)?,
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => plain(Command::UpstreamRemoteAddressWithoutPort)?,
        "UPSTREAM_REMOTE_PORT" => plain(Command::UpstreamRemotePort)?,
        "DOWNSTREAM_REMOTE_ADDRESS" => plain(Command::DownstreamRemoteAddress)?,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => plain(Command::DownstreamRemoteAddressWithoutPort)?,
        "DOWNSTREAM_REMOTE_PORT" => plain(Command::DownstreamRemotePort)?,
        "DOWNSTREAM_LOCAL_ADDRESS" => plain(Command::DownstreamLocalAddress)?,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => plain(Command::DownstreamLocalAddressWithoutPort)?,
        "DOWNSTREAM_LOCAL_PORT" => plain(Command::DownstreamLocalPort)?,
        "ROUTE_NAME" => plain(Command::RouteName)?,
        "HOSTNAME" => plain(Command::Hostname)?,
        _ if ENVOY_ONLY_COMMANDS.split_ascii_whitespace().any(|known| known == name) => {
            return Err(ConfigError::unsupported(path, format!("access log command operator %{name}%")));
        }
        _ => {
            return Err(ConfigError::invalid(path, format!("Not supported field in StreamInfo: {name}")));
        }
    };
    Ok(Operator { command, max_length: scan.max_length })
}

/// Command operators Envoy has and legate does not implement yet (space-separated): rejected
/// as unsupported rather than invalid, so the error says which side is missing something.
const ENVOY_ONLY_COMMANDS: &str = "\
TRAILER RESPONSE_TRAILER LOCAL_REPLY_BODY GRPC_STATUS GRPC_STATUS_NUMBER REQUEST_HEADERS_BYTES \
RESPONSE_HEADERS_BYTES RESPONSE_TRAILERS_BYTES START_TIME_LOCAL EMIT_TIME EMIT_TIME_LOCAL \
REQUEST_DURATION REQUEST_TX_DURATION RESPONSE_DURATION RESPONSE_TX_DURATION \
DOWNSTREAM_HANDSHAKE_DURATION ROUNDTRIP_DURATION COMMON_DURATION CUSTOM_FLAGS RESPONSE_FLAGS_LONG \
UPSTREAM_PROTOCOL UPSTREAM_WIRE_BYTES_SENT UPSTREAM_WIRE_BYTES_RECEIVED UPSTREAM_HEADER_BYTES_SENT \
UPSTREAM_HEADER_BYTES_RECEIVED DOWNSTREAM_WIRE_BYTES_SENT DOWNSTREAM_WIRE_BYTES_RECEIVED \
DOWNSTREAM_HEADER_BYTES_SENT DOWNSTREAM_HEADER_BYTES_RECEIVED BYTES_RETRANSMITTED \
PACKETS_RETRANSMITTED UPSTREAM_HOST_NAME UPSTREAM_HOST_NAME_WITHOUT_PORT UPSTREAM_CLUSTER_RAW \
UPSTREAM_LOCAL_ADDRESS UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT UPSTREAM_LOCAL_PORT \
UPSTREAM_CONNECTION_ID UPSTREAM_REQUEST_ATTEMPT_COUNT UPSTREAM_TRANSPORT_FAILURE_REASON \
UPSTREAM_TLS_CIPHER UPSTREAM_TLS_VERSION UPSTREAM_TLS_SESSION_ID UPSTREAM_PEER_ISSUER \
UPSTREAM_PEER_CERT UPSTREAM_PEER_SUBJECT UPSTREAM_PEER_URI_SAN UPSTREAM_PEER_DNS_SAN \
UPSTREAM_LOCAL_URI_SAN UPSTREAM_LOCAL_DNS_SAN UPSTREAM_LOCAL_SUBJECT UPSTREAM_FILTER_STATE \
UPSTREAM_METADATA UPSTREAM_CONNECTION_POOL_READY_DURATION DOWNSTREAM_DIRECT_REMOTE_ADDRESS \
DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT DOWNSTREAM_DIRECT_REMOTE_PORT \
DOWNSTREAM_DIRECT_LOCAL_ADDRESS DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT \
DOWNSTREAM_DIRECT_LOCAL_PORT DOWNSTREAM_LOCAL_URI_SAN DOWNSTREAM_LOCAL_DNS_SAN \
DOWNSTREAM_LOCAL_IP_SAN DOWNSTREAM_LOCAL_SUBJECT DOWNSTREAM_PEER_URI_SAN DOWNSTREAM_PEER_DNS_SAN \
DOWNSTREAM_PEER_IP_SAN DOWNSTREAM_PEER_EMAIL_SAN DOWNSTREAM_PEER_OTHERNAME_SAN \
DOWNSTREAM_PEER_SUBJECT DOWNSTREAM_PEER_ISSUER DOWNSTREAM_PEER_CERT DOWNSTREAM_PEER_CERT_V_START \
DOWNSTREAM_PEER_CERT_V_END DOWNSTREAM_PEER_FINGERPRINT_256 DOWNSTREAM_PEER_FINGERPRINT_1 \
DOWNSTREAM_PEER_SERIAL DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256 DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1 \
DOWNSTREAM_PEER_CHAIN_SERIALS DOWNSTREAM_TLS_CIPHER DOWNSTREAM_TLS_VERSION \
DOWNSTREAM_TLS_SESSION_ID DOWNSTREAM_TRANSPORT_FAILURE_REASON CONNECTION_ID \
CONNECTION_TERMINATION_DETAILS REQUESTED_SERVER_NAME VIRTUAL_CLUSTER_NAME FILTER_CHAIN_NAME \
DYNAMIC_METADATA CLUSTER_METADATA FILTER_STATE ACCESS_LOG_TYPE UNIQUE_ID STREAM_ID TRACE_ID \
QUERY_PARAM PATH ENVIRONMENT TLS_JA3_FINGERPRINT TLS_JA4_FINGERPRINT";

/// Parses `X?Y` of `%REQ(X?Y)%`; `request` picks which pseudo-headers exist.
fn header_ref(scan: &Scan<'_>, request: bool, path: &str) -> Result<HeaderRef> {
    let params = scan.params.unwrap_or_default();
    if params.is_empty() {
        return Err(ConfigError::invalid(path, format!("{} requires parameters", scan.command)));
    }
    if params.contains('\n') {
        return Err(ConfigError::invalid(path, "Invalid header configuration. Format string contains newline."));
    }
    let mut names = params.split('?');
    let main = header_key(names.next().unwrap_or_default(), request);
    let alternative = names.next().map(|name| header_key(name, request));
    if names.next().is_some() {
        return Err(ConfigError::invalid(path, format!("More than 1 alternative header specified in token: {params}")));
    }
    Ok(HeaderRef { main, alternative })
}

fn header_key(name: &str, request: bool) -> HeaderKey {
    let lower = name.to_ascii_lowercase();
    match (lower.as_str(), request) {
        (":method", true) => HeaderKey::Method,
        (":path", true) => HeaderKey::Path,
        (":authority" | "host", true) => HeaderKey::Authority,
        (":scheme", true) => HeaderKey::Scheme,
        (":status", false) => HeaderKey::Status,
        (other, _) if other.starts_with(':') => HeaderKey::Never,
        // Envoy accepts any name; one no header can have simply never matches.
        (other, _) => HeaderName::from_bytes(other.as_bytes()).map_or(HeaderKey::Never, HeaderKey::Name),
    }
}

/// Parses a `%START_TIME(...)%` format. Unknown conversions print verbatim, as strftime
/// does, so this never fails.
fn parse_time_format(spec: &str) -> Vec<TimePiece> {
    use TimePiece as T;
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        let Some(conv) = chars.next() else {
            literal.push('%');
            break;
        };
        let piece: Vec<TimePiece> = match conv {
            'Y' => vec![T::Year],
            'y' => vec![T::Year2],
            'C' => vec![T::Century],
            'm' => vec![T::Month],
            'd' => vec![T::Day],
            'e' => vec![T::DaySpacePadded],
            'H' => vec![T::Hour],
            'I' => vec![T::Hour12],
            'p' => vec![T::AmPm],
            'M' => vec![T::Minute],
            'S' => vec![T::Second],
            'j' => vec![T::DayOfYear],
            'a' => vec![T::WeekdayShort],
            'A' => vec![T::WeekdayLong],
            'b' | 'h' => vec![T::MonthShort],
            'B' => vec![T::MonthLong],
            'u' => vec![T::WeekdayFromMonday],
            'w' => vec![T::WeekdayFromSunday],
            'z' => vec![T::Offset],
            'Z' => vec![T::Zone],
            's' => vec![T::EpochSeconds],
            'f' => vec![T::Fraction(Some(9))],
            'n' => vec![T::Literal("\n".into())],
            't' => vec![T::Literal("\t".into())],
            '%' => vec![T::Literal("%".into())],
            'T' => vec![T::Hour, T::Literal(":".into()), T::Minute, T::Literal(":".into()), T::Second],
            'R' => vec![T::Hour, T::Literal(":".into()), T::Minute],
            'F' => vec![T::Year, T::Literal("-".into()), T::Month, T::Literal("-".into()), T::Day],
            'D' => vec![T::Month, T::Literal("/".into()), T::Day, T::Literal("/".into()), T::Year2],
            // Envoy's own `%1f`..`%9f`: that many fraction digits.
            d @ '1'..='9' if chars.peek() == Some(&'f') => {
                chars.next();
                vec![T::Fraction(Some(d as u8 - b'0'))]
            }
            // absl's `%E#S`, `%E*S`, `%E#f`, `%E*f`, `%Ez`, `%E4Y`.
            // Unrecognized `%E` sequences stay literal; what follows is read normally.
            'E' => vec![spec_after_e(&mut chars).unwrap_or_else(|| T::Literal("%E".into()))],
            other => vec![T::Literal(format!("%{other}"))],
        };
        for p in piece {
            match p {
                T::Literal(s) => literal.push_str(&s),
                p => {
                    if !literal.is_empty() {
                        pieces.push(T::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(p);
                }
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(TimePiece::Literal(literal));
    }
    pieces
}

/// The conversion after `%E`, consuming it when recognized.
fn spec_after_e(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<TimePiece> {
    let mut lookahead = chars.clone();
    let precision = match lookahead.next()? {
        'z' => {
            chars.next();
            return Some(TimePiece::OffsetColon);
        }
        '*' => None,
        d @ '0'..='9' => Some(d as u8 - b'0'),
        _ => return None,
    };
    let piece = match (lookahead.next()?, precision) {
        ('S', p) => TimePiece::SecondsWithFraction(p),
        ('f', p) => TimePiece::Fraction(p),
        ('Y', Some(4)) => TimePiece::Year,
        _ => return None,
    };
    chars.next();
    chars.next();
    Some(piece)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ErrorKind;
    use crate::config::schema::{self, Format as Syntax};

    /// Parses and translates an `AccessLog` at `access_log[0]`; a logger type outside
    /// legate's schema is already rejected by the parse.
    fn spec(yaml: &str) -> Result<AccessLogSpec> {
        let proto: AccessLogProto = schema::parse(yaml, Syntax::Yaml).map_err(|e| e.within("access_log[0]"))?;
        AccessLogSpec::from_proto(&proto, "access_log[0]")
    }

    fn op(format: &str) -> Operator {
        let template = Template::parse(format, "f").expect("parses");
        match template.pieces() {
            [Piece::Operator(op)] => op.clone(),
            other => panic!("expected one operator, got {other:?}"),
        }
    }

    fn parse_err(format: &str) -> ConfigError {
        Template::parse(format, "f").expect_err("must be rejected")
    }

    #[test]
    fn every_operator_parses() {
        let cases = [
            ("%RESPONSE_CODE%", Command::ResponseCode),
            ("%RESPONSE_FLAGS%", Command::ResponseFlags),
            ("%RESPONSE_CODE_DETAILS%", Command::ResponseCodeDetails),
            ("%BYTES_RECEIVED%", Command::BytesReceived),
            ("%BYTES_SENT%", Command::BytesSent),
            ("%DURATION%", Command::Duration),
            ("%PROTOCOL%", Command::Protocol),
            ("%UPSTREAM_HOST%", Command::UpstreamHost),
            ("%UPSTREAM_CLUSTER%", Command::UpstreamCluster),
            ("%UPSTREAM_REMOTE_ADDRESS%", Command::UpstreamRemoteAddress),
            ("%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", Command::UpstreamRemoteAddressWithoutPort),
            ("%UPSTREAM_REMOTE_PORT%", Command::UpstreamRemotePort),
            ("%DOWNSTREAM_REMOTE_ADDRESS%", Command::DownstreamRemoteAddress),
            ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", Command::DownstreamRemoteAddressWithoutPort),
            ("%DOWNSTREAM_REMOTE_PORT%", Command::DownstreamRemotePort),
            ("%DOWNSTREAM_LOCAL_ADDRESS%", Command::DownstreamLocalAddress),
            ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", Command::DownstreamLocalAddressWithoutPort),
            ("%DOWNSTREAM_LOCAL_PORT%", Command::DownstreamLocalPort),
            ("%ROUTE_NAME%", Command::RouteName),
            ("%HOSTNAME%", Command::Hostname),
            ("%START_TIME%", Command::StartTime(TimeFormat::Default)),
        ];
        for (format, command) in cases {
            assert_eq!(op(format), Operator { command, max_length: None }, "{format}");
        }
    }

    #[test]
    fn headers_map_pseudo_headers_alternatives_and_length() {
        let name = |n: &str| HeaderKey::Name(HeaderName::from_bytes(n.as_bytes()).expect("valid"));
        assert_eq!(
            op("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):7%"),
            Operator {
                command: Command::RequestHeader(HeaderRef {
                    main: name("x-envoy-original-path"),
                    alternative: Some(HeaderKey::Path)
                }),
                max_length: Some(7),
            }
        );
        let req = |f: &str| match op(f).command {
            Command::RequestHeader(h) => h.main,
            other => panic!("{other:?}"),
        };
        assert_eq!(req("%REQ(:METHOD)%"), HeaderKey::Method);
        assert_eq!(req("%REQ(:authority)%"), HeaderKey::Authority);
        assert_eq!(req("%REQUEST_HEADER(Host)%"), HeaderKey::Authority);
        assert_eq!(req("%REQ(:SCHEME)%"), HeaderKey::Scheme);
        assert_eq!(req("%REQ(:STATUS)%"), HeaderKey::Never);
        assert_eq!(req("%REQ(User-Agent)%"), name("user-agent"));
        match op("%RESP(:STATUS)%").command {
            Command::ResponseHeader(h) => assert_eq!(h.main, HeaderKey::Status),
            other => panic!("{other:?}"),
        }
        assert!(matches!(op("%REQ_WITHOUT_QUERY(:PATH):3%").command, Command::RequestHeaderWithoutQuery(_)));
    }

    #[test]
    fn literals_and_percent_escape() {
        let t = Template::parse("100%% [%PROTOCOL%] done\n", "f").expect("parses");
        assert_eq!(
            t.pieces(),
            &[
                Piece::Literal("100% [".into()),
                Piece::Operator(Operator { command: Command::Protocol, max_length: None }),
                Piece::Literal("] done\n".into()),
            ]
        );
        assert!(Template::parse("", "f").expect("parses").pieces().is_empty());
    }

    #[test]
    fn bad_tokens_are_rejected_with_envoy_messages() {
        let e = parse_err("a %FOO% b");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert_eq!(e.path, "f");
        assert_eq!(e.message, "Not supported field in StreamInfo: FOO");
        let e = parse_err("%UPSTREAM_TRANSPORT_FAILURE_REASON%");
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(e.message.contains("UPSTREAM_TRANSPORT_FAILURE_REASON"), "{e}");
        assert!(parse_err("50% off").message.contains("Couldn't find valid command at position 2"));
        assert!(parse_err("%REQ(A%").message.contains("Couldn't find valid command"));
        assert!(parse_err("%PROTOCOL").message.contains("Couldn't find valid command"));
        assert_eq!(parse_err("%REQ()%").message, "REQ requires parameters");
        assert_eq!(parse_err("%RESP%").message, "RESP requires parameters");
        assert_eq!(parse_err("%REQ(A?B?C)%").message, "More than 1 alternative header specified in token: A?B?C");
        assert_eq!(parse_err("%PROTOCOL(x)%").message, "PROTOCOL does not take any parameters or length");
        assert_eq!(parse_err("%DURATION:3%").message, "DURATION does not take any parameters or length");
        assert!(parse_err("%START_TIME:3%").message.contains("length"));
    }

    #[test]
    fn time_formats_parse_into_pieces() {
        use TimePiece as T;
        let t = |s: &str| match op(&format!("%START_TIME({s})%")).command {
            Command::StartTime(TimeFormat::Custom(p)) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            t("%Y-%m-%dT%H:%M:%E3SZ"),
            vec![
                T::Year,
                T::Literal("-".into()),
                T::Month,
                T::Literal("-".into()),
                T::Day,
                T::Literal("T".into()),
                T::Hour,
                T::Literal(":".into()),
                T::Minute,
                T::Literal(":".into()),
                T::SecondsWithFraction(Some(3)),
                T::Literal("Z".into()),
            ]
        );
        assert_eq!(t("%s.%3f"), vec![T::EpochSeconds, T::Literal(".".into()), T::Fraction(Some(3))]);
        assert_eq!(t("%E*S %E*f %Ez %E4Y"), {
            let sp = || T::Literal(" ".into());
            vec![T::SecondsWithFraction(None), sp(), T::Fraction(None), sp(), T::OffsetColon, sp(), T::Year]
        });
        assert_eq!(t("%Q%Eq%%"), vec![T::Literal("%Q%Eq%".into())]);
    }

    #[test]
    fn file_logger_with_text_format_source() {
        let s = spec(
            r#"
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /var/log/legate.log
  log_format:
    text_format_source: { inline_string: "%PROTOCOL% %RESPONSE_CODE%\n" }
    omit_empty_values: true
    content_type: text/plain
"#,
        )
        .expect("valid");
        assert_eq!(s.sink, LogSink::File("/var/log/legate.log".into()));
        let Format::Text(text) = s.format else { panic!("text format expected") };
        assert!(text.omit_empty_values);
        assert_eq!(text.template.pieces().len(), 4);
    }

    #[test]
    fn defaults_and_stream_loggers() {
        let s = spec(
            r#"
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /dev/stdout
"#,
        )
        .expect("valid");
        assert_eq!(s, AccessLogSpec { sink: LogSink::Stdout, format: Format::envoy_default() });
        let s = spec(
            r#"
name: envoy.access_loggers.stderr
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog
"#,
        )
        .expect("valid");
        assert_eq!(s, AccessLogSpec { sink: LogSink::Stderr, format: Format::envoy_default() });
        let s = spec("name: envoy.access_loggers.stdout").expect("valid by name alone");
        assert_eq!(s.sink, LogSink::Stdout);
        let s = spec(
            r#"
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /tmp/x.log
  format: ""
"#,
        )
        .expect("valid");
        assert_eq!(s.format, Format::envoy_default());
    }

    #[test]
    fn json_formats_sort_keys_and_nest() {
        let s = spec(
            r#"
name: envoy.access_loggers.stdout
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format:
    json_format:
      status: "%RESPONSE_CODE%"
      b: { z: "x", a: 2 }
      a: ["%PROTOCOL%"]
"#,
        )
        .expect("valid");
        let Format::Json(json) = s.format else { panic!("json expected") };
        assert!(json.typed);
        let keys: Vec<_> = json.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "status"]);
        let JsonValue::Object(inner) = &json.fields[1].1 else { panic!("object expected") };
        assert_eq!(inner[0], ("a".to_owned(), JsonValue::Number(2.0)));

        let s = spec(
            r#"
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /tmp/x.log
  json_format: { code: "%RESPONSE_CODE%" }
"#,
        )
        .expect("valid");
        let Format::Json(json) = s.format else { panic!("json expected") };
        assert!(!json.typed, "the deprecated json_format renders strings");
    }

    #[test]
    fn errors_name_the_field() {
        let e = spec(
            r#"
name: envoy.access_loggers.stdout
filter: { not_health_check_filter: {} }
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
"#,
        )
        .expect_err("filters unsupported");
        assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Unsupported, "access_log[0].filter"));

        let e = spec(
            r#"
name: envoy.access_loggers.http_grpc
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
  common_config: { log_name: x, transport_api_version: V3 }
"#,
        )
        .expect_err("grpc logger unsupported");
        assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Unsupported, "access_log[0].typed_config"));
        assert!(e.message.contains("HttpGrpcAccessLogConfig"), "{e}");

        let e = spec(
            r#"
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /tmp/x.log
  log_format: { text_format_source: { inline_string: "%BOGUS%" } }
"#,
        )
        .expect_err("unknown operator");
        assert_eq!(e.path, "access_log[0].typed_config.log_format.text_format_source.inline_string");
        assert_eq!(e.message, "Not supported field in StreamInfo: BOGUS");

        let e = spec(
            r#"
name: envoy.access_loggers.stdout
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format:
    json_format: { outer: { inner: "%NOPE%" } }
"#,
        )
        .expect_err("unknown operator in json");
        assert_eq!(e.path, "access_log[0].typed_config.log_format.json_format.outer.inner");

        let e = spec(
            r#"
name: envoy.access_loggers.stdout
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format:
    json_format: { flag: true }
"#,
        )
        .expect_err("bools rejected");
        assert_eq!(
            (e.kind, e.path.as_str()),
            (ErrorKind::Invalid, "access_log[0].typed_config.log_format.json_format.flag")
        );

        let e = spec(
            r#"
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: /tmp/x.log
  typed_json_format: { a: "%PROTOCOL%" }
"#,
        )
        .expect_err("typed_json_format unsupported");
        assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Unsupported, "access_log[0].typed_config.typed_json_format"));

        let e = spec(
            r#"
name: envoy.access_loggers.stdout
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
  log_format:
    text_format_source: { inline_string: "x" }
    formatters: [{ name: envoy.formatter.req_without_query, typed_config: { "@type": type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery } }]
"#,
        )
        .expect_err("formatters unsupported");
        assert_eq!(
            (e.kind, e.path.as_str()),
            (ErrorKind::Unsupported, "access_log[0].typed_config.log_format.formatters[0].typed_config")
        );

        let e = spec(
            r#"
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
"#,
        )
        .expect_err("path required");
        assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Invalid, "access_log[0].typed_config.path"));

        let e = spec("name: acme.logger").expect_err("unknown name");
        assert_eq!(e.kind, ErrorKind::Invalid);
    }

    #[test]
    fn default_format_compiles() {
        let Format::Text(text) = Format::envoy_default() else { panic!("text") };
        let ops = text.template.pieces().iter().filter(|p| matches!(p, Piece::Operator(_))).count();
        assert_eq!(ops, 15);
    }
}
