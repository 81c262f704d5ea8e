//! `event-updater token …`: the API tokens that commands present in `authorization: Bearer
//! <token>`: create one (its secret printed once, only its hash stored), list them, revoke one.

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::Subcommand;

use event_updater::config::Config;
use event_updater::drf::isodate;
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

/// Runs one token action against the database.
pub async fn run(cfg: &Config, action: TokenCommand) -> anyhow::Result<()> {
    let pool = store::connect(&cfg.database_url, 1).await?;
    match action {
        TokenCommand::Create {
            name,
            expires,
            no_change_permission,
        } => {
            let expires = match expires {
                None => None,
                Some(text) => match isodate::parse_datetime(&text) {
                    Ok(t) => Some(t),
                    Err(_) => bail!("--expires {text:?} is not an ISO 8601 date or datetime"),
                },
            };
            let secret = tokens::create_token(&pool, &name, expires, !no_change_permission).await?;
            eprintln!("Token {name:?} created. It is shown only now; store it safely:");
            println!("{secret}");
        }
        TokenCommand::List => {
            let show =
                |t: Option<DateTime<Utc>>| t.map_or("-".to_string(), isodate::to_representation);
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
