//! The edge's layers run one way: no import cycle spans more than a
//! top-level module and its children. Reads the sources, so a new
//! back-edge fails here with the cycle named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules each top-level module's files name (`crate::x`).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let uses = g.entry(top.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != top {
                uses.insert(name);
            }
        }
        // `use crate::{a, b}`
        for (i, _) in text.match_indices("crate::{") {
            let list: String = text[i + 8..].chars().take_while(|c| *c != '}').collect();
            for name in list.split(',').map(|s| s.trim().split("::").next().unwrap_or("").to_string()) {
                if !name.is_empty() && name != top {
                    uses.insert(name);
                }
            }
        }
    }
    g
}

/// A cycle through `from`, as the path of modules, if there is one.
fn cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    at: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == at) {
        let mut c = path[i..].to_vec();
        c.push(at.to_string());
        return Some(c);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at.to_string());
    for next in g.get(at).into_iter().flatten() {
        if let Some(c) = cycle(g, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(at.to_string());
    None
}

#[test]
fn the_layers_run_one_way() {
    let g = graph();
    for must in ["core", "realtime", "transport", "ws", "sio", "rest"] {
        assert!(g.contains_key(must), "no `{must}` layer: {:?}", g.keys());
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = cycle(&g, m, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
    // The core is below everything that knows of connections or protocols.
    let core = &g["core"];
    for above in ["realtime", "transport", "ws", "sio", "rest", "token", "app", "health"] {
        assert!(!core.contains(above), "core uses {above}");
    }
    for proto in ["ws", "sio", "rest"] {
        assert!(!g["realtime"].contains(proto), "realtime uses the protocol {proto}");
    }
}
