//! Test support: legate started in-process from a YAML bootstrap, upstreams that are real
//! hyper servers naming themselves, and HTTP/1.1 and h2c clients over real sockets.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate::cli::Options;
use legate::config::bootstrap::BootstrapSpec;
use legate::config::schema::{self, Format};
use legate::server::Server;
use tokio::net::{TcpListener, TcpStream};

/// A legate server running in this process.
pub struct Legate {
    server: Option<Server>,
}

impl Legate {
    /// Starts legate on `yaml` (listeners and admin on port 0) with two workers.
    pub fn start(yaml: &str) -> Legate {
        Self::start_with(yaml, &["--concurrency", "2"])
    }

    /// Starts legate with extra CLI flags.
    pub fn start_with(yaml: &str, flags: &[&str]) -> Legate {
        let options = Options::parse_from(std::iter::once("legate").chain(flags.iter().copied()));
        let bootstrap = schema::parse(yaml, Format::Yaml).unwrap_or_else(|e| panic!("test config parses: {e}"));
        let spec = BootstrapSpec::from_proto(bootstrap).unwrap_or_else(|e| panic!("test config is valid: {e}"));
        Legate { server: Some(Server::start(spec, options).expect("legate starts")) }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.server().listener_address(name).unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// The bound address of listener `name`, if it is active.
    pub fn try_listener(&self, name: &str) -> Option<SocketAddr> {
        self.server().listener_address(name)
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.server().admin_address.expect("admin configured")
    }

    /// GET on the admin API: status and body text.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let response = send(self.admin(), Version::HTTP_11, get(path)).await;
        (response.status, response.text())
    }

    /// POST on the admin API.
    pub async fn admin_post(&self, path: &str) -> (StatusCode, String) {
        let request = Request::post(path).header("host", "admin").body(Full::new(Bytes::new())).unwrap();
        let response = send(self.admin(), Version::HTTP_11, request).await;
        (response.status, response.text())
    }

    /// A stat's value from `/stats?format=json` (counters and gauges).
    pub async fn stat(&self, name: &str) -> Option<i64> {
        let (_, body) = self.admin_get(&format!("/stats?format=json&filter=^{}$", regex::escape(name))).await;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["stats"].as_array()?.iter().find(|s| s["name"] == name).and_then(|s| s["value"].as_i64())
    }

    /// A histogram's sample count and sum, from `/stats/prometheus`: `family` as Prometheus
    /// names it, `labels` as written between its braces.
    pub async fn histogram(&self, family: &str, labels: &str) -> Option<(u64, u64)> {
        let (_, body) = self.admin_get("/stats/prometheus").await;
        let value = |suffix: &str| {
            let prefix = format!("{family}_{suffix}{{{labels}}} ");
            body.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|v| v.parse().ok())
        };
        Some((value("count")?, value("sum")?))
    }

    /// Waits (5 s at most) until the stat has the value.
    pub async fn wait_for_stat(&self, name: &str, value: i64) {
        for _ in 0..100 {
            if self.stat(name).await == Some(value) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{name} stayed at {:?}, not {value}", self.stat(name).await);
    }
}

impl Drop for Legate {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shared.begin_drain();
        }
    }
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: Version,
    pub headers: BTreeMap<String, String>,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: String,
    pub body_len: usize,
}

/// A real HTTP/1.1 + h2c upstream that answers with its own name.
pub struct Upstream {
    #[allow(dead_code)] // read by the interop suite, which shares these helpers
    pub name: String,
    pub address: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// What `/health` answers (200 at first); see `set_health`.
    health: Arc<AtomicU16>,
}

impl Upstream {
    /// Starts an upstream named `name` on a loopback port. Paths it knows:
    /// `/status/N` answers N; `/flaky/N` answers N and 200 in turn (N to the first request
    /// for the path, 200 to the second, ...); `/grpc-status/N` answers gRPC's trailers-only
    /// form with `grpc-status: N`; `/fail-if/NAME/N` answers N from the upstream named NAME
    /// and 200 from the others; `/delay/MS` waits first; `/stream/N` sends N chunks of 1 KiB
    /// with small pauses; `/trickle/MS` sends two chunks MS apart; `/trailers` sends a body
    /// and an `x-checksum` trailer; `/grpc.health.v1.Health/Check` is gRPC's health service
    /// (see `grpc_health`); `/echo` streams the
    /// request body back; `/health` answers the status `set_health` last set (200, with
    /// the name as body, until then); anything else answers
    /// 200 with the name as body and an `x-upstream` header.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_with(name, None).await
    }

    /// As `start`, over TLS with the test server certificate (`tests/certs`), ALPN h2 and
    /// http/1.1.
    pub async fn start_tls(name: &str) -> Upstream {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = certs_dir();
        let chain = CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).unwrap();
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Upstream::start_with(name, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(AtomicU16::new(200));
        let name = name.to_owned();
        let (task_name, task_seen, task_health) = (name.clone(), seen.clone(), health.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (name, seen, health) = (task_name.clone(), task_seen.clone(), task_health.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request| answer(name.clone(), seen.clone(), health.clone(), request));
                    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        // A failed handshake is the client's to observe.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = server.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => drop(server.serve_connection(TokioIo::new(stream), service).await),
                    }
                });
            }
        });
        Upstream { name, address, seen, health }
    }

    /// Makes `/health` answer `status` from now on (a health check's switch). Returns how
    /// many `/health` requests were answered before, with the old status: the ones after
    /// that count got the new one.
    pub fn set_health(&self, status: u16) -> usize {
        // Under the lock `/health` answers under, so no request falls between the two.
        let seen = self.seen.lock().unwrap();
        self.health.store(status, Ordering::SeqCst);
        seen.iter().filter(|s| s.path == "/health").count()
    }

    /// How many `/health` requests this upstream has answered (or is answering).
    pub fn health_checks(&self) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.path == "/health").count()
    }

    /// How many requests this upstream has seen.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request this upstream saw.
    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("a request reached the upstream")
    }
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn answer(
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    health: Arc<AtomicU16>,
    request: Request<Incoming>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let reply = |status: u16, body: UpstreamBody| {
        Response::builder().status(status).header("x-upstream", name.as_str()).body(body).unwrap()
    };
    if path == "/echo" {
        seen.lock().unwrap().push(seen_of(&parts, 0));
        return Ok(reply(200, body.boxed()));
    }
    if path == "/trailers" {
        seen.lock().unwrap().push(seen_of(&parts, 0));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc123"));
        let frames = futures_util::stream::iter([
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let mut response = reply(200, BodyExt::boxed(StreamBody::new(frames)));
        // HTTP/1.1 sends only the trailer fields the response declares.
        response.headers_mut().insert("trailer", http::HeaderValue::from_static("x-checksum"));
        return Ok(response);
    }
    if let Some(gap) = path.strip_prefix("/trickle/") {
        // Two chunks with a pause between them, for idle timeouts mid-body.
        seen.lock().unwrap().push(seen_of(&parts, 0));
        let gap = Duration::from_millis(gap.parse().unwrap_or(0));
        let chunks = futures_util::stream::unfold(0, move |i| async move {
            match i {
                0 => Some((Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"first"))), 1)),
                1 => {
                    tokio::time::sleep(gap).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                }
                _ => None,
            }
        });
        return Ok(reply(200, BodyExt::boxed(StreamBody::new(chunks))));
    }
    if let Some(n) = path.strip_prefix("/stream/") {
        seen.lock().unwrap().push(seen_of(&parts, 0));
        let n: usize = n.parse().unwrap_or(1);
        let chunks = futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            Some((Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![b'x'; 1024]))), i + 1))
        });
        return Ok(reply(200, BodyExt::boxed(StreamBody::new(chunks))));
    }
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body_len = body.len();
    let (earlier, health) = {
        let mut seen = seen.lock().unwrap();
        let request = seen_of(&parts, body_len);
        let earlier = seen.iter().filter(|s| s.path == request.path).count();
        seen.push(request);
        (earlier, health.load(Ordering::SeqCst))
    };
    if path == "/grpc.health.v1.Health/Check" {
        return Ok(grpc_health(&name, &body));
    }
    if path == "/health" && health != 200 {
        return Ok(reply(health, full(Bytes::new())));
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return Ok(reply(code.parse().unwrap_or(500), full(Bytes::new())));
    }
    if let Some(code) = path.strip_prefix("/flaky/")
        && earlier % 2 == 0
    {
        return Ok(reply(code.parse().unwrap_or(500), full(Bytes::new())));
    }
    if let Some((failing, code)) = path.strip_prefix("/fail-if/").and_then(|rest| rest.split_once('/'))
        && failing == name
    {
        return Ok(reply(code.parse().unwrap_or(500), full(Bytes::new())));
    }
    if let Some(code) = path.strip_prefix("/grpc-status/") {
        let mut response = reply(200, full(Bytes::new()));
        response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
        response.headers_mut().insert("grpc-status", code.parse().unwrap_or(http::HeaderValue::from_static("2")));
        return Ok(response);
    }
    Ok(reply(200, full(Bytes::from(name.clone()))))
}

fn seen_of(parts: &http::request::Parts, body_len: usize) -> Seen {
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map_or("/".into(), |p| p.to_string()),
        version: parts.version,
        headers: parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect(),
        authority: parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| parts.headers.get("host").and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default(),
        body_len,
    }
}

/// gRPC's health service: `SERVING` for the server (no service) and for a service named as
/// the upstream, `NOT_SERVING` for `not-serving`, and `NOT_FOUND` (a trailers-only answer) for
/// any other, as gRPC's own health server answers.
fn grpc_health(name: &str, request: &[u8]) -> Response<UpstreamBody> {
    // The request is one gRPC frame holding `HealthCheckRequest { service = 1 }`.
    let service = request.get(7..).map(String::from_utf8_lossy).unwrap_or_default();
    let answer = |body: UpstreamBody| {
        Response::builder().header("x-upstream", name).header("content-type", "application/grpc").body(body).unwrap()
    };
    let status: u8 = match &*service {
        "" => 1,
        "not-serving" => 2,
        service if service == name => 1,
        _ => {
            let mut response = answer(full(Bytes::new()));
            response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("5"));
            return response;
        }
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = futures_util::stream::iter([
        // `HealthCheckResponse { status = 1 }`, framed.
        Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
        Ok(Frame::trailers(trailers)),
    ]);
    answer(BodyExt::boxed(StreamBody::new(frames)))
}

fn full(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A response with its body read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// A GET request for `path` with Host `example.com`.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "example.com").body(Full::new(Bytes::new())).unwrap()
}

/// Sends one request on a new connection with HTTP/1.1 or h2c (prior knowledge).
pub async fn send(address: SocketAddr, version: Version, request: Request<Full<Bytes>>) -> Answer {
    let mut client = Client::connect(address, version).await;
    client.send(request).await
}

/// One client connection, HTTP/1.1 or h2c, reused across requests.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    /// Connects to `address`.
    pub async fn connect(address: SocketAddr, version: Version) -> Client {
        Client::over(TcpStream::connect(address).await.expect("connect"), version).await
    }

    /// Speaks HTTP/1.1 or HTTP/2 (prior knowledge) over a connected `stream`.
    pub async fn over<S>(stream: S, version: Version) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(stream);
        if version == Version::HTTP_2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
            tokio::spawn(conn);
            Client::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
            tokio::spawn(conn);
            Client::H1(sender)
        }
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Answer {
        let response = self.send_streaming(request).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Answer { status: parts.status, version: parts.version, headers: parts.headers, body }
    }

    /// Sends a request; the body is left to the caller.
    pub async fn send_streaming(&mut self, mut request: Request<Full<Bytes>>) -> Response<Incoming> {
        match self {
            Client::H1(sender) => {
                sender.ready().await.expect("h1 ready");
                sender.send_request(request).await.expect("h1 response")
            }
            Client::H2(sender) => {
                // h2 wants the authority in the URI.
                let host = request.headers_mut().remove("host").and_then(|h| h.to_str().ok().map(str::to_owned));
                let path = request.uri().path_and_query().map_or("/".to_owned(), |p| p.to_string());
                *request.uri_mut() =
                    format!("http://{}{path}", host.as_deref().unwrap_or("example.com")).parse().unwrap();
                *request.version_mut() = Version::HTTP_2;
                sender.ready().await.expect("h2 ready");
                sender.send_request(request).await.expect("h2 response")
            }
        }
    }
}

/// Replaces `{name}` placeholders in a YAML template.
pub fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (key, value) in values {
        out = out.replace(&format!("{{{key}}}"), value);
    }
    out
}

/// A bootstrap with an admin, one listener `main` on port 0 whose HCM has `route_config`
/// (YAML indented for its place), and the given `clusters` section.
pub fn bootstrap(hcm_extra: &str, route_config: &str, clusters: &str) -> String {
    bootstrap_with_filter(
        &format!(
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{hcm_extra}
          route_config:
{route_config}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
        ),
        clusters,
    )
}

/// A bootstrap with an admin, one listener `main` on port 0 whose one network filter is
/// `filter` (YAML indented for its place), and the given `clusters` section.
pub fn bootstrap_with_filter(filter: &str, clusters: &str) -> String {
    bootstrap_with_chains("", &format!("    - filters:\n{filter}"), clusters)
}

/// A bootstrap with an admin, one listener `main` on port 0 with `listener_extra` fields
/// and the filter chains `chains` (YAML indented for their place), and the given `clusters`.
pub fn bootstrap_with_chains(listener_extra: &str, chains: &str, clusters: &str) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{listener_extra}    filter_chains:
{chains}
  clusters:
{clusters}
"#
    )
}

/// A STATIC cluster section entry named `name` over `hosts` (address, weight).
pub fn static_cluster(name: &str, hosts: &[(SocketAddr, u32)], extra: &str) -> String {
    let mut endpoints = String::new();
    for (address, weight) in hosts {
        endpoints.push_str(&format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n          load_balancing_weight: {weight}\n",
            address.ip(),
            address.port()
        ));
    }
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{endpoints}"
    )
}

/// Route config YAML (indented for `bootstrap`) with one virtual host `*` and the given routes.
pub fn routes(routes_yaml: &str) -> String {
    format!(
        "            name: local_route\n            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n{routes_yaml}"
    )
}

/// Route config YAML sending every request to `cluster`.
pub fn route_all_to(cluster: &str) -> String {
    routes(&format!("              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: {cluster} }}\n"))
}

/// Legate with one listener routing everything to one STATIC cluster `svc` over a fresh
/// upstream named `svc`.
pub async fn legate_to_one_upstream() -> (Legate, Upstream) {
    let upstream = Upstream::start("svc").await;
    let clusters = static_cluster("svc", &[(upstream.address, 1)], "");
    (Legate::start(&bootstrap("", &route_all_to("svc"), &clusters)), upstream)
}

/// Writes raw bytes on a new connection and reads until the server closes it (5 s at most).
pub async fn raw_exchange(address: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

/// A loopback port nothing listens on, so connects to it are refused, held by a bound socket
/// for as long as the caller keeps it. Bound and dropped instead, the port may go to the next
/// socket bound to port 0, such as the listener of the very legate routing to it, which then
/// proxies to itself until it runs out of file descriptors (the likely cause of one CI run in
/// which the test process did).
pub fn closed_port() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, address)
}

/// The test certificates (`tests/certs`, made by its `make.sh`).
pub fn certs_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs")
}

/// A TLS client handshake on `tcp` as a client of the test CA's servers: SNI `legate.test`,
/// ALPN `alpn`, and the test client certificate if `client_certificate`.
pub async fn tls_connect(
    tcp: TcpStream,
    alpn: &[u8],
    client_certificate: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_to(tcp, "legate.test", alpn, client_certificate).await
}

/// `tls_connect` with SNI `server_name` (the server's certificate must name it).
pub async fn tls_connect_to(
    tcp: TcpStream,
    server_name: &str,
    alpn: &[u8],
    client_certificate: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = certs_dir();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if client_certificate {
        let chain = CertificateDer::pem_file_iter(dir.join("client.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}
