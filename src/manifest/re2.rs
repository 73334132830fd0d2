//! Regular expressions as Envoy will see them: Envoy compiles route regexes with RE2 and refuses
//! a program larger than `re2.max_program_size.error_level` (100 by default), which would come
//! back as a NACK. Checking here turns that into a load error with a position.
//!
//! regex-syntax checks the syntax; the few constructs it accepts but RE2 does not (class set
//! operations, nested classes, `\<`-style word boundaries) are refused explicitly. The program
//! size is estimated from the HIR the way RE2's compiler counts instructions, erring on the large
//! side: one per literal byte, one per byte range of a class plus the alternations joining them,
//! one per loop or option, `{n,m}` expanded into copies, two per capture group.

use regex_syntax::ast::{self, Ast};
use regex_syntax::hir::{self, Class, Hir, HirKind};

/// Envoy's default `re2.max_program_size.error_level`.
pub const MAX_PROGRAM_SIZE: usize = 100;
/// RE2 refuses counted repetitions above this (`kMaxRepeat`).
pub const MAX_REPEAT: u32 = 1000;
/// Longer patterns are refused without parsing.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Checks `pattern` and returns why Envoy would refuse it, if it would.
pub fn check(pattern: &str) -> Result<(), String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "regular expression is {} bytes long, above the limit of {MAX_PATTERN_LEN}",
            pattern.len()
        ));
    }
    let ast = ast::parse::Parser::new().parse(pattern).map_err(|e| {
        format!(
            "{pattern:?} is not a valid regular expression: {}",
            e.kind()
        )
    })?;
    ast::visit(&ast, Re2Syntax)
        .map_err(|what| format!("{pattern:?} uses {what}, which Envoy's RE2 does not support"))?;
    let unicode = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| {
            format!(
                "{pattern:?} is not a valid regular expression: {}",
                kind(&e)
            )
        })?;
    // RE2's \d, \w, \s are ASCII; regex-syntax's are Unicode unless Unicode mode is off, so the
    // size is estimated on a byte-oriented reading when there is one.
    let bytes = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok();
    let size = program_size(bytes.as_ref().unwrap_or(&unicode))?;
    if size > MAX_PROGRAM_SIZE {
        return Err(format!(
            "regular expression {pattern:?} is too complex for Envoy: its RE2 program would have about \
             {size} instructions, and Envoy's RE2 refuses more than {MAX_PROGRAM_SIZE} \
             (re2.max_program_size.error_level); simplify it"
        ));
    }
    Ok(())
}

fn kind(e: &regex_syntax::Error) -> String {
    match e {
        regex_syntax::Error::Parse(e) => e.kind().to_string(),
        regex_syntax::Error::Translate(e) => e.kind().to_string(),
        other => other.to_string(),
    }
}

/// Refuses what regex-syntax parses but RE2 does not.
struct Re2Syntax;

impl ast::Visitor for Re2Syntax {
    type Output = ();
    type Err = &'static str;

    fn finish(self) -> Result<(), &'static str> {
        Ok(())
    }

    fn visit_pre(&mut self, ast: &Ast) -> Result<(), &'static str> {
        match ast {
            Ast::Assertion(a) => match a.kind {
                ast::AssertionKind::WordBoundaryStart
                | ast::AssertionKind::WordBoundaryEnd
                | ast::AssertionKind::WordBoundaryStartAngle
                | ast::AssertionKind::WordBoundaryEndAngle
                | ast::AssertionKind::WordBoundaryStartHalf
                | ast::AssertionKind::WordBoundaryEndHalf => Err("a start or end word boundary"),
                _ => Ok(()),
            },
            Ast::Repetition(r) => match r.op.kind {
                ast::RepetitionKind::Range(
                    ast::RepetitionRange::Exactly(n)
                    | ast::RepetitionRange::AtLeast(n)
                    | ast::RepetitionRange::Bounded(_, n),
                ) if n > MAX_REPEAT => Err("a repetition count above 1000"),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn visit_class_set_item_pre(&mut self, item: &ast::ClassSetItem) -> Result<(), &'static str> {
        match item {
            ast::ClassSetItem::Bracketed(_) => Err("a nested character class"),
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(
        &mut self,
        _op: &ast::ClassSetBinaryOp,
    ) -> Result<(), &'static str> {
        Err("a character class operation (&&, --, ~~)")
    }
}

/// Estimated RE2 program size. Errs on the large side.
pub fn program_size(hir: &Hir) -> Result<usize, String> {
    // Fail and match instructions, and the `.*?` loop of the unanchored start.
    const BASE: usize = 4;
    Ok(BASE.saturating_add(hir::visit(hir, SizeVisitor::default())?))
}

#[derive(Default)]
struct SizeVisitor {
    /// Sizes of the finished sub-expressions, innermost last.
    stack: Vec<usize>,
}

impl SizeVisitor {
    fn pop(&mut self, n: usize) -> Vec<usize> {
        let at = self.stack.len().saturating_sub(n);
        self.stack.split_off(at)
    }
}

impl hir::Visitor for SizeVisitor {
    type Output = usize;
    type Err = String;

    fn finish(mut self) -> Result<usize, String> {
        Ok(self.stack.pop().unwrap_or(0))
    }

    fn visit_post(&mut self, hir: &Hir) -> Result<(), String> {
        let size = match hir.kind() {
            HirKind::Empty => 1,
            HirKind::Literal(lit) => lit.0.len(),
            HirKind::Class(class) => class_size(class),
            HirKind::Look(_) => 1,
            HirKind::Capture(_) => self.pop(1).iter().sum::<usize>().saturating_add(2),
            HirKind::Repetition(rep) => {
                let sub = self.pop(1).iter().sum::<usize>();
                if rep.min > MAX_REPEAT || rep.max.is_some_and(|m| m > MAX_REPEAT) {
                    return Err(format!(
                        "a repetition count above {MAX_REPEAT} is refused by RE2"
                    ));
                }
                let min = rep.min as usize;
                match rep.max {
                    // x*, x+, x{n,}: n copies and a loop.
                    None => min.max(1).saturating_mul(sub).saturating_add(1),
                    // x{n,m}: n copies and m-n nested options.
                    Some(max) => min.saturating_mul(sub).saturating_add(
                        (max as usize)
                            .saturating_sub(min)
                            .saturating_mul(sub.saturating_add(1)),
                    ),
                }
            }
            HirKind::Concat(subs) => self
                .pop(subs.len())
                .iter()
                .fold(0usize, |a, b| a.saturating_add(*b)),
            HirKind::Alternation(subs) => self
                .pop(subs.len())
                .iter()
                .fold(subs.len().saturating_sub(1), |a, b| a.saturating_add(*b)),
        };
        self.stack.push(size);
        Ok(())
    }
}

/// One instruction per byte range, joined by alternations. Everything above ASCII in one go
/// (as `.` or `[^/]` have) is RE2's compact UTF-8 automaton of about 8 instructions; other
/// non-ASCII ranges count their UTF-8 byte sequences without the suffix sharing RE2 does.
fn class_size(class: &Class) -> usize {
    // The compact automaton for every non-ASCII code point (or byte).
    const ANY_NON_ASCII: usize = 8;
    let (ascii, non_ascii) = match class {
        Class::Bytes(c) => {
            let ascii = c.ranges().iter().filter(|r| r.start() < 0x80).count();
            let high = c.ranges().iter().any(|r| r.end() >= 0x80);
            (ascii, if high { ANY_NON_ASCII } else { 0 })
        }
        Class::Unicode(c) => {
            let ascii = c
                .ranges()
                .iter()
                .filter(|r| (r.start() as u32) < 0x80)
                .count();
            let mut high: Vec<(char, char)> = c
                .ranges()
                .iter()
                .filter(|r| (r.end() as u32) >= 0x80)
                .map(|r| (r.start().max('\u{80}'), r.end()))
                .collect();
            let covers_all = high.len() == 1 && high[0] == ('\u{80}', '\u{10FFFF}');
            let size = if high.is_empty() {
                0
            } else if covers_all {
                ANY_NON_ASCII
            } else {
                let mut n = 0usize;
                for (start, end) in high.drain(..) {
                    for seq in regex_syntax::utf8::Utf8Sequences::new(start, end) {
                        n = n.saturating_add(seq.len() + 1);
                    }
                }
                n
            };
            (ascii, size)
        }
    };
    let parts = ascii + usize::from(non_ascii > 0);
    (ascii + non_ascii + parts.saturating_sub(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(pattern: &str) -> usize {
        let hir = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .build()
            .parse(pattern)
            .unwrap();
        program_size(&hir).unwrap()
    }

    #[test]
    fn common_route_regexes_pass() {
        for p in [
            "/api/v[0-9]+/users/[a-z0-9-]+/orders/.*",
            "/static/.*\\.(css|js|png)",
            "^/v1/[^/]+$",
            "[\\w-]+",
            "(?i)/Admin/.*",
            "foo.bar/[0-9]{1,4}",
            "/users/\\d+",
        ] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn sizes_follow_re2_counting() {
        assert_eq!(size("abc"), 4 + 3);
        assert_eq!(size("[0-9a-f]"), 4 + 3);
        assert_eq!(size("a*"), 4 + 2);
        assert_eq!(size("a{3}"), 4 + 3);
        assert_eq!(size("a{2,4}"), 4 + 2 + 2 * 2);
        assert_eq!(size("(a)"), 4 + 3);
        assert_eq!(size("a|b|cd"), 4 + 1 + 1 + 2 + 2);
        // `.` is [^\n]: two ASCII ranges and the non-ASCII automaton.
        assert_eq!(size("."), 4 + 2 + 8 + 2);
    }

    #[test]
    fn too_complex_regexes_are_refused() {
        // A UUID path regex is a known case of Envoy refusing a route regex.
        let uuid = "/users/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
        let e = check(uuid).unwrap_err();
        assert!(e.contains("too complex for Envoy"), "{e}");
        assert!(check("a{1000}").unwrap_err().contains("too complex"));
        assert!(check(&"(ab|cd)".repeat(20)).is_err());
        // A Unicode property class is hundreds of byte ranges.
        assert!(check("\\pL+").unwrap_err().contains("too complex"));
        assert!(check("a{1001}")
            .unwrap_err()
            .contains("repetition count above 1000"));
    }

    #[test]
    fn syntax_errors_and_re2_gaps() {
        assert_eq!(
            check("/api/(v1"),
            Err("\"/api/(v1\" is not a valid regular expression: unclosed group".to_string())
        );
        assert!(check("[a-z&&[^aeiou]]")
            .unwrap_err()
            .contains("RE2 does not support"));
        assert!(check("[a[bc]]")
            .unwrap_err()
            .contains("nested character class"));
        assert!(check("\\<word").unwrap_err().contains("word boundary"));
        assert!(check("(?=x)")
            .unwrap_err()
            .contains("not a valid regular expression"));
        assert!(check(&"a".repeat(2000))
            .unwrap_err()
            .contains("above the limit of 1024"));
    }
}
