//! The benchmark's commands: command `i` is a pure function of `i` (a seeded splitmix64), so that
//! every phase sees the same commands; their request ids, the warm-up commands outside the data,
//! and the headers every command carries.

use rdkafka::message::{Header, OwnedHeaders};
use uuid::Uuid;

const SEED: u64 = 0x0e7e_47a7_e5ee_d004;

pub const REQUEST_PREFIX: &str = "bench-";

pub const WARMUP_PREFIX: &str = "warmup-";

const VALID_ACTIONS: [&str; 3] = ["login", "logout", "model_updated"];

/// splitmix64 of `z`: the `z`-th draw of a seeded counter-based generator.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The benchmark's commands: command `i` is a pure function of `i`.
#[derive(Debug, Clone)]
pub struct Workload {
    pub events: u64,
    pub invalid_percent: u64,
}

/// One command record: key (the event UUID) and value.
#[derive(Debug)]
pub struct BenchCommand {
    pub key: String,
    pub value: String,
}

impl Workload {
    pub fn event_uuid(&self, e: u64) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&mix(SEED ^ e.wrapping_mul(2)).to_be_bytes());
        bytes[8..].copy_from_slice(&mix(SEED ^ e.wrapping_mul(2).wrapping_add(1)).to_be_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn is_valid(&self, i: u64) -> bool {
        mix(SEED.rotate_left(17) ^ i) % 100 >= self.invalid_percent
    }

    fn event_of(&self, i: u64) -> Uuid {
        self.event_uuid(mix(SEED.rotate_left(41) ^ i) % self.events)
    }

    pub fn command(&self, i: u64) -> BenchCommand {
        let action = if self.is_valid(i) {
            VALID_ACTIONS[(i % 3) as usize]
        } else {
            "LOGIN"
        };
        envelope(&format!("{REQUEST_PREFIX}{i}"), self.event_of(i), action, i)
    }

    /// A valid command outside the benchmark's data, to warm the processor up.
    pub fn warmup(&self, j: u64) -> BenchCommand {
        envelope(
            &format!("{WARMUP_PREFIX}{j}"),
            self.event_uuid(j % self.events),
            "login",
            j,
        )
    }
}

pub fn envelope(request_id: &str, event: Uuid, action: &str, n: u64) -> BenchCommand {
    let value = format!(
        r#"{{"request_id": "{request_id}", "event_uuid": "{event}", "body": {{"action": "{action}", "app": "authentik.core", "user": {{"pk": 1}}, "context": {{"n": {n}}}, "client_ip": "10.0.0.1"}}}}"#
    );
    BenchCommand {
        key: event.to_string(),
        value,
    }
}

/// The index of a benchmark request id (`bench-<i>`).
pub fn request_index(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id.strip_prefix(REQUEST_PREFIX.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

/// Headers of every command: the bearer token where the processor requires one.
pub fn command_headers(authorization: Option<&str>) -> OwnedHeaders {
    match authorization {
        Some(a) => OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "authorization",
            value: Some(a),
        }),
        None => OwnedHeaders::new(),
    }
}

/// `headers` plus `request-id: id` (the processor reads the id from the value; the echo
/// copies headers, so the reply reader finds it either way).
pub fn with_request_id(headers: &OwnedHeaders, id: &str) -> OwnedHeaders {
    headers.clone().insert(Header {
        key: "request-id",
        value: Some(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_updater::domain::auth::AuthMode;
    use event_updater::domain::command::Action;
    use event_updater::domain::command::{self, Incoming};

    #[test]
    fn the_data_is_deterministic_and_about_as_invalid_as_asked() {
        let w = Workload {
            events: 100,
            invalid_percent: 10,
        };
        assert_eq!(w.command(7).value, w.command(7).value);
        assert_eq!(w.command(7).key, w.event_of(7).to_string());
        let invalid = (0..10_000).filter(|i| !w.is_valid(*i)).count();
        assert!((900..1100).contains(&invalid), "{invalid}");
        let events: std::collections::HashSet<Uuid> = (0..10_000).map(|i| w.event_of(i)).collect();
        assert_eq!(events.len(), 100);
        assert_eq!(request_index(b"bench-42"), Some(42));
        assert_eq!(request_index(b"warmup-1"), None);
    }

    #[test]
    fn commands_decode_as_valid_or_invalid_as_generated() {
        let w = Workload {
            events: 10,
            invalid_percent: 50,
        };
        for i in 0..200 {
            let c = w.command(i);
            let m = Incoming {
                key: Some(c.key.into_bytes()),
                payload: Some(c.value.into_bytes()),
                ..Incoming::default()
            };
            let cmd = command::decode(&m, 1 << 20, AuthMode::Disabled);
            assert_eq!(cmd.request_id, format!("bench-{i}"));
            match cmd.action {
                Action::Apply { .. } => assert!(w.is_valid(i)),
                Action::Reject { status, .. } => assert!(!w.is_valid(i) && status == 400),
            }
        }
    }
}
