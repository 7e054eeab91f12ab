//! The web client served by the broker binary, used in a real browser: Debian's Chromium,
//! headless, driven by playwright-core from `examples/web/e2e/web-client.test.mjs`.
//!
//! Installs what it needs when it is missing: `npm ci` in `examples/web/e2e` (playwright-core, pinned by
//! its package-lock.json) and, as root, Debian's `chromium` package. Without Node.js or
//! Chromium the test fails and says what to install; it never passes without a browser.
//! Set `CHROMIUM=/path/to/chromium` to use another build. Screenshots are left in
//! `target/tmp/web-e2e/`; `WEB_E2E_UPDATE_SCREENSHOT=1` also refreshes `docs/web-client.png`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const KEY: &str = "web-e2e-key";
const ADMIN: &str = "web-e2e-admin";
/// The whole browser scenario, including Chromium's start; it takes about 15 s.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn two_browser_windows_exchange_messages_and_see_errors_reconnects_and_invalidation() {
    let broker = BrokerProcess::start("127.0.0.1:0".parse().unwrap(), "local", Vec::new());
    run_scenario("one-broker", vec![broker], false);
}

/// One window per region: two brokers in two regions, joined by Redis replication.
#[test]
fn one_browser_window_per_region_through_redis_replication() {
    let (us_redis, eu_redis) = (RedisProcess::start("us"), RedisProcess::start("eu"));
    let replicate = |redis: &RedisProcess, peer: &str, peer_redis: &RedisProcess| {
        vec![
            "--redis".to_owned(),
            redis.url(),
            "--peer".to_owned(),
            format!("{peer}={}", peer_redis.url()),
        ]
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let brokers = vec![
        BrokerProcess::start(any, "us", replicate(&us_redis, "eu", &eu_redis)),
        BrokerProcess::start(any, "eu", replicate(&eu_redis, "us", &us_redis)),
    ];
    run_scenario("two-regions", brokers, true);
}

/// Held while installing the browser test's tools.
static SETUP: Mutex<()> = Mutex::new(());

fn run_scenario(name: &str, mut brokers: Vec<BrokerProcess>, replicated: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("examples/ sits in the workspace root");
    let e2e = root.join("examples/web/e2e");
    // Both scenarios run at once: one installs (npm ci, apt-get) while the other waits, since
    // two installs into the same place at once fail (apt's lock, npm's node_modules).
    let chromium = {
        let _installing = SETUP.lock().unwrap_or_else(|p| p.into_inner());
        ensure_playwright(&e2e);
        ensure_chromium()
    };
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("web-e2e")
        .join(name);

    // The README's screenshot is the one-broker scene.
    let docs_screenshot = std::env::var_os("WEB_E2E_UPDATE_SCREENSHOT")
        .filter(|_| !replicated)
        .map(|_| root.join("docs/web-client.png"));
    let config = json!({
        "chromium": chromium,
        "artifacts": artifacts,
        "docs_screenshot": docs_screenshot,
        "replicated": replicated,
        "brokers": brokers.iter().map(BrokerProcess::describe).collect::<Vec<_>>(),
    });
    let mut node = Command::new("node")
        .arg("web-client.test.mjs")
        .current_dir(&e2e)
        .env("E2E_CONFIG", config.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let mut to_node = node.stdin.take().expect("piped stdin");
    let lines = spawn_line_reader(node.stdout.take().expect("piped stdout"));

    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let mut transcript = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = node.kill();
                panic!("the browser scenario took over {SCENARIO_TIMEOUT:?}:\n{transcript}");
            }
        };
        println!("{line}");
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(request) = line.strip_prefix("control ") {
            obey(request, &mut brokers, &mut to_node);
        }
    }
    let status = node.wait().expect("wait for node");
    assert!(
        status.success(),
        "the browser scenario failed ({status}):\n{transcript}"
    );

    for shot in ["board.png", "two-windows.png"] {
        let png = std::fs::read(artifacts.join(shot)).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{shot} is not a PNG");
    }
}

/// Carries out a `control {"op":…,"broker":i}` request of the script, then answers `ok`.
fn obey(request: &str, brokers: &mut [BrokerProcess], to_node: &mut ChildStdin) {
    let request: Value = serde_json::from_str(request).expect("control request is JSON");
    let i = request["broker"].as_u64().expect("broker index") as usize;
    match request["op"].as_str() {
        Some("stop") => brokers[i].stop(),
        Some("start") => {
            let b = &brokers[i];
            let (addr, region, extra) = (b.addr, b.region.clone(), b.extra.clone());
            brokers[i] = BrokerProcess::start(addr, &region, extra);
        }
        other => panic!("unknown control op {other:?}"),
    }
    writeln!(to_node, "ok").expect("answer the script");
    to_node.flush().expect("answer the script");
}

fn spawn_line_reader(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    // Unbounded, but fed by one process's stdout for the length of one test.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The broker binary, run as a person runs it, with a known key and admin token.
struct BrokerProcess {
    child: Child,
    addr: SocketAddr,
    region: String,
    page_url: String,
    /// Further flags (replication), kept for restarts.
    extra: Vec<String>,
}

impl BrokerProcess {
    fn start(listen: SocketAddr, region: &str, extra: Vec<String>) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
            .args(["--listen", &listen.to_string(), "--region", region])
            .args(["--api-key", KEY, "--admin-token", ADMIN])
            .args(&extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start broker");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut addr = None;
        let page_url = loop {
            let line = lines
                .next()
                .expect("the broker exited before printing its URL")
                .expect("read broker output");
            if let Some(rest) = line.strip_prefix("broker listening on http://") {
                addr = rest.split_whitespace().next().map(|a| a.parse().unwrap());
            } else if let Some(url) = line.trim().strip_prefix("open: ") {
                break url.to_owned();
            }
        };
        let addr: SocketAddr = addr.expect("address printed before the URL");
        assert_eq!(page_url, format!("http://{addr}/?api_key={KEY}"));
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        wait_ready(addr);
        Self {
            child,
            addr,
            region: region.to_owned(),
            page_url,
            extra,
        }
    }

    fn describe(&self) -> Value {
        json!({
            "region": self.region,
            "base": format!("http://{}", self.addr),
            "page_url": self.page_url,
            "admin_token": ADMIN,
        })
    }

    /// Ctrl-C, as a person stops it: WebSockets are closed with 1001 before it exits.
    fn stop(&mut self) {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("poll broker").is_none() {
            assert!(
                Instant::now() < deadline,
                "the broker did not exit after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls `GET /readyz` until the broker (and its replication, if any) is ready.
fn wait_ready(addr: SocketAddr) {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = write!(
                s,
                "GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "broker on {addr} never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` of the test's own on a Unix socket in a temporary directory.
struct RedisProcess {
    child: Child,
    dir: PathBuf,
}

impl RedisProcess {
    fn start(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("web-e2e-redis-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Node.js 20+ must be there; playwright-core is installed from the lock file when it is
/// missing or not the locked version.
fn ensure_playwright(e2e: &Path) {
    let version = Command::new("node").arg("--version").output();
    let major = version.ok().filter(|o| o.status.success()).and_then(|o| {
        let v = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        v.trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    match major {
        Some(m) if m >= 20 => {}
        _ => panic!(
            "the web client's browser test needs Node.js 20 or later as `node` on PATH \
             (found major version: {major:?})"
        ),
    }
    let locked = json_file(&e2e.join("package-lock.json"))
        ["packages"]["node_modules/playwright-core"]["version"]
        .clone();
    let installed_manifest = e2e.join("node_modules/playwright-core/package.json");
    let installed = installed_manifest
        .exists()
        .then(|| json_file(&installed_manifest)["version"].clone());
    if installed.as_ref() != Some(&locked) {
        eprintln!(
            "web e2e: installing playwright-core {} with npm ci",
            locked.as_str().unwrap_or("?")
        );
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(e2e),
            "npm ci in examples/web/e2e (playwright-core from the npm registry)",
        );
    }
}

/// Debian's Chromium (or `$CHROMIUM`), installed with apt-get when missing and we are root.
fn ensure_chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.exists() {
        return path;
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if is_root && path == Path::new("/usr/bin/chromium") {
        eprintln!("web e2e: installing Debian's chromium with apt-get");
        run(
            Command::new("apt-get").arg("update").arg("-qq"),
            "apt-get update",
        );
        run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install chromium",
        );
    }
    assert!(
        path.exists(),
        "the web client's browser test needs Chromium at {}: install Debian's `chromium` \
         package (apt-get install chromium, as root) or set CHROMIUM to a Chromium binary",
        path.display()
    );
    path
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{what} failed ({s})"),
        Err(e) => panic!("{what} could not start: {e}"),
    }
}

fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}
