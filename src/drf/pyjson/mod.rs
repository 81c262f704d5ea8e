//! JSON parsing that answers exactly like authentik's REST API: DRF 3.16's `JSONParser` on
//! CPython 3.13 (`codecs.getreader('utf-8')` + `json.load(parse_constant=strict_constant)`,
//! i.e. the C scanner in `Modules/_json.c`). Values, number texts (`json.dumps` of the parsed
//! Python object) and every error message (`str(exc)`) match Python's. It also models what a
//! value looks like after a round trip through PostgreSQL `jsonb` and back into Python, since
//! that is what Django hands out after a save.
//!
//! Two things Python's `json` produces have no place in a `serde_json::Value`, and are carried
//! in it by convention: a float literal that overflows (`1e400`, Python's `inf`) is the number
//! [`INF`] (or `-INF`), a text no finite value is ever given; a lone surrogate escape
//! (`"\ud800"`, which a Python `str` holds) is the private-use character
//! `U+10F800 + (surrogate - U+D800)`, and [`Document::surrogates`] says the value holds such
//! characters. Validation turns both into DRF's answers; neither is ever stored.
//!
//! Parts: the parser and its error texts (`parse.rs`), the carrier of a parsed command value
//! (`document.rs`), and Python's number texts and the jsonb round trip (`numbers.rs`).

mod document;
mod numbers;
mod parse;

pub use document::{is_infinite, number_str, surrogate_of, DocValue, Document, INF};
pub use numbers::{jsonb_key_order, jsonb_normalize};
pub use parse::{parse, parse_document, parse_str, ParseError, MAX_DEPTH, STACK_BYTES};

#[cfg(test)]
mod tests;
