//! `event-updater offsets …`: the highest offset applied per command partition, which keeps a
//! record read again after its stored reply was pruned from being applied again. `list` shows
//! them; `reset --topic T` forgets a topic's after it was deleted and created again (its
//! offsets restart at 0, and records at or below the stored offsets would be answered 409
//! without being applied).

use clap::Subcommand;

use event_updater::config::Config;
use event_updater::drf::isodate;
use event_updater::store::{self, offsets};

/// `event-updater offsets …`
#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// List the stored applied offsets by topic and partition.
    List,
    /// Forget the applied offsets of a command topic (after it was deleted and created again).
    /// Stop the processors that consume it first.
    Reset {
        /// The command topic.
        #[arg(long)]
        topic: String,
        /// Only this partition (default: all of the topic's).
        #[arg(long)]
        partition: Option<i32>,
    },
}

pub async fn run(cfg: &Config, action: OffsetsCommand) -> anyhow::Result<()> {
    let pool = store::connect(&cfg.database_url, 1).await?;
    match action {
        OffsetsCommand::List => {
            println!(
                "{:<40} {:>9} {:>14} UPDATED",
                "TOPIC", "PARTITION", "APPLIED"
            );
            for a in offsets::list(&pool).await? {
                println!(
                    "{:<40} {:>9} {:>14} {}",
                    a.topic,
                    a.partition,
                    a.applied_offset,
                    isodate::to_representation(a.updated_at)
                );
            }
        }
        OffsetsCommand::Reset { topic, partition } => {
            let removed = offsets::reset(&pool, &topic, partition).await?;
            for a in &removed {
                println!(
                    "forgot {}/{} (applied up to offset {})",
                    a.topic, a.partition, a.applied_offset
                );
            }
            println!("{} partition(s) of {topic:?} reset", removed.len());
        }
    }
    Ok(())
}
