//! Regular expressions as Envoy will see them: Envoy compiles route regexes with RE2 and refuses
//! a program larger than `re2.max_program_size.error_level` (100 by default), which would come
//! back as a NACK. Checking here turns that into a load error with a position.
//!
//! regex-syntax checks the syntax; the constructs it accepts but RE2 does not (class set
//! operations, nested classes, `\<`-style word boundaries, the `u`, `x` and `R` flags, `\u`
//! escapes, stacked repetition operators, nested counts past 1000) are refused explicitly.
//!
//! The program size is the number RE2 itself reports (`RE2::ProgramSize()`, which Envoy compares
//! with the limit), found by replaying what RE2 does to a pattern: its parser (literal strings,
//! `[Aa]` as a case-folded literal, squashed `**`, alternations factored by common prefix and
//! merged into classes), the required literal prefix of an anchored regex (matched outside the
//! program), its simplifier (adjacent repetitions coalesced, `{n,m}` expanded into copies), its
//! compiler (Thompson fragments; classes as UTF-8 byte ranges in a trie with cached suffixes;
//! the `.*?` loop of an unanchored search) and the flattening that turns the compiled graph into
//! the instruction lists whose length `ProgramSize()` returns. Unicode classes and case folds
//! come from regex-syntax's tables (Unicode 16) cut down to the code points of Unicode 15.1,
//! which RE2's tables have; the few code points that changed category since can make a `\p{..}`
//! class come out a few instructions larger than RE2's. tests/re2_oracle.rs holds the estimate
//! against the real RE2.

use std::collections::HashMap;

use regex_syntax::ast::{self, Ast};
use regex_syntax::hir::{self, Hir, HirKind};

/// Envoy's default `re2.max_program_size.error_level`.
pub const MAX_PROGRAM_SIZE: usize = 100;
/// RE2 refuses counted repetitions above this (`kMaxRepeat`).
pub const MAX_REPEAT: u32 = 1000;
/// Longer patterns are refused without parsing.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Checks `pattern` and returns why Envoy would refuse it, if it would.
pub fn check(pattern: &str) -> Result<(), String> {
    let size = pattern_program_size(pattern)?;
    if size > MAX_PROGRAM_SIZE {
        return Err(format!(
            "regular expression {pattern:?} is too complex for Envoy: its RE2 program would have about \
             {size} instructions, and Envoy's RE2 refuses more than {MAX_PROGRAM_SIZE} \
             (re2.max_program_size.error_level); simplify it"
        ));
    }
    Ok(())
}

/// Checks `pattern` the way [`check`] does, except for the size limit, and returns the size of
/// the program RE2 compiles it to (`RE2::ProgramSize()`).
pub fn pattern_program_size(pattern: &str) -> Result<usize, String> {
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
    if repeat_budget(&ast, MAX_REPEAT) == 0 {
        return Err(format!(
            "{pattern:?} nests counted repetitions whose counts multiply past {MAX_REPEAT}, \
             which Envoy's RE2 refuses"
        ));
    }
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| {
            format!(
                "{pattern:?} is not a valid regular expression: {}",
                kind(&e)
            )
        })?;
    estimate(pattern, &ast).map_err(|TooLarge| {
        format!(
            "regular expression {pattern:?} is too complex for Envoy: RE2 would compile it \
             into more than {MAX_INST} instructions; simplify it"
        )
    })
}

/// The RE2 program size of an already translated regex. An HIR has lost what the pattern said
/// about case-insensitivity (it is lowered into classes) and about which literals sat in which
/// group, so this prints the HIR back to a pattern and measures that; [`pattern_program_size`]
/// on the original pattern is exact where this can be off by a few instructions.
pub fn program_size(hir: &Hir) -> Result<usize, String> {
    let pattern = hir.to_string();
    let ast = ast::parse::Parser::new()
        .parse(&pattern)
        .map_err(|e| format!("{pattern:?} does not parse back: {}", e.kind()))?;
    if repeat_budget(&ast, MAX_REPEAT) == 0 {
        return Err(format!(
            "counted repetitions multiplying past {MAX_REPEAT} are refused by RE2"
        ));
    }
    estimate(&pattern, &ast).map_err(|TooLarge| {
        format!("{pattern:?} compiles into more than {MAX_INST} RE2 instructions")
    })
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

impl Re2Syntax {
    fn flags(flags: &ast::Flags) -> Result<(), &'static str> {
        for item in &flags.items {
            match item.kind {
                ast::FlagsItemKind::Flag(ast::Flag::Unicode) => return Err("the u flag"),
                ast::FlagsItemKind::Flag(ast::Flag::CRLF) => return Err("the R flag"),
                ast::FlagsItemKind::Flag(ast::Flag::IgnoreWhitespace) => return Err("the x flag"),
                _ => {}
            }
        }
        Ok(())
    }

    fn literal(lit: &ast::Literal) -> Result<(), &'static str> {
        match lit.kind {
            ast::LiteralKind::HexFixed(ast::HexLiteralKind::X)
            | ast::LiteralKind::HexBrace(ast::HexLiteralKind::X) => Ok(()),
            ast::LiteralKind::HexFixed(_) | ast::LiteralKind::HexBrace(_) => {
                Err("a \\u or \\U escape (RE2 spells them \\x{...})")
            }
            _ => Ok(()),
        }
    }

    /// RE2 knows the general categories and scripts of its tables by their exact names.
    fn unicode(class: &ast::ClassUnicode) -> Result<(), &'static str> {
        let known = match &class.kind {
            ast::ClassUnicodeKind::OneLetter(c) => "CLMNPSZ".contains(*c),
            ast::ClassUnicodeKind::Named(name) => {
                name == "Any"
                    || RE2_CATEGORIES.split_whitespace().any(|c| c == name)
                    || RE2_SCRIPTS.split_whitespace().any(|s| s == name)
            }
            ast::ClassUnicodeKind::NamedValue { .. } => false,
        };
        if known {
            Ok(())
        } else {
            Err(
                "a Unicode class name that is not in RE2's tables (they have general categories \
                 like L or Lu and scripts like Greek, spelled exactly so)",
            )
        }
    }
}

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
            Ast::Repetition(r) => {
                if matches!(*r.ast, Ast::Repetition(_)) {
                    return Err(
                        "a repetition operator right after another one (like a** or a{2}{3})",
                    );
                }
                match r.op.kind {
                    ast::RepetitionKind::Range(
                        ast::RepetitionRange::Exactly(n)
                        | ast::RepetitionRange::AtLeast(n)
                        | ast::RepetitionRange::Bounded(_, n),
                    ) if n > MAX_REPEAT => Err("a repetition count above 1000"),
                    _ => Ok(()),
                }
            }
            Ast::Flags(set) => Self::flags(&set.flags),
            Ast::Group(group) => match &group.kind {
                ast::GroupKind::NonCapturing(flags) => Self::flags(flags),
                _ => Ok(()),
            },
            Ast::Literal(lit) => Self::literal(lit),
            Ast::ClassUnicode(class) => Self::unicode(class),
            _ => Ok(()),
        }
    }

    fn visit_class_set_item_pre(&mut self, item: &ast::ClassSetItem) -> Result<(), &'static str> {
        match item {
            ast::ClassSetItem::Bracketed(_) => Err("a nested character class"),
            ast::ClassSetItem::Literal(lit) => Self::literal(lit),
            ast::ClassSetItem::Range(range) => {
                Self::literal(&range.start).and_then(|()| Self::literal(&range.end))
            }
            ast::ClassSetItem::Unicode(class) => Self::unicode(class),
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

/// What is left of `budget` below `ast` when each counted repetition divides it by its count,
/// the way RE2's parser (its RepetitionWalker) refuses `(?:a{2}){600}`: 0 means refused.
fn repeat_budget(ast: &Ast, budget: u32) -> u32 {
    match ast {
        Ast::Repetition(r) => {
            let count = match r.op.kind {
                ast::RepetitionKind::Range(
                    ast::RepetitionRange::Exactly(n)
                    | ast::RepetitionRange::AtLeast(n)
                    | ast::RepetitionRange::Bounded(_, n),
                ) => n,
                _ => 0,
            };
            let budget = budget.checked_div(count).unwrap_or(budget);
            budget.min(repeat_budget(&r.ast, budget))
        }
        Ast::Group(group) => repeat_budget(&group.ast, budget),
        Ast::Alternation(alt) => alt
            .asts
            .iter()
            .map(|a| repeat_budget(a, budget))
            .fold(budget, u32::min),
        Ast::Concat(concat) => concat
            .asts
            .iter()
            .map(|a| repeat_budget(a, budget))
            .fold(budget, u32::min),
        _ => budget,
    }
}

/// The general categories in RE2's Unicode tables (`\p{Cn}` and the long names are not).
const RE2_CATEGORIES: &str = "C Cc Cf Co Cs L Ll Lm Lo Lt Lu M Mc Me Mn N Nd Nl No \
     P Pc Pd Pe Pf Pi Po Ps S Sc Sk Sm So Z Zl Zp Zs";

/// The scripts in RE2's Unicode tables (Unicode 15.1): regex-syntax's, less those of Unicode 16.
const RE2_SCRIPTS: &str =
    "Adlam Ahom Anatolian_Hieroglyphs Arabic Armenian Avestan Balinese Bamum Bassa_Vah Batak \
     Bengali Bhaiksuki Bopomofo Brahmi Braille Buginese Buhid Canadian_Aboriginal Carian \
     Caucasian_Albanian Chakma Cham Cherokee Chorasmian Common Coptic Cuneiform Cypriot \
     Cypro_Minoan Cyrillic Deseret Devanagari Dives_Akuru Dogra Duployan Egyptian_Hieroglyphs \
     Elbasan Elymaic Ethiopic Georgian Glagolitic Gothic Grantha Greek Gujarati Gunjala_Gondi \
     Gurmukhi Han Hangul Hanifi_Rohingya Hanunoo Hatran Hebrew Hiragana Imperial_Aramaic \
     Inherited Inscriptional_Pahlavi Inscriptional_Parthian Javanese Kaithi Kannada Katakana Kawi \
     Kayah_Li Kharoshthi Khitan_Small_Script Khmer Khojki Khudawadi Lao Latin Lepcha Limbu \
     Linear_A Linear_B Lisu Lycian Lydian Mahajani Makasar Malayalam Mandaic Manichaean Marchen \
     Masaram_Gondi Medefaidrin Meetei_Mayek Mende_Kikakui Meroitic_Cursive Meroitic_Hieroglyphs \
     Miao Modi Mongolian Mro Multani Myanmar Nabataean Nag_Mundari Nandinagari New_Tai_Lue Newa \
     Nko Nushu Nyiakeng_Puachue_Hmong Ogham Ol_Chiki Old_Hungarian Old_Italic Old_North_Arabian \
     Old_Permic Old_Persian Old_Sogdian Old_South_Arabian Old_Turkic Old_Uyghur Oriya Osage \
     Osmanya Pahawh_Hmong Palmyrene Pau_Cin_Hau Phags_Pa Phoenician Psalter_Pahlavi Rejang Runic \
     Samaritan Saurashtra Sharada Shavian Siddham SignWriting Sinhala Sogdian Sora_Sompeng \
     Soyombo Sundanese Syloti_Nagri Syriac Tagalog Tagbanwa Tai_Le Tai_Tham Tai_Viet Takri Tamil \
     Tangsa Tangut Telugu Thaana Thai Tibetan Tifinagh Tirhuta Toto Ugaritic Vai Vithkuqi Wancho \
     Warang_Citi Yezidi Yi Zanabazar_Square";

/// RE2's tables are those of Unicode 15.1 (RE2 2023-11 to at least 2025-11): the code points
/// assigned later are in none of its classes and have no case folds there.
const RE2_UNICODE_AGE: &str = "\\p{Age=V15_1}";

fn re2_assigned() -> &'static Ranges {
    static ASSIGNED: std::sync::OnceLock<Ranges> = std::sync::OnceLock::new();
    ASSIGNED.get_or_init(|| {
        regex_syntax::ParserBuilder::new()
            .build()
            .parse(RE2_UNICODE_AGE)
            .map(|hir| canonical(hir_ranges(&hir)))
            .unwrap_or_else(|_| vec![(0, MAX_RUNE)])
    })
}

/// Compiling the pattern went past [`MAX_INST`] instructions.
struct TooLarge;

/// Compiling stops here, for time: nothing this large flattens to [`MAX_PROGRAM_SIZE`] but
/// absurd regexes of empty alternatives like `(?:|){1000}` over and over, which are refused
/// though RE2 (which gives up at several hundred thousand) takes them.
const MAX_INST: usize = 100_000;

/// RE2's `RE2::Init` up to `ProgramSize()`: parse, split off a required prefix, compile.
fn estimate(pattern: &str, ast: &Ast) -> Result<usize, TooLarge> {
    let parser = Parser { pattern };
    let mut flags = Flags::PERL;
    let entire = parser.alternation(ast, &mut flags);
    // `^abc...` is matched as "starts with abc" outside the program, which then only holds the
    // rest, unanchored (RE2::Init's RequiredPrefix).
    let compiled = required_prefix_suffix(&entire).unwrap_or(entire);
    compile(compiled)
}

// ---------------------------------------------------------------------------------------------
// Character classes: sorted, disjoint, non-abutting rune ranges over 0..=0x10FFFF, surrogates
// included where RE2 includes them (it negates over all of 0..=0x10FFFF).

type Ranges = Vec<(u32, u32)>;

const MAX_RUNE: u32 = 0x10FFFF;

fn canonical(mut ranges: Ranges) -> Ranges {
    ranges.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn negate(ranges: &Ranges) -> Ranges {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    let mut next = 0u32;
    for &(lo, hi) in ranges {
        if next < lo {
            out.push((next, lo - 1));
        }
        next = hi + 1;
    }
    if next <= MAX_RUNE {
        out.push((next, MAX_RUNE));
    }
    out
}

/// Adds every rune's simple case folds, as RE2's AddFoldedRange does (with RE2's Unicode: a
/// fold to or from a code point assigned after Unicode 15.1 is not in its tables).
fn fold(ranges: &Ranges) -> Ranges {
    let chars = intersect(ranges, re2_assigned());
    let chars = chars.iter().flat_map(|&(lo, hi)| {
        // Surrogates have no case; they are kept as they are below.
        let below = (lo <= 0xD7FF).then(|| (lo, hi.min(0xD7FF)));
        let above = (hi >= 0xE000).then(|| (lo.max(0xE000), hi));
        below.into_iter().chain(above).filter_map(|(lo, hi)| {
            Some(hir::ClassUnicodeRange::new(
                char::from_u32(lo)?,
                char::from_u32(hi)?,
            ))
        })
    });
    let mut class = hir::ClassUnicode::new(chars);
    class.case_fold_simple();
    let folds = class
        .ranges()
        .iter()
        .map(|r| (r.start() as u32, r.end() as u32))
        .collect();
    let mut out = intersect(&canonical(folds), re2_assigned());
    out.extend_from_slice(ranges);
    canonical(out)
}

fn intersect(a: &Ranges, b: &Ranges) -> Ranges {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo <= hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn rune_count(ranges: &Ranges) -> u64 {
    ranges.iter().map(|&(lo, hi)| u64::from(hi - lo) + 1).sum()
}

fn contains(ranges: &Ranges, rune: u32) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= rune && rune <= hi)
}

/// A named group added to a class the way RE2's AddUGroup adds it: folded when
/// case-insensitive, and a negated group is the complement of the folded one.
fn group(ranges: Ranges, negated: bool, flags: Flags) -> Ranges {
    let ranges = if flags.has(Flags::FOLD_CASE) {
        fold(&canonical(ranges))
    } else {
        canonical(ranges)
    };
    if negated {
        negate(&ranges)
    } else {
        ranges
    }
}

/// RE2's Perl classes are ASCII, and its `\s` leaves out `\v`.
fn perl_ranges(kind: &ast::ClassPerlKind) -> Ranges {
    match kind {
        ast::ClassPerlKind::Digit => vec![(0x30, 0x39)],
        ast::ClassPerlKind::Space => vec![(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
        ast::ClassPerlKind::Word => vec![(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    }
}

fn ascii_ranges(kind: &ast::ClassAsciiKind) -> Ranges {
    use ast::ClassAsciiKind as K;
    let ranges: &[(u8, u8)] = match kind {
        K::Alnum => &[(b'0', b'9'), (b'A', b'Z'), (b'a', b'z')],
        K::Alpha => &[(b'A', b'Z'), (b'a', b'z')],
        K::Ascii => &[(0x00, 0x7F)],
        K::Blank => &[(b'\t', b'\t'), (b' ', b' ')],
        K::Cntrl => &[(0x00, 0x1F), (0x7F, 0x7F)],
        K::Digit => &[(b'0', b'9')],
        K::Graph => &[(b'!', b'~')],
        K::Lower => &[(b'a', b'z')],
        K::Print => &[(b' ', b'~')],
        K::Punct => &[(b'!', b'/'), (b':', b'@'), (b'[', b'`'), (b'{', b'~')],
        K::Space => &[(b'\t', b'\r'), (b' ', b' ')],
        K::Upper => &[(b'A', b'Z')],
        K::Word => &[(b'0', b'9'), (b'A', b'Z'), (b'_', b'_'), (b'a', b'z')],
        K::Xdigit => &[(b'0', b'9'), (b'A', b'F'), (b'a', b'f')],
    };
    ranges
        .iter()
        .map(|&(lo, hi)| (u32::from(lo), u32::from(hi)))
        .collect()
}

/// The runes an HIR of a single class (or a literal, or nothing) matches.
fn hir_ranges(hir: &Hir) -> Ranges {
    match hir.kind() {
        HirKind::Class(hir::Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        HirKind::Class(hir::Class::Bytes(class)) => class
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
        HirKind::Literal(hir::Literal(bytes)) => canonical(
            String::from_utf8_lossy(bytes)
                .chars()
                .map(|c| (c as u32, c as u32))
                .collect(),
        ),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// RE2's parse tree (its Regexp), built the way its parser builds it.

/// The RE2 parse flags that can change inside a pattern; the others are fixed by the options
/// Envoy uses (RE2's defaults: Perl syntax, UTF-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flags(u8);

impl Flags {
    const FOLD_CASE: u8 = 1;
    const DOT_NL: u8 = 1 << 1;
    const ONE_LINE: u8 = 1 << 2;
    const NON_GREEDY: u8 = 1 << 3;
    /// Marks an end of text written `$` rather than `\z`; RE2 tells them apart when it compares.
    const WAS_DOLLAR: u8 = 1 << 4;
    /// Perl syntax: `^` and `$` match at the ends of the text only.
    const PERL: Flags = Flags(Self::ONE_LINE);

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn with(self, bit: u8, on: bool) -> Flags {
        if on {
            Flags(self.0 | bit)
        } else {
            Flags(self.0 & !bit)
        }
    }

    fn fold_case(self) -> u8 {
        self.0 & Self::FOLD_CASE
    }

    fn apply(self, flags: &ast::Flags) -> Flags {
        let mut out = self;
        let mut on = true;
        for item in &flags.items {
            match item.kind {
                ast::FlagsItemKind::Negation => on = false,
                ast::FlagsItemKind::Flag(ast::Flag::CaseInsensitive) => {
                    out = out.with(Self::FOLD_CASE, on)
                }
                ast::FlagsItemKind::Flag(ast::Flag::MultiLine) => {
                    out = out.with(Self::ONE_LINE, !on)
                }
                ast::FlagsItemKind::Flag(ast::Flag::DotMatchesNewLine) => {
                    out = out.with(Self::DOT_NL, on)
                }
                ast::FlagsItemKind::Flag(ast::Flag::SwapGreed) => {
                    out = out.with(Self::NON_GREEDY, on)
                }
                // Refused by `check`; a printed HIR may carry them, and they change no size.
                ast::FlagsItemKind::Flag(
                    ast::Flag::Unicode | ast::Flag::CRLF | ast::Flag::IgnoreWhitespace,
                ) => {}
            }
        }
        out
    }
}

/// RE2's Regexp: its parse tree, and the same tree simplified.
#[derive(Clone, Debug)]
enum Re {
    NoMatch,
    EmptyMatch,
    Literal(u32, Flags),
    LiteralString(Vec<u32>, Flags),
    CharClass(Ranges),
    AnyChar,
    BeginLine,
    EndLine,
    BeginText,
    EndText(Flags),
    WordBoundary,
    NoWordBoundary,
    Capture(u32, Box<Re>),
    Star(Box<Re>, Flags),
    Plus(Box<Re>, Flags),
    Quest(Box<Re>, Flags),
    /// `{min,max}`; a `max` of -1 is unbounded.
    Repeat(Box<Re>, Flags, i32, i32),
    /// `(x(x(x)?)?)?` as the simplifier writes the optional copies of `x{n,m}`: `levels` times
    /// `(x ...)?` around the innermost `x?`. Kept flat, as `x{0,1000}` would nest 2000 deep.
    QuestChain {
        x: Box<Re>,
        levels: usize,
        innermost: Box<Re>,
        flags: Flags,
    },
    Concat(Vec<Re>),
    Alternate(Vec<Re>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RepeatOp {
    Star,
    Plus,
    Quest,
}

impl Re {
    /// The operator and flags of a `*`, `+` or `?` (a chain of `?` included).
    fn repeat_op(&self) -> Option<(RepeatOp, Flags)> {
        match self {
            Re::Star(_, flags) => Some((RepeatOp::Star, *flags)),
            Re::Plus(_, flags) => Some((RepeatOp::Plus, *flags)),
            Re::Quest(_, flags) | Re::QuestChain { flags, .. } => Some((RepeatOp::Quest, *flags)),
            _ => None,
        }
    }

    /// What a `*`, `+` or `?` repeats.
    fn repeated(self) -> Re {
        match self {
            Re::Star(sub, _) | Re::Plus(sub, _) | Re::Quest(sub, _) => *sub,
            Re::QuestChain {
                x,
                levels,
                innermost,
                flags,
            } => {
                let rest = match levels {
                    1 => *innermost,
                    _ => Re::QuestChain {
                        x: x.clone(),
                        levels: levels - 1,
                        innermost,
                        flags,
                    },
                };
                Re::Concat(vec![*x, rest])
            }
            other => other,
        }
    }

    fn is_literal_or_string(&self) -> bool {
        matches!(self, Re::Literal(..) | Re::LiteralString(..))
    }

    fn is_literal_or_class(&self) -> bool {
        matches!(self, Re::Literal(..) | Re::CharClass(_))
    }

    fn is_empty_width(&self) -> bool {
        matches!(
            self,
            Re::BeginLine
                | Re::EndLine
                | Re::BeginText
                | Re::EndText(_)
                | Re::WordBoundary
                | Re::NoWordBoundary
        )
    }

    fn runes(&self) -> (&[u32], Flags) {
        match self {
            Re::Literal(rune, flags) => (std::slice::from_ref(rune), *flags),
            Re::LiteralString(runes, flags) => (runes, *flags),
            _ => (&[], Flags(0)),
        }
    }
}

/// RE2's `Regexp::Star`, `Plus` and `Quest`: `x**` is `x*`, and any two of `*`, `+`, `?` with
/// the same flags make a `*`.
fn repeat(op: RepeatOp, sub: Re, flags: Flags) -> Re {
    if let Some((sub_op, sub_flags)) = sub.repeat_op() {
        if sub_flags == flags {
            if sub_op == op || sub_op == RepeatOp::Star {
                return sub;
            }
            return Re::Star(Box::new(sub.repeated()), flags);
        }
    }
    let sub = Box::new(sub);
    match op {
        RepeatOp::Star => Re::Star(sub, flags),
        RepeatOp::Plus => Re::Plus(sub, flags),
        RepeatOp::Quest => Re::Quest(sub, flags),
    }
}

/// RE2's `Regexp::LiteralString`.
fn literal_string(runes: &[u32], flags: Flags) -> Re {
    match runes {
        [] => Re::EmptyMatch,
        [rune] => Re::Literal(*rune, flags),
        _ => Re::LiteralString(runes.to_vec(), flags),
    }
}

/// RE2's `Regexp::Concat`.
fn concat(mut subs: Vec<Re>) -> Re {
    match subs.len() {
        0 => Re::EmptyMatch,
        1 => subs.pop().unwrap_or(Re::EmptyMatch),
        _ => Re::Concat(subs),
    }
}

/// RE2's `Regexp::Alternate` (factoring) and `Regexp::AlternateNoFactor`.
fn alternate(mut subs: Vec<Re>, factor: bool) -> Re {
    if factor && subs.len() > 1 {
        subs = factor_alternation(subs);
    }
    match subs.len() {
        0 => Re::NoMatch,
        1 => subs.pop().unwrap_or(Re::NoMatch),
        _ => Re::Alternate(subs),
    }
}

/// RE2's `Regexp::Equal`.
fn equal(a: &Re, b: &Re) -> bool {
    match (a, b) {
        (Re::NoMatch, Re::NoMatch)
        | (Re::EmptyMatch, Re::EmptyMatch)
        | (Re::AnyChar, Re::AnyChar)
        | (Re::BeginLine, Re::BeginLine)
        | (Re::EndLine, Re::EndLine)
        | (Re::BeginText, Re::BeginText)
        | (Re::WordBoundary, Re::WordBoundary)
        | (Re::NoWordBoundary, Re::NoWordBoundary) => true,
        (Re::EndText(x), Re::EndText(y)) => x.has(Flags::WAS_DOLLAR) == y.has(Flags::WAS_DOLLAR),
        (Re::Literal(x, xf), Re::Literal(y, yf)) => x == y && xf.fold_case() == yf.fold_case(),
        (Re::LiteralString(x, xf), Re::LiteralString(y, yf)) => {
            x == y && xf.fold_case() == yf.fold_case()
        }
        (Re::CharClass(x), Re::CharClass(y)) => x == y,
        (Re::Capture(x, xs), Re::Capture(y, ys)) => x == y && equal(xs, ys),
        (Re::Star(xs, xf), Re::Star(ys, yf))
        | (Re::Plus(xs, xf), Re::Plus(ys, yf))
        | (Re::Quest(xs, xf), Re::Quest(ys, yf)) => {
            xf.has(Flags::NON_GREEDY) == yf.has(Flags::NON_GREEDY) && equal(xs, ys)
        }
        (Re::Repeat(xs, xf, xmin, xmax), Re::Repeat(ys, yf, ymin, ymax)) => {
            xf.has(Flags::NON_GREEDY) == yf.has(Flags::NON_GREEDY)
                && xmin == ymin
                && xmax == ymax
                && equal(xs, ys)
        }
        (Re::Concat(x), Re::Concat(y)) | (Re::Alternate(x), Re::Alternate(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| equal(x, y))
        }
        _ => false,
    }
}

/// Replays RE2's parser (parse.cc) over regex-syntax's AST.
struct Parser<'p> {
    /// For regex-syntax's translator, which names the pattern in errors it cannot have here.
    pattern: &'p str,
}

impl Parser<'_> {
    /// A whole pattern or a group's body (DoAlternation).
    fn alternation(&self, ast: &Ast, flags: &mut Flags) -> Re {
        let branches: Vec<&Ast> = match ast {
            Ast::Alternation(alt) => alt.asts.iter().collect(),
            other => vec![other],
        };
        let mut alts: Vec<Re> = Vec::with_capacity(branches.len());
        for branch in branches {
            // Flags set in one branch stay set in the next: RE2 restores them at `)` only.
            let re = self.concatenation(branch, flags);
            // DoVerticalBar: `.` (with `s`) swallows a neighbouring literal, class or `.`.
            if let Some(prev) = alts.last_mut() {
                let small =
                    |re: &Re| matches!(re, Re::Literal(..) | Re::CharClass(_) | Re::AnyChar);
                if matches!(prev, Re::AnyChar) && small(&re) {
                    continue;
                }
                if matches!(re, Re::AnyChar) && small(prev) {
                    *prev = re;
                    continue;
                }
            }
            alts.push(re);
        }
        if alts.len() == 1 {
            return alts.pop().unwrap_or(Re::EmptyMatch);
        }
        let mut subs = Vec::with_capacity(alts.len());
        for re in alts {
            match re {
                Re::Alternate(inner) => subs.extend(inner),
                other => subs.push(other),
            }
        }
        alternate(subs, true)
    }

    /// One branch of an alternation (DoConcatenation).
    fn concatenation(&self, ast: &Ast, flags: &mut Flags) -> Re {
        let items = match ast {
            Ast::Concat(concat) => concat.asts.as_slice(),
            other => std::slice::from_ref(other),
        };
        let mut stack = Vec::new();
        for item in items {
            self.item(item, flags, &mut stack);
        }
        maybe_concat_string(&mut stack, None);
        if stack.len() <= 1 {
            return stack.pop().unwrap_or(Re::EmptyMatch);
        }
        let mut subs = Vec::with_capacity(stack.len());
        for re in stack {
            match re {
                Re::Concat(inner) => subs.extend(inner),
                other => subs.push(other),
            }
        }
        concat(subs)
    }

    /// Pushes what `ast` parses to onto the concatenation being built.
    fn item(&self, ast: &Ast, flags: &mut Flags, stack: &mut Vec<Re>) {
        match ast {
            Ast::Empty(_) => {}
            Ast::Flags(set) => *flags = flags.apply(&set.flags),
            Ast::Literal(lit) => push_literal(stack, lit.c as u32, *flags),
            Ast::Dot(_) => {
                let re = if flags.has(Flags::DOT_NL) {
                    Re::AnyChar
                } else {
                    Re::CharClass(vec![(0, 0x09), (0x0B, MAX_RUNE)])
                };
                push(stack, re, *flags);
            }
            Ast::Assertion(assertion) => {
                let one_line = flags.has(Flags::ONE_LINE);
                let re = match assertion.kind {
                    ast::AssertionKind::StartLine if !one_line => Re::BeginLine,
                    ast::AssertionKind::EndLine if !one_line => Re::EndLine,
                    ast::AssertionKind::StartLine | ast::AssertionKind::StartText => Re::BeginText,
                    ast::AssertionKind::EndLine => Re::EndText(flags.with(Flags::WAS_DOLLAR, true)),
                    ast::AssertionKind::EndText => Re::EndText(*flags),
                    ast::AssertionKind::NotWordBoundary => Re::NoWordBoundary,
                    // `check` refuses the start and end boundaries; they are one instruction too.
                    _ => Re::WordBoundary,
                };
                push(stack, re, *flags);
            }
            Ast::ClassUnicode(class) => {
                let ranges = self.unicode_class(class, *flags);
                push(stack, Re::CharClass(ranges), *flags);
            }
            Ast::ClassPerl(class) => {
                let ranges = group(perl_ranges(&class.kind), class.negated, *flags);
                push(stack, Re::CharClass(ranges), *flags);
            }
            Ast::ClassBracketed(class) => {
                let ranges = self.bracketed(class, *flags);
                push(stack, Re::CharClass(ranges), *flags);
            }
            Ast::Repetition(rep) => {
                // The operand goes on the stack first; the operator then wraps the top alone.
                self.item(&rep.ast, flags, stack);
                let Some(sub) = stack.pop() else { return };
                let fl = if rep.greedy {
                    *flags
                } else {
                    Flags(flags.0 ^ Flags::NON_GREEDY)
                };
                let re = match &rep.op.kind {
                    ast::RepetitionKind::ZeroOrOne => repeat(RepeatOp::Quest, sub, fl),
                    ast::RepetitionKind::ZeroOrMore => repeat(RepeatOp::Star, sub, fl),
                    ast::RepetitionKind::OneOrMore => repeat(RepeatOp::Plus, sub, fl),
                    ast::RepetitionKind::Range(range) => {
                        let (min, max) = match range {
                            ast::RepetitionRange::Exactly(n) => (*n, Some(*n)),
                            ast::RepetitionRange::AtLeast(n) => (*n, None),
                            ast::RepetitionRange::Bounded(n, m) => (*n, Some(*m)),
                        };
                        let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
                        Re::Repeat(Box::new(sub), fl, count(min), max.map_or(-1, count))
                    }
                };
                stack.push(re);
            }
            Ast::Group(g) => {
                let outer = *flags;
                let re = match &g.kind {
                    ast::GroupKind::NonCapturing(set) => {
                        *flags = flags.apply(set);
                        self.alternation(&g.ast, flags)
                    }
                    ast::GroupKind::CaptureIndex(index)
                    | ast::GroupKind::CaptureName {
                        name: ast::CaptureName { index, .. },
                        ..
                    } => Re::Capture(*index, Box::new(self.alternation(&g.ast, flags))),
                };
                *flags = outer;
                push(stack, re, *flags);
            }
            Ast::Alternation(_) => {
                let re = self.alternation(ast, flags);
                push(stack, re, *flags);
            }
            Ast::Concat(concat) => {
                for item in &concat.asts {
                    self.item(item, flags, stack);
                }
            }
        }
    }

    /// `\pL`, `\p{Greek}`, `\PN`: regex-syntax's tables, folded and negated as RE2 does.
    fn unicode_class(&self, class: &ast::ClassUnicode, flags: Flags) -> Ranges {
        let mut positive = class.clone();
        positive.negated = false;
        let mut ranges = canonical(self.translate(&Ast::ClassUnicode(Box::new(positive)), false));
        if !matches!(&class.kind, ast::ClassUnicodeKind::Named(name) if name == "Any") {
            ranges = intersect(&ranges, re2_assigned());
        }
        group(ranges, class.negated, flags)
    }

    /// `[...]` (ParseCharClass): the union of its items, each folded when case-insensitive,
    /// then negated as a whole.
    fn bracketed(&self, class: &ast::ClassBracketed, flags: Flags) -> Ranges {
        let ranges = match &class.kind {
            ast::ClassSet::Item(item) => {
                let mut ranges = Vec::new();
                self.set_item(item, flags, &mut ranges);
                canonical(ranges)
            }
            // Refused by `check`; a printed HIR writes an empty class as `[a&&b]`.
            ast::ClassSet::BinaryOp(_) => {
                let mut positive = class.clone();
                positive.negated = false;
                let ranges = self.translate(
                    &Ast::ClassBracketed(Box::new(positive)),
                    flags.has(Flags::FOLD_CASE),
                );
                canonical(ranges)
            }
        };
        if class.negated {
            negate(&ranges)
        } else {
            ranges
        }
    }

    fn set_item(&self, item: &ast::ClassSetItem, flags: Flags, out: &mut Ranges) {
        match item {
            ast::ClassSetItem::Empty(_) => {}
            ast::ClassSetItem::Literal(lit) => {
                out.extend(group(vec![(lit.c as u32, lit.c as u32)], false, flags))
            }
            ast::ClassSetItem::Range(range) => out.extend(group(
                vec![(range.start.c as u32, range.end.c as u32)],
                false,
                flags,
            )),
            ast::ClassSetItem::Ascii(class) => {
                out.extend(group(ascii_ranges(&class.kind), class.negated, flags))
            }
            ast::ClassSetItem::Unicode(class) => out.extend(self.unicode_class(class, flags)),
            ast::ClassSetItem::Perl(class) => {
                out.extend(group(perl_ranges(&class.kind), class.negated, flags))
            }
            // Refused by `check`.
            ast::ClassSetItem::Bracketed(class) => out.extend(self.bracketed(class, flags)),
            ast::ClassSetItem::Union(union) => {
                for item in &union.items {
                    self.set_item(item, flags, out);
                }
            }
        }
    }

    /// A class the way regex-syntax reads it (for its Unicode tables).
    fn translate(&self, ast: &Ast, case_insensitive: bool) -> Ranges {
        hir::translate::TranslatorBuilder::new()
            .case_insensitive(case_insensitive)
            .build()
            .translate(self.pattern, ast)
            .map(|hir| hir_ranges(&hir))
            .unwrap_or_default()
    }
}

/// PushRegexp: a class of one rune is a literal, and `[Aa]` a case-folded literal.
fn push(stack: &mut Vec<Re>, re: Re, flags: Flags) {
    maybe_concat_string(stack, None);
    let re = match re {
        Re::CharClass(ranges) if rune_count(&ranges) == 1 => Re::Literal(ranges[0].0, flags),
        Re::CharClass(ranges)
            if rune_count(&ranges) == 2
                && (u32::from(b'A')..=u32::from(b'Z')).contains(&ranges[0].0)
                && contains(&ranges, ranges[0].0 + 32) =>
        {
            Re::Literal(ranges[0].0 + 32, flags.with(Flags::FOLD_CASE, true))
        }
        other => other,
    };
    stack.push(re);
}

/// PushLiteral: a case-insensitive letter is the class of its case folds.
fn push_literal(stack: &mut Vec<Re>, rune: u32, flags: Flags) {
    if flags.has(Flags::FOLD_CASE) {
        let folds = fold(&vec![(rune, rune)]);
        if folds != [(rune, rune)] {
            return push(stack, Re::CharClass(folds), flags);
        }
    }
    if maybe_concat_string(stack, Some((rune, flags))) {
        return;
    }
    push(stack, Re::Literal(rune, flags), flags);
}

/// MaybeConcatString: joins the top two literals on the stack into one string when they agree
/// on case folding; then puts `next` on top if given (and says so).
fn maybe_concat_string(stack: &mut Vec<Re>, next: Option<(u32, Flags)>) -> bool {
    let n = stack.len();
    if n < 2 || !stack[n - 1].is_literal_or_string() || !stack[n - 2].is_literal_or_string() {
        return false;
    }
    let (top, top_flags) = stack[n - 1].runes();
    let (below, below_flags) = stack[n - 2].runes();
    if top_flags.fold_case() != below_flags.fold_case() {
        return false;
    }
    let mut runes = below.to_vec();
    runes.extend_from_slice(top);
    stack[n - 2] = Re::LiteralString(runes, below_flags);
    match next {
        Some((rune, flags)) => {
            stack[n - 1] = Re::Literal(rune, flags);
            true
        }
        None => {
            stack.pop();
            false
        }
    }
}

/// RE2's `Regexp::RequiredPrefix`: for `^` followed by a literal, the rest of the regex.
fn required_prefix_suffix(re: &Re) -> Option<Re> {
    let Re::Concat(subs) = re else { return None };
    let anchors = subs
        .iter()
        .take_while(|s| matches!(s, Re::BeginText))
        .count();
    if anchors == 0 || anchors >= subs.len() || !subs[anchors].is_literal_or_string() {
        return None;
    }
    Some(concat(subs[anchors + 1..].to_vec()))
}

// ---------------------------------------------------------------------------------------------
// FactorAlternation: common literal prefixes, then common leading pieces, then runs of
// literals and classes merged into one class.

struct Splice {
    prefix: Re,
    start: usize,
    end: usize,
}

fn factor_alternation(mut subs: Vec<Re>) -> Vec<Re> {
    for round in 1..=3 {
        let splices = match round {
            1 => factor_literal_prefixes(&mut subs),
            2 => factor_leading_pieces(&mut subs),
            _ => merge_classes(&subs),
        };
        if splices.is_empty() {
            continue;
        }
        let mut old: Vec<Option<Re>> = subs.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(old.len());
        let mut i = 0;
        for splice in splices {
            out.extend(old[i..splice.start].iter_mut().filter_map(Option::take));
            if round == 3 {
                out.push(splice.prefix);
            } else {
                let suffixes = old[splice.start..splice.end]
                    .iter_mut()
                    .filter_map(Option::take)
                    .collect();
                let suffixes = factor_alternation(suffixes);
                out.push(Re::Concat(vec![splice.prefix, alternate(suffixes, false)]));
            }
            i = splice.end;
        }
        out.extend(old[i..].iter_mut().filter_map(Option::take));
        subs = out;
    }
    subs
}

/// Round 1: runs of alternatives that start with the same literal runes.
fn factor_literal_prefixes(subs: &mut [Re]) -> Vec<Splice> {
    let mut splices = Vec::new();
    let mut start = 0;
    let mut runes: Vec<u32> = Vec::new();
    let mut fold_case = 0u8;
    for i in 0..=subs.len() {
        let mut next: (Vec<u32>, u8) = (Vec::new(), 0);
        if i < subs.len() {
            next = leading_string(&subs[i]);
            if next.1 == fold_case {
                let same = runes
                    .iter()
                    .zip(&next.0)
                    .take_while(|(a, b)| a == b)
                    .count();
                if same > 0 {
                    runes.truncate(same);
                    continue;
                }
            }
        }
        if i >= start + 2 {
            for sub in &mut subs[start..i] {
                remove_leading_string(sub, runes.len(), 0);
            }
            splices.push(Splice {
                prefix: literal_string(&runes, Flags(fold_case)),
                start,
                end: i,
            });
        }
        start = i;
        (runes, fold_case) = next;
    }
    splices
}

fn leading_string(re: &Re) -> (Vec<u32>, u8) {
    let mut re = re;
    while let Re::Concat(subs) = re {
        match subs.first() {
            Some(first) => re = first,
            None => break,
        }
    }
    let (runes, flags) = re.runes();
    (runes.to_vec(), flags.fold_case())
}

fn remove_leading_string(re: &mut Re, n: usize, depth: usize) {
    match re {
        Re::Concat(subs) if !subs.is_empty() => {
            remove_leading_string(&mut subs[0], n, depth + 1);
            // RE2 tidies up at most four levels of concatenation.
            if depth < 4 && matches!(subs[0], Re::EmptyMatch) {
                match subs.len() {
                    0 | 1 => *re = Re::EmptyMatch,
                    2 => *re = subs.pop().unwrap_or(Re::EmptyMatch),
                    _ => {
                        subs.remove(0);
                    }
                }
            }
        }
        Re::Literal(..) => *re = Re::EmptyMatch,
        Re::LiteralString(runes, flags) => {
            if n >= runes.len() {
                *re = Re::EmptyMatch;
            } else if n + 1 == runes.len() {
                *re = Re::Literal(runes[n], *flags);
            } else {
                runes.drain(..n);
            }
        }
        _ => {}
    }
}

/// Round 2: runs of alternatives that start with the same simple piece.
fn factor_leading_pieces(subs: &mut [Re]) -> Vec<Splice> {
    fn factorable(re: &Re) -> bool {
        match re {
            Re::CharClass(_) | Re::AnyChar => true,
            Re::Repeat(sub, _, min, max) => {
                min == max && matches!(**sub, Re::Literal(..) | Re::CharClass(_) | Re::AnyChar)
            }
            other => other.is_empty_width(),
        }
    }
    let mut splices = Vec::new();
    let mut start = 0;
    for i in 0..=subs.len() {
        if i < subs.len() && i > 0 {
            if let (Some(first), Some(first_i)) =
                (leading_regexp(&subs[start]), leading_regexp(&subs[i]))
            {
                if factorable(first) && equal(first, first_i) {
                    continue;
                }
            }
        }
        if i >= start + 2 {
            if let Some(prefix) = leading_regexp(&subs[start]).cloned() {
                for sub in &mut subs[start..i] {
                    let whole = std::mem::replace(sub, Re::EmptyMatch);
                    *sub = remove_leading_regexp(whole);
                }
                splices.push(Splice {
                    prefix,
                    start,
                    end: i,
                });
            }
        }
        start = i;
    }
    splices
}

fn leading_regexp(re: &Re) -> Option<&Re> {
    match re {
        Re::EmptyMatch => None,
        Re::Concat(subs) if subs.len() >= 2 => match &subs[0] {
            Re::EmptyMatch => None,
            first => Some(first),
        },
        other => Some(other),
    }
}

fn remove_leading_regexp(re: Re) -> Re {
    match re {
        Re::EmptyMatch => Re::EmptyMatch,
        Re::Concat(mut subs) if subs.len() >= 2 => {
            if matches!(subs[0], Re::EmptyMatch) {
                return Re::Concat(subs);
            }
            subs.remove(0);
            if subs.len() == 1 {
                subs.pop().unwrap_or(Re::EmptyMatch)
            } else {
                Re::Concat(subs)
            }
        }
        _ => Re::EmptyMatch,
    }
}

/// Round 3: runs of literals and classes become one class.
fn merge_classes(subs: &[Re]) -> Vec<Splice> {
    let mut splices = Vec::new();
    let mut start = 0;
    for i in 0..=subs.len() {
        if i < subs.len()
            && i > 0
            && subs[start].is_literal_or_class()
            && subs[i].is_literal_or_class()
        {
            continue;
        }
        if i >= start + 2 {
            let mut ranges = Vec::new();
            for sub in &subs[start..i] {
                match sub {
                    Re::CharClass(r) => ranges.extend_from_slice(r),
                    Re::Literal(rune, flags) => {
                        ranges.extend(group(vec![(*rune, *rune)], false, Flags(flags.fold_case())))
                    }
                    _ => {}
                }
            }
            splices.push(Splice {
                prefix: Re::CharClass(canonical(ranges)),
                start,
                end: i,
            });
        }
        start = i;
    }
    splices
}

// ---------------------------------------------------------------------------------------------
// Simplify (simplify.cc): CoalesceWalker, then SimplifyWalker.

/// Joins `x*x`, `x+x*`, `x{2}x{3}` and the like into one repetition of `x`.
fn coalesce(re: Re) -> Re {
    match re {
        Re::Concat(subs) => {
            let mut subs: Vec<Re> = subs.into_iter().map(coalesce).collect();
            if !(1..subs.len()).any(|i| can_coalesce(&subs[i - 1], &subs[i])) {
                return Re::Concat(subs);
            }
            for i in 1..subs.len() {
                if can_coalesce(&subs[i - 1], &subs[i]) {
                    do_coalesce(&mut subs, i - 1);
                }
            }
            subs.retain(|sub| !matches!(sub, Re::EmptyMatch));
            Re::Concat(subs)
        }
        Re::Alternate(subs) => Re::Alternate(subs.into_iter().map(coalesce).collect()),
        Re::Capture(index, sub) => Re::Capture(index, Box::new(coalesce(*sub))),
        Re::Star(sub, flags) => Re::Star(Box::new(coalesce(*sub)), flags),
        Re::Plus(sub, flags) => Re::Plus(Box::new(coalesce(*sub)), flags),
        Re::Quest(sub, flags) => Re::Quest(Box::new(coalesce(*sub)), flags),
        Re::Repeat(sub, flags, min, max) => Re::Repeat(Box::new(coalesce(*sub)), flags, min, max),
        leaf => leaf,
    }
}

/// A repetition's operand, flags and counts (`max` -1 for unbounded).
fn repetition(re: &Re) -> Option<(&Re, Flags, i32, i32)> {
    match re {
        Re::Star(sub, flags) => Some((sub, *flags, 0, -1)),
        Re::Plus(sub, flags) => Some((sub, *flags, 1, -1)),
        Re::Quest(sub, flags) => Some((sub, *flags, 0, 1)),
        Re::Repeat(sub, flags, min, max) => Some((sub, *flags, *min, *max)),
        _ => None,
    }
}

fn can_coalesce(r1: &Re, r2: &Re) -> bool {
    let Some((sub, flags, _, _)) = repetition(r1) else {
        return false;
    };
    if !matches!(sub, Re::Literal(..) | Re::CharClass(_) | Re::AnyChar) {
        return false;
    }
    if let Some((sub2, flags2, _, _)) = repetition(r2) {
        if equal(sub, sub2) && flags.has(Flags::NON_GREEDY) == flags2.has(Flags::NON_GREEDY) {
            return true;
        }
    }
    if equal(sub, r2) {
        return true;
    }
    matches!((sub, r2), (Re::Literal(rune, lf), Re::LiteralString(runes, sf))
        if runes.first() == Some(rune) && lf.fold_case() == sf.fold_case())
}

fn do_coalesce(subs: &mut [Re], i: usize) {
    let Some((sub, flags, mut min, mut max)) = repetition(&subs[i]) else {
        return;
    };
    let sub = sub.clone();
    let mut rest = None;
    match repetition(&subs[i + 1]) {
        Some((_, _, min2, max2)) => {
            min += min2;
            if max2 == -1 {
                max = -1;
            } else if max != -1 {
                max += max2;
            }
        }
        None => match &subs[i + 1] {
            Re::LiteralString(runes, string_flags) => {
                let first = runes[0];
                let n = runes.iter().take_while(|&&r| r == first).count();
                let n = i32::try_from(n).unwrap_or(i32::MAX);
                min += n;
                if max != -1 {
                    max += n;
                }
                let left = &runes[n as usize..];
                if !left.is_empty() {
                    rest = Some(literal_string(left, *string_flags));
                }
            }
            _ => {
                min += 1;
                if max != -1 {
                    max += 1;
                }
            }
        },
    }
    let merged = Re::Repeat(Box::new(sub), flags, min, max);
    match rest {
        Some(rest) => {
            subs[i] = merged;
            subs[i + 1] = rest;
        }
        None => {
            subs[i] = Re::EmptyMatch;
            subs[i + 1] = merged;
        }
    }
}

/// Expands counted repetitions and turns empty and full classes into `NoMatch` and `AnyChar`.
/// Also says whether anything changed, which RE2 tells by pointer.
fn simplify(re: &Re) -> (Re, bool) {
    match re {
        Re::CharClass(ranges) if ranges.is_empty() => (Re::NoMatch, true),
        Re::CharClass(ranges) if ranges.as_slice() == [(0, MAX_RUNE)] => (Re::AnyChar, true),
        Re::Concat(subs) | Re::Alternate(subs) => {
            let mut changed = false;
            let new: Vec<Re> = subs
                .iter()
                .map(|sub| {
                    let (sub, c) = simplify(sub);
                    changed |= c;
                    sub
                })
                .collect();
            if !changed {
                return (re.clone(), false);
            }
            match re {
                Re::Concat(_) => (Re::Concat(new), true),
                _ => (Re::Alternate(new), true),
            }
        }
        Re::Capture(index, sub) => {
            let (sub, changed) = simplify(sub);
            (Re::Capture(*index, Box::new(sub)), changed)
        }
        Re::Star(sub, flags) | Re::Plus(sub, flags) | Re::Quest(sub, flags) => {
            let (new, changed) = simplify(sub);
            if matches!(new, Re::EmptyMatch) {
                return (new, true);
            }
            if !changed {
                return (re.clone(), false);
            }
            let op = re.repeat_op().map(|(op, _)| op);
            if new.repeat_op() == op.map(|op| (op, *flags)) {
                return (new, true);
            }
            let new = Box::new(new);
            let re = match op {
                Some(RepeatOp::Star) => Re::Star(new, *flags),
                Some(RepeatOp::Plus) => Re::Plus(new, *flags),
                _ => Re::Quest(new, *flags),
            };
            (re, true)
        }
        Re::Repeat(sub, flags, min, max) => {
            let (new, _) = simplify(sub);
            if matches!(new, Re::EmptyMatch) {
                return (new, true);
            }
            (simplify_repeat(new, *min, *max, *flags), true)
        }
        leaf => (leaf.clone(), false),
    }
}

/// `x{n,m}` as `n` copies of `x` then `m-n` nested `(x)?`; `x{n,}` as `n-1` copies and `x+`.
fn simplify_repeat(re: Re, mut min: i32, mut max: i32, flags: Flags) -> Re {
    // An empty-width assertion matches as often once as n times.
    let empty_width = re.is_empty_width()
        || matches!(&re, Re::Concat(subs) | Re::Alternate(subs)
            if subs.iter().all(Re::is_empty_width));
    if empty_width {
        min = min.min(1);
        max = max.min(1);
    }
    if max == -1 {
        return match min {
            0 => repeat(RepeatOp::Star, re, flags),
            1 => repeat(RepeatOp::Plus, re, flags),
            _ => {
                let mut subs = vec![re.clone(); (min - 1) as usize];
                subs.push(repeat(RepeatOp::Plus, re, flags));
                concat(subs)
            }
        };
    }
    if min == 0 && max == 0 {
        return Re::EmptyMatch;
    }
    if min == 1 && max == 1 {
        return re;
    }
    let mut out = (min > 0).then(|| concat(vec![re.clone(); min as usize]));
    if max > min {
        let innermost = repeat(RepeatOp::Quest, re.clone(), flags);
        let suffix = match max - min - 1 {
            0 => innermost,
            levels => Re::QuestChain {
                x: Box::new(re),
                levels: levels as usize,
                innermost: Box::new(innermost),
                flags,
            },
        };
        out = Some(match out {
            Some(prefix) => Re::Concat(vec![prefix, suffix]),
            None => suffix,
        });
    }
    out.unwrap_or(Re::NoMatch)
}

/// IsAnchorStart: takes a leading `\A` out of the regex (the program records it instead).
fn strip_anchor_start(re: &mut Re, depth: u32) -> bool {
    if depth >= 4 {
        return false;
    }
    match re {
        Re::Concat(subs) if !subs.is_empty() => {
            if !strip_anchor_start(&mut subs[0], depth + 1) {
                return false;
            }
            if subs.len() == 1 {
                *re = subs.pop().unwrap_or(Re::EmptyMatch);
            }
            true
        }
        Re::Capture(_, sub) => strip_anchor_start(sub, depth + 1),
        Re::BeginText => {
            *re = Re::EmptyMatch;
            true
        }
        _ => false,
    }
}

/// IsAnchorEnd: the same for a trailing `\z`.
fn strip_anchor_end(re: &mut Re, depth: u32) -> bool {
    if depth >= 4 {
        return false;
    }
    match re {
        Re::Concat(subs) if !subs.is_empty() => {
            let last = subs.len() - 1;
            if !strip_anchor_end(&mut subs[last], depth + 1) {
                return false;
            }
            if subs.len() == 1 {
                *re = subs.pop().unwrap_or(Re::EmptyMatch);
            }
            true
        }
        Re::Capture(_, sub) => strip_anchor_end(sub, depth + 1),
        Re::EndText(_) => {
            *re = Re::EmptyMatch;
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The compiler (compile.cc).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Fail,
    Alt,
    ByteRange,
    Capture,
    EmptyWidth,
    Match,
    Nop,
}

#[derive(Clone, Copy, Debug)]
struct Inst {
    op: Op,
    out: u32,
    out1: u32,
    lo: u8,
    hi: u8,
    fold: bool,
}

impl Inst {
    fn new(op: Op) -> Inst {
        Inst {
            op,
            out: 0,
            out1: 0,
            lo: 0,
            hi: 0,
            fold: false,
        }
    }
}

/// The outs still to be filled in: `p >> 1` is an instruction, `p & 1` says out1 or out, and
/// the list is threaded through those very fields.
#[derive(Clone, Copy, Default)]
struct PatchList {
    head: u32,
    tail: u32,
}

impl PatchList {
    fn mk(p: u32) -> PatchList {
        PatchList { head: p, tail: p }
    }
}

#[derive(Clone, Copy, Default)]
struct Frag {
    begin: u32,
    end: PatchList,
    nullable: bool,
}

struct Compiler {
    inst: Vec<Inst>,
    failed: bool,
    rune_cache: HashMap<u64, u32>,
    rune_range: Frag,
}

fn compile(re: Re) -> Result<usize, TooLarge> {
    let (mut re, _) = simplify(&coalesce(re));
    let anchor_start = strip_anchor_start(&mut re, 0);
    strip_anchor_end(&mut re, 0);

    let mut c = Compiler {
        inst: vec![Inst::new(Op::Fail)],
        failed: false,
        rune_cache: HashMap::new(),
        rune_range: Frag::default(),
    };
    let all = c.walk(&re);
    let matched = c.match_();
    let all = c.cat(all, matched);
    let start = all.begin;
    let all = if anchor_start {
        all
    } else {
        // The unanchored search: a non-greedy loop over any byte first.
        let any = c.byte_range(0x00, 0xFF, false);
        let dot_star = c.star(any, true);
        c.cat(dot_star, all)
    };
    if c.failed {
        return Err(TooLarge);
    }
    let mut inst = c.inst;
    if start == 0 && all.begin == 0 {
        // Nothing can match: only the fail instruction is kept.
        inst.truncate(1);
    }
    let mut prog = Prog {
        inst,
        start,
        start_unanchored: all.begin,
    };
    prog.optimize();
    Ok(prog.flattened_size())
}

impl Compiler {
    fn alloc(&mut self, n: usize) -> Option<u32> {
        if self.failed || self.inst.len() + n > MAX_INST {
            self.failed = true;
            return None;
        }
        let id = self.inst.len() as u32;
        self.inst.extend(std::iter::repeat_n(Inst::new(Op::Nop), n));
        Some(id)
    }

    fn patch(&mut self, list: PatchList, val: u32) {
        let mut p = list.head;
        while p != 0 {
            let inst = &mut self.inst[(p >> 1) as usize];
            if p & 1 != 0 {
                p = inst.out1;
                inst.out1 = val;
            } else {
                p = inst.out;
                inst.out = val;
            }
        }
    }

    fn append(&mut self, l1: PatchList, l2: PatchList) -> PatchList {
        if l1.head == 0 {
            return l2;
        }
        if l2.head == 0 {
            return l1;
        }
        let inst = &mut self.inst[(l1.tail >> 1) as usize];
        if l1.tail & 1 != 0 {
            inst.out1 = l2.head;
        } else {
            inst.out = l2.head;
        }
        PatchList {
            head: l1.head,
            tail: l2.tail,
        }
    }

    fn no_match() -> Frag {
        Frag::default()
    }

    fn cat(&mut self, a: Frag, b: Frag) -> Frag {
        if a.begin == 0 || b.begin == 0 {
            return Self::no_match();
        }
        // A lone no-op is elided.
        let first = self.inst[a.begin as usize];
        if first.op == Op::Nop && a.end.head == a.begin << 1 && first.out == 0 {
            self.patch(a.end, b.begin);
            return b;
        }
        self.patch(a.end, b.begin);
        Frag {
            begin: a.begin,
            end: b.end,
            nullable: a.nullable && b.nullable,
        }
    }

    fn alt(&mut self, a: Frag, b: Frag) -> Frag {
        if a.begin == 0 {
            return b;
        }
        if b.begin == 0 {
            return a;
        }
        let Some(id) = self.alloc(1) else {
            return Self::no_match();
        };
        self.inst[id as usize] = Inst {
            out: a.begin,
            out1: b.begin,
            ..Inst::new(Op::Alt)
        };
        let end = self.append(a.end, b.end);
        Frag {
            begin: id,
            end,
            nullable: a.nullable || b.nullable,
        }
    }

    /// An Alt looping back to `a` (greedy: `a` is its out) and its exit's patch list.
    fn loop_alt(&mut self, a: Frag, non_greedy: bool) -> Option<(u32, PatchList)> {
        let id = self.alloc(1)?;
        let (inst, exit) = if non_greedy {
            (
                Inst {
                    out1: a.begin,
                    ..Inst::new(Op::Alt)
                },
                PatchList::mk(id << 1),
            )
        } else {
            (
                Inst {
                    out: a.begin,
                    ..Inst::new(Op::Alt)
                },
                PatchList::mk((id << 1) | 1),
            )
        };
        self.inst[id as usize] = inst;
        Some((id, exit))
    }

    fn plus(&mut self, a: Frag, non_greedy: bool) -> Frag {
        let Some((id, exit)) = self.loop_alt(a, non_greedy) else {
            return Self::no_match();
        };
        self.patch(a.end, id);
        Frag {
            begin: a.begin,
            end: exit,
            nullable: a.nullable,
        }
    }

    fn star(&mut self, a: Frag, non_greedy: bool) -> Frag {
        // A nullable loop body needs the second Alt of `(a+)?` for the priorities to hold.
        if a.nullable {
            let plus = self.plus(a, non_greedy);
            return self.quest(plus, non_greedy);
        }
        let Some((id, exit)) = self.loop_alt(a, non_greedy) else {
            return Self::no_match();
        };
        self.patch(a.end, id);
        Frag {
            begin: id,
            end: exit,
            nullable: true,
        }
    }

    fn quest(&mut self, a: Frag, non_greedy: bool) -> Frag {
        if a.begin == 0 {
            return self.nop();
        }
        let Some((id, exit)) = self.loop_alt(a, non_greedy) else {
            return Self::no_match();
        };
        let end = self.append(exit, a.end);
        Frag {
            begin: id,
            end,
            nullable: true,
        }
    }

    fn simple(&mut self, inst: Inst, nullable: bool) -> Frag {
        let Some(id) = self.alloc(1) else {
            return Self::no_match();
        };
        self.inst[id as usize] = inst;
        Frag {
            begin: id,
            end: PatchList::mk(id << 1),
            nullable,
        }
    }

    fn byte_range(&mut self, lo: u8, hi: u8, fold: bool) -> Frag {
        self.simple(
            Inst {
                lo,
                hi,
                fold,
                ..Inst::new(Op::ByteRange)
            },
            false,
        )
    }

    fn nop(&mut self) -> Frag {
        self.simple(Inst::new(Op::Nop), true)
    }

    fn empty_width(&mut self) -> Frag {
        self.simple(Inst::new(Op::EmptyWidth), true)
    }

    fn match_(&mut self) -> Frag {
        let Some(id) = self.alloc(1) else {
            return Self::no_match();
        };
        self.inst[id as usize] = Inst::new(Op::Match);
        Frag {
            begin: id,
            end: PatchList::default(),
            nullable: false,
        }
    }

    fn capture(&mut self, a: Frag) -> Frag {
        if a.begin == 0 {
            return Self::no_match();
        }
        let Some(id) = self.alloc(2) else {
            return Self::no_match();
        };
        self.inst[id as usize] = Inst {
            out: a.begin,
            ..Inst::new(Op::Capture)
        };
        self.inst[id as usize + 1] = Inst::new(Op::Capture);
        self.patch(a.end, id + 1);
        Frag {
            begin: id,
            end: PatchList::mk((id + 1) << 1),
            nullable: a.nullable,
        }
    }

    fn literal(&mut self, rune: u32, fold: bool) -> Frag {
        if rune < 0x80 {
            return self.byte_range(rune as u8, rune as u8, fold);
        }
        let bytes = utf8(rune);
        let mut f = self.byte_range(bytes[0], bytes[0], false);
        for &b in &bytes[1..] {
            let next = self.byte_range(b, b, false);
            f = self.cat(f, next);
        }
        f
    }

    fn walk(&mut self, re: &Re) -> Frag {
        if self.failed {
            return Self::no_match();
        }
        match re {
            Re::NoMatch => Self::no_match(),
            Re::EmptyMatch => self.nop(),
            Re::Literal(rune, flags) => self.literal(*rune, flags.has(Flags::FOLD_CASE)),
            Re::LiteralString(runes, flags) => {
                let mut f: Option<Frag> = None;
                for &rune in runes {
                    let next = self.literal(rune, flags.has(Flags::FOLD_CASE));
                    f = Some(match f {
                        Some(f) => self.cat(f, next),
                        None => next,
                    });
                }
                match f {
                    Some(f) => f,
                    None => self.nop(),
                }
            }
            Re::AnyChar => {
                self.begin_range();
                self.add_rune_range(0, MAX_RUNE, false);
                self.rune_range
            }
            Re::CharClass(ranges) => self.char_class(ranges),
            Re::BeginLine
            | Re::EndLine
            | Re::BeginText
            | Re::EndText(_)
            | Re::WordBoundary
            | Re::NoWordBoundary => self.empty_width(),
            Re::Capture(_, sub) => {
                let f = self.walk(sub);
                self.capture(f)
            }
            Re::Star(sub, flags) => {
                let f = self.walk(sub);
                self.star(f, flags.has(Flags::NON_GREEDY))
            }
            Re::Plus(sub, flags) => {
                let f = self.walk(sub);
                self.plus(f, flags.has(Flags::NON_GREEDY))
            }
            Re::Quest(sub, flags) => {
                let f = self.walk(sub);
                self.quest(f, flags.has(Flags::NON_GREEDY))
            }
            Re::QuestChain {
                x,
                levels,
                innermost,
                flags,
            } => {
                // In RE2's walk: every copy of `x`, outermost first, then the innermost `x?`,
                // then the `?` around each level, innermost first.
                let copies: Vec<Frag> = (0..*levels).map(|_| self.walk(x)).collect();
                let mut f = self.walk(innermost);
                for copy in copies.into_iter().rev() {
                    let level = self.cat(copy, f);
                    f = self.quest(level, flags.has(Flags::NON_GREEDY));
                }
                f
            }
            // Simplify expands every repetition.
            Re::Repeat(..) => {
                self.failed = true;
                Self::no_match()
            }
            Re::Concat(subs) => {
                let frags: Vec<Frag> = subs.iter().map(|sub| self.walk(sub)).collect();
                let mut frags = frags.into_iter();
                let first = frags.next().unwrap_or_default();
                frags.fold(first, |f, next| self.cat(f, next))
            }
            Re::Alternate(subs) => {
                let frags: Vec<Frag> = subs.iter().map(|sub| self.walk(sub)).collect();
                let mut frags = frags.into_iter();
                let first = frags.next().unwrap_or_default();
                frags.fold(first, |f, next| self.alt(f, next))
            }
        }
    }

    fn char_class(&mut self, ranges: &Ranges) -> Frag {
        if ranges.is_empty() {
            self.failed = true;
            return Self::no_match();
        }
        // When the class treats A-Z as it treats a-z, a-z is matched case-insensitively and
        // A-Z dropped: (?i)abc is one instruction a letter, not three.
        let folds_ascii =
            (0..26u32).all(|i| contains(ranges, 0x41 + i) == contains(ranges, 0x61 + i));
        let (upper_a, upper_z, lower_a, lower_z) = (0x41, 0x5A, 0x61, 0x7A);
        self.begin_range();
        for &(lo, hi) in ranges {
            if folds_ascii && upper_a <= lo && hi <= upper_z {
                continue;
            }
            let fold = folds_ascii
                && !((lo <= upper_a && lower_z <= hi)
                    || hi < upper_a
                    || lower_z < lo
                    || (upper_z < lo && hi < lower_a));
            self.add_rune_range(lo, hi, fold);
        }
        self.rune_range
    }

    fn begin_range(&mut self) {
        self.rune_cache.clear();
        self.rune_range = Frag::default();
    }

    fn uncached_suffix(&mut self, lo: u8, hi: u8, fold: bool, next: u32) -> u32 {
        let f = self.byte_range(lo, hi, fold);
        if next != 0 {
            self.patch(f.end, next);
        } else {
            self.rune_range.end = self.append(self.rune_range.end, f.end);
        }
        f.begin
    }

    fn cache_key(lo: u8, hi: u8, fold: bool, next: u32) -> u64 {
        (u64::from(next) << 17) | (u64::from(lo) << 9) | (u64::from(hi) << 1) | u64::from(fold)
    }

    fn cached_suffix(&mut self, lo: u8, hi: u8, fold: bool, next: u32) -> u32 {
        let key = Self::cache_key(lo, hi, fold, next);
        if let Some(&id) = self.rune_cache.get(&key) {
            return id;
        }
        let id = self.uncached_suffix(lo, hi, fold, next);
        self.rune_cache.insert(key, id);
        id
    }

    fn is_cached_suffix(&self, id: u32) -> bool {
        let inst = self.inst[id as usize];
        self.rune_cache
            .contains_key(&Self::cache_key(inst.lo, inst.hi, inst.fold, inst.out))
    }

    fn add_suffix(&mut self, id: u32) {
        if self.failed {
            return;
        }
        if self.rune_range.begin == 0 {
            self.rune_range.begin = id;
            return;
        }
        // UTF-8: a trie on the leading bytes keeps the fan-out down.
        self.rune_range.begin = self.add_suffix_recursive(self.rune_range.begin, id);
    }

    fn byte_range_equal(&self, a: u32, b: u32) -> bool {
        let (a, b) = (self.inst[a as usize], self.inst[b as usize]);
        a.op == Op::ByteRange && a.lo == b.lo && a.hi == b.hi && a.fold == b.fold
    }

    /// Where `id`'s leading byte range already is under `root`: the root itself (0), or the
    /// Alt whose out1 it is.
    fn find_byte_range(&self, root: u32, id: u32) -> Option<(u32, u32)> {
        match self.inst[root as usize].op {
            Op::ByteRange => self.byte_range_equal(root, id).then_some((root, 0)),
            // Classes are sorted: only the latest alternative can share a leading byte.
            Op::Alt => {
                let out1 = self.inst[root as usize].out1;
                self.byte_range_equal(out1, id)
                    .then_some((root, (root << 1) | 1))
            }
            _ => None,
        }
    }

    fn add_suffix_recursive(&mut self, mut root: u32, id: u32) -> u32 {
        let Some((parent, end)) = self.find_byte_range(root, id) else {
            let Some(alt) = self.alloc(1) else {
                return 0;
            };
            self.inst[alt as usize] = Inst {
                out: root,
                out1: id,
                ..Inst::new(Op::Alt)
            };
            return alt;
        };
        let mut br = if end == 0 {
            root
        } else {
            self.inst[parent as usize].out1
        };
        if self.is_cached_suffix(br) {
            // A cached suffix is shared: clone the head before changing it.
            let Some(clone) = self.alloc(1) else {
                return 0;
            };
            self.inst[clone as usize] = self.inst[br as usize];
            br = clone;
            if end == 0 {
                root = br;
            } else {
                self.inst[parent as usize].out1 = br;
            }
        }
        let out = self.inst[id as usize].out;
        if !self.is_cached_suffix(id) && id as usize + 1 == self.inst.len() {
            // The new head is the latest instruction and now redundant: free it.
            self.inst.pop();
        }
        let out = self.add_suffix_recursive(self.inst[br as usize].out, out);
        if out == 0 {
            return 0;
        }
        self.inst[br as usize].out = out;
        root
    }

    fn add_rune_range(&mut self, lo: u32, hi: u32, fold: bool) {
        if lo > hi {
            return;
        }
        if lo == 0x80 && hi == MAX_RUNE {
            // The common 80-10FFFF, with overlong and out-of-range sequences let through.
            let cont1 = self.uncached_suffix(0x80, 0xBF, false, 0);
            let id = self.uncached_suffix(0xC2, 0xDF, false, cont1);
            self.add_suffix(id);
            let cont2 = self.uncached_suffix(0x80, 0xBF, false, cont1);
            let id = self.uncached_suffix(0xE0, 0xEF, false, cont2);
            self.add_suffix(id);
            let cont3 = self.uncached_suffix(0x80, 0xBF, false, cont2);
            let id = self.uncached_suffix(0xF0, 0xF4, false, cont3);
            self.add_suffix(id);
            return;
        }
        // Split into ranges of one encoded length.
        for max in [0x7F, 0x7FF, 0xFFFF] {
            if lo <= max && max < hi {
                self.add_rune_range(lo, max, fold);
                self.add_rune_range(max + 1, hi, fold);
                return;
            }
        }
        if hi < 0x80 {
            let id = self.uncached_suffix(lo as u8, hi as u8, fold, 0);
            self.add_suffix(id);
            return;
        }
        // Split into ranges that agree on their leading bytes.
        for i in 1..4 {
            let m = (1u32 << (6 * i)) - 1;
            if lo & !m != hi & !m {
                if lo & m != 0 {
                    self.add_rune_range(lo, lo | m, fold);
                    self.add_rune_range((lo | m) + 1, hi, fold);
                    return;
                }
                if hi & m != m {
                    self.add_rune_range(lo, (hi & !m) - 1, fold);
                    self.add_rune_range(hi & !m, hi, fold);
                    return;
                }
            }
        }
        let (ulo, uhi) = (utf8(lo), utf8(hi));
        let n = ulo.len();
        let mut id = 0;
        for i in (0..n).rev() {
            // Cache the last continuation byte and inner byte ranges, not the leading byte.
            id = if i == n - 1 || (ulo[i] < uhi[i] && i != 0) {
                self.cached_suffix(ulo[i], uhi[i], false, id)
            } else {
                self.uncached_suffix(ulo[i], uhi[i], false, id)
            };
        }
        self.add_suffix(id);
    }
}

/// UTF-8 as RE2's runetochar writes it: surrogates are encoded like any other rune.
fn utf8(rune: u32) -> Vec<u8> {
    match rune {
        0..=0x7F => vec![rune as u8],
        0x80..=0x7FF => vec![0xC0 | (rune >> 6) as u8, 0x80 | (rune & 0x3F) as u8],
        0x800..=0xFFFF => vec![
            0xE0 | (rune >> 12) as u8,
            0x80 | ((rune >> 6) & 0x3F) as u8,
            0x80 | (rune & 0x3F) as u8,
        ],
        _ => vec![
            0xF0 | (rune >> 18) as u8,
            0x80 | ((rune >> 12) & 0x3F) as u8,
            0x80 | ((rune >> 6) & 0x3F) as u8,
            0x80 | (rune & 0x3F) as u8,
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// The compiled program (prog.cc): Optimize, then Flatten, whose result ProgramSize() counts.

struct Prog {
    inst: Vec<Inst>,
    start: u32,
    start_unanchored: u32,
}

/// A set of instruction ids that remembers insertion order, like RE2's SparseSet.
struct IdSet {
    member: Vec<bool>,
    order: Vec<u32>,
}

impl IdSet {
    fn new(n: usize) -> IdSet {
        IdSet {
            member: vec![false; n],
            order: Vec::new(),
        }
    }

    fn contains(&self, id: u32) -> bool {
        self.member[id as usize]
    }

    fn insert(&mut self, id: u32) -> bool {
        if self.member[id as usize] {
            return false;
        }
        self.member[id as usize] = true;
        self.order.push(id);
        true
    }

    fn clear(&mut self) {
        for &id in &self.order {
            self.member[id as usize] = false;
        }
        self.order.clear();
    }
}

/// A map from instruction id to a number, in insertion order, like RE2's SparseArray.
struct IdMap {
    index: Vec<Option<u32>>,
    entries: Vec<(u32, u32)>,
}

impl IdMap {
    fn new(n: usize) -> IdMap {
        IdMap {
            index: vec![None; n],
            entries: Vec::new(),
        }
    }

    fn has(&self, id: u32) -> bool {
        self.index[id as usize].is_some()
    }

    fn get(&self, id: u32) -> Option<u32> {
        self.index[id as usize].map(|i| self.entries[i as usize].1)
    }

    /// Adds `id` with the next number, unless it is there already.
    fn add(&mut self, id: u32) {
        if !self.has(id) {
            self.index[id as usize] = Some(self.entries.len() as u32);
            self.entries.push((id, self.entries.len() as u32));
        }
    }
}

impl Prog {
    /// Skips the no-ops on every path from the anchored start.
    fn optimize(&mut self) {
        let mut queue = IdSet::new(self.inst.len());
        if self.start != 0 {
            queue.insert(self.start);
        }
        let mut i = 0;
        while i < queue.order.len() {
            let id = queue.order[i] as usize;
            i += 1;
            let out = self.skip_nops(self.inst[id].out);
            self.inst[id].out = out;
            if out != 0 {
                queue.insert(out);
            }
            if self.inst[id].op == Op::Alt {
                let out1 = self.skip_nops(self.inst[id].out1);
                self.inst[id].out1 = out1;
                if out1 != 0 {
                    queue.insert(out1);
                }
            }
        }
    }

    fn skip_nops(&self, mut id: u32) -> u32 {
        while id != 0 && self.inst[id as usize].op == Op::Nop {
            id = self.inst[id as usize].out;
        }
        id
    }

    /// The number of instructions Flatten leaves: the program cut into "trees" at each
    /// successor of a byte range, capture or empty-width instruction (and at the dominators
    /// nullable loops need), each tree emitted as one list of its leaves, with a no-op for
    /// every other tree it reaches through Alts.
    fn flattened_size(&self) -> usize {
        let n = self.inst.len();
        let mut reachable = IdSet::new(n);
        let mut stack: Vec<u32> = Vec::new();

        // Successor roots, and the predecessors of every Alt's outs.
        let mut roots = IdMap::new(n);
        let mut preds: Vec<Vec<u32>> = vec![Vec::new(); n];
        roots.add(0);
        roots.add(self.start_unanchored);
        roots.add(self.start);
        stack.push(self.start_unanchored);
        while let Some(mut id) = stack.pop() {
            while reachable.insert(id) {
                let inst = self.inst[id as usize];
                match inst.op {
                    Op::Alt => {
                        preds[inst.out as usize].push(id);
                        preds[inst.out1 as usize].push(id);
                        stack.push(inst.out1);
                        id = inst.out;
                    }
                    Op::ByteRange | Op::Capture | Op::EmptyWidth => {
                        roots.add(inst.out);
                        id = inst.out;
                    }
                    Op::Nop => id = inst.out,
                    Op::Match | Op::Fail => break,
                }
            }
        }

        // Dominator roots, from the highest successor root down.
        let mut sorted: Vec<u32> = roots.entries.iter().map(|&(id, _)| id).collect();
        sorted.sort_unstable();
        for &root in sorted.iter().skip(1).rev() {
            if root == self.start_unanchored || root == self.start {
                continue;
            }
            reachable.clear();
            stack.clear();
            stack.push(root);
            while let Some(mut id) = stack.pop() {
                while reachable.insert(id) {
                    if id != root && roots.has(id) {
                        break;
                    }
                    let inst = self.inst[id as usize];
                    match inst.op {
                        Op::Alt => {
                            stack.push(inst.out1);
                            id = inst.out;
                        }
                        Op::Nop => id = inst.out,
                        _ => break,
                    }
                }
            }
            let flooded = reachable.order.clone();
            for id in flooded {
                if preds[id as usize].iter().any(|&p| !reachable.contains(p)) {
                    roots.add(id);
                }
            }
        }

        // The lists.
        let mut size = 0;
        for &(root, _) in &roots.entries {
            reachable.clear();
            stack.clear();
            stack.push(root);
            while let Some(mut id) = stack.pop() {
                while reachable.insert(id) {
                    if id != root && roots.get(id).is_some() {
                        size += 1; // a no-op into that other list
                        break;
                    }
                    let inst = self.inst[id as usize];
                    match inst.op {
                        Op::Alt => {
                            stack.push(inst.out1);
                            id = inst.out;
                        }
                        Op::Nop => id = inst.out,
                        Op::ByteRange | Op::Capture | Op::EmptyWidth | Op::Match | Op::Fail => {
                            size += 1;
                            break;
                        }
                    }
                }
            }
        }
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(pattern: &str) -> usize {
        pattern_program_size(pattern).unwrap()
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
            // A UUID path segment: 72 instructions in RE2.
            "^/v1/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        ] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    /// The sizes below are what RE2 (google-re2 1.1.20251105) reports.
    #[test]
    fn sizes_are_re2_program_sizes() {
        // Fail, match, and the two instructions of the unanchored `.*?` loop.
        assert_eq!(size("abc"), 4 + 3);
        // Anchored: no loop. `$` is recorded by the program, not an instruction.
        assert_eq!(size("^$"), 2);
        // `^` and a literal prefix are matched outside the program, which keeps the loop.
        assert_eq!(size("^/v1/a"), 4);
        assert_eq!(size("[0-9a-f]"), 4 + 2);
        // `.` is [^\n]: two ASCII ranges and the UTF-8 lead bytes, continuation bytes shared.
        assert_eq!(size("."), 12);
        assert_eq!(size(".*"), 12);
        // Case folding adds U+017F and U+212A (multi-byte) to [a-z].
        assert_eq!(size("(?i)[a-z]{2,4}"), 30);
        assert_eq!(
            size("^/v1/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
            72
        );
        assert_eq!(size(".{10}"), 84);
        assert_eq!(
            size("^/canary/(alpha|beta|gamma|delta|epsilon|zeta)-[0-9]{1,16}$"),
            68
        );
        assert_eq!(
            size("(?:[0-9]{1,3}(?:\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}"),
            43
        );
        assert_eq!(size("a{1000}"), 1004);
        assert_eq!(size("(?:^)*"), 9);
        assert_eq!(size("(?:^){3}"), 2);
    }

    #[test]
    fn program_size_reads_an_hir() {
        let hir = regex_syntax::ParserBuilder::new()
            .build()
            .parse("^/v1/[0-9a-f]{8}$")
            .unwrap();
        assert_eq!(program_size(&hir), Ok(size("^/v1/[0-9a-f]{8}$")));
        let hir = regex_syntax::ParserBuilder::new()
            .build()
            .parse("a{1000}")
            .unwrap();
        assert_eq!(program_size(&hir), Ok(1004));
    }

    #[test]
    fn too_complex_regexes_are_refused() {
        // Two UUIDs in one path are past the limit.
        let uuid = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
        let e = check(&format!("^/v1/{uuid}/items/{uuid}$")).unwrap_err();
        assert!(e.contains("too complex for Envoy"), "{e}");
        assert!(check("a{1000}").unwrap_err().contains("too complex"));
        assert!(check(&"(ab|cd)".repeat(20)).is_err());
        // A Unicode property class is hundreds of byte ranges.
        assert!(check("\\pL+").unwrap_err().contains("too complex"));
        assert!(check("a{1001}")
            .unwrap_err()
            .contains("repetition count above 1000"));
        // RE2 refuses nested counts that multiply past 1000, however small the program.
        assert!(check("(?:(?:){2}){600}")
            .unwrap_err()
            .contains("multiply past 1000"));
        // Compiling stops at MAX_INST instructions (RE2 cannot compile this one at all).
        assert!(check("(?:\\pL){600}")
            .unwrap_err()
            .contains("into more than 100000 instructions"));
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
        for (pattern, what) in [
            ("(?x)a b", "the x flag"),
            ("(?-u:a)", "the u flag"),
            ("(?R)^a$", "the R flag"),
            ("\\u0041", "\\u or \\U escape"),
            ("[\\U00000041-Z]", "\\u or \\U escape"),
            ("a**", "repetition operator right after another"),
            ("a{2}{3}", "repetition operator right after another"),
        ] {
            let e = check(pattern).unwrap_err();
            assert!(e.contains(what), "{pattern}: {e}");
        }
    }
}
