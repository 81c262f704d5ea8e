//! `event-updater rebuild-projection`: the `events` view rebuilt from the log, verified, and
//! repaired on request (`--write`).
//!
//! This is the command-line half (arguments, progress, the report, the exit code); the
//! rebuild's logic is the library's [`event_updater::store::rebuild`].

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use event_updater::config::Config;
use event_updater::store;
use event_updater::store::rebuild::{self, Report};

/// `event-updater rebuild-projection`
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Events per batch (each batch is one transaction).
    #[arg(long, default_value_t = rebuild::DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Replace the view rows that differ from the fold of the log, insert missing ones and
    /// remove those without a log (default: only verify and report).
    #[arg(long)]
    pub write: bool,
    /// How many differing events to list.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
}

/// Rebuilds the view from the log, prints progress on stderr and the findings on stdout; fails
/// (exit code 1) when differences remain in the view.
pub async fn run(cfg: &Config, args: RebuildArgs) -> anyhow::Result<()> {
    let pool = store::connect(&cfg.database_url, 1).await?;
    let opts = rebuild::Options {
        batch_size: args.batch_size,
        write: args.write,
        sample: args.show,
    };
    eprintln!(
        "Rebuilding the events view from event_log, {} events per batch ({}).",
        opts.batch_size,
        if opts.write {
            "repairing"
        } else {
            "verifying only; --write repairs"
        }
    );
    // At most one progress line a second, and the last one once.
    let (mut printed_at, mut printed_batches) = (Instant::now(), 0);
    let report = rebuild::run(&pool, &opts, |r| {
        if printed_at.elapsed() >= Duration::from_secs(1) {
            eprintln!("{}", progress_line(r));
            (printed_at, printed_batches) = (Instant::now(), r.batches);
        }
    })
    .await?;
    pool.close().await;
    if printed_batches != report.batches || report.batches == 0 {
        eprintln!("{}", progress_line(&report));
    }
    print_report(&report, opts.write);
    match report.unrepaired() {
        0 => Ok(()),
        n if opts.write => {
            bail!("{n} events have a log that cannot be folded; they were not written")
        }
        n => bail!("{n} events differ from the fold of their log; --write repairs them"),
    }
}

fn progress_line(r: &Report) -> String {
    format!(
        "{} events, {} changes, {} differences ({} repaired) in {:.1} s: {:.0} events/s, {:.0} \
            changes/s",
        r.events,
        r.changes,
        r.differences(),
        r.repaired,
        r.elapsed.as_secs_f64(),
        r.events_per_second(),
        r.changes_per_second()
    )
}

fn print_report(r: &Report, write: bool) {
    println!(
        "events: {}, changes: {}, differing: {}, missing from the view: {}, without a log: {}, \
            unfoldable: {}{}",
        r.events,
        r.changes,
        r.differing,
        r.missing,
        r.extra,
        r.broken,
        if write {
            format!(", repaired: {}", r.repaired)
        } else {
            String::new()
        }
    );
    for f in &r.first {
        println!("  {} {:?}: {}", f.event_uuid, f.kind, f.detail);
    }
    if (r.first.len() as u64) < r.differences() {
        println!("  … and {} more", r.differences() - r.first.len() as u64);
    }
}
