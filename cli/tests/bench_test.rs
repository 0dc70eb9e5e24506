//! `procmesh bench <suite>` runs end to end and keeps its output contract: a table, then one
//! JSON object on the last line with the documented keys, every figure a positive number.

use std::process::Command;

/// Runs `procmesh bench <args>`, checks the contract, and returns the JSON line.
fn bench(args: &[&str], keys: &[&str], table_mentions: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_procmesh"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run procmesh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(table_mentions), "{stdout}");
    let last = stdout.lines().last().expect("output");
    let json: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    for key in keys {
        let v = json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {last}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    json
}

#[test]
fn bench_transport_prints_a_table_then_one_json_line() {
    bench(
        &["transport", "--seconds", "0.2"],
        &[
            "quic_ask_rtt_us",
            "raw_quic_rtt_us",
            "quic_ask_rtt_ratio",
            "quic_tell_per_s",
            "raw_quic_tell_per_s",
            "quic_tell_ratio",
            "unix_ask_rtt_ratio",
            "unix_tell_ratio",
        ],
        "QUIC ask RTT",
    );
}

#[test]
fn bench_runner_prints_a_table_then_one_json_line() {
    bench(
        &["runner", "--seconds", "0.5", "--concurrency", "2"],
        &[
            "spawn_ready_ms",
            "raw_spawn_ms",
            "runner_actions_per_s",
            "raw_spawn_per_s",
            "runner_ratio",
            "mux_rtt_ratio",
        ],
        "runner actions/s",
    );
}

#[test]
fn bad_bench_arguments_are_a_clear_error() {
    for args in [
        ["transport", "--seconds", "0"],
        ["runner", "--concurrency", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_procmesh"))
            .arg("bench")
            .args(args)
            .output()
            .expect("run procmesh");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(args[1]), "{stderr}");
    }
}
