//! Validation of the `PUT /api/v3/events/events/{event_uuid}/` body exactly as authentik's
//! `EventSerializer` (DRF 3.16 `ModelSerializer` over `authentik.events.models.Event`) does it,
//! with DRF's error texts character for character, plus the envelope fields of a command
//! (`event_uuid`, `request_id`, `expected_version`) and `py_str`, Python's `str()` of a parsed JSON
//! value as DRF prints it in messages. Pure functions: no I/O, no panics, no recursion. Beyond DRF,
//! values PostgreSQL cannot store (`\u0000`, lone surrogates and non-finite numbers in jsonb) are
//! 400s. Lone surrogates and `inf` arrive as [`pyjson`](super::pyjson) carries them: every rule
//! reads a [`DocValue`](super::pyjson::DocValue), which says whether its document holds lone
//! surrogates; a plain `&Value` holds none.
//!
//! Parts: the body's fields (`body.rs`), the envelope's (`envelope.rs`), Python's `str()` of a
//! value (`pystr.rs`) and DRF's messages (`messages.rs`).

mod body;
mod envelope;
mod messages;
mod pystr;

pub use body::{not_a_dictionary, validate_body, validate_body_owned, ValidBody};
pub use envelope::{parse_event_uuid, validate_expected_version, validate_request_id};
pub use messages::{non_field_error, ErrorBody};
pub use pystr::{py_str, py_type_name};

#[cfg(test)]
mod tests;
