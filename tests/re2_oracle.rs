//! Sluice's RE2 program sizes against the real RE2.
//!
//! Envoy refuses a route regex whose RE2 program is larger than 100 instructions; Sluice refuses
//! it first, at load time, from its own replay of RE2 (`src/manifest/re2.rs`). That replay must
//! never come out below what RE2 reports (a regex would pass Sluice and be NACKed by Envoy), and
//! should not come out much above it (a regex Envoy takes would be refused). Here a corpus of
//! hand-written route regexes and of regexes from a seeded generator goes through both, RE2 being
//! the Python binding of the C++ library (PyPI package google-re2, whose `programsize` is
//! `RE2::ProgramSize()`, what Envoy checks).
//!
//! The interpreter is `$SLUICE_PYTHON`, else `.venv/bin/python`; scripts/test installs
//! google-re2 there. Without it this test fails: it does not skip.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use sluice::manifest::re2;

/// No more than this much above RE2, for the regexes here.
fn tight_enough(estimate: usize, real: usize) -> bool {
    estimate as f64 <= real as f64 * 1.15 + 4.0
}

/// Regexes as routes and header matches use them, and the corners of RE2's compiler.
const HANDWRITTEN: &[&str] = &[
    // Paths.
    "^/v1/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    "/users/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "^/canary/(alpha|beta|gamma|delta|epsilon|zeta)-[0-9]{1,16}$",
    "/api/v[0-9]+/users/[a-z0-9-]+/orders/.*",
    "/static/.*\\.(css|js|png)",
    "^/static/.*\\.(css|js|png|jpg|jpeg|gif|svg|woff2?)$",
    "^/v1/[^/]+$",
    "^/v1/[^/]+/items/[^/]+$",
    "^/api/v[0-9]+/users/[0-9]+$",
    "/users/\\d+",
    "^/users/\\d+/posts/\\d+$",
    "foo.bar/[0-9]{1,4}",
    "(?i)/Admin/.*",
    "(?i)^/admin(/.*)?$",
    "(?i)^/API/V1/",
    "^/(en|fr|de|es|it|pt|nl|sv|da|fi|no|pl)/",
    "^/(?:en|fr|de)(?:-[A-Z]{2})?/products/[0-9]+$",
    "^/shop/(?P<id>[0-9]{1,10})$",
    "^/reports/\\d{4}-\\d{2}-\\d{2}\\.csv$",
    "^/files/.+\\.(?i:pdf|docx?)$",
    "^/[a-z]+(/[a-z]+)*/?$",
    "^/healthz?$",
    "/$",
    "^/$",
    "^/api/",
    "/api",
    "^/v[12]/",
    "^/orders/[A-Z]{3}-[0-9]{6}$",
    "^/p/[A-Za-z0-9_-]{11}$",
    "^/tenants/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/",
    "^/download/[^/]+\\.tar\\.gz$",
    "^/ж/[а-я]+$",
    "^/café/",
    "(?i)straße",
    "^/中文/.*",
    // Header, query and method values.
    "^Bearer [A-Za-z0-9._~+/-]+=*$",
    "^(GET|POST|PUT|DELETE|PATCH)$",
    "^(?:GET|HEAD)$",
    ".*(Mobile|Android|iPhone).*",
    "(?i).*(bot|crawler|spider).*",
    "^[a-z]{2}(-[A-Z]{2})?$",
    "^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$",
    "^v?\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.-]+)?$",
    "^(?:[0-9]{1,3}\\.){3}[0-9]{1,3}$",
    "(?:[0-9]{1,3}(?:\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}",
    "^application/(json|xml)(;.*)?$",
    "^gzip|deflate$",
    "^[0-9a-f]{32}$",
    "^[0-9a-fA-F]{24}$",
    "^[\\w-]+$",
    "[\\w-]+",
    "^\\s*$",
    "^\\S+$",
    "\\bcanary\\b",
    "\\Bx",
    "(?m)^x$",
    "(?s).+",
    "(?U)a+b",
    "a+?b*?c??",
    "^pkg\\.v1\\.Service$",
    "^Get.*",
    // The examples the estimator used to get wrong.
    "(?i)[a-z]{2,4}",
    ".{10}",
    "\\p{Greek}",
    ".*",
    "^$",
    ".",
    // Classes, folding and Unicode.
    "(?i)k",
    "(?i)[k]",
    "[Kk]",
    "(?i)[^k]",
    "(?i)ſ",
    "(?i)\\w+",
    "(?i)\\W",
    "(?i)[[:upper:]]",
    "[[:^alpha:]]",
    "[\\s\\S]",
    "[^\\n]",
    "[^a]",
    "[^\\x00-\\x7F]",
    "[\\x{80}-\\x{10FFFF}]",
    "[\\x{100}-\\x{2FF}]",
    "[\\x{E000}-\\x{F8FF}]",
    "\\p{Han}",
    "\\PN",
    "(?i)é",
    "(?i)[а-я]",
    "é|e",
    "(?s:.)",
    "(?s:.)|a|b",
    "a|(?s:.)",
    // Repetition corners.
    "a{1000}",
    "(?:a{10}){100}",
    "[0-9]{1,3}[0-9]",
    "a*a",
    "a+a*b",
    "x*x+x?x{2}",
    "ab*b",
    "(?:^)*",
    "(?:^){3}",
    "(?:^$){3}",
    "(?:^){2,}",
    "\\b*",
    "(?:|a)*",
    "(a|)+",
    "(?:a?)*",
    "(?:a*)*",
    "(?:a*)+",
    "(?:a+)?",
    "(?:a*){2,3}",
    "(?:(a)|b)*",
    "(?:a|b|)*c",
    "(?:)",
    "()",
    "a(?:)b",
    "(?:|||)",
    // Factoring.
    "abc|abd",
    "ab|ac|ad|ae",
    "abc|abd|aef|bcx|bcy",
    "[0-9]{3}a|[0-9]{3}b",
    "^a|^b",
    "x(?:ab|ac)",
    "^x(?:ab|ac)y",
    "(?i)ab1|ab2",
    "a(?i)b|c",
    "foo|foobar|foobaz",
    "\\d+|\\d+\\.\\d+",
];

/// A small deterministic generator (splitmix64), so every run tries the same regexes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Regexes from RE2's grammar: literals (ASCII and not), classes and their negations, Perl and
/// Unicode classes, case-insensitive groups, anchors, alternations, nested groups and counted
/// repetition, large counts included.
struct Generator {
    rng: Rng,
    /// Large counts go outside groups only: RE2 refuses nested counts multiplying past 1000.
    in_group: bool,
}

impl Generator {
    fn regex(&mut self, depth: usize) -> String {
        let n = if self.rng.one_in(3) {
            1 + self.rng.below(4)
        } else {
            1
        };
        let branches: Vec<String> = (0..n).map(|_| self.concat(depth)).collect();
        branches.join("|")
    }

    fn concat(&mut self, depth: usize) -> String {
        let n = 1 + self.rng.below(4);
        (0..n).map(|_| self.piece(depth)).collect()
    }

    fn piece(&mut self, depth: usize) -> String {
        let (atom, small) = self.atom(depth);
        // An operator after nothing, or after another operator, is a syntax error.
        if atom.is_empty() || self.rng.one_in(2) {
            return atom;
        }
        let outer_group = self.in_group;
        let count = |rng: &mut Rng| -> usize {
            if small && !outer_group && rng.one_in(6) {
                [16, 50, 100, 200, 1000][rng.below(5)]
            } else {
                rng.below(5)
            }
        };
        let op = match self.rng.below(6) {
            0 => "*".to_string(),
            1 => "+".to_string(),
            2 => "?".to_string(),
            3 => format!("{{{}}}", count(&mut self.rng).max(1)),
            4 => format!("{{{},}}", count(&mut self.rng)),
            _ => {
                let a = count(&mut self.rng);
                let b = count(&mut self.rng);
                format!("{{{},{}}}", a.min(b), a.max(b))
            }
        };
        let lazy = if self.rng.one_in(5) { "?" } else { "" };
        format!("{atom}{op}{lazy}")
    }

    /// An atom, and whether it is small enough to repeat a thousand times.
    fn atom(&mut self, depth: usize) -> (String, bool) {
        let choice = self.rng.below(if depth > 0 { 12 } else { 10 });
        match choice {
            0..=2 => (
                self.rng
                    .pick(&[
                        "a",
                        "b",
                        "k",
                        "s",
                        "x",
                        "0",
                        "9",
                        "/",
                        "-",
                        "_",
                        "\\.",
                        "api",
                        "v1",
                        "users",
                        "K",
                        "é",
                        "ß",
                        "ж",
                        "中",
                        "😀",
                        "\\x{212A}",
                    ])
                    .to_string(),
                true,
            ),
            3..=4 => (self.class(), true),
            5 => (
                self.rng
                    .pick(&[
                        "\\d",
                        "\\w",
                        "\\s",
                        "\\D",
                        "\\W",
                        "\\S",
                        "[[:alpha:]]",
                        "[[:punct:]]",
                    ])
                    .to_string(),
                true,
            ),
            6 => (
                self.rng
                    .pick(&[".", ".", "(?s:.)", "\\p{Greek}", "\\p{Cyrillic}", "\\pN"])
                    .to_string(),
                false,
            ),
            7 => (
                self.rng
                    .pick(&["^", "$", "\\b", "\\B", "\\A", "\\z", "(?m:^)", "(?m:$)"])
                    .to_string(),
                true,
            ),
            8 => (
                format!(
                    "(?i:{})",
                    self.rng.pick(&["a", "k", "s", "[a-z]", "x1", "é", "/Ab"])
                ),
                true,
            ),
            9 => ("".to_string(), true),
            _ => {
                let in_group = std::mem::replace(&mut self.in_group, true);
                let inner = self.regex(depth - 1);
                self.in_group = in_group;
                let open = self.rng.pick(&["(", "(?:", "(?:", "(?i:", "(?s:", "(?U:"]);
                (format!("{open}{inner})"), false)
            }
        }
    }

    fn class(&mut self) -> String {
        let mut class = String::from("[");
        if self.rng.one_in(3) {
            class.push('^');
        }
        for _ in 0..1 + self.rng.below(3) {
            class.push_str(self.rng.pick(&[
                "a-z",
                "A-Z",
                "0-9",
                "a-f",
                "A-F",
                "_",
                "\\-",
                "/",
                ".",
                "k",
                "\\d",
                "\\w",
                "\\s",
                "[:digit:]",
                "[:upper:]",
                "\\x{370}-\\x{3FF}",
                "\\x{4E00}-\\x{4E2F}",
                "é-ü",
                "\\x{80}-\\x{7FF}",
                "\\x{1F600}-\\x{1F64F}",
                "!-/",
                "\\x00-\\x1F",
            ]));
        }
        if self.rng.one_in(4) {
            return format!("(?i:{class}])");
        }
        class.push(']');
        class
    }
}

fn corpus() -> Vec<String> {
    let mut corpus: Vec<String> = HANDWRITTEN.iter().map(|p| p.to_string()).collect();
    let mut generator = Generator {
        rng: Rng(0x5EED_0F51_u64),
        in_group: false,
    };
    let mut generated = 0;
    while generated < 250 {
        let depth = generator.rng.below(3);
        let mut pattern = generator.regex(depth);
        if generator.rng.one_in(4) {
            pattern = format!("^{pattern}");
        }
        if generator.rng.one_in(4) {
            pattern.push('$');
        }
        if generator.rng.one_in(6) {
            pattern = format!("(?i){pattern}");
        }
        if pattern.len() <= 200 && !corpus.contains(&pattern) {
            corpus.push(pattern);
            generated += 1;
        }
    }
    corpus
}

/// Reads JSON strings, one a line, and prints RE2's program size or error for each.
const RE2_SIZES: &str = r#"
import json, sys
import re2
for line in sys.stdin:
    pattern = json.loads(line)
    try:
        print(json.dumps({"size": re2.compile(pattern).programsize}))
    except Exception as e:
        print(json.dumps({"error": str(e)}))
"#;

fn python() -> PathBuf {
    match std::env::var_os("SLUICE_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    }
}

/// RE2's program size for each pattern, or its error.
fn re2_sizes(patterns: &[String]) -> Vec<Result<usize, String>> {
    let python = python();
    let how = "set SLUICE_PYTHON to a Python with google-re2, or run scripts/test, which installs \
               it into .venv";
    let probe = Command::new(&python)
        .args(["-c", "import re2; re2.compile('a').programsize"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {how}", python.display()));
    assert!(
        probe.status.success(),
        "{} has no google-re2 (import re2 with programsize failed: {}); {how}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr).trim()
    );

    let mut child = Command::new(&python)
        .args(["-c", RE2_SIZES])
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let mut input = String::new();
    for pattern in patterns {
        input.push_str(&serde_json::to_string(pattern).unwrap());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "the RE2 script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Result<usize, String>> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            match v["size"].as_u64() {
                Some(size) => Ok(size as usize),
                None => Err(v["error"].as_str().unwrap_or(line).to_string()),
            }
        })
        .collect();
    assert_eq!(results.len(), patterns.len(), "one answer per pattern");
    results
}

#[test]
fn estimates_match_re2() {
    let corpus = corpus();
    let real = re2_sizes(&corpus);

    let mut violations = Vec::new();
    let mut compared = 0;
    let mut exact = 0;
    let mut refused = Vec::new();
    let mut both_refuse = 0;
    let mut worst = (1.0f64, String::from("none"));
    for (pattern, real) in corpus.iter().zip(real) {
        let estimate = re2::pattern_program_size(pattern);
        match (estimate, real) {
            (Ok(estimate), Ok(real)) => {
                compared += 1;
                if estimate == real {
                    exact += 1;
                }
                let ratio = estimate as f64 / real as f64;
                if ratio > worst.0 {
                    worst = (ratio, format!("{pattern:?}"));
                }
                if estimate < real {
                    violations.push(format!(
                        "{pattern:?}: real {real}, estimate {estimate} (below RE2)"
                    ));
                } else if !tight_enough(estimate, real) {
                    violations.push(format!(
                        "{pattern:?}: real {real}, estimate {estimate} (above real*1.15+4)"
                    ));
                }
            }
            (Ok(estimate), Err(error)) => {
                // RE2 also gives up on programs too large to compile; Sluice refuses those anyway.
                if !(error.contains("pattern too large") && estimate > re2::MAX_PROGRAM_SIZE) {
                    violations.push(format!(
                        "{pattern:?}: RE2 refuses it ({error}), Sluice accepts it \
                         (estimate {estimate})"
                    ));
                }
            }
            (Err(error), Ok(real)) => refused.push(format!("{pattern:?} (RE2: {real}): {error}")),
            (Err(_), Err(_)) => both_refuse += 1,
        }
    }

    let mut report = String::new();
    for v in &violations {
        let _ = writeln!(report, "  {v}");
    }
    println!(
        "{} regexes: {compared} compared with RE2 ({exact} exact, largest estimate/real {:.3}: \
         {}), {both_refuse} refused by both, {} refused by Sluice alone:",
        corpus.len(),
        worst.0,
        worst.1,
        refused.len()
    );
    for r in &refused {
        println!("  {r}");
    }
    assert!(
        violations.is_empty(),
        "{} of {compared} estimates are off:\n{report}",
        violations.len()
    );
    assert!(
        compared >= 150,
        "only {compared} regexes were compared with RE2"
    );
}
