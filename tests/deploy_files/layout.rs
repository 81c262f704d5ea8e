//! The source tree: the README's Layout names every file under src/, and the layers keep to
//! their imports (the domain does no I/O, DRF's rules stand alone).

use std::path::{Path, PathBuf};

use crate::support::readme_section;
use crate::yaml::root;

/// The Rust files under `dir`, at any depth.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Every Rust file under `src/` is named in the README's Layout section (by its path below
/// `src/`, or its file name), so the map a newcomer reads cannot leave files out.
#[test]
fn the_readme_layout_names_every_source_file() {
    let layout = readme_section("Layout");
    let src = root().join("src");
    let files = rust_files(&src);
    assert!(files.len() > 10, "{files:?}");
    let missing: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&src)
                .expect("below src/")
                .display()
                .to_string()
        })
        .filter(|rel| {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            !layout.contains(&format!("`src/{rel}`")) && !layout.contains(&format!("`{name}`"))
        })
        .collect();
    assert!(missing.is_empty(), "README's Layout leaves out {missing:?}");
}

/// The layers keep to their imports (see the module docs of `src/domain` and `src/drf`): the
/// domain does no I/O (no sqlx, rdkafka, or the store and pipeline modules), and DRF's rules
/// depend on nothing else of the crate.
#[test]
fn the_domain_does_no_io_and_drf_stands_alone() {
    let check = |folder: &str, banned: &[&str]| {
        let files = rust_files(&root().join(folder));
        assert!(!files.is_empty(), "{folder}");
        let mut found = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for b in banned {
                    if code.contains(b) {
                        found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "{folder} imports what it may not:\n{}",
            found.join("\n")
        );
    };
    check(
        "src/domain",
        &[
            "sqlx",
            "rdkafka",
            "crate::store",
            "crate::pipeline",
            "crate::startup",
            "crate::metrics",
        ],
    );
    check(
        "src/drf",
        &[
            "sqlx",
            "rdkafka",
            "crate::domain",
            "crate::store",
            "crate::pipeline",
            "crate::config",
        ],
    );
}
