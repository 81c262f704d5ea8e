//! What the binary says about itself: its `--help` (options, their environment variables,
//! subcommands), the variables the README's Configuration table adds, and the configuration
//! it would build from an environment. Every deploy check compares against these.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::OnceLock;

use event_updater::config::Config;

use crate::support::readme_section;

/// `event-updater --help`, run with an empty environment (so no value shows up in it).
pub(crate) fn help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_event-updater"))
            .arg("--help")
            .env_clear()
            .output()
            .expect("event-updater --help runs");
        assert!(out.status.success(), "event-updater --help failed: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8 help")
    })
}

/// The options of `--help`: environment variable name -> (flag, the option's help text).
pub(crate) fn binary_options() -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut finish = |current: Option<(String, String)>| {
        if let Some((flag, text)) = current {
            if let Some(start) = text.find("[env: ") {
                let rest = &text[start + "[env: ".len()..];
                let end = rest.find(['=', ']']).expect("a closed [env: ...] marker");
                out.insert(rest[..end].to_string(), (flag, text));
            }
        }
    };
    for line in help().lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        // Option lines are indented less than their help text (`  -h, --help`, `      --x`).
        if t.starts_with('-') && indent < 8 {
            finish(current.take());
            let flag = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .expect("a long flag")
                .trim_end_matches(',')
                .to_string();
            current = Some((flag, String::new()));
        } else if !t.is_empty() && indent == 0 {
            // A section heading ends the option before it; blank lines do not.
            finish(current.take());
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(t);
            text.push(' ');
        }
    }
    finish(current);
    out
}

/// The subcommands `--help` lists.
pub(crate) fn binary_subcommands() -> BTreeSet<String> {
    help()
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("Options:").next())
        .expect("a Commands: section")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Variables the README's Configuration table lists without a flag: read by the binary, not by
/// clap (`RUST_LOG`, `LOG_FORMAT`).
fn env_without_flag() -> BTreeSet<String> {
    readme_section("Configuration")
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[2].is_empty()).then(|| cells[1].trim_matches('`').to_string())
        })
        .collect()
}

/// Every environment variable the binary reads.
pub(crate) fn known_env() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = binary_options().into_keys().collect();
    known.extend(env_without_flag());
    known
}

/// The configuration the binary would build from `env`, parsed by its own clap definition
/// (each variable given as its flag, which wins over this process's environment).
pub(crate) fn config_from_env(env: &BTreeMap<String, String>, what: &str) -> Config {
    let options = binary_options();
    let mut args = vec!["event-updater".to_string()];
    for (name, value) in env {
        if let Some((flag, _)) = options.get(name) {
            args.push(format!("{flag}={value}"));
        }
    }
    let cfg = Config::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{what}: the binary refuses these settings: {e}"));
    if let Some(f) = env.get("LOG_FORMAT") {
        assert!(
            ["json", "text"].contains(&f.as_str()),
            "{what}: LOG_FORMAT={f}"
        );
    }
    if let Some(f) = env.get("RUST_LOG") {
        assert!(!f.trim().is_empty(), "{what}: empty RUST_LOG");
    }
    cfg
}

pub(crate) fn default_port() -> u16 {
    Config::defaults().http_addr.port()
}

#[test]
fn the_binarys_option_list_is_read_correctly() {
    let options = binary_options();
    // Spot checks of the parsing itself, against options the binary has had from the start.
    assert_eq!(options["DATABASE_URL"].0, "--database-url");
    assert_eq!(options["KAFKA_PROPERTIES"].0, "--kafka-property");
    assert_eq!(options["HTTP_ADDR"].0, "--http-addr");
    assert!(options.len() >= 15, "{options:?}");
    let extra = env_without_flag();
    assert!(
        extra.contains("RUST_LOG") && extra.contains("LOG_FORMAT"),
        "{extra:?}"
    );
    assert!(binary_subcommands().contains("serve"));
}
