//! Secrets kept out of logs: passwords in a database URL or connection string, and the values of
//! librdkafka properties that are secrets ([`is_secret_property`]), masked as `***`.

/// A database URL (or libpq's `key=value` connection string) with every password replaced by
/// `***`, for logs: the user information's (`postgres://user:secret@host/db`), and any query or
/// keyword parameter whose name contains `password` (`?password=`, `&sslpassword=`,
/// `password=` in a keyword string), whatever its case. A URL that is not quite one (an
/// unencoded `/` or `@` in the password) is masked up to its last `@` before the query, so it
/// may hide more than the password, never less.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return mask_password_parameters(url, ' ');
    };
    let (before_query, query) = match url[scheme_end..].find(['?', '#']) {
        Some(i) => url.split_at(scheme_end + i),
        None => (url, ""),
    };
    let authority = &before_query[scheme_end..];
    let mut out = String::with_capacity(url.len());
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            out.push_str(&before_query[..scheme_end + colon + 1]);
            out.push_str(MASK);
            out.push_str(&authority[at..]);
        }
        _ => out.push_str(before_query),
    }
    match query.strip_prefix('?') {
        Some(q) => {
            out.push('?');
            out.push_str(&mask_password_parameters(q, '&'));
        }
        None => out.push_str(query),
    }
    out
}

/// What stands in for a secret in logs.
const MASK: &str = "***";

/// `k=v` pairs separated by `sep`, with the value of each whose name contains `password` masked.
fn mask_password_parameters(params: &str, sep: char) -> String {
    params
        .split(sep)
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}={MASK}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

/// librdkafka properties whose values are secrets though their names do not say `password`,
/// `secret`, `passphrase` or `key`: a SASL/OAUTHBEARER configuration (it may hold a client
/// secret or a token) and Java's JAAS configuration, which some property files carry over.
pub const SECRET_PROPERTIES: &[&str] = &["sasl.oauthbearer.config", "sasl.jaas.config"];

/// Names of librdkafka properties whose values are secrets and never logged: those of
/// [`SECRET_PROPERTIES`], and any name containing `password` (`sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`), `secret`
/// (`sasl.oauthbearer.client.secret`), `passphrase`, `credential` or `key`
/// (`ssl.key.pem`, `sasl.oauthbearer.assertion.private.key.pem`, `sasl.kerberos.keytab`), or
/// ending in `.pem`.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.trim().to_ascii_lowercase();
    SECRET_PROPERTIES.contains(&k.as_str())
        || ["password", "secret", "passphrase", "credential", "key"]
            .iter()
            .any(|word| k.contains(word))
        || k.ends_with(".pem")
}

/// Pass-through librdkafka properties as `key=value`, secrets masked, for the start-up log: the
/// whole value of a secret property ([`is_secret_property`]), and the password of any other
/// value that is a URL with one (`sasl.oauthbearer.token.endpoint.url=https://id:secret@…`).
pub fn masked_properties(properties: &[(String, String)]) -> Vec<String> {
    properties
        .iter()
        .map(|(k, v)| {
            if is_secret_property(k) {
                format!("{k}={MASK}")
            } else if v.contains("://") {
                format!("{k}={}", mask_url_password(v))
            } else {
                format!("{k}={v}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_and_other_secret_properties_are_masked() {
        for k in [
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.pem",
            "ssl.keystore.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.kerberos.keytab",
            "sasl.jaas.config",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_property(k), "{k}");
        }
        for k in [
            "security.protocol",
            "sasl.mechanisms",
            "sasl.username",
            "acks",
        ] {
            assert!(!is_secret_property(k), "{k}");
        }
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://u:hunter2@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(
            mask_url_password("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert!(is_secret_property("sasl.password"));
        assert!(is_secret_property("ssl.key.pem"));
        assert!(!is_secret_property("bootstrap.servers"));
    }

    #[test]
    fn the_logged_properties_hide_secrets_and_passwords_in_urls() {
        let properties: Vec<(String, String)> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.oauthbearer.config", "principal=svc secret=hunter2"),
            ("sasl.password", "hunter3"),
            (
                "sasl.oauthbearer.token.endpoint.url",
                "https://svc:hunter4@idp.example/token",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            masked_properties(&properties),
            [
                "security.protocol=SASL_SSL",
                "sasl.oauthbearer.config=***",
                "sasl.password=***",
                "sasl.oauthbearer.token.endpoint.url=https://svc:***@idp.example/token",
            ]
        );
    }
}
