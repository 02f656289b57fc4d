//! The folders of `src/` are the layers CONTRIBUTING.md's "Architecture" lists: each uses
//! only the folders (and root modules) of the layers before it, no two of them use each
//! other, and no two modules anywhere do (test modules aside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers of units: a folder of `src/` (`model`, `files`, …) or a module at its root (`cli`,
/// `error`, `app`). Each unit uses only units of layers before it, or of its own layer
/// without a cycle.
const LAYERS: &[&[&str]] =
    &[&["ui", "model", "cli"], &["error"], &["files"], &["config"], &["plan", "graph"], &["run"], &["cmd"], &["app"]];

/// The modules of `src/` and the modules each uses, test modules aside. A module is a file
/// at the root (`cli`), or in a folder (`files::write`; a folder's `mod.rs` is the folder's
/// own module, `plan`, `graph`); a file deeper down (`run::alert::send`) is part of its
/// folder's module (`run::alert`). A module uses another when its code names it by a
/// `crate::` path (`use` trees and lists across lines included), a `super::` path, or a path
/// that starts at one of its own submodules. A path to an item of a folder's own module
/// (`crate::plan::plan`) is that folder's module.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    // A file's path below src/, as module segments (`mod.rs` is its folder).
    let segments = |p: &Path| -> Vec<String> {
        let rel = p.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|l| l == "mod") {
            parts.pop();
        }
        parts
    };
    let files: Vec<_> = files.into_iter().filter(|f| !segments(f).iter().any(|s| s == "tests")).collect();
    let all: BTreeSet<String> = files.iter().map(|f| segments(f).join("::")).collect();
    let module_of = |segs: &[String]| segs.iter().take(2).cloned().collect::<Vec<_>>().join("::");
    // The module that a path of segments names: its longest prefix that is a file's module,
    // cut to the module the file is part of.
    let resolve = |path: &[String]| -> Option<String> {
        let mut best = None;
        for n in 1..=path.len() {
            if all.contains(&path[..n].join("::")) {
                best = Some(module_of(&path[..n]));
            }
        }
        best
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let segs = segments(f);
        let me = module_of(&segs);
        if me == "lib" || me == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let code: String =
            without_test_modules(&text).lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join(" ");
        let deps = out.entry(me.clone()).or_default();
        for path in paths(&code) {
            let (head, rest) = path.split_first().unwrap();
            let full: Vec<String> = match head.as_str() {
                "crate" => rest.to_vec(),
                "super" => {
                    let mut base = segs[..segs.len() - 1].to_vec();
                    let mut rest = rest;
                    while let Some(("super", r)) = rest.split_first().map(|(h, r)| (h.as_str(), r)) {
                        base.pop();
                        rest = r;
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                // A path from one of this file's own submodules.
                child if all.contains(&[segs.join("::"), child.to_owned()].join("::")) => {
                    segs.iter().cloned().chain(path.iter().cloned()).collect()
                }
                _ => continue,
            };
            if let Some(m) = resolve(&full) {
                deps.insert(m);
            }
        }
        deps.retain(|d| *d != me);
    }
    out
}

/// `text` without its inline test modules (`#[cfg(test)] mod tests { … }`), which may use
/// anything.
fn without_test_modules(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let test_module = line.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| {
                let n = next.trim_start().trim_start_matches("pub(crate) ");
                n.starts_with("mod ") && n.trim_end().ends_with('{')
            });
        if test_module {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every path in `code` that starts with `crate::`, `super::` or `name::`, with `use` trees
/// (`a::{b, c::{d, e}}`) expanded: each a list of segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
        if word_start && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
            let (trees, end) = tree(b, i);
            out.extend(trees.into_iter().filter(|t| t.len() > 1));
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The use tree at `b[i..]`: its paths, and where it ends.
fn tree(b: &[u8], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let skip_space = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut prefix = Vec::new();
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i == start {
            break;
        }
        prefix.push(String::from_utf8_lossy(&b[start..i]).into_owned());
        if b[i..].starts_with(b"::") {
            i += 2;
            skip_space(&mut i);
            if b.get(i) == Some(&b'{') {
                i += 1;
                let mut out = Vec::new();
                loop {
                    skip_space(&mut i);
                    match b.get(i) {
                        Some(b'}') => return (out, i + 1),
                        Some(b',') => i += 1,
                        None => return (out, i),
                        Some(_) => {
                            let (sub, end) = tree(b, i);
                            out.extend(sub.into_iter().map(|s| prefix.iter().cloned().chain(s).collect()));
                            i = end.max(i + 1);
                        }
                    }
                }
            }
        } else {
            break;
        }
    }
    (vec![prefix], i)
}

/// The unit of a module: its folder, or itself at the root.
fn unit(module: &str) -> &str {
    module.split("::").next().unwrap()
}

/// Finds cycles by a depth-first search for back edges.
fn visit<'a>(
    m: &'a str,
    g: &'a BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    problems: &mut Vec<String>,
) {
    if let Some(i) = path.iter().position(|p| *p == m) {
        problems.push(format!("cycle: {} -> {m}", path[i..].join(" -> ")));
        return;
    }
    if !done.insert(m) {
        return;
    }
    path.push(m);
    for d in g.get(m).into_iter().flatten() {
        visit(d, g, path, done, problems);
    }
    path.pop();
}

fn cycles(g: &BTreeMap<String, BTreeSet<String>>, problems: &mut Vec<String>) {
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(m, g, &mut Vec::new(), &mut done, problems);
    }
}

#[test]
fn folders_and_modules_use_each_other_layer_by_layer_without_cycles() {
    let modules = graph();
    let mut units: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in &modules {
        let u = units.entry(unit(m).to_owned()).or_default();
        u.extend(deps.iter().map(|d| unit(d).to_owned()).filter(|d| d != unit(m)));
    }
    let layer_of: BTreeMap<&str, usize> =
        LAYERS.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (*m, i))).collect();
    let mut problems = Vec::new();
    for (u, deps) in &units {
        let Some(&lu) = layer_of.get(u.as_str()) else {
            problems.push(format!("{u} is in no layer: add it to LAYERS and CONTRIBUTING.md"));
            continue;
        };
        for d in deps {
            match layer_of.get(d.as_str()) {
                Some(&ld) if ld > lu => problems.push(format!("{u} (layer {}) uses {d} (layer {})", lu + 1, ld + 1)),
                None => problems.push(format!("{u} uses {d}, which is in no layer")),
                _ => {}
            }
        }
    }
    // No two folders use each other, and no two modules: a folder's own module (`graph`,
    // `plan`) and the modules beside it are one piece (a parent re-exports what its
    // children make, and they use its types), as a file is with its submodules.
    cycles(&units, &mut problems);
    let siblings: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(m, deps)| {
            (m.clone(), deps.iter().filter(|d| unit(d) != m.as_str() && unit(m) != d.as_str()).cloned().collect())
        })
        .collect();
    cycles(&siblings, &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(modules.len() > 40 && units.len() == 11, "the scan found the modules: {units:?}");
}

/// CONTRIBUTING.md's layer table is `LAYERS`, and each folder's row lists every module in
/// it: the table a newcomer reads cannot drift from the layers this file checks.
#[test]
fn contributing_lists_these_layers_and_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("CONTRIBUTING.md")).unwrap();
    let architecture = &text[text.find("## Architecture").unwrap()..];
    let rows =
        architecture.lines().skip_while(|l| !l.starts_with("| layer")).skip(2).take_while(|l| l.starts_with('|'));
    let mut table: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let unit = cells[2].trim_matches('`');
        let folder = unit.strip_suffix('/');
        let unit = folder.unwrap_or_else(|| unit.strip_suffix(".rs").unwrap());
        table.entry(cells[1].parse().unwrap()).or_default().insert(unit.to_owned());
        let Some(folder) = folder else { continue };
        // Each listed module is the first `name` of its item: "`plan` (its `mod.rs`)".
        let listed: BTreeSet<String> =
            cells[3].split(", ").map(|m| m.split('`').nth(1).unwrap().to_owned()).filter(|m| m != folder).collect();
        let present: BTreeSet<String> = std::fs::read_dir(root.join("src").join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .filter(|m| m != "mod")
            .collect();
        assert_eq!(listed, present, "CONTRIBUTING.md's row of `{folder}/` against src/{folder}/");
    }
    let layers: Vec<BTreeSet<String>> = LAYERS.iter().map(|l| l.iter().map(|u| (*u).to_owned()).collect()).collect();
    assert_eq!(table.into_values().collect::<Vec<_>>(), layers, "CONTRIBUTING.md's layers against LAYERS");
}

#[test]
fn the_scan_sees_paths_into_folders() {
    let g = graph();
    assert!(g["cmd::sync"].contains("files::write"), "{:?}", g["cmd::sync"]);
    assert!(g["cmd::sync"].contains("plan::patch"), "{:?}", g["cmd::sync"]);
    assert!(g["plan::guard"].contains("plan"), "an item of plan/mod.rs is plan's: {:?}", g["plan::guard"]);
    assert!(g["graph::batch"].contains("graph"), "super:: is seen: {:?}", g["graph::batch"]);
    assert!(g["graph"].contains("graph::batch"), "a path from a submodule is seen: {:?}", g["graph"]);
    assert!(!g.contains_key("run::alert::send"), "a deeper file is part of its folder's module");
}

#[test]
fn use_trees_across_lines_are_expanded() {
    let code = "use crate::{\n files::{lock, write},\n model::ids::GroupId,\n}; let x = super::y::z(); f(a, b);";
    let got: Vec<String> = paths(code).iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["crate::files::lock", "crate::files::write", "crate::model::ids::GroupId", "super::y::z"],);
}
