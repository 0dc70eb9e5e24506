//! `procmesh bench admin`: what the admin surface costs with a big backlog. An orchestrator
//! process (in memory) holds `pending` trivial pending actions; its `/metrics` is scraped 30
//! times and timed beside 30 GETs of `/healthz` over the same listener (the raw cost of one
//! HTTP request there), and the dashboard's weight is reported.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::mesh::{fill, orchestrator_process};
use super::{median, print_table, scratch_dir, Row};
use crate::local_mesh::Identities;

/// One GET over a fresh connection; the status code and the body's length.
fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok((code, response))
}

/// Median milliseconds of `n` GETs of `path`.
fn time_gets(addr: &str, path: &str, n: usize) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let began = Instant::now();
        let (code, _) = get(addr, path)?;
        anyhow::ensure!(code == 200, "GET {path}: {code}");
        samples.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(&mut samples))
}

pub async fn run(pending: u64) -> anyhow::Result<()> {
    let (dir, _) = scratch_dir("admin")?;
    let ids = Identities::generate(&dir, "bench", Duration::from_secs(3600))?;
    let (guard, ready, _) =
        orchestrator_process(&ids, &dir.join("orchestrator"), &["--no-journal"]).await?;
    let admin = ready["admin"]
        .as_str()
        .context("the orchestrator printed no admin address")?
        .to_owned();
    let (client, _) = fill(&dir, &ids, &ready, pending, || Ok(0)).await?;
    // The gauges follow at the next refresh of the admin view.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = format!("procmesh_pending_actions {}", pending + 1000);
    loop {
        let (_, body) = tokio::task::block_in_place(|| get(&admin, "/metrics"))?;
        if body.contains(&line) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pending gauge never showed {line}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (scrape_ms, health_ms, size) = tokio::task::block_in_place(|| {
        let scrape = time_gets(&admin, "/metrics", 30)?;
        let health = time_gets(&admin, "/healthz", 30)?;
        let (_, body) = get(&admin, "/metrics")?;
        anyhow::Ok((scrape, health, body.len()))
    })?;
    client.close().await;
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    let weight = procmesh_orchestrator::admin::page::weight();
    let rows = [
        Row {
            what: "/metrics scrape (1 GET)",
            ours: scrape_ms,
            raw: health_ms,
            unit: "ms",
            ratio: scrape_ms / health_ms,
            goal: "raw: GET /healthz",
        },
        Row {
            what: "dashboard page weight",
            ours: weight as f64 / 1024.0,
            raw: 0.0,
            unit: "KiB",
            ratio: f64::NAN,
            goal: "html + css + js, uncompressed",
        },
    ];
    print_table(
        &format!("procmesh bench admin ({} pending actions)", pending + 1000),
        &rows,
    );
    println!(
        "{}",
        serde_json::json!({
            "suite": "admin",
            "pending_actions": pending + 1000,
            "metrics_scrape_ms": scrape_ms,
            "healthz_ms": health_ms,
            "scrape_ratio": scrape_ms / health_ms,
            "metrics_bytes": size,
            "dashboard_bytes": weight,
        })
    );
    Ok(())
}
