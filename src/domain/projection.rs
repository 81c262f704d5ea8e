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
    /// The REST response body as JSON bytes: fields the body carried as they were sent, the
    /// others as stored (see [`write_representation`]).
    pub response: Vec<u8>,
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
    // Only what the body leaves alone is copied from the current state; what it sends is
    // normalised (jsonb's form) once.
    let kept = |sent: &Option<Value>, current: Option<&Value>| match (sent, current) {
        (Some(v), _) => jsonb_normalize(v),
        (None, Some(v)) => v.clone(),
        (None, None) => Value::Object(Map::new()),
    };
    let next = EventState {
        event_uuid: current.map_or(event_uuid, |s| s.event_uuid),
        version: current.map_or(0, |s| s.version) + 1,
        user: kept(&body.user, current.map(|s| &s.user)),
        action: body.action.clone(),
        app: body.app.clone(),
        context: kept(&body.context, current.map(|s| &s.context)),
        // authentik's `inet` column hands a kept address back in PostgreSQL's spelling.
        client_ip: match &body.client_ip {
            Some(v) => v.as_deref().map(crate::drf::ipaddr::pg_inet),
            None => current.and_then(|s| s.client_ip.clone()),
        },
        created: current.map_or(now, |s| s.created),
        expires: match body.expires {
            Some(v) => truncate_to_micros(v),
            None => current.map_or(now + Duration::days(DEFAULT_EVENT_DAYS), |s| s.expires),
        },
        brand: kept(&body.brand, current.map(|s| &s.brand)),
    };

    let mut response = Vec::with_capacity(256);
    write_representation(&mut response, &next, Some(body));
    response.push(b'}');

    let mut m = Map::new();
    if created || body.user.is_some() {
        m.insert("user".into(), next.user.clone());
    }
    m.insert("action".into(), Value::String(next.action.clone()));
    m.insert("app".into(), Value::String(next.app.clone()));
    if created || body.context.is_some() {
        m.insert("context".into(), next.context.clone());
    }
    if created || body.client_ip.is_some() {
        m.insert("client_ip".into(), opt_string(&next.client_ip));
    }
    if created {
        m.insert(
            "created".into(),
            Value::String(isodate::to_representation(next.created)),
        );
    }
    if created || body.expires.is_some() {
        m.insert(
            "expires".into(),
            Value::String(isodate::to_representation(next.expires)),
        );
    }
    if created || body.brand.is_some() {
        m.insert("brand".into(), next.brand.clone());
    }

    Applied {
        state: next,
        change: Value::Object(m),
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

/// [`representation`] written to `out` as compact JSON (the bytes `serde_json` writes for it),
/// without its closing brace, so that a caller may add fields (the view record's `version`).
/// Where `sent` is given, the fields it carries are written as sent (`serializer.data` of an
/// update: the in-memory instance) instead of as stored. Nothing is copied to be written.
pub fn write_representation(out: &mut Vec<u8>, s: &EventState, sent: Option<&ValidBody>) {
    // Serialising a string or a `Value` into a Vec cannot fail.
    let value = |out: &mut Vec<u8>, v: &Value| {
        let _ = serde_json::to_writer(out, v);
    };
    let text = |out: &mut Vec<u8>, v: &str| {
        let _ = serde_json::to_writer(out, v);
    };
    let json = |out: &mut Vec<u8>, name: &[u8], stored: &Value, sent: Option<&Option<Value>>| {
        out.extend_from_slice(name);
        value(out, sent.and_then(Option::as_ref).unwrap_or(stored));
    };
    out.extend_from_slice(b"{\"pk\":");
    crate::domain::reply::write_uuid(out, s.event_uuid);
    json(out, b",\"user\":", &s.user, sent.map(|b| &b.user));
    out.extend_from_slice(b",\"action\":");
    text(out, &s.action);
    out.extend_from_slice(b",\"app\":");
    text(out, &s.app);
    json(out, b",\"context\":", &s.context, sent.map(|b| &b.context));
    out.extend_from_slice(b",\"client_ip\":");
    let ip = match sent.and_then(|b| b.client_ip.as_ref()) {
        Some(sent) => sent.as_deref(),
        None => s.client_ip.as_deref(),
    };
    match ip {
        Some(ip) => text(out, ip),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"created\":\"");
    isodate::write_representation(out, s.created);
    out.extend_from_slice(b"\",\"expires\":\"");
    isodate::write_representation(out, s.expires);
    out.push(b'"');
    json(out, b",\"brand\":", &s.brand, sent.map(|b| &b.brand));
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

    /// The response body, parsed.
    fn response(a: &Applied) -> Value {
        serde_json::from_slice(&a.response).unwrap()
    }

    mod written {
        //! [`apply`] and [`write_representation`] against the `Value`-based path they replaced
        //! (kept here as the oracle): the same state and change, and the same response and view
        //! bytes, over random bodies applied in turn.
        use super::*;
        use crate::drf::pyjson;
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        /// The former `apply`: the response built as a `Value` from [`representation`].
        fn apply_by_value(
            event_uuid: Uuid,
            current: Option<&EventState>,
            body: &ValidBody,
            now: DateTime<Utc>,
        ) -> (EventState, Value, Value) {
            let now = truncate_to_micros(now);
            let created = current.is_none();
            let mut next = match current {
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
            (next, change, response)
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                prop::sample::select(vec![
                    "0",
                    "1",
                    "-1",
                    "1.0",
                    "1e5",
                    "2.5E-7",
                    "-0.0",
                    "10.50",
                    "123456789012345678901234567890",
                ])
                .prop_map(|t| pyjson::parse_str(t).unwrap()),
                "[a-z\"\\\\\u{0}-\u{1f}\u{7f}é\u{2028}]{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec(("[a-z]{0,3}|é|\"", inner), 0..4)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        fn valid_body() -> impl Strategy<Value = ValidBody> {
            let ip = prop::sample::select(vec![
                "10.0.0.1",
                "::102:304",
                "2001:db8::1",
                "::ffff:1.2.3.4",
            ]);
            (
                proptest::option::of(json_value()),
                "[a-z_\"\\\\\u{1}é]{0,8}",
                "[a-z.]{0,8}",
                proptest::option::of(json_value()),
                proptest::option::of(proptest::option::of(ip.prop_map(String::from))),
                proptest::option::of((-60_000_000_000i64..250_000_000_000, 0u32..1_000_000_000)),
                proptest::option::of(json_value()),
            )
                .prop_map(|(user, action, app, context, client_ip, expires, brand)| {
                    ValidBody {
                        user,
                        action,
                        app,
                        context,
                        client_ip,
                        expires: expires.map(|(s, n)| Utc.timestamp_opt(s, n).unwrap()),
                        brand,
                    }
                })
        }

        proptest! {
            #![proptest_config(Config { cases: 1500, failure_persistence: None, ..Config::default() })]

            #[test]
            fn apply_writes_what_the_value_path_wrote(
                bodies in prop::collection::vec(valid_body(), 1..4),
                secs in -60_000_000_000i64..250_000_000_000,
                nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
            ) {
                let u = Uuid::from_u128(0x3e8f_6f2c_0000_4000_8000_0000_0000_0001);
                let now = Utc.timestamp_opt(secs, nanos).unwrap();
                let mut state: Option<EventState> = None;
                for b in &bodies {
                    let a = apply(u, state.as_ref(), b, now);
                    let (s, change, response) = apply_by_value(u, state.as_ref(), b, now);
                    prop_assert_eq!(&a.state, &s);
                    prop_assert_eq!(serde_json::to_vec(&a.change).unwrap(), serde_json::to_vec(&change).unwrap());
                    prop_assert_eq!(&a.response, &serde_json::to_vec(&response).unwrap());
                    prop_assert_eq!(a.created, state.is_none());
                    let mut view = Vec::new();
                    write_representation(&mut view, &a.state, None);
                    view.push(b'}');
                    prop_assert_eq!(view, serde_json::to_vec(&representation(&a.state)).unwrap());
                    state = Some(a.state);
                }
            }
        }
    }

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
        assert_eq!(response(&a)["pk"], u.to_string());
        assert_eq!(response(&a)["user"], json!({}));
        assert_eq!(response(&a)["context"], json!({}));
        assert_eq!(response(&a)["brand"], json!({}));
        assert_eq!(response(&a)["client_ip"], Value::Null);
        assert_eq!(response(&a)["created"], "2026-11-27T20:05:42.163000Z");
        assert_eq!(response(&a)["expires"], "2027-11-27T20:05:42.163000Z");
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
            serde_json::to_string(&response(&b)["brand"]).unwrap(),
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
        assert_eq!(response(&a)["client_ip"], "::102:304");
        assert_eq!(a.state.client_ip.as_deref(), Some("::1.2.3.4"));
        let b = apply(u, Some(&a.state), &body("logout", "b"), now());
        assert_eq!(response(&b)["client_ip"], "::1.2.3.4");
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
