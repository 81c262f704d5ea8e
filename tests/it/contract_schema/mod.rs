//! The machine-readable contract against the real processor: every reply it publishes for a
//! spread of commands (201, 200, a redelivery, 400s of every shape, 403, 404, 409, 422)
//! validates against `docs/schema/reply.schema.json`, the commands sent are judged by
//! `docs/schema/command.schema.json` as the processor judges them (where JSON Schema can tell),
//! the change feed's records (rendered, and as the processor publishes them) validate against
//! `docs/schema/change.schema.json` and `docs/schema/view.schema.json`, which refuse what the
//! contract rules out, and `docs/asyncapi.yaml` parses, names the default topics and the
//! headers the processor really sets, and references schema files that exist.
//!
//! One file per document checked; `documents` reads them for all.

/// The contract's documents, read (shared by the parts below).
mod documents;

mod asyncapi;
mod published;
mod rendered;
mod replies;
mod schemas;
