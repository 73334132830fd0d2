//! `sluice validate` as CI bots and people run it: exit codes, `FILE:LINE:COL` findings, JSON.

use std::path::Path;
use std::process::{Command, Output};

fn validate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .args(args)
        .output()
        .expect("run sluice validate")
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A folder holding one copy of a bad-input fixture, so the findings name only that file.
fn folder_with(fixture_file: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = std::fs::read(fixture(&format!("bad_input/{fixture_file}"))).expect("fixture");
    std::fs::write(dir.path().join(fixture_file), bytes).expect("copy fixture");
    dir
}

#[test]
fn a_valid_folder_exits_0() {
    let out = validate(&[&fixture("manifests/valid")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("error:"));
}

#[test]
fn errors_are_printed_with_file_line_and_column_and_exit_1() {
    let dir = folder_with("11-missing-backend.yaml");
    let out = validate(&[&dir.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = std::fs::read_to_string(fixture("bad_input/11-missing-backend.expected"))
        .expect("expected findings");
    for line in expected.lines().filter(|l| l.contains(": error: ")) {
        assert!(
            stdout.contains(line.trim()),
            "missing {line:?} in:\n{stdout}"
        );
    }
    let first = stdout.lines().next().expect("a finding");
    let mut parts = first.splitn(4, ':');
    assert_eq!(parts.next(), Some("11-missing-backend.yaml"), "{first}");
    assert!(
        parts.next().and_then(|l| l.parse::<u32>().ok()).is_some(),
        "line in {first}"
    );
    assert!(
        parts.next().and_then(|c| c.parse::<u32>().ok()).is_some(),
        "column in {first}"
    );
}

#[test]
fn json_format_lists_findings_for_bots() {
    let dir = folder_with("11-missing-backend.yaml");
    let out = validate(&["--format", "json", &dir.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["valid"], false);
    let findings = report["findings"].as_array().expect("findings[]");
    let error = findings
        .iter()
        .find(|f| f["severity"] == "error")
        .expect("an error finding");
    assert_eq!(error["file"], "11-missing-backend.yaml");
    assert!(error["line"].as_u64().is_some_and(|l| l > 0));
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[test]
fn usage_errors_exit_2() {
    let out = validate(&["--format", "xml", "."]);
    assert_eq!(out.status.code(), Some(2));
    let out = validate(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_empty_folder_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().display().to_string();
    let out = validate(&[&path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--allow-empty"));
    let out = validate(&["--allow-empty", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
