//! The module tree is the architecture: each layer imports only those below
//! it, and no source file depends on itself through others. Needs no root.
//!
//! cli (src/main.rs) → agent → control, observe → datapath → sys;
//! model, bpf and output are usable by all and import nothing above them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layer of a module path under src/ ("control/store", "bpf", ...).
fn layer(module: &str) -> &str {
    module.split('/').next().unwrap()
}

/// What each layer may import, besides itself.
fn allowed(from: &str) -> &'static [&'static str] {
    match from {
        "bpf" | "output" => &[],
        "model" => &["bpf"],
        "sys" => &["bpf", "output"],
        "datapath" => &["sys", "model", "bpf", "output"],
        "control" | "observe" => &["datapath", "sys", "model", "bpf", "output"],
        "agent" => &[
            "control", "observe", "datapath", "sys", "model", "bpf", "output",
        ],
        other => panic!("unknown layer {other}: add it here and to src/lib.rs"),
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().unwrap() != "bin" && p.file_name().unwrap() != "bpf" {
                sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// "src/control/store.rs" -> "control/store"; mod.rs names its directory.
fn module_of(src: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(src).unwrap().with_extension("");
    let s = rel.to_string_lossy().to_string();
    s.strip_suffix("/mod").unwrap_or(&s).to_string()
}

/// The modules a file names with `crate::a::b` (longest path that is a
/// module of the crate).
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    // Code only: a doc link is not an import.
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.as_str();
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        for n in (1..=parts.len()).rev() {
            let m = parts[..n].join("/");
            if modules.contains(&m) {
                out.insert(m);
                break;
            }
        }
    }
    // `use crate::x::{a, b}`: the braces name submodules too.
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("use crate::"))
    {
        if let Some((head, tail)) = line.split_once("::{") {
            let base = head
                .trim_start()
                .trim_start_matches("use crate::")
                .replace("::", "/");
            for item in tail.trim_end_matches("};").split(',') {
                let m = format!("{base}/{}", item.trim());
                if modules.contains(&m) {
                    out.insert(m);
                }
            }
        }
    }
    out
}

#[test]
fn layers_import_only_downwards_and_no_file_depends_on_itself() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.retain(|p| !matches!(p.file_name().unwrap().to_str(), Some("lib.rs" | "main.rs")));
    let modules: BTreeSet<String> = files.iter().map(|p| module_of(&src, p)).collect();
    // A test-only file (`x_tests.rs`, included by x.rs) is a leaf: nothing
    // imports it, so it is its own node.
    let owner = |m: &str| m.to_string();

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for p in &files {
        let m = module_of(&src, p);
        let deps = imports(&fs::read_to_string(p).unwrap(), &modules);
        for d in &deps {
            let (from, to) = (layer(&m), layer(d));
            if from != to && !allowed(from).contains(&to) {
                wrong.push(format!("{m} imports {d} ({from} may not import {to})"));
            }
        }
        graph.entry(owner(&m)).or_default().extend(
            deps.into_iter()
                .map(|d| owner(&d))
                .filter(|d| *d != owner(&m)),
        );
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );

    // A cycle among files: depth-first search for a back edge.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap();
                let mut cycle = path[at..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, &graph, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
    // The check sees the imports it must: the write engine uses the maps.
    assert!(
        graph["control/store"].contains("datapath/maps"),
        "{graph:?}"
    );
}
