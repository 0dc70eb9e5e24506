//! `procmesh bench transport`: the remote-actor layer against the raw transport beneath it.
//!
//! ```text
//! ask RTT   client node ─ask─▶ server node's actor ─reply─▶   vs  raw echo of the same frame
//!                                                              on one long-lived bi-stream
//! tells/s   client node ─tell×N─▶ actor counts N              vs  N raw length-prefixed writes
//!                                                              of the same frame, reader counts
//! ```
//! Both sides run in this process on two runtime threads, talking over real sockets: QUIC with
//! mutual TLS on 127.0.0.1, and Unix sockets in a temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_protocol::codec::{encode_body, FrameCodec};
use procmesh_protocol::messages::RemoteMessage;
use procmesh_protocol::{ActorId, Body, Envelope};
use procmesh_transport::{MeshCa, Node, NodeBuilder, RemoteRef, Request, Role, TlsIdentity};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{median, print_table, Row};

const T: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
enum BenchMsg {
    Echo(u64),
    Seq(u64),
    Count,
    Reset,
}

impl RemoteMessage for BenchMsg {
    type Reply = u64;
}

#[derive(Actor, Default)]
struct Sink {
    count: u64,
}

impl Message<Request<BenchMsg>> for Sink {
    type Reply = u64;

    async fn handle(&mut self, req: Request<BenchMsg>, _: &mut Context<Self, u64>) -> u64 {
        match req.message {
            BenchMsg::Echo(x) => x,
            BenchMsg::Seq(_) => {
                self.count += 1;
                self.count
            }
            BenchMsg::Count => self.count,
            BenchMsg::Reset => std::mem::take(&mut self.count),
        }
    }
}

struct Figures {
    ask_rtt_us: f64,
    raw_rtt_us: f64,
    tell_per_s: f64,
    raw_tell_per_s: f64,
}

pub async fn run(budget: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let ca = MeshCa::generate("bench", Duration::from_secs(3600))?;
    let identity = ca.issue(Role::Host, "bench", &[], Duration::from_secs(3600))?;
    let loopback = "127.0.0.1:0".parse()?;

    let quic = {
        let server = NodeBuilder::new("server")
            .quic(loopback, identity.clone())
            .start()
            .await?;
        let client = NodeBuilder::new("client")
            .quic(loopback, identity.clone())
            .start()
            .await?;
        let (ask_rtt_us, tell_per_s, frame) = measure_layer(&server, &client, budget).await?;
        server.shutdown(Duration::from_millis(100)).await;
        client.shutdown(Duration::from_millis(100)).await;
        let (raw_rtt_us, raw_tell_per_s) = raw_quic(&identity, &frame, budget).await?;
        Figures {
            ask_rtt_us,
            raw_rtt_us,
            tell_per_s,
            raw_tell_per_s,
        }
    };

    let (dir, _) = super::scratch_dir("transport")?;
    let unix = {
        let server = NodeBuilder::new("server")
            .unix(dir.join("server.sock"))
            .start()
            .await?;
        let client = NodeBuilder::new("client")
            .unix(dir.join("client.sock"))
            .start()
            .await?;
        let (ask_rtt_us, tell_per_s, frame) = measure_layer(&server, &client, budget).await?;
        server.shutdown(Duration::from_millis(100)).await;
        client.shutdown(Duration::from_millis(100)).await;
        let (raw_rtt_us, raw_tell_per_s) = raw_unix(&dir.join("raw.sock"), &frame, budget).await?;
        Figures {
            ask_rtt_us,
            raw_rtt_us,
            tell_per_s,
            raw_tell_per_s,
        }
    };
    let _ = std::fs::remove_dir_all(&dir);

    let rows = [
        Row {
            what: "QUIC ask RTT (median)",
            ours: quic.ask_rtt_us,
            raw: quic.raw_rtt_us,
            unit: "us",
            ratio: quic.ask_rtt_us / quic.raw_rtt_us,
            goal: "<= 1.3",
        },
        Row {
            what: "QUIC pipelined tells",
            ours: quic.tell_per_s,
            raw: quic.raw_tell_per_s,
            unit: "msg/s",
            ratio: quic.tell_per_s / quic.raw_tell_per_s,
            goal: ">= 0.7",
        },
        Row {
            what: "Unix ask RTT (median)",
            ours: unix.ask_rtt_us,
            raw: unix.raw_rtt_us,
            unit: "us",
            ratio: unix.ask_rtt_us / unix.raw_rtt_us,
            goal: "<= 1.3",
        },
        Row {
            what: "Unix pipelined tells",
            ours: unix.tell_per_s,
            raw: unix.raw_tell_per_s,
            unit: "msg/s",
            ratio: unix.tell_per_s / unix.raw_tell_per_s,
            goal: ">= 0.7",
        },
    ];
    print_table(
        "procmesh bench transport (remote-actor layer vs raw transport, same run)",
        &rows,
    );
    println!("elapsed {:.1}s", started.elapsed().as_secs_f64());
    let json = serde_json::json!({
        "suite": "transport",
        "quic_ask_rtt_us": quic.ask_rtt_us,
        "raw_quic_rtt_us": quic.raw_rtt_us,
        "quic_ask_rtt_ratio": rows[0].ratio,
        "quic_tell_per_s": quic.tell_per_s,
        "raw_quic_tell_per_s": quic.raw_tell_per_s,
        "quic_tell_ratio": rows[1].ratio,
        "unix_ask_rtt_us": unix.ask_rtt_us,
        "raw_unix_rtt_us": unix.raw_rtt_us,
        "unix_ask_rtt_ratio": rows[2].ratio,
        "unix_tell_per_s": unix.tell_per_s,
        "raw_unix_tell_per_s": unix.raw_tell_per_s,
        "unix_tell_ratio": rows[3].ratio,
    });
    println!("{json}");
    Ok(())
}

/// Ask RTT (median µs) and pipelined tells/s through the remote-actor layer, plus the bytes of
/// one ask frame as it travels on the wire (for the raw baselines).
async fn measure_layer(
    server: &Node,
    client: &Node,
    budget: Duration,
) -> anyhow::Result<(f64, f64, Vec<u8>)> {
    let actor = server.expose("sink", Sink::spawn(Sink::default()))?;
    let sink: RemoteRef<BenchMsg> = client.remote_ref(actor.clone());
    for i in 0..500 {
        sink.ask(BenchMsg::Echo(i), T).await?;
    }
    let mut samples = Vec::new();
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline {
        let t = Instant::now();
        sink.ask(BenchMsg::Echo(7), T).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let rtt = median(&mut samples);

    // Calibrate a batch size, then time one batch of about `budget`.
    let mut n = 20_000u64;
    let mut rate = 0.0;
    for _ in 0..2 {
        sink.ask(BenchMsg::Reset, T).await?;
        let t = Instant::now();
        for i in 0..n {
            sink.tell(BenchMsg::Seq(i)).await?;
        }
        // In order: the count's reply comes after every tell was handled.
        let counted = sink.ask(BenchMsg::Count, Duration::from_secs(60)).await?;
        anyhow::ensure!(counted == n, "sink counted {counted} of {n} tells");
        rate = n as f64 / t.elapsed().as_secs_f64();
        n = ((rate * budget.as_secs_f64()) as u64).clamp(10_000, 2_000_000);
    }
    let frame = wire_frame(client, actor)?;
    Ok((rtt, rate, frame))
}

/// The bytes one ask occupies on the wire: length prefix plus encoded envelope.
fn wire_frame(client: &Node, dest: ActorId) -> anyhow::Result<Vec<u8>> {
    let env = Envelope {
        dest,
        sender: client.actor_id("client")?,
        body: Body::Ask {
            id: 1_000_000,
            message: encode_body(&BenchMsg::Echo(7))?,
        },
        trace: None,
    };
    let mut frame = Vec::new();
    FrameCodec::default().encode(&env, &mut frame)?;
    Ok(frame)
}

/// Echoes each length-prefixed frame back; after `count_then_ack` frames (if set) writes one
/// byte instead of echoing.
async fn raw_server<R, W>(
    reader: R,
    mut writer: W,
    count_then_ack: Option<u64>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut frame = Vec::new();
    let mut seen = 0u64;
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        let n = u32::from_be_bytes(len) as usize;
        frame.clear();
        frame.extend_from_slice(&len);
        frame.resize(4 + n, 0);
        reader.read_exact(&mut frame[4..]).await?;
        match count_then_ack {
            None => {
                writer.write_all(&frame).await?;
                writer.flush().await?;
            }
            Some(total) => {
                seen += 1;
                if seen == total {
                    writer.write_all(&[1]).await?;
                    writer.flush().await?;
                    seen = 0;
                }
            }
        }
    }
}

async fn raw_rtt<R, W>(
    mut reader: R,
    mut writer: W,
    frame: &[u8],
    budget: Duration,
) -> anyhow::Result<f64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut back = vec![0u8; frame.len()];
    for _ in 0..500 {
        writer.write_all(frame).await?;
        reader.read_exact(&mut back).await?;
    }
    let mut samples = Vec::new();
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline {
        let t = Instant::now();
        writer.write_all(frame).await?;
        writer.flush().await?;
        reader.read_exact(&mut back).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&mut samples))
}

async fn raw_tells<R, W>(mut reader: R, mut writer: W, frame: &[u8], n: u64) -> anyhow::Result<f64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let t = Instant::now();
    for _ in 0..n {
        writer.write_all(frame).await?;
    }
    writer.flush().await?;
    let mut ack = [0u8; 1];
    reader.read_exact(&mut ack).await?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn tell_batch(budget: Duration) -> u64 {
    // Enough frames that the run lasts a good part of the budget on a fast machine.
    ((budget.as_secs_f64() * 400_000.0) as u64).clamp(20_000, 2_000_000)
}

async fn raw_quic(
    identity: &TlsIdentity,
    frame: &[u8],
    budget: Duration,
) -> anyhow::Result<(f64, f64)> {
    let server_crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)?;
    let client_crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config()?)?;
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(server_crypto)),
        "127.0.0.1:0".parse()?,
    )?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    let addr = server.local_addr()?;
    let n = tell_batch(budget);
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            let conn = server.accept().await.context("no connection")?.await?;
            // Stream 1: echo; stream 2: count-then-ack.
            let (s1, r1) = conn.accept_bi().await?;
            let echo = tokio::spawn(raw_server(r1, s1, None));
            let (s2, r2) = conn.accept_bi().await?;
            raw_server(r2, s2, Some(n)).await?;
            echo.abort();
            anyhow::Ok(())
        })
    };
    let conn = client
        .connect(addr, procmesh_transport::tls::NODE_SERVER_NAME)?
        .await?;
    let (send, recv) = conn.open_bi().await?;
    let rtt = raw_rtt(recv, send, frame, budget).await?;
    let (mut send, recv) = conn.open_bi().await?;
    // A stream is only announced to the peer once written to; the first frame counts.
    send.write_all(frame).await?;
    let rate = raw_tells(recv, send, frame, n - 1).await?;
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), accept).await;
    server.close(0u32.into(), b"done");
    client.close(0u32.into(), b"done");
    Ok((rtt, rate))
}

async fn raw_unix(path: &Path, frame: &[u8], budget: Duration) -> anyhow::Result<(f64, f64)> {
    let listener = tokio::net::UnixListener::bind(path)?;
    let n = tell_batch(budget);
    let accept = tokio::spawn(async move {
        let (a, _) = listener.accept().await?;
        let (r, w) = a.into_split();
        let echo = tokio::spawn(raw_server(r, w, None));
        let (b, _) = listener.accept().await?;
        let (r, w) = b.into_split();
        raw_server(r, w, Some(n)).await?;
        echo.abort();
        anyhow::Ok(())
    });
    let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
    let rtt = raw_rtt(r, w, frame, budget).await?;
    let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
    let rate = raw_tells(r, w, frame, n).await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), accept).await;
    Ok((rtt, rate))
}
