//! deploy/Dockerfile, parsed into its instructions: it builds the binary (or takes a prebuilt
//! one), runs it unprivileged as its entrypoint, and checks its health on /readyz. The parser
//! is shared with the Kafka image's checks.

use std::collections::BTreeMap;

use crate::binary::binary_subcommands;
use crate::support::read;
use crate::yaml::root;

/// deploy/Dockerfile as (instruction, arguments), continuation lines joined, comments dropped.
pub(crate) fn dockerfile() -> Vec<(String, String)> {
    dockerfile_at("deploy/Dockerfile")
}

/// A Dockerfile as (instruction, arguments), continuation lines joined, comments dropped.
pub(crate) fn dockerfile_at(rel: &str) -> Vec<(String, String)> {
    let text = read(rel);
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        let full = std::mem::take(&mut pending);
        if full.trim().is_empty() {
            continue;
        }
        let (instr, args) = full
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((&full, ""));
        out.push((instr.to_ascii_uppercase(), args.trim().to_string()));
    }
    out
}

/// The arguments of every `instr` instruction of a parsed Dockerfile ([`dockerfile_at`]).
pub(crate) fn args_of<'a>(instructions: &'a [(String, String)], instr: &str) -> Vec<&'a String> {
    instructions
        .iter()
        .filter(|(i, _)| i == instr)
        .map(|(_, a)| a)
        .collect()
}

pub(crate) fn dockerfile_args(instr: &str) -> Vec<String> {
    args_of(&dockerfile(), instr).into_iter().cloned().collect()
}

/// `ENV` variables of deploy/Dockerfile.
pub(crate) fn dockerfile_env() -> BTreeMap<String, String> {
    env_of(&dockerfile())
}

/// `ENV` variables of a parsed Dockerfile (the `KEY=VALUE ...` form).
pub(crate) fn env_of(instructions: &[(String, String)]) -> BTreeMap<String, String> {
    args_of(instructions, "ENV")
        .iter()
        .flat_map(|a| {
            a.split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
                    (k.to_string(), v.to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_the_binary_and_runs_it_unprivileged() {
    let instructions = dockerfile();
    // The base images are build arguments (declared before the first FROM), the public images
    // by default.
    let first_from = instructions
        .iter()
        .position(|(i, _)| i == "FROM")
        .expect("FROM");
    let args: BTreeMap<&str, &str> = instructions[..first_from]
        .iter()
        .filter(|(i, _)| i == "ARG")
        .map(|(_, a)| a.split_once('=').expect("ARG NAME=default"))
        .collect();
    assert_eq!(
        args,
        BTreeMap::from([
            ("RUNTIME_IMAGE", "debian:bookworm-slim"),
            ("RUST_IMAGE", "rust:1-bookworm")
        ])
    );
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    // builder; the runtime without the binary; the binary compiled outside (`prebuilt`) or in
    // the builder (`runtime`, the last stage, so the default target).
    assert_eq!(
        froms,
        [
            "${RUST_IMAGE} AS builder",
            "${RUNTIME_IMAGE} AS runtime-base",
            "runtime-base AS prebuilt",
            "runtime-base AS runtime"
        ]
    );
    let stage_of = |idx: usize| {
        instructions[..idx]
            .iter()
            .filter(|(i, _)| i == "FROM")
            .count()
    };
    let runs: Vec<(usize, &String)> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "RUN")
        .map(|(n, (_, a))| (stage_of(n), a))
        .collect();
    let in_stage =
        |stage: usize, needle: &str| runs.iter().any(|(s, a)| *s == stage && a.contains(needle));
    assert!(in_stage(1, "cargo build --release --locked"));
    for pkg in ["libssl-dev", "pkg-config"] {
        assert!(in_stage(1, pkg), "builder installs {pkg}");
    }
    for pkg in ["ca-certificates", "libssl3"] {
        assert!(in_stage(2, pkg), "runtime installs {pkg}");
    }
    assert!(!in_stage(2, "cargo"), "no toolchain in the runtime image");
    // The two final stages add nothing but the binary, at the same place.
    for stage in [3, 4] {
        let own: Vec<&(String, String)> = instructions
            .iter()
            .enumerate()
            .filter(|(n, (i, _))| stage_of(*n) == stage && i != "FROM")
            .map(|(_, x)| x)
            .collect();
        assert_eq!(own.len(), 1, "stage {stage}: {own:?}");
        assert_eq!(own[0].0, "COPY");
        assert!(
            own[0].1.ends_with(" /usr/local/bin/event-updater"),
            "{own:?}"
        );
    }

    // The builder gets the sources the build needs, and .dockerignore does not hide them.
    let ignored = read(".dockerignore");
    for (_, args) in instructions.iter().filter(|(i, _)| i == "COPY") {
        if args.starts_with("--from") {
            assert!(args.contains("/usr/local/bin/event-updater"), "{args}");
            continue;
        }
        if args.starts_with("target/") {
            // The prebuilt binary: outside the sources, in the context only when built, and
            // let through .dockerignore's `target/`.
            assert!(args.starts_with("target/release/event-updater "), "{args}");
            assert!(
                ignored
                    .lines()
                    .any(|l| l.trim() == "!target/release/event-updater"),
                ".dockerignore lets the prebuilt binary through"
            );
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}: missing");
            assert!(
                !ignored
                    .lines()
                    .any(|l| l.trim().trim_end_matches('/') == *src),
                "{src} is in .dockerignore"
            );
        }
    }

    // A fixed non-root uid, the user that useradd creates.
    let user = dockerfile_args("USER").pop().expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER {user}");
    assert!(runs
        .iter()
        .any(|(_, a)| a.contains(&format!("--uid {uid}"))));

    // The binary is the entrypoint and `serve` (a subcommand it has) the default command.
    let entrypoint: Vec<String> =
        serde_json::from_str(&dockerfile_args("ENTRYPOINT").pop().expect("ENTRYPOINT"))
            .expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint, ["event-updater"]);
    let cmd: Vec<String> =
        serde_json::from_str(&dockerfile_args("CMD").pop().expect("CMD")).expect("exec-form CMD");
    assert_eq!(cmd, ["serve"]);
    assert!(binary_subcommands().contains("serve"));

    // The health check is an exec-form command that asks /readyz for a 200 (tests/it/containers/
    // runs it: healthy once serving, unhealthy when the database is gone).
    let health = dockerfile_args("HEALTHCHECK").pop().expect("HEALTHCHECK");
    let exec = &health[health.find("CMD").expect("HEALTHCHECK ... CMD") + 3..];
    let argv: Vec<String> = serde_json::from_str(exec.trim()).expect("exec-form CMD");
    assert!(argv
        .iter()
        .any(|a| a.contains("GET /readyz") && a.contains("200")));
}
