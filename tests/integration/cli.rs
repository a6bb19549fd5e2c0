//! The real `legate` binary: validate mode over the invalid-config corpus, the Envoy
//! flags, the quick-start example, the SIGTERM drain and running out of file descriptors.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Version;

use crate::support::{Upstream, bootstrap, get, route_all_to, send, static_cluster};

fn legate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_legate"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file in `tests/invalid/` starts with `# expect: <text>`: validation must exit 1
/// with exactly one line on stderr that contains the text (the field path, mostly).
#[test]
fn every_invalid_config_is_rejected_with_one_line_naming_the_field() {
    let dir = root().join("tests/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus has {} configs", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: ").or_else(|| l.strip_prefix("// expect: ")))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()))
            .trim()
            .to_owned();
        let output = legate().args(["--mode", "validate", "-c"]).arg(file).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let ok = output.status.code() == Some(1) && lines.len() == 1 && lines[0].contains(&expected);
        if !ok {
            failures.push(format!(
                "{}: exit {:?}, stderr {:?}, expected {:?}",
                file.display(),
                output.status.code(),
                stderr,
                expected
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn valid_configs_validate_ok() {
    let path = root().join("examples/quickstart.yaml");
    let output = legate().args(["--mode", "validate", "-c"]).arg(&path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("configuration '{}' OK", path.display()));
}

#[test]
fn json_bootstrap_and_config_yaml_merge() {
    let dir = std::env::temp_dir().join(format!("legate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bootstrap.json");
    std::fs::write(
        &json,
        r#"{"node": {"id": "n"}, "static_resources": {"clusters": [{"name": "a", "connect_timeout": "0.5s"}]}}"#,
    )
    .unwrap();
    let output = legate().args(["--mode", "validate", "-c"]).arg(&json).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // --config-yaml is merged over the file: a bad field there is reported too.
    let output = legate()
        .args(["--mode", "validate", "-c"])
        .arg(&json)
        .args(["--config-yaml", "static_resources: { clusters: [{ name: b, connect_timeout: 2x }] }"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("static_resources.clusters[0].connect_timeout"));
    // Merged repeated fields append: a duplicate cluster name across file and flag is caught.
    let output = legate()
        .args(["--mode", "validate", "-c"])
        .arg(&json)
        .args(["--config-yaml", "static_resources: { clusters: [{ name: a }] }"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("duplicate cluster 'a'"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_and_version() {
    let help = legate().arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--config-path",
        "--config-yaml",
        "--concurrency",
        "--service-cluster",
        "--service-node",
        "--mode",
        "--log-level",
        "--drain-time-s",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let version = legate().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// Runs the binary and waits until its admin `/ready` answers LIVE.
async fn spawn_ready(config: &Path, admin: SocketAddr, extra: &[&str]) -> Child {
    let mut command = legate();
    command.arg("-c").arg(config).args(extra);
    wait_ready(command, admin).await
}

/// Runs `command` and waits until its admin `/ready` answers LIVE.
#[allow(clippy::zombie_processes)] // the child is returned; every caller waits for it
async fn wait_ready(mut command: Command, admin: SocketAddr) -> Child {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(admin).await {
            drop(stream);
            let answer = send(admin, Version::HTTP_11, get("/ready")).await;
            if answer.status == 200 {
                return child;
            }
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("legate did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// User and system CPU time the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Split after the command name, which may hold spaces: the fields from the state on,
    // where utime and stime (the 14th and 15th of the line) are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A bootstrap that routes everything to `upstream` as cluster `name`, with its listener
/// and admin on free ports, written to a file: the file, the listener's address and the
/// admin's.
fn config_on_free_ports(name: &str, upstream: &Upstream) -> (PathBuf, SocketAddr, SocketAddr) {
    let (listen, admin) = (free_port(), free_port());
    let config = std::env::temp_dir().join(format!("legate-{name}-{}.yaml", std::process::id()));
    let yaml = bootstrap("", &route_all_to(name), &static_cluster(name, &[(upstream.address, 1)], ""))
        .replacen("port_value: 0", &format!("port_value: {admin}"), 1)
        .replacen("port_value: 0", &format!("port_value: {listen}"), 1);
    std::fs::write(&config, yaml).unwrap();
    (config, SocketAddr::from(([127, 0, 0, 1], listen)), SocketAddr::from(([127, 0, 0, 1], admin)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let upstream = Upstream::start("slow").await;
    let (config, address, admin_address) = config_on_free_ports("slow", &upstream);
    let mut child = spawn_ready(&config, admin_address, &["--drain-time-s", "10", "--concurrency", "2"]).await;
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let version = if i % 2 == 0 { Version::HTTP_11 } else { Version::HTTP_2 };
            tokio::spawn(async move { send(address, version, get("/delay/700")).await })
        })
        .collect();
    // Let the requests reach the upstream, then ask legate to stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while upstream.count() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "requests did not reach the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for request in in_flight {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "an in-flight request failed during the drain");
        assert_eq!(answer.text(), "slow");
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    // After the drain nothing listens any more.
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_example_answers_through_the_proxy() {
    // The example as shipped, on free ports so that nothing else on the machine interferes.
    let (front, backend, admin) = (free_port(), free_port(), free_port());
    let example = std::fs::read_to_string(root().join("examples/quickstart.yaml")).unwrap();
    let rewritten = example
        .replace("port_value: 9901", &format!("port_value: {admin}"))
        .replace("port_value: 10000", &format!("port_value: {front}"))
        .replace("port_value: 10001", &format!("port_value: {backend}"));
    assert_ne!(rewritten, example, "the example's ports were found");
    let config = std::env::temp_dir().join(format!("legate-quickstart-{}.yaml", std::process::id()));
    std::fs::write(&config, rewritten).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let mut child = spawn_ready(&config, admin, &["--concurrency", "1"]).await;
    let answer = send(format!("127.0.0.1:{front}").parse().unwrap(), Version::HTTP_11, get("/")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "Hello from legate!\n");
    let quit = http::Request::post("/quitquitquit")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(admin, Version::HTTP_11, quit).await.status, 200);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_legate_waits_between_accepts_and_serves_again() {
    let upstream = Upstream::start("svc").await;
    let (config, listen_address, admin_address) = config_on_free_ports("svc", &upstream);
    let mut command = legate();
    command.arg("-c").arg(&config).args(["--concurrency", "1"]);
    // 64 descriptors: about 30 once started, the rest for connections.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = wait_ready(command, admin_address).await;
    // More connections than legate has descriptors for, on both the proxy listener and the
    // admin one: the kernel completes them into the listeners' backlogs, where accept fails.
    let mut held = Vec::new();
    for address in [listen_address, admin_address] {
        for _ in 0..60 {
            held.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Waiting between failed accepts: no core spent retrying them (a loop that retries at
    // once takes a whole second of CPU a second).
    let before = cpu_ticks(child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(child.id()) - before;
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(spent < ticks_per_second / 3, "legate used {spent} of {ticks_per_second} ticks in a second");
    // Once the clients let go, both listeners serve again.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = send(admin_address, Version::HTTP_11, get("/ready")).await.status == 200;
        if ready && send(listen_address, Version::HTTP_11, get("/")).await.text() == "svc" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "legate did not serve again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let _ = std::fs::remove_file(&config);
}
