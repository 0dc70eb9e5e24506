//! Registers a tiny shell worker, submits a few actions, watches them and prints the results.
//!
//! ```text
//! PROCMESH_ORCHESTRATOR=quic!127.0.0.1:7600,service.orchestrator \
//! PROCMESH_TLS_DIR=/etc/procmesh/client \
//!     cargo run -p procmesh-client --example submit -- [COUNT]
//! ```
//!
//! The orchestrator id and the TLS directory may also be passed as the first two arguments:
//! `submit ORCHESTRATOR TLS_DIR [COUNT]`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use procmesh_client::{Client, ClientConfig, WorkerBuilder};
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::{ActionDef, ClientEvent};

const SCRIPT: &str = r#"#!/bin/sh
# Greets its argument and leaves a file in Outputs/.
echo "hello from action $1 on $(hostname)"
mkdir -p Outputs
echo "$1" > "Outputs/greeting-$1.txt"
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    procmesh_transport::install_crypto_provider();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let (orchestrator, tls_dir) = if args.len() >= 2 && args[0].contains('!') {
        let o = args.remove(0);
        let t = args.remove(0);
        (o, t)
    } else {
        (
            std::env::var("PROCMESH_ORCHESTRATOR")
                .context("set PROCMESH_ORCHESTRATOR (or pass ORCHESTRATOR TLS_DIR)")?,
            std::env::var("PROCMESH_TLS_DIR")
                .context("set PROCMESH_TLS_DIR (or pass ORCHESTRATOR TLS_DIR)")?,
        )
    };
    let count: u32 = match args.first() {
        Some(n) => n.parse().context("COUNT must be a number")?,
        None => 3,
    };

    let config = ClientConfig::from_tls_dir(
        orchestrator.parse().context("bad orchestrator id")?,
        &PathBuf::from(tls_dir),
    )?;
    let client = Client::connect(config).await?;
    println!("connected; {} hosts", client.hosts().await?.len());

    let worker = client
        .register_worker(&WorkerBuilder::new().bytes("greet.sh", SCRIPT.as_bytes().to_vec(), true))
        .await?;
    println!("worker {worker}");

    let queue = client
        .create_queue(QueueConfig {
            name: "example".into(),
            ..QueueConfig::default()
        })
        .await?;
    println!(
        "queue {} token {}",
        queue.id().unwrap_or(0),
        queue.token().map(|t| t.to_string()).unwrap_or_default()
    );

    // Subscribe before submitting so no transition is missed.
    let mut watch = queue.watch().await?;
    let actions = (0..count)
        .map(|i| {
            let mut action = ActionDef::new(worker);
            action.args.push(i.to_string());
            action.timeout_ms = Some(60_000);
            SubmitAction {
                action,
                priority: None,
                idempotency_key: Some(format!("example-{i}")),
            }
        })
        .collect();
    let lsns = queue.submit(actions).await?;
    println!("submitted {lsns:?}");

    let done = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(event) = watch.next().await {
            match event {
                ClientEvent::Transition { transition, .. } => {
                    println!("  action {} → {}", transition.lsn, transition.state)
                }
                ClientEvent::QueueComplete { status, .. } => return Some(status),
                ClientEvent::Lagged { .. } => {
                    let status = queue.status().await.ok()?;
                    if status.is_complete {
                        return Some(status);
                    }
                }
                ClientEvent::Ended { reason, .. } => {
                    println!("subscription ended: {reason}");
                    return None;
                }
                // A `Watch` unpacks batches: it never yields one.
                ClientEvent::Batch { .. } => {}
            }
        }
        None
    })
    .await;
    let status = match done {
        Ok(Some(status)) => status,
        _ => queue.wait_complete(Some(Duration::from_secs(60))).await?,
    };
    println!("complete: {:?}", status.counts);
    watch.close().await?;

    let out = std::env::temp_dir().join("procmesh-example-outputs");
    for result in queue.all_results().await? {
        let record = &result.record;
        println!(
            "action {} {} ({}): {}",
            record.lsn(),
            record.state(),
            record
                .exit()
                .map_or_else(|| "no exit".into(), |e| e.to_string()),
            String::from_utf8_lossy(&result.stdout_tail).trim_end()
        );
        for output in &result.outputs {
            let path = client.download(&result, output, &out).await?;
            println!("  output {}", path.display());
        }
    }
    queue.retire(lsns).await?;
    client.close().await;
    Ok(())
}
