//! Datetimes as authentik's REST API reads and writes them: DRF 3.16
//! `DateTimeField` (ISO-8601, `USE_TZ=True`, `TIME_ZONE='UTC'`), Django 5.1, Python 3.13.
//!
//! Parsing is Django's `parse_datetime`: CPython's C `datetime.fromisoformat`
//! (emulated byte for byte: it accepts far more than ISO 8601, e.g. any separator
//! character, week dates, `12:` before an offset), then on `ValueError` Django's
//! `datetime_re` fallback, then DRF's `strptime(value, "iso-8601")`, which only
//! matches that literal; the result goes to UTC as `enforce_timezone` does.
//!
//! `\d` and `\s` in Django's regex are Unicode-aware (any `Nd` digit, read by `int()`), as
//! in Python. A value with lone surrogates (which JSON escapes can carry) is read as
//! `fromisoformat` reads it: see [`parse_datetime_with_surrogates`].

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, Timelike, Utc, Weekday};

use crate::drf::pychar::{py_decimal, py_isspace};

/// Why a text is not a datetime DRF accepts: DRF's two error codes for a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateTimeError {
    /// DRF 'invalid' (wrong format)
    #[error("the datetime has the wrong format")]
    Invalid,
    /// DRF 'overflow' ("Datetime value out of range.")
    #[error("the datetime is out of range once in UTC")]
    Overflow,
}

/// DRF `DateTimeField.to_internal_value` for a string input, with `input_formats = [ISO_8601]`,
/// USE_TZ=True, TIME_ZONE='UTC': `parse_datetime(value)` from Django 5.1 (first
/// `datetime.fromisoformat(value)` as Python 3.13 implements it, then on ValueError the
/// `datetime_re` regex fallback, whose `datetime(**kw)` ValueErrors also mean Invalid), then
/// `enforce_timezone`: naive -> UTC; aware -> `astimezone(UTC)`, where an OverflowError (result
/// outside year 1..9999) is Overflow. Any result must also be in Python's datetime range.
pub fn parse_datetime(value: &str) -> Result<DateTime<Utc>, DateTimeError> {
    let parsed = from_isoformat(value)
        .or_else(|| django_datetime_re(value))
        .or_else(|| strptime_iso_8601_literal(value))
        .ok_or(DateTimeError::Invalid)?;
    to_utc(parsed)
}

/// [`parse_datetime`] for a value holding lone surrogates (as [`crate::drf::pyjson`] carries them).
/// CPython's `_sanitize_isoformat_str` replaces a surrogate at position 7, 8 or 10 (the
/// possible separators) with `T`; any other surrogate makes the UTF-8 encoding, and so
/// `fromisoformat`, fail. Django's regex and DRF's `strptime` match no surrogate. So the value
/// parses only when it has exactly one, at one of those positions.
pub fn parse_datetime_with_surrogates(value: &str) -> Result<DateTime<Utc>, DateTimeError> {
    let mut chars: Vec<char> = value.chars().collect();
    let lone: Vec<usize> = (0..chars.len())
        .filter(|&i| crate::drf::pyjson::surrogate_of(chars[i]).is_some())
        .collect();
    match lone[..] {
        [] => parse_datetime(value),
        [at] if chars.len() >= 7 && [7, 8, 10].contains(&at) => {
            chars[at] = 'T';
            let sanitized: String = chars.into_iter().collect();
            to_utc(from_isoformat(&sanitized).ok_or(DateTimeError::Invalid)?)
        }
        _ => Err(DateTimeError::Invalid),
    }
}

fn to_utc(parsed: Parsed) -> Result<DateTime<Utc>, DateTimeError> {
    // `astimezone(UTC)`: subtract the offset; leaving 1..=9999 is an OverflowError.
    let utc = parsed.local - TimeDelta::microseconds(parsed.offset_us);
    if !(1..=9999).contains(&utc.year()) {
        return Err(DateTimeError::Overflow);
    }
    Ok(utc.and_utc())
}

/// DRF's `DateTimeField.to_representation`: `value.isoformat()` in UTC with a trailing '+00:00'
/// written as 'Z' (microseconds shown only when non-zero, as 6 digits; year zero-padded to 4
/// digits). Input is always UTC with microsecond precision.
///
/// Written digit by digit (it runs for every reply and view record); a value outside what
/// Python's datetime holds (a year outside 0..=9999) or in a leap second goes through chrono's
/// strftime instead, so the text is the same for every input.
pub fn to_representation(value: DateTime<Utc>) -> String {
    let mut out = Vec::with_capacity(ISO_MICROS_LEN);
    write_representation(&mut out, value);
    // Only ASCII digits and punctuation were written.
    String::from_utf8(out).unwrap_or_default()
}

/// [`to_representation`], appended to `out`.
pub fn write_representation(out: &mut Vec<u8>, value: DateTime<Utc>) {
    match iso_micros(value) {
        Some(text) if text[20..26] == *b"000000" => {
            out.extend_from_slice(&text[..19]);
            out.push(b'Z');
        }
        Some(text) => out.extend_from_slice(&text),
        None => out.extend_from_slice(strftime_representation(value).as_bytes()),
    }
}

/// RFC 3339 in UTC with six fraction digits (`2026-12-07T20:31:26.123456Z`), as chrono's
/// `to_rfc3339_opts(SecondsFormat::Micros, true)` writes it, appended to `out`.
pub fn write_rfc3339_micros(out: &mut Vec<u8>, value: DateTime<Utc>) {
    match iso_micros(value) {
        Some(text) => out.extend_from_slice(&text),
        None => out.extend_from_slice(
            value
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .as_bytes(),
        ),
    }
}

/// Length of `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const ISO_MICROS_LEN: usize = 27;

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (microseconds truncated), for a year in 0..=9999 outside a
/// leap second; `None` otherwise (the callers then ask chrono).
fn iso_micros(value: DateTime<Utc>) -> Option<[u8; ISO_MICROS_LEN]> {
    let nanos = value.nanosecond();
    let year = u32::try_from(value.year()).ok().filter(|y| *y <= 9999)?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, value.month());
    put(8, 2, value.day());
    put(11, 2, value.hour());
    put(14, 2, value.minute());
    put(17, 2, value.second());
    put(20, 6, nanos / 1_000);
    Some(b)
}

/// [`to_representation`] through chrono's strftime: for the values [`iso_micros`] leaves out
/// (and, in tests, the oracle of the written form).
fn strftime_representation(value: DateTime<Utc>) -> String {
    // `% 1e9` folds chrono's leap-second representation back into 0..1s.
    let fraction = match value.nanosecond() % 1_000_000_000 / 1_000 {
        0 => String::new(),
        micros => format!(".{micros:06}"),
    };
    // `%Y` zero-pads the year to 4 digits, as Python's `%04d` does.
    format!("{}{fraction}Z", value.format("%Y-%m-%dT%H:%M:%S"))
}

/// A parsed wall-clock time and its UTC offset (0 for naive input, which
/// `enforce_timezone` declares to be UTC).
struct Parsed {
    local: NaiveDateTime,
    offset_us: i64,
}

/// `datetime(...)` plus `timezone(offset)` argument checks; `None` is a ValueError.
fn build(ymd: (i32, u32, u32), hms: (u32, u32, u32), micro: u32, offset_us: i64) -> Option<Parsed> {
    let (year, month, day) = ymd;
    let (hour, minute, second) = hms;
    if !(1..=9999).contains(&year) || offset_us.abs() >= 86_400_000_000 {
        return None;
    }
    let local = NaiveDate::from_ymd_opt(year, month, day)?
        .and_hms_micro_opt(hour, minute, second, micro)?;
    Some(Parsed { local, offset_us })
}

// ---------------------------------------------------------------------------
// CPython 3.13 `datetime.fromisoformat` (Modules/_datetimemodule.c).

/// Byte `i` of the UTF-8 text, or the C string's NUL terminator past the end.
/// The C parser reads past its sub-range ends, so every read goes through this.
fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// `parse_digits`: exactly `n` ASCII digits at `pos`; returns (new pos, value).
fn digits(b: &[u8], pos: usize, n: usize) -> Option<(usize, u32)> {
    (pos..pos + n).try_fold((pos + n, 0), |(end, acc), i| {
        let c = at(b, i);
        c.is_ascii_digit()
            .then(|| (end, acc * 10 + u32::from(c - b'0')))
    })
}

fn from_isoformat(s: &str) -> Option<Parsed> {
    // `_sanitize_isoformat_str`: fewer than 7 code points is invalid.
    if s.chars().count() < 7 {
        return None;
    }
    let b = s.as_bytes();
    let sep = find_isoformat_datetime_separator(b)?;
    let ymd = parse_isoformat_date(b, sep)?;
    let mut time = ((0, 0, 0), 0, None);
    if b.len() > sep {
        // Skip the separator, which may be any (multi-byte) character.
        let sep_len = s.get(sep..)?.chars().next()?.len_utf8();
        time = parse_isoformat_time(b, sep + sep_len)?;
    }
    let (hms, micro, offset) = time;
    build(ymd, hms, micro, offset.unwrap_or(0))
}

/// `_find_isoformat_datetime_separator`: where the date part ends (`None` is -1).
fn find_isoformat_datetime_separator(b: &[u8]) -> Option<usize> {
    let len = b.len();
    if len == 7 {
        return Some(7);
    }
    if b[4] == b'-' {
        if b[5] != b'W' {
            return Some(10); // YYYY-MM-DD
        }
        // (C's `len < 8` check cannot trigger: len >= 7 and len != 7 here.)
        if len > 8 && b[8] == b'-' {
            if len == 9 {
                return None;
            }
            // YYYY-Www-D or YYYY-Www-HH: digits at 10 mean a '-' separator at 8.
            let digit_at_10 = len > 10 && b[10].is_ascii_digit();
            return Some(if digit_at_10 { 8 } else { 10 });
        }
        return Some(8); // YYYY-Www
    }
    if b[4] != b'W' {
        return Some(8); // YYYYMMDD
    }
    // YYYYWww or YYYYWwwd: count the digits that follow.
    let idx = (7..len).find(|&i| !b[i].is_ascii_digit()).unwrap_or(len);
    Some(match idx {
        _ if idx < 9 => idx,
        _ if idx % 2 == 0 => 7,
        _ => 8,
    })
}

/// `parse_isoformat_date`: (year, month, day), unchecked except for week dates.
fn parse_isoformat_date(b: &[u8], len: usize) -> Option<(i32, u32, u32)> {
    let (p, year) = digits(b, 0, 4)?;
    let uses_separator = at(b, p) == b'-';
    // With a separator, every later component must be preceded by '-'.
    let dash = |p: usize| match uses_separator {
        true => (at(b, p) == b'-').then_some(p + 1),
        false => Some(p),
    };
    let p = p + usize::from(uses_separator);
    if at(b, p) == b'W' {
        let (p, week) = digits(b, p + 1, 2)?;
        let weekday = if p < len {
            digits(b, dash(p)?, 1)?.1
        } else {
            1
        };
        return iso_to_ymd(year, week, weekday);
    }
    let (p, month) = digits(b, p, 2)?;
    let (_, day) = digits(b, dash(p)?, 2)?;
    Some((year as i32, month, day))
}

/// `iso_to_ymd`: week 53 only exists in long ISO years (chrono's rule is the same).
fn iso_to_ymd(year: u32, week: u32, weekday: u32) -> Option<(i32, u32, u32)> {
    if !(1..=9999).contains(&year) || !(1..=7).contains(&weekday) {
        return None;
    }
    let weekday = Weekday::try_from(u8::try_from(weekday - 1).ok()?).ok()?;
    let date = NaiveDate::from_isoywd_opt(year as i32, week, weekday)?;
    Some((date.year(), date.month(), date.day())) // may be year 10000: rejected later
}

type TimeFields = ((u32, u32, u32), u32, Option<i64>);

/// `parse_isoformat_time` from `start` to the end: fields and offset in µs.
fn parse_isoformat_time(b: &[u8], start: usize) -> Option<TimeFields> {
    let end = b.len();
    // The offset starts at the first 'Z', '+' or '-' (a C do-while: the first
    // byte is inspected even when the time part is empty).
    let mut tz = start;
    while !matches!(at(b, tz), b'Z' | b'+' | b'-') {
        tz += 1;
        if tz >= end {
            break;
        }
    }
    let ([h, m, s], micro, trailing) = parse_hh_mm_ss_ff(b, start, tz)?;
    if tz >= end {
        // No offset, so anything left over is an error.
        return (!trailing).then_some(((h, m, s), micro, None));
    }
    if at(b, tz) == b'Z' {
        return (at(b, tz + 1) == 0).then_some(((h, m, s), micro, Some(0)));
    }
    let sign = if at(b, tz) == b'-' { -1 } else { 1 };
    let ([oh, om, os], ous, trailing) = parse_hh_mm_ss_ff(b, tz + 1, end)?;
    if trailing {
        return None;
    }
    let seconds = i64::from(oh * 3600 + om * 60 + os);
    // `tzinfo_from_isoformat_results`: a whole-second offset of 0 is UTC, so
    // its microseconds are dropped.
    let offset = match seconds {
        0 => 0,
        _ => sign * (seconds * 1_000_000 + i64::from(ous)),
    };
    Some(((h, m, s), micro, Some(offset)))
}

/// `parse_hh_mm_ss_ff` over `[start, end)`: `[HH[:?MM[:?SS]]][.,fraction]`.
/// Returns ([h, m, s], µs, trailing) where `trailing` is C's return value 1
/// ("not at the end of the string"); `None` is a negative return.
fn parse_hh_mm_ss_ff(b: &[u8], start: usize, end: usize) -> Option<([u32; 3], u32, bool)> {
    let mut vals = [0u32; 3];
    let mut p = start;
    let mut has_separator = true;
    for (i, val) in vals.iter_mut().enumerate() {
        let (next, v) = digits(b, p, 2)?;
        *val = v;
        let c = at(b, next);
        p = next + 1;
        if i == 0 {
            has_separator = c == b':';
        }
        if p >= end {
            // Also after a '.' or ',' with no digits: "trailing" only fails without an
            // offset (`12:30:45.` is invalid, `12:30:45.Z` is 12:30:45 UTC).
            return Some((vals, 0, c != 0));
        }
        if has_separator && c == b':' {
            continue;
        }
        if matches!(c, b'.' | b',') {
            break;
        }
        if has_separator {
            return None; // malformed time separator
        }
        p -= 1;
    }
    // Fraction: up to 6 digits are used, further digits are skipped.
    let to_parse = end.checked_sub(p).filter(|n| *n > 0)?.min(6);
    let (mut p, fraction) = digits(b, p, to_parse)?;
    let micro = fraction * 10u32.pow(6 - to_parse as u32);
    while at(b, p).is_ascii_digit() {
        p += 1;
    }
    Some((vals, micro, at(b, p) != 0))
}

// ---------------------------------------------------------------------------
// Django's fallback `datetime_re.match(value)`:
// (?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})[T ](?P<hour>\d{1,2}):(?P<minute>\d{1,2})
// (?::(?P<second>\d{1,2})(?:[.,](?P<microsecond>\d{1,6})\d{0,6})?)?
// \s*(?P<tzinfo>Z|[+-]\d{2}(?::?\d{2})?)?$
// Every `\d{m,n}` is followed by a non-digit token, so greedy matching without
// backtracking decides the same strings.

/// Python's `\d` and `int()` for one char: an ASCII digit or any Unicode `Nd` digit.
fn re_digit(c: char) -> Option<u32> {
    c.to_digit(10).or_else(|| py_decimal(c).map(u32::from))
}

/// Greedy `\d{min,max}` (Unicode digits) at `*i`: (value, digits consumed).
fn re_digits(c: &[char], i: &mut usize, min: usize, max: usize) -> Option<(u32, usize)> {
    let start = *i;
    let mut value = 0;
    while *i < c.len() && *i - start < max {
        let Some(d) = re_digit(c[*i]) else { break };
        value = value * 10 + d;
        *i += 1;
    }
    let n = *i - start;
    (n >= min).then_some((value, n))
}

fn re_char(c: &[char], i: &mut usize, accept: &[char]) -> Option<char> {
    let ch = *c.get(*i).filter(|ch| accept.contains(ch))?;
    *i += 1;
    Some(ch)
}

fn django_datetime_re(s: &str) -> Option<Parsed> {
    let c: Vec<char> = s.chars().collect();
    let i = &mut 0;
    let (year, _) = re_digits(&c, i, 4, 4)?;
    re_char(&c, i, &['-'])?;
    let (month, _) = re_digits(&c, i, 1, 2)?;
    re_char(&c, i, &['-'])?;
    let (day, _) = re_digits(&c, i, 1, 2)?;
    re_char(&c, i, &['T', ' '])?;
    let (hour, _) = re_digits(&c, i, 1, 2)?;
    re_char(&c, i, &[':'])?;
    let (minute, _) = re_digits(&c, i, 1, 2)?;
    let (mut second, mut micro) = (0, 0);
    if re_char(&c, i, &[':']).is_some() {
        second = re_digits(&c, i, 1, 2)?.0;
        if re_char(&c, i, &['.', ',']).is_some() {
            // (\d{1,6})\d{0,6}, the group right-padded with zeros to 6 digits.
            let (value, n) = re_digits(&c, i, 1, 6)?;
            micro = value * 10u32.pow(6 - n as u32);
            re_digits(&c, i, 0, 6)?;
        }
    }
    while c.get(*i).copied().is_some_and(py_isspace) {
        *i += 1;
    }
    let mut offset_minutes: i64 = 0;
    if let Some(sign) = re_char(&c, i, &['Z', '+', '-']) {
        if sign != 'Z' {
            let (hours, _) = re_digits(&c, i, 2, 2)?;
            // (?::?\d{2})? is kept only when both minute digits are there.
            let (mut j, mut minutes) = (*i + usize::from(c.get(*i) == Some(&':')), 0);
            if let Some((m, _)) = re_digits(&c, &mut j, 2, 2) {
                (minutes, *i) = (m, j);
            }
            let sign = if sign == '-' { -1 } else { 1 };
            offset_minutes = sign * i64::from(hours * 60 + minutes);
        }
    }
    // `$`: the end of the string, or just before a final newline.
    if !matches!(&c[*i..], [] | ['\n']) {
        return None;
    }
    // `get_fixed_timezone` -> `timezone(timedelta(minutes=...))`, then `datetime(**kw)`.
    let ymd = (year as i32, month, day);
    build(
        ymd,
        (hour, minute, second),
        micro,
        offset_minutes * 60_000_000,
    )
}

/// DRF then tries `datetime.strptime(value, "iso-8601")`: a literal, matched
/// case-insensitively by `re` (which also folds 'ı', 'İ' to 'i' and 'ſ' to 's'),
/// giving the naive `datetime(1900, 1, 1)`.
fn strptime_iso_8601_literal(s: &str) -> Option<Parsed> {
    let c: Vec<char> = s.chars().collect();
    let matches = c.len() == 8
        && matches!(c[0], 'i' | 'I' | 'ı' | 'İ')
        && matches!(c[1], 's' | 'S' | 'ſ')
        && matches!(c[2], 'o' | 'O')
        && c[3..] == ['-', '8', '6', '0', '1'];
    if !matches {
        return None;
    }
    build((1900, 1, 1), (0, 0, 0), 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    mod written {
        //! The digit-by-digit forms against chrono's formatting, over the whole range.
        use super::*;
        use chrono::TimeZone;
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        fn rfc3339(value: DateTime<Utc>) -> String {
            let mut out = Vec::new();
            write_rfc3339_micros(&mut out, value);
            String::from_utf8(out).unwrap()
        }

        proptest! {
            #![proptest_config(Config { cases: 5000, failure_persistence: None, ..Config::default() })]

            #[test]
            fn every_timestamp_is_written_as_strftime_writes_it(
                // Years -300..=10300 (Python's 1..=9999 and both sides of it).
                secs in -71_000_000_000i64..263_000_000_000,
                micros in prop_oneof![Just(0u32), Just(999_999u32), 0u32..1_000_000],
                nanos in prop_oneof![Just(0u32), 0u32..1_000],
            ) {
                let value = Utc.timestamp_opt(secs, micros * 1_000 + nanos).unwrap();
                prop_assert_eq!(to_representation(value), strftime_representation(value));
                prop_assert_eq!(
                    rfc3339(value),
                    value.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                );
            }
        }

        #[test]
        fn small_years_leap_seconds_and_whole_seconds() {
            for (y, nanos) in [(1, 0), (9, 5_000), (999, 0), (1000, 1), (9999, 999_999_999)] {
                let value = Utc.with_ymd_and_hms(y, 1, 2, 3, 4, 5).unwrap()
                    + chrono::Duration::nanoseconds(nanos);
                assert_eq!(to_representation(value), strftime_representation(value));
                assert_eq!(
                    rfc3339(value),
                    value.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                );
            }
            assert_eq!(
                to_representation(Utc.with_ymd_and_hms(7, 1, 2, 3, 4, 5).unwrap()),
                "0007-01-02T03:04:05Z"
            );
            let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc();
            assert_eq!(to_representation(leap), strftime_representation(leap));
            assert_eq!(
                rfc3339(leap),
                leap.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
    }

    const INVALID: &str = "invalid";
    const OVERFLOW: &str = "overflow";

    /// `to_representation(parse_datetime(input))`, or the DRF error code.
    fn render(input: &str) -> String {
        match parse_datetime(input) {
            Ok(value) => to_representation(value),
            Err(DateTimeError::Invalid) => INVALID.to_owned(),
            Err(DateTimeError::Overflow) => OVERFLOW.to_owned(),
        }
    }

    /// (input, expected `to_representation(parse_datetime(input))` or error),
    /// checked against DRF 3.16 / Django 5.1.7 on CPython 3.13 (and 3.11 where
    /// the behaviour exists there).
    #[rustfmt::skip]
    const CASES: &[(&str, &str)] = &[
        ("2027-01-01", "2027-01-01T00:00:00Z"),
        ("20270101", "2027-01-01T00:00:00Z"),
        ("20270101T000000", "2027-01-01T00:00:00Z"),
        ("2027-01-01T12:30:45", "2027-01-01T12:30:45Z"),
        ("2027-01-01 12:30:45", "2027-01-01T12:30:45Z"),
        ("2027-01-01x12:30", "2027-01-01T12:30:00Z"),
        ("2027-01-01é12:30", "2027-01-01T12:30:00Z"),
        ("2027-01-01😀12:30", "2027-01-01T12:30:00Z"),
        ("2027-01-01T12", "2027-01-01T12:00:00Z"),
        ("2027-01-01T1230", "2027-01-01T12:30:00Z"),
        ("2027-01-01T12:30:45.5", "2027-01-01T12:30:45.500000Z"),
        ("2027-01-01T12:30:45,123", "2027-01-01T12:30:45.123000Z"),
        ("2027-01-01T12:30:45.000000", "2027-01-01T12:30:45Z"),
        ("2027-01-01T12:30:45.1234567891234567", "2027-01-01T12:30:45.123456Z"),
        ("2027-01-01T12:30:45.9999999", "2027-01-01T12:30:45.999999Z"),
        ("2027-01-01T12:30:45Z", "2027-01-01T12:30:45Z"),
        ("2027-01-01T12:30:45+02", "2027-01-01T10:30:45Z"),
        ("2027-01-01T12:30:45+0230", "2027-01-01T10:00:45Z"),
        ("2027-01-01T12:30:45-02:30", "2027-01-01T15:00:45Z"),
        ("2027-01-01T12:30:45+01:00:30", "2027-01-01T11:30:15Z"),
        ("2027-01-01T12:30:45+01:00:00.5", "2027-01-01T11:30:44.500000Z"),
        ("2027-01-01T12:30:45-00:00:01.25", "2027-01-01T12:30:46.250000Z"),
        ("2027-01-01T12:30:45+00:00:00.5", "2027-01-01T12:30:45Z"),
        ("2027-01-01T12:30:45+00:60", "2027-01-01T11:30:45Z"),
        ("2027-01-01T12:30+23:59:59.999999", "2026-12-31T12:30:00.000001Z"),
        ("2027-W01-1", "2027-01-04T00:00:00Z"),
        ("2027W017", "2027-01-10T00:00:00Z"),
        ("2027-W01", "2027-01-04T00:00:00Z"),
        ("2027W01T12", "2027-01-04T12:00:00Z"),
        ("2027-W01-12", "2027-01-04T12:00:00Z"),
        ("2026-W53-7", "2027-01-03T00:00:00Z"),
        ("2024-02-29T00:00", "2024-02-29T00:00:00Z"),
        ("0001-01-01T00:00:00", "0001-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59.999999", "9999-12-31T23:59:59.999999Z"),
        ("0001-01-01T00:00:00+00:00:00.5", "0001-01-01T00:00:00Z"),
        // C parser quirks that Python 3.13 accepts.
        ("2027-01-01T12:+01:00", "2027-01-01T11:00:00Z"),
        ("2027-01-01T1234567+01:00", "2027-01-01T11:34:56Z"),
        ("2027-01-01T12:30:45:5", "2027-01-01T12:30:45.500000Z"),
        ("2027-01-01T123456789", "2027-01-01T12:34:56.789000Z"),
        ("2027-01-01T12:00:00\0", "2027-01-01T12:00:00Z"),
        ("2027-01-01T12:30:45.123456junk+01:00", "2027-01-01T11:30:45.123456Z"),
        ("2027-01-01T12:30:45.1234567 Z", "2027-01-01T12:30:45.123456Z"),
        ("2027-01-01T12:00Z\0junk", "2027-01-01T12:00:00Z"),
        // An empty fraction before an offset: the C parser ignores it.
        ("2027-01-01T12:30:45.Z", "2027-01-01T12:30:45Z"),
        ("2024-01-01T10:00:00,+01:00", "2024-01-01T09:00:00Z"),
        ("2027-01-01T12:30.-02:00", "2027-01-01T14:30:00Z"),
        // Django regex fallback.
        ("2027-1-1T1:2:3", "2027-01-01T01:02:03Z"),
        ("2027-01-01T12:3", "2027-01-01T12:03:00Z"),
        ("2027-01-01T12:30:4", "2027-01-01T12:30:04Z"),
        ("2027-01-01T12:30:45.123456789012 Z", "2027-01-01T12:30:45.123456Z"),
        ("2027-01-01T12:30 Z", "2027-01-01T12:30:00Z"),
        ("2027-01-01 12:30:45.5\u{3000}+01:00", "2027-01-01T11:30:45.500000Z"),
        ("2027-01-01T12:30\u{1c}", "2027-01-01T12:30:00Z"),
        ("2027-01-01T12:30 \n", "2027-01-01T12:30:00Z"),
        ("2027-01-01T12:30Z\n", "2027-01-01T12:30:00Z"),
        ("2027-01-01T12:30:45.123456789012", "2027-01-01T12:30:45.123456Z"),
        ("2027-01-01T12:00 +00:99", "2027-01-01T10:21:00Z"),
        ("2027-01-01T12:00 -0130", "2027-01-01T13:30:00Z"),
        // `\d` is any Unicode decimal digit, and `int()` reads it.
        ("٢٠٢٧-01-01T12:30", "2027-01-01T12:30:00Z"),
        ("２０２７-１-１T１:２:３", "2027-01-01T01:02:03Z"),
        ("2027-01-01T12:30:45.५ +٠١:३०", "2027-01-01T11:00:45.500000Z"),
        ("𝟐𝟎𝟐𝟕-01-01 12:30", "2027-01-01T12:30:00Z"),
        // DRF's strptime(value, "iso-8601") literal.
        ("iso-8601", "1900-01-01T00:00:00Z"),
        ("ISO-8601", "1900-01-01T00:00:00Z"),
        ("ıſo-8601", "1900-01-01T00:00:00Z"),
        // Overflow when converting to UTC.
        ("9999-12-31T23:59:59-01:00", OVERFLOW),
        ("0001-01-01T00:00:00+01:00", OVERFLOW),
        ("0001-01-01T00:00:00+00:00:01", OVERFLOW),
        ("9999-12-31T23:59:59.999999-00:00:00.000001", "9999-12-31T23:59:59.999999Z"),
        ("9999-12-31T23:59:59.999999-00:00:01", OVERFLOW),
        ("9999-12-31 23:30 -00:31", OVERFLOW),
        // Invalid.
        ("", INVALID),
        ("2027-01", INVALID),
        ("2027-1-1", INVALID),
        ("2027-01-01T", INVALID),
        ("2027-01-01T1", INVALID),
        ("2027-01-01T12:30:45.", INVALID),
        ("2027-01-01T12:30:45,", INVALID),
        ("2027-1-01T12:30:45.1234567890123", INVALID),
        ("2027-01-01T12:30:45.12345junk+01:00", INVALID),
        ("2027-01-0112:30", INVALID),
        ("2027-01-01T12:30z", INVALID),
        ("2027-01-01T12:30Z ", INVALID),
        ("2027-01-01T12:30+1", INVALID),
        ("2027-01-01T12:30+01:3", INVALID),
        ("2027-01-01T12:30+24:00", INVALID),
        ("2027-01-01T12:00 +23:99", INVALID),
        ("2027-01-01T24:00", INVALID),
        ("2027-01-01T23:60", INVALID),
        ("2027-01-01T23:59:60", INVALID),
        ("2027-02-29", INVALID),
        ("2027-13-01", INVALID),
        ("0000-01-01", INVALID),
        ("2027-001", INVALID),
        ("2027-W53-1", INVALID),
        ("2027-W00-1", INVALID),
        ("2027-W01-8", INVALID),
        ("9999-W52-6", INVALID),
        (" 2027-01-01", INVALID),
        ("2027-01-01\n", INVALID),
        ("٢٠٢٧-01-01", INVALID),
        ("+2027-01-01", INVALID),
        ("iso-8601 ", INVALID),
        ("yesterday", INVALID),
    ];

    #[test]
    fn parse_datetime_table() {
        for (input, expected) in CASES {
            assert_eq!(render(input), *expected, "input {input:?}");
        }
    }

    /// (input with `\u{d800}` standing for a lone surrogate, expected), as DRF 3.16 on
    /// CPython 3.13 answers `"\ud800"` escapes in the JSON body.
    #[test]
    fn lone_surrogates_only_as_the_separator() {
        let sur = crate::drf::pyjson::parse_document(br#""\udc00""#)
            .unwrap()
            .value;
        let sur = sur.as_str().unwrap().to_owned();
        let render = |input: &str| match parse_datetime_with_surrogates(&input.replace('@', &sur)) {
            Ok(v) => to_representation(v),
            Err(DateTimeError::Invalid) => INVALID.to_owned(),
            Err(DateTimeError::Overflow) => OVERFLOW.to_owned(),
        };
        assert_eq!(render("2024-01-01@12:00"), "2024-01-01T12:00:00Z");
        assert_eq!(render("20240101@1200+01"), "2024-01-01T11:00:00Z");
        assert_eq!(render("2024W017@12"), "2024-01-07T12:00:00Z");
        assert_eq!(render("2024-01@01"), INVALID);
        assert_eq!(render("2024-01-01@12:00@"), INVALID);
        assert_eq!(render("2024-01-01T12:00@"), INVALID);
        assert_eq!(render("2024-1-1@1:2:3"), INVALID); // the regex would have taken a 'T'
        assert_eq!(render("@"), INVALID);
        assert_eq!(render("9999-12-31@23:59-01:00"), OVERFLOW);
        assert_eq!(render("2024-01-01T12:00"), "2024-01-01T12:00:00Z");
    }

    #[test]
    fn to_representation_pads_year_and_shows_only_nonzero_micros() {
        let at = |(y, mo, d), (h, mi, s), us| {
            let date = NaiveDate::from_ymd_opt(y, mo, d).unwrap();
            to_representation(date.and_hms_micro_opt(h, mi, s, us).unwrap().and_utc())
        };
        assert_eq!(at((2027, 1, 1), (0, 0, 0), 0), "2027-01-01T00:00:00Z");
        assert_eq!(at((1, 2, 3), (4, 5, 6), 7), "0001-02-03T04:05:06.000007Z");
        assert_eq!(at((999, 9, 9), (9, 9, 9), 1), "0999-09-09T09:09:09.000001Z");
    }
}
