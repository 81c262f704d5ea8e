//! PostgreSQL's WAL position, read before and after a measured window: the bytes the cluster
//! wrote to its write-ahead log in between (`pg_current_wal_lsn`, as a byte offset through
//! `pg_wal_lsn_diff` from `0/0`). The WAL is the cluster's: the figure holds only where nothing
//! else writes to the cluster meanwhile.

use sqlx::PgConnection;

/// The cluster's current WAL position, in bytes since `0/0`.
pub async fn position(c: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8")
            .fetch_one(c)
            .await?,
    )
}

/// Bytes per command written between the positions `before` and `after`, over `commands`.
pub fn per_command(before: i64, after: i64, commands: u64) -> Option<f64> {
    (commands > 0 && after >= before).then(|| (after - before) as f64 / commands as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_command_are_the_positions_difference_over_the_commands() {
        assert_eq!(per_command(1_000, 3_000, 10), Some(200.0));
        assert_eq!(per_command(1_000, 1_000, 10), Some(0.0));
        assert_eq!(per_command(1_000, 3_000, 0), None);
        assert_eq!(per_command(3_000, 1_000, 10), None);
    }
}
