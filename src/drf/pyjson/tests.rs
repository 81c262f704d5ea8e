//! The parser, its error texts, number texts and the jsonb round trip against Python's.

use super::*;
use serde_json::Value;

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
