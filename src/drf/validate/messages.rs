//! DRF's messages, said once, and how a field's messages are gathered into DRF's error body.

use serde_json::{Map, Value};

use crate::drf::pyjson::DocValue;

/// DRF's error body (an object: field -> list of messages, or non_field_errors).
pub type ErrorBody = Map<String, Value>;

pub(super) const REQUIRED: &str = "This field is required.";
pub(super) const NOT_NULL: &str = "This field may not be null.";
pub(super) const BLANK: &str = "This field may not be blank.";
pub(super) const NOT_A_STRING: &str = "Not a valid string.";
pub(super) const NULL_CHARS: &str = "Null characters are not allowed.";
pub(super) const INVALID_IP: &str = "Enter a valid IPv4 or IPv6 address.";
pub(super) const DATETIME_FORMAT: &str =
    "Datetime has wrong format. Use one of these formats instead: \
                               YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].";
pub(super) const DATETIME_OVERFLOW: &str = "Datetime value out of range.";
pub(super) const INVALID_INT: &str = "A valid integer is required.";
pub(super) const VERSION_TOO_BIG: &str =
    "Ensure this value is less than or equal to 9223372036854775807.";
/// DRF's `JSONField` 'invalid': its `json.dumps(data)` check (`rest_framework.utils.json`,
/// `allow_nan=False`) fails for `inf`.
pub(super) const INVALID_JSON: &str = "Value must be valid JSON.";

/// `authentik.events.models.EventAction` values, in declaration order (the seed's enum).
pub(super) const EVENT_ACTIONS: &str = "login login_failed logout user_write suspicious_request \
    password_set secret_view secret_rotate invitation_used authorize_application source_linked \
    impersonation_started impersonation_ended flow_execution policy_execution policy_exception \
    property_mapping_exception system_task_execution system_task_exception system_exception \
    configuration_error model_created model_updated model_deleted email_sent update_available \
    custom_";

/// A field's outcome: `Err` holds DRF's messages for that field, in DRF's order.
pub(super) type FieldResult<T> = Result<T, Vec<String>>;

pub(super) fn fail<T>(msg: &str) -> FieldResult<T> {
    Err(vec![msg.to_owned()])
}

/// DRF's `run_validators`: every validator runs, the value passes only if none complained.
pub(super) fn validated<T>(value: T, msgs: Vec<String>) -> FieldResult<T> {
    if msgs.is_empty() {
        Ok(value)
    } else {
        Err(msgs)
    }
}

/// DRF's error body for a message about the data as a whole.
pub fn non_field_error(msg: String) -> ErrorBody {
    ErrorBody::from_iter([("non_field_errors".to_owned(), Value::from(vec![msg]))])
}

pub(super) fn collect<T>(errors: &mut ErrorBody, name: &str, result: FieldResult<T>) -> Option<T> {
    result
        .map_err(|msgs| {
            let list = msgs.into_iter().map(Value::String).collect();
            errors.insert(name.to_owned(), Value::Array(list));
        })
        .ok()
}

/// DRF's `ProhibitSurrogateCharactersValidator` text for the first lone surrogate in `s`, a
/// string of `doc`.
pub(super) fn surrogate_message(doc: DocValue, s: &str) -> Option<String> {
    doc.first_surrogate(s)
        .map(|cp| format!("Surrogate characters are not allowed: U+{cp:X}."))
}
