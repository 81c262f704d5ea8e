//! The body of a command as authentik's `EventSerializer` validates it: every field's rule and
//! messages, in DRF's field order ([`validate_body`]).

use serde_json::Value;

use super::messages::*;
use super::pystr::{py_str, py_type_name};
use crate::drf::pychar::py_strip;
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

/// `None` = the command carried no `body` key: treat as an empty PUT body (`{}`), i.e.
/// required-field errors.
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

/// `user`, `context`, `brand`: `models.JSONField(default=...)` -> DRF `JSONField(required=False)`
/// (authentik 2025.6's `ModelSerializer` keeps DRF's mapping; the seed schema is `{}`). Any
/// value but null is accepted as is (DRF's `json.dumps` check refuses only `inf`); absent =
/// skipped. Beyond DRF: jsonb cannot hold `\u0000` or a lone surrogate in a string or key
/// (authentik answers 500 at `save()`), so those are refused here with a message for the
/// field, in this order.
///
/// `Ok(true)`: the value is set as sent (the caller takes it from the body).
pub(super) fn json_field(v: Option<DocValue>) -> FieldResult<bool> {
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

/// `expires`: `DateTimeField(default=default_event_duration)` -> DRF
/// `DateTimeField(required=False)`. Null is refused (the model column is NOT NULL). A non-str makes
/// Django's `parse_datetime` raise TypeError, which DRF turns into the same "wrong format" message
/// as a bad string.
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
