//! IP address validation and normalisation, reproducing what authentik's REST
//! API (Django REST framework 3.16 on Django 5.1, Python 3.13) accepts.
//!
//! DRF's `IPAddressField(protocol="both")` sends any value containing `:` through
//! Django's `clean_ipv6_address(value, unpack_ipv4=True)` and validates values with
//! `validate_ipv46_address`. Both rest on Python's `ipaddress` module, whose parsers
//! are stricter than Rust's `std::net` ones in some places (no leading zeros in IPv4
//! octets) and laxer in others (IPv6 scope ids such as `%eth0`), so they are
//! re-implemented here rule by rule instead of using `std::net`.
//!
//! [`pg_inet`] is the other half: how authentik's `inet` column prints an address back, which
//! is what a later update shows for a kept `client_ip`.

/// Django's `MAX_IPV6_ADDRESS_LENGTH` (Django 5.1.5+): longer input is rejected
/// before parsing. Python's `len()` counts code points, not bytes.
const MAX_IPV6_ADDRESS_LENGTH: usize = 39;

/// Django 5.1's `clean_ipv6_address(ip_str, unpack_ipv4=True)` (with the 39-character
/// MAX_IPV6_ADDRESS_LENGTH guard added in 5.1.5): Some(normalised text) when
/// `ipaddress.IPv6Address(int(ipaddress.IPv6Address(ip_str)))` succeeds (scope ids like `%eth0` are
/// accepted by IPv6Address and dropped by the int round-trip), IPv4-mapped addresses unpacked to
/// dotted IPv4, output exactly as Python's `str(IPv6Address)` (RFC 5952 compression as Python does
/// it: only runs of 2+ zero hextets, the first longest run), None when invalid.
pub fn clean_ipv6_address(s: &str) -> Option<String> {
    let ip = ipv6_address_from_str(s)?;
    if ip >> 32 == 0xffff {
        // `IPv6Address.ipv4_mapped` (::ffff:0:0/96), unpacked to dotted form.
        return Some(ipv4_to_string(ip as u32));
    }
    Some(ipv6_to_string(ip))
}

/// Django's `validate_ipv46_address(value)` passes: Python 3.13 `ipaddress.IPv4Address(value)`
/// accepts it, or Django's `is_valid_ipv6_address(value)` does.
pub fn validate_ipv46_address(s: &str) -> bool {
    parse_ipv4(s).is_some() || ipv6_address_from_str(s).is_some()
}

/// Django's `_ipv6_address_from_str`: the length guard, then `IPv6Address(ip_str)`.
fn ipv6_address_from_str(s: &str) -> Option<u128> {
    if s.chars().count() > MAX_IPV6_ADDRESS_LENGTH || s.contains('/') {
        return None;
    }
    // `_split_scope_id`: `partition('%')`; the scope id must be non-empty and
    // contain no further `%`, otherwise it is free text and is simply dropped.
    let addr = match s.split_once('%') {
        Some((addr, scope)) if !scope.is_empty() && !scope.contains('%') => addr,
        Some(_) => return None,
        None => s,
    };
    parse_ipv6(addr)
}

/// `IPv4Address(value)` for a string: no `/`, exactly four `.`-separated octets,
/// each 1-3 ASCII digits, no leading zero (except `0` itself), at most 255.
fn parse_ipv4(s: &str) -> Option<u32> {
    if s.contains('/') {
        return None;
    }
    let octets: Vec<&str> = s.split('.').collect();
    if octets.len() != 4 {
        return None;
    }
    octets.iter().try_fold(0u32, |acc, octet| {
        let valid = (1..=3).contains(&octet.len())
            && octet.bytes().all(|b| b.is_ascii_digit())
            && (*octet == "0" || !octet.starts_with('0'));
        if !valid {
            return None;
        }
        let value: u32 = octet.parse().ok()?;
        (value <= 255).then_some(acc << 8 | value)
    })
}

/// `_BaseV6._ip_int_from_string` (scope id already removed).
fn parse_ipv6(addr: &str) -> Option<u128> {
    const HEXTETS: usize = 8;
    let mut parts: Vec<String> = addr.split(':').map(str::to_owned).collect();
    if parts.len() < 3 {
        return None;
    }
    // A trailing embedded IPv4 address becomes the last two hextets.
    if parts.last()?.contains('.') {
        let v4 = parse_ipv4(&parts.pop()?)?;
        parts.push(format!("{:x}", v4 >> 16));
        parts.push(format!("{:x}", v4 & 0xffff));
    }
    if parts.len() > HEXTETS + 1 {
        return None;
    }
    let n = parts.len();
    // An empty part strictly inside marks the `::`; only one is allowed.
    let mut skip_index = None;
    for (i, part) in parts.iter().enumerate().take(n - 1).skip(1) {
        if part.is_empty() {
            if skip_index.is_some() {
                return None;
            }
            skip_index = Some(i);
        }
    }
    let (parts_hi, parts_lo, parts_skipped) = match skip_index {
        Some(skip) => {
            let mut hi = skip;
            let mut lo = n - skip - 1;
            if parts[0].is_empty() {
                hi -= 1;
                if hi != 0 {
                    return None; // a leading ':' is only allowed as part of '::'
                }
            }
            if parts[n - 1].is_empty() {
                lo -= 1;
                if lo != 0 {
                    return None; // a trailing ':' is only allowed as part of '::'
                }
            }
            let skipped = HEXTETS.checked_sub(hi + lo).filter(|s| *s >= 1)?;
            (hi, lo, skipped)
        }
        None if n != HEXTETS || parts[0].is_empty() || parts[n - 1].is_empty() => return None,
        None => (n, 0, 0),
    };
    let mut ip: u128 = 0;
    for part in &parts[..parts_hi] {
        ip = ip << 16 | u128::from(parse_hextet(part)?);
    }
    // Shifting by all 128 bits (`::`) is out of range for `<<`; `ip` is 0 then.
    ip = ip.checked_shl(16 * parts_skipped as u32).unwrap_or(0);
    for part in &parts[n - parts_lo..] {
        ip = ip << 16 | u128::from(parse_hextet(part)?);
    }
    Some(ip)
}

/// `_parse_hextet`: 1-4 ASCII hex digits.
fn parse_hextet(part: &str) -> Option<u16> {
    let valid = (1..=4).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return None;
    }
    u16::from_str_radix(part, 16).ok()
}

/// PostgreSQL's `inet_out` of a host address that [`clean_ipv6_address`] or Django's IPv4
/// check produced, as authentik reads it back (Django loads `inet` as text): IPv4 as is; IPv6
/// as Python prints it, except that PostgreSQL (`src/port/inet_net_ntop.c`) keeps a dotted
/// IPv4 tail when the first run of zeros is the first 6 hextets (`::1.2.3.4`, `::0.1.0.2`)
/// or the first 5 followed by `ffff` (`::ffff:1.2.3.4`). Text that is not an address (never
/// stored by the service) is returned unchanged.
pub fn pg_inet(text: &str) -> String {
    let Some(ip) = text
        .contains(':')
        .then(|| ipv6_address_from_str(text))
        .flatten()
    else {
        return text.to_owned();
    };
    let hextets: Vec<u16> = (0..8).map(|i| (ip >> (112 - 16 * i)) as u16).collect();
    // The first longest run of zero hextets, as inet_net_ntop finds it.
    let (mut best, mut run) = ((0, 0), (0, 0));
    for (i, &h) in hextets.iter().enumerate() {
        if h == 0 {
            run = if run.1 == 0 {
                (i, 1)
            } else {
                (run.0, run.1 + 1)
            };
            if run.1 > best.1 {
                best = run;
            }
        } else {
            run = (0, 0);
        }
    }
    match best {
        (0, 6) => format!("::{}", ipv4_to_string(ip as u32)),
        (0, 5) if hextets[5] == 0xffff => format!("::ffff:{}", ipv4_to_string(ip as u32)),
        _ => ipv6_to_string(ip),
    }
}

fn ipv4_to_string(ip: u32) -> String {
    let [a, b, c, d] = ip.to_be_bytes();
    format!("{a}.{b}.{c}.{d}")
}

/// `_string_from_ip_int` with `_compress_hextets`: lowercase hex without leading
/// zeros; the first longest run of at least two zero hextets becomes `::`.
fn ipv6_to_string(ip: u128) -> String {
    let hextets: Vec<String> = (0..8)
        .map(|i| format!("{:x}", (ip >> (112 - 16 * i)) as u16))
        .collect();
    let (mut best_start, mut best_len, mut run_start, mut run_len) = (0, 0, 0, 0);
    for (i, hextet) in hextets.iter().enumerate() {
        if hextet == "0" {
            if run_len == 0 {
                run_start = i;
            }
            run_len += 1;
            if run_len > best_len {
                (best_start, best_len) = (run_start, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    if best_len < 2 {
        return hextets.join(":");
    }
    let head = hextets[..best_start].join(":");
    let tail = hextets[best_start + best_len..].join(":");
    format!("{head}::{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, expected `clean_ipv6_address`), checked against Django 5.1.7 on
    /// CPython 3.13 (and 3.11 where both exist).
    #[rustfmt::skip]
    const CLEAN_CASES: &[(&str, Option<&str>)] = &[
        ("2001:0db8:0000:0000:0000:0000:0000:0001", Some("2001:db8::1")),
        ("2001:DB8::1", Some("2001:db8::1")),
        ("0:1:2:3:4:5:6:7", Some("0:1:2:3:4:5:6:7")),
        ("1:0:2:3:4:5:6:7", Some("1:0:2:3:4:5:6:7")),
        ("1:0:0:2:0:0:0:3", Some("1:0:0:2::3")),
        ("1:0:0:2:0:0:3:4", Some("1::2:0:0:3:4")),
        ("0:0:1:0:0:0:0:0", Some("0:0:1::")),
        ("::", Some("::")),
        ("0:0:0:0:0:0:0:0", Some("::")),
        ("::1", Some("::1")),
        ("1::", Some("1::")),
        ("1:2:3:4:5:6:7::", Some("1:2:3:4:5:6:7:0")),
        ("::2:3:4:5:6:7:8", Some("0:2:3:4:5:6:7:8")),
        ("fe80::1%eth0", Some("fe80::1")),
        ("fe80::1%25", Some("fe80::1")),
        ("fe80::1% x", Some("fe80::1")),
        ("::ffff:10.0.0.1", Some("10.0.0.1")),
        ("::FFFF:a00:1", Some("10.0.0.1")),
        ("::ffff:0:0", Some("0.0.0.0")),
        ("::1.2.3.4", Some("::102:304")),
        ("1:2:3:4:5:6:1.2.3.4", Some("1:2:3:4:5:6:102:304")),
        ("::ffff:1.2.3.4%x", Some("1.2.3.4")),
        ("64:ff9b::192.0.2.33", Some("64:ff9b::c000:221")),
        ("0000:0000:0000:0000:0000:0000:0000:0001", Some("::1")),
        ("1111:2222:3333:4444:5555:6666:123.123.123.123", None), // 45 chars
        ("1111:2222:3333:4444:5555:6666:7777:8888%abcd", None),  // 44 chars
        ("1:2:3:4:5:6:7:8%01234567890123456789012", Some("1:2:3:4:5:6:7:8")),
        ("1:2:3:4:5:6:7:8%012345678901234567890123", None),
        ("1::2::3", None),
        ("1:2:3:4:5:6:7", None),
        ("1:2:3:4:5:6:7:8:9", None),
        ("1:2:3:4:5:6:7:8::", None),
        ("::1:2:3:4:5:6:7:8", None),
        (":1:2:3:4:5:6:7", None),
        ("1:2:3:4:5:6:7:", None),
        (":1::2", None),
        ("1::2:", None),
        (":::", None),
        ("1:::2", None),
        ("12345::", None),
        ("g::1", None),
        ("::1.2.3", None),
        ("::1.2.3.04", None),
        ("::256.1.1.1", None),
        ("::1.2.3.4:5", None),
        ("::1.2.3.4.5", None),
        ("fe80::1%", None),
        ("fe80::1%a%b", None),
        ("fe80::1%eth0/64", None),
        ("::1/128", None),
        ("", None),
        ("1:2", None),
        ("::١", None),
        (" ::1", None),
        ("::1 ", None),
        ("1.2.3.4", None),
    ];

    /// Right of the arrow: `select '<input>'::inet` as PostgreSQL 15 prints it.
    #[test]
    fn pg_inet_prints_as_postgres() {
        let rows = [
            ("::102:304", "::1.2.3.4"),
            ("::1:2", "::0.1.0.2"),
            ("::2:0", "::0.2.0.0"),
            ("::a:b", "::0.10.0.11"),
            ("::ffff:0", "::255.255.0.0"),
            ("::ffff:0:1", "::ffff:0.0.0.1"),
            ("::1", "::1"),
            ("::", "::"),
            ("::ffff", "::ffff"),
            ("1::", "1::"),
            ("::1:0:0:0", "::1:0:0:0"),
            ("::1:0:0", "::1:0:0"),
            ("::fffe:102:304", "::fffe:102:304"),
            ("1:0:0:1::1", "1:0:0:1::1"),
            ("1::1:0:0:1:1", "1::1:0:0:1:1"),
            ("2001:db8::1", "2001:db8::1"),
            ("1.2.3.4", "1.2.3.4"),
        ];
        for (stored, printed) in rows {
            assert_eq!(pg_inet(stored), printed, "{stored}");
        }
    }

    #[test]
    fn clean_ipv6_address_table() {
        for (input, expected) in CLEAN_CASES {
            let got = clean_ipv6_address(input);
            assert_eq!(got.as_deref(), *expected, "input {input:?}");
        }
    }

    #[test]
    fn clean_ipv6_address_counts_code_points_for_length() {
        // 39 characters but more than 39 bytes: still within Django's limit.
        let input = format!("fe80::1%{}", "é".repeat(31));
        assert_eq!(input.chars().count(), 39);
        assert_eq!(clean_ipv6_address(&input).as_deref(), Some("fe80::1"));
        assert_eq!(clean_ipv6_address(&format!("{input}é")), None);
    }

    #[test]
    fn clean_ipv6_address_round_trips_every_single_zero_run_shape() {
        // Each 8-bit mask selects which hextets are zero; the output must parse
        // back to the same value and never use `::` for a lone zero hextet.
        for mask in 0u32..256 {
            let mut ip: u128 = 0;
            for i in 0u16..8 {
                let hextet = if mask >> i & 1 == 1 { 0 } else { 0xa0 + i };
                ip = ip << 16 | u128::from(hextet);
            }
            let text = ipv6_to_string(ip);
            assert_eq!(parse_ipv6(&text), Some(ip), "{text}");
            assert!(text.matches("::").count() <= 1, "{text}");
            assert!(!text.contains(":::"), "{text}");
        }
    }

    #[test]
    fn validate_ipv46_address_table() {
        let cases: &[(&str, bool)] = &[
            ("0.0.0.0", true),
            ("127.0.0.1", true),
            ("255.255.255.255", true),
            ("10.0.0.1", true),
            ("::1", true),
            ("fe80::1%eth0", true),
            ("::ffff:10.0.0.1", true),
            ("01.2.3.4", false),
            ("1.2.3.04", false),
            ("1.2.3.00", false),
            ("256.1.1.1", false),
            ("1.2.3.1000", false),
            ("1.2.3", false),
            ("1.2.3.4.5", false),
            ("1..3.4", false),
            ("1.2.3.4/32", false),
            ("+1.2.3.4", false),
            ("1.2.3.4 ", false),
            ("١.2.3.4", false),
            ("1.2.3.-4", false),
            ("", false),
            ("localhost", false),
            ("1::2::3", false),
            ("1:2:3:4:5:6:7:8%01234567890123456789012", true),
            ("1:2:3:4:5:6:7:8%012345678901234567890123", false),
        ];
        for (input, expected) in cases {
            assert_eq!(validate_ipv46_address(input), *expected, "input {input:?}");
        }
    }
}
