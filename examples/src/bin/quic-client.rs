//! A command-line client for the broker's QUIC front end, built on `transport_quic::Client`.
//!
//! ```text
//! quic-client --cert broker-cert.pem --api-key K subscribe tech music
//! quic-client --cert broker-cert.pem --api-key K publish tech '{"text":"hi"}'
//! quic-client --cert broker-cert.pem --api-key K ping
//! ```
//!
//! `subscribe` prints each message as one JSON line on stdout; notices go to stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use transport_quic::client::RecvError;
use transport_quic::{Client, ClientConfig, tls};

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    name = "quic-client",
    version,
    about = "Talk to the broker over QUIC (pubsub.v1)"
)]
struct Args {
    /// The broker's QUIC address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    addr: SocketAddr,
    /// PEM certificate(s) to trust, e.g. the file written by `broker --tls-write-cert`.
    #[arg(long, value_name = "PATH")]
    cert: PathBuf,
    /// The name the broker's certificate must be valid for.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// API key (or admin token).
    #[arg(long, env = "PUBSUB_API_KEY", hide_env_values = true)]
    api_key: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the messages of these channels until Ctrl-C or the connection closes.
    Subscribe {
        /// Channels to subscribe to.
        #[arg(required = true)]
        channels: Vec<String>,
    },
    /// Publish one JSON value.
    Publish {
        /// The channel.
        channel: String,
        /// The value, as JSON (e.g. '{"text":"hi"}' or '"plain text"').
        data: String,
    },
    /// A round trip to the broker.
    Ping,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quic-client: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut config = ClientConfig::default();
    config.trusted_certificates = tls::certificates_from_pem_file(&args.cert)?;
    config.server_name = args.server_name;
    let client = Client::connect(args.addr, &args.api_key, config).await?;
    match args.command {
        Command::Ping => {
            client.ping().await?;
            println!("pong");
        }
        Command::Publish { channel, data } => {
            let data: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| format!("the data must be JSON ({e}); quote text as '\"text\"'"))?;
            let id = client.publish(&channel, &data).await?;
            println!("{}", json!({ "message_id": id }));
        }
        Command::Subscribe { channels } => return subscribe(client, channels).await,
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn subscribe(
    client: Client,
    channels: Vec<String>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut printers = tokio::task::JoinSet::new();
    for channel in channels {
        let mut sub = client.subscribe(&channel).await?;
        eprintln!("subscribed to {channel}");
        // One task per subscription: each channel's stream is read on its own.
        printers.spawn(async move {
            loop {
                match sub.next().await {
                    Ok(m) => println!(
                        "{}",
                        json!({"channel": m.channel, "message_id": m.message_id,
                               "origin": m.origin, "data": m.data})
                    ),
                    Err(RecvError::Closed(_)) => return,
                    Err(e) => {
                        eprintln!("{}: {e}", sub.channel());
                        return;
                    }
                }
            }
        });
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        info = client.closed() => {
            // Let every subscription print what it received before the close.
            while printers.join_next().await.is_some() {}
            eprintln!("{info}");
            Ok(ExitCode::from(1))
        }
    }
}
