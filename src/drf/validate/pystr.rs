//! Python's `str()` of a parsed JSON value as DRF prints it in messages ([`py_str`]), and
//! `type(v).__name__` ([`py_type_name`]).

use serde_json::Value;

use crate::drf::pychar::py_isprintable;
use crate::drf::pyjson::{self, DocValue};

/// Python's `type(v).__name__` for a value `json.loads` produced.
pub fn py_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if is_py_int(&n.to_string()) => "int",
        Value::Number(_) => "float",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// A Number's text is Python's repr: an int is `-?[0-9]+`; anything else (`1.5`, `1e+16`,
/// and, should the parser let them through, `inf`/`nan`) is a float.
pub(super) fn is_py_int(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Python's `str()` of a parsed JSON value, as DRF puts it in messages ('"{input}" is not a valid
/// choice.'): a str is itself; containers use repr of their items (dict `{'a': 1, 'b': [True,
/// None]}`, str repr with Python's quote choice and escapes incl. non-printable characters as
/// \xNN/\uNNNN/\UNNNNNNNN per str.isprintable, bool True/False, None, numbers as their text).
///
/// Iterative (explicit stack), so any nesting depth is safe. `str.isprintable` follows
/// Unicode 15.1 (Python 3.13), from [`py_isprintable`]'s table. A lone surrogate of the
/// document in a repr is written `\ud800`; `inf` is written `inf`.
pub fn py_str<'a>(v: impl Into<DocValue<'a>>) -> String {
    let doc = v.into();
    enum Tok<'a> {
        Val(&'a Value),
        Key(&'a str),
        Lit(&'static str),
    }
    if let Value::String(s) = doc.value {
        return s.clone();
    }
    let mut out = String::new();
    let mut stack = vec![Tok::Val(doc.value)];
    while let Some(tok) = stack.pop() {
        match tok {
            Tok::Lit(s) => out.push_str(s),
            Tok::Key(k) => {
                push_str_repr(&mut out, doc, k);
                out.push_str(": ");
            }
            Tok::Val(Value::Null) => out.push_str("None"),
            Tok::Val(Value::Bool(b)) => out.push_str(if *b { "True" } else { "False" }),
            Tok::Val(Value::Number(n)) => out.push_str(&pyjson::number_str(n)),
            Tok::Val(Value::String(s)) => push_str_repr(&mut out, doc, s),
            Tok::Val(Value::Array(items)) => {
                out.push('[');
                stack.push(Tok::Lit("]"));
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push(Tok::Val(item));
                    if i > 0 {
                        stack.push(Tok::Lit(", "));
                    }
                }
            }
            Tok::Val(Value::Object(map)) => {
                out.push('{');
                stack.push(Tok::Lit("}"));
                for (i, (k, item)) in map.iter().enumerate().rev() {
                    stack.push(Tok::Val(item));
                    stack.push(Tok::Key(k));
                    if i > 0 {
                        stack.push(Tok::Lit(", "));
                    }
                }
            }
        }
    }
    out
}

/// CPython `unicode_repr` of `s`, a string of `doc`: `"` quotes only when the text has `'` and
/// no `"`.
fn push_str_repr(out: &mut String, doc: DocValue, s: &str) {
    use std::fmt::Write;
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        let code = c as u32;
        // Writing to a String cannot fail.
        let _ = match c {
            '\\' => write!(out, "\\\\"),
            '\t' => write!(out, "\\t"),
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            _ if c == quote => write!(out, "\\{c}"),
            _ if doc.surrogates && pyjson::surrogate_of(c).is_some() => {
                write!(
                    out,
                    "\\u{:04x}",
                    pyjson::surrogate_of(c).unwrap_or_default()
                )
            }
            _ if code < 0x20 || code == 0x7f => write!(out, "\\x{code:02x}"),
            _ if code < 0x7f || py_isprintable(c) => write!(out, "{c}"),
            _ if code <= 0xff => write!(out, "\\x{code:02x}"),
            _ if code <= 0xffff => write!(out, "\\u{code:04x}"),
            _ => write!(out, "\\U{code:08x}"),
        };
    }
    out.push(quote);
}
