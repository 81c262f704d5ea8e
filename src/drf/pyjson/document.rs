//! A parsed command value and the conventions it carries: Python's `inf` as the number [`INF`],
//! a lone surrogate as a private-use character ([`surrogate_of`]), and whether the value holds
//! any ([`Document::surrogates`], [`DocValue`]).

use serde_json::{Number, Value};

/// The text of Python's `float('inf')` as a number in a parsed value (`-1e+99999` for `-inf`).
/// No finite float or int is ever spelled this way (floats are written as `repr` writes them).
pub const INF: &str = "1e+99999";

/// The first of the private-use characters that stand for lone surrogates (U+D800..U+DFFF).
pub(super) const SURROGATE_BASE: u32 = 0x10_F800;

/// A parsed command value, or a part of one taken out of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: Value,
    /// Whether `value` holds lone surrogates (as the characters [`surrogate_of`] recognises).
    pub surrogates: bool,
}

impl Document {
    /// The whole value, borrowed.
    pub fn as_value(&self) -> DocValue<'_> {
        DocValue {
            value: &self.value,
            surrogates: self.surrogates,
        }
    }
}

/// A value that holds no lone surrogate (one built in code, or read with
/// [`parse()`](super::parse())).
impl From<Value> for Document {
    fn from(value: Value) -> Document {
        Document {
            value,
            surrogates: false,
        }
    }
}

/// A value of a [`Document`], borrowed with what the document says of its strings: what DRF's
/// rules read (a private-use character is a lone surrogate only where `surrogates` is set).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocValue<'a> {
    pub value: &'a Value,
    /// Whether the document the value is part of holds lone surrogates.
    pub surrogates: bool,
}

impl<'a> DocValue<'a> {
    /// The member `key` of an object.
    pub fn get(self, key: &str) -> Option<DocValue<'a>> {
        let value = self.value.get(key)?;
        Some(DocValue { value, ..self })
    }

    /// The same document's `value` (a part of this one).
    pub fn with(self, value: &'a Value) -> DocValue<'a> {
        DocValue { value, ..self }
    }

    /// The first lone surrogate in `s`, a string of this document.
    pub fn first_surrogate(self, s: &str) -> Option<u32> {
        s.chars().find_map(surrogate_of).filter(|_| self.surrogates)
    }
}

/// A value that holds no lone surrogate.
impl<'a> From<&'a Value> for DocValue<'a> {
    fn from(value: &'a Value) -> DocValue<'a> {
        DocValue {
            value,
            surrogates: false,
        }
    }
}

/// The lone surrogate a character stands for in a [`Document`] with `surrogates`.
pub fn surrogate_of(c: char) -> Option<u32> {
    let cp = c as u32;
    (cp >= SURROGATE_BASE).then(|| cp - SURROGATE_BASE + 0xD800)
}

/// `str()` of a parsed number: its text, or `inf` / `-inf` for [`INF`].
pub fn number_str(n: &Number) -> String {
    match n.as_str() {
        INF => "inf".to_owned(),
        t if t.strip_prefix('-') == Some(INF) => "-inf".to_owned(),
        t => t.to_owned(),
    }
}

/// Whether the number is Python's `inf` or `-inf`.
pub fn is_infinite(n: &Number) -> bool {
    n.as_str().trim_start_matches('-') == INF
}
