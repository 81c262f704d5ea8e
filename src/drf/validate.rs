//! Validation of the `PUT /api/v3/events/events/{event_uuid}/` body exactly as authentik's
//! `EventSerializer` (DRF 3.16 `ModelSerializer` over `authentik.events.models.Event`) does it,
//! with DRF's error texts character for character, plus the envelope fields of a command
//! (`event_uuid`, `request_id`, `expected_version`) and `py_str`, Python's `str()` of a parsed
//! JSON value as DRF prints it in messages. Pure functions: no I/O, no panics, no recursion.
//! Beyond DRF, values PostgreSQL cannot store (`\u0000`, lone surrogates and non-finite
//! numbers in jsonb) are 400s. Lone surrogates and `inf` arrive as [`pyjson`] carries them: every
//! rule reads a [`DocValue`], which says whether its document holds lone surrogates; a plain
//! `&Value` holds none.

use serde_json::{Map, Value};

use crate::drf::pychar::{py_decimal, py_isprintable, py_isspace, py_strip};
use crate::drf::pyjson::{self, DocValue, Document};

/// The validated body: DRF's `validated_data`. A field is `Some` only when the body carried it
/// (on an update, absent fields keep their old values; on a create they take the model defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidBody {
    pub user: Option<Value>,
    pub action: String,
    pub app: String,
    pub context: Option<Value>,
    pub client_ip: Option<Option<String>>,
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
    pub brand: Option<Value>,
}

/// DRF's error body (an object: field -> list of messages, or non_field_errors).
pub type ErrorBody = Map<String, Value>;

const REQUIRED: &str = "This field is required.";
const NOT_NULL: &str = "This field may not be null.";
const BLANK: &str = "This field may not be blank.";
const NOT_A_STRING: &str = "Not a valid string.";
const NULL_CHARS: &str = "Null characters are not allowed.";
const INVALID_IP: &str = "Enter a valid IPv4 or IPv6 address.";
const DATETIME_FORMAT: &str = "Datetime has wrong format. Use one of these formats instead: \
                               YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].";
const DATETIME_OVERFLOW: &str = "Datetime value out of range.";
const INVALID_INT: &str = "A valid integer is required.";
const VERSION_TOO_BIG: &str = "Ensure this value is less than or equal to 9223372036854775807.";
/// DRF's `JSONField` 'invalid': its `json.dumps(data)` check (`rest_framework.utils.json`,
/// `allow_nan=False`) fails for `inf`.
const INVALID_JSON: &str = "Value must be valid JSON.";

/// `authentik.events.models.EventAction` values, in declaration order (the seed's enum).
const EVENT_ACTIONS: &str = "login login_failed logout user_write suspicious_request \
    password_set secret_view secret_rotate invitation_used authorize_application source_linked \
    impersonation_started impersonation_ended flow_execution policy_execution policy_exception \
    property_mapping_exception system_task_execution system_task_exception system_exception \
    configuration_error model_created model_updated model_deleted email_sent update_available \
    custom_";

/// A field's outcome: `Err` holds DRF's messages for that field, in DRF's order.
type FieldResult<T> = Result<T, Vec<String>>;

fn fail<T>(msg: &str) -> FieldResult<T> {
    Err(vec![msg.to_owned()])
}

/// DRF's `run_validators`: every validator runs, the value passes only if none complained.
fn validated<T>(value: T, msgs: Vec<String>) -> FieldResult<T> {
    if msgs.is_empty() {
        Ok(value)
    } else {
        Err(msgs)
    }
}

/// `None` = the command carried no `body` key: treat as an empty PUT body (`{}`), i.e. required-field errors.
///
/// Mirrors `Serializer.run_validation` + `to_internal_value`: a null body is DRF's
/// `validate_empty_values` "null" failure, which `Serializer.errors` rewrites to
/// `{"non_field_errors": ["No data provided"]}`; any other non-Mapping is
/// `Invalid data. Expected a dictionary, but got {type(data).__name__}.`. Fields are the
/// writable ones of `Meta.fields` in order (`pk` and `created` are read-only, unknown keys
/// are never looked at), and every failing field is reported, not just the first.
/// This is a full (non-partial) update: `partial=False`, so `action` and `app` are required.
pub fn validate_body<'a>(body: Option<impl Into<DocValue<'a>>>) -> Result<ValidBody, ErrorBody> {
    let body = body.map(Into::into);
    let (mut valid, kept) = check_body(body)?;
    let data = body.and_then(|b| b.value.as_object());
    let copy = |name: &str, kept: bool| kept.then(|| data?.get(name).cloned()).flatten();
    valid.user = copy(USER, kept.user);
    valid.context = copy(CONTEXT, kept.context);
    valid.brand = copy(BRAND, kept.brand);
    Ok(valid)
}

/// [`validate_body`] for a body the caller owns: the JSON fields (`user`, `context`, `brand`)
/// are moved into the [`ValidBody`], not copied. Same answers.
pub fn validate_body_owned(body: Option<Document>) -> Result<ValidBody, ErrorBody> {
    let (mut valid, kept) = check_body(body.as_ref().map(Document::as_value))?;
    if let Some(Value::Object(mut data)) = body.map(|b| b.value) {
        let mut take = |name: &str, kept: bool| kept.then(|| data.swap_remove(name)).flatten();
        valid.user = take(USER, kept.user);
        valid.context = take(CONTEXT, kept.context);
        valid.brand = take(BRAND, kept.brand);
    }
    Ok(valid)
}

/// The names of the JSON fields of a body.
const USER: &str = "user";
const CONTEXT: &str = "context";
const BRAND: &str = "brand";

/// DRF's `non_field_errors` message for data that is not a dictionary (`Serializer.errors`
/// for a null body, else `to_internal_value`'s type check); `None` for a dictionary.
pub fn not_a_dictionary(data: &Value) -> Option<String> {
    match data {
        Value::Object(_) => None,
        Value::Null => Some("No data provided".to_owned()),
        other => Some(format!(
            "Invalid data. Expected a dictionary, but got {}.",
            py_type_name(other)
        )),
    }
}

/// Which JSON fields a valid body sets (their values are left where they are).
#[derive(Debug, Clone, Copy)]
struct KeptJson {
    user: bool,
    context: bool,
    brand: bool,
}

/// Every field's checks, in DRF's field order: the valid body without its JSON fields, and
/// which of those it sets; else every field's messages, or DRF's error for a body that is no
/// object (an absent body has no fields).
fn check_body(body: Option<DocValue>) -> Result<(ValidBody, KeptJson), ErrorBody> {
    if let Some(message) = body.and_then(|b| not_a_dictionary(b.value)) {
        return Err(non_field_error(message));
    }
    let (mut errors, get) = (ErrorBody::new(), |key| body?.get(key));
    let user = collect(&mut errors, USER, json_field(get(USER)));
    let action = collect(&mut errors, "action", action_field(get("action")));
    let app = collect(&mut errors, "app", app_field(get("app")));
    let context = collect(&mut errors, CONTEXT, json_field(get(CONTEXT)));
    let client_ip = collect(&mut errors, "client_ip", client_ip_field(get("client_ip")));
    let expires = collect(&mut errors, "expires", expires_field(get("expires")));
    let brand = collect(&mut errors, BRAND, json_field(get(BRAND)));
    match (action, app) {
        (Some(action), Some(app)) if errors.is_empty() => Ok((
            ValidBody {
                user: None,
                action,
                app,
                context: None,
                client_ip: client_ip.flatten(),
                expires: expires.flatten(),
                brand: None,
            },
            KeptJson {
                user: user.unwrap_or(false),
                context: context.unwrap_or(false),
                brand: brand.unwrap_or(false),
            },
        )),
        _ => Err(errors),
    }
}

/// DRF's error body for a message about the data as a whole.
pub fn non_field_error(msg: String) -> ErrorBody {
    ErrorBody::from_iter([("non_field_errors".to_owned(), Value::from(vec![msg]))])
}

fn collect<T>(errors: &mut ErrorBody, name: &str, result: FieldResult<T>) -> Option<T> {
    result
        .map_err(|msgs| {
            let list = msgs.into_iter().map(Value::String).collect();
            errors.insert(name.to_owned(), Value::Array(list));
        })
        .ok()
}

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
fn is_py_int(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `user`, `context`, `brand`: `models.JSONField(default=...)` -> DRF `JSONField(required=False)`
/// (authentik 2025.6's `ModelSerializer` keeps DRF's mapping; the seed schema is `{}`). Any
/// value but null is accepted as is (DRF's `json.dumps` check refuses only `inf`); absent =
/// skipped. Beyond DRF: jsonb cannot hold `\u0000` or a lone surrogate in a string or key
/// (authentik answers 500 at `save()`), so those are refused here with a message for the
/// field, in this order.
///
/// `Ok(true)`: the value is set as sent (the caller takes it from the body).
fn json_field(v: Option<DocValue>) -> FieldResult<bool> {
    match v {
        None => Ok(false),
        Some(v) if v.value.is_null() => fail(NOT_NULL),
        Some(v) if has_infinity(v.value) => fail(INVALID_JSON),
        Some(v) => validated(true, jsonb_problems(v)),
    }
}

/// Whether a number anywhere in the value is Python's `inf` (`1e400`). Any depth.
fn has_infinity(root: &Value) -> bool {
    let mut stack = vec![root];
    while let Some(v) = stack.pop() {
        match v {
            Value::Number(n) if pyjson::is_infinite(n) => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    false
}

/// DRF's `ProhibitSurrogateCharactersValidator` text for the first lone surrogate in `s`, a
/// string of `doc`.
fn surrogate_message(doc: DocValue, s: &str) -> Option<String> {
    doc.first_surrogate(s)
        .map(|cp| format!("Surrogate characters are not allowed: U+{cp:X}."))
}

/// Walks the whole value in document order with an explicit stack (any depth) for what jsonb
/// cannot store: NUL, lone surrogates (the first one is named).
fn jsonb_problems(root: DocValue) -> Vec<String> {
    let (mut nul, mut surrogate) = (false, None);
    let mut text = |s: &str| {
        nul |= s.contains('\0');
        if surrogate.is_none() {
            surrogate = surrogate_message(root, s);
        }
    };
    let mut stack = vec![(None, root.value)];
    while let Some((key, v)) = stack.pop() {
        if let Some(k) = key {
            text(k);
        }
        match v {
            Value::String(s) => text(s),
            Value::Array(items) => stack.extend(items.iter().rev().map(|item| (None, item))),
            Value::Object(map) => {
                let members = map.iter().rev();
                stack.extend(members.map(|(k, item)| (Some(k.as_str()), item)));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    let mut msgs = Vec::new();
    if nul {
        msgs.push(NULL_CHARS.to_owned());
    }
    msgs.extend(surrogate);
    msgs
}

/// `action`: `TextField(choices=EventAction.choices)` -> DRF `ChoiceField` (required, no
/// `allow_blank`, no validators). `to_internal_value` looks up `str(data)` among the choice
/// strings, so `""`, `LOGIN`, ` login` and `["login"]` all fail with
/// `"{input}" is not a valid choice.` where `{input}` is `str.format`'s rendering = `str(data)`.
///
/// A string with a lone surrogate: DRF's message would quote it, and `JSONRenderer` cannot
/// encode that (authentik answers 500); the contract answers DRF's surrogate text instead.
fn action_field(v: Option<DocValue>) -> FieldResult<String> {
    let v = match v {
        None => return fail(REQUIRED),
        Some(v) if v.value.is_null() => return fail(NOT_NULL),
        Some(v) => v,
    };
    if let Some(msg) = v.value.as_str().and_then(|s| surrogate_message(v, s)) {
        return Err(vec![msg]);
    }
    let s = py_str(v);
    if EVENT_ACTIONS.split_ascii_whitespace().any(|a| a == s) {
        Ok(s)
    } else {
        Err(vec![format!("\"{s}\" is not a valid choice.")])
    }
}

/// `app`: `TextField()` -> DRF `CharField(trim_whitespace=True, allow_blank=False)`.
/// `CharField.run_validation` tests `data == '' or str(data).strip() == ''` before anything
/// else; only a str can pass that test (`str()` of a number, bool or container is never
/// blank). Then null, then the type check (bool and non-(str, int, float) are "Not a valid
/// string."; numbers become their `str()`), then the validators, all messages collected:
/// `ProhibitNullCharactersValidator` and `ProhibitSurrogateCharactersValidator`. `1e400` is
/// Python's `inf`, whose `str()` is a valid app (`"inf"`).
fn app_field(v: Option<DocValue>) -> FieldResult<String> {
    let Some(doc) = v else {
        return fail(REQUIRED);
    };
    let value = match doc.value {
        Value::String(s) if py_strip(s).is_empty() => return fail(BLANK),
        Value::Null => return fail(NOT_NULL),
        Value::String(s) => py_strip(s).to_owned(),
        Value::Number(n) => pyjson::number_str(n),
        _ => return fail(NOT_A_STRING),
    };
    let mut msgs = Vec::new();
    if value.contains('\0') {
        msgs.push(NULL_CHARS.to_owned());
    }
    msgs.extend(surrogate_message(doc, &value));
    validated(value, msgs)
}

/// `client_ip`: `GenericIPAddressField(null=True)` -> DRF `IPAddressField(protocol='both',
/// required=False, allow_null=True)`. Validators: CharField's `ProhibitNullCharacters`,
/// `ProhibitSurrogateCharacters`, then IPAddressField's `validate_ipv46_address`. The model's
/// own `validate_ipv46_address` is dropped by `field_mapping.get_field_kwargs` (identity
/// filter), so the IP message appears at most once. Flow: blank test (CharField), null ->
/// `None`, non-str -> invalid, `':' in data` -> `clean_ipv6_address(data)` (unstripped; failure
/// is raised at once, no validators), else `str.strip()`; then validators, messages collected.
fn client_ip_field(v: Option<DocValue>) -> FieldResult<Option<Option<String>>> {
    let Some(doc) = v else { return Ok(None) };
    let s = match doc.value {
        Value::String(s) if py_strip(s).is_empty() => return fail(BLANK),
        Value::Null => return Ok(Some(None)),
        Value::String(s) => s,
        _ => return fail(INVALID_IP),
    };
    let value = if s.contains(':') {
        match crate::drf::ipaddr::clean_ipv6_address(s) {
            Some(clean) => clean,
            None => return fail(INVALID_IP),
        }
    } else {
        py_strip(s).to_owned()
    };
    let mut msgs = Vec::new();
    if value.contains('\0') {
        msgs.push(NULL_CHARS.to_owned());
    }
    msgs.extend(surrogate_message(doc, &value));
    if !crate::drf::ipaddr::validate_ipv46_address(&value) {
        msgs.push(INVALID_IP.to_owned());
    }
    validated(Some(Some(value)), msgs)
}

/// `expires`: `DateTimeField(default=default_event_duration)` -> DRF `DateTimeField(required=False)`.
/// Null is refused (the model column is NOT NULL). A non-str makes Django's `parse_datetime`
/// raise TypeError, which DRF turns into the same "wrong format" message as a bad string.
fn expires_field(v: Option<DocValue>) -> FieldResult<Option<chrono::DateTime<chrono::Utc>>> {
    use crate::drf::isodate::DateTimeError;
    let Some(doc) = v else { return Ok(None) };
    let parse = |s: &str| match doc.first_surrogate(s) {
        Some(_) => crate::drf::isodate::parse_datetime_with_surrogates(s),
        None => crate::drf::isodate::parse_datetime(s),
    };
    match doc.value {
        Value::Null => fail(NOT_NULL),
        Value::String(s) => match parse(s) {
            Ok(dt) => Ok(Some(dt)),
            Err(DateTimeError::Overflow) => fail(DATETIME_OVERFLOW),
            Err(DateTimeError::Invalid) => fail(DATETIME_FORMAT),
        },
        _ => fail(DATETIME_FORMAT),
    }
}

/// Python `uuid.UUID(hex=...)` acceptance (via Django UUIDField.to_python): strings only; remove every 'urn:' and 'uuid:', strip '{' '}' from both ends, remove '-', require len 32, then Python `int(hex, 16)` rules (surrounding whitespace, a sign, '0x' prefix, single underscores between digits are accepted by int()). Non-strings -> None.
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

/// Envelope field `request_id`: a string of 1..=200 characters without NUL; DRF CharField(max_length=200) messages on failure
/// ("Not a valid string.", "This field may not be blank.", "Ensure this field has no more than 200 characters.", "Null characters are not allowed.", ...). No trimming for the id.
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

/// Envelope field `expected_version`: DRF IntegerField(min_value=0) semantics but JSON integers only (document): "A valid integer is required.", "Ensure this value is greater than or equal to 0.", and for a value beyond i64 "Ensure this value is less than or equal to 9223372036854775807." (document your choice).
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

/// Python's `str()` of a parsed JSON value, as DRF puts it in messages ('"{input}" is not a valid choice.'): a str is itself; containers use repr of their items (dict `{'a': 1, 'b': [True, None]}`, str repr with Python's quote choice and escapes incl. non-printable characters as \xNN/\uNNNN/\UNNNNNNNN per str.isprintable, bool True/False, None, numbers as their text).
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

#[cfg(test)]
mod tests {
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
}
