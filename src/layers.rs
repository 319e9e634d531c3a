//! The layer test: reads every module of `src/` as text, finds the modules each one names
//! (`crate::…` paths, in `use` declarations and inline), and fails on a use that climbs the
//! layer table of the crate's doc (`src/lib.rs`) or closes a loop, between top-level
//! modules or between files. Test code (`tests.rs` files and `#[cfg(test)] mod tests`
//! blocks) is not read: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path inside the crate, e.g. `["delivery", "route"]`; `[]` is the crate root.
type ModPath = Vec<String>;

/// The layer table of `lib.rs`'s doc: lines `//! N. `a`, `b` — …`, layer N holding the
/// top-level modules named in backticks before the dash.
fn layers(lib_doc: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lib_doc.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((number, rest)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.trim().parse::<usize>() else {
            continue;
        };
        let names = rest.split(" — ").next().unwrap_or("");
        for name in names.split('`').skip(1).step_by(2) {
            out.insert(name.to_string(), layer);
        }
    }
    out
}

/// The module path of a file under `src/`.
fn module_of(rel: &str) -> ModPath {
    let stem = rel.trim_end_matches(".rs");
    let mut parts: ModPath = stem.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The source without line comments and `#[cfg(test)] mod … { … }` blocks.
fn code_of(source: &str) -> String {
    let mut code = String::with_capacity(source.len());
    let mut cfg_test = false;
    let mut skipping: Option<i64> = None; // brace depth inside a skipped test block
    for line in source.lines() {
        let without_comment = line.find("//").map_or(line, |i| &line[..i]);
        let opens = without_comment.matches('{').count() as i64;
        let closes = without_comment.matches('}').count() as i64;
        if let Some(depth) = skipping.as_mut() {
            *depth += opens - closes;
            if *depth <= 0 {
                skipping = None;
            }
            continue;
        }
        let trimmed = without_comment.trim();
        if trimmed == "#[cfg(test)]" {
            cfg_test = true;
            continue;
        }
        if std::mem::take(&mut cfg_test) && trimmed.starts_with("mod ") && opens > closes {
            skipping = Some(opens - closes);
            continue;
        }
        code.push_str(without_comment);
        code.push('\n');
    }
    code
}

/// Every module a piece of code names through `crate::`, resolved to the longest known
/// module path (`crate::spool::Spool` → `spool`; `use crate::{a, b::c}` → `a`, `b::c`).
fn named_modules(code: &str, known: &BTreeSet<ModPath>) -> BTreeSet<ModPath> {
    let mut out = BTreeSet::new();
    let resolve = |path: &[String], out: &mut BTreeSet<ModPath>| {
        for k in (1..=path.len()).rev() {
            if known.contains(&path[..k]) {
                out.insert(path[..k].to_vec());
                return;
            }
        }
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `optin_crate::`, `$crate::` and the like
        }
        if let Some(inner) = rest.strip_prefix('{') {
            // A brace list: each item is a path of its own (one level of nesting is
            // enough here: `crate::{a::{B, C}, d}` names `a` and `d`).
            let end = inner
                .find("};")
                .or_else(|| inner.find('}'))
                .unwrap_or(inner.len());
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in inner[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            for item in items {
                let path: ModPath = item
                    .split("::")
                    .map(|p| p.split_whitespace().next().unwrap_or("").to_string())
                    .filter(|p| !p.is_empty())
                    .collect();
                resolve(&path, &mut out);
            }
            continue;
        }
        let path: ModPath = rest
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or("")
            .split("::")
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        resolve(&path, &mut out);
    }
    out
}

/// What the layer test finds wrong.
fn violations(files: &[(String, String)], lib_doc: &str) -> Vec<String> {
    let layer = layers(lib_doc);
    let known: BTreeSet<ModPath> = files.iter().map(|(rel, _)| module_of(rel)).collect();
    let mut problems = Vec::new();
    let mut file_edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    let mut top_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, source) in files {
        let me = module_of(rel);
        let Some(my_top) = me.first() else {
            continue; // the crate root declares the modules
        };
        let Some(&my_layer) = layer.get(my_top) else {
            problems.push(format!(
                "{rel}: module `{my_top}` is in no layer of lib.rs's table"
            ));
            continue;
        };
        for target in named_modules(&code_of(source), &known) {
            if target == me || target.is_empty() {
                continue;
            }
            let top = &target[0];
            if top != my_top {
                match layer.get(top) {
                    Some(&l) if l > my_layer => problems.push(format!(
                        "{rel} uses `{}` (layer {l}) from layer {my_layer}: an uphill use",
                        target.join("::")
                    )),
                    _ => {}
                }
                top_edges
                    .entry(my_top.clone())
                    .or_default()
                    .insert(top.clone());
            }
            file_edges.entry(me.clone()).or_default().insert(target);
        }
    }
    for cycle in cycles(&top_edges) {
        problems.push(format!(
            "the modules {} use each other in a loop",
            cycle.join(" → ")
        ));
    }
    for cycle in cycles(&file_edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        problems.push(format!(
            "the files of {} use each other in a loop",
            names.join(" → ")
        ));
    }
    problems
}

/// The strongly connected groups of more than one node (Tarjan), each as a sorted list.
fn cycles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct Walk<'a, N> {
        edges: &'a BTreeMap<N, BTreeSet<N>>,
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on_stack: BTreeSet<N>,
        found: Vec<Vec<N>>,
    }
    impl<N: Ord + Clone> Walk<'_, N> {
        fn visit(&mut self, v: &N) {
            let i = self.index.len();
            self.index.insert(v.clone(), i);
            self.low.insert(v.clone(), i);
            self.stack.push(v.clone());
            self.on_stack.insert(v.clone());
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(&w);
                    let done = &w == v;
                    group.push(w);
                    if done {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

/// Every `.rs` file under `dir`, as (path relative to `src/`, content); test files, this
/// file and the binary's `main.rs` are left out.
fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            read_tree(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path
                .file_name()
                .is_some_and(|n| n != "tests.rs" && n != "main.rs")
            && path != root.join("layers.rs")
        {
            let rel = path
                .strip_prefix(root)
                .expect("under src")
                .to_string_lossy();
            out.push((
                rel.into_owned(),
                std::fs::read_to_string(&path).expect("utf-8"),
            ));
        }
    }
}

#[test]
fn the_crate_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    files.sort();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let table = layers(&lib);
    assert!(
        table.len() >= 20,
        "lib.rs's layer table is missing: {table:?}"
    );
    // Every top-level module is in the table, and the table names no module that is gone.
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|(r, _)| module_of(r).first().cloned())
        .collect();
    for name in table.keys() {
        assert!(
            tops.contains(name),
            "lib.rs's layer table names `{name}`, which is no module"
        );
    }
    let problems = violations(&files, &lib);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn uphill_uses_and_loops_are_found() {
    let doc =
        "//! 0. `low` — the floor\n//! 1. `mid`, `side` — the middle\n//! 2. `high` — the top\n";
    let file = |rel: &str, src: &str| (rel.to_string(), src.to_string());
    let clean = [
        file("low.rs", "pub struct L;\n"),
        file("mid/mod.rs", "mod inner;\nuse crate::low::L;\n"),
        file("mid/inner.rs", "use crate::{low::L, side};\n"),
        file("side.rs", "pub fn f() { crate::low::L; }\n"),
        file(
            "high.rs",
            "use crate::mid::inner;\n#[cfg(test)]\nmod tests {\n    use crate::high;\n}\n",
        ),
    ];
    assert_eq!(violations(&clean, doc), Vec::<String>::new());

    // A floor module reaching up, in a brace list and inline; a comment does not count.
    let uphill = [
        file(
            "low.rs",
            "// crate::high::H is not an import\nuse crate::{mid};\n",
        ),
        file("mid.rs", "fn f() { crate::high::g() }\n"),
        file("high.rs", "pub fn g() {}\n"),
    ];
    let problems = violations(&uphill, doc);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("low.rs uses `mid` (layer 1) from layer 0"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("mid.rs uses `high` (layer 2)"),
        "{problems:?}"
    );

    // Two modules of one layer using each other, and two files of one module.
    let looped = [
        file("mid.rs", "use crate::side::S;\n"),
        file("side.rs", "use crate::mid::M;\n"),
        file("high/a.rs", "use crate::high::b::B;\n"),
        file("high/b.rs", "use crate::high::a::A;\n"),
        file("high/mod.rs", "mod a;\nmod b;\n"),
    ];
    let problems = violations(&looped, doc);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("mid → side") && p.contains("modules")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("high::a → high::b")),
        "{problems:?}"
    );

    // A module the table does not place.
    let unplaced = [file("stray.rs", "")];
    assert!(violations(&unplaced, doc)[0].contains("in no layer"));
}
