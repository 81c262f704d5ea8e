//! `event-updater show <event_uuid>`: an event's current view and its history of versions, as
//! JSON on stdout.

use anyhow::bail;
use clap::Args;
use serde_json::{json, Value};

use event_updater::config::Config;
use event_updater::domain::projection;
use event_updater::drf::{isodate, validate};
use event_updater::store;

/// `event-updater show`
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The event UUID (any form Python's uuid.UUID accepts).
    pub event_uuid: String,
}

/// Prints the event's view and history; fails when the event does not exist.
pub async fn run(cfg: &Config, args: ShowArgs) -> anyhow::Result<()> {
    let event_uuid = args.event_uuid.as_str();
    let Some(uuid) = validate::parse_event_uuid(&Value::String(event_uuid.to_string())) else {
        bail!("{event_uuid:?} is not a UUID");
    };
    let pool = store::connect(&cfg.database_url, 1).await?;
    let view = store::load_view(&pool, uuid).await?;
    let history = store::load_history(&pool, uuid).await?;
    if view.is_none() && history.is_empty() {
        bail!("event {uuid} does not exist");
    }
    let out = json!({
        "view": view.as_ref().map(|s| json!({"version": s.version, "event": projection::representation(s)})),
        "history": history.iter().map(|e| json!({
            "version": e.version,
            "request_id": e.request_id,
            "recorded_at": isodate::to_representation(e.recorded_at),
            "source": format!("{}/{}/{}", e.source.topic, e.source.partition, e.source.offset),
            "change": e.change,
        })).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
