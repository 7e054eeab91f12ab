//! The standalone binaries as a newcomer runs them: generated keys, the seed's scenario, Ctrl-C,
//! the web client, QUIC beside WebSocket, and the example QUIC client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use transport_quic::client::RecvError;
use transport_quic::{Client, ClientConfig, tls};

struct Running {
    child: Child,
    addr: String,
    key: String,
    admin: String,
    /// What it printed on stdout at start.
    printed: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `broker --listen 127.0.0.1:0` and reads the address and generated keys it prints.
fn start() -> Running {
    start_with(&[])
}

fn start_with(args: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start broker");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut key, mut admin) = (None, None, None);
    let mut printed = Vec::new();
    // The last line printed at start, with generated keys, is the websocat hint.
    while !printed
        .last()
        .is_some_and(|l: &String| l.contains("try: websocat"))
    {
        let line = lines.next().expect("broker exited early").unwrap();
        printed.push(line.clone());
        let last = line.split_whitespace().last().unwrap_or("").to_owned();
        if line.starts_with("broker listening on http://") {
            addr = line
                .split_whitespace()
                .nth(3)
                .map(|u| u.trim_start_matches("http://").to_owned());
        } else if line.contains("generated api key") {
            key = Some(last);
        } else if line.contains("generated admin token") {
            admin = Some(last);
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Running {
        child,
        addr: addr.unwrap(),
        key: key.unwrap(),
        admin: admin.unwrap(),
        printed,
    }
}

/// The QUIC address and certificate fingerprint the broker printed at start.
fn quic_info(b: &Running) -> (String, String) {
    let line = |prefix: &str| {
        b.printed
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {:?}", b.printed))
            .clone()
    };
    let addr = line("quic:").split_whitespace().nth(1).unwrap().to_owned();
    let fingerprint = line("quic certificate SHA-256:")
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    (addr, fingerprint)
}

/// A file path in the temporary directory, unique to this test process and `name`.
fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pubsub-{}-{name}", std::process::id()))
}

/// Starts the broker with QUIC on port 0 and its generated certificate written to a file; returns
/// it with the QUIC address and a client configuration trusting that file.
fn start_with_quic(name: &str) -> (Running, SocketAddr, ClientConfig) {
    let cert = temp_path(name);
    let b = start_with(&[
        "--quic-listen",
        "127.0.0.1:0",
        "--tls-write-cert",
        cert.to_str().unwrap(),
    ]);
    let (quic_addr, fingerprint) = quic_info(&b);
    let trusted = tls::certificates_from_pem_file(&cert).unwrap();
    std::fs::remove_file(&cert).unwrap();
    assert_eq!(tls::fingerprint(&trusted[0]), fingerprint);
    let config = ClientConfig::trusting(trusted[0].clone());
    (b, quic_addr.parse().unwrap(), config)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, key: &str) -> Ws {
    let req = format!("ws://{addr}/ws?api_key={key}")
        .into_client_request()
        .unwrap();
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn recv(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

async fn recv_json(ws: &mut Ws) -> Value {
    match recv(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

#[tokio::test]
async fn the_seed_scenario_against_the_binary() {
    let b = start();
    let mut alice = connect(&b.addr, &b.key).await;
    let mut bob = connect(&b.addr, &b.key).await;
    for ws in [&mut alice, &mut bob] {
        send(ws, json!({"type":"subscribe","id":"1","channel":"tech"})).await;
        assert_eq!(recv_json(ws).await["type"], "subscribed");
    }
    send(
        &mut alice,
        json!({"type":"publish","id":"2","channel":"tech","data":{"text":"hi"}}),
    )
    .await;
    let m = recv_json(&mut bob).await;
    assert_eq!(
        (m["type"].as_str(), m["data"]["text"].as_str()),
        (Some("message"), Some("hi"))
    );

    send(
        &mut alice,
        json!({"type":"publish","id":"3","channel":"sports","data":1}),
    )
    .await;
    let mut codes = vec![];
    for _ in 0..3 {
        let f = recv_json(&mut alice).await;
        codes.push(
            f["code"]
                .as_str()
                .unwrap_or(f["type"].as_str().unwrap())
                .to_owned(),
        );
    }
    codes.sort();
    assert_eq!(codes, ["channel_not_allowed", "message", "published"]);

    // The administrator (and only the administrator) closes the channel's subscriptions.
    let client = admin_post(&b.addr, &b.key, r#"{"channel":"tech"}"#).await;
    assert!(client.starts_with("HTTP/1.1 403"), "{client}");
    let admin = admin_post(&b.addr, &b.admin, r#"{"channel":"tech"}"#).await;
    assert!(
        admin.starts_with("HTTP/1.1 200") && admin.contains(r#""invalidated":2"#),
        "{admin}"
    );
    for ws in [&mut alice, &mut bob] {
        assert_eq!(
            recv_json(ws).await,
            json!({"type":"invalidated","channel":"tech"})
        );
        match recv(ws).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4001),
            other => panic!("expected close 4001, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ctrl_c_drains_connections_with_1001_and_exits_cleanly() {
    let mut b = start();
    let mut ws = connect(&b.addr, &b.key).await;
    send(&mut ws, json!({"type":"ping","id":"x"})).await;
    assert_eq!(recv_json(&mut ws).await["type"], "pong");
    let status = Command::new("kill")
        .args(["-INT", &b.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    match recv(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let exit = tokio::task::spawn_blocking(move || {
        let s = b.child.wait().unwrap();
        (s, b)
    })
    .await
    .unwrap()
    .0;
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn the_printed_url_opens_the_web_client_unless_it_is_turned_off() {
    let b = start();
    let open = format!("  open: http://{}/?api_key={}", b.addr, b.key);
    assert!(b.printed.contains(&open), "{:#?}", b.printed);
    let page = http_get(&b.addr, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("content-type: text/html; charset=utf-8"),
        "{page}"
    );
    assert!(
        page.contains("<label for=\"channel\">Channel</label>"),
        "{page}"
    );

    let off = start_with(&["--no-web-client"]);
    assert!(
        !off.printed.iter().any(|l| l.contains("open:")),
        "{:#?}",
        off.printed
    );
    let page = http_get(&off.addr, "/");
    assert!(page.starts_with("HTTP/1.1 404"), "{page}");
}

/// A raw HTTP/1.1 GET; returns the whole response, header names in lower case as hyper sends them.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn quic_and_websocket_clients_share_the_standalone_broker() {
    let (mut b, quic_addr, config) = start_with_quic("shared.pem");
    let quic = Client::connect(quic_addr, &b.key, config.clone())
        .await
        .unwrap();
    let mut tech = quic.subscribe("tech").await.unwrap();
    let mut alice = connect(&b.addr, &b.key).await;
    send(
        &mut alice,
        json!({"type":"subscribe","id":"1","channel":"tech"}),
    )
    .await;
    assert_eq!(recv_json(&mut alice).await["type"], "subscribed");

    // WebSocket to QUIC, and QUIC to WebSocket.
    send(
        &mut alice,
        json!({"type":"publish","id":"2","channel":"tech","data":{"text":"from ws"}}),
    )
    .await;
    let m = tokio::time::timeout(Duration::from_secs(10), tech.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.data, json!({"text":"from ws"}));
    let id = quic.publish("tech", &"from quic").await.unwrap();
    loop {
        let f = recv_json(&mut alice).await;
        if f["type"] == "message" && f["message_id"] == id.as_str() {
            assert_eq!(f["data"], "from quic");
            break;
        }
    }

    // Invalidation reaches the QUIC subscriber too, and closes it with 4001.
    let admin = admin_post(&b.addr, &b.admin, r#"{"channel":"tech"}"#).await;
    assert!(admin.contains(r#""invalidated":2"#), "{admin}");
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), tech.next())
            .await
            .unwrap()
        {
            Ok(_) => continue, // its own "from quic"
            Err(e) => break e,
        }
    };
    assert_eq!(end, RecvError::Invalidated);
    assert_eq!(quic.closed().await.code, Some(4001));

    // Ctrl-C closes QUIC connections with 1001 and the broker exits cleanly.
    let idle = Client::connect(quic_addr, &b.key, config).await.unwrap();
    idle.ping().await.unwrap();
    let status = Command::new("kill")
        .args(["-INT", &b.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.closed())
        .await
        .unwrap();
    assert_eq!(closed.code, Some(1001));
    let exit = tokio::task::spawn_blocking(move || b.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn the_example_quic_client_subscribes_and_publishes() {
    let cert = temp_path("client.pem");
    let b = start_with(&[
        "--quic-listen",
        "127.0.0.1:0",
        "--tls-write-cert",
        cert.to_str().unwrap(),
    ]);
    let (quic_addr, _) = quic_info(&b);
    let client = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quic-client"));
        cmd.args(["--addr", &quic_addr, "--cert", cert.to_str().unwrap()])
            .env("PUBSUB_API_KEY", &b.key)
            .args(args);
        cmd
    };
    let mut subscriber = client(&["subscribe", "tech", "music"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut notices = BufReader::new(subscriber.stderr.take().unwrap()).lines();
    for channel in ["tech", "music"] {
        assert_eq!(
            notices.next().unwrap().unwrap(),
            format!("subscribed to {channel}")
        );
    }
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();

    let out = client(&["publish", "music", r#"{"text":"hi"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ack: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    let m: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        m,
        json!({"channel":"music","message_id":ack["message_id"],"origin":"local","data":{"text":"hi"}})
    );

    let out = client(&["ping"]).output().unwrap();
    assert_eq!(
        (out.status.success(), &out.stdout[..]),
        (true, &b"pong\n"[..])
    );
    let out = client(&["publish", "music", "not json"]).output().unwrap();
    assert!(!out.status.success());
    let out = client(&["ping"])
        .env("PUBSUB_API_KEY", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{out:?}"
    );

    let _ = subscriber.kill();
    let _ = subscriber.wait();
    std::fs::remove_file(&cert).unwrap();
}

/// A raw HTTP/1.1 POST to /admin/unsubscribe with a bearer token; returns the whole response.
async fn admin_post(addr: &str, token: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /admin/unsubscribe HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
