//! The standalone broker's settings: a TOML file, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use broker_core::{ChannelName, Limits, RateLimit, RegionName, StaticKeys};
use clap::Parser;
use replication_redis::{InvalidationScope, RedisReplicationConfig, Retention};
use serde::Deserialize;
use transport_quic::QuicConfig;
use transport_ws::WsConfig;

/// Command-line flags. Every flag overrides the same setting of the config file.
#[derive(Parser, Debug, Default)]
#[command(
    name = "broker",
    version,
    about = "Multi-region pub/sub broker (WebSocket + HTTP, and QUIC with --quic-listen)"
)]
pub struct Cli {
    /// TOML config file (see examples/broker.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Client API key (repeatable). With no key and no token, one of each is generated.
    #[arg(long = "api-key", value_name = "K")]
    pub api_keys: Vec<String>,
    /// Admin token (repeatable): may invalidate subscriptions.
    #[arg(long = "admin-token", value_name = "T")]
    pub admin_tokens: Vec<String>,
    /// Allowed channels, comma-separated [default: cars,robots,tech,music,media].
    #[arg(long, value_delimiter = ',', conflicts_with = "allow_all_channels")]
    pub channels: Option<Vec<String>>,
    /// Allow every well-formed channel name.
    #[arg(long)]
    pub allow_all_channels: bool,
    /// This broker's region, stamped on every message as its origin [default: local].
    #[arg(long, value_name = "NAME")]
    pub region: Option<String>,
    /// This region's Redis (e.g. redis://127.0.0.1:6379): replicate through Redis Streams to
    /// the other nodes of the region and to peer regions. Without it the broker is in-process.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// A remote region and its Redis, as NAME=URL (repeatable).
    #[arg(long = "peer", value_name = "NAME=URL")]
    pub peers: Vec<String>,
    /// This node's id within the region [default: random].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Do not serve the web client at `/`.
    #[arg(long)]
    pub no_web_client: bool,
    /// Also serve QUIC (ALPN pubsub.v1) on this UDP address, e.g. 127.0.0.1:4433.
    #[arg(long, value_name = "ADDR")]
    pub quic_listen: Option<SocketAddr>,
    /// QUIC certificate chain, PEM (with --tls-key). Without both, a self-signed certificate is
    /// generated at start and its SHA-256 fingerprint printed.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// QUIC private key, PEM (PKCS#8, PKCS#1 or SEC1), for --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Write the QUIC certificate (PEM) to this file at start, for clients to trust.
    #[arg(long, value_name = "PATH")]
    pub tls_write_cert: Option<PathBuf>,
}

/// The config file. Every field is optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// This broker's region.
    pub region: Option<String>,
    /// Allowed channels.
    pub channels: Option<Vec<String>>,
    /// Allow every well-formed channel.
    #[serde(default)]
    pub allow_all_channels: bool,
    /// Client API keys: a string, or a table with `key`, `name` and `expires` (RFC 3339).
    #[serde(default)]
    pub api_keys: Vec<KeySpec>,
    /// Admin tokens.
    #[serde(default)]
    pub admin_tokens: Vec<String>,
    /// Broker limits.
    #[serde(default)]
    pub limits: FileLimits,
    /// WebSocket front end settings.
    #[serde(default)]
    pub websocket: FileWebSocket,
    /// This region's Redis URL; enables replication.
    pub redis: Option<String>,
    /// Remote regions: name = Redis URL.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, String>,
    /// This node's id within the region.
    pub node_id: Option<String>,
    /// `global` (default) or `regional`: where an admin's invalidation applies.
    pub invalidation: Option<String>,
    /// Replication tuning.
    #[serde(default)]
    pub replication: FileReplication,
    /// Serve the web client at `/` [default: true].
    pub web_client: Option<bool>,
    /// QUIC front end settings; QUIC is served when `listen` is set.
    #[serde(default)]
    pub quic: FileQuic,
}

/// `[replication]` in the config file; see `replication_redis::RedisReplicationConfig`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileReplication {
    /// Keep about this many entries per region stream.
    pub retention_max_len: Option<u64>,
    /// Or keep about this long, e.g. "24h" (overrides `retention_max_len`).
    pub retention_max_age: Option<String>,
    /// Message ids remembered per node for de-duplication.
    pub dedup_window: Option<usize>,
    /// Longest blocking read, e.g. "1s".
    pub block: Option<String>,
    /// Per-command timeout, e.g. "2s".
    pub command_timeout: Option<String>,
}

/// An API key in the config file.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum KeySpec {
    /// Just the key.
    Plain(String),
    /// A key with a name for logs and an optional expiry.
    Full {
        /// The secret.
        key: String,
        /// Shown in logs instead of the key.
        name: Option<String>,
        /// RFC 3339 time after which the key is refused.
        expires: Option<String>,
    },
}

/// `[limits]` in the config file; see `broker_core::Limits` for defaults.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Largest payload in bytes.
    pub max_payload: Option<usize>,
    /// Subscriptions per connection.
    pub max_subscriptions: Option<usize>,
    /// Messages queued per connection before it is closed as a slow consumer.
    pub outbound_queue: Option<usize>,
    /// Publishes per connection awaiting the replicator's acknowledgement.
    pub max_inflight_publishes: Option<usize>,
    /// Publishes per second per connection (unlimited when absent).
    pub publish_rate: Option<f64>,
    /// Publish burst per connection [default: the rate, at least 1].
    pub publish_burst: Option<u32>,
}

/// `[websocket]` in the config file; see `transport_ws::WsConfig` for defaults.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileWebSocket {
    /// Idle time before the server pings, e.g. "20s".
    pub ping_interval: Option<String>,
    /// Silence after a ping before the connection is dropped, e.g. "20s".
    pub pong_timeout: Option<String>,
    /// Largest frame or HTTP body in bytes.
    pub max_frame_size: Option<usize>,
    /// Most simultaneous connections.
    pub max_connections: Option<usize>,
}

/// `[quic]` in the config file; see `transport_quic::QuicConfig` for defaults.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileQuic {
    /// UDP address to serve QUIC on; QUIC is off without it.
    pub listen: Option<SocketAddr>,
    /// Certificate chain, PEM.
    pub tls_cert: Option<PathBuf>,
    /// Private key, PEM.
    pub tls_key: Option<PathBuf>,
    /// Where to write the certificate (PEM) at start, for clients to trust.
    pub write_cert: Option<PathBuf>,
    /// Silence after which a connection is dropped, e.g. "40s".
    pub idle_timeout: Option<String>,
    /// Largest control-stream frame in bytes.
    pub max_frame_size: Option<usize>,
    /// Most simultaneous QUIC connections.
    pub max_connections: Option<usize>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A setting has a bad value.
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong with it (never the value of a secret).
        reason: String,
    },
}

/// Everything the binary needs, resolved.
#[derive(Debug)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Region.
    pub region: RegionName,
    /// Allowed channels; `None` allows all.
    pub channels: Option<Vec<ChannelName>>,
    /// Credentials.
    pub keys: StaticKeys,
    /// Keys generated at start, to print: (api key, admin token).
    pub generated: Option<(String, String)>,
    /// The API key to put in the web client's URL printed at start: the generated key, else the
    /// first configured key that has not expired.
    pub page_key: Option<String>,
    /// Whether the web client is served at `/`.
    pub web_client: bool,
    /// Broker limits.
    pub limits: Limits,
    /// WebSocket settings.
    pub websocket: WsConfig,
    /// Redis replication, when configured.
    pub replication: Option<RedisReplicationConfig>,
    /// QUIC settings, when QUIC is served.
    pub quic: Option<QuicSettings>,
}

/// The QUIC front end's settings.
#[derive(Debug)]
pub struct QuicSettings {
    /// UDP address to serve on.
    pub listen: SocketAddr,
    /// Where the certificate comes from.
    pub certificate: CertificateSource,
    /// Where to write the certificate at start.
    pub write_cert: Option<PathBuf>,
    /// Front end settings.
    pub config: QuicConfig,
}

/// Where the QUIC certificate comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum CertificateSource {
    /// PEM files given by the operator.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// A self-signed certificate generated at start, valid for these names.
    SelfSigned(Vec<String>),
}

/// The names a generated certificate is valid for: `localhost`, the loopback addresses, and the
/// listen address when it is a specific one.
pub fn self_signed_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    names
}

impl Cli {
    /// Reads the config file, if any, and applies the flags on top.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => load(path)?,
            None => FileConfig::default(),
        };
        merge(self, file)
    }
}

fn load(path: &PathBuf) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.clone(),
        source: Box::new(source),
    })
}

/// Combines flags and file; flags win.
pub fn merge(cli: Cli, file: FileConfig) -> Result<Settings, ConfigError> {
    let listen = cli
        .listen
        .or(file.listen)
        .unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
    let region = cli.region.or(file.region).unwrap_or_else(|| "local".into());
    let region = RegionName::parse(&region).map_err(|e| ConfigError::Invalid {
        setting: "region",
        reason: e.to_string(),
    })?;

    let channels = if cli.allow_all_channels || (cli.channels.is_none() && file.allow_all_channels)
    {
        None
    } else {
        let names = cli.channels.or(file.channels).unwrap_or_else(|| {
            broker_core::DEFAULT_CHANNELS
                .iter()
                .map(|c| c.to_string())
                .collect()
        });
        let parsed = names
            .iter()
            .map(|n| ChannelName::parse(n.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid {
                setting: "channels",
                reason: e.to_string(),
            })?;
        Some(parsed)
    };

    let mut keys = StaticKeys::new();
    let mut page_key = None;
    let now = SystemTime::now();
    let mut api_keys: Vec<KeySpec> = cli.api_keys.into_iter().map(KeySpec::Plain).collect();
    if api_keys.is_empty() {
        api_keys = file.api_keys;
    }
    let admin_tokens = if cli.admin_tokens.is_empty() {
        file.admin_tokens
    } else {
        cli.admin_tokens
    };
    for (i, spec) in api_keys.iter().enumerate() {
        let (key, name, expires) = match spec {
            KeySpec::Plain(k) => (k, None, None),
            KeySpec::Full { key, name, expires } => (key, name.clone(), expires.as_deref()),
        };
        if key.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "api_keys",
                reason: "empty key".into(),
            });
        }
        let expires = expires
            .map(|e| {
                humantime::parse_rfc3339_weak(e).map_err(|err| ConfigError::Invalid {
                    setting: "api_keys.expires",
                    reason: err.to_string(),
                })
            })
            .transpose()?;
        if page_key.is_none() && expires.is_none_or(|t| t > now) {
            page_key = Some(key.clone());
        }
        let name = name.unwrap_or_else(|| format!("api-key-{}", i + 1));
        keys = keys.with_api_key(&name, key, expires);
    }
    for (i, token) in admin_tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "admin_tokens",
                reason: "empty token".into(),
            });
        }
        keys = keys.with_admin_token(&format!("admin-{}", i + 1), token);
    }
    let generated = if keys.is_empty() {
        let (key, token) = (random_secret("key")?, random_secret("admin")?);
        keys = keys
            .with_api_key("generated-key", &key, None)
            .with_admin_token("generated-admin", &token);
        page_key = Some(key.clone());
        Some((key, token))
    } else {
        None
    };

    let mut limits = Limits::default();
    let fl = file.limits;
    if let Some(v) = fl.max_payload {
        limits.max_payload = v;
    }
    if let Some(v) = fl.max_subscriptions {
        limits.max_subscriptions = v;
    }
    if let Some(v) = fl.outbound_queue {
        limits.outbound_queue = v.max(1);
    }
    if let Some(v) = fl.max_inflight_publishes {
        limits.max_inflight_publishes = v.max(1);
    }
    if let Some(rate) = fl.publish_rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err(ConfigError::Invalid {
                setting: "limits.publish_rate",
                reason: "must be a positive number".into(),
            });
        }
        let burst = fl.publish_burst.unwrap_or(rate.ceil() as u32).max(1);
        limits.publish_rate = Some(RateLimit {
            per_second: rate,
            burst,
        });
    }

    let mut websocket = WsConfig::default();
    let fw = file.websocket;
    if let Some(v) = fw.ping_interval {
        websocket.ping_interval = duration("websocket.ping_interval", &v)?;
    }
    if let Some(v) = fw.pong_timeout {
        websocket.pong_timeout = duration("websocket.pong_timeout", &v)?;
    }
    if let Some(v) = fw.max_frame_size {
        websocket.max_frame_size = v;
    }
    if let Some(v) = fw.max_connections {
        websocket.max_connections = v;
    }
    if websocket.max_frame_size < limits.max_payload {
        websocket.max_frame_size = limits.max_payload + 4096;
    }

    let quic = quic_settings(
        cli.quic_listen,
        cli.tls_cert,
        cli.tls_key,
        cli.tls_write_cert,
        file.quic,
        &limits,
    )?;

    let replication = replication(
        &region,
        cli.redis.or(file.redis),
        cli.peers,
        file.peers,
        cli.node_id.or(file.node_id),
        file.invalidation,
        file.replication,
    )?;

    Ok(Settings {
        listen,
        region,
        channels,
        keys,
        generated,
        page_key,
        web_client: !cli.no_web_client && file.web_client.unwrap_or(true),
        limits,
        websocket,
        replication,
        quic,
    })
}

fn quic_settings(
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    write_cert: Option<PathBuf>,
    file: FileQuic,
    limits: &Limits,
) -> Result<Option<QuicSettings>, ConfigError> {
    let listen = listen.or(file.listen);
    let cert = cert.or(file.tls_cert);
    let key = key.or(file.tls_key);
    let write_cert = write_cert.or(file.write_cert);
    let Some(listen) = listen else {
        if cert.is_some() || key.is_some() || write_cert.is_some() {
            return Err(ConfigError::Invalid {
                setting: "quic",
                reason: "--tls-cert, --tls-key and --tls-write-cert need --quic-listen \
                         (or `listen` in [quic])"
                    .into(),
            });
        }
        return Ok(None);
    };
    let certificate = match (cert, key) {
        (Some(cert), Some(key)) => CertificateSource::Files { cert, key },
        (None, None) => CertificateSource::SelfSigned(self_signed_names(listen)),
        _ => {
            return Err(ConfigError::Invalid {
                setting: "quic.tls_cert",
                reason: "a certificate and its key go together: give both or neither".into(),
            });
        }
    };
    let mut config = QuicConfig::default();
    if let Some(v) = file.idle_timeout {
        config.idle_timeout = duration("quic.idle_timeout", &v)?;
    }
    if let Some(v) = file.max_frame_size {
        config.max_frame_size = v;
    }
    if let Some(v) = file.max_connections {
        config.max_connections = v;
    }
    if config.max_frame_size < limits.max_payload {
        config.max_frame_size = limits.max_payload + 4096;
    }
    Ok(Some(QuicSettings {
        listen,
        certificate,
        write_cert,
        config,
    }))
}

/// The replication settings, when this region's Redis is given.
fn replication(
    region: &RegionName,
    redis: Option<String>,
    cli_peers: Vec<String>,
    file_peers: std::collections::BTreeMap<String, String>,
    node_id: Option<String>,
    invalidation: Option<String>,
    tuning: FileReplication,
) -> Result<Option<RedisReplicationConfig>, ConfigError> {
    let has_peers = !cli_peers.is_empty() || !file_peers.is_empty();
    let Some(url) = redis else {
        if has_peers {
            return Err(ConfigError::Invalid {
                setting: "peer",
                reason: "peers need this region's Redis too (--redis)".into(),
            });
        }
        return Ok(None);
    };
    let mut config = RedisReplicationConfig::new(region.clone(), url);
    let mut peers: Vec<(String, String)> = Vec::new();
    if cli_peers.is_empty() {
        peers.extend(file_peers);
    } else {
        for p in cli_peers {
            let (name, url) = p.split_once('=').ok_or_else(|| ConfigError::Invalid {
                setting: "peer",
                reason: "expected NAME=URL".into(),
            })?;
            peers.push((name.trim().to_owned(), url.trim().to_owned()));
        }
    }
    for (name, url) in peers {
        let name = RegionName::parse(&name).map_err(|e| ConfigError::Invalid {
            setting: "peer",
            reason: e.to_string(),
        })?;
        if &name == region {
            return Err(ConfigError::Invalid {
                setting: "peer",
                reason: format!("{name} is this broker's own region"),
            });
        }
        config = config.peer(name, url);
    }
    if let Some(id) = node_id {
        config.node_id = id;
    }
    config.invalidation = match invalidation.as_deref() {
        None | Some("global") => InvalidationScope::Global,
        Some("regional") => InvalidationScope::Regional,
        Some(other) => {
            return Err(ConfigError::Invalid {
                setting: "invalidation",
                reason: format!("{other:?}: expected \"global\" or \"regional\""),
            });
        }
    };
    if let Some(n) = tuning.retention_max_len {
        config.retention = Retention::MaxLen(n);
    }
    if let Some(age) = tuning.retention_max_age {
        config.retention = Retention::MaxAge(duration("replication.retention_max_age", &age)?);
    }
    if let Some(n) = tuning.dedup_window {
        config.dedup_window = n;
    }
    if let Some(v) = tuning.block {
        config.block = duration("replication.block", &v)?;
    }
    if let Some(v) = tuning.command_timeout {
        config.command_timeout = duration("replication.command_timeout", &v)?;
    }
    Ok(Some(config))
}

fn duration(setting: &'static str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|e| ConfigError::Invalid {
        setting,
        reason: e.to_string(),
    })
}

/// A fresh 128-bit secret, hex-encoded, with a readable prefix. Fails rather than make a
/// guessable key when the OS has no random source.
pub fn random_secret(prefix: &str) -> Result<String, ConfigError> {
    let mut buf = [0u8; 16];
    getrandom::fill(&mut buf).map_err(|e| ConfigError::Invalid {
        setting: "api_keys",
        reason: format!("none given and no OS randomness to generate one ({e})"),
    })?;
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}-{hex}"))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_generate_keys_and_use_the_five_channels() {
        let s = merge(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.region.as_str(), "local");
        assert_eq!(s.channels.unwrap().len(), 5);
        let (key, token) = s.generated.unwrap();
        assert_ne!(key, token);
        assert_eq!(s.keys.len(), 2);
        assert!(s.web_client);
        assert_eq!(s.page_key, Some(key));
    }

    #[test]
    fn flags_override_the_file() {
        let f = file(
            r#"
            listen = "127.0.0.1:9000"
            region = "eu"
            channels = ["a", "b"]
            api_keys = ["k1", { key = "k2", name = "mobile", expires = "2099-01-01T00:00:00Z" }]
            admin_tokens = ["t1"]
            web_client = false
            [limits]
            max_payload = 1000
            publish_rate = 5
            [websocket]
            ping_interval = "5s"
            "#,
        );
        let cli = Cli {
            region: Some("us".into()),
            allow_all_channels: true,
            ..Cli::default()
        };
        let s = merge(cli, f).unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.region.as_str(), "us");
        assert!(s.channels.is_none());
        assert!(s.generated.is_none());
        assert_eq!(s.keys.len(), 3);
        let now = SystemTime::now();
        assert_eq!(s.keys.lookup("k2", now).unwrap().id(), "mobile");
        assert!(s.keys.lookup("t1", now).unwrap().is_admin());
        assert_eq!(s.limits.max_payload, 1000);
        assert_eq!(
            s.limits.publish_rate,
            Some(RateLimit {
                per_second: 5.0,
                burst: 5
            })
        );
        assert_eq!(s.websocket.ping_interval, Duration::from_secs(5));
        assert!(!s.web_client);
        assert_eq!(s.page_key.as_deref(), Some("k1"));
    }

    #[test]
    fn the_page_url_gets_a_usable_key_and_the_web_client_can_be_turned_off() {
        let f = file(
            r#"
            api_keys = [{ key = "old", expires = "2001-01-01T00:00:00Z" }, "current"]
            "#,
        );
        let s = merge(Cli::default(), f).unwrap();
        assert_eq!(s.page_key.as_deref(), Some("current"));
        assert!(s.web_client);
        let cli = Cli {
            admin_tokens: vec!["t".into()],
            no_web_client: true,
            ..Cli::default()
        };
        let s = merge(cli, FileConfig::default()).unwrap();
        assert_eq!(s.page_key, None);
        assert!(!s.web_client);
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let s = merge(Cli::default(), file(include_str!("../broker.toml"))).unwrap();
        assert_eq!(s.listen.port(), 8080);
        assert!(s.web_client);
        assert_eq!(s.page_key.as_deref(), Some("change-me-client-key"));
    }

    #[test]
    fn replication_settings() {
        let s = merge(Cli::default(), FileConfig::default()).unwrap();
        assert!(s.replication.is_none());
        let cli = Cli {
            region: Some("eu".into()),
            redis: Some("redis://127.0.0.1:7000".into()),
            peers: vec![
                "us=redis://127.0.0.1:7001".into(),
                "ap=redis://127.0.0.1:7002".into(),
            ],
            node_id: Some("eu-1".into()),
            ..Cli::default()
        };
        let f = file("invalidation = \"regional\"\n[replication]\nretention_max_age = \"1h\"");
        let r = merge(cli, f).unwrap().replication.unwrap();
        assert_eq!(r.region.as_str(), "eu");
        assert_eq!(r.node_id, "eu-1");
        assert_eq!(r.peers.len(), 2);
        assert_eq!(r.invalidation, InvalidationScope::Regional);
        assert_eq!(r.retention, Retention::MaxAge(Duration::from_secs(3600)));

        let f = file("redis = \"redis://x\"\n[peers]\nus = \"redis://y\"");
        let r = merge(
            Cli {
                region: Some("eu".into()),
                ..Cli::default()
            },
            f,
        )
        .unwrap();
        assert_eq!(r.replication.unwrap().peers[0].region.as_str(), "us");

        let own = Cli {
            redis: Some("redis://x".into()),
            peers: vec!["local=redis://y".into()],
            ..Cli::default()
        };
        assert!(merge(own, FileConfig::default()).is_err());
        let no_redis = Cli {
            peers: vec!["us=redis://y".into()],
            ..Cli::default()
        };
        assert!(merge(no_redis, FileConfig::default()).is_err());
    }

    #[test]
    fn quic_is_served_when_a_listen_address_is_given() {
        let s = merge(Cli::default(), FileConfig::default()).unwrap();
        assert!(s.quic.is_none());

        let cli = Cli {
            quic_listen: Some("127.0.0.1:4433".parse().unwrap()),
            tls_write_cert: Some("cert.pem".into()),
            ..Cli::default()
        };
        let q = merge(cli, FileConfig::default()).unwrap().quic.unwrap();
        assert_eq!(q.listen.port(), 4433);
        assert_eq!(
            q.certificate,
            CertificateSource::SelfSigned(vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into()
            ])
        );
        assert_eq!(q.write_cert, Some(PathBuf::from("cert.pem")));

        let f = file(
            r#"
            [quic]
            listen = "0.0.0.0:4433"
            tls_cert = "file.crt"
            tls_key = "file.key"
            idle_timeout = "5s"
            "#,
        );
        let cli = Cli {
            tls_cert: Some("flag.crt".into()),
            tls_key: Some("flag.key".into()),
            ..Cli::default()
        };
        let q = merge(cli, f).unwrap().quic.unwrap();
        assert_eq!(
            q.certificate,
            CertificateSource::Files {
                cert: "flag.crt".into(),
                key: "flag.key".into()
            }
        );
        assert_eq!(q.config.idle_timeout, Duration::from_secs(5));
        assert_eq!(
            self_signed_names("10.1.2.3:1".parse().unwrap())
                .last()
                .unwrap(),
            "10.1.2.3"
        );
    }

    #[test]
    fn tls_settings_without_quic_or_half_a_pair_are_refused() {
        let cli = Cli {
            tls_write_cert: Some("cert.pem".into()),
            ..Cli::default()
        };
        let e = merge(cli, FileConfig::default()).unwrap_err().to_string();
        assert!(e.contains("--quic-listen"), "{e}");
        let cli = Cli {
            quic_listen: Some("127.0.0.1:4433".parse().unwrap()),
            tls_cert: Some("c.pem".into()),
            ..Cli::default()
        };
        assert!(merge(cli, FileConfig::default()).is_err());
    }

    #[test]
    fn bad_settings_are_reported_without_secrets() {
        let f = file(r#"api_keys = [{ key = "hunter2", expires = "soon" }]"#);
        let err = merge(Cli::default(), f).unwrap_err().to_string();
        assert!(err.contains("api_keys.expires"), "{err}");
        assert!(!err.contains("hunter2"));
        let cli = Cli {
            channels: Some(vec!["ok".into(), "not ok".into()]),
            ..Cli::default()
        };
        assert!(merge(cli, FileConfig::default()).is_err());
        assert!(toml::from_str::<FileConfig>("unknown = 1").is_err());
    }
}
