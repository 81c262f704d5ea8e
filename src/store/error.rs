//! The store's errors, sorted by what the caller should do about them ([`StoreError`]), and the
//! one classification of sqlx's errors and PostgreSQL's SQLSTATEs that sorts them.

/// Errors from the store, sorted by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is shutting down: back off and retry the same batch.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A concurrent writer got there first (unique violation, serialization failure,
    /// deadlock): retry the same batch after a short back-off; it will see the other writer's
    /// work. The consumer bounds these retries (`consumer::CONFLICT_ATTEMPTS`).
    #[error("a concurrent writer got there first")]
    Conflict(#[source] sqlx::Error),
    /// The database refused the data itself: isolate the command that carries it.
    #[error("the database refused the data")]
    Refused(#[source] sqlx::Error),
    /// The statement failed for a reason that may well repeat with the same commands (a
    /// statement or lock timeout, out of memory, a missing function, any SQLSTATE not sorted
    /// elsewhere): retry a bounded number of times, then split the batch; a command that still
    /// fails alone is not applied (the consumer answers it 500 and dead-letters it).
    #[error("the database failed the statement")]
    Failed(#[source] sqlx::Error),
    /// The migrations could not run, or a migration applied before changed since.
    #[error("the migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `DATABASE_URL` is not a PostgreSQL URL.
    #[error("the database URL is invalid")]
    Url(#[source] sqlx::Error),
    /// A stored value cannot be read back (what and why in the text).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify(e)
    }
}

impl StoreError {
    /// The error and its causes, for a log line: the error says what failed, its source
    /// (PostgreSQL's own message) says why.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// PostgreSQL's SQLSTATE of the error, where the database sent one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Unavailable(sqlx::Error::Database(db))
            | StoreError::Conflict(sqlx::Error::Database(db))
            | StoreError::Refused(sqlx::Error::Database(db))
            | StoreError::Failed(sqlx::Error::Database(db))
            | StoreError::Url(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// An error and its sources, each after a `: ` (a source whose text ends its error's is not
/// repeated), as a log line shows it; see [`StoreError::chain`].
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !said.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            said = text;
            source = s.source();
        }
        Ok(())
    }
}

/// SQLSTATEs (and classes, as two-character prefixes) of a database that is unreachable,
/// shutting down, full or read-only for now: the same batch may pass once it is back, so it is
/// retried for as long as it takes. Class 08: connection exception; 57P01..57P03: admin
/// shutdown, crash shutdown, cannot connect now; 57P04/57P05: database dropped, idle session
/// timeout; 25P03: idle-in-transaction timeout (our own session was cut while frozen); 25006:
/// read-only transaction (a primary that became a standby during a failover); 53000, 53100,
/// 53300: insufficient resources, disk full, too many connections; class 58: system (I/O) error.
/// And what refuses a new connection: class 28, invalid authorization (a rotated password);
/// 3D000, the database does not exist; 55000, the database does not allow connections
/// (`ALLOW_CONNECTIONS false`).
const TRANSIENT_SQLSTATES: [&str; 15] = [
    "08", "57P01", "57P02", "57P03", "57P04", "57P05", "25P03", "25006", "53000", "53100", "53300",
    "58", "28", "3D000", "55000",
];

/// Sorts an error by what to do about it:
/// - 23505 (a key another writer inserted), 40001 and 40P01 (serialization failure,
///   deadlock): [`StoreError::Conflict`];
/// - classes 22 (data exception), 23 (integrity) and 54 (program limit), and a value that cannot
///   be encoded or decoded: [`StoreError::Refused`], the data itself;
/// - [`TRANSIENT_SQLSTATES`] and errors without a SQLSTATE that concern the connection (I/O,
///   TLS, protocol, a pool that timed out or closed): [`StoreError::Unavailable`], retried
///   without bound;
/// - anything else, notably 57014 (statement timeout or cancel), 55P03 (lock timeout), 53200
///   (out of memory), 42883 (undefined function) and any SQLSTATE not named here:
///   [`StoreError::Failed`], retried a bounded number of times, so that a failure that repeats
///   with the same commands cannot stall a partition for good.
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            match sort_sqlstate(db.code().as_deref().unwrap_or_default()) {
                Sorted::Conflict => StoreError::Conflict(e),
                Sorted::Refused => StoreError::Refused(e),
                Sorted::Unavailable => StoreError::Unavailable(e),
                Sorted::Failed => StoreError::Failed(e),
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => {
            StoreError::Refused(e)
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_) => StoreError::Failed(e),
        _ => StoreError::Unavailable(e),
    }
}

/// What [`classify`] makes of a SQLSTATE: the [`StoreError`] variant it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sorted {
    Conflict,
    Refused,
    Unavailable,
    Failed,
}

/// Sorts a SQLSTATE as [`classify`] says (pure).
fn sort_sqlstate(code: &str) -> Sorted {
    match code {
        "23505" | "40001" | "40P01" => Sorted::Conflict,
        c if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => Sorted::Refused,
        c if !c.is_empty() && TRANSIENT_SQLSTATES.iter().any(|t| c.starts_with(t)) => {
            Sorted::Unavailable
        }
        _ => Sorted::Failed,
    }
}

#[cfg(test)]
mod sqlstate_tests {
    use super::*;

    #[test]
    fn a_chain_says_each_cause_once() {
        let io = std::io::Error::other("connection reset");
        let e = StoreError::Unavailable(sqlx::Error::Io(io));
        assert_eq!(
            e.chain().to_string(),
            "the database is unavailable: error communicating with database: connection reset"
        );
    }

    #[test]
    fn only_an_unreachable_database_is_unavailable_and_repeating_failures_are_failed() {
        for code in ["23505", "40001", "40P01"] {
            assert_eq!(sort_sqlstate(code), Sorted::Conflict, "{code}");
        }
        for code in [
            "22P05", "22021", "22003", "23502", "23514", "54000", "54001",
        ] {
            assert_eq!(sort_sqlstate(code), Sorted::Refused, "{code}");
        }
        for code in [
            "08000", "08006", "08P01", "57P01", "57P02", "57P03", "57P04", "57P05", "25P03",
            "25006", "53000", "53100", "53300", "58000", "58030", "28000", "28P01", "3D000",
            "55000",
        ] {
            assert_eq!(sort_sqlstate(code), Sorted::Unavailable, "{code}");
        }
        // Statement timeout, lock timeout, out of memory, undefined function, too complex, an
        // internal error, a SQLSTATE no one knows, none at all: bounded, never forever.
        for code in [
            "57014", "55P03", "53200", "42883", "42P01", "53400", "XX000", "XX001", "P0001",
            "ZZ999", "",
        ] {
            assert_eq!(sort_sqlstate(code), Sorted::Failed, "{code:?}");
        }
    }
}
