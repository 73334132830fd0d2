//! Source positions carried from the YAML text into the typed manifests, so that every error,
//! including those found later by the compiler, names the file, line and column.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// A place in a manifest file: 1-based line and column.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Path of the file relative to the revision root, with `/` separators.
    pub file: Arc<str>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A value with the position where it starts in its file.
///
/// The positioned YAML deserializer recognises this type by [`SPANNED_NAME`] and hands it the
/// position of the node; with any other deserializer it fails, because a position that is made
/// up is worse than none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> Spanned<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Spanned { value, pos }
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// The struct name through which the deserializer recognises [`Spanned`].
pub const SPANNED_NAME: &str = "$__sluice_spanned";
/// Field names of the map the deserializer presents for a [`Spanned`] value, in this order.
pub const SPANNED_FIELDS: &[&str] = &["$__file", "$__line", "$__column", "$__value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value with its source position")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                let mut file: Option<String> = None;
                let mut line: Option<usize> = None;
                let mut column: Option<usize> = None;
                let mut value: Option<T> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "$__file" => file = Some(map.next_value()?),
                        "$__line" => line = Some(map.next_value()?),
                        "$__column" => column = Some(map.next_value()?),
                        "$__value" => value = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, SPANNED_FIELDS)),
                    }
                }
                let pos = Pos {
                    file: file.unwrap_or_default().into(),
                    line: line.unwrap_or(0),
                    column: column.unwrap_or(0),
                };
                let value = value.ok_or_else(|| de::Error::missing_field("$__value"))?;
                Ok(Spanned { value, pos })
            }
        }

        deserializer.deserialize_struct(
            SPANNED_NAME,
            SPANNED_FIELDS,
            SpannedVisitor(std::marker::PhantomData),
        )
    }
}
