//! The operator's commands, in one place: `show` (an event's view and history), `token`
//! (API tokens), and in [`tools`] `send`, `dlq replay` and `rebuild-projection`; [`demo`] runs
//! the processor with a demonstration, [`offsets`] the applied offsets, [`feed`] the change
//! feed's backfill. `main.rs` only dispatches to them.

pub mod demo;
pub mod feed;
pub mod offsets;
pub mod tools;

use anyhow::bail;
use clap::Subcommand;
use serde_json::{json, Value};

use event_updater::config::Config;
use event_updater::domain::projection;
use event_updater::drf::validate;
use event_updater::store::{self, tokens};

/// `event-updater token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        /// A unique name for the token.
        #[arg(long)]
        name: String,
        /// When the token stops working (ISO 8601, e.g. 2027-01-01 or 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// Create a token without the permission to change events (its commands get 403).
        #[arg(long)]
        no_change_permission: bool,
    },
    /// List the tokens (names and dates, never secrets).
    List,
    /// Revoke a token by name; its next command gets 403.
    Revoke {
        /// The token's name.
        name: String,
    },
}

pub async fn show(cfg: &Config, event_uuid: &str) -> anyhow::Result<()> {
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
            "recorded_at": event_updater::drf::isodate::to_representation(e.recorded_at),
            "source": format!("{}/{}/{}", e.source.topic, e.source.partition, e.source.offset),
            "change": e.change,
        })).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub async fn token(cfg: &Config, action: TokenCommand) -> anyhow::Result<()> {
    let pool = store::connect(&cfg.database_url, 1).await?;
    match action {
        TokenCommand::Create {
            name,
            expires,
            no_change_permission,
        } => {
            let expires = match expires {
                None => None,
                Some(text) => match event_updater::drf::isodate::parse_datetime(&text) {
                    Ok(t) => Some(t),
                    Err(_) => bail!("--expires {text:?} is not an ISO 8601 date or datetime"),
                },
            };
            let secret = tokens::create_token(&pool, &name, expires, !no_change_permission).await?;
            eprintln!("Token {name:?} created. It is shown only now; store it safely:");
            println!("{secret}");
        }
        TokenCommand::List => {
            let show = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or(
                    "-".to_string(),
                    event_updater::drf::isodate::to_representation,
                )
            };
            println!(
                "{:<24} {:<10} {:<28} {:<28} REVOKED",
                "NAME", "CHANGE", "CREATED", "EXPIRES"
            );
            for t in tokens::list_tokens(&pool).await? {
                println!(
                    "{:<24} {:<10} {:<28} {:<28} {}",
                    t.name,
                    if t.can_change_event { "yes" } else { "no" },
                    show(Some(t.created_at)),
                    show(t.expires_at),
                    show(t.revoked_at)
                );
            }
        }
        TokenCommand::Revoke { name } => {
            tokens::revoke_token(&pool, &name).await?;
            println!("token {name:?} revoked");
        }
    }
    Ok(())
}
