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

/// The modules of `src/` (`files::write`, `plan`, `graph::batch`, `cli`) and the modules
/// each uses through `crate::…` paths, test modules aside. A module is its file's path
/// below `src/`, `mod.rs` being its folder's; a path to an item of a folder's own module
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
    let module_of = |p: &Path| -> String {
        let rel = p.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|l| l == "mod") {
            parts.pop();
        }
        parts.join("::")
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        if me == "lib" || me == "main" || me.ends_with("::tests") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let deps = out.entry(me.clone()).or_default();
        for line in code.lines().map(|l| l.split("//").next().unwrap()) {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + 7..];
                // The longest path of modules that `crate::a::b::…` (or `crate::a::{b, c}`)
                // names.
                let groups: Vec<String> = match rest.split_once('{') {
                    Some((head, group)) if !head.contains(|c: char| c.is_whitespace() || c == '(') => {
                        let inner = group.split('}').next().unwrap();
                        inner.split(',').map(|x| format!("{head}{}", x.trim())).collect()
                    }
                    _ => {
                        vec![rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect()]
                    }
                };
                for path in groups {
                    let mut best = String::new();
                    let mut at = String::new();
                    for seg in path.split("::").filter(|s| !s.is_empty()) {
                        if !at.is_empty() {
                            at.push_str("::");
                        }
                        at.push_str(seg);
                        if modules.contains(&at) {
                            best.clone_from(&at);
                        } else {
                            break;
                        }
                    }
                    if !best.is_empty() {
                        deps.insert(best);
                    }
                }
            }
        }
        deps.retain(|d| *d != me);
    }
    // `use crate::{a, b::{c, d}}` over several lines is not in this code base; `use` lists
    // that span lines would need a real parser.
    out
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
    // No two folders use each other, and no two modules.
    cycles(&units, &mut problems);
    cycles(&modules, &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(modules.len() > 40 && units.len() == 11, "the scan found the modules: {units:?}");
}

#[test]
fn the_scan_sees_paths_into_folders() {
    let g = graph();
    assert!(g["cmd::sync"].contains("files::write"), "{:?}", g["cmd::sync"]);
    assert!(g["cmd::sync"].contains("plan::patch"), "{:?}", g["cmd::sync"]);
    assert!(g["plan::guard"].contains("plan"), "an item of plan/mod.rs is plan's: {:?}", g["plan::guard"]);
}
