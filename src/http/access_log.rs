//! Access logging at run time: renders a finished request's [`LogContext`] through a
//! compiled [`Format`] and hands the line to a background writer thread, so the request
//! path never waits on disk. Config parsing lives in `config::access_log`; deciding when a
//! request is finished (and filling the context) is the connection manager's job.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, Version, header};

use super::flags::ResponseFlags;
use crate::config::access_log::{
    AccessLogSpec, Command, Format, HeaderKey, HeaderRef, JsonFormat, JsonValue, LogSink, Operator, Piece, Template,
    TimeFormat, TimePiece,
};

/// How long a line may sit in the writer's buffer, like Envoy's `file_flush_interval_msec`.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// A buffer this big is written at once instead of waiting for the interval (Envoy's
/// `min_flush_size`).
const FLUSH_SIZE: usize = 64 * 1024;

/// A copy of a request head for the log, made only when a logger is configured, since
/// the original head moves on upstream.
pub fn request_head(
    method: &http::Method,
    uri: &http::Uri,
    version: Version,
    headers: &HeaderMap,
) -> http::request::Parts {
    let mut request = http::Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.version_mut() = version;
    *request.headers_mut() = headers.clone();
    request.into_parts().0
}

/// Everything an access log line can print about one finished request.
#[derive(Debug, Clone, Copy)]
pub struct LogContext<'a> {
    /// When the first byte of the request arrived.
    pub start_time: SystemTime,
    /// Downstream request headers, after legate added `x-request-id` and `x-forwarded-*`;
    /// none for a TCP proxy's connection.
    pub request: Option<&'a http::request::Parts>,
    /// Headers of the response sent downstream, if one was sent.
    pub response_headers: Option<&'a HeaderMap>,
    /// Status sent downstream; 0 when no response was sent.
    pub response_code: u16,
    /// Why the request ended the way it did (`%RESPONSE_FLAGS%`).
    pub response_flags: ResponseFlags,
    /// Envoy's response code details (`via_upstream`, `route_not_found`, ...); empty if unset.
    pub response_code_details: &'a str,
    /// Request body bytes received from downstream.
    pub bytes_received: u64,
    /// Response body bytes sent downstream.
    pub bytes_sent: u64,
    /// Total time from start to the last byte sent.
    pub duration: Duration,
    /// The downstream HTTP version; none for a TCP proxy's connection.
    pub protocol: Option<Version>,
    /// The upstream host the request was last sent to, if any.
    pub upstream_host: Option<SocketAddr>,
    /// The cluster the route picked, if any.
    pub upstream_cluster: Option<&'a str>,
    /// The downstream peer.
    pub downstream_remote: SocketAddr,
    /// The local address the request arrived on.
    pub downstream_local: SocketAddr,
    /// The matched route's name, if it has one.
    pub route_name: Option<&'a str>,
}

/// A live access log: formats on the caller's thread, writes on its own thread. Clones
/// share the writer; the writer flushes and exits once the last clone is dropped.
#[derive(Clone)]
pub struct AccessLogger {
    inner: Arc<Inner>,
}

struct Inner {
    format: Format,
    sink: LogSink,
    tx: mpsc::Sender<Message>,
}

enum Message {
    Line(String),
    Flush(mpsc::SyncSender<()>),
}

impl AccessLogger {
    /// Opens the sink (creating the file in append mode) and starts its writer thread.
    pub fn new(spec: &AccessLogSpec) -> io::Result<Self> {
        let out = match &spec.sink {
            LogSink::File(path) => Output::File(OpenOptions::new().create(true).append(true).open(path)?),
            LogSink::Stdout => Output::Stdout,
            LogSink::Stderr => Output::Stderr,
        };
        let (tx, rx) = mpsc::channel();
        let label = match &spec.sink {
            LogSink::File(path) => path.display().to_string(),
            LogSink::Stdout => "stdout".to_owned(),
            LogSink::Stderr => "stderr".to_owned(),
        };
        std::thread::Builder::new().name("legate-access-log".into()).spawn(move || run_writer(rx, out, &label))?;
        // Resolve the hostname now so `%HOSTNAME%` never reads a file on the request path.
        let _ = hostname();
        Ok(Self { inner: Arc::new(Inner { format: spec.format.clone(), sink: spec.sink.clone(), tx }) })
    }

    /// Formats one line and queues it; never blocks on I/O.
    pub fn log(&self, ctx: &LogContext<'_>) {
        let line = render(&self.inner.format, ctx);
        // The writer only stops when every sender is gone, so a send error cannot happen
        // while `self` lives unless the thread died; a lost line is then all we can do.
        let _ = self.inner.tx.send(Message::Line(line));
    }

    /// Blocks until every line queued so far is written and flushed. For tests and
    /// shutdown only: it waits on disk.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if self.inner.tx.send(Message::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger").field("sink", &self.inner.sink).finish_non_exhaustive()
    }
}

/// Where the writer thread puts bytes.
enum Output {
    File(File),
    Stdout,
    Stderr,
}

impl Output {
    fn write_batch(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            // Append mode plus whole batches of whole lines keeps lines from interleaving
            // with other writers of the same file.
            Output::File(file) => file.write_all(buf),
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Output::Stderr => io::stderr().lock().write_all(buf),
        }
    }
}

/// The writer loop: batches lines, writes when the batch is big, a second old, flushed
/// explicitly, or the last sender is gone. Uses std time: this thread is outside tokio.
fn run_writer(rx: mpsc::Receiver<Message>, mut out: Output, label: &str) {
    let mut buf = Vec::with_capacity(FLUSH_SIZE);
    let mut deadline: Option<Instant> = None;
    let mut write_out = |buf: &mut Vec<u8>| {
        if buf.is_empty() {
            return;
        }
        if let Err(error) = out.write_batch(buf) {
            tracing::warn!(log = label, %error, bytes = buf.len(), "dropping access log lines");
        }
        buf.clear();
    };
    loop {
        let message = match deadline {
            // Nothing buffered: sleep until the next line, no periodic wake-ups.
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match message {
            Ok(Message::Line(line)) => {
                buf.extend_from_slice(line.as_bytes());
                if buf.len() >= FLUSH_SIZE {
                    write_out(&mut buf);
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(Instant::now() + FLUSH_INTERVAL);
                }
            }
            Ok(Message::Flush(ack)) => {
                write_out(&mut buf);
                deadline = None;
                let _ = ack.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                write_out(&mut buf);
                deadline = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                write_out(&mut buf);
                return;
            }
        }
    }
}

/// Renders one log line (JSON lines end in `\n`; text formats carry their own).
pub fn render(format: &Format, ctx: &LogContext<'_>) -> String {
    let mut out = String::with_capacity(256);
    match format {
        Format::Text(text) => render_template(&text.template, text.omit_empty_values, false, ctx, &mut out),
        Format::Json(json) => {
            render_object(&json.fields, json, ctx, &mut out);
            out.push('\n');
        }
    }
    out
}

/// An operator's value before it is printed.
enum Value<'v> {
    /// Printed as `-` (or nothing / null, per the format).
    Missing,
    Str(Cow<'v, str>),
    /// Numbers stay numbers in typed JSON.
    Num(u64),
}

fn render_template(template: &Template, omit_empty: bool, escape: bool, ctx: &LogContext<'_>, out: &mut String) {
    for piece in template.pieces() {
        match piece {
            Piece::Literal(s) => push_str(out, s, escape),
            Piece::Operator(op) => match evaluate(op, ctx) {
                Value::Missing if omit_empty => {}
                Value::Missing => out.push('-'),
                Value::Str(s) => push_str(out, truncate(&s, op.max_length), escape),
                Value::Num(n) => out.push_str(itoa::Buffer::new().format(n)),
            },
        }
    }
}

fn render_object(fields: &[(String, JsonValue)], json: &JsonFormat, ctx: &LogContext<'_>, out: &mut String) {
    out.push('{');
    let mut first = true;
    for (key, value) in fields {
        let mark = out.len();
        if !first {
            out.push(',');
        }
        push_json_string(out, key);
        out.push(':');
        let value_start = out.len();
        render_json_value(value, json, ctx, out);
        if json.omit_empty_values && &out[value_start..] == "null" {
            out.truncate(mark);
        } else {
            first = false;
        }
    }
    out.push('}');
}

fn render_json_value(value: &JsonValue, json: &JsonFormat, ctx: &LogContext<'_>, out: &mut String) {
    match value {
        JsonValue::Number(n) => push_json_number(out, *n),
        JsonValue::Object(fields) => render_object(fields, json, ctx, out),
        JsonValue::List(items) => {
            // Envoy keeps nulls inside lists even with omit_empty_values.
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_json_value(item, json, ctx, out);
            }
            out.push(']');
        }
        JsonValue::Template(template) => match template.pieces() {
            [Piece::Literal(s)] => push_json_string(out, s),
            // A lone operator keeps its type; anything mixed is a string.
            [Piece::Operator(op)] => match evaluate(op, ctx) {
                Value::Missing if json.typed || json.omit_empty_values => out.push_str("null"),
                Value::Missing => out.push_str("\"-\""),
                Value::Str(s) => push_json_string(out, truncate(&s, op.max_length)),
                Value::Num(n) if json.typed => out.push_str(itoa::Buffer::new().format(n)),
                Value::Num(n) => push_json_string(out, itoa::Buffer::new().format(n)),
            },
            _ => {
                out.push('"');
                render_template(template, json.omit_empty_values, true, ctx, out);
                out.push('"');
            }
        },
    }
}

fn evaluate<'v>(op: &'v Operator, ctx: &'v LogContext<'_>) -> Value<'v> {
    let text = |s: Option<&'v str>| s.filter(|s| !s.is_empty()).map_or(Value::Missing, |s| Value::Str(s.into()));
    let owned = |s: Option<String>| s.map_or(Value::Missing, |s| Value::Str(s.into()));
    match &op.command {
        Command::StartTime(format) => Value::Str(format_time(ctx.start_time, format).into()),
        Command::RequestHeader(h) => request_header(ctx, h).map_or(Value::Missing, Value::Str),
        Command::RequestHeaderWithoutQuery(h) => match request_header(ctx, h) {
            Some(Cow::Borrowed(s)) => Value::Str(s.split('?').next().unwrap_or(s).into()),
            Some(Cow::Owned(s)) => Value::Str(s.split('?').next().unwrap_or(&s).to_owned().into()),
            None => Value::Missing,
        },
        Command::ResponseHeader(h) => response_header(ctx, h).map_or(Value::Missing, Value::Str),
        // Envoy prints 0 when no response was sent, not `-`.
        Command::ResponseCode => Value::Num(u64::from(ctx.response_code)),
        Command::ResponseFlags => Value::Str(ctx.response_flags.to_string().into()),
        Command::ResponseCodeDetails => text(Some(ctx.response_code_details)),
        Command::BytesReceived => Value::Num(ctx.bytes_received),
        Command::BytesSent => Value::Num(ctx.bytes_sent),
        Command::Duration => Value::Num(u64::try_from(ctx.duration.as_millis()).unwrap_or(u64::MAX)),
        Command::Protocol => text(ctx.protocol.and_then(protocol)),
        Command::UpstreamHost | Command::UpstreamRemoteAddress => owned(ctx.upstream_host.map(|a| a.to_string())),
        Command::UpstreamRemoteAddressWithoutPort => owned(ctx.upstream_host.map(|a| a.ip().to_string())),
        Command::UpstreamRemotePort => ctx.upstream_host.map_or(Value::Missing, |a| Value::Num(a.port().into())),
        Command::UpstreamCluster => text(ctx.upstream_cluster),
        Command::DownstreamRemoteAddress => Value::Str(ctx.downstream_remote.to_string().into()),
        Command::DownstreamRemoteAddressWithoutPort => Value::Str(ctx.downstream_remote.ip().to_string().into()),
        Command::DownstreamRemotePort => Value::Num(ctx.downstream_remote.port().into()),
        Command::DownstreamLocalAddress => Value::Str(ctx.downstream_local.to_string().into()),
        Command::DownstreamLocalAddressWithoutPort => Value::Str(ctx.downstream_local.ip().to_string().into()),
        Command::DownstreamLocalPort => Value::Num(ctx.downstream_local.port().into()),
        Command::RouteName => text(ctx.route_name),
        Command::Hostname => text(hostname()),
    }
}

fn protocol(version: Version) -> Option<&'static str> {
    match version {
        Version::HTTP_10 => Some("HTTP/1.0"),
        Version::HTTP_11 => Some("HTTP/1.1"),
        Version::HTTP_2 => Some("HTTP/2"),
        Version::HTTP_3 => Some("HTTP/3"),
        _ => None,
    }
}

fn request_header<'v>(ctx: &LogContext<'v>, h: &HeaderRef) -> Option<Cow<'v, str>> {
    let one = |key: &HeaderKey| -> Option<Cow<'v, str>> {
        let req = ctx.request?;
        match key {
            HeaderKey::Method => Some(req.method.as_str().into()),
            HeaderKey::Path => req.uri.path_and_query().map(|pq| pq.as_str().into()),
            // HTTP/1 origin-form requests carry the authority only in Host.
            HeaderKey::Authority => match req.uri.authority() {
                Some(authority) => Some(authority.as_str().into()),
                None => header_value(&req.headers, &header::HOST),
            },
            // HTTP/1 requests have no :scheme; legate's x-forwarded-proto says how the
            // request arrived, which is what Envoy reports there.
            HeaderKey::Scheme => match req.uri.scheme_str() {
                Some(scheme) => Some(scheme.into()),
                None => header_value(&req.headers, &HeaderName::from_static("x-forwarded-proto")),
            },
            HeaderKey::Name(name) => header_value(&req.headers, name),
            HeaderKey::Status | HeaderKey::Never => None,
        }
    };
    one(&h.main).or_else(|| h.alternative.as_ref().and_then(one))
}

fn response_header<'v>(ctx: &LogContext<'v>, h: &HeaderRef) -> Option<Cow<'v, str>> {
    let headers = ctx.response_headers?;
    let one = |key: &HeaderKey| -> Option<Cow<'v, str>> {
        match key {
            HeaderKey::Status if ctx.response_code != 0 => Some(ctx.response_code.to_string().into()),
            HeaderKey::Name(name) => header_value(headers, name),
            _ => None,
        }
    };
    one(&h.main).or_else(|| h.alternative.as_ref().and_then(one))
}

/// The first value of a header, as Envoy prints it.
fn header_value<'v>(headers: &'v HeaderMap, name: &HeaderName) -> Option<Cow<'v, str>> {
    headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()))
}

/// Keeps at most `max` bytes, backing off to a char boundary so the line stays UTF-8.
fn truncate(s: &str, max: Option<usize>) -> &str {
    let Some(max) = max else { return s };
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn push_str(out: &mut String, s: &str, escape: bool) {
    if escape { push_json_escaped(out, s) } else { out.push_str(s) }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    push_json_escaped(out, s);
    out.push('"');
}

fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Integral numbers print without a fraction, as Envoy's JSON does.
fn push_json_number(out: &mut String, n: f64) {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        let _ = write!(out, "{}", n as i64);
    } else if n.is_finite() {
        let _ = write!(out, "{n}");
    } else {
        out.push_str("null");
    }
}

/// The machine's hostname, read once; Envoy also resolves it once per formatter.
fn hostname() -> Option<&'static str> {
    static HOSTNAME: OnceLock<Option<String>> = OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::fs::read_to_string("/etc/hostname"))
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .as_deref()
}

/// A UTC time split into calendar fields.
struct Civil {
    epoch_secs: i64,
    nanos: u32,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 0-based day of the year.
    yday: u32,
}

impl Civil {
    fn new(t: SystemTime) -> Self {
        let (epoch_secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
            Err(before) => {
                let d = before.duration();
                let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => (secs, 0),
                    n => (secs - 1, 1_000_000_000 - n),
                }
            }
        };
        let days = epoch_secs.div_euclid(86_400);
        let secs_of_day = epoch_secs.rem_euclid(86_400) as u32;
        // Days-to-civil over 400-year eras (the proleptic Gregorian calendar).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const BEFORE_MONTH: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = BEFORE_MONTH[month as usize - 1] + day - 1 + u32::from(leap && month > 2);
        Self {
            epoch_secs,
            nanos,
            year,
            month,
            day,
            hour: secs_of_day / 3600,
            minute: secs_of_day / 60 % 60,
            second: secs_of_day % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
            yday,
        }
    }
}

const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn format_time(t: SystemTime, format: &TimeFormat) -> String {
    let c = Civil::new(t);
    let mut out = String::with_capacity(32);
    let pieces = match format {
        TimeFormat::Default => {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                c.year,
                c.month,
                c.day,
                c.hour,
                c.minute,
                c.second,
                c.nanos / 1_000_000
            );
            return out;
        }
        TimeFormat::Custom(pieces) => pieces,
    };
    for piece in pieces {
        let _ = match piece {
            TimePiece::Literal(s) => out.write_str(s),
            TimePiece::Year => write!(out, "{:04}", c.year),
            TimePiece::Year2 => write!(out, "{:02}", c.year.rem_euclid(100)),
            TimePiece::Century => write!(out, "{:02}", c.year.div_euclid(100)),
            TimePiece::Month => write!(out, "{:02}", c.month),
            TimePiece::Day => write!(out, "{:02}", c.day),
            TimePiece::DaySpacePadded => write!(out, "{:2}", c.day),
            TimePiece::Hour => write!(out, "{:02}", c.hour),
            TimePiece::Hour12 => write!(out, "{:02}", (c.hour + 11) % 12 + 1),
            TimePiece::AmPm => out.write_str(if c.hour < 12 { "AM" } else { "PM" }),
            TimePiece::Minute => write!(out, "{:02}", c.minute),
            TimePiece::Second => write!(out, "{:02}", c.second),
            TimePiece::DayOfYear => write!(out, "{:03}", c.yday + 1),
            TimePiece::WeekdayShort => out.write_str(&WEEKDAYS[c.weekday as usize][..3]),
            TimePiece::WeekdayLong => out.write_str(WEEKDAYS[c.weekday as usize]),
            TimePiece::MonthShort => out.write_str(&MONTHS[c.month as usize - 1][..3]),
            TimePiece::MonthLong => out.write_str(MONTHS[c.month as usize - 1]),
            TimePiece::WeekdayFromMonday => {
                write!(out, "{}", if c.weekday == 0 { 7 } else { c.weekday })
            }
            TimePiece::WeekdayFromSunday => write!(out, "{}", c.weekday),
            TimePiece::Offset => out.write_str("+0000"),
            TimePiece::OffsetColon => out.write_str("+00:00"),
            TimePiece::Zone => out.write_str("UTC"),
            TimePiece::EpochSeconds => write!(out, "{}", c.epoch_secs),
            TimePiece::Fraction(digits) => {
                let fraction = fraction(c.nanos, *digits);
                out.write_str(if fraction.is_empty() { "0" } else { &fraction })
            }
            TimePiece::SecondsWithFraction(digits) => {
                let fraction = fraction(c.nanos, *digits);
                match fraction.is_empty() {
                    true => write!(out, "{:02}", c.second),
                    false => write!(out, "{:02}.{fraction}", c.second),
                }
            }
        };
    }
    out
}

/// The first `digits` digits of the nanoseconds; `None` means all nine with trailing
/// zeros dropped (absl's `*` precision).
fn fraction(nanos: u32, digits: Option<u8>) -> String {
    let nine = format!("{nanos:09}");
    match digits {
        Some(d) => nine[..usize::from(d.min(9))].to_owned(),
        None => nine.trim_end_matches('0').to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::access_log::TextFormat;
    use crate::config::schema::{self, Format as Syntax};
    use envoy_types::pb::envoy::config::accesslog::v3::AccessLog as AccessLogProto;
    use envoy_types::pb::google::protobuf::Struct;

    /// 2009-02-13T23:31:30.123456789Z.
    fn sample_time() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_234_567_890, 123_456_789)
    }

    fn sample_request() -> http::request::Parts {
        http::Request::builder()
            .method("POST")
            .uri("/api/items?id=7")
            .header("host", "example.com")
            .header("user-agent", "curl/8.5.0")
            .header("x-forwarded-for", "10.0.0.9")
            .header("x-forwarded-proto", "http")
            .header("x-request-id", "4f1c2b7e-1111-2222-3333-444455556666")
            .body(())
            .expect("valid request")
            .into_parts()
            .0
    }

    fn sample<'a>(request: &'a http::request::Parts, response: &'a HeaderMap) -> LogContext<'a> {
        LogContext {
            start_time: sample_time(),
            request: Some(request),
            response_headers: Some(response),
            response_code: 201,
            response_flags: ResponseFlags::NONE,
            response_code_details: "via_upstream",
            bytes_received: 12,
            bytes_sent: 345,
            duration: Duration::from_micros(27_900),
            protocol: Some(Version::HTTP_11),
            upstream_host: Some("10.1.2.3:8080".parse().expect("addr")),
            upstream_cluster: Some("backend"),
            downstream_remote: "[2001:db8::1]:51234".parse().expect("addr"),
            downstream_local: "127.0.0.1:10000".parse().expect("addr"),
            route_name: None,
        }
    }

    fn response() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-envoy-upstream-service-time", "25".parse().expect("value"));
        h.insert("content-type", "application/json".parse().expect("value"));
        h
    }

    fn text(format: &str) -> Format {
        Format::Text(TextFormat { template: Template::parse(format, "f").expect("parses"), omit_empty_values: false })
    }

    fn line(format: &str, ctx: &LogContext<'_>) -> String {
        render(&text(format), ctx)
    }

    fn json(yaml: &str, omit_empty_values: bool) -> Format {
        let proto: Struct = schema::parse(yaml, Syntax::Yaml).expect("valid struct yaml");
        Format::Json(JsonFormat::from_struct(&proto, true, omit_empty_values, "j").expect("compiles"))
    }

    #[test]
    fn default_format_matches_envoy() {
        let (req, resp) = (sample_request(), response());
        let ctx = sample(&req, &resp);
        assert_eq!(
            render(&Format::envoy_default(), &ctx),
            "[2009-02-13T23:31:30.123Z] \"POST /api/items?id=7 HTTP/1.1\" 201 - 12 345 27 25 \"10.0.0.9\" \
             \"curl/8.5.0\" \"4f1c2b7e-1111-2222-3333-444455556666\" \"example.com\" \"10.1.2.3:8080\"\n"
        );

        // No response, no upstream, no headers: Envoy's dashes, and 0 for the code.
        let bare = http::Request::builder().uri("/").body(()).expect("request").into_parts().0;
        let mut ctx = sample(&bare, &resp);
        ctx.response_headers = None;
        ctx.response_code = 0;
        ctx.upstream_host = None;
        ctx.protocol = Some(Version::HTTP_2);
        ctx.response_flags = ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION;
        assert_eq!(
            render(&Format::envoy_default(), &ctx),
            "[2009-02-13T23:31:30.123Z] \"GET / HTTP/2\" 0 DC 12 345 27 - \"-\" \"-\" \"-\" \"-\" \"-\"\n"
        );
    }

    #[test]
    fn every_operator_renders() {
        let (req, resp) = (sample_request(), response());
        let mut ctx = sample(&req, &resp);
        ctx.route_name = Some("items");
        ctx.response_flags = ResponseFlags::UPSTREAM_CONNECTION_FAILURE | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        let cases = [
            ("%RESPONSE_CODE%", "201"),
            ("%RESPONSE_FLAGS%", "UF,URX"),
            ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
            ("%BYTES_RECEIVED%/%BYTES_SENT%", "12/345"),
            ("%DURATION%", "27"),
            ("%PROTOCOL%", "HTTP/1.1"),
            ("%UPSTREAM_HOST%", "10.1.2.3:8080"),
            ("%UPSTREAM_CLUSTER%", "backend"),
            ("%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_REMOTE_PORT%", "10.1.2.3 8080"),
            ("%DOWNSTREAM_REMOTE_ADDRESS%", "[2001:db8::1]:51234"),
            ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "2001:db8::1"),
            ("%DOWNSTREAM_REMOTE_PORT%", "51234"),
            ("%DOWNSTREAM_LOCAL_ADDRESS%", "127.0.0.1:10000"),
            ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:%DOWNSTREAM_LOCAL_PORT%", "127.0.0.1:10000"),
            ("%ROUTE_NAME%", "items"),
            ("%REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(:SCHEME)%", "POST /api/items?id=7 example.com http"),
            ("%REQ(HOST)%", "example.com"),
            ("%REQ(user-agent)%", "curl/8.5.0"),
            ("%REQ(USER-AGENT):4%", "curl"),
            ("%REQ(X-MISSING?USER-AGENT)%", "curl/8.5.0"),
            ("%REQ(X-MISSING?X-ALSO-MISSING)%", "-"),
            ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):9%", "/api/item"),
            ("%REQ_WITHOUT_QUERY(:PATH)%", "/api/items"),
            ("%RESP(CONTENT-TYPE):11%", "application"),
            ("%RESP(:STATUS)%", "201"),
            ("%RESP(X-NOPE)%", "-"),
            ("%START_TIME%", "2009-02-13T23:31:30.123Z"),
            ("%START_TIME(%s)%", "1234567890"),
            ("100%% done", "100% done"),
        ];
        for (format, want) in cases {
            assert_eq!(line(format, &ctx), want, "{format}");
        }
        let host = line("%HOSTNAME%", &ctx);
        assert!(!host.is_empty() && !host.contains('\n'), "{host:?}");

        ctx.route_name = None;
        ctx.upstream_cluster = None;
        ctx.response_code_details = "";
        assert_eq!(line("%ROUTE_NAME% %UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS%", &ctx), "- - -");
        let omit = Format::Text(TextFormat {
            template: Template::parse("[%ROUTE_NAME%]", "f").expect("parses"),
            omit_empty_values: true,
        });
        assert_eq!(render(&omit, &ctx), "[]");
    }

    #[test]
    fn truncation_keeps_utf8() {
        assert_eq!(truncate("héllo", Some(2)), "h");
        assert_eq!(truncate("héllo", Some(3)), "hé");
        assert_eq!(truncate("abc", Some(10)), "abc");
        assert_eq!(truncate("abc", None), "abc");
    }

    #[test]
    fn start_time_formats() {
        let t = |f: &str, time: SystemTime| {
            let Command::StartTime(format) = op_command(&format!("%START_TIME({f})%")) else { panic!() };
            format_time(time, &format)
        };
        let s = sample_time();
        assert_eq!(t("%Y-%m-%dT%H:%M:%E3SZ", s), "2009-02-13T23:31:30.123Z");
        assert_eq!(t("%s.%3f|%f|%6f", s), "1234567890.123|123456789|123456");
        assert_eq!(t("%E*S|%E6S|%E0S|%E*f", s), "30.123456789|30.123456|30|123456789");
        assert_eq!(t("%a %A %b %B %e %j %I%p %u %w %y %C", s), "Fri Friday Feb February 13 044 11PM 5 5 09 20");
        assert_eq!(t("%T %D %F %R %z %Ez %Z %%", s), "23:31:30 02/13/09 2009-02-13 23:31 +0000 +00:00 UTC %");
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_164_800); // 2024-02-29T00:00:00Z
        assert_eq!(t("%F %j %a %I%p %E*S", leap), "2024-02-29 060 Thu 12AM 00");
        let before = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(format_time(before, &TimeFormat::Default), "1969-12-31T23:59:59.500Z");
        assert_eq!(format_time(UNIX_EPOCH, &TimeFormat::Default), "1970-01-01T00:00:00.000Z");
    }

    fn op_command(format: &str) -> Command {
        match Template::parse(format, "f").expect("parses").pieces() {
            [Piece::Operator(op)] => op.command.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_format_types_values_and_sorts_keys() {
        let (req, resp) = (sample_request(), response());
        let mut ctx = sample(&req, &resp);
        ctx.upstream_host = None;
        let format = json(
            r#"
status: "%RESPONSE_CODE%"
duration: "%DURATION%"
method: "%REQ(:METHOD)%"
upstream: "%UPSTREAM_HOST%"
summary: "%REQ(:METHOD)% %UPSTREAM_HOST% \"q\""
constant: "legate"
version: 3
nested: { flags: "%RESPONSE_FLAGS%", list: ["%BYTES_SENT%", "%ROUTE_NAME%"] }
"#,
            false,
        );
        assert_eq!(
            render(&format, &ctx),
            "{\"constant\":\"legate\",\"duration\":27,\"method\":\"POST\",\"nested\":{\"flags\":\"-\",\
             \"list\":[345,null]},\"status\":201,\"summary\":\"POST - \\\"q\\\"\",\"upstream\":null,\
             \"version\":3}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&render(&format, &ctx)).expect("valid JSON");
        assert_eq!(parsed["status"], 201);

        let omit =
            json("{ a: \"%UPSTREAM_HOST%\", b: \"%PROTOCOL%\", c: \"%ROUTE_NAME%\", d: \"x %ROUTE_NAME%\" }", true);
        assert_eq!(render(&omit, &ctx), "{\"b\":\"HTTP/1.1\",\"d\":\"x \"}\n");
    }

    #[test]
    fn untyped_json_renders_strings() {
        let (req, resp) = (sample_request(), response());
        let mut ctx = sample(&req, &resp);
        ctx.route_name = None;
        let proto: Struct = schema::parse("{ code: \"%RESPONSE_CODE%\", route: \"%ROUTE_NAME%\" }", Syntax::Yaml)
            .expect("valid struct yaml");
        let format = Format::Json(JsonFormat::from_struct(&proto, false, false, "j").expect("compiles"));
        assert_eq!(render(&format, &ctx), "{\"code\":\"201\",\"route\":\"-\"}\n");
    }

    fn temp_log_path(tag: &str) -> std::path::PathBuf {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("legate-access-log-{tag}-{}-{nanos}.log", std::process::id()))
    }

    fn file_spec(path: &std::path::Path, format: &str) -> AccessLogSpec {
        let yaml = format!(
            r#"
name: envoy.access_loggers.file
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
  path: {}
  log_format: {{ text_format_source: {{ inline_string: "{format}" }} }}
"#,
            path.display()
        );
        let proto: AccessLogProto = schema::parse(&yaml, Syntax::Yaml).expect("valid yaml");
        AccessLogSpec::from_proto(&proto, "access_log[0]").expect("valid spec")
    }

    /// Polls the file until it has `want` or the deadline passes.
    fn wait_for_contents(path: &std::path::Path, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = std::fs::read_to_string(path).unwrap_or_default();
            if got == want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn file_logger_appends_lines() {
        let path = temp_log_path("flush");
        std::fs::write(&path, "existing\n").expect("seed file");
        let logger = AccessLogger::new(&file_spec(&path, "%REQ(:METHOD)% %RESPONSE_CODE%\\n")).expect("opens");
        let (req, resp) = (sample_request(), response());
        let mut ctx = sample(&req, &resp);
        logger.log(&ctx);
        ctx.response_code = 503;
        logger.clone().log(&ctx);
        logger.flush();
        assert_eq!(std::fs::read_to_string(&path).expect("log file"), "existing\nPOST 201\nPOST 503\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn file_logger_writes_without_explicit_flush() {
        // The interval flush and the flush on drop both get lines out with no flush().
        let (req, resp) = (sample_request(), response());
        let ctx = sample(&req, &resp);

        let path = temp_log_path("interval");
        let logger = AccessLogger::new(&file_spec(&path, "%RESPONSE_CODE%\\n")).expect("opens");
        logger.log(&ctx);
        assert_eq!(wait_for_contents(&path, "201\n"), "201\n");
        drop(logger);
        let _ = std::fs::remove_file(&path);

        let path = temp_log_path("drop");
        let logger = AccessLogger::new(&file_spec(&path, "%PROTOCOL%\\n")).expect("opens");
        logger.log(&ctx);
        drop(logger);
        assert_eq!(wait_for_contents(&path, "HTTP/1.1\n"), "HTTP/1.1\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unopenable_file_is_an_error() {
        let path = temp_log_path("missing-dir").join("nested").join("x.log");
        assert!(AccessLogger::new(&file_spec(&path, "x")).is_err());
    }
}
