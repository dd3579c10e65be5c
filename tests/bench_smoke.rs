//! A small, fast run of every benchmark scenario, so the benchmark program
//! cannot rot. Numbers are not checked here (benchmarks are run by hand, see
//! BENCHMARKS.md); that each scenario runs, reports, and (for `paced`) loses
//! and repeats no watch event is.

use std::collections::HashMap;
use std::process::Command;

/// Runs `mube-bench` against the debug API server; returns the final
/// `key=value` line as a map.
fn bench(args: &[&str]) -> HashMap<String, String> {
    let stdout = bench_output(args);
    let last = stdout.lines().last().expect("a final key=value line");
    last.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `mube-bench` as `bench` does; returns its whole report.
fn bench_output(args: &[&str]) -> String {
    let out = Command::new(mube_e2e::bin("mube-bench"))
        .arg("--apiserver")
        .arg(mube_e2e::bin("mube-apiserver"))
        .args(args)
        .output()
        .expect("run mube-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mube-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.into_owned()
}

fn number(result: &HashMap<String, String>, key: &str) -> f64 {
    result
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing or not a number in {result:?}"))
}

#[test]
fn heartbeat_scenario() {
    let r = bench(&[
        "heartbeat",
        "--nodes",
        "5",
        "--connections",
        "2",
        "--duration",
        "1s",
    ]);
    assert!(number(&r, "mube_heartbeat_ok") > 0.0);
    assert_eq!(number(&r, "mube_heartbeat_errors"), 0.0);
}

#[test]
fn paced_scenario_loses_and_repeats_nothing() {
    let r = bench(&[
        "paced",
        "--nodes",
        "20",
        "--interval",
        "500ms",
        "--duration",
        "2s",
        "--watchers",
        "4",
        "--connections",
        "2",
    ]);
    assert!(number(&r, "heartbeat_ok") >= 40.0, "{r:?}");
    assert_eq!(number(&r, "events_missed"), 0.0, "{r:?}");
    assert_eq!(number(&r, "events_duplicated_or_reordered"), 0.0, "{r:?}");
    assert!(number(&r, "lease_events_received") >= number(&r, "heartbeat_ok") * 2.0);
}

#[test]
fn list_restart_and_metrics_scenarios() {
    let r = bench(&["list", "--nodes", "50"]);
    assert!(number(&r, "list_json_ms") > 0.0);
    let r = bench(&["restart", "--nodes", "10", "--writes", "100"]);
    assert!(number(&r, "restart_to_ready_ms") > 0.0);
    let r = bench(&["metrics", "--nodes", "50", "--scrapes", "2"]);
    assert!(number(&r, "scrape_p50_ms") > 0.0);
    assert!(number(&r, "scrape_bytes") > 1000.0);
}

#[cfg_attr(not(has_etcd), ignore = "etcd not found on PATH (Debian: etcd-server)")]
#[test]
fn etcd_scenario() {
    let r = bench(&[
        "etcd",
        "--nodes",
        "5",
        "--connections",
        "2",
        "--duration",
        "1s",
    ]);
    assert!(number(&r, "etcd_gateway_put_ok") > 0.0, "{r:?}");
    assert!(number(&r, "ratio_mube_over_best_etcd") > 0.0);
    assert!(number(&r, "bare_http_ok") > 0.0, "{r:?}");
    assert!(number(&r, "ratio_bare_http_over_best_etcd") > 0.0);
    // mube on that etcd needs a server built with its etcd backend (make
    // builds it when protoc is there; CI always does).
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(number(&r, "mube_on_etcd_heartbeat_ok") > 0.0, "{r:?}");
        assert_eq!(number(&r, "mube_on_etcd_heartbeat_errors"), 0.0, "{r:?}");
    }
}

/// A few kill -9 cycles under writers, watchers and paged listers: nothing
/// acknowledged is lost, no resourceVersion is used twice, no watch misses or
/// repeats a change. (`mube-bench crash --cycles 100` is the full run.)
#[test]
fn crash_scenario_loses_reuses_and_repeats_nothing() {
    let r = bench(&[
        "crash",
        "--cycles",
        "4",
        "--min-run",
        "100ms",
        "--max-run",
        "300ms",
    ]);
    assert_eq!(number(&r, "cycles"), 4.0);
    assert!(number(&r, "acknowledged_writes") > 0.0, "{r:?}");
    assert!(number(&r, "watch_events") > 0.0, "{r:?}");
    assert!(number(&r, "list_pages") > 0.0, "{r:?}");
    for zero in [
        "lost_acknowledged_writes",
        "reused_resource_versions",
        "revision_regressions",
        "watch_gaps",
        "watch_duplicates",
        "inconsistent_pages",
    ] {
        assert_eq!(number(&r, zero), 0.0, "{zero}: {r:?}");
    }
}

#[test]
fn schedule_scenario() {
    let scheduler = mube_e2e::bin("mube-scheduler");
    let r = bench(&[
        "schedule",
        "--nodes",
        "3",
        "--pods",
        "10",
        "--scheduler",
        scheduler.to_str().unwrap(),
    ]);
    assert!(number(&r, "all_bound_s") > 0.0);
}

#[test]
fn fanout_scenarios() {
    let r = bench(&[
        "fanout",
        "stuck",
        "--watchers",
        "20",
        "--nodes",
        "5",
        "--connections",
        "1",
        "--duration",
        "1s",
    ]);
    assert_eq!(number(&r, "open_watches_at_start"), 20.0);
    assert!(number(&r, "without_watchers_rate_per_s") > 0.0);
    assert!(number(&r, "throughput_with_stuck_percent") > 0.0);
    let r = bench(&["fanout", "idle", "--watchers", "20", "--duration", "200ms"]);
    assert_eq!(number(&r, "open_watches"), 20.0);
    let r = bench(&[
        "fanout",
        "nodes",
        "--watchers",
        "20",
        "--unfiltered",
        "2",
        "--rate",
        "200",
        "--connections",
        "2",
        "--duration",
        "1s",
    ]);
    assert!(number(&r, "writes_per_second") > 0.0);
    assert_eq!(number(&r, "node_watch_events_missed"), 0.0);
    assert_eq!(number(&r, "unfiltered_watch_events_missed"), 0.0);
    assert_eq!(number(&r, "node_watch_events_out_of_order"), 0.0);
    assert_eq!(number(&r, "unfiltered_watch_events_extra"), 0.0);
    assert!(number(&r, "node_watch_lag_p99_ms") > 0.0);
}

#[test]
fn crds_scenario() {
    let r = bench(&[
        "crds",
        "--crds",
        "3",
        "--first-objects",
        "2",
        "--validations",
        "50",
    ]);
    assert_eq!(number(&r, "crds"), 3.0);
    assert!(number(&r, "discovery_p50_ms") > 0.0);
    assert!(number(&r, "crd_to_first_object_max_ms") > 0.0);
    assert!(number(&r, "validate_p50_us") > 0.0);
}

#[test]
fn security_scenario() {
    let r = bench(&[
        "security",
        "--nodes",
        "5",
        "--connections",
        "2",
        "--duration",
        "1s",
    ]);
    assert!(number(&r, "tls_over_plain") > 0.0);
    assert!(number(&r, "rbac_authorize_alone_p99_us") > 0.0);
}

#[test]
fn deployments_scenario() {
    let report = bench_output(&[
        "deployments",
        "--nodes",
        "4",
        "--lost",
        "1",
        "--replicas",
        "20",
        "--toleration",
        "2",
        "--mubelet",
        mube_e2e::bin("mubelet").to_str().unwrap(),
        "--scheduler",
        mube_e2e::bin("mube-scheduler").to_str().unwrap(),
        "--controller-manager",
        mube_e2e::bin("mube-controller-manager").to_str().unwrap(),
    ]);
    // Every step reported (the rolling update and node loss fail the run
    // when they do not settle).
    for step in [
        "scale-up 0 -> replicas, all Running",
        "scale-up, when the last pod was",
        "rolling update",
        "node loss",
    ] {
        assert!(report.contains(step), "{step}: {report}");
    }
    // The failover step scales 20 -> 22: exactly 2 pods made, whoever led.
    assert!(
        report.contains("scaled 20 -> 22: 2 pods created (asked 2)"),
        "{report}"
    );
}

/// A run longer than a moment shows a progress bar on a terminal (script(1)
/// gives it one), and nothing of it in a pipe.
#[test]
fn progress_shows_on_a_terminal_only() {
    let args = [
        "heartbeat",
        "--security",
        "plain",
        "--nodes",
        "20",
        "--connections",
        "2",
        "--duration",
        "2s",
    ];
    let piped = Command::new(mube_e2e::bin("mube-bench"))
        .arg("--apiserver")
        .arg(mube_e2e::bin("mube-apiserver"))
        .args(args)
        .output()
        .expect("run mube-bench");
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("closed loop"), "{stderr}");

    let command = format!(
        "{} --apiserver {} {}",
        mube_e2e::bin("mube-bench").display(),
        mube_e2e::bin("mube-apiserver").display(),
        args.join(" ")
    );
    let transcript = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("script")
        .args(["-qfec", &command])
        .arg(transcript.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script(1)");
    assert!(status.success());
    let seen = std::fs::read_to_string(transcript.path()).unwrap();
    assert!(seen.contains("closed loop"), "{seen}");
    assert!(seen.contains(" done, "), "{seen}");
}
