//! `event-updater migrate`: the database created if missing and migrated, then exit.

use event_updater::config::Config;
use event_updater::store;

/// Creates and migrates the database, and says so.
pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    store::connect(&cfg.database_url, 1).await?;
    println!("database {} is migrated", cfg.database_url_masked());
    Ok(())
}
