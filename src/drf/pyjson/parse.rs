//! The parser: CPython's C scanner (`Modules/_json.c`) behind `codecs.getreader('utf-8')`, with
//! Python's error texts, iterative so that any depth up to [`MAX_DEPTH`] is safe.

use serde_json::{Map, Value};

use super::document::{Document, INF, SURROGATE_BASE};
use super::numbers::{number, python_float, python_int};

/// Deepest nesting of arrays/objects accepted. Python 3.13 parses (and `json.dumps`, `repr`)
/// about 10,000 levels (its C recursion limit, less the frames of the request) and raises
/// `RecursionError` (an HTTP 500) beyond; PostgreSQL's jsonb takes 10,000 too. We stop at a
/// fixed depth safely below that. The parser is iterative, but cloning, serialising,
/// comparing and dropping a `Value` recurse once per level: the processor's threads have
/// [`STACK_BYTES`] of stack for that.
pub const MAX_DEPTH: usize = 8000;

/// The stack of the processor's runtime threads (`main.rs`): enough for a value of
/// [`MAX_DEPTH`] levels, even in a debug build (only the pages touched are committed).
pub const STACK_BYTES: usize = 64 << 20;

/// Python's largest accepted integer literal (`sys.get_int_max_str_digits()` default).
const INT_MAX_STR_DIGITS: usize = 4300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// Exactly Python's `str(exc)`, without DRF's `JSON parse error - ` prefix.
    pub message: String,
}

fn error(message: String) -> ParseError {
    ParseError { message }
}

/// Parse a command value as DRF's JSONParser would (lone surrogates kept, see the module doc).
pub fn parse_document(input: &[u8]) -> Result<Document, ParseError> {
    let mut p = Parser::new(decode_utf8(input)?);
    let value = p.document()?;
    if let (Some((at, cp)), true) = (p.first_surrogate, p.plane16_tail) {
        // Both would be the same characters in the Value: refused (our message, not Python's).
        let msg = format!(
            "Unpaired surrogate \\u{cp:04x} is not allowed together with characters \
             U+10F800..U+10FFFF"
        );
        return Err(p.err(&msg, at));
    }
    Ok(Document {
        value,
        surrogates: p.first_surrogate.is_some(),
    })
}

/// Parse bytes as DRF's JSONParser would, for values that cannot hold lone surrogates: one
/// is refused (`Unpaired surrogate \ud800 is not allowed: line 1 column 3 (char 2)`).
pub fn parse(input: &[u8]) -> Result<Value, ParseError> {
    parse_str(decode_utf8(input)?)
}

/// Parse a str (already decoded), same rules as [`parse`] minus the UTF-8 decoding step. Used
/// to read back PostgreSQL `jsonb::text` output.
pub fn parse_str(input: &str) -> Result<Value, ParseError> {
    let mut p = Parser::new(input);
    let value = p.document()?;
    match p.first_surrogate {
        Some((at, cp)) => {
            let msg = format!("Unpaired surrogate \\u{cp:04x} is not allowed");
            Err(p.err(&msg, at))
        }
        None => Ok(value),
    }
}

/// `codecs.getreader('utf-8')(stream).read()`. The StreamReader decodes with `final=False`, so
/// an incomplete sequence at the very end is silently dropped (CPython also treats a final
/// `ED A0..BF` as incomplete). Other errors are `UnicodeDecodeError`s.
fn decode_utf8(input: &[u8]) -> Result<&str, ParseError> {
    let start = match std::str::from_utf8(input) {
        Ok(s) => return Ok(s),
        Err(e) => e.valid_up_to(),
    };
    let Some((len, reason)) = utf8_error_at(&input[start..]) else {
        return Ok(std::str::from_utf8(&input[..start]).unwrap_or_default());
    };
    let what = match len {
        1 => format!("byte 0x{:02x} in position {start}", input[start]),
        _ => format!("bytes in position {start}-{}", start + len - 1),
    };
    Err(error(format!(
        "'utf-8' codec can't decode {what}: {reason}"
    )))
}

/// CPython's verdict (`Objects/stringlib/codecs.h` + `unicode_decode_utf8`) on the sequence
/// that starts `s`, whose first byte is where valid UTF-8 stops: `None` if it is an incomplete
/// sequence cut by the end of input, else the number of bytes reported and the reason.
fn utf8_error_at(s: &[u8]) -> Option<(usize, &'static str)> {
    let lead = s[0];
    let (len, second) = match lead {
        0xC2..=0xDF => (2, 0x80..=0xBF),
        0xE0 => (3, 0xA0..=0xBF),
        0xED => (3, 0x80..=0x9F), // ED A0.. would be a UTF-16 surrogate
        0xE1..=0xEF => (3, 0x80..=0xBF),
        0xF0 => (4, 0x90..=0xBF),
        0xF4 => (4, 0x80..=0x8F), // F4 90.. would be above U+10FFFF
        0xF1..=0xF3 => (4, 0x80..=0xBF),
        _ => return Some((1, "invalid start byte")),
    };
    let bad = |n| Some((n, "invalid continuation byte"));
    match s.get(1) {
        None => return None,
        Some(0xA0..=0xBF) if lead == 0xED && s.len() == 2 => return None,
        Some(b) if !second.contains(b) => return bad(1),
        Some(_) => {}
    }
    for i in 2..len {
        match s.get(i) {
            None => return None,
            Some(0x80..=0xBF) => {}
            Some(_) => return bad(i),
        }
    }
    bad(1) // unreachable: the sequence is well-formed, so std would not have stopped here
}

/// A container being filled.
enum Open {
    Array(Vec<Value>),
    /// Members so far and the key awaiting its value.
    Object(Map<String, Value>, String),
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Where the first lone surrogate escape is, and which it is.
    first_surrogate: Option<(usize, u32)>,
    /// Whether a string holds a real character in U+10F800..U+10FFFF.
    plane16_tail: bool,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser {
            text,
            b: text.as_bytes(),
            pos: 0,
            first_surrogate: None,
            plane16_tail: false,
        }
    }

    /// The whole text: one value between optional whitespace.
    fn document(&mut self) -> Result<Value, ParseError> {
        if self.text.starts_with('\u{feff}') {
            return Err(self.err("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0));
        }
        self.skip_ws();
        let value = self.value()?;
        self.skip_ws();
        if self.pos != self.b.len() {
            return Err(self.err("Extra data", self.pos));
        }
        Ok(value)
    }

    /// `JSONDecodeError(msg, doc, at)`: positions in code points, lines split on `\n` only.
    fn err(&self, msg: &str, at: usize) -> ParseError {
        let chars = |b: &[u8]| b.iter().filter(|&&c| c & 0xC0 != 0x80).count();
        let before = &self.b[..at];
        let line_start = before
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |nl| nl + 1);
        let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
        let col = chars(&before[line_start..]) + 1;
        error(format!(
            "{msg}: line {line} column {col} (char {})",
            chars(before)
        ))
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// One JSON term at `self.pos` (`scan_once_unicode`), nested containers on a heap stack.
    fn value(&mut self) -> Result<Value, ParseError> {
        let mut stack: Vec<Open> = Vec::new();
        loop {
            let mut v = match self.peek() {
                Some(c @ (b'[' | b'{')) => {
                    let array = c == b'[';
                    if stack.len() >= MAX_DEPTH {
                        let what = if array { "array" } else { "object" };
                        return Err(error(format!(
                            "maximum recursion depth exceeded while decoding a JSON {what} \
                             from a unicode string"
                        )));
                    }
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() != Some(if array { b']' } else { b'}' }) {
                        stack.push(match array {
                            true => Open::Array(Vec::new()),
                            false => Open::Object(Map::new(), self.key()?),
                        });
                        continue;
                    }
                    self.pos += 1;
                    if array {
                        Value::Array(Vec::new())
                    } else {
                        Map::new().into()
                    }
                }
                _ => self.scalar()?,
            };
            // Hand the finished value to its container; close every container that ends here.
            loop {
                let Some(top) = stack.last_mut() else {
                    return Ok(v);
                };
                let (close, what) = match top {
                    Open::Array(items) => {
                        items.push(v);
                        (b']', "array")
                    }
                    Open::Object(map, key) => {
                        // Python dict: a repeated key keeps its first place, takes the last value
                        map.insert(std::mem::take(key), v);
                        (b'}', "object")
                    }
                };
                self.skip_ws();
                match self.peek() {
                    Some(c) if c == close => {
                        self.pos += 1;
                        v = match stack.pop().expect("top frame") {
                            Open::Array(items) => Value::Array(items),
                            Open::Object(map, _) => Value::Object(map),
                        };
                    }
                    Some(b',') => {
                        let comma = self.pos;
                        self.pos += 1;
                        self.skip_ws();
                        if self.peek() == Some(close) {
                            let msg = format!("Illegal trailing comma before end of {what}");
                            return Err(self.err(&msg, comma));
                        }
                        if let Open::Object(_, key) = top {
                            *key = self.key()?;
                        }
                        break;
                    }
                    _ => return Err(self.err("Expecting ',' delimiter", self.pos)),
                }
            }
        }
    }

    /// `"key"`, the `:` delimiter and the whitespace around it.
    fn key(&mut self) -> Result<String, ParseError> {
        if self.peek() != Some(b'"') {
            let msg = "Expecting property name enclosed in double quotes";
            return Err(self.err(msg, self.pos));
        }
        let key = self.string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.err("Expecting ':' delimiter", self.pos));
        }
        self.pos += 1;
        self.skip_ws();
        Ok(key)
    }

    /// `scanstring_unicode` in strict mode; `self.pos` is at the opening quote.
    fn string(&mut self) -> Result<String, ParseError> {
        let (b, begin) = (self.b, self.pos);
        let mut out = String::new();
        let mut i = begin + 1;
        loop {
            let chunk = i;
            while b
                .get(i)
                .is_some_and(|&c| c != b'"' && c != b'\\' && c >= 0x20)
            {
                i += 1;
            }
            let part = &self.text[chunk..i];
            // U+10F800..U+10FFFF is F4 8F A0..BF xx in UTF-8.
            let tail = |w: &[u8]| w[0] == 0xF4 && w[1] == 0x8F && w[2] >= 0xA0;
            self.plane16_tail |= part.as_bytes().windows(3).any(tail);
            out.push_str(part);
            let (esc, c) = (i, b.get(i + 1).copied());
            match b.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(out);
                }
                None | Some(b'\\') if c.is_none() => {
                    return Err(self.err("Unterminated string starting at", begin))
                }
                Some(b'\\') if c == Some(b'u') => {
                    let mut cp = self.hex4(i + 1)?;
                    i += 6;
                    if (0xD800..0xDC00).contains(&cp) && b[i..].starts_with(b"\\u") {
                        let low = self.hex4(i + 1)?;
                        if (0xDC00..0xE000).contains(&low) {
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                            i += 6;
                        }
                    }
                    self.plane16_tail |= cp >= SURROGATE_BASE;
                    out.push(char::from_u32(cp).unwrap_or_else(|| {
                        // Python keeps the lone surrogate in its str; a Rust String can't.
                        self.first_surrogate.get_or_insert((esc, cp));
                        char::from_u32(SURROGATE_BASE + cp - 0xD800).unwrap_or_default()
                    }));
                }
                Some(b'\\') => {
                    let k = b"\"\\/bfnrt".iter().position(|&e| Some(e) == c);
                    let Some(k) = k else {
                        return Err(self.err("Invalid \\escape", esc));
                    };
                    out.push(char::from(b"\"\\/\x08\x0c\n\r\t"[k]));
                    i += 2;
                }
                _ => return Err(self.err("Invalid control character at", i)),
            }
        }
    }

    /// The 4 hex digits after the `u` at `u`. Like CPython, at least one more character must
    /// follow them, and every failure is reported at the `u`.
    fn hex4(&self, u: usize) -> Result<u32, ParseError> {
        let digits = self.b.get(u + 1..u + 5).filter(|_| u + 5 < self.b.len());
        let hex = |d: &[u8]| {
            d.iter()
                .try_fold(0, |n, &c| Some(n * 16 + char::from(c).to_digit(16)?))
        };
        digits
            .and_then(hex)
            .ok_or_else(|| self.err("Invalid \\uXXXX escape", u))
    }

    /// Strings, literals and numbers (`_match_number_unicode`); else "Expecting value".
    fn scalar(&mut self) -> Result<Value, ParseError> {
        let (b, start) = (self.b, self.pos);
        let rest = &b[start..];
        if rest.first() == Some(&b'"') {
            return Ok(Value::String(self.string()?));
        }
        for (lit, v) in [
            ("null", Value::Null),
            ("true", true.into()),
            ("false", false.into()),
        ] {
            if rest.starts_with(lit.as_bytes()) {
                self.pos += lit.len();
                return Ok(v);
            }
        }
        for lit in ["NaN", "Infinity", "-Infinity"] {
            if rest.starts_with(lit.as_bytes()) {
                let msg = format!("Out of range float values are not JSON compliant: '{lit}'");
                return Err(error(msg));
            }
        }
        let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
        let skip_digits = |mut i: usize| {
            while digit(i) {
                i += 1;
            }
            i
        };
        let neg = usize::from(rest.first() == Some(&b'-'));
        let mut i = match b.get(start + neg) {
            Some(b'0') => start + neg + 1,
            Some(b'1'..=b'9') => skip_digits(start + neg),
            _ => return Err(self.err("Expecting value", start)),
        };
        let int_end = i;
        if b.get(i) == Some(&b'.') && digit(i + 1) {
            i = skip_digits(i + 1);
        }
        if let Some(b'e' | b'E') = b.get(i) {
            let j = i + 1 + usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
            if digit(j) {
                i = skip_digits(j);
            }
        }
        self.pos = i;
        let text = &self.text[start..i];
        if i == int_end {
            let digits = text.len() - neg;
            if digits > INT_MAX_STR_DIGITS {
                return Err(error(format!(
                    "Exceeds the limit ({INT_MAX_STR_DIGITS} digits) for integer string \
                     conversion: value has {digits} digits; use sys.set_int_max_str_digits() \
                     to increase the limit"
                )));
            }
            return Ok(python_int(text));
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(python_float(f)),
            // Python yields float('inf') (or -inf).
            _ if text.starts_with('-') => Ok(number(&format!("-{INF}"))),
            _ => Ok(number(INF)),
        }
    }
}
