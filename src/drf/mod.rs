//! Django REST framework's side of the REST endpoint, reproduced exactly: Python's `json`
//! parser with its error texts ([`pyjson`]), DRF's field rules and messages ([`validate`]), and
//! the normal forms of Django's IP address ([`ipaddr`]) and ISO 8601 ([`isodate`]) fields.
//!
//! Pure functions of their input; may not import anything outside this folder but the standard
//! library and serde_json.

pub mod ipaddr;
pub mod isodate;
pub mod pychar;
pub mod pyjson;
pub mod validate;
