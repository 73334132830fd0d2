//! YAML text to a positioned tree, with the hard limits a control plane needs before it trusts
//! a file from Git.
//!
//! The tree is built from yaml-rust2's event parser with an explicit stack (no recursion, so a
//! deep document cannot overflow ours), and refuses what Kubernetes manifests never need but an
//! attacker or an accident can produce:
//!
//! - anchors and aliases (`&a`, `*a`): refused at the first anchor, so a "billion laughs" payload
//!   costs nothing;
//! - tags (`!!binary`, `!custom`): refused, since they change what a scalar means;
//! - duplicate keys in one mapping: an error naming both lines (many parsers keep the last one
//!   silently, which hides a typo);
//! - nesting deeper than the depth limit;
//! - bytes that are not UTF-8, NUL bytes and other characters YAML does not allow, and UTF-16:
//!   an error with the byte offset.
//!
//! A UTF-8 byte order mark at the very start of a file is accepted and skipped (editors on
//! Windows write one, and it carries no meaning in UTF-8); one anywhere else is an error.

use std::collections::HashMap;
use std::sync::Arc;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::{Diagnostic, Pos};

/// How a scalar was written. Only plain scalars are open to YAML's implicit typing
/// (`yes`, `0777`, `~`); quoted and block scalars are always strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarStyle {
    Plain,
    /// Single- or double-quoted, or a block scalar (`|`, `>`).
    Quoted,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// Entries in file order. Keys are always [`NodeKind::Scalar`] and unique (by text).
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
    Scalar {
        style: ScalarStyle,
        text: String,
    },
}

/// One node of a document, with the 1-based line and column where it starts.
///
/// An empty value (`key:` with nothing after it) is a plain scalar with empty text, positioned
/// at its key, since that is where a reader looks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub line: usize,
    pub column: usize,
    pub kind: NodeKind,
}

impl Node {
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A plain scalar that YAML reads as null: empty, `~`, `null`, `Null`, `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { style: ScalarStyle::Plain, text } if is_null_text(text))
    }

    /// The value of `key` if this is a mapping holding it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node of `key` if this is a mapping holding it.
    pub fn get_key(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(k, _)| k),
            _ => None,
        }
    }

    pub fn pos(&self, file: &Arc<str>) -> Pos {
        Pos {
            file: file.clone(),
            line: self.line,
            column: self.column,
        }
    }

    /// `a mapping`, `a list`, `null`, `a string`: for messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Map(_) => "a mapping",
            NodeKind::Seq(_) => "a list",
            NodeKind::Scalar { .. } if self.is_null() => "null",
            NodeKind::Scalar { .. } => "a scalar",
        }
    }
}

pub(crate) fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// One YAML document of a file. Empty documents (only comments, or a stray `---`) are dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub root: Node,
}

/// Limits enforced while parsing one file.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Larger files are refused before parsing.
    pub max_bytes: usize,
    /// Mappings and lists nested deeper than this are refused.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 2 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// Past this many errors in one file the rest are not worth reading.
const MAX_ERRORS_PER_FILE: usize = 50;

/// Parses every document of `bytes`. `file` names the file in positions.
///
/// Syntax errors, anchors, aliases and the limits stop the parse; duplicate keys, tags and
/// non-scalar keys are collected so that one run shows them all.
pub fn parse(
    file: &Arc<str>,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<Document>, Vec<Diagnostic>> {
    if bytes.len() > limits.max_bytes {
        return Err(vec![Diagnostic::error(
            at(file, 1, 1),
            format!(
                "file is {} bytes, above the limit of {} bytes per file",
                bytes.len(),
                limits.max_bytes
            ),
        )]);
    }
    let text = decode(file, bytes).map_err(|d| vec![d])?;
    // yaml-rust2 has internal assertions; should input ever reach one, that file is refused
    // rather than the whole process going down with it.
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Builder::new(file, limits.max_depth).run(text)
    }));
    built.unwrap_or_else(|_| {
        Err(vec![Diagnostic::error(
            at(file, 1, 1),
            "the YAML parser failed on this file (an internal error); simplify the file and report it",
        )])
    })
}

fn at(file: &Arc<str>, line: usize, column: usize) -> Pos {
    Pos {
        file: file.clone(),
        line,
        column,
    }
}

/// Line and column (1-based, in characters) of a byte offset in bytes known valid up to it.
fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let prefix = &bytes[..offset.min(bytes.len())];
    let line_start = prefix
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + prefix.iter().filter(|&&b| b == b'\n').count();
    let column = 1 + String::from_utf8_lossy(&prefix[line_start..])
        .chars()
        .count();
    (line, column)
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Checks the encoding and returns the text to parse (without a leading UTF-8 BOM).
fn decode<'a>(file: &Arc<str>, bytes: &'a [u8]) -> Result<&'a str, Diagnostic> {
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(Diagnostic::error(
            at(file, 1, 1),
            "file is UTF-16 (byte order mark at byte offset 0); save it as UTF-8",
        ));
    }
    // UTF-16 without a BOM shows as a NUL next to every ASCII character.
    if bytes.len() >= 2 && (bytes[0] == 0) != (bytes[1] == 0) {
        return Err(Diagnostic::error(
            at(file, 1, 1),
            "file looks like UTF-16 (NUL byte at byte offset 0 or 1); save it as UTF-8",
        ));
    }
    let skip = if bytes.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else {
        0
    };
    let body = &bytes[skip..];
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            let offset = skip + e.valid_up_to();
            let (line, column) = line_col(bytes, offset);
            return Err(Diagnostic::error(
                at(file, line, column),
                format!(
                    "invalid UTF-8 at byte offset {offset} (byte 0x{:02X}); manifests must be UTF-8",
                    bytes.get(offset).copied().unwrap_or(0)
                ),
            ));
        }
    };
    for (i, c) in text.char_indices() {
        if is_yaml_printable(c) {
            continue;
        }
        let offset = skip + i;
        let (line, column) = line_col(bytes, offset);
        let message = match c {
            '\0' => format!("NUL byte at byte offset {offset}; is this a binary file?"),
            '\u{FEFF}' => format!(
                "byte order mark at byte offset {offset}; only one at the very start of a file is accepted"
            ),
            _ => format!(
                "character U+{:04X} at byte offset {offset} is not allowed in YAML",
                c as u32
            ),
        };
        return Err(Diagnostic::error(at(file, line, column), message));
    }
    Ok(text)
}

/// YAML 1.2 `c-printable`.
fn is_yaml_printable(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
        && c != '\u{FEFF}'
}

enum Frame {
    Seq {
        line: usize,
        column: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        column: usize,
        /// Set once the first key arrives: a block mapping's start event points after the first
        /// key, so the first key's position is the one a reader expects.
        positioned: bool,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        /// Key text to the line of its first occurrence.
        seen: HashMap<String, usize>,
    },
}

struct Builder<'f> {
    file: &'f Arc<str>,
    max_depth: usize,
    stack: Vec<Frame>,
    docs: Vec<Document>,
    errors: Vec<Diagnostic>,
}

/// Why building stopped early.
struct Fatal;

impl<'f> Builder<'f> {
    fn new(file: &'f Arc<str>, max_depth: usize) -> Self {
        Builder {
            file,
            max_depth,
            stack: Vec::new(),
            docs: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn run(mut self, text: &str) -> Result<Vec<Document>, Vec<Diagnostic>> {
        let mut parser = Parser::new(text.chars());
        loop {
            let (event, mark) = match parser.next_token() {
                Ok(next) => next,
                Err(e) => {
                    let m = e.marker();
                    let info = e.info();
                    let message = if info == "recursion limit exceeded" {
                        format!("nesting deeper than {} levels", self.max_depth)
                    } else if info.contains("quoted scalar") {
                        format!("YAML syntax error: {info} (is a quote left open?)")
                    } else {
                        format!("YAML syntax error: {info}")
                    };
                    self.errors.push(Diagnostic::error(
                        at(self.file, m.line(), m.col() + 1),
                        message,
                    ));
                    break;
                }
            };
            match self.event(event, mark) {
                Ok(true) => {}
                Ok(false) | Err(Fatal) => break,
            }
            if self.errors.len() >= MAX_ERRORS_PER_FILE {
                break;
            }
        }
        if self.errors.is_empty() {
            Ok(self.docs)
        } else {
            Err(self.errors)
        }
    }

    fn error(&mut self, line: usize, column: usize, message: String) {
        self.errors
            .push(Diagnostic::error(at(self.file, line, column), message));
    }

    fn check_tag(&mut self, tag: Option<Tag>, line: usize, column: usize) {
        if let Some(tag) = tag {
            let shown = if tag.handle == "tag:yaml.org,2002:" {
                format!("!!{}", tag.suffix)
            } else {
                format!("{}{}", tag.handle, tag.suffix)
            };
            self.error(
                line,
                column,
                format!("YAML tag {shown} is not supported; remove it (a tag changes what a value means)"),
            );
        }
    }

    fn check_anchor(&mut self, anchor: usize, line: usize, column: usize) -> Result<(), Fatal> {
        if anchor != 0 {
            self.error(
                line,
                column,
                "YAML anchors (&name) are refused: write the value out (anchors and aliases let a small file expand without bound)".to_string(),
            );
            return Err(Fatal);
        }
        Ok(())
    }

    fn push_frame(&mut self, frame: Frame, line: usize, column: usize) -> Result<(), Fatal> {
        if self.stack.len() >= self.max_depth {
            self.error(
                line,
                column,
                format!("nesting deeper than {} levels", self.max_depth),
            );
            return Err(Fatal);
        }
        self.stack.push(frame);
        Ok(())
    }

    /// Handles one event; `Ok(false)` at the end of the stream.
    fn event(&mut self, event: Event, mark: Marker) -> Result<bool, Fatal> {
        let (line, column) = (mark.line(), mark.col() + 1);
        match event {
            Event::StreamEnd => return Ok(false),
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
            Event::Alias(_) => {
                self.error(
                    line,
                    column,
                    "YAML aliases (*name) are refused: write the value out (aliases let a small file expand without bound)".to_string(),
                );
                return Err(Fatal);
            }
            Event::Scalar(mut text, style, anchor, tag) => {
                // Trees are kept for the life of their file (the parse cache): no spare
                // capacity is kept with them.
                text.shrink_to_fit();
                self.check_anchor(anchor, line, column)?;
                self.check_tag(tag, line, column);
                let style = match style {
                    TScalarStyle::Plain => ScalarStyle::Plain,
                    _ => ScalarStyle::Quoted,
                };
                let mut node = Node {
                    line,
                    column,
                    kind: NodeKind::Scalar { style, text },
                };
                // An empty value is reported at its key.
                if node.scalar() == Some("") && style == ScalarStyle::Plain {
                    if let Some(Frame::Map { key: Some(key), .. }) = self.stack.last() {
                        node.line = key.line;
                        node.column = key.column;
                    }
                }
                self.complete(node);
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_anchor(anchor, line, column)?;
                self.check_tag(tag, line, column);
                let frame = Frame::Seq {
                    line,
                    column,
                    items: Vec::new(),
                };
                self.push_frame(frame, line, column)?;
            }
            Event::MappingStart(anchor, tag) => {
                self.check_anchor(anchor, line, column)?;
                self.check_tag(tag, line, column);
                let frame = Frame::Map {
                    line,
                    column,
                    positioned: false,
                    entries: Vec::new(),
                    key: None,
                    seen: HashMap::new(),
                };
                self.push_frame(frame, line, column)?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq {
                        line,
                        column,
                        mut items,
                    }) => Node {
                        line,
                        column,
                        kind: NodeKind::Seq({
                            items.shrink_to_fit();
                            items
                        }),
                    },
                    Some(Frame::Map {
                        line,
                        column,
                        mut entries,
                        ..
                    }) => Node {
                        line,
                        column,
                        kind: NodeKind::Map({
                            entries.shrink_to_fit();
                            entries
                        }),
                    },
                    // The parser balances its events; should it not, the document is dropped.
                    None => return Ok(true),
                };
                self.complete(node);
            }
        }
        Ok(true)
    }

    /// Places a finished node into its parent, or makes it a document.
    fn complete(&mut self, node: Node) {
        let mut duplicate = None;
        let mut complex_key = None;
        match self.stack.last_mut() {
            None => {
                if !node.is_null() {
                    self.docs.push(Document { root: node });
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                line,
                column,
                positioned,
                entries,
                key,
                seen,
            }) => match key.take() {
                None => {
                    if !*positioned {
                        *positioned = true;
                        *line = node.line;
                        *column = node.column;
                    }
                    match node.scalar() {
                        Some(text) => {
                            if let Some(first) = seen.get(text) {
                                duplicate =
                                    Some((text.to_string(), *first, node.line, node.column));
                            } else {
                                seen.insert(text.to_string(), node.line);
                            }
                        }
                        None => complex_key = Some((node.line, node.column)),
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
        if let Some((text, first, line, column)) = duplicate {
            self.error(
                line,
                column,
                format!("duplicate key \"{text}\" in one mapping: first at line {first}, again at line {line}"),
            );
        }
        if let Some((line, column)) = complex_key {
            self.error(
                line,
                column,
                "a mapping key must be a plain value, not a mapping or a list".to_string(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<str> {
        Arc::from("t.yaml")
    }

    fn parse_str(text: &str) -> Result<Vec<Document>, Vec<Diagnostic>> {
        parse(&file(), text.as_bytes(), &Limits::default())
    }

    fn errors(text: &[u8]) -> Vec<String> {
        match parse(&file(), text, &Limits::default()) {
            Ok(docs) => panic!("expected errors, got {docs:?}"),
            Err(ds) => ds.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn scalar(node: &Node) -> (&str, ScalarStyle) {
        match &node.kind {
            NodeKind::Scalar { style, text } => (text, *style),
            other => panic!("not a scalar: {other:?}"),
        }
    }

    /// Parse caches keep a file's trees as long as the file is unchanged: a tree holds no
    /// spare capacity (a growing list doubles it; a scanned scalar's buffer is over-sized).
    #[test]
    fn a_parsed_tree_holds_no_spare_capacity() {
        fn spare(node: &Node) -> usize {
            match &node.kind {
                NodeKind::Scalar { text, .. } => text.capacity() - text.len(),
                NodeKind::Seq(items) => {
                    items.capacity() - items.len() + items.iter().map(spare).sum::<usize>()
                }
                NodeKind::Map(entries) => {
                    entries.capacity() - entries.len()
                        + (entries.iter())
                            .map(|(k, v)| spare(k) + spare(v))
                            .sum::<usize>()
                }
            }
        }
        let docs = parse_str(
            "kind: HTTPRoute\nmetadata: {name: a, namespace: b, labels: {x: y}}\nspec:\n  \
             parentRefs: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}]\n  \
             rules:\n  - backendRefs:\n    - {name: a-v1, port: 8080, weight: 90}\n    \
             - {name: a-v2, port: 8080, weight: 10}\n",
        )
        .expect("parses");
        assert_eq!(docs.len(), 1);
        assert_eq!(spare(&docs[0].root), 0);
    }

    #[test]
    fn tree_has_positions_order_and_styles() {
        let docs = parse_str("a: 1\nb:\n  - x\n  - 'y'\nc: {d: \"e\"}\nempty:\n").unwrap();
        assert_eq!(docs.len(), 1);
        let root = &docs[0].root;
        assert_eq!((root.line, root.column), (1, 1));
        let NodeKind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        let keys: Vec<_> = entries.iter().map(|(k, _)| k.scalar().unwrap()).collect();
        assert_eq!(keys, ["a", "b", "c", "empty"]);
        let a = root.get("a").unwrap();
        assert_eq!((a.line, a.column), (1, 4));
        assert_eq!(scalar(a), ("1", ScalarStyle::Plain));
        let b = root.get("b").unwrap();
        let NodeKind::Seq(items) = &b.kind else {
            panic!("not a seq")
        };
        assert_eq!((b.line, b.column), (3, 3));
        assert_eq!((items[1].line, items[1].column), (4, 5));
        assert_eq!(scalar(&items[1]), ("y", ScalarStyle::Quoted));
        let d = root.get("c").unwrap().get("d").unwrap();
        assert_eq!(scalar(d), ("e", ScalarStyle::Quoted));
        assert_eq!((d.line, d.column), (5, 8));
        // An empty value sits at its key.
        let empty = root.get("empty").unwrap();
        assert!(empty.is_null());
        assert_eq!((empty.line, empty.column), (6, 1));
    }

    #[test]
    fn block_map_is_positioned_at_its_first_key() {
        let docs = parse_str("spec:\n  ports:\n  - port: 80\n    name: a\n").unwrap();
        let spec = docs[0].root.get("spec").unwrap();
        assert_eq!((spec.line, spec.column), (2, 3));
        let NodeKind::Seq(ports) = &spec.get("ports").unwrap().kind else {
            panic!()
        };
        assert_eq!((ports[0].line, ports[0].column), (3, 5));
    }

    #[test]
    fn multi_documents_skip_empty_ones() {
        let docs = parse_str("---\na: 1\n---\n# only a comment\n---\nb: 2\n...\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].root.get("b").unwrap().line, 6);
        assert!(parse_str("").unwrap().is_empty());
    }

    #[test]
    fn syntax_errors_have_positions() {
        assert_eq!(
            errors(b"a:\n  b: 1\n c: 2\n"),
            ["t.yaml:3:3: error: YAML syntax error: while parsing a block mapping, did not find expected key"]
        );
        let e = errors(b"a: \"unclosed\nb: 2\n");
        assert!(
            e[0].starts_with("t.yaml:1:4: error: YAML syntax error:"),
            "{e:?}"
        );
        let e = errors(b"a: [1, 2\nb: 3\n");
        assert!(e[0].starts_with("t.yaml:2:"), "{e:?}");
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        assert_eq!(
            errors(b"a: 1\nb:\n  c: 1\n  c: 2\na: 3\n"),
            [
                "t.yaml:4:3: error: duplicate key \"c\" in one mapping: first at line 3, again at line 4",
                "t.yaml:5:1: error: duplicate key \"a\" in one mapping: first at line 1, again at line 5",
            ]
        );
        // Same text, different quoting: still the same key.
        assert_eq!(errors(b"a: 1\n\"a\": 2\n").len(), 1);
    }

    #[test]
    fn anchors_aliases_and_tags_are_refused() {
        let e = errors(b"a: &x [1]\nb: *x\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("t.yaml:1:7: error: YAML anchors (&name) are refused"),
            "{e:?}"
        );
        // An alias to an undefined anchor is a syntax error in yaml-rust2; still refused.
        assert_eq!(errors(b"b: *x\n").len(), 1);
        let e = errors(b"a: !!binary aGk=\nb: !custom x\n");
        assert_eq!(
            e,
            [
                "t.yaml:1:13: error: YAML tag !!binary is not supported; remove it (a tag changes what a value means)",
                "t.yaml:2:12: error: YAML tag !custom is not supported; remove it (a tag changes what a value means)",
            ]
        );
    }

    #[test]
    fn billion_laughs_stops_at_the_first_anchor() {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            text.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        let e = errors(text.as_bytes());
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("t.yaml:1:7: "), "{e:?}");
    }

    #[test]
    fn nesting_is_limited_without_recursion() {
        let deep_flow = "[".repeat(100_000);
        let e = errors(deep_flow.as_bytes());
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("nesting deeper than 64 levels"), "{e:?}");

        let mut deep_block = String::new();
        for i in 0..200 {
            deep_block.push_str(&" ".repeat(i));
            deep_block.push_str("k:\n");
        }
        let e = errors(deep_block.as_bytes());
        assert_eq!(e, ["t.yaml:65:66: error: nesting deeper than 64 levels"]);

        // Just inside the limit parses.
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_str(&ok).is_ok());
    }

    #[test]
    fn encodings() {
        assert_eq!(
            errors(b"a: 1\nb: \xC3\x28\n"),
            ["t.yaml:2:4: error: invalid UTF-8 at byte offset 8 (byte 0xC3); manifests must be UTF-8"]
        );
        assert_eq!(
            errors(b"a: 1\nb: x\0y\n"),
            ["t.yaml:2:5: error: NUL byte at byte offset 9; is this a binary file?"]
        );
        assert_eq!(
            errors(b"\xFF\xFEa\0:\0"),
            ["t.yaml:1:1: error: file is UTF-16 (byte order mark at byte offset 0); save it as UTF-8"]
        );
        assert!(errors(b"a\x00:\x00 \x001\x00")[0].contains("looks like UTF-16"));
        assert_eq!(
            errors(b"a: \x01\n"),
            ["t.yaml:1:4: error: character U+0001 at byte offset 3 is not allowed in YAML"]
        );
        assert_eq!(
            errors("a: 1\n\u{FEFF}b: 2\n".as_bytes()),
            ["t.yaml:2:1: error: byte order mark at byte offset 5; only one at the very start of a file is accepted"]
        );
        // A leading UTF-8 BOM is accepted and does not shift columns.
        let docs = parse(&file(), b"\xEF\xBB\xBFa: 1\n", &Limits::default()).unwrap();
        let (k, _) = match &docs[0].root.kind {
            NodeKind::Map(e) => &e[0],
            _ => panic!(),
        };
        assert_eq!((k.scalar(), k.line, k.column), (Some("a"), 1, 1));
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let limits = Limits {
            max_bytes: 10,
            max_depth: 64,
        };
        let e = parse(&file(), b"a: [[[[[[[[[[[[", &limits).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "t.yaml:1:1: error: file is 15 bytes, above the limit of 10 bytes per file"
        );
    }

    #[test]
    fn complex_keys_are_refused() {
        let e = errors(b"? [a]\n: 1\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("a mapping key must be a plain value"));
    }
}
