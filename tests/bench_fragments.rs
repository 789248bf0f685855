//! `tickstream-bench fragments` at a tiny scale: every case is measured, every message
//! sent is answered, and the summary holds a ratio per size. Nothing here asserts a
//! speed.

use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_tickstream-bench");

#[test]
fn fragments_measures_every_case_and_reports_ratios() {
    // The node the bench spawns is the `tickstream` binary beside it.
    let _ = env!("CARGO_BIN_EXE_tickstream");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BENCH)
        .args([
            "fragments",
            "--ws-sizes",
            "100,2000",
            "--publish-sizes",
            "3000",
            "--duration",
            "200ms",
            "--runs",
            "1",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "3 sizes, whole and fragmented");
    for r in runs {
        let (msgs, bytes, payload) = (
            r["messages"].as_u64().unwrap(),
            r["bytes"].as_u64().unwrap(),
            r["payload"].as_u64().unwrap(),
        );
        let size = r["case"]["size"].as_u64().unwrap();
        assert!(msgs > 0 && payload == msgs * size, "{r}");
        // A one-byte fragment is 7 bytes on the wire; a whole frame adds its header.
        let per_msg = bytes / msgs;
        if r["case"]["fragmented"].as_bool().unwrap() {
            assert_eq!(per_msg, 7 * size, "{r}");
        } else {
            assert!(per_msg > size && per_msg <= size + 14, "{r}");
        }
    }
    let ratios = summary["ratios"].as_array().unwrap();
    let sizes: Vec<(String, u64)> = ratios
        .iter()
        .map(|r| {
            (
                r["endpoint"].as_str().unwrap().to_owned(),
                r["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [
            ("/v1/ws".to_owned(), 100),
            ("/v1/ws".to_owned(), 2000),
            ("/v1/publish".to_owned(), 3000)
        ]
    );
    let help = Command::new(BENCH)
        .args(["fragments", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Example"));
}
