//! The settings every deploy file gives the processor (compose, Kubernetes, the Dockerfile)
//! are variables the binary reads, with values it accepts, and the grace periods outlast its
//! shutdown timeout.

use serde_json::Value;

use event_updater::config::parse_duration;

use crate::binary::{config_from_env, known_env};
use crate::compose::{compose, compose_env, compose_service};
use crate::dockerfile::dockerfile_env;
use crate::k8s::{k8s_env, k8s_env_names, k8s_files};

#[test]
fn every_environment_variable_set_for_event_updater_is_one_the_binary_reads() {
    let known = known_env();
    let unknown = |names: &mut dyn Iterator<Item = String>| -> Vec<String> {
        names.filter(|n| !known.contains(n)).collect()
    };

    let c = compose();
    let env = compose_env(compose_service(&c, "event-updater"));
    assert!(!env.is_empty());
    assert_eq!(
        unknown(&mut env.into_keys()),
        Vec::<String>::new(),
        "compose.yaml"
    );

    let (deployment, configmap, _, _) = k8s_files();
    let names = k8s_env_names(&deployment, &configmap);
    assert!(names.contains("DATABASE_URL") && names.contains("KAFKA_BOOTSTRAP_SERVERS"));
    assert_eq!(unknown(&mut names.into_iter()), Vec::<String>::new(), "k8s");

    assert_eq!(
        unknown(&mut dockerfile_env().into_keys()),
        Vec::<String>::new(),
        "Dockerfile ENV"
    );
}

#[test]
fn every_setting_is_a_value_the_binary_accepts() {
    let c = compose();
    let env = compose_env(compose_service(&c, "event-updater"));
    let cfg = config_from_env(&env, "compose.yaml");
    assert_eq!(
        cfg.kafka_bootstrap_servers, "kafka:9092",
        "the broker by its compose service name"
    );

    let (deployment, configmap, _, _) = k8s_files();
    config_from_env(&k8s_env(&deployment, &configmap), "k8s ConfigMap");
    config_from_env(&dockerfile_env(), "Dockerfile ENV");
}

#[test]
fn the_grace_periods_outlast_the_shutdown_timeout() {
    let c = compose();
    let svc = compose_service(&c, "event-updater");
    let cfg = config_from_env(&compose_env(svc), "compose.yaml");
    let grace = parse_duration(
        svc["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    )
    .expect("stop_grace_period is a duration");
    assert!(
        grace > cfg.shutdown_timeout,
        "compose stop_grace_period {grace:?} <= SHUTDOWN_TIMEOUT_SECS {}",
        cfg.shutdown_timeout.as_secs()
    );

    let (deployment, configmap, _, _) = k8s_files();
    let cfg = config_from_env(&k8s_env(&deployment, &configmap), "k8s");
    let grace = deployment
        .pointer("/spec/template/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > cfg.shutdown_timeout.as_secs(),
        "terminationGracePeriodSeconds {grace} <= SHUTDOWN_TIMEOUT_SECS {}",
        cfg.shutdown_timeout.as_secs()
    );
}
