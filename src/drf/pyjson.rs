//! JSON parsing that answers exactly like authentik's REST API: DRF 3.16's `JSONParser` on
//! CPython 3.13 (`codecs.getreader('utf-8')` + `json.load(parse_constant=strict_constant)`,
//! i.e. the C scanner in `Modules/_json.c`). Values, number texts (`json.dumps` of the parsed
//! Python object) and every error message (`str(exc)`) match Python's. It also models what a
//! value looks like after a round trip through PostgreSQL `jsonb` and back into Python, since
//! that is what Django hands out after a save.
//!
//! Two things Python's `json` produces have no place in a `serde_json::Value`, and are carried
//! in it by convention: a float literal that overflows (`1e400`, Python's `inf`) is the number
//! [`INF`] (or `-INF`), a text no finite value is ever given; a lone surrogate escape
//! (`"\ud800"`, which a Python `str` holds) is the private-use character
//! `U+10F800 + (surrogate - U+D800)`, and [`Document::surrogates`] says the value holds such
//! characters. Validation turns both into DRF's answers; neither is ever stored.

use serde_json::{Map, Number, Value};

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

/// The text of Python's `float('inf')` as a number in a parsed value (`-1e+99999` for `-inf`).
/// No finite float or int is ever spelled this way (floats are written as `repr` writes them).
pub const INF: &str = "1e+99999";

/// The first of the private-use characters that stand for lone surrogates (U+D800..U+DFFF).
const SURROGATE_BASE: u32 = 0x10_F800;

/// A parsed command value.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: Value,
    /// Whether `value` holds lone surrogates (as the characters [`surrogate_of`] recognises).
    pub surrogates: bool,
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

/// A Python int from its decimal text (optional `-`, no leading zeros except `0`/`-0`).
fn python_int(text: &str) -> Value {
    match text.parse::<i64>() {
        Ok(n) => Value::Number(n.into()), // also turns `-0` into `0`
        Err(_) => number(text),
    }
}

/// `repr(float)`: shortest round-trip digits; fixed notation for exponents -4..16.
fn python_float(f: f64) -> Value {
    // When two shortest digit strings round-trip, Python takes the one nearest to `f` (ties to
    // even) and Rust may not: prefer `f` correctly rounded to that many digits if it round-trips.
    let shortest = format!("{f:e}"); // e.g. "-1.5e-7"
    let (mantissa, _) = shortest.split_once('e').unwrap_or_default();
    let precision = mantissa.replace(['-', '.'], "").len() - 1;
    let nearest = format!("{f:.precision$e}");
    let sci = Some(nearest)
        .filter(|n| n.parse() == Ok(f))
        .unwrap_or(shortest);
    let (mantissa, exp) = sci.split_once('e').unwrap_or_default();
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if mantissa.starts_with('-') { "-" } else { "" };
    let digits = mantissa.replace(['-', '.'], "");
    let digits = Some(digits.trim_end_matches('0'))
        .filter(|d| !d.is_empty())
        .unwrap_or("0");
    let text = match exp {
        -4..=-1 => format!(
            "{sign}0.{}{digits}",
            "0".repeat(exp.unsigned_abs() as usize - 1)
        ),
        0..=15 => {
            let int_len = exp as usize + 1;
            let (int, frac) = digits.split_at(int_len.min(digits.len()));
            let zeros = "0".repeat(int_len - int.len());
            format!(
                "{sign}{int}{zeros}.{}",
                if frac.is_empty() { "0" } else { frac }
            )
        }
        _ => {
            let (first, frac) = digits.split_at(1);
            let dot = if frac.is_empty() { "" } else { "." };
            format!(
                "{sign}{first}{dot}{frac}e{}{:02}",
                if exp < 0 { '-' } else { '+' },
                exp.abs()
            )
        }
    };
    number(&text)
}

fn number(text: &str) -> Value {
    // Our texts are valid JSON numbers; with `arbitrary_precision` serde_json keeps them verbatim.
    Value::Number(text.parse::<Number>().expect("valid JSON number text"))
}

/// Return the value as PostgreSQL `jsonb` would give it back (what Django reads after a save):
/// object keys sorted the jsonb way (shorter keys first, then bytewise), numbers as PostgreSQL
/// `numeric` prints them, re-read by Python (`1e+16` -> int `10000000000000000`, `1e-05` ->
/// `0.00001` -> float `1e-05`, `-0.0` -> `0.0`). Keys are already unique in a `Value`.
/// Recurses once per nesting level: meant for values of depth <= `MAX_DEPTH`.
pub fn jsonb_normalize(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(jsonb_normalize).collect()),
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            let normalized = entries
                .into_iter()
                .map(|(k, v)| (k.clone(), jsonb_normalize(v)));
            Value::Object(normalized.collect())
        }
        Value::Number(n) => numeric_roundtrip(n),
        other => other.clone(),
    }
}

/// `numeric_in` keeps the exact value with `max(0, fraction digits - exponent)` decimals;
/// `numeric_out` prints it in plain notation, without sign for zero; Python then reads an int
/// if there is no decimal point, else a float (of the same value as the original text).
fn numeric_roundtrip(n: &Number) -> Value {
    let text = n.as_str();
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let frac_len = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i64);
    let zero = !mantissa.bytes().any(|c| matches!(c, b'1'..=b'9'));
    if frac_len > exp {
        let f: f64 = text.parse().unwrap_or(0.0);
        return python_float(if zero { 0.0 } else { f });
    }
    if zero {
        return Value::from(0);
    }
    if exp == 0 && frac_len == 0 {
        return Value::Number(n.clone()); // a plain integer: unchanged
    }
    let digits = mantissa.replace(['-', '.'], "");
    let sign = if text.starts_with('-') { "-" } else { "" };
    let zeros = "0".repeat((exp - frac_len) as usize);
    number(&format!("{sign}{}{zeros}", digits.trim_start_matches('0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: impl AsRef<[u8]>) -> String {
        serde_json::to_string(&parse(input.as_ref()).unwrap()).unwrap()
    }

    fn err(input: impl AsRef<[u8]>) -> String {
        parse(input.as_ref()).unwrap_err().message
    }

    /// Rows of `<input> | <expected>`, the input written as a JSON string literal.
    fn table(rows: &str) -> Vec<(String, &str)> {
        let rows = rows.lines().map(str::trim).filter(|row| !row.is_empty());
        rows.map(|row| {
            let (input, want) = row.split_once(" | ").expect(row);
            (serde_json::from_str(input).expect(input), want)
        })
        .collect()
    }

    #[test]
    fn syntax_errors_match_python() {
        let rows = table(
            r#"
            ""                   | Expecting value: line 1 column 1 (char 0)
            " \t"                | Expecting value: line 1 column 3 (char 2)
            "["                  | Expecting value: line 1 column 2 (char 1)
            "[1, "               | Expecting value: line 1 column 5 (char 4)
            "{\"a\":"            | Expecting value: line 1 column 6 (char 5)
            "nul"                | Expecting value: line 1 column 1 (char 0)
            "[-]"                | Expecting value: line 1 column 2 (char 1)
            "-Infinit"           | Expecting value: line 1 column 1 (char 0)
            "\n\n  x"            | Expecting value: line 3 column 3 (char 4)
            "{1:2}"              | Expecting property name enclosed in double quotes: line 1 column 2 (char 1)
            "{"                  | Expecting property name enclosed in double quotes: line 1 column 2 (char 1)
            "{\"a\":1, 2}"       | Expecting property name enclosed in double quotes: line 1 column 9 (char 8)
            "{\"a\" 1}"          | Expecting ':' delimiter: line 1 column 6 (char 5)
            "{\"a\":1 \"b\"}"    | Expecting ',' delimiter: line 1 column 8 (char 7)
            "[1 2]"              | Expecting ',' delimiter: line 1 column 4 (char 3)
            "[1"                 | Expecting ',' delimiter: line 1 column 3 (char 2)
            "[1,]"               | Illegal trailing comma before end of array: line 1 column 3 (char 2)
            "{\n\"a\"\n:1,\r\n\t}" | Illegal trailing comma before end of object: line 3 column 3 (char 8)
            "\"abc"              | Unterminated string starting at: line 1 column 1 (char 0)
            "[\"a\\"             | Unterminated string starting at: line 1 column 2 (char 1)
            "\"a\tb\""           | Invalid control character at: line 1 column 3 (char 2)
            "\"\\x\""            | Invalid \escape: line 1 column 2 (char 1)
            "\"\\u\""            | Invalid \uXXXX escape: line 1 column 3 (char 2)
            "\"\\u1234"          | Invalid \uXXXX escape: line 1 column 3 (char 2)
            "\"\\u12g4\""        | Invalid \uXXXX escape: line 1 column 3 (char 2)
            "\"\\ud800\\u12\""   | Invalid \uXXXX escape: line 1 column 9 (char 8)
            "\"\\ud800\\u12x4\"" | Invalid \uXXXX escape: line 1 column 9 (char 8)
            "[1]  x"             | Extra data: line 1 column 6 (char 5)
            "1.e5"               | Extra data: line 1 column 2 (char 1)
            "1e+"                | Extra data: line 1 column 2 (char 1)
            "01"                 | Extra data: line 1 column 2 (char 1)
            "[\"é€😀\", x]"      | Expecting value: line 1 column 9 (char 8)
            "[\"é\",\n\"😀\" x]" | Expecting ',' delimiter: line 2 column 5 (char 10)
            "\u000c1"            | Expecting value: line 1 column 1 (char 0)
            "\u00a01"            | Expecting value: line 1 column 1 (char 0)
            "NaN"                | Out of range float values are not JSON compliant: 'NaN'
            "[Infinity]"         | Out of range float values are not JSON compliant: 'Infinity'
            "{\"a\": -Infinity}" | Out of range float values are not JSON compliant: '-Infinity'
            "\ufeff{}"           | Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)
            " \ufeff{}"          | Expecting value: line 1 column 2 (char 1)
            "#,
        );
        for (input, want) in rows {
            assert_eq!(err(&input), want, "input {input:?}");
            assert_eq!(parse_str(&input).unwrap_err().message, want);
        }
    }

    #[test]
    fn numbers_print_like_python() {
        let rows = table(
            r#"
            "[0, -0, 7, -42, 9007199254740993]"          | [0,0,7,-42,9007199254740993]
            "-123456789012345678901234567890"            | -123456789012345678901234567890
            "[1.0, -0.0, 100000.0, 0.0001, 0.1, 1E5]"    | [1.0,-0.0,100000.0,0.0001,0.1,100000.0]
            "[1e16, 1.5e-7, 1e-5, 12.5e-1, 2.5e300]"     | [1e+16,1.5e-07,1e-05,1.25,2.5e+300]
            "[1.00000000000000001, 0.30000000000000004]" | [1.0,0.30000000000000004]
            "[123456789012345678.0, 9999999999999999.0]" | [1.2345678901234568e+17,1e+16]
            "[-2.5e-300, 1.7976931348623157e308]"        | [-2.5e-300,1.7976931348623157e+308]
            "[5e-324, 2e-324, 0e5]"                      | [5e-324,0.0,0.0]
            "[-1147493619435396.2, 98619394971213.12]"   | [-1147493619435396.2,98619394971213.12]
            "#,
        );
        // the last row has two shortest candidates each: Python picks the nearest (ties to even)
        for (input, want) in rows {
            assert_eq!(ok(&input), want, "input {input}");
        }
    }

    #[test]
    fn out_of_range_floats_are_python_inf() {
        let v = parse(b"[1e400, -1.5E+999, 1e308, 1E309]").unwrap();
        let strs: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|n| number_str(n.as_number().unwrap()))
            .collect();
        assert_eq!(strs, ["inf", "-inf", "1e+308", "inf"]);
        assert!(is_infinite(v[0].as_number().unwrap()) && is_infinite(v[1].as_number().unwrap()));
        assert!(!is_infinite(v[2].as_number().unwrap()));
        // No finite value is ever spelled like INF.
        assert_eq!(ok("[1e+99999, 1e99999]"), format!("[{INF},{INF}]"));
        assert_eq!(
            ok("[9.9e307, 1.7976931348623157e308]"),
            "[9.9e+307,1.7976931348623157e+308]"
        );
        // Python's own errors further on still win.
        assert_eq!(
            err("[1e400, x]"),
            "Expecting value: line 1 column 9 (char 8)"
        );
        assert_eq!(ok(r#"{"a": 1e400, "a": 1}"#), r#"{"a":1}"#);
    }

    #[test]
    fn integer_digit_limit() {
        let max = format!("-{}", "9".repeat(4300));
        assert_eq!(ok(&max), max);
        let msg = "Exceeds the limit (4300 digits) for integer string conversion: value has 4301 \
                   digits; use sys.set_int_max_str_digits() to increase the limit";
        assert_eq!(err(format!("[-{}]", "1".repeat(4301))), msg);
        // floats have no digit limit
        assert_eq!(
            ok(format!("{}.5", "1".repeat(300))),
            "1.1111111111111112e+299"
        );
        assert_eq!(ok(format!("0.{}1e5000", "0".repeat(5000))), "0.1");
    }

    #[test]
    fn duplicate_keys_keep_first_position_last_value() {
        assert_eq!(ok(r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
        assert_eq!(ok(r#"{"b":{"x":1},"a":0,"b":[]}"#), r#"{"b":[],"a":0}"#);
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(ok(r#""a\"\\\/\b\f\n\r\tz""#), r#""a\"\\/\b\f\n\r\tz""#);
        assert_eq!(ok(r#""\u00e9\uD83D\uDE00é\u0000""#), "\"é😀é\\u0000\"");
        assert_eq!(ok("\"\u{7f}\""), "\"\u{7f}\"");
        assert_eq!(
            ok(r#""\ud800\udc00\uDBFF\uDFFF""#),
            "\"\u{10000}\u{10ffff}\""
        );
    }

    #[test]
    fn lone_surrogates_are_refused_where_nothing_can_hold_them() {
        let rows = table(
            r#"
            "[\"\\ud800\"]"                    | Unpaired surrogate \ud800 is not allowed: line 1 column 3 (char 2)
            "\"x\\uDC00\\ud83d\""              | Unpaired surrogate \udc00 is not allowed: line 1 column 3 (char 2)
            "\"\\ud800\\u0041\""               | Unpaired surrogate \ud800 is not allowed: line 1 column 2 (char 1)
            "\"\\ud800\\ud800\\udc00\""        | Unpaired surrogate \ud800 is not allowed: line 1 column 2 (char 1)
            "{\"\\udfff\": 1, \"\\udfff\": 2}" | Unpaired surrogate \udfff is not allowed: line 1 column 3 (char 2)
            "[\"\\ud800\" 1]"                  | Expecting ',' delimiter: line 1 column 11 (char 10)
            "#,
        );
        for (input, want) in rows {
            assert_eq!(err(&input), want, "input {input}");
        }
    }

    /// A command keeps them, as Python's str does: each is one private-use character.
    #[test]
    fn lone_surrogates_in_a_document_are_kept() {
        let doc = parse_document(br#"{"a": "x\ud800", "\udfff": ["\udc00\ud83d\ude00"]}"#).unwrap();
        assert!(doc.surrogates);
        let a: Vec<Option<u32>> = doc.value["a"]
            .as_str()
            .unwrap()
            .chars()
            .map(surrogate_of)
            .collect();
        assert_eq!(a, [None, Some(0xD800)]);
        let (key, list) = doc.value.as_object().unwrap().iter().nth(1).unwrap();
        assert_eq!(
            key.chars().map(surrogate_of).collect::<Vec<_>>(),
            [Some(0xDFFF)]
        );
        let item: Vec<Option<u32>> = list[0]
            .as_str()
            .unwrap()
            .chars()
            .map(surrogate_of)
            .collect();
        assert_eq!(item, [Some(0xDC00), None]); // then the pair, U+1F600
        let plain = parse_document("{\"a\": \"\u{10f800}\"}".as_bytes()).unwrap();
        assert!(!plain.surrogates);
        let both = "[\"\\ud800\", \"\u{10ffff}\"]";
        assert_eq!(
            parse_document(both.as_bytes()).unwrap_err().message,
            "Unpaired surrogate \\ud800 is not allowed together with characters \
             U+10F800..U+10FFFF: line 1 column 3 (char 2)"
        );
        let via_escape = br#"["\ud800", "\udbfe\udc00"]"#;
        assert!(parse_document(via_escape).is_err());
        // Python's own errors come first, wherever they are.
        assert_eq!(
            parse_document(br#"["\ud800" 1]"#).unwrap_err().message,
            "Expecting ',' delimiter: line 1 column 11 (char 10)"
        );
    }

    #[test]
    fn invalid_utf8_matches_cpython() {
        let cases: [(&[u8], &str); 12] = [
            (b"\xff", "byte 0xff in position 0: invalid start byte"),
            (b"\"\x80\"", "byte 0x80 in position 1: invalid start byte"),
            (
                b"\"\xc0\xaf\"",
                "byte 0xc0 in position 1: invalid start byte",
            ),
            (
                b"[\xf5\x80\x80\x80]",
                "byte 0xf5 in position 1: invalid start byte",
            ),
            (
                b"\"\xc2\"",
                "byte 0xc2 in position 1: invalid continuation byte",
            ),
            (
                b"ab\xed\xa0\x80",
                "byte 0xed in position 2: invalid continuation byte",
            ),
            (
                b"\"\xe0\x80\x80\"",
                "byte 0xe0 in position 1: invalid continuation byte",
            ),
            (
                b"\"\xf4\x90\x80\x80\"",
                "byte 0xf4 in position 1: invalid continuation byte",
            ),
            (
                b"\"\xe0\x80",
                "byte 0xe0 in position 1: invalid continuation byte",
            ),
            (
                b"\"\xe4\xb8x\"",
                "bytes in position 1-2: invalid continuation byte",
            ),
            (
                b"\"\xf0\x9f\x98x\"",
                "bytes in position 1-3: invalid continuation byte",
            ),
            (
                b"\"\xf0\x9f\xc0",
                "bytes in position 1-2: invalid continuation byte",
            ),
        ];
        for (input, want) in cases {
            let want = format!("'utf-8' codec can't decode {want}");
            assert_eq!(err(input), want, "{input:?}");
        }
    }

    #[test]
    fn truncated_sequence_at_end_is_dropped() {
        assert_eq!(ok(b"[1] \xe4\xb8"), "[1]");
        assert_eq!(ok(b"\"\xc3\xa9\"\xf0\x9f\x98"), "\"\u{e9}\"");
        assert_eq!(
            err(b" \xed\xa0"),
            "Expecting value: line 1 column 2 (char 1)"
        );
        let unterminated = "Unterminated string starting at: line 1 column 1 (char 0)";
        assert_eq!(err(b"\"\xe0\xa0"), unterminated);
        assert_eq!(err(b"\"\xf4\x8f\xbf"), unterminated);
    }

    #[test]
    fn whitespace_is_only_space_tab_newline_return() {
        assert_eq!(ok(" \t\r\n[ 1 ,\n2\t]\r\n "), "[1,2]");
        assert_eq!(ok("{ \"a\" :\t1 , \"b\"\r\n:\n[ ] }"), r#"{"a":1,"b":[]}"#);
    }

    #[test]
    fn depth_limit_on_the_processors_stack() {
        let nested = |open: &str, close: &str, n| format!("{}0{}", open.repeat(n), close.repeat(n));
        let thread = std::thread::Builder::new().stack_size(STACK_BYTES);
        let t = thread.spawn(move || {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let v = parse(nested(open, close, MAX_DEPTH).as_bytes()).unwrap();
                assert_eq!(jsonb_normalize(&v), v);
            }
            let msg = "maximum recursion depth exceeded while decoding a JSON array from a \
                       unicode string";
            assert_eq!(err(nested("[", "]", MAX_DEPTH + 1)), msg);
            assert_eq!(err("[".repeat(100_000)), msg);
            let msg = msg.replace("array", "object");
            assert_eq!(err(format!("{}{{", "[".repeat(MAX_DEPTH))), msg);
            assert_eq!(err("{\"a\":".repeat(100_000)), msg);
        });
        t.unwrap().join().unwrap();
    }

    /// Right of `|` is `select '<input>'::jsonb::text` as printed by PostgreSQL 15.
    #[test]
    fn jsonb_normalize_matches_postgres() {
        let rows = table(
            r#"
            "{\"b\":1,\"aa\":2,\"a\":3,\"é\":4,\"z\":5,\"ab\":6}" | {"a": 3, "b": 1, "z": 5, "aa": 2, "ab": 6, "é": 4}
            "{\"aé\":1,\"ab\":2,\"bé\":3,\"ä\":4,\"z\":5}"        | {"z": 5, "ab": 2, "ä": 4, "aé": 1, "bé": 3}
            "{\"a\":{\"bb\":1,\"c\":[{\"y\":1,\"x\":2}]},\"\":0}" | {"": 0, "a": {"c": [{"x": 2, "y": 1}], "bb": 1}}
            "[1e+16, 1.5e+16, 1e-05, 1.0, -0.0, 0.1, 1.5e-07]"    | [10000000000000000, 15000000000000000, 0.00001, 1.0, 0.0, 0.1, 0.00000015]
            "[123456789012345678901234567890, 12.3, 10.0, 0]"     | [123456789012345678901234567890, 12.3, 10.0, 0]
            "[-1.5e-05, 100000.0, 1.25, -2.5e-10, 1e+22, 1e-07]"  | [-0.000015, 100000.0, 1.25, -0.00000000025, 10000000000000000000000, 0.0000001]
            "[1.5e+300]"                                          | [1500000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000]
            "#,
        );
        let text = |v: &Value| serde_json::to_string(v).unwrap();
        for (input, pg) in rows {
            let got = jsonb_normalize(&parse_str(&input).unwrap());
            assert_eq!(text(&got), text(&parse_str(pg).unwrap()), "input {input}");
        }
        let got = jsonb_normalize(&parse_str("[1e+16, 1e-05, -0.0, 1.0]").unwrap());
        assert_eq!(text(&got), "[10000000000000000,1e-05,0.0,1.0]");
    }
}
