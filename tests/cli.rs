//! The `tailgate` binary: `check-config` and a worker that drains on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tailgate");

#[test]
fn check_config_accepts_the_examples() {
    for file in [
        "config/worker.yaml",
        "config/worker-file.yaml",
        "config/router.yaml",
    ] {
        let out = Command::new(BIN)
            .args(["check-config", file])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_config_prints_every_error_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
receivers: {otlp: {protocols: {grpc: {endpoint: "nowhere"}}}}
tail_sampling:
  policies:
    - {name: a, type: probabilistic, probabilistic: {sampling_percentage: 200}}
exporters: {otlp: {endpoint: "${TAILGATE_TEST_UNSET_VAR:-backend:4317}", colour: blue}}
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("receivers.otlp.protocols.grpc.endpoint: \"nowhere\" is not host:port"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tail_sampling.policies[0].probabilistic.sampling_percentage"),
        "{stderr}"
    );
    assert!(
        stderr.contains("exporters.otlp.colour: unknown field"),
        "{stderr}"
    );
}

#[test]
fn a_worker_reloads_policies_on_sighup_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.yaml");
    std::fs::write(
        &path,
        r#"
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
tail_sampling: {policies_file: policies.yaml}
exporters: {debug: {}}
admin: {endpoint: "127.0.0.1:0"}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies.yaml"),
        "- {name: all, type: always_sample}\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["worker", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Log lines arrive on a channel, so each wait below is bounded.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    };
    wait_for("worker started");
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-HUP");
    wait_for("policies reloaded");
    signal("-TERM");
    wait_for("worker stopped");
    assert!(child.wait().unwrap().success());
}

#[test]
fn check_config_accepts_a_local_config() {
    let out = Command::new(BIN)
        .args(["check-config", "config/local.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("local config"));
}

#[test]
fn check_config_finds_the_tier_of_a_pasted_collector_config_and_says_what_it_takes() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("check-config")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, out, err) = run(&["config/collector/worker.yaml"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok (worker config)"), "{out}");
    assert!(
        out.contains("  processors.tail_sampling: decides each trace"),
        "{out}"
    );
    assert!(out.contains("accepts with no effect:\n"), "{out}");
    assert!(out.contains("  processors.batch: "), "{out}");
    assert!(
        out.contains("leaves off:\n  exporters.debug: in no pipeline"),
        "{out}"
    );
    let (code, out, err) = run(&["config/collector/router.yaml"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok (router config)"), "{out}");
    // --role checks a file as the given tier's, whatever it holds.
    let (code, _, err) = run(&["config/collector/worker.yaml", "--role", "router"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("tail_sampling is the worker tier's"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neither.yaml");
    std::fs::write(&path, "receivers: {otlp: {protocols: {grpc: {}}}}\n").unwrap();
    let (code, _, err) = run(&[path.to_str().unwrap()]);
    assert_eq!(code, Some(64));
    assert!(err.contains("pass --role"), "{err}");
}
