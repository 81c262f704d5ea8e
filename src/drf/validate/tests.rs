//! The body's and the envelope's rules and messages, and `str()`, against DRF's on CPython.

use serde_json::{Map, Value};

use super::body::json_field;
use super::messages::*;
use super::*;

fn v(json: &str) -> Value {
    serde_json::from_str(json).expect("test JSON")
}

fn ok(body: &str) -> ValidBody {
    validate_body(Some(&v(body))).expect(body)
}

fn errors_of(body: &str) -> Value {
    Value::Object(validate_body(Some(&v(body))).expect_err(body))
}

fn one_error(key: &str, msgs: Vec<&str>) -> Value {
    Value::Object(Map::from_iter([(key.to_owned(), Value::from(msgs))]))
}

/// `field | value JSON => message && message...`: the only errors of an otherwise valid body
/// (a repeated key keeps its last value, as with Python's json).
const FIELD_CASES: &str = r#"
        action | "LOGIN" => "LOGIN" is not a valid choice.
        action | " login" => " login" is not a valid choice.
        action | "custom_x" => "custom_x" is not a valid choice.
        action | "" => "" is not a valid choice.
        action | 1.5 => "1.5" is not a valid choice.
        action | true => "True" is not a valid choice.
        action | ["login"] => "['login']" is not a valid choice.
        action | {"a":{}} => "{'a': {}}" is not a valid choice.
        action | null => This field may not be null.
        app | true => Not a valid string.
        app | [] => Not a valid string.
        app | {} => Not a valid string.
        app | "" => This field may not be blank.
        app | " \t\n " => This field may not be blank.
        app | "\u001f\u0085\u00a0\u3000" => This field may not be blank.
        app | "a\u0000b" => Null characters are not allowed.
        app | null => This field may not be null.
        user | {"a":["\u0000"]} => Null characters are not allowed.
        user | null => This field may not be null.
        context | {"k\u0000":1} => Null characters are not allowed.
        brand | null => This field may not be null.
        client_ip | "not-an-ip" => Enter a valid IPv4 or IPv6 address.
        client_ip | "not:an:ip" => Enter a valid IPv4 or IPv6 address.
        client_ip | 5 => Enter a valid IPv4 or IPv6 address.
        client_ip | [] => Enter a valid IPv4 or IPv6 address.
        client_ip | true => Enter a valid IPv4 or IPv6 address.
        client_ip | "  " => This field may not be blank.
        client_ip | "10.0.0.1\u0000" => Null characters are not allowed. && Enter a valid IPv4 or IPv6 address.
        expires | "nope" => Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].
        expires | "" => Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].
        expires | 5 => Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].
        expires | [] => Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].
        expires | null => This field may not be null.
        expires | "99999-01-01T00:00:00Z" => Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].
        expires | "9999-12-31T23:59:59-01:00" => Datetime value out of range.
        expires | "0001-01-01T00:00:00+01:00" => Datetime value out of range.
    "#;

#[test]
fn field_rules_and_messages() {
    for line in FIELD_CASES.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (field, rest) = line.split_once(" | ").expect(line);
        let (value, msgs) = rest.split_once(" => ").expect(line);
        let body = format!(r#"{{"action":"login","app":"a","{field}":{value}}}"#);
        let expected = one_error(field, msgs.split(" && ").collect());
        assert_eq!(errors_of(&body), expected, "{line}");
    }
}

#[test]
fn valid_fields_all_27_actions_and_unknown_keys_ignored() {
    let json = r#"{"pk":"x","created":"x","junk":1,"action":"login","user":{"pk":1},
            "app":" authentik.core ","context":[1],"client_ip":" 10.0.0.1 ","brand":"b",
            "expires":"2027-01-01T00:00:00Z"}"#;
    let body = ok(json);
    let expected = ValidBody {
        user: Some(v(r#"{"pk":1}"#)),
        action: "login".into(),
        app: "authentik.core".into(),
        context: Some(v("[1]")),
        client_ip: Some(Some("10.0.0.1".into())),
        expires: crate::drf::isodate::parse_datetime("2027-01-01T00:00:00Z").ok(),
        brand: Some(v(r#""b""#)),
    };
    assert_eq!(body, expected);
    let minimal = ok(r#"{"action":"custom_","app":"a","client_ip":null}"#);
    assert!(minimal.user.is_none() && minimal.context.is_none());
    assert_eq!((minimal.brand, minimal.expires), (None, None));
    assert_eq!(minimal.client_ip, Some(None));
    let ipv6 = ok(r#"{"action":"login","app":"a","client_ip":"::1"}"#);
    assert_eq!(ipv6.client_ip, Some(Some("::1".to_owned())));
    let apps = r#"5=>5 1.5=>1.5 1e+16=>1e+16 "\u001cx\u00a0"=>x"#;
    for (value, expected) in apps.split(' ').filter_map(|c| c.split_once("=>")) {
        let body = format!(r#"{{"action":"login","app":{value}}}"#);
        assert_eq!(ok(&body).app, expected);
    }
    let actions: Vec<&str> = EVENT_ACTIONS.split_ascii_whitespace().collect();
    assert_eq!(actions.len(), 27);
    for a in actions {
        assert_eq!(ok(&format!(r#"{{"action":"{a}","app":"x"}}"#)).action, a);
    }
}

#[test]
fn missing_body_and_non_object_bodies() {
    let no_body = Value::Object(validate_body(None::<&Value>).expect_err("no body"));
    let required = serde_json::json!({"action": [REQUIRED], "app": [REQUIRED]});
    assert_eq!(no_body, required);
    let non_field = |msg: &str| one_error("non_field_errors", vec![msg]);
    assert_eq!(errors_of("null"), non_field("No data provided"));
    let types = "[]:list \"s\":str 5:int -3:int 1.5:float 1e+16:float true:bool";
    for (body, name) in types.split(' ').filter_map(|t| t.split_once(':')) {
        let msg = format!("Invalid data. Expected a dictionary, but got {name}.");
        assert_eq!(errors_of(body), non_field(&msg), "{body}");
    }
}

#[test]
fn multiple_field_errors_in_field_order() {
    let body = r#"{"brand":null,"expires":5,"client_ip":"x:y","context":null,"app":"",
            "action":"LOGIN","user":null}"#;
    let expected = format!(
        r#"{{"user":[{NOT_NULL:?}],"action":["\"LOGIN\" is not a valid choice."],"app":[{BLANK:?}],"context":[{NOT_NULL:?}],"client_ip":[{INVALID_IP:?}],"expires":[{DATETIME_FORMAT:?}],"brand":[{NOT_NULL:?}]}}"#
    );
    // Order matters: compare the serialised text, not just the maps.
    assert_eq!(errors_of(body).to_string(), expected);
}

#[test]
fn json_fields_refuse_non_finite_and_walk_deep_values() {
    let inf = crate::drf::pyjson::parse(b"[-1e400]").unwrap();
    assert_eq!(
        json_field(Some((&inf).into())),
        Err(vec![INVALID_JSON.to_owned()])
    );
    let mut deep = v(r#""\u0000""#);
    for _ in 0..1_000 {
        deep = Value::Array(vec![deep]);
    }
    assert_eq!(
        json_field(Some((&deep).into())),
        Err(vec![NULL_CHARS.to_owned()])
    );
    let (open, close) = ("[".repeat(1000), "]".repeat(1000));
    assert_eq!(py_str(&deep), format!("{open}'\\x00'{close}"));
}

/// DRF's answer for a body (JSON text, `\udXXX` escapes allowed) parsed as a command's.
fn answer(body: &str) -> String {
    let doc = crate::drf::pyjson::parse_document(body.as_bytes()).expect(body);
    let by_ref = validate_body(Some(doc.as_value()));
    // The owned path answers the same, with the same fields.
    assert_eq!(validate_body_owned(Some(doc.clone())), by_ref);
    match by_ref {
        Ok(b) => format!("ok {} {}", b.action, b.app),
        Err(e) => Value::Object(e).to_string(),
    }
}

#[test]
fn an_owned_body_gives_the_same_answer_with_its_json_fields_moved() {
    let bodies = [
        r#"{"action": "login", "app": "a", "user": {"pk": 1, "a": [1.0]}, "context": {}, "brand": {"z": "\u0001"}}"#,
        r#"{"action": "login", "app": "a", "context": null}"#,
        r#"{"action": "login", "app": " a ", "brand": [], "client_ip": "::1.2.3.4", "expires": "2027-01-01T00:00:00Z"}"#,
        r#"{"action": "nope", "app": "", "user": "x"}"#,
        r#"{"user": {"k": "\u0000"}}"#,
        r#"[1]"#,
        r#"null"#,
    ];
    for body in bodies {
        let v = crate::drf::pyjson::parse(body.as_bytes()).unwrap();
        assert_eq!(
            validate_body_owned(Some(v.clone().into())),
            validate_body(Some(&v)),
            "{body}"
        );
    }
    assert_eq!(validate_body_owned(None), validate_body(None::<&Value>));
    let v = crate::drf::pyjson::parse(bodies[0].as_bytes()).unwrap();
    let b = validate_body_owned(Some(v.clone().into())).unwrap();
    assert_eq!(b.user.as_ref(), v.get("user"));
    assert_eq!(b.brand.as_ref(), v.get("brand"));
}

/// Rows `body => answer`: DRF 3.16 on CPython 3.13 (a lone surrogate is a Python str's own
/// character), and the contract where authentik would answer 500 (JSON fields, a bare
/// surrogate in `action`).
#[test]
fn lone_surrogates_get_each_fields_answer() {
    let ok = r#""action": "login", "app": "a""#;
    let rows = [
            (format!(r#"{{{ok}, "x\ud800": 1, "y": "\udfff"}}"#), "ok login a".to_owned()),
            (
                r#"{"action": "login", "app": " \ud800x "}"#.to_owned(),
                r#"{"app":["Surrogate characters are not allowed: U+D800."]}"#.to_owned(),
            ),
            (
                r#"{"action": "login", "app": "\u0000\udfff\ud800"}"#.to_owned(),
                r#"{"app":["Null characters are not allowed.","Surrogate characters are not allowed: U+DFFF."]}"#.to_owned(),
            ),
            (
                r#"{"action": "\udc00login", "app": "a"}"#.to_owned(),
                r#"{"action":["Surrogate characters are not allowed: U+DC00."]}"#.to_owned(),
            ),
            (
                r#"{"action": ["\ud800", {"\udbff": "é"}], "app": "a"}"#.to_owned(),
                r#"{"action":["\"['\\ud800', {'\\udbff': 'é'}]\" is not a valid choice."]}"#.to_owned(),
            ),
            (
                format!(r#"{{{ok}, "client_ip": "1.2.3.\ud800"}}"#),
                r#"{"client_ip":["Surrogate characters are not allowed: U+D800.","Enter a valid IPv4 or IPv6 address."]}"#.to_owned(),
            ),
            (
                format!(r#"{{{ok}, "client_ip": "::1\ud800"}}"#),
                r#"{"client_ip":["Enter a valid IPv4 or IPv6 address."]}"#.to_owned(),
            ),
            (
                format!(r#"{{{ok}, "expires": "2027-01-01\udc0012:00"}}"#),
                "ok login a".to_owned(),
            ),
            (
                format!(r#"{{{ok}, "user": {{"a": ["\u0000", 1], "\udabc": "\ud800"}}}}"#),
                r#"{"user":["Null characters are not allowed.","Surrogate characters are not allowed: U+DABC."]}"#.to_owned(),
            ),
            (
                format!(r#"{{{ok}, "user": {{"a": ["\u0000", 1e400], "\udabc": "\ud800"}}}}"#),
                r#"{"user":["Value must be valid JSON."]}"#.to_owned(),
            ),
        ];
    for (body, want) in rows {
        assert_eq!(answer(&body), want, "{body}");
    }
    let doc = crate::drf::pyjson::parse_document(br#"["a\ud800"]"#).unwrap();
    assert_eq!(
        validate_request_id(doc.as_value().with(&doc.value[0])),
        Err(vec![
            "Surrogate characters are not allowed: U+D800.".to_owned()
        ])
    );
    // Without lone surrogates in the document, those characters are themselves.
    assert_eq!(
        answer("{\"action\": \"login\", \"app\": \"\u{10f800}\"}"),
        "ok login \u{10f800}"
    );
}

/// `1e400` is Python's `inf`: `str()` is `inf`, a float, and jsonb cannot hold it.
#[test]
fn overflowing_floats_are_python_inf() {
    let rows = [
        (
            r#"{"action": "login", "app": 1e400, "ignored": -1E999}"#,
            "ok login inf",
        ),
        (r#"{"action": "login", "app": -1e400}"#, "ok login -inf"),
        (
            r#"{"action": 1e400, "app": "a"}"#,
            r#"{"action":["\"inf\" is not a valid choice."]}"#,
        ),
        (
            r#"{"action": [-1e400, 1.5], "app": "a"}"#,
            r#"{"action":["\"[-inf, 1.5]\" is not a valid choice."]}"#,
        ),
        (
            r#"{"action": "login", "app": "a", "brand": [1e400]}"#,
            r#"{"brand":["Value must be valid JSON."]}"#,
        ),
        (
            r#"{"action": "login", "app": "a", "expires": 1e400}"#,
            r#"{"expires":["Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."]}"#,
        ),
    ];
    for (body, want) in rows {
        assert_eq!(answer(body), want, "{body}");
    }
    let inf = crate::drf::pyjson::parse(b"1e400").unwrap();
    assert_eq!(py_type_name(&inf), "float");
    assert_eq!(
        validate_expected_version(&inf),
        Err(vec![INVALID_INT.to_owned()])
    );
}

/// `JSON value => Python's str() of it`.
const PY_STR_CASES: &str = r#"
        "plain 'str'" => plain 'str'
        {"a":1,"b":[true,null,1.5,-2,1e+16]} => {'a': 1, 'b': [True, None, 1.5, -2, 1e+16]}
        [[],{},"x'y","x\"y","x'\"y"] => [[], {}, "x'y", 'x"y', 'x\'"y']
        ["\n\t\r\\\u0000\u007f\u0085\u00a0\u00ad\u00e9"] => ['\n\t\r\\\x00\x7f\x85\xa0\xadé']
        ["\u2028\u0378\ud83d\ude00\udb40\udc01 "] => ['\u2028\u0378😀\U000e0001 ']
        {"k'":"\u3000\u4e00"} => {"k'": '\u3000一'}
        false => False
    "#;

#[test]
fn py_str_matches_python() {
    for line in PY_STR_CASES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (json, expected) = line.split_once(" => ").expect(line);
        assert_eq!(py_str(&v(json)), expected, "{line}");
    }
}

/// `JSON string => canonical UUID`, or `=> -` where Python's `uuid.UUID(hex=...)` refuses.
const UUID_CASES: &str = r#"
        "12345678-1234-5678-1234-56781234abcd" => 12345678-1234-5678-1234-56781234abcd
        "1234567812345678123456781234ABCD" => 12345678-1234-5678-1234-56781234abcd
        "{12345678-1234-5678-1234-56781234abcd}" => 12345678-1234-5678-1234-56781234abcd
        "{urn:12345678-1234-5678-1234-56781234abcd}" => 12345678-1234-5678-1234-56781234abcd
        "urn:uuid:12345678-1234-5678-1234-56781234abcd" => 12345678-1234-5678-1234-56781234abcd
        "uurn:uid:12345678-1234-5678-1234-56781234abcd" => 12345678-1234-5678-1234-56781234abcd
        "+0x11111111111111111111111111111" => 00011111-1111-1111-1111-111111111111
        " 0x_1111111111111111111111111111" => 00001111-1111-1111-1111-111111111111
        "0x11111111111111111111111111111\u0085" => 00011111-1111-1111-1111-111111111111
        "\u00a02222222222222222222222222222222" => 02222222-2222-2222-2222-222222222222
        "1_11111111111111111111111111111-8" => 01111111-1111-1111-1111-111111111118
        "2345678-1234-5678-1234-56781234abcd" => -
        "_2222222222222222222222222222222" => -
        "2222222222222222222222222222222_" => -
        "1__11111111111111111111111111111" => -
        "\u001c2222222222222222222222222222222" => -
        "g2222222222222222222222222222222" => -
        "+ 111111111111111111111111111111" => -
        "" => -
        "0x" => -
        5 => -
    "#;

#[test]
fn event_uuid_forms() {
    for line in UUID_CASES.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (json, expected) = line.split_once(" => ").expect(line);
        let got = parse_event_uuid(&v(json)).map(|u| u.to_string());
        assert_eq!(got.unwrap_or("-".into()), expected, "{line}");
    }
    let arabic_three = Value::String("٣".repeat(32));
    let got = parse_event_uuid(&arabic_three).map(|u| u.to_string());
    assert_eq!(got.as_deref(), Some("33333333-3333-3333-3333-333333333333"));
}

/// `field | JSON => ok JSON` or `=> message && message...`.
const ENVELOPE_CASES: &str = r#"
        request_id | " id " => ok " id "
        request_id | "" => This field may not be blank.
        request_id | 5 => Not a valid string.
        request_id | [] => Not a valid string.
        request_id | null => This field may not be null.
        expected_version | 0 => ok 0
        expected_version | 9223372036854775807 => ok 9223372036854775807
        expected_version | -1 => Ensure this value is greater than or equal to 0.
        expected_version | 9223372036854775808 => Ensure this value is less than or equal to 9223372036854775807.
        expected_version | 123456789012345678901234567890 => Ensure this value is less than or equal to 9223372036854775807.
        expected_version | 1.0 => A valid integer is required.
        expected_version | 1e+16 => A valid integer is required.
        expected_version | "3" => A valid integer is required.
        expected_version | true => A valid integer is required.
        expected_version | null => This field may not be null.
    "#;

#[test]
fn envelope_fields() {
    for line in ENVELOPE_CASES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (field, rest) = line.split_once(" | ").expect(line);
        let (json, expected) = rest.split_once(" => ").expect(line);
        let got = match field {
            "request_id" => validate_request_id(&v(json)).map(Value::from),
            _ => validate_expected_version(&v(json)).map(Value::from),
        };
        let expected = match expected.strip_prefix("ok ") {
            Some(value) => Ok(v(value)),
            None => Err(expected.split(" && ").map(String::from).collect()),
        };
        assert_eq!(got, expected, "{line}");
    }
    let check = |s: String| validate_request_id(&Value::String(s));
    let max = "é".repeat(200);
    assert_eq!(check(max.clone()), Ok(max.clone()));
    let too_long = "Ensure this field has no more than 200 characters.";
    assert_eq!(check(max.clone() + "x"), Err(vec![too_long.into()]));
    let both = vec![too_long.to_owned(), NULL_CHARS.to_owned()];
    assert_eq!(check(max + "\0"), Err(both));
}
