//! W3C Trace Context: a command's `traceparent` is continued, not just copied, in its reply.
//!
//! The reply's `traceparent` keeps the command's trace id and flags and names a new parent id,
//! the id of the processor's span for that command (logged as `trace_id`/`span_id`), so a
//! tracing backend shows the processor between the producer and the reply's consumer. An invalid
//! `traceparent` is not propagated (W3C: the receiver starts afresh).

use uuid::Uuid;

/// The processor's span for one command, within the producer's trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continued {
    pub trace_id: String,
    pub span_id: String,
    /// The `traceparent` header for the reply.
    pub header: String,
}

/// Continues `traceparent` (W3C Trace Context level 1) with a new span id; `None` when the
/// header is not a valid `traceparent`.
pub fn continue_from(traceparent: &[u8]) -> Option<Continued> {
    let s = std::str::from_utf8(traceparent).ok()?.trim();
    let mut parts = s.splitn(5, '-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        // Version 00 has exactly four fields; later versions may append more.
        && (version != "00" || rest.is_none());
    if !valid {
        return None;
    }
    let span_id = new_span_id();
    Some(Continued {
        header: format!("00-{trace_id}-{span_id}-{flags}"),
        trace_id: trace_id.to_string(),
        span_id,
    })
}

fn new_span_id() -> String {
    loop {
        let id = Uuid::new_v4().as_u128() as u64;
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_flags_under_a_new_parent() {
        let c = continue_from(TP.as_bytes()).unwrap();
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id.len(), 16);
        assert_ne!(c.span_id, "00f067aa0ba902b7");
        assert_eq!(
            c.header,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", c.span_id)
        );
        assert_ne!(continue_from(TP.as_bytes()).unwrap().span_id, c.span_id);
    }

    #[test]
    fn later_versions_are_read_as_version_00() {
        let c = continue_from(format!("01{}-extra", &TP[2..]).as_bytes()).unwrap();
        assert!(c.header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    }

    #[test]
    fn invalid_traceparents_are_not_propagated() {
        for bad in [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(continue_from(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(continue_from(b"\xff\xfe"), None);
    }
}
