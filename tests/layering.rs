//! The module map, enforced: reads every file under `src/`, resolves its `crate::`, `super::` and child
//! module paths to files, and fails on an import the map forbids or on any import cycle between files.
//!
//! `GATEHOUSE_LAYERING_SRC` points the check at another source tree (an older checkout, for instance), so
//! the rules can be seen failing on a layout that breaks them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module may import, besides itself, from the top of the house down. `lib.rs` only
/// declares the tree and re-exports; `main.rs` may use anything.
const MAY_IMPORT: &[(&str, &str)] = &[
    (
        "app",
        "admin config cluster intel front listen upstream guard state telemetry wire sys",
    ),
    (
        "config",
        "admin cluster intel front listen upstream guard state telemetry wire sys",
    ),
    ("admin", "cluster front listen upstream guard state telemetry wire sys"),
    ("cluster", "state telemetry wire sys"),
    ("intel", "state telemetry wire sys"),
    ("front", "listen upstream guard state telemetry wire sys"),
    ("listen", "guard state telemetry wire sys"),
    ("upstream", "telemetry wire sys"),
    ("guard", "state telemetry wire sys"),
    ("state", "telemetry wire sys"),
    ("telemetry", ""),
    ("wire", ""),
    ("sys", ""),
];

/// A file's module path: `src/front/electrum/session.rs` is `front::electrum::session`; `src/lib.rs` and
/// `src/main.rs` are the crate root.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The top-level module a file belongs to (`lib` and `main` for the two roots).
fn top_of(rel: &Path) -> String {
    let m = module_of(rel);
    match m.first() {
        Some(t) => t.clone(),
        None => rel.to_string_lossy().trim_end_matches(".rs").to_string(),
    }
}

/// The code without comments, so doc links and prose never count as imports.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        match (rest.find("//"), rest.find("/*")) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b..].find("*/").map_or("", |e| &rest[b + e + 2..]);
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Reads `a::b::{c, d::e}` starting at `s`, appending every full path to `out`.
fn read_paths(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut rest = s;
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end > 0 {
            path.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        let trimmed = rest.trim_start();
        if let Some(after) = trimmed.strip_prefix("::") {
            let after = after.trim_start();
            if let Some(group) = after.strip_prefix('{') {
                let mut depth = 1;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' | ',' if depth == 1 => {
                            let item = group[start..i].trim();
                            if !item.is_empty() {
                                read_paths(item, path.clone(), out);
                            }
                            start = i + 1;
                            if c == '}' {
                                return;
                            }
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                return;
            }
            rest = after;
            continue;
        }
        // `a::b::{self, c}` names `a::b` itself.
        if path.last().is_some_and(|l| l == "self") {
            path.pop();
        }
        out.push(path);
        return;
    }
}

/// The module paths a file names, each made absolute (from the crate root).
fn imports_of(rel: &Path, text: &str) -> Vec<Vec<String>> {
    let code = strip_comments(text);
    let me = module_of(rel);
    let is_main = rel == Path::new("main.rs");
    // Inline modules (`mod tests { … }`): their `super` is the file's own module.
    let inline_from = code.find("mod tests").unwrap_or(code.len());
    let children: BTreeSet<String> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("pub ").unwrap_or(l.trim());
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect();
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let boundary = i == 0 || !is_ident(bytes[i - 1] as char) && bytes[i - 1] != b':';
        if !boundary || !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let word_end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        let word = &rest[..word_end];
        if word_end == 0 {
            i += 1;
            continue;
        }
        let root = if word == "crate" || is_main && word == "gatehouse" {
            Some(Vec::new())
        } else if word == "super" {
            let mut base = me.clone();
            if i < inline_from {
                base.pop();
            }
            Some(base)
        } else if word == "self" {
            Some(me.clone())
        } else {
            None
        };
        let after = &rest[word_end..];
        if let Some(mut base) = root {
            if let Some(tail) = after.strip_prefix("::") {
                // `super::super::x`
                let mut tail = tail;
                while let Some(t) = tail.strip_prefix("super::") {
                    base.pop();
                    tail = t;
                }
                let mut paths = Vec::new();
                read_paths(tail, Vec::new(), &mut paths);
                for p in paths {
                    let mut full = base.clone();
                    full.extend(p);
                    out.push(full);
                }
            }
        } else if children.contains(word) && after.starts_with("::") && code[..i].trim_end().ends_with("use") {
            let mut paths = Vec::new();
            read_paths(rest, Vec::new(), &mut paths);
            for p in paths {
                let mut full = me.clone();
                full.extend(p);
                out.push(full);
            }
        }
        i += word_end.max(1);
    }
    out
}

/// The file a module path lands in: the longest prefix that names a file of the tree.
fn resolve(files: &BTreeSet<PathBuf>, path: &[String]) -> Option<PathBuf> {
    for n in (0..=path.len()).rev() {
        let p = &path[..n];
        if n == 0 {
            return Some(PathBuf::from("lib.rs"));
        }
        let joined: PathBuf = p.iter().collect();
        for cand in [joined.with_extension("rs"), joined.join("mod.rs")] {
            if files.contains(&cand) {
                return Some(cand);
            }
        }
    }
    None
}

fn rust_files(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), text);
        }
    }
}

/// Every breach of the map in the tree under `src`: forbidden imports, then import cycles between files.
fn check(src: &Path) -> Vec<String> {
    let mut texts = BTreeMap::new();
    rust_files(src, src, &mut texts);
    let files: BTreeSet<PathBuf> = texts.keys().cloned().collect();
    let rules: BTreeMap<&str, Vec<&str>> = MAY_IMPORT
        .iter()
        .map(|(m, may)| (*m, may.split_whitespace().collect()))
        .collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (rel, text) in &texts {
        let from = top_of(rel);
        for path in imports_of(rel, text) {
            let Some(target) = resolve(&files, &path) else { continue };
            if &target == rel {
                continue;
            }
            edges.entry(rel.clone()).or_default().insert(target.clone());
            let to = top_of(&target);
            if to == from || from == "main" {
                continue;
            }
            let allowed = match (from.as_str(), rules.get(from.as_str())) {
                // The crate root declares the tree and re-exports what tests and the CLI use.
                ("lib", _) => true,
                (_, Some(may)) => may.contains(&to.as_str()),
                (_, None) => {
                    problems.push(format!("src/{}: module `{from}` is not on the map", rel.display()));
                    continue;
                }
            };
            if !allowed {
                problems.push(format!(
                    "src/{}: imports `{}` (module `{to}`), which `{from}` may not import",
                    rel.display(),
                    path.join("::")
                ));
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems.extend(cycles(&edges).into_iter().map(|c| {
        let names: Vec<String> = c.iter().map(|p| format!("src/{}", p.display())).collect();
        format!("import cycle among: {}", names.join(", "))
    }));
    problems
}

/// The strongly connected groups of more than one file (Tarjan), each sorted by path.
fn cycles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct St<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on: BTreeSet<&'a PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(st: &mut St<'a>, v: &'a PathBuf) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on.insert(v);
        if let Some(ws) = st.edges.get(v) {
            for w in ws {
                if !st.index.contains_key(w) {
                    visit(st, w);
                    let l = st.low[w].min(st.low[v]);
                    st.low.insert(v, l);
                } else if st.on.contains(w) {
                    let l = st.index[w].min(st.low[v]);
                    st.low.insert(v, l);
                }
            }
        }
        if st.low[v] == st.index[v] {
            let mut group = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on.remove(w);
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                st.out.push(group);
            }
        }
    }
    let mut st = St {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !st.index.contains_key(v) {
            visit(&mut st, v);
        }
    }
    st.out
}

fn src_dir() -> PathBuf {
    match std::env::var_os("GATEHOUSE_LAYERING_SRC") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
    }
}

#[test]
fn every_import_follows_the_module_map_and_none_runs_in_a_circle() {
    let src = src_dir();
    let problems = check(&src);
    assert!(
        problems.is_empty(),
        "{} breaches of the module map in {}:\n{}",
        problems.len(),
        src.display(),
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_forbidden_imports_and_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "lib.rs",
        "pub mod listen;\npub mod front;\npub mod telemetry;\npub mod wire;\n",
    );
    write("listen/mod.rs", "use crate::front::Session;\n");
    write(
        "front/mod.rs",
        "use crate::listen::{self, Conn};\n/// not an import: crate::config\n",
    );
    write("telemetry.rs", "fn f() { crate::wire::x(); }\n");
    write(
        "wire/mod.rs",
        "pub fn x() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
    );
    let problems = check(src);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("src/listen/mod.rs: imports `front::Session`")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("src/telemetry.rs: imports `wire::x`")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "import cycle among: src/front/mod.rs, src/listen/mod.rs"),
        "{problems:?}"
    );
    assert!(!problems.iter().any(|p| p.contains("config")), "{problems:?}");
    assert!(!problems.iter().any(|p| p.contains("src/wire")), "{problems:?}");
}
