//! The envelope fields of a command: `event_uuid` as Django's `UUIDField` reads it,
//! `request_id` and `expected_version`.

use serde_json::Value;

use super::messages::*;
use super::pystr::is_py_int;
use crate::drf::pychar::{py_decimal, py_isspace};
use crate::drf::pyjson::DocValue;

/// Python `uuid.UUID(hex=...)` acceptance (via Django UUIDField.to_python): strings only; remove
/// every 'urn:' and 'uuid:', strip '{' '}' from both ends, remove '-', require len 32, then Python
/// `int(hex, 16)` rules (surrounding whitespace, a sign, '0x' prefix, single underscores between
/// digits are accepted by int()). Non-strings -> None.
///
/// `int()` details reproduced (CPython `PyLong_FromUnicodeObject`): each non-ASCII char is
/// first mapped to ASCII, Unicode whitespace to a space and a Unicode decimal digit (`Nd`,
/// e.g. `٣`) to its digit, anything else non-ASCII fails; then ASCII whitespace (space,
/// `\t\n\v\f\r`, not `\x1c`-`\x1f`) is trimmed. `0 <= int < 2**128` always holds for 32 chars
/// (a `-` sign cannot survive the dash removal). The length counts code points, as Python does.
pub fn parse_event_uuid(v: &Value) -> Option<uuid::Uuid> {
    let Value::String(s) = v else { return None };
    let hex = s.replace("urn:", "").replace("uuid:", "");
    let hex = hex.trim_matches(['{', '}']).replace('-', "");
    if hex.chars().count() != 32 {
        return None;
    }
    python_int_base16(&hex).map(uuid::Uuid::from_u128)
}

fn python_int_base16(s: &str) -> Option<u128> {
    let mut ascii = Vec::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 127 {
            ascii.push(c as u8);
        } else if py_isspace(c) {
            ascii.push(b' ');
        } else {
            ascii.push(b'0' + py_decimal(c)?);
        }
    }
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = ascii.iter().position(|b| !is_space(b))?;
    let end = ascii.iter().rposition(|b| !is_space(b))? + 1;
    let mut rest = &ascii[start..end];
    let negative = rest.first() == Some(&b'-');
    if matches!(rest.first(), Some(b'+' | b'-')) {
        rest = &rest[1..];
    }
    if rest.len() >= 2 && rest[0] == b'0' && rest[1].eq_ignore_ascii_case(&b'x') {
        rest = rest[2..].strip_prefix(b"_").unwrap_or(&rest[2..]); // one '_' may follow "0x"
    }
    let mut value: u128 = 0;
    let mut last_underscore = true; // no leading '_', no '__', no trailing '_'
    for &b in rest {
        if b == b'_' {
            if last_underscore {
                return None;
            }
            last_underscore = true;
        } else {
            let digit = char::from(b).to_digit(16)?;
            value = value.checked_mul(16)?.checked_add(u128::from(digit))?;
            last_underscore = false;
        }
    }
    if last_underscore || (negative && value != 0) {
        return None;
    }
    Some(value)
}

/// Envelope field `request_id`: a string of 1..=200 characters without NUL; DRF
/// CharField(max_length=200) messages on failure ("Not a valid string.", "This field may not be
/// blank.", "Ensure this field has no more than 200 characters.", "Null characters are not
/// allowed.", ...). No trimming for the id.
///
/// Choices: numbers are refused ("Not a valid string.", an id is compared as text so `1` vs
/// `1.0` vs `"1"` would be ambiguous); null is "This field may not be null." (a caller that
/// wants null to mean "absent" checks before calling); only `""` is blank, since nothing is
/// trimmed; length counts characters (code points) as Python's `len`; the max-length and NUL
/// messages are collected in DRF's validator order, then a lone surrogate's.
pub fn validate_request_id<'a>(v: impl Into<DocValue<'a>>) -> Result<String, Vec<String>> {
    let doc = v.into();
    let s = match doc.value {
        Value::Null => return fail(NOT_NULL),
        Value::String(s) if s.is_empty() => return fail(BLANK),
        Value::String(s) => s,
        _ => return fail(NOT_A_STRING),
    };
    let mut msgs = Vec::new();
    if s.chars().count() > 200 {
        msgs.push("Ensure this field has no more than 200 characters.".to_owned());
    }
    if s.contains('\0') {
        msgs.push(NULL_CHARS.to_owned());
    }
    msgs.extend(surrogate_message(doc, s));
    validated(s.clone(), msgs)
}

/// Envelope field `expected_version`: DRF IntegerField(min_value=0) semantics but JSON integers
/// only (document): "A valid integer is required.", "Ensure this value is greater than or equal to
/// 0.", and for a value beyond i64 "Ensure this value is less than or equal to
/// 9223372036854775807." (document your choice).
///
/// Choices: only a JSON integer is accepted; DRF would also take `"3"` and `3.0`, which are
/// "A valid integer is required." here (as are bools, strings, containers). The upper bound
/// acts as DRF's `max_value=9223372036854775807` (the version is stored as a signed 64-bit
/// integer), so its message is DRF's `max_value` text. Null is "This field may not be null.".
pub fn validate_expected_version(v: &Value) -> Result<i64, Vec<String>> {
    let text = match v {
        Value::Null => return fail(NOT_NULL),
        Value::Number(n) => n.to_string(),
        _ => return fail(INVALID_INT),
    };
    if !is_py_int(&text) {
        return fail(INVALID_INT);
    }
    match text.strip_prefix('-') {
        Some(digits) if digits.bytes().any(|b| b != b'0') => {
            fail("Ensure this value is greater than or equal to 0.")
        }
        Some(_) => Ok(0), // "-0"
        None => text.parse::<i64>().or_else(|_| fail(VERSION_TOO_BIG)),
    }
}
