//! The bad inputs of `BAD_INPUT.md` that concern loading, as a table test.
//!
//! Each case under `tests/fixtures/bad_input/` is a file `NN-name.yaml` or a folder `NN-name/`
//! (NN is the row of BAD_INPUT.md), with `NN-name.expected` beside it holding every finding the
//! loader must print, one `FILE:LINE:COL: error|warning: MESSAGE` per line, and nothing else.
//! Inputs that are huge, binary or need symlinks are generated here instead of committed.
//!
//! Setting `SLUICE_BLESS=1` rewrites the `.expected` files from the current output; review the
//! diff before committing it.

use std::fs;
use std::path::{Path, PathBuf};

use sluice::manifest::{
    load_dir, load_files, read_dir, Diagnostic, LoadOptions, Revision, SourceFile,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_input")
}

/// Every finding, errors and warnings, as printed.
fn findings(result: Result<Revision, Vec<Diagnostic>>) -> Vec<String> {
    let diags = match result {
        Ok(rev) => rev.warnings,
        Err(diags) => diags,
    };
    diags.iter().map(|d| d.to_string()).collect()
}

fn load_one(path: &str, bytes: &[u8], opts: &LoadOptions) -> Vec<String> {
    let files = [SourceFile {
        path: path.to_string(),
        bytes: bytes.into(),
    }];
    findings(load_files(&files, opts))
}

/// Loads a fixture: a file on its own (named by its file name), or a folder.
fn load_fixture(path: &Path) -> Vec<String> {
    let opts = LoadOptions::default();
    if path.is_dir() {
        findings(load_dir(path, &opts))
    } else {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        let bytes = fs::read(path).expect("fixture readable");
        load_one(name, &bytes, &opts)
    }
}

fn expected_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn fixtures_give_exactly_the_expected_findings() {
    let dir = fixtures();
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("fixture folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "fixtures missing: {cases:?}");
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let expected_path = case.with_extension("expected");
        let actual = load_fixture(case);
        if bless {
            fs::write(&expected_path, actual.join("\n") + "\n").expect("write expected");
            continue;
        }
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .expected file", case.display()));
        let expected = expected_lines(&expected);
        assert!(
            !expected.is_empty(),
            "{}: an empty .expected tests nothing",
            case.display()
        );
        if actual != expected {
            failures.push(format!(
                "{}:\n  expected:\n    {}\n  actual:\n    {}",
                case.display(),
                expected.join("\n    "),
                actual.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

const SERVICE: &str =
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\nspec:\n  ports:\n  - port: 80\n";

// 2: encodings, generated since they are binary.
#[test]
fn encodings_are_refused_with_the_byte_offset() {
    let opts = LoadOptions::default();
    let mut non_utf8 = SERVICE.as_bytes().to_vec();
    non_utf8.splice(40..40, [0xC3, 0x28]);
    assert_eq!(
        load_one("latin1.yaml", &non_utf8, &opts),
        ["latin1.yaml:4:2: error: invalid UTF-8 at byte offset 40 (byte 0xC3); manifests must be UTF-8"]
    );

    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(SERVICE.encode_utf16().flat_map(|u| u.to_le_bytes()))
        .collect();
    assert_eq!(
        load_one("utf16.yaml", &utf16, &opts),
        ["utf16.yaml:1:1: error: file is UTF-16 (byte order mark at byte offset 0); save it as UTF-8"]
    );
    let utf16_no_bom: Vec<u8> = SERVICE
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    assert_eq!(
        load_one("utf16be.yaml", &utf16_no_bom, &opts),
        ["utf16be.yaml:1:1: error: file looks like UTF-16 (NUL byte at byte offset 0 or 1); save it as UTF-8"]
    );

    let nul = SERVICE.replace("name: echo", "name: ec\0ho");
    assert_eq!(
        load_one("nul.yaml", nul.as_bytes(), &opts),
        ["nul.yaml:4:11: error: NUL byte at byte offset 49; is this a binary file?"]
    );

    let late_bom = format!("{SERVICE}---\n\u{FEFF}apiVersion: v1\n");
    assert_eq!(
        load_one("bom.yaml", late_bom.as_bytes(), &opts),
        ["bom.yaml:9:1: error: byte order mark at byte offset 84; only one at the very start of a file is accepted"]
    );

    // A UTF-8 BOM at the start is accepted: positions are as if it were not there.
    let bom = [b"\xEF\xBB\xBF".as_slice(), SERVICE.as_bytes()].concat();
    let files = [SourceFile {
        path: "bom.yaml".into(),
        bytes: bom.into(),
    }];
    let rev = load_files(&files, &opts).expect("a leading UTF-8 BOM is accepted");
    let svc = rev.services.values().next().expect("the Service");
    assert_eq!(svc.pos.to_string(), "bom.yaml:1:1");
}

// 3: limits, checked before parsing.
#[test]
fn size_and_count_limits() {
    let opts = LoadOptions::default();
    // Over the per-file limit: refused without parsing (the content would be an error too).
    let huge = vec![b'['; opts.max_file_bytes + 1];
    assert_eq!(
        load_one("huge.yaml", &huge, &opts),
        [format!(
            "huge.yaml:1:1: error: file is {} bytes, above the limit of {} bytes per file",
            opts.max_file_bytes + 1,
            opts.max_file_bytes
        )]
    );

    // Too many files.
    let small = LoadOptions {
        max_files: 3,
        ..LoadOptions::default()
    };
    let files: Vec<SourceFile> = (0..5)
        .map(|i| SourceFile {
            path: format!("svc-{i}.yaml"),
            bytes: SERVICE
                .replace("echo", &format!("echo-{i}"))
                .into_bytes()
                .into(),
        })
        .collect();
    assert_eq!(
        findings(load_files(&files, &small)),
        ["svc-3.yaml:1:1: error: the revision holds more than 3 manifest files; this one and those after it are not read"]
    );

    // Too many bytes in total.
    let small = LoadOptions {
        max_total_bytes: 200,
        ..LoadOptions::default()
    };
    assert_eq!(
        findings(load_files(&files, &small)),
        ["svc-2.yaml:1:1: error: the manifest files add up to more than 200 bytes at this file; the revision is refused"]
    );

    // The same limits on a folder, from file sizes before reading.
    let dir = tempfile::tempdir().expect("temp dir");
    for f in &files {
        fs::write(dir.path().join(&f.path), &f.bytes).expect("write");
    }
    fs::write(dir.path().join("big.yaml"), vec![b'#'; 5000]).expect("write");
    let small = LoadOptions {
        max_file_bytes: 4096,
        ..LoadOptions::default()
    };
    assert_eq!(
        findings(read_dir(dir.path(), &small).map(|_| Revision::default())),
        ["big.yaml:1:1: error: file is 5000 bytes, above the limit of 4096 bytes per file"]
    );
    let small = LoadOptions {
        max_files: 2,
        ..LoadOptions::default()
    };
    assert_eq!(
        findings(read_dir(dir.path(), &small).map(|_| Revision::default())),
        ["svc-1.yaml:1:1: error: the revision holds more than 2 manifest files; this one and those after it are not read"]
    );
}

// 4: deep nesting, refused at the limit without recursion.
#[test]
fn deep_nesting_is_refused() {
    let opts = LoadOptions::default();
    let flow = "[".repeat(200_000);
    let out = load_one("flow.yaml", flow.as_bytes(), &opts);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].starts_with("flow.yaml:1:"), "{out:?}");
    assert!(
        out[0].ends_with("error: nesting deeper than 64 levels"),
        "{out:?}"
    );

    let flow_maps = "{a: ".repeat(50_000);
    let out = load_one("maps.yaml", flow_maps.as_bytes(), &opts);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].ends_with("error: nesting deeper than 64 levels"),
        "{out:?}"
    );

    let mut block = String::new();
    for depth in 0..500 {
        block.push_str(&" ".repeat(depth));
        block.push_str("k:\n");
    }
    let out = load_one("block.yaml", block.as_bytes(), &opts);
    assert_eq!(
        out,
        ["block.yaml:65:66: error: nesting deeper than 64 levels"]
    );
}

// 5: the billion-laughs fixture is refused at its first anchor, before any alias is expanded.
#[test]
fn alias_bomb_is_refused_at_the_first_anchor() {
    let out = load_fixture(&fixtures().join("05-billion-laughs.yaml"));
    assert_eq!(out.len(), 1);
    assert!(
        out[0].starts_with("05-billion-laughs.yaml:2:7: error: YAML anchors"),
        "{out:?}"
    );

    // A wider bomb, generated: still one error, from the first anchor.
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..30 {
        let refs = vec![format!("*a{}", i - 1); 50].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let out = load_one("bomb.yaml", text.as_bytes(), &LoadOptions::default());
    assert_eq!(out.len(), 1);
    assert!(
        out[0].starts_with("bomb.yaml:1:9: error: YAML anchors"),
        "{out:?}"
    );
}

// 18: symlinks, created in a temporary folder.
#[cfg(unix)]
#[test]
fn symlinks_leaving_the_folder_absolute_or_looping_are_refused() {
    use std::os::unix::fs::symlink;

    let outside = tempfile::tempdir().expect("temp dir");
    fs::write(outside.path().join("secret.yaml"), SERVICE).expect("write");
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("repo");
    fs::create_dir_all(root.join("sub")).expect("mkdir");
    fs::write(root.join("echo.yaml"), SERVICE).expect("write");
    // Followed: relative, inside the folder.
    symlink("../echo.yaml", root.join("sub/alias.yml")).expect("symlink");
    // Refused.
    symlink(
        outside.path().join("secret.yaml"),
        root.join("absolute.yaml"),
    )
    .expect("symlink");
    symlink("../../../../../../../../../etc", root.join("etc")).expect("symlink");
    fs::write(dir.path().join("sibling.yaml"), SERVICE).expect("write");
    symlink("../sibling.yaml", root.join("leaves.yaml")).expect("symlink");
    symlink("..", root.join("sub/up")).expect("symlink");
    symlink("self.yaml", root.join("self.yaml")).expect("symlink");
    // Ignored: not a manifest name and not a folder.
    symlink("/nonexistent", root.join("notes.txt")).expect("symlink");

    let out = findings(read_dir(&root, &LoadOptions::default()).map(|_| Revision::default()));
    let outside_target = format!(
        "{:?}",
        outside.path().join("secret.yaml").display().to_string()
    );
    assert_eq!(
        out,
        [
            format!(
                "absolute.yaml:1:1: error: symlink to the absolute path {outside_target} is refused: only relative symlinks that stay inside the folder are followed"
            ),
            "etc:1:1: error: symlink to \"../../../../../../../../../etc\" is refused: it leaves the manifest folder".to_string(),
            "leaves.yaml:1:1: error: symlink to \"../sibling.yaml\" is refused: it leaves the manifest folder".to_string(),
            "self.yaml:1:1: error: symlink to \"self.yaml\" cannot be followed (a loop, or a missing target): Too many levels of symbolic links (os error 40)".to_string(),
            "sub/up:1:1: error: symlink to \"..\" is refused: it loops back to a folder that contains it".to_string(),
        ]
    );

    // Without the bad links, the relative one inside the folder is followed.
    for bad in ["absolute.yaml", "etc", "leaves.yaml", "sub/up", "self.yaml"] {
        fs::remove_file(root.join(bad)).expect("remove");
    }
    let files = read_dir(&root, &LoadOptions::default()).expect("readable");
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["echo.yaml", "sub/alias.yml"]);
}

// 19: a revision without any Service.
#[test]
fn empty_revision_is_refused_unless_allowed() {
    let folder = fixtures().join("19-no-service");
    assert_eq!(
        findings(load_dir(&folder, &LoadOptions::default())),
        [".:1:1: error: revision holds no Service; pass --allow-empty to serve it"]
    );
    let allowed = LoadOptions {
        allow_empty: true,
        ..LoadOptions::default()
    };
    let rev = load_dir(&folder, &allowed).expect("allowed");
    assert!(rev.services.is_empty());
    // No files at all is the same.
    assert_eq!(
        findings(load_files(&[], &LoadOptions::default())),
        [".:1:1: error: revision holds no Service; pass --allow-empty to serve it"]
    );
}

// 20: editor leftovers, hidden files and non-YAML files are ignored.
#[test]
fn leftovers_hidden_and_other_files_are_ignored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    fs::write(root.join("echo.yaml"), SERVICE).expect("write");
    let garbage: &[u8] = b"\x00\xFF{{{ not yaml: [";
    for name in [
        "echo.yaml~",
        ".echo.yaml.swp",
        "#echo.yaml#",
        ".hidden.yaml",
        "README.md",
        "notes.txt",
        "echo.yaml.orig",
        "echo.json",
    ] {
        fs::write(root.join(name), garbage).expect("write");
    }
    fs::create_dir_all(root.join(".git/objects")).expect("mkdir");
    fs::write(root.join(".git/config.yaml"), garbage).expect("write");
    fs::write(root.join(".git/objects/x.yml"), garbage).expect("write");
    fs::create_dir_all(root.join(".github/workflows")).expect("mkdir");
    fs::write(root.join(".github/workflows/ci.yaml"), garbage).expect("write");

    let files = read_dir(root, &LoadOptions::default()).expect("readable");
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["echo.yaml"]);
    let rev = load_dir(root, &LoadOptions::default()).expect("loads");
    assert_eq!(rev.services.len(), 1);
    assert!(rev.warnings.is_empty());
}
