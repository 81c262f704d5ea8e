//! The fingerprint of a command's content, which tells a redelivery from a reused request id.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// SHA-256 of the value with object keys sorted: two serialisations of one command match.
pub(super) fn fingerprint(v: &Value) -> [u8; 32] {
    let mut out = Vec::with_capacity(256);
    write_sorted(v, &mut out);
    Sha256::digest(&out).into()
}

/// What [`fingerprint`] hashes: `v` as compact JSON with object keys sorted.
pub(super) fn write_sorted(v: &Value, out: &mut Vec<u8>) {
    // Serialising a string or a scalar into a Vec cannot fail.
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    write(v, out);
                }
                out.push(b'}');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(v, out);
                }
                out.push(b']');
            }
            scalar => {
                let _ = serde_json::to_writer(&mut *out, scalar);
            }
        }
    }
    write(v, out)
}
