//! No module cycle in `src/`: sibling modules of one folder never import each other both ways,
//! directly or through others.
//!
//! The module tree is read from the `mod` declarations of each crate root (`src/lib.rs`,
//! `src/main.rs`); every path a file names (`use` trees and paths in code starting with
//! `crate`, `super`, `self`, a child module, a name a `use` bound, or the library's name) is
//! resolved to the module it lands in. A path through a crate root's or an ancestor's re-export
//! (`crate::Config`, `super::Lane`) lands where the item lives; a path into another module stops
//! at that module, re-export or not.
//!
//! Each folder is a level whose nodes are its files and subfolders (a subfolder with its
//! `mod.rs` and everything below it); the crate roots are nodes of `src/` beside the top-level
//! modules, so `main` and `ops` are siblings. A file naming a module of a sibling node is an
//! edge between the two; naming its own folder's `mod.rs` (an ancestor) is the normal shape of
//! a folder and no edge. Every folder is checked: `src/` (`ops` and `main`), its folders
//! (`drf::validate` and `drf::isodate`, `pipeline::kafka` and `pipeline::consumer`) and theirs
//! (the files of `pipeline/consumer/`).
//! Comments, doc links and strings are not read, nor test-only modules (`#[cfg(test)]`): a unit
//! test may use the layer above the code it tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::yaml::root;

/// A module: its crate's name (`lib`, `main`, `bin/<name>`), then its path below the root.
type ModPath = Vec<String>;

/// A token of Rust code with comments and literals removed.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// The tokens of `text`, without comments, strings, characters and numbers.
fn tokens(text: &str) -> Vec<Token> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&c, i) {
            i = end;
        } else if ch == '"' || (ch == 'b' && next == Some('"')) {
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '\'' {
            // A character literal ('x', '\n', '\u{..}'), else a lifetime or a label.
            if next == Some('\\') {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(c[start..i].iter().collect()));
        } else if ch == ':' && next == Some(':') {
            out.push(Token::PathSep);
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(Token::Punct(ch));
            }
            i += 1;
        }
    }
    out
}

/// Where a raw string (`r"..."`, `r#"..."#`, `br"..."`) starting at `i` ends, if one does.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') || (i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')) {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&h| h == '#').count();
    j += hashes;
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// A path named in a file: the module it is named in (with inline modules), its segments,
/// and the name a `use` binds it to.
#[derive(Debug)]
struct Named {
    within: ModPath,
    segments: Vec<String>,
    binds: Option<String>,
}

/// What one file says: the `mod name;` it declares (but test-only ones) and the paths it
/// names outside test-only modules.
#[derive(Debug, Default)]
struct FileRefs {
    declared: Vec<String>,
    named: Vec<Named>,
}

/// Whether the `mod` at `i` is declared `#[cfg(test)]` (before its visibility, if any).
fn test_only(toks: &[Token], i: usize) -> bool {
    let mut k = i;
    if k > 0 && toks[k - 1] == Token::Punct(')') {
        // `pub(crate)`, `pub(super)`, `pub(in path)`
        while k > 0 && toks[k - 1] != Token::Punct('(') {
            k -= 1;
        }
        k = k.saturating_sub(1);
    }
    if k > 0 && toks[k - 1] == Token::Ident("pub".into()) {
        k -= 1;
    }
    let cfg_test = [
        Token::Punct('#'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    k >= cfg_test.len() && toks[k - cfg_test.len()..k] == cfg_test
}

/// Reads the tokens of the file of module `module`.
fn read_refs(module: &ModPath, toks: &[Token]) -> FileRefs {
    let mut refs = FileRefs::default();
    // Inline modules open here: name, the depth they opened at, whether test-only.
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let within = |inline: &[(String, usize, bool)]| -> ModPath {
        let mut m = module.clone();
        m.extend(inline.iter().map(|(n, _, _)| n.clone()));
        m
    };
    let in_test = |inline: &[(String, usize, bool)]| inline.iter().any(|(_, _, t)| *t);
    let ident = |k: usize| match toks.get(k) {
        Some(Token::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d, _)| *d == depth) {
                    inline.pop();
                }
            }
            Token::Ident(w) if w == "mod" => {
                if let Some(name) = ident(i + 1) {
                    match toks.get(i + 2) {
                        Some(Token::Punct(';')) if inline.is_empty() && !test_only(toks, i) => {
                            refs.declared.push(name.to_string());
                        }
                        Some(Token::Punct('{')) => {
                            inline.push((name.to_string(), depth, test_only(toks, i)));
                            depth += 1;
                            i += 3;
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            Token::Ident(w) if w == "use" => {
                let end = toks[i..]
                    .iter()
                    .position(|t| *t == Token::Punct(';'))
                    .map_or(toks.len(), |p| i + p);
                let here = within(&inline);
                let tree = if in_test(&inline) {
                    Vec::new()
                } else {
                    use_tree(&toks[i + 1..end], Vec::new())
                };
                for (segments, binds) in tree {
                    refs.named.push(Named {
                        within: here.clone(),
                        segments,
                        binds,
                    });
                }
                i = end;
            }
            Token::Ident(first) => {
                let after_sep = i > 0 && toks[i - 1] == Token::PathSep;
                let after_dollar = i > 0 && toks[i - 1] == Token::Punct('$');
                if !after_sep && !after_dollar && toks.get(i + 1) == Some(&Token::PathSep) {
                    let mut segments = vec![first.clone()];
                    let mut k = i + 1;
                    while toks.get(k) == Some(&Token::PathSep) {
                        match ident(k + 1) {
                            Some(s) => segments.push(s.to_string()),
                            None => break,
                        }
                        k += 2;
                    }
                    if !in_test(&inline) {
                        refs.named.push(Named {
                            within: within(&inline),
                            segments,
                            binds: None,
                        });
                    }
                    i = k;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    refs
}

/// The paths of a `use` tree (after `use`, before `;`), each with the name it binds (none
/// for a glob or `_`).
fn use_tree(toks: &[Token], prefix: Vec<String>) -> Vec<(Vec<String>, Option<String>)> {
    let mut path = prefix;
    let mut i = 0;
    if toks.first() == Some(&Token::PathSep) {
        i += 1;
    }
    loop {
        match toks.get(i) {
            Some(Token::Ident(s)) => {
                path.push(s.clone());
                i += 1;
                if toks.get(i) == Some(&Token::PathSep) {
                    i += 1;
                    continue;
                }
                // The last segment: `x`, `x as y`, `self` (binds its parent's name).
                let binds = match (toks.get(i), toks.get(i + 1)) {
                    (Some(Token::Ident(a)), Some(Token::Ident(name))) if a == "as" => {
                        Some(name.clone())
                    }
                    _ => path.last().cloned(),
                };
                if path.last().is_some_and(|s| s == "self") {
                    path.pop();
                    let binds = binds
                        .filter(|b| b != "self")
                        .or_else(|| path.last().cloned());
                    return vec![(path, binds)];
                }
                return vec![(path, binds.filter(|b| b != "_"))];
            }
            Some(Token::Punct('*')) => return vec![(path, None)],
            Some(Token::Punct('{')) => {
                let mut out = Vec::new();
                let mut depth = 0;
                let mut start = i + 1;
                for (k, t) in toks.iter().enumerate().skip(i) {
                    match t {
                        Token::Punct('{') => depth += 1,
                        Token::Punct('}') | Token::Punct(',') if depth == 1 => {
                            if k > start {
                                out.extend(use_tree(&toks[start..k], path.clone()));
                            }
                            start = k + 1;
                            if *t == Token::Punct('}') {
                                depth -= 1;
                            }
                        }
                        Token::Punct('}') => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        break;
                    }
                }
                return out;
            }
            _ => return Vec::new(),
        }
    }
}

/// The crates of `src/`: each crate root's name and file.
fn crate_roots(src: &Path) -> Vec<(String, PathBuf)> {
    let mut roots = Vec::new();
    for (name, file) in [("lib", "lib.rs"), ("main", "main.rs")] {
        if src.join(file).exists() {
            roots.push((name.to_string(), src.join(file)));
        }
    }
    if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
        for entry in bins {
            let path = entry.expect("entry").path();
            let (name, file) = if path.is_dir() {
                (path.file_name(), path.join("main.rs"))
            } else {
                (path.file_stem(), path.clone())
            };
            let name = name.expect("a name").to_string_lossy().into_owned();
            roots.push((format!("bin/{name}"), file));
        }
    }
    roots
}

/// The modules of `src/` (file modules only) with what each file names.
fn module_tree(src: &Path) -> BTreeMap<ModPath, (PathBuf, FileRefs)> {
    let mut modules = BTreeMap::new();
    let mut todo: Vec<(ModPath, PathBuf, bool)> = crate_roots(src)
        .into_iter()
        .map(|(name, file)| (vec![name], file, true))
        .collect();
    while let Some((module, file, owns_dir)) = todo.pop() {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            !text.contains("#[path"),
            "{}: #[path] is not followed by this test",
            file.display()
        );
        let refs = read_refs(&module, &tokens(&text));
        // A crate root or mod.rs owns its folder; `x.rs` owns the folder `x/`.
        let dir = if owns_dir {
            file.parent().expect("a folder").to_path_buf()
        } else {
            file.with_extension("")
        };
        for child in &refs.declared {
            let flat = dir.join(format!("{child}.rs"));
            let folder = dir.join(child).join("mod.rs");
            let (path, owns) = if flat.exists() {
                (flat, false)
            } else if folder.exists() {
                (folder, true)
            } else {
                panic!("{}: no file for `mod {child};`", file.display());
            };
            let mut m = module.clone();
            m.push(child.clone());
            todo.push((m, path, owns));
        }
        modules.insert(module, (file, refs));
    }
    modules
}

/// The graph of the modules in `src/`: what each file names, resolved.
struct Graph {
    modules: BTreeMap<ModPath, (PathBuf, FileRefs)>,
    /// Per module (inline ones too): name bound by a `use` -> (where it was written, its path).
    bindings: BTreeMap<ModPath, BTreeMap<String, Vec<String>>>,
}

impl Graph {
    fn new(src: &Path) -> Graph {
        let modules = module_tree(src);
        let mut bindings: BTreeMap<ModPath, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (_, refs) in modules.values() {
            for n in &refs.named {
                if let Some(name) = &n.binds {
                    bindings
                        .entry(n.within.clone())
                        .or_default()
                        .insert(name.clone(), n.segments.clone());
                }
            }
        }
        Graph { modules, bindings }
    }

    /// The file module `within` is part of (inline modules are part of their file).
    fn file_module(&self, within: &ModPath) -> ModPath {
        let mut m = within.clone();
        while !self.modules.contains_key(&m) {
            m.pop();
        }
        m
    }

    /// The module a path named in `within` lands in; `None` outside this repository's crates.
    /// `hops` bounds the `use` bindings followed.
    fn resolve(&self, within: &ModPath, segments: &[String], hops: u32) -> Option<ModPath> {
        if hops > 16 || segments.is_empty() {
            return None;
        }
        let first = segments[0].as_str();
        let (start, rest) = match first {
            "crate" => (vec![within[0].clone()], &segments[1..]),
            "self" => (within.clone(), &segments[1..]),
            "super" => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let base = within[..within.len().saturating_sub(ups).max(1)].to_vec();
                (base, &segments[ups..])
            }
            "event_updater" if self.modules.contains_key(&vec!["lib".to_string()]) => {
                (vec!["lib".to_string()], &segments[1..])
            }
            _ => {
                let mut child = within.clone();
                child.push(first.to_string());
                if self.modules.contains_key(&child) {
                    (child, &segments[1..])
                } else if let Some(bound) = self.binding(within, first) {
                    let mut path = bound.clone();
                    path.extend(segments[1..].iter().cloned());
                    return self.resolve(within, &path, hops + 1);
                } else {
                    return None;
                }
            }
        };
        self.walk(within, start, rest, hops)
    }

    /// A name bound by a `use` in `within`, or in the modules around an inline module (which
    /// sees them through its `use super::*`).
    fn binding(&self, within: &ModPath, name: &str) -> Option<&Vec<String>> {
        let mut m = within.clone();
        loop {
            if let Some(bound) = self.bindings.get(&m).and_then(|b| b.get(name)) {
                return Some(bound);
            }
            if self.modules.contains_key(&m) || m.len() <= 1 {
                return None;
            }
            m.pop();
        }
    }

    /// Walks `rest` down from module `at`; through a re-export only in an ancestor of
    /// `within` (its own facade) or in a crate root (the library's, for the binary), else
    /// stopping at the module named.
    fn walk(&self, within: &ModPath, at: ModPath, rest: &[String], hops: u32) -> Option<ModPath> {
        let mut at = self.file_module(&at);
        for (k, segment) in rest.iter().enumerate() {
            let mut child = at.clone();
            child.push(segment.clone());
            if self.modules.contains_key(&child) {
                at = child;
                continue;
            }
            if within.starts_with(&at) || at.len() == 1 {
                if let Some(bound) = self.binding(&at, segment) {
                    let mut path = bound.clone();
                    path.extend(rest[k + 1..].iter().cloned());
                    return self.resolve(&at, &path, hops + 1).or(Some(at));
                }
            }
            return Some(at);
        }
        Some(at)
    }
}

/// A module's place in the folder tree: a crate root is a file of `src/` (`main`), and every
/// module keeps its path below its crate (`pipeline`, `kafka`); `src/bin/x` is a folder of
/// its own.
fn place(module: &ModPath) -> Vec<String> {
    let mut out = match module[0].strip_prefix("bin/") {
        Some(bin) => vec!["bin".to_string(), bin.to_string()],
        None if module.len() == 1 => return module.clone(),
        None => Vec::new(),
    };
    out.extend(module[1..].iter().cloned());
    out
}

/// Per folder (by its place), the edges between its nodes: (from, to) -> the first
/// reference found for it (file: path).
type Levels = BTreeMap<Vec<String>, BTreeMap<(String, String), String>>;

/// The edges between sibling nodes of every folder of `src`.
fn levels(src: &Path) -> Levels {
    let graph = Graph::new(src);
    let mut levels = Levels::new();
    for (module, (file, refs)) in &graph.modules {
        for n in &refs.named {
            let Some(target) = graph.resolve(&n.within, &n.segments, 0) else {
                continue;
            };
            let (from, to) = (place(module), place(&target));
            let Some(i) = from.iter().zip(&to).position(|(a, b)| a != b) else {
                continue; // one is the other's folder (or itself)
            };
            let rel = file.strip_prefix(src).unwrap_or(file).display();
            levels
                .entry(from[..i].to_vec())
                .or_default()
                .entry((from[i].clone(), to[i].clone()))
                .or_insert_with(|| format!("src/{rel}: {}", n.segments.join("::")));
        }
    }
    assert_eq!(
        graph
            .modules
            .keys()
            .map(place)
            .collect::<BTreeSet<_>>()
            .len(),
        graph.modules.len(),
        "two crates' modules share a place"
    );
    levels
}

/// The cycles among sibling nodes, each as `a -> b (why) -> a (why)`, per folder.
fn cycles(levels: &Levels) -> Vec<String> {
    let mut found = Vec::new();
    for (folder, edges) in levels {
        let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (a, b) in edges.keys() {
            next.entry(a).or_default().insert(b);
        }
        let mut reported: BTreeSet<BTreeSet<&str>> = BTreeSet::new();
        for &start in next.keys() {
            // The shortest way back to `start`, breadth first.
            let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut closed = None;
            while let Some(n) = queue.pop_front() {
                for &m in next.get(n).into_iter().flatten() {
                    if m == start {
                        closed = Some(n);
                        break;
                    }
                    if let std::collections::btree_map::Entry::Vacant(e) = came_from.entry(m) {
                        e.insert(n);
                        queue.push_back(m);
                    }
                }
                if closed.is_some() {
                    break;
                }
            }
            let Some(last) = closed else { continue };
            let mut cycle = vec![last];
            while *cycle.last().unwrap() != start {
                cycle.push(came_from[cycle.last().unwrap()]);
            }
            cycle.reverse();
            if !reported.insert(cycle.iter().copied().collect()) {
                continue;
            }
            let at = if folder.is_empty() {
                "src/".to_string()
            } else {
                format!("src/{}/", folder.join("/"))
            };
            let mut text = format!("in {at}: {start}");
            for (k, &a) in cycle.iter().enumerate() {
                let b = cycle.get(k + 1).copied().unwrap_or(start);
                let why = &edges[&(a.to_string(), b.to_string())];
                text.push_str(&format!(" -> {b} ({why})"));
            }
            found.push(text);
        }
    }
    found
}

/// No module of `src/` imports a sibling that imports it back, directly or through others.
#[test]
fn no_module_cycle_in_src() {
    let src = root().join("src");
    let levels = levels(&src);
    // The reading itself: the binary calls its commands, a folder's files call each other.
    let top = &levels[&Vec::new()];
    assert!(top.contains_key(&("main".into(), "ops".into())), "{top:?}");
    assert!(
        top.contains_key(&("pipeline".into(), "store".into())),
        "{top:?}"
    );
    assert!(
        levels.contains_key(&vec!["pipeline".to_string(), "consumer".to_string()]),
        "{levels:?}"
    );
    let found = cycles(&levels);
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

/// The check finds a cycle planted in a small tree, through a re-export and an inline path
/// too, and takes neither a child's use of its folder's `mod.rs` nor a facade's re-exports
/// for one.
#[test]
fn the_cycle_check_finds_a_planted_cycle_and_only_that() {
    let dir = std::env::temp_dir().join(format!("cycles-{}", std::process::id()));
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    // A tree with one cycle (main -> ops -> main) and the shapes that are none.
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub use a::Thing;"),
        (
            "a/mod.rs",
            r#"
            mod x;
            mod y;
            #[cfg(test)]
            mod tests;
            pub use x::Thing;
            pub(crate) fn shared() {}
            "#,
        ),
        (
            "a/x.rs",
            r#"
            use super::shared;
            pub struct Thing;
            /// [`crate::b`]
            fn f() { let _ = "crate::b"; }
            "#,
        ),
        (
            "a/y.rs",
            r#"
            use super::{shared, Thing};
            #[cfg(test)]
            mod tests { use super::*; fn t() { crate::b::g(); } }
            "#,
        ),
        ("a/tests.rs", "use crate::b::g;"),
        ("b.rs", "use crate::Thing;\nfn g() { crate::a::shared(); }"),
        (
            "main.rs",
            r#"
            mod ops;
            #[cfg(test)]
            pub(crate) mod tests;
            fn helper() {}
            fn main() { ops::run(); }
            "#,
        ),
        ("tests.rs", "use crate::ops::run;"),
        ("ops/mod.rs", "mod demo;\npub fn run() { demo::go(); }"),
        ("ops/demo.rs", "pub fn go() { crate::helper(); }"),
    ];
    for (rel, text) in files {
        write(rel, text);
    }
    let src = dir.clone();
    let lv = levels(&src);
    std::fs::remove_dir_all(&dir).ok();
    let top = &lv[&Vec::new()];
    // b reaches x's Thing through lib.rs: an edge to `a`, not to `lib`.
    assert!(top.contains_key(&("b".into(), "a".into())), "{lv:?}");
    assert!(!top.contains_key(&("b".into(), "lib".into())), "{lv:?}");
    // y reaches x's Thing through a/mod.rs.
    assert!(
        lv[&vec!["a".to_string()]].contains_key(&("y".into(), "x".into())),
        "{lv:?}"
    );
    let found = cycles(&lv);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("in src/: main -> ops (src/main.rs: ops::run) -> main"),
        "{found:?}"
    );
}
