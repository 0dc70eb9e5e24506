//! `procmesh bench transport` runs end to end and keeps its output contract: a table, then one
//! JSON object on the last line with the documented keys, every figure a positive number.

use std::process::Command;

#[test]
fn bench_transport_prints_a_table_then_one_json_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_procmesh"))
        .args(["bench", "transport", "--seconds", "0.2"])
        .output()
        .expect("run procmesh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("QUIC ask RTT"), "{stdout}");
    let last = stdout.lines().last().expect("output");
    let json: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    for key in [
        "quic_ask_rtt_us",
        "raw_quic_rtt_us",
        "quic_ask_rtt_ratio",
        "quic_tell_per_s",
        "raw_quic_tell_per_s",
        "quic_tell_ratio",
        "unix_ask_rtt_ratio",
        "unix_tell_ratio",
    ] {
        let v = json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {last}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
}

#[test]
fn bad_bench_arguments_are_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_procmesh"))
        .args(["bench", "transport", "--seconds", "0"])
        .output()
        .expect("run procmesh");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds"));
}

#[test]
fn bench_runner_prints_a_table_then_one_json_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_procmesh"))
        .args(["bench", "runner", "--seconds", "0.5", "--concurrency", "2"])
        .output()
        .expect("run procmesh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("output");
    let json: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    for key in [
        "spawn_ready_ms",
        "raw_spawn_ms",
        "runner_actions_per_s",
        "raw_spawn_per_s",
        "runner_ratio",
        "mux_rtt_ratio",
    ] {
        let v = json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {last}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
}
