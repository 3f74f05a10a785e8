//! An independent client: Python's `websockets` library
//! (`scripts/lib/ws_check.py`) against `echo --framing ws` with workers,
//! metrics and limits. Without `python3` and `websockets` the test is
//! skipped, except under CI (env CI set), where it fails.

mod common;

use std::process::Command;

use common::metrics::{metric, scrape, start_with_metrics};
use common::ws::python_ws_check;

#[test]
fn python_websockets_client_against_echo_with_workers_metrics_and_limits() {
    let Some(script) = python_ws_check() else { return };
    let (server, metrics) = start_with_metrics(&["echo", "--framing", "ws", "--workers", "2", "--max-frame", "400000"]);
    let url = format!("ws://{}/some/path", server.addr);
    let out = Command::new("python3").arg(&script).args(["echo", &url, "--max-frame", "400000"]).output().unwrap();
    assert!(
        out.status.success(),
        "ws_check.py echo: {}\n{}\nserver stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.stderr_text()
    );
    // The figures count WebSocket connections like any other: 22
    // connections (the first, 20 at once, the one over the limit), one
    // of them closed as a protocol error.
    common::wait_until(std::time::Duration::from_secs(5), "the figures", || {
        let s = scrape(metrics);
        metric(&s, "edgeloop_connections_accepted_total", None) == 22.0
            && metric(&s, "edgeloop_connections_closed_total", Some(("reason", "frame_too_large"))) == 1.0
            && metric(&s, "edgeloop_frames_received_total", None) >= 1000.0
    });
}
