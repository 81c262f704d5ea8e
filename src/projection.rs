//! The Event view and how a change moves it: the pure half of the event-sourcing.
//!
//! [`EventState`] is one row of the `events` projection, held the way PostgreSQL gives it back
//! (JSON values in their `jsonb` form). [`apply`] turns a validated body into the next state, the
//! change appended to the log, and the REST endpoint's response body; [`fold`] rebuilds a state
//! from the log's changes. Invariant: for every event, `fold(changes) == view row`.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::isodate;
use crate::pyjson::jsonb_normalize;
use crate::validate::ValidBody;

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
        next.client_ip.clone_from(v);
    }
    if let Some(v) = body.expires {
        next.expires = v;
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
                        v => Some(string(v, "client_ip")?),
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
