//! Who may write: bearer tokens on commands, checked as authentik's API checks them.
//!
//! A command's `authorization` header is read into [`Credentials`] when it is decoded; the batch
//! decision checks it against the token's grant, read from `api_tokens` with every batch, so a
//! revoked token stops working with the next batch. Tokens (see `store::tokens`) are random,
//! shown once at creation, and stored only as SHA-256 hashes; they never appear in logs,
//! errors or metrics.

use sha2::{Digest, Sha256};

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

/// The prefix of every token `event-updater token create` issues; [`TOKEN_HEX_DIGITS`]
/// lower-case hex digits follow it.
pub const TOKEN_PREFIX: &str = "eut_";
/// The hex digits after [`TOKEN_PREFIX`] in an issued token.
pub const TOKEN_HEX_DIGITS: usize = 64;

/// Whether the bearer token of `header` (read as [`credentials`] reads it) has the shape of an
/// issued token. One that has not cannot be known to the store, so its command is refused
/// (`Token invalid/expired`) before its value is parsed: a made-up token buys no parsing.
pub fn bearer_has_issued_shape(header: &[u8]) -> bool {
    let token = match header.iter().position(|b| *b == b' ') {
        Some(i) => &header[i + 1..],
        None => return false,
    };
    token.len() == TOKEN_PREFIX.len() + TOKEN_HEX_DIGITS
        && token.starts_with(TOKEN_PREFIX.as_bytes())
        && token[TOKEN_PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
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
    fn only_the_shape_of_an_issued_token_passes_the_shape_check() {
        let issued = format!("{TOKEN_PREFIX}{}", "0123456789abcdef".repeat(4));
        assert!(bearer_has_issued_shape(
            format!("Bearer {issued}").as_bytes()
        ));
        assert!(bearer_has_issued_shape(
            format!("bearer {issued}").as_bytes()
        ));
        for bad in [
            "Bearer x".to_string(),
            "Bearer not-a-token".to_string(),
            format!("Bearer {}", issued.to_uppercase()),
            format!("Bearer {issued}0"),
            format!("Bearer {}", &issued[..issued.len() - 1]),
            format!("Bearer {}", issued.replace('a', "g")),
            format!("Bearer  {issued}"),
            issued.clone(),
        ] {
            assert!(!bearer_has_issued_shape(bad.as_bytes()), "{bad}");
        }
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
