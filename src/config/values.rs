//! The values of options that are more than a string or a number, and their parsers: the
//! group protocol, the replication factor (`auto` or a number), `key=value` properties, and
//! durations (`7d`, `1h30m`, `500ms`, plain seconds), with the bounds of PostgreSQL's session
//! timeouts.

use std::time::Duration;

/// The group protocol the command consumer speaks to Kafka's group coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupProtocol {
    /// The classic protocol, with the cooperative-sticky assignor: a rebalance moves only the
    /// partitions that change owner (two rounds of JoinGroup/SyncGroup), and the members keep
    /// the rest meanwhile. The client sets `session.timeout.ms` and `heartbeat.interval.ms`.
    Classic,
    /// KIP-848's consumer protocol: the broker computes the assignment and hands it out with
    /// the heartbeats, one member at a time, incrementally. The session timeout and heartbeat
    /// interval are the broker's (`group.consumer.session.timeout.ms`,
    /// `group.consumer.heartbeat.interval.ms`).
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

impl std::fmt::Display for GroupProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of `TOPIC_REPLICATION_FACTOR=auto`: [`TARGET_REPLICATION_FACTOR`] replicas, or as
/// many as the cluster has brokers where it has fewer.
pub const AUTO_REPLICATION_FACTOR: i32 = -1;

/// The replicas `auto` aims for: one broker may be down for maintenance while another fails.
pub const TARGET_REPLICATION_FACTOR: i32 = 3;

/// The replication factor of the topics the processor creates, for a cluster of `brokers`
/// brokers: `configured` as given, or for [`AUTO_REPLICATION_FACTOR`] the smaller of
/// [`TARGET_REPLICATION_FACTOR`] and `brokers` (at least 1). The second value says whether it
/// is below what the cluster allows (fewer replicas than `auto` would choose), which is worth a
/// loud warning.
pub fn replication_factor_for(configured: i32, brokers: usize) -> (i32, bool) {
    let allowed = i32::try_from(brokers)
        .unwrap_or(i32::MAX)
        .clamp(1, TARGET_REPLICATION_FACTOR);
    if configured == AUTO_REPLICATION_FACTOR {
        (allowed, false)
    } else {
        (configured, configured < allowed)
    }
}

/// `auto` (or `-1`, the same) or a replication factor of at least 1.
pub(super) fn parse_replication_factor(s: &str) -> Result<i32, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("auto") {
        return Ok(AUTO_REPLICATION_FACTOR);
    }
    match s.parse::<i32>() {
        Ok(AUTO_REPLICATION_FACTOR) => Ok(AUTO_REPLICATION_FACTOR),
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}`: a replication factor is `auto` or a number of at least 1"
        )),
    }
}

/// The longest duration [`parse_duration`] accepts: 100 years (so that `now - d` is always a
/// representable timestamp).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A human duration: plain seconds (`604800`), or numbers each followed by a unit, `d`, `h`,
/// `m`, `s` or `ms` (`7d`, `12h`, `30m`, `90s`, `500ms`, `1h30m`). Zero and anything above
/// [`MAX_DURATION`] are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "d, h, m, s or ms";
    if s.is_empty() {
        return Err(format!(
            "an empty duration; give seconds or numbers with {UNITS}"
        ));
    }
    let total = if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s
            .parse()
            .map_err(|_| format!("`{s}` is too long a duration"))?;
        Duration::from_secs(secs)
    } else {
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "`{s}`: expected a number before each unit ({UNITS})"
                ));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("`{s}` is too long a duration"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let millis_per = match &rest[..unit_len] {
                "d" => 86_400_000,
                "h" => 3_600_000,
                "m" => 60_000,
                "s" => 1_000,
                "ms" => 1,
                "" => return Err(format!("`{s}`: a number without a unit ({UNITS})")),
                u => return Err(format!("`{s}`: unknown unit `{u}` ({UNITS})")),
            };
            rest = &rest[unit_len..];
            let part = n
                .checked_mul(millis_per)
                .map(Duration::from_millis)
                .ok_or_else(|| format!("`{s}` is too long a duration"))?;
            total = total
                .checked_add(part)
                .ok_or_else(|| format!("`{s}` is too long a duration"))?;
        }
        total
    };
    if total.is_zero() {
        return Err(format!("`{s}`: a duration must be more than zero"));
    }
    if total > MAX_DURATION {
        return Err(format!("`{s}` is longer than 100 years"));
    }
    Ok(total)
}

/// The longest PostgreSQL session timeout: its parameters are milliseconds in a 32-bit integer.
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// A PostgreSQL session timeout: a [`parse_duration`] of at least 1 ms and at most
/// [`MAX_SESSION_TIMEOUT`] (about 24.8 days). Zero, which would turn the bound off, is refused.
pub fn parse_session_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!("`{s}`: a database timeout must be at least 1ms"));
    }
    if d > MAX_SESSION_TIMEOUT {
        return Err(format!(
            "`{s}`: a database timeout can be at most {} ms (about 24 days)",
            MAX_SESSION_TIMEOUT.as_millis()
        ));
    }
    Ok(d)
}

pub(super) fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("`{s}` has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_human_units_and_plain_seconds() {
        let ok = |s: &str| parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("7d"), Duration::from_secs(7 * 86_400));
        assert_eq!(ok("12h"), Duration::from_secs(12 * 3_600));
        assert_eq!(ok("30m"), Duration::from_secs(30 * 60));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1h30m"), Duration::from_secs(5_400));
        assert_eq!(ok("1m500ms"), Duration::from_millis(60_500));
        assert_eq!(ok("604800"), Duration::from_secs(604_800));
        assert_eq!(ok("36500d"), MAX_DURATION);
        for bad in [
            "",
            "0",
            "0s",
            "0d0h",
            "d",
            "7x",
            "7 d",
            " 7d",
            "-1s",
            "1.5h",
            "7D",
            "h7",
            "36501d",
            "18446744073709551615d",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "`{bad}` is refused");
        }
    }
}
