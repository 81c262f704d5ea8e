//! The Event view and how a change moves it: the pure half of the event-sourcing.
//!
//! [`EventState`] is one row of the `events` projection, held the way PostgreSQL gives it back
//! (JSON values in their `jsonb` form). [`apply`] turns a validated body into the next state, the
//! change appended to the log, and the REST endpoint's response body; [`fold`] rebuilds a state
//! from the log's changes. Invariant: for every event, `fold(changes) == view row`.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::drf::isodate;
use crate::drf::pyjson::jsonb_normalize;
use crate::drf::validate::ValidBody;

/// How long a new event lives when the body sets no `expires` (authentik's
/// `default_event_duration`).
pub const DEFAULT_EVENT_DAYS: i64 = 365;

/// One event as the projection holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventState {
    pub event_uuid: Uuid,
    pub version: i64,
    pub user: Value,
    pub action: String,
    pub app: String,
    pub context: Value,
    pub client_ip: Option<String>,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub brand: Value,
}

/// What one accepted command did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The event after the command.
    pub state: EventState,
    /// The fields the command set, as appended to the log (on a create: every field).
    pub change: Value,
    /// The REST response body: fields the body carried as they were sent, the others as stored.
    pub response: Value,
    /// True when the event did not exist before (status 201).
    pub created: bool,
}

/// Applies `body` to `current` (None: the event does not exist yet) at time `now`.
///
/// Mirrors DRF's `ModelSerializer.update`/`create`: the fields present in the body are set, the
/// others keep their stored values (update) or take the model defaults (create). The response is
/// what `serializer.data` would be, i.e. the in-memory instance: sent values as parsed, kept
/// values as read back from PostgreSQL.
pub fn apply(
    event_uuid: Uuid,
    current: Option<&EventState>,
    body: &ValidBody,
    now: DateTime<Utc>,
) -> Applied {
    let now = truncate_to_micros(now);
    let created = current.is_none();
    let base = match current {
        Some(s) => s.clone(),
        None => EventState {
            event_uuid,
            version: 0,
            user: Value::Object(Map::new()),
            action: String::new(),
            app: String::new(),
            context: Value::Object(Map::new()),
            client_ip: None,
            created: now,
            expires: now + Duration::days(DEFAULT_EVENT_DAYS),
            brand: Value::Object(Map::new()),
        },
    };
    let mut next = base;
    next.version += 1;
    next.action.clone_from(&body.action);
    next.app.clone_from(&body.app);
    if let Some(v) = &body.user {
        next.user = jsonb_normalize(v);
    }
    if let Some(v) = &body.context {
        next.context = jsonb_normalize(v);
    }
    if let Some(v) = &body.client_ip {
        // authentik's `inet` column hands a kept address back in PostgreSQL's spelling.
        next.client_ip = v.as_deref().map(crate::drf::ipaddr::pg_inet);
    }
    if let Some(v) = body.expires {
        next.expires = truncate_to_micros(v);
    }
    if let Some(v) = &body.brand {
        next.brand = jsonb_normalize(v);
    }

    let mut response = representation(&next);
    if let Value::Object(r) = &mut response {
        for (name, sent) in [
            ("user", &body.user),
            ("context", &body.context),
            ("brand", &body.brand),
        ] {
            if let Some(v) = sent {
                r.insert(name.into(), v.clone());
            }
        }
        if let Some(sent) = &body.client_ip {
            r.insert("client_ip".into(), opt_string(sent));
        }
    }

    let change = if created {
        let mut all = match representation(&next) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        all.shift_remove("pk");
        Value::Object(all)
    } else {
        let mut m = Map::new();
        if body.user.is_some() {
            m.insert("user".into(), next.user.clone());
        }
        m.insert("action".into(), Value::String(next.action.clone()));
        m.insert("app".into(), Value::String(next.app.clone()));
        if body.context.is_some() {
            m.insert("context".into(), next.context.clone());
        }
        if body.client_ip.is_some() {
            m.insert("client_ip".into(), opt_string(&next.client_ip));
        }
        if body.expires.is_some() {
            m.insert(
                "expires".into(),
                Value::String(isodate::to_representation(next.expires)),
            );
        }
        if body.brand.is_some() {
            m.insert("brand".into(), next.brand.clone());
        }
        Value::Object(m)
    };

    Applied {
        state: next,
        change,
        response,
        created,
    }
}

/// The Event as the REST endpoint renders it (`EventSerializer`, fields in its order).
pub fn representation(s: &EventState) -> Value {
    let mut m = Map::new();
    m.insert("pk".into(), Value::String(s.event_uuid.to_string()));
    m.insert("user".into(), s.user.clone());
    m.insert("action".into(), Value::String(s.action.clone()));
    m.insert("app".into(), Value::String(s.app.clone()));
    m.insert("context".into(), s.context.clone());
    m.insert("client_ip".into(), opt_string(&s.client_ip));
    m.insert(
        "created".into(),
        Value::String(isodate::to_representation(s.created)),
    );
    m.insert(
        "expires".into(),
        Value::String(isodate::to_representation(s.expires)),
    );
    m.insert("brand".into(), s.brand.clone());
    Value::Object(m)
}

/// Why a log could not be folded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FoldError {
    #[error("version {found} follows version {previous}: the log has a gap or a repeat")]
    VersionGap { previous: i64, found: i64 },
    #[error("the first change (version 1) does not carry field `{0}`")]
    MissingField(&'static str),
    #[error("field `{0}` has a value of the wrong type")]
    WrongType(&'static str),
}

/// Rebuilds an event from its log: `changes` are `(version, change)` in version order.
pub fn fold(event_uuid: Uuid, changes: &[(i64, Value)]) -> Result<Option<EventState>, FoldError> {
    let mut state: Option<EventState> = None;
    for (version, change) in changes {
        let previous = state.as_ref().map_or(0, |s| s.version);
        if *version != previous + 1 {
            return Err(FoldError::VersionGap {
                previous,
                found: *version,
            });
        }
        let c = change.as_object().ok_or(FoldError::WrongType("change"))?;
        let mut s = match state.take() {
            Some(s) => s,
            None => EventState {
                event_uuid,
                version: 0,
                user: field(c, "user")?.clone(),
                action: String::new(),
                app: String::new(),
                context: field(c, "context")?.clone(),
                client_ip: None,
                created: time(field(c, "created")?, "created")?,
                expires: time(field(c, "expires")?, "expires")?,
                brand: field(c, "brand")?.clone(),
            },
        };
        s.version = *version;
        for (k, v) in c {
            match k.as_str() {
                "user" => s.user = v.clone(),
                "action" => s.action = string(v, "action")?,
                "app" => s.app = string(v, "app")?,
                "context" => s.context = v.clone(),
                "client_ip" => {
                    s.client_ip = match v {
                        Value::Null => None,
                        // Logs written before addresses were kept in inet's spelling.
                        v => Some(crate::drf::ipaddr::pg_inet(&string(v, "client_ip")?)),
                    }
                }
                "created" => s.created = time(v, "created")?,
                "expires" => s.expires = time(v, "expires")?,
                "brand" => s.brand = v.clone(),
                _ => {}
            }
        }
        state = Some(s);
    }
    Ok(state)
}

fn field<'a>(c: &'a Map<String, Value>, name: &'static str) -> Result<&'a Value, FoldError> {
    c.get(name).ok_or(FoldError::MissingField(name))
}

fn string(v: &Value, name: &'static str) -> Result<String, FoldError> {
    v.as_str()
        .map(str::to_string)
        .ok_or(FoldError::WrongType(name))
}

fn time(v: &Value, name: &'static str) -> Result<DateTime<Utc>, FoldError> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or(FoldError::WrongType(name))
}

fn opt_string(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

/// PostgreSQL and Python keep microseconds; so do we.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.timestamp_subsec_nanos();
    t - Duration::nanoseconds(i64::from(nanos % 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn body(action: &str, app: &str) -> ValidBody {
        ValidBody {
            user: None,
            action: action.into(),
            app: app.into(),
            context: None,
            client_ip: None,
            expires: None,
            brand: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 20, 5, 42).unwrap() + Duration::nanoseconds(163_000_999)
    }

    #[test]
    fn a_create_takes_the_model_defaults() {
        let u = Uuid::new_v4();
        let a = apply(u, None, &body("login", "a"), now());
        assert!(a.created);
        assert_eq!(a.state.version, 1);
        assert_eq!(a.response["pk"], u.to_string());
        assert_eq!(a.response["user"], json!({}));
        assert_eq!(a.response["context"], json!({}));
        assert_eq!(a.response["brand"], json!({}));
        assert_eq!(a.response["client_ip"], Value::Null);
        assert_eq!(a.response["created"], "2026-11-27T20:05:42.163000Z");
        assert_eq!(a.response["expires"], "2027-11-27T20:05:42.163000Z");
        // The log's first change carries every field, so the fold needs nothing else.
        let keys: Vec<&str> = a
            .change
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "user",
                "action",
                "app",
                "context",
                "client_ip",
                "created",
                "expires",
                "brand"
            ]
        );
    }

    #[test]
    fn an_update_sets_only_what_the_body_carries() {
        let u = Uuid::new_v4();
        let mut first = body("login", "a");
        first.user = Some(json!({"pk": 1}));
        first.client_ip = Some(Some("10.0.0.1".into()));
        let a = apply(u, None, &first, now());
        let mut second = body("logout", "b");
        second.brand = Some(json!({"z": 1, "a": 1.0}));
        second.client_ip = Some(None);
        let b = apply(u, Some(&a.state), &second, now() + Duration::hours(1));
        assert!(!b.created);
        assert_eq!(b.state.version, 2);
        assert_eq!(b.state.user, json!({"pk": 1}));
        assert_eq!(b.state.client_ip, None);
        assert_eq!(b.state.created, a.state.created);
        assert_eq!(
            b.change,
            json!({"action": "logout", "app": "b", "client_ip": null, "brand": {"a": 1.0, "z": 1}})
        );
        // The response shows the sent value as sent; the state holds PostgreSQL's jsonb form.
        assert_eq!(
            serde_json::to_string(&b.response["brand"]).unwrap(),
            r#"{"z":1,"a":1.0}"#
        );
        assert_eq!(
            serde_json::to_string(&b.state.brand).unwrap(),
            r#"{"a":1.0,"z":1}"#
        );
    }

    /// authentik's `inet` column: the update that sends an address answers Django's spelling
    /// (the in-memory instance), a later update that keeps it answers what PostgreSQL prints.
    #[test]
    fn a_kept_client_ip_reads_back_as_postgres_prints_it() {
        let u = Uuid::new_v4();
        let mut first = body("login", "a");
        first.client_ip = Some(Some("::102:304".into())); // Django's clean of "::1.2.3.4"
        let a = apply(u, None, &first, now());
        assert_eq!(a.response["client_ip"], "::102:304");
        assert_eq!(a.state.client_ip.as_deref(), Some("::1.2.3.4"));
        let b = apply(u, Some(&a.state), &body("logout", "b"), now());
        assert_eq!(b.response["client_ip"], "::1.2.3.4");
        let changes = [(1, a.change), (2, b.change)];
        assert_eq!(fold(u, &changes).unwrap(), Some(b.state));
    }

    #[test]
    fn folding_the_changes_gives_the_last_state() {
        let u = Uuid::new_v4();
        let mut state = None;
        let mut changes = Vec::new();
        for i in 0..5i64 {
            let mut b = body("custom_", &format!("app{i}"));
            match i % 3 {
                0 => b.context = Some(json!({"i": i})),
                1 => b.expires = Some(now() + Duration::days(i)),
                _ => b.client_ip = Some(Some(format!("10.0.0.{i}"))),
            }
            let a = apply(u, state.as_ref(), &b, now() + Duration::seconds(i));
            changes.push((a.state.version, a.change.clone()));
            state = Some(a.state);
        }
        assert_eq!(fold(u, &changes).unwrap(), state);
        assert_eq!(fold(u, &[]).unwrap(), None);
    }

    #[test]
    fn a_gap_or_repeat_in_the_log_is_an_error() {
        let u = Uuid::new_v4();
        let a = apply(u, None, &body("login", "a"), now());
        let changes = vec![(1, a.change.clone()), (3, json!({"app": "x"}))];
        assert_eq!(
            fold(u, &changes),
            Err(FoldError::VersionGap {
                previous: 1,
                found: 3
            })
        );
        assert_eq!(
            fold(u, &[(1, a.change.clone()), (1, a.change)]),
            Err(FoldError::VersionGap {
                previous: 1,
                found: 1
            })
        );
    }
}
