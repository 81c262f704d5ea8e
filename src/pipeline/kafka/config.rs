//! The base configuration every Kafka client starts from, and its pass-through properties as
//! the start-up log shows them (secrets masked).

use rdkafka::config::ClientConfig;

use crate::config::{is_secret_property, mask_url_password, Config};

/// The base configuration of every client: bootstrap servers plus the pass-through properties.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka_bootstrap_servers);
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    c
}

/// The pass-through properties with secret values masked, for the start-up log: the whole
/// value of a secret property ([`is_secret_property`]), and the password of any other value
/// that is a URL with one (`sasl.oauthbearer.token.endpoint.url=https://id:secret@…`).
pub fn masked_properties(cfg: &Config) -> Vec<String> {
    cfg.kafka_properties
        .iter()
        .map(|(k, v)| {
            if is_secret_property(k) {
                format!("{k}=***")
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
    fn the_logged_properties_hide_secrets_and_passwords_in_urls() {
        let mut cfg = Config::defaults();
        cfg.kafka_properties = [
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
            masked_properties(&cfg),
            [
                "security.protocol=SASL_SSL",
                "sasl.oauthbearer.config=***",
                "sasl.password=***",
                "sasl.oauthbearer.token.endpoint.url=https://svc:***@idp.example/token",
            ]
        );
    }
}
