//! Decoding one Kafka record into a command: the pure checks that need no database.
//!
//! First the record's headers must be within their caps ([`MAX_HEADERS`], [`MAX_HEADER_BYTES`]):
//! they are counted and measured where the client library holds them, before anything is copied
//! ([`HeaderOverflow`]), and a record over them is answered 400 and dead-lettered unread (its
//! credentials are among the headers not read). Then the checks run in the REST endpoint's
//! order: credentials first (where authentication is required, a record without a bearer token,
//! or with one that has not the shape of an issued token, is never parsed: its 403 needs no
//! database, and a sender without a real token cannot make the processor parse anything; a
//! well-shaped token is checked by the store, and its command's decoded size is charged to the
//! in-flight budget at its real size, [`Command::retained_bytes`]), then the value must be JSON
//! (DRF's parse error), then the event UUID (404), then the record key (it must be the event's
//! UUID, or per-event order would depend on how a producer spells it: 400), then the envelope
//! fields and the body (400). What is left for the database (403 for a token it does not know,
//! 409, 422, 200/201) is an [`Action::Apply`]. Decoding never fails: every record becomes a
//! [`Command`] with an effective request id and something to answer.
//!
//! Parts: the record and its header caps (`record.rs`), what decoding makes (`decoded.rs`: the
//! command, its action, the refusals), the checks (`decode.rs`) and the content's fingerprint
//! (`fingerprint.rs`).

mod decode;
mod decoded;
mod fingerprint;
mod record;

pub use decode::decode;
pub use decoded::{heap_bytes, Action, Command, Refusal};
pub use record::{fallback_request_id, HeaderOverflow, Incoming, MAX_HEADERS, MAX_HEADER_BYTES};

#[cfg(test)]
mod tests;
