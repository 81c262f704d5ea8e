//! The base configuration every Kafka client starts from.

use rdkafka::config::ClientConfig;

use crate::config::Config;

/// The base configuration of every client: bootstrap servers plus the pass-through properties.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka_bootstrap_servers);
    for (k, v) in &cfg.kafka_properties {
        c.set(k, v);
    }
    c
}
