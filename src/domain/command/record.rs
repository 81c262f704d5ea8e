//! A record as it came off the command topic ([`Incoming`]), the caps on its headers
//! ([`HeaderOverflow`]), and the request id of a record whose command names none.

/// Most headers a record may carry. A record with more is refused unread (400, dead-lettered):
/// each header is a heap allocation or two however small it is, so a record of many empty
/// headers would cost far more memory than its bytes.
pub const MAX_HEADERS: usize = 64;
/// Most bytes a record's headers may hold in all (keys and values).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How a record's headers exceed their caps; the record's headers are then not copied at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOverflow {
    /// More than [`MAX_HEADERS`] headers (how many).
    Count(usize),
    /// More than [`MAX_HEADER_BYTES`] bytes of keys and values (how many).
    Bytes(usize),
}

impl HeaderOverflow {
    /// The overflow of headers numbering `count`, with `bytes` of keys and values; `None`:
    /// within the caps. Check the count first, before measuring: measuring walks every header.
    pub fn of_count(count: usize) -> Option<HeaderOverflow> {
        (count > MAX_HEADERS).then_some(HeaderOverflow::Count(count))
    }

    /// See [`HeaderOverflow::of_count`].
    pub fn of_bytes(bytes: usize) -> Option<HeaderOverflow> {
        (bytes > MAX_HEADER_BYTES).then_some(HeaderOverflow::Bytes(bytes))
    }

    /// The refusal's `detail` (and `dlq-reason`).
    pub fn text(self) -> String {
        match self {
            HeaderOverflow::Count(n) => format!(
                "The record has {n} headers, over the limit of {MAX_HEADERS}; it was not read."
            ),
            HeaderOverflow::Bytes(n) => format!(
                "The record's headers are {n} bytes, over the limit of {MAX_HEADER_BYTES} bytes; it was not read."
            ),
        }
    }
}

/// A record as it came off the command topic.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record's timestamp (producer's create time, or the broker's log-append time).
    pub timestamp_ms: Option<i64>,
    /// Set when the record's headers were over their caps: then `headers` is empty (none was
    /// copied) and the record is refused.
    pub headers_refused: Option<HeaderOverflow>,
}

impl Incoming {
    /// The first header named `name` (case-insensitively), with a value.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && v.is_some())
            .and_then(|(_, v)| v.as_deref())
    }
}

/// The request id of a command that names none (neither in its value nor in a `request-id`
/// header): `topic/partition/offset@timestamp`, where the timestamp is the record's (in
/// milliseconds since the epoch; `-1` where the record has none). A redelivery of the record
/// has the same four parts; a record at the same offset of a topic deleted and created again
/// has another timestamp, so it is a new request.
pub fn fallback_request_id(msg: &Incoming) -> String {
    format!(
        "{}/{}/{}@{}",
        msg.topic,
        msg.partition,
        msg.offset,
        msg.timestamp_ms.unwrap_or(-1)
    )
}
