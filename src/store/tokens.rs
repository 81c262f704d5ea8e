//! API tokens in PostgreSQL: creating, listing and revoking them (`event-updater token …`).
//!
//! Only a SHA-256 hash of each token is stored ([`crate::domain::auth::hash`]); the secret is
//! shown once, when it is created. Checking a command's token is the batch decision's
//! ([`crate::domain::decide`]), on grants read with the batch. A database error here is sorted
//! as any of the store's ([`StoreError`]).

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::auth::{hash, TOKEN_PREFIX};

use super::StoreError;

/// Errors of the token tools.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a token named {0:?} exists already")]
    NameTaken(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    /// The database failed, sorted as any store error is ([`StoreError`]).
    #[error("the token's statement failed")]
    Database(#[from] StoreError),
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        TokenError::Database(e.into())
    }
}

/// Creates a token and returns its secret (shown once; only its hash is kept).
pub async fn create_token(
    pool: &PgPool,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
    can_change_event: bool,
) -> Result<String, TokenError> {
    // TOKEN_PREFIX and 64 lower-case hex digits: the shape `auth::bearer_has_issued_shape` checks.
    let secret = format!(
        "{TOKEN_PREFIX}{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    );
    let inserted = sqlx::query(
        "INSERT INTO api_tokens (name, token_hash, can_change_event, created_at, expires_at)
         VALUES ($1, $2, $3, now(), $4) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(hash(&secret).as_slice())
    .bind(can_change_event)
    .bind(expires_at)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(TokenError::NameTaken(name.into()));
    }
    Ok(secret)
}

/// Revokes the token named `name`.
pub async fn revoke_token(pool: &PgPool, name: &str) -> Result<(), TokenError> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1",
    )
    .bind(name)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(TokenError::NotFound(name.into()));
    }
    Ok(())
}

/// A token as `token list` shows it (never the secret).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub name: String,
    pub can_change_event: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Every token, by name.
pub async fn list_tokens(pool: &PgPool) -> Result<Vec<TokenInfo>, TokenError> {
    let rows = sqlx::query(
        "SELECT name, can_change_event, created_at, expires_at, revoked_at FROM api_tokens ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(TokenInfo {
                name: r.try_get("name")?,
                can_change_event: r.try_get("can_change_event")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .collect()
}
