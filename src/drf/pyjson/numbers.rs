//! Python's number texts (`repr` of an int or float, as `json.dumps` writes them) and a value
//! as it comes back from PostgreSQL `jsonb`.

use serde_json::{Number, Value};

/// A Python int from its decimal text (optional `-`, no leading zeros except `0`/`-0`).
pub(super) fn python_int(text: &str) -> Value {
    match text.parse::<i64>() {
        Ok(n) => Value::Number(n.into()), // also turns `-0` into `0`
        Err(_) => number(text),
    }
}

/// `repr(float)`: shortest round-trip digits; fixed notation for exponents -4..16.
pub(super) fn python_float(f: f64) -> Value {
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

pub(super) fn number(text: &str) -> Value {
    // Our texts are valid JSON numbers; with `arbitrary_precision` serde_json keeps them verbatim.
    Value::Number(text.parse::<Number>().expect("valid JSON number text"))
}

/// The order of an object's keys in PostgreSQL `jsonb`: shorter keys first, then bytewise.
pub fn jsonb_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
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
            entries.sort_by(|(a, _), (b, _)| jsonb_key_order(a, b));
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
