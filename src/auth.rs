//! Who may write: bearer tokens on commands, checked as authentik's API checks them.
//!
//! A command's `authorization` header is read into [`Credentials`] when it is decoded; the
//! store checks the token against `api_tokens` inside the batch's transaction, so a revoked
//! token stops working with the next batch. Tokens are random, shown once at creation, and
//! stored only as SHA-256 hashes; they never appear in logs, errors or metrics.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Whether commands must carry a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every command needs `authorization: Bearer <token>` with the change permission.
    Required,
    /// No checks (local development only).
    Disabled,
}

/// What a command's `authorization` header says.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No header.
    Missing,
    /// A scheme other than `Bearer`.
    Unsupported,
    /// `Bearer` with nothing after it.
    Malformed,
    /// `Bearer <token>`: the token's hash.
    Bearer([u8; 32]),
}

impl std::fmt::Debug for Credentials {
    // The hash is not the secret, but nothing about a token belongs in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Missing => "Missing",
            Credentials::Unsupported => "Unsupported",
            Credentials::Malformed => "Malformed",
            Credentials::Bearer(_) => "Bearer(***)",
        })
    }
}

/// Reads the header as authentik's `validate_auth` does: `<scheme> <credentials>`, the scheme
/// compared case-insensitively.
pub fn credentials(header: Option<&[u8]>) -> Credentials {
    let Some(raw) = header else {
        return Credentials::Missing;
    };
    let raw = String::from_utf8_lossy(raw);
    let (scheme, token) = raw.split_once(' ').unwrap_or((&raw, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Credentials::Unsupported;
    }
    if token.is_empty() {
        return Credentials::Malformed;
    }
    Credentials::Bearer(hash(token))
}

/// SHA-256 of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A stored token's standing, as the check needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrant {
    pub usable: bool,
    pub can_change_event: bool,
}

/// The 403 text for `credentials` given what the store knows of the token; `None`: allowed.
pub fn denial(credentials: &Credentials, grant: Option<TokenGrant>) -> Option<&'static str> {
    match (credentials, grant) {
        (Credentials::Missing, _) => Some("Authentication credentials were not provided."),
        (Credentials::Unsupported, _) => Some("Unsupported authentication type"),
        (Credentials::Malformed, _) => Some("Malformed header"),
        (Credentials::Bearer(_), Some(g)) if g.usable && g.can_change_event => None,
        (Credentials::Bearer(_), Some(g)) if g.usable => {
            Some("You do not have permission to perform this action.")
        }
        (Credentials::Bearer(_), _) => Some("Token invalid/expired"),
    }
}

/// Errors of the token tools.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a token named {0:?} exists already")]
    NameTaken(String),
    #[error("no token named {0:?}")]
    NotFound(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Creates a token and returns its secret (shown once; only its hash is kept).
pub async fn create_token(
    pool: &PgPool,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
    can_change_event: bool,
) -> Result<String, TokenError> {
    let secret = format!("eut_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_as_authentik_reads_them() {
        assert_eq!(credentials(None), Credentials::Missing);
        assert_eq!(credentials(Some(b"Basic abc")), Credentials::Unsupported);
        assert_eq!(credentials(Some(b"Token abc")), Credentials::Unsupported);
        assert_eq!(credentials(Some(b"Bearer")), Credentials::Malformed);
        assert_eq!(credentials(Some(b"Bearer ")), Credentials::Malformed);
        assert_eq!(
            credentials(Some(b"bearer abc")),
            Credentials::Bearer(hash("abc"))
        );
        assert_eq!(
            credentials(Some(b"BEARER abc")),
            Credentials::Bearer(hash("abc"))
        );
        assert_eq!(
            format!("{:?}", credentials(Some(b"Bearer abc"))),
            "Bearer(***)"
        );
    }

    #[test]
    fn denials_use_the_contracts_texts() {
        let ok = TokenGrant {
            usable: true,
            can_change_event: true,
        };
        let b = Credentials::Bearer(hash("t"));
        assert_eq!(denial(&b, Some(ok)), None);
        assert_eq!(
            denial(&Credentials::Missing, None),
            Some("Authentication credentials were not provided.")
        );
        assert_eq!(
            denial(&Credentials::Unsupported, None),
            Some("Unsupported authentication type")
        );
        assert_eq!(denial(&b, None), Some("Token invalid/expired"));
        assert_eq!(
            denial(
                &b,
                Some(TokenGrant {
                    usable: false,
                    can_change_event: true
                })
            ),
            Some("Token invalid/expired")
        );
        assert_eq!(
            denial(
                &b,
                Some(TokenGrant {
                    usable: true,
                    can_change_event: false
                })
            ),
            Some("You do not have permission to perform this action.")
        );
    }
}
