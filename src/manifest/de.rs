//! A strict `serde` deserializer over the positioned YAML tree of [`super::yaml`].
//!
//! Every error carries the position of the node it is about and the field path leading to it
//! (`spec.rules[0].backendRefs[1].weight`). Scalars are typed strictly, because YAML 1.1's
//! implicit typing is a classic source of silent misconfiguration:
//!
//! - a string field given a plain scalar that YAML reads as null, a boolean or a number
//!   (`~`, `yes`, `on`, `0777`, `1.10`, `80`) is an error that says to quote it;
//! - an integer field takes only a plain decimal integer in range (not `0777`, `"50"`, `50%`,
//!   `1.5`, nor `-1` for an unsigned field);
//! - a boolean field takes only `true` or `false`;
//! - `null` (or an empty value) is accepted only where the field is optional.
//!
//! [`Spanned`](super::span::Spanned) values receive the position of their node through the
//! struct name [`SPANNED_NAME`].

use std::fmt;
use std::sync::Arc;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, Expected, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde::Deserialize;

use super::span::{SPANNED_FIELDS, SPANNED_NAME};
use super::yaml::{is_null_text, Node, NodeKind, ScalarStyle};
use super::{Diagnostic, Pos};

/// Deserializes `T` from `node`, a node of the file named `file`.
pub fn from_node<'de, T: Deserialize<'de>>(
    node: &'de Node,
    file: &'de Arc<str>,
) -> Result<T, Error> {
    T::deserialize(NodeDeserializer::new(node, file, String::new()))
}

/// A deserialization error with the position and field path of the node it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    message: String,
    path: String,
    line: usize,
    column: usize,
    located: bool,
    /// Set by `missing_field`: the path then names the missing field, at its mapping's position.
    missing: Option<&'static str>,
    /// The message gains `, found VALUE` once the node is known.
    append_found: bool,
}

impl Error {
    fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            path: String::new(),
            line: 0,
            column: 0,
            located: false,
            missing: None,
            append_found: false,
        }
    }

    fn at(node: &Node, path: &str, message: impl Into<String>) -> Self {
        Error::new(message).locate(node, path)
    }

    /// Attaches the node's position unless a deeper node already did.
    fn locate(mut self, node: &Node, path: &str) -> Self {
        if self.located {
            return self;
        }
        self.located = true;
        self.line = node.line;
        self.column = node.column;
        self.path = match self.missing.take() {
            Some(field) => child_path(path, field),
            None => path.to_string(),
        };
        if self.append_found {
            self.message = format!("{}, found {}", self.message, found(node));
        }
        self
    }

    /// The message without path or position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The field path, such as `spec.rules[0].backendRefs[1].weight`; empty for the document.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn line(&self) -> usize {
        self.line
    }

    pub fn column(&self) -> usize {
        self.column
    }

    pub fn to_diagnostic(&self, file: &Arc<str>) -> Diagnostic {
        let pos = Pos {
            file: file.clone(),
            line: self.line.max(1),
            column: self.column.max(1),
        };
        Diagnostic::error(pos, self.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        let msg = msg.to_string();
        if let Some(name) = msg.strip_prefix("data did not match any variant of untagged enum ") {
            let expected = match name {
                "IntOrString" => "expected an integer (0..65535) or a name".to_string(),
                other => format!("value has none of the forms of {other}"),
            };
            let mut e = Error::new(expected);
            e.append_found = true;
            return e;
        }
        Error::new(msg)
    }

    fn invalid_type(unexp: Unexpected, exp: &dyn Expected) -> Self {
        Error::new(format!("expected {exp}, found {unexp}"))
    }

    fn invalid_value(unexp: Unexpected, exp: &dyn Expected) -> Self {
        Error::new(format!("invalid value {unexp}, expected {exp}"))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let mut message = format!("unknown field \"{field}\"");
        match suggest(field, expected) {
            Some(best) => message.push_str(&format!(" (did you mean \"{best}\"?)")),
            None if expected.is_empty() => message.push_str("; no fields are accepted here"),
            None => message.push_str(&format!("; known fields: {}", expected.join(", "))),
        }
        Error::new(message)
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let mut message = format!("unknown value \"{variant}\"");
        match suggest(variant, expected) {
            Some(best) => message.push_str(&format!(" (did you mean \"{best}\"?)")),
            None => message.push_str(&format!("; expected one of {}", expected.join(", "))),
        }
        Error::new(message)
    }

    fn missing_field(field: &'static str) -> Self {
        let mut e = Error::new(format!("missing required field \"{field}\""));
        e.missing = Some(field);
        e
    }
}

/// The closest of `candidates` to `given`, if it is close enough to be a typo.
pub(crate) fn suggest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let given_lower = given.to_lowercase();
    let close = candidates
        .iter()
        .filter(|c| !c.starts_with('$'))
        .map(|c| {
            (
                strsim::damerau_levenshtein(&given_lower, &c.to_lowercase()),
                *c,
            )
        })
        .filter(|(d, _)| *d <= 1 + given.chars().count() / 4)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    // `Prefix` for `PathPrefix`: a part of exactly one candidate.
    close.or_else(|| {
        let mut containing = candidates.iter().filter(|c| {
            given_lower.len() >= 4 && !c.starts_with('$') && c.to_lowercase().contains(&given_lower)
        });
        match (containing.next(), containing.next()) {
            (Some(only), None) => Some(*only),
            _ => None,
        }
    })
}

/// `spec` + `rules` = `spec.rules`; keys that are not identifiers are quoted: `labels["a.b/c"]`.
pub(crate) fn child_path(path: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$');
    match (path.is_empty(), simple) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

/// How a value is shown in messages: `80`, `"80"`, `null`, `an empty value`, `a mapping`.
fn found(node: &Node) -> String {
    match &node.kind {
        NodeKind::Scalar {
            style: ScalarStyle::Plain,
            text,
        } if text.is_empty() => "an empty value".to_string(),
        NodeKind::Scalar {
            style: ScalarStyle::Plain,
            text,
        } if text == "null" => "null".to_string(),
        NodeKind::Scalar {
            style: ScalarStyle::Plain,
            text,
        } if is_null_text(text) => format!("null ({text})"),
        NodeKind::Scalar {
            style: ScalarStyle::Plain,
            text,
        } => shorten(text),
        NodeKind::Scalar { text, .. } => format!("the string \"{}\"", shorten(text)),
        _ => node.describe().to_string(),
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}...")
    }
}

/// What YAML (1.1 or 1.2) would make of a plain scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plain {
    Null,
    /// `true`/`false` and their capitalized forms (YAML 1.2 core schema).
    Bool(bool),
    /// `yes`, `no`, `on`, `off`, `y`, `n`: booleans in YAML 1.1 only.
    Yaml11Bool,
    /// Plain decimal integer: `-?(0|[1-9][0-9]*)`.
    Int,
    /// Other integer forms: `0777` (octal in YAML 1.1), `0o17`, `0x1F`, `1_000`, `+5`.
    OtherInt,
    /// `1.10`, `1e3`, `.5`.
    Float,
    /// `.inf`, `-.inf`, `.nan`.
    SpecialFloat,
    Str,
}

pub(crate) fn classify_plain(text: &str) -> Plain {
    if is_null_text(text) {
        return Plain::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        "y" | "Y" | "yes" | "Yes" | "YES" | "n" | "N" | "no" | "No" | "NO" | "on" | "On" | "ON"
        | "off" | "Off" | "OFF" => return Plain::Yaml11Bool,
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => return Plain::SpecialFloat,
        _ => {}
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if is_digits(unsigned) {
        return if unsigned.len() > 1 && unsigned.starts_with('0') {
            Plain::OtherInt
        } else {
            Plain::Int
        };
    }
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    if is_digits(body) {
        return Plain::OtherInt; // `+5`
    }
    let radix = |prefix: &str, ok: fn(u8) -> bool| {
        body.strip_prefix(prefix)
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| ok(b) || b == b'_'))
    };
    if radix("0x", |b| b.is_ascii_hexdigit())
        || radix("0o", |b| (b'0'..=b'7').contains(&b))
        || radix("0b", |b| b == b'0' || b == b'1')
    {
        return Plain::OtherInt;
    }
    if body.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && body.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return Plain::OtherInt; // `1_000`
    }
    if is_float(body) {
        return Plain::Float;
    }
    Plain::Str
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, with a dot or an exponent.
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (!int.is_empty() || !frac.is_empty())
                && digits(int)
                && digits(frac)
                && (int.bytes().any(|b| b.is_ascii_digit())
                    || frac.bytes().any(|b| b.is_ascii_digit()))
        }
        None => exponent.is_some() && !mantissa.is_empty() && digits(mantissa),
    };
    let exponent_ok = match exponent {
        None => mantissa.contains('.'),
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
        }
    };
    mantissa_ok && exponent_ok
}

/// Why a plain scalar cannot be a string, or `None` if it can.
fn not_a_string(text: &str) -> Option<String> {
    let what = match classify_plain(text) {
        Plain::Str => return None,
        Plain::Null if text.is_empty() => {
            return Some("a string is required, found an empty value".into())
        }
        Plain::Null => {
            return Some(format!(
            "a string is required, found null ({text}); quote it (\"{text}\") if a string is meant"
        ))
        }
        Plain::Bool(_) | Plain::Yaml11Bool => "a boolean",
        Plain::Int | Plain::OtherInt | Plain::Float | Plain::SpecialFloat => "a number",
    };
    Some(format!(
        "{text} is read by YAML as {what}, not a string; quote it (\"{text}\")"
    ))
}

/// A deserializer for one node.
pub struct NodeDeserializer<'de> {
    node: &'de Node,
    file: &'de Arc<str>,
    path: String,
}

impl<'de> NodeDeserializer<'de> {
    pub fn new(node: &'de Node, file: &'de Arc<str>, path: String) -> Self {
        NodeDeserializer { node, file, path }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::at(self.node, &self.path, message)
    }

    fn expected(&self, what: &str) -> Error {
        self.err(format!("expected {what}, found {}", found(self.node)))
    }

    /// A string, strictly: quoted, or plain and not read by YAML as anything else.
    fn string(&self) -> Result<&'de str, Error> {
        match &self.node.kind {
            NodeKind::Scalar {
                style: ScalarStyle::Quoted,
                text,
            } => Ok(text),
            NodeKind::Scalar {
                style: ScalarStyle::Plain,
                text,
            } => match not_a_string(text) {
                None => Ok(text),
                Some(why) => Err(self.err(why)),
            },
            _ => Err(self.expected("a string")),
        }
    }

    /// An integer in `min..=max`, strictly: a plain decimal integer.
    fn integer(&self, min: i128, max: i128) -> Result<i128, Error> {
        let text = match &self.node.kind {
            NodeKind::Scalar {
                style: ScalarStyle::Plain,
                text,
            } if !is_null_text(text) => text,
            NodeKind::Scalar {
                style: ScalarStyle::Quoted,
                text,
            } if classify_plain(text) == Plain::Int => {
                return Err(self.err(format!(
                    "expected an integer, found the string \"{text}\"; remove the quotes"
                )))
            }
            _ => return Err(self.expected("an integer")),
        };
        match classify_plain(text) {
            Plain::Int => {}
            Plain::OtherInt if text.trim_start_matches('-').starts_with('0') => {
                return Err(self.err(format!(
                    "expected a plain decimal integer, found {text} (YAML 1.1 reads a leading zero as octal)"
                )))
            }
            _ => return Err(self.expected("an integer")),
        }
        // Longer than any i128: out of range whatever the digits.
        let value = text.parse::<i128>().ok().filter(|_| text.len() <= 38);
        match value {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(v) if v < 0 && min == 0 => {
                Err(self.err(format!("expected a non-negative integer, found {text}")))
            }
            _ => Err(self.err(format!(
                "integer {} is out of range ({min}..={max})",
                shorten(text)
            ))),
        }
    }

    fn boolean(&self) -> Result<bool, Error> {
        match &self.node.kind {
            NodeKind::Scalar {
                style: ScalarStyle::Plain,
                text,
            } if text == "true" => Ok(true),
            NodeKind::Scalar {
                style: ScalarStyle::Plain,
                text,
            } if text == "false" => Ok(false),
            _ => Err(self.expected("true or false")),
        }
    }

    fn float(&self) -> Result<f64, Error> {
        if let NodeKind::Scalar {
            style: ScalarStyle::Plain,
            text,
        } = &self.node.kind
        {
            if matches!(classify_plain(text), Plain::Int | Plain::Float) {
                if let Ok(v) = text.replace('_', "").parse::<f64>() {
                    return Ok(v);
                }
            }
        }
        Err(self.expected("a number"))
    }

    fn map_access(&self) -> Result<NodeMapAccess<'de>, Error> {
        match &self.node.kind {
            NodeKind::Map(entries) => Ok(NodeMapAccess {
                entries: entries.iter(),
                value: None,
                file: self.file,
                path: self.path.clone(),
            }),
            _ => Err(self.expected("a mapping")),
        }
    }

    fn locate<T>(node: &Node, path: &str, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| e.locate(node, path))
    }
}

macro_rules! integer_methods {
    ($($method:ident $visit:ident $ty:ty;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                let (node, path) = (self.node, self.path.clone());
                let result = self
                    .integer(<$ty>::MIN as i128, <$ty>::MAX as i128)
                    // In range by construction.
                    .and_then(|v| visitor.$visit(v as $ty));
                Self::locate(node, &path, result)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for NodeDeserializer<'de> {
    type Error = Error;

    /// The natural type of the node, for untagged enums and other self-describing uses. Plain
    /// scalars whose type differs between YAML 1.1 and 1.2 (`yes`, `0777`) are errors here,
    /// since no reading of them is safe.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = match &node.kind {
            NodeKind::Map(_) => self.map_access().and_then(|a| visitor.visit_map(a)),
            NodeKind::Seq(items) => visitor.visit_seq(NodeSeqAccess::new(items, self.file, &path)),
            NodeKind::Scalar {
                style: ScalarStyle::Quoted,
                text,
            } => visitor.visit_borrowed_str(text),
            NodeKind::Scalar {
                style: ScalarStyle::Plain,
                text,
            } => match classify_plain(text) {
                Plain::Null => visitor.visit_unit(),
                Plain::Bool(b) => visitor.visit_bool(b),
                Plain::Int => match (text.parse::<u64>(), text.parse::<i64>()) {
                    (Ok(v), _) => visitor.visit_u64(v),
                    (_, Ok(v)) => visitor.visit_i64(v),
                    _ => Err(self.err(format!("integer {} is out of range", shorten(text)))),
                },
                Plain::Float => self.float().and_then(|v| visitor.visit_f64(v)),
                Plain::Yaml11Bool | Plain::OtherInt | Plain::SpecialFloat => Err(self.err(format!(
                    "{text} is ambiguous in YAML (1.1 and 1.2 read it differently); quote it (\"{text}\") if a string is meant"
                ))),
                Plain::Str => visitor.visit_borrowed_str(text),
            },
        };
        Self::locate(node, &path, result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = self.boolean().and_then(|b| visitor.visit_bool(b));
        Self::locate(node, &path, result)
    }

    integer_methods! {
        deserialize_i8 visit_i8 i8;
        deserialize_i16 visit_i16 i16;
        deserialize_i32 visit_i32 i32;
        deserialize_i64 visit_i64 i64;
        deserialize_u8 visit_u8 u8;
        deserialize_u16 visit_u16 u16;
        deserialize_u32 visit_u32 u32;
        deserialize_u64 visit_u64 u64;
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = self.float().and_then(|v| visitor.visit_f64(v));
        Self::locate(node, &path, result)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = self.string().and_then(|s| {
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => visitor.visit_char(c),
                _ => Err(self.expected("a single character")),
            }
        });
        Self::locate(node, &path, result)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = self.string().and_then(|s| visitor.visit_borrowed_str(s));
        Self::locate(node, &path, result)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(self.err("binary values are not supported"))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = if node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        };
        Self::locate(node, &path, result)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = if node.is_null() {
            visitor.visit_unit()
        } else {
            Err(self.expected("null"))
        };
        Self::locate(node, &path, result)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = visitor.visit_newtype_struct(self);
        Self::locate(node, &path, result)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = match &node.kind {
            NodeKind::Seq(items) => visitor.visit_seq(NodeSeqAccess::new(items, self.file, &path)),
            _ => Err(self.expected("a list")),
        };
        Self::locate(node, &path, result)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = self.map_access().and_then(|a| visitor.visit_map(a));
        Self::locate(node, &path, result)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == SPANNED_NAME {
            let (node, path) = (self.node, self.path.clone());
            let result = visitor.visit_map(SpannedAccess {
                node: self.node,
                file: self.file,
                path: self.path,
                step: 0,
            });
            return Self::locate(node, &path, result);
        }
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = match &node.kind {
            NodeKind::Scalar { text, .. } if !node.is_null() => {
                visitor.visit_enum(BorrowedStrDeserializer::<Error>::new(text))
            }
            NodeKind::Map(entries) if entries.len() == 1 => visitor.visit_enum(MapEnumAccess {
                key: &entries[0].0,
                value: &entries[0].1,
                file: self.file,
                path: path.clone(),
            }),
            _ => Err(self.expected("one of the accepted values")),
        };
        Self::locate(node, &path, result)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (node, path) = (self.node, self.path.clone());
        let result = match node.scalar() {
            Some(text) => visitor.visit_borrowed_str(text),
            None => Err(self.expected("a name")),
        };
        Self::locate(node, &path, result)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct NodeSeqAccess<'de> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    file: &'de Arc<str>,
    path: String,
}

impl<'de> NodeSeqAccess<'de> {
    fn new(items: &'de [Node], file: &'de Arc<str>, path: &str) -> Self {
        NodeSeqAccess {
            items: items.iter().enumerate(),
            file,
            path: path.to_string(),
        }
    }
}

impl<'de> SeqAccess<'de> for NodeSeqAccess<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            None => Ok(None),
            Some((i, node)) => {
                let path = format!("{}[{i}]", self.path);
                let de = NodeDeserializer::new(node, self.file, path.clone());
                seed.deserialize(de)
                    .map(Some)
                    .map_err(|e| e.locate(node, &path))
            }
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct NodeMapAccess<'de> {
    entries: std::slice::Iter<'de, (Node, Node)>,
    value: Option<(&'de Node, String)>,
    file: &'de Arc<str>,
    path: String,
}

impl<'de> MapAccess<'de> for NodeMapAccess<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            None => Ok(None),
            Some((key, value)) => {
                let path = child_path(&self.path, key.scalar().unwrap_or_default());
                let de = NodeDeserializer::new(key, self.file, path.clone());
                let k = seed.deserialize(de).map_err(|e| e.locate(key, &path))?;
                self.value = Some((value, path));
                Ok(Some(k))
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some((node, path)) => {
                let de = NodeDeserializer::new(node, self.file, path.clone());
                seed.deserialize(de).map_err(|e| e.locate(node, &path))
            }
            None => Err(Error::new("a value was asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Presents a node as the map `{$__file, $__line, $__column, $__value}` that
/// [`Spanned`](super::span::Spanned) expects.
struct SpannedAccess<'de> {
    node: &'de Node,
    file: &'de Arc<str>,
    path: String,
    step: usize,
}

impl<'de> MapAccess<'de> for SpannedAccess<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match SPANNED_FIELDS.get(self.step) {
            Some(field) => seed
                .deserialize(BorrowedStrDeserializer::<Error>::new(field))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let step = self.step;
        self.step += 1;
        match step {
            0 => seed.deserialize(BorrowedStrDeserializer::<Error>::new(self.file)),
            1 => seed.deserialize((self.node.line as u64).into_deserializer()),
            2 => seed.deserialize((self.node.column as u64).into_deserializer()),
            _ => seed.deserialize(NodeDeserializer::new(
                self.node,
                self.file,
                self.path.clone(),
            )),
        }
    }
}

/// An enum written as a one-entry mapping: `{Variant: value}`.
struct MapEnumAccess<'de> {
    key: &'de Node,
    value: &'de Node,
    file: &'de Arc<str>,
    path: String,
}

impl<'de> EnumAccess<'de> for MapEnumAccess<'de> {
    type Error = Error;
    type Variant = NodeDeserializer<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Error> {
        let path = child_path(&self.path, self.key.scalar().unwrap_or_default());
        let key_de = NodeDeserializer::new(self.key, self.file, path.clone());
        let variant = seed
            .deserialize(key_de)
            .map_err(|e| e.locate(self.key, &path))?;
        Ok((variant, NodeDeserializer::new(self.value, self.file, path)))
    }
}

impl<'de> VariantAccess<'de> for NodeDeserializer<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        if self.node.is_null() {
            Ok(())
        } else {
            Err(self.expected("no value"))
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::model::{HttpRoute, IntOrString, PathMatchType, Service};
    use super::super::span::Spanned;
    use super::super::yaml::{parse, Limits};
    use super::*;

    fn file() -> Arc<str> {
        Arc::from("f.yaml")
    }

    fn load<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
        let file = file();
        let docs =
            parse(&file, text.as_bytes(), &Limits::default()).map_err(|e| format!("{e:?}"))?;
        from_node::<T>(&docs[0].root, &file).map_err(|e| e.to_diagnostic(&file).to_string())
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Strict {
        #[serde(default)]
        s: Option<String>,
        #[serde(default)]
        n: Option<u16>,
        #[serde(default)]
        i: Option<i32>,
        #[serde(default)]
        b: Option<bool>,
        #[serde(default)]
        e: Option<PathMatchType>,
        #[serde(default)]
        t: Option<IntOrString>,
        #[serde(default)]
        list: Vec<Spanned<String>>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Required {
        name: String,
    }

    #[test]
    fn strings_refuse_what_yaml_reads_otherwise() {
        for (value, what) in [
            ("yes", "a boolean"),
            ("no", "a boolean"),
            ("on", "a boolean"),
            ("off", "a boolean"),
            ("true", "a boolean"),
            ("0777", "a number"),
            ("1.10", "a number"),
            ("80", "a number"),
            ("0x1F", "a number"),
            (".inf", "a number"),
            ("1e3", "a number"),
        ] {
            let e = load::<Strict>(&format!("s: {value}\n")).unwrap_err();
            assert_eq!(
                e,
                format!("f.yaml:1:4: error: s: {value} is read by YAML as {what}, not a string; quote it (\"{value}\")")
            );
            let ok = load::<Strict>(&format!("s: \"{value}\"\n")).unwrap();
            assert_eq!(ok.s.as_deref(), Some(value));
        }
        assert_eq!(
            load::<Strict>("s: ~\n").unwrap().s,
            None,
            "null is fine for an optional field"
        );
        for plain in [
            "v1",
            "1.2.3",
            "echo-v1",
            "2024-01-01T00:00:00Z",
            "/api",
            "a b",
            "1a",
        ] {
            assert_eq!(
                load::<Strict>(&format!("s: {plain}\n"))
                    .unwrap()
                    .s
                    .as_deref(),
                Some(plain)
            );
        }
    }

    #[test]
    fn integers_are_plain_decimal_and_in_range() {
        assert_eq!(load::<Strict>("n: 8080\n").unwrap().n, Some(8080));
        assert_eq!(load::<Strict>("i: -5\n").unwrap().i, Some(-5));
        let cases = [
            ("n: 0777", "f.yaml:1:4: error: n: expected a plain decimal integer, found 0777 (YAML 1.1 reads a leading zero as octal)"),
            ("n: \"50\"", "f.yaml:1:4: error: n: expected an integer, found the string \"50\"; remove the quotes"),
            ("n: 50%", "f.yaml:1:4: error: n: expected an integer, found 50%"),
            ("n: 1.5", "f.yaml:1:4: error: n: expected an integer, found 1.5"),
            ("n: -1", "f.yaml:1:4: error: n: expected a non-negative integer, found -1"),
            ("n: 65536", "f.yaml:1:4: error: n: integer 65536 is out of range (0..=65535)"),
            ("n: 99999999999999999999999999999999999999999999", "f.yaml:1:4: error: n: integer 99999999999999999999999999999999999999999999 is out of range (0..=65535)"),
            ("n: +5", "f.yaml:1:4: error: n: expected an integer, found +5"),
            ("n: 1_000", "f.yaml:1:4: error: n: expected an integer, found 1_000"),
            ("n: [1]", "f.yaml:1:4: error: n: expected an integer, found a list"),
        ];
        for (text, expected) in cases {
            assert_eq!(load::<Strict>(text).unwrap_err(), expected, "{text}");
        }
    }

    #[test]
    fn booleans_are_true_or_false() {
        assert_eq!(load::<Strict>("b: false\n").unwrap().b, Some(false));
        assert_eq!(
            load::<Strict>("b: yes\n").unwrap_err(),
            "f.yaml:1:4: error: b: expected true or false, found yes"
        );
        assert_eq!(
            load::<Strict>("b: \"true\"\n").unwrap_err(),
            "f.yaml:1:4: error: b: expected true or false, found the string \"true\""
        );
    }

    #[test]
    fn required_fields_refuse_null_and_absence() {
        assert_eq!(
            load::<Required>("name:\n").unwrap_err(),
            "f.yaml:1:1: error: name: a string is required, found an empty value"
        );
        assert_eq!(
            load::<Required>("name: ~\n").unwrap_err(),
            "f.yaml:1:7: error: name: a string is required, found null (~); quote it (\"~\") if a string is meant"
        );
        assert_eq!(
            load::<Spanned<Required>>("other: 1\n").unwrap_err(),
            "f.yaml:1:1: error: other: unknown field \"other\"; known fields: name"
        );
    }

    #[test]
    fn unknown_fields_point_at_the_key_and_suggest() {
        let text = "metadata:\n  name: r\nspec:\n  rules:\n  - backendRefs:\n    - name: a\n      port: 80\n    - name: b\n      weigth: 10\n";
        assert_eq!(
            load::<HttpRoute>(text).unwrap_err(),
            "f.yaml:9:7: error: spec.rules[0].backendRefs[1].weigth: unknown field \"weigth\" (did you mean \"weight\"?)"
        );
        let e = load::<HttpRoute>("metadata:\n  name: r\n  nmae: x\nspec: {}\n").unwrap_err();
        assert_eq!(
            e,
            "f.yaml:3:3: error: metadata.nmae: unknown field \"nmae\" (did you mean \"name\"?)"
        );
        let e = load::<Required>("name: a\nzzzzzz: 1\n").unwrap_err();
        assert_eq!(
            e,
            "f.yaml:2:1: error: zzzzzz: unknown field \"zzzzzz\"; known fields: name"
        );
    }

    #[test]
    fn missing_fields_name_the_path() {
        let text = "metadata:\n  name: r\nspec:\n  rules:\n  - backendRefs:\n    - port: 80\n";
        assert_eq!(
            load::<HttpRoute>(text).unwrap_err(),
            "f.yaml:6:7: error: spec.rules[0].backendRefs[0].name: missing required field \"name\""
        );
        assert_eq!(
            load::<HttpRoute>("metadata:\n  name: r\n").unwrap_err(),
            "f.yaml:1:1: error: spec: missing required field \"spec\""
        );
        assert_eq!(
            load::<HttpRoute>("metadata:\n  name: r\nspec:\n").unwrap_err(),
            "f.yaml:3:1: error: spec: expected a mapping, found an empty value"
        );
    }

    #[test]
    fn enums_suggest_the_closest_value() {
        assert_eq!(
            load::<Strict>("e: Exact\n").unwrap().e,
            Some(PathMatchType::Exact)
        );
        assert_eq!(
            load::<Strict>("e: PathPrefx\n").unwrap_err(),
            "f.yaml:1:4: error: e: unknown value \"PathPrefx\" (did you mean \"PathPrefix\"?)"
        );
        assert_eq!(
            load::<Strict>("e: Zzz\n").unwrap_err(),
            "f.yaml:1:4: error: e: unknown value \"Zzz\"; expected one of Exact, PathPrefix, RegularExpression"
        );
    }

    #[test]
    fn untagged_int_or_string() {
        assert_eq!(
            load::<Strict>("t: 8080\n").unwrap().t,
            Some(IntOrString::Int(8080))
        );
        assert_eq!(
            load::<Strict>("t: http\n").unwrap().t,
            Some(IntOrString::String("http".into()))
        );
        assert_eq!(
            load::<Strict>("t: \"8080\"\n").unwrap().t,
            Some(IntOrString::String("8080".into()))
        );
        assert_eq!(
            load::<Strict>("t: 70000\n").unwrap_err(),
            "f.yaml:1:4: error: t: expected an integer (0..65535) or a name, found 70000"
        );
        assert_eq!(
            load::<Strict>("t: 0777\n").unwrap_err(),
            "f.yaml:1:4: error: t: 0777 is ambiguous in YAML (1.1 and 1.2 read it differently); quote it (\"0777\") if a string is meant"
        );
    }

    #[test]
    fn spanned_values_carry_file_line_and_column() {
        let s = load::<Strict>("list:\n- a\n-   \"b\"\n").unwrap();
        assert_eq!(s.list.len(), 2);
        assert_eq!(s.list[1].value, "b");
        assert_eq!(
            s.list[1].pos,
            Pos {
                file: file(),
                line: 3,
                column: 5
            }
        );
        let svc = load::<Service>(
            "metadata:\n  name: s\nspec:\n  ports:\n  - port: 80\n    targetPort: 8080\n",
        )
        .unwrap();
        assert_eq!(svc.spec.ports[0].pos.line, 5);
        assert_eq!(svc.spec.ports[0].pos.column, 5);
        assert_eq!(svc.spec.ports[0].target_port, Some(IntOrString::Int(8080)));
        // Errors inside a Spanned value keep their own position and path.
        assert_eq!(
            load::<Strict>("list:\n- a\n- [x]\n").unwrap_err(),
            "f.yaml:3:3: error: list[1]: expected a string, found a list"
        );
    }

    #[test]
    fn map_keys_are_strict_strings_and_paths_quote_odd_keys() {
        assert_eq!(
            load::<Strict>("labels:\n  app.kubernetes.io/name: yes\n").unwrap_err(),
            "f.yaml:2:27: error: labels[\"app.kubernetes.io/name\"]: yes is read by YAML as a boolean, not a string; quote it (\"yes\")"
        );
        assert_eq!(
            load::<Strict>("labels:\n  80: x\n").unwrap_err(),
            "f.yaml:2:3: error: labels.80: 80 is read by YAML as a number, not a string; quote it (\"80\")"
        );
    }

    #[test]
    fn classify() {
        assert_eq!(classify_plain("1.10"), Plain::Float);
        assert_eq!(classify_plain(".5"), Plain::Float);
        assert_eq!(classify_plain("1."), Plain::Float);
        assert_eq!(classify_plain("."), Plain::Str);
        assert_eq!(classify_plain("1.2.3"), Plain::Str);
        assert_eq!(classify_plain("e5"), Plain::Str);
        assert_eq!(classify_plain("-0"), Plain::Int);
        assert_eq!(classify_plain("00"), Plain::OtherInt);
        assert_eq!(classify_plain("0o17"), Plain::OtherInt);
        assert_eq!(classify_plain("10s"), Plain::Str);
        assert_eq!(classify_plain("NaN"), Plain::Str);
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("weigth", &["weight", "name"]), Some("weight"));
        assert_eq!(
            suggest("BackendRefs", &["backendRefs"]),
            Some("backendRefs")
        );
        assert_eq!(suggest("get", &["GET", "PUT"]), Some("GET"));
        assert_eq!(suggest("zzzz", &["name", "port"]), None);
        assert_eq!(
            suggest("Prefix", &["Exact", "PathPrefix"]),
            Some("PathPrefix")
        );
        assert_eq!(suggest("Match", &["PathMatchA", "PathMatchB"]), None);
    }
}
