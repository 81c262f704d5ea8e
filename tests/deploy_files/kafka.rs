//! deploy/kafka: one committed broker configuration, read by its one launcher (kafka.sh), which
//! its image runs and compose starts with no configuration of its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::compose::{compose, compose_env, compose_service};
use crate::dockerfile::{args_of, dockerfile_at, env_of};
use crate::support::{port_of, read, str_at};
use crate::yaml::root;

/// deploy/kafka/kafka.sh, the launcher of every Kafka the project runs.
pub(crate) const KAFKA_SH: &str = "deploy/kafka/kafka.sh";

/// The variables kafka.sh reads (`${KAFKA_...}` outside its comments).
pub(crate) fn kafka_sh_variables() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in read(KAFKA_SH).lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for part in line.split("${").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.starts_with("KAFKA_") {
                out.insert(name);
            }
        }
    }
    out
}

/// The default kafka.sh gives `${NAME:-default}`.
pub(crate) fn kafka_sh_default(name: &str) -> String {
    let text = read(KAFKA_SH);
    let marker = format!("${{{name}:-");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{KAFKA_SH} gives {name} no default"))
        + marker.len();
    let end = start + text[start..].find('}').expect("a closed ${...}");
    text[start..end].to_string()
}

#[test]
fn kafka_has_one_committed_configuration_that_its_image_and_compose_run() {
    // kafka.sh reads the configuration beside it, and only adds this instance's addresses.
    let launcher = read(KAFKA_SH);
    for file in ["server.properties", "log4j2.properties"] {
        assert!(
            launcher.contains(&format!("\"$HERE/{file}\"")),
            "{KAFKA_SH} reads its own {file}"
        );
    }
    // The one broker configuration in the repository.
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() && !matches!(name, "target" | ".git") {
                walk(&p, out);
            } else if name == "server.properties" {
                out.push(p);
            }
        }
    }
    let mut configs = Vec::new();
    walk(&root(), &mut configs);
    assert_eq!(configs, [root().join("deploy/kafka/server.properties")]);

    // The image: that launcher with that configuration beside it, as its entrypoint.
    let image = dockerfile_at("deploy/kafka/Dockerfile");
    let args = |instr: &str| args_of(&image, instr);
    let entrypoint: Vec<String> =
        serde_json::from_str(args("ENTRYPOINT").pop().expect("ENTRYPOINT")).expect("exec form");
    assert_eq!(entrypoint.len(), 1, "{entrypoint:?}");
    let dir = entrypoint[0]
        .strip_suffix("/kafka.sh")
        .expect("the entrypoint is kafka.sh");
    let copied = args("COPY")
        .into_iter()
        .find(|a| a.contains(KAFKA_SH))
        .expect("kafka.sh is copied in");
    let parts: Vec<&str> = copied.split_whitespace().collect();
    assert_eq!(parts.last(), Some(&format!("{dir}/").as_str()));
    let sources: BTreeSet<&str> = parts[..parts.len() - 1].iter().copied().collect();
    assert_eq!(
        sources,
        BTreeSet::from([
            KAFKA_SH,
            "deploy/kafka/server.properties",
            "deploy/kafka/log4j2.properties"
        ])
    );
    // Its environment is kafka.sh's; the heap is bounded; the client port is exposed.
    let env = env_of(&image);
    let launcher_vars = kafka_sh_variables();
    for name in env.keys() {
        assert!(launcher_vars.contains(name), "ENV {name} is kafka.sh's");
    }
    assert_eq!(env["KAFKA_HEAP"], "512m");
    assert_eq!(env["KAFKA_CLASSPATH"], format!("{dir}/libs/*"));
    let exposed: Vec<u16> = args("EXPOSE")
        .iter()
        .map(|p| p.parse().expect("a port"))
        .collect();
    assert_eq!(exposed, [port_of(&kafka_sh_default("KAFKA_LISTEN"))]);
    // Not root: a fixed uid that useradd creates, owning the data directory.
    let user = args("USER").pop().expect("USER").clone();
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER {user}");
    let runs = args("RUN")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        runs.contains(&format!("--uid {uid}")),
        "useradd --uid {uid}"
    );
    assert!(runs.contains("openjdk-17-jre-headless"));
    assert!(runs.contains(&format!("-o {uid} ")) && runs.contains(&env["KAFKA_DATA"]));
    // The jars: from the Maven stage (the default, last target) or from target/kafka/jars
    // (`prebuilt`, which .dockerignore lets through), into the classpath's directory.
    let froms: Vec<&String> = args("FROM");
    assert_eq!(
        froms,
        [
            "${MAVEN_IMAGE} AS jars",
            "${RUNTIME_IMAGE} AS runtime-base",
            "runtime-base AS prebuilt",
            "runtime-base AS runtime"
        ]
    );
    assert!(runs.contains("scripts/kafka-jars.sh copy"));
    let jars: Vec<&String> = args("COPY")
        .into_iter()
        .filter(|a| a.ends_with(&format!(" {dir}/libs/")))
        .collect();
    assert_eq!(jars.len(), 2, "{jars:?}");
    assert!(jars[0].starts_with("target/kafka/jars/ "), "{jars:?}");
    assert!(jars[1].starts_with("--from=jars "), "{jars:?}");
    assert!(read(".dockerignore")
        .lines()
        .any(|l| l.trim() == "!target/kafka/jars"));
    // The health check asks Kafka: an ApiVersions request (api key 18) on the client port.
    let health = args("HEALTHCHECK").pop().expect("HEALTHCHECK");
    let exec = &health[health.find("CMD").expect("HEALTHCHECK ... CMD") + 3..];
    let argv: Vec<String> = serde_json::from_str(exec.trim()).expect("exec-form CMD");
    assert!(
        argv.iter()
            .any(|a| a.contains("/dev/tcp/127.0.0.1/") && a.contains("\\x00\\x12\\x00\\x00")),
        "{argv:?}"
    );

    // compose runs that image with no configuration of its own: no entrypoint or command of
    // its own, no file mounted over the committed ones, no broker properties in KAFKA_OVERRIDES.
    let c = compose();
    let kafka = compose_service(&c, "kafka");
    assert_eq!(
        str_at(kafka, "/build/dockerfile"),
        "deploy/kafka/Dockerfile"
    );
    assert_eq!(
        root()
            .join("deploy")
            .join(str_at(kafka, "/build/context"))
            .canonicalize()
            .unwrap(),
        root().canonicalize().unwrap()
    );
    for key in ["entrypoint", "command", "volumes"] {
        assert!(kafka.get(key).is_none(), "compose's kafka sets {key}");
    }
    assert!(!compose_env(kafka).contains_key("KAFKA_OVERRIDES"));
    // And scripts/services.sh runs the same launcher on this machine.
    assert!(read("scripts/services.sh").contains(KAFKA_SH));
}
