//! The modules of `src/` (test modules aside) import each other without cycles, in the
//! layers CONTRIBUTING.md's "Architecture" lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it uses (`crate::x`, `use crate::{x, …}`,
/// and `super::` from a submodule, which is its own module).
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
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let deps = out.entry(top.clone()).or_default();
        for line in code.lines().map(|l| l.split("//").next().unwrap()) {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + 7..];
                if let Some(group) = rest.strip_prefix('{') {
                    let inner = group.split('}').next().unwrap();
                    deps.extend(inner.split(',').filter_map(|x| x.trim().split("::").next()).map(str::to_owned));
                } else {
                    let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    deps.insert(name);
                }
            }
        }
        deps.retain(|d| !d.is_empty() && *d != top);
    }
    // `use crate::{a, b::{c, d}}` over several lines is not in this code base; `use` lists
    // that span lines would need a real parser.
    out
}

/// Modules in layers: each uses only modules of layers before it (or of its own layer,
/// without cycles).
const LAYERS: &[&[&str]] = &[
    &[
        "cli",
        "ids",
        "output",
        "normalize",
        "date",
        "cfgfile",
        "secret",
        "error",
        "trust",
        "resolve",
        "judged",
        "progress",
        "log",
    ],
    &["page", "roster", "credential", "endpoints", "write", "lock", "delta_state"],
    &["config", "entraidconf", "instance"],
    &["render", "plan", "patch", "guard"],
    &["graph", "node", "state"],
    &["report", "metrics", "alert", "fetch", "memo"],
    &["start"],
    &["sync", "check", "testquery", "alert_test", "generate"],
    &["app"],
];

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

#[test]
fn modules_import_each_other_layer_by_layer_without_cycles() {
    let g = graph();
    let layer_of: BTreeMap<&str, usize> =
        LAYERS.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (*m, i))).collect();
    let mut problems = Vec::new();
    for (m, deps) in &g {
        let Some(&lm) = layer_of.get(m.as_str()) else {
            problems.push(format!("{m} is in no layer: add it to LAYERS and CONTRIBUTING.md"));
            continue;
        };
        for d in deps {
            match layer_of.get(d.as_str()) {
                Some(&ld) if ld > lm => problems.push(format!("{m} (layer {}) uses {d} (layer {})", lm + 1, ld + 1)),
                None => problems.push(format!("{m} uses {d}, which is in no layer")),
                _ => {}
            }
        }
    }
    // Within a layer: no cycle.
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(m, &g, &mut Vec::new(), &mut done, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(g.len() > 30, "the module scan found the modules");
}
