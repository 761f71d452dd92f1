//! Checks of the module structure (see ARCHITECTURE.md): no module imports a module that imports
//! it back, and the layers below the HTTP API never import it. Read from the source files, so a
//! new `use crate::...` that breaks a rule fails `cargo test` with the offending path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that must never depend on `api` (the HTTP layer sits on top of them).
const BELOW_THE_API: &[&str] = &[
    "store",
    "refresh",
    "connectors",
    "cli",
    "token",
    "domain",
    "config",
];

/// The production code of a file: what comes before its `#[cfg(test)]` module (tests may reach
/// anywhere).
fn production_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

/// The top-level modules of `src/` and the files that make each of them.
fn modules(src: &Path) -> BTreeMap<String, Vec<std::path::PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable") {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut files = Vec::new();
            let mut stack = vec![path];
            while let Some(dir) = stack.pop() {
                for e in std::fs::read_dir(dir).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        files.push(p);
                    }
                }
            }
            modules.insert(name, files);
        } else if path.extension().is_some_and(|x| x == "rs")
            && !["lib", "main", "architecture"].contains(&name.as_str())
        {
            modules.insert(name, vec![path]);
        }
    }
    modules
}

/// For each module, the other top-level modules its production code names as `crate::x`.
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, files)| {
            let mut deps = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(file).unwrap();
                for (i, _) in production_code(&text).match_indices("crate::") {
                    let rest = &text[i + "crate::".len()..];
                    let dep: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if dep != *name && names.contains(&dep) {
                        deps.insert(dep);
                    }
                }
            }
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    let last = path.last().cloned().unwrap_or_else(|| start.to_string());
    for next in graph.get(&last).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_string());
            return Some(cycle);
        }
        if !path.contains(next) && next.as_str() > start {
            path.push(next.clone());
            if let Some(c) = cycle_from(graph, start, path) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let graph = dependencies(&src());
    assert!(graph.contains_key("api") && graph.contains_key("store"));
    for start in graph.keys() {
        let mut path = vec![start.clone()];
        if let Some(cycle) = cycle_from(&graph, start, &mut path) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_layers_below_the_api_never_import_it() {
    let graph = dependencies(&src());
    for module in BELOW_THE_API {
        if let Some(deps) = graph.get(*module) {
            assert!(
                !deps.contains("api"),
                "src/{module} imports crate::api; move what it needs below the HTTP layer"
            );
        }
    }
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    let dir = std::env::temp_dir().join(format!("tokenbox-arch-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("a/mod.rs"), "use crate::b::X;").unwrap();
    std::fs::write(
        dir.join("b.rs"),
        "use crate::a::Y;\n#[cfg(test)]\nuse crate::c::Z;",
    )
    .unwrap();
    std::fs::write(dir.join("c.rs"), "use crate::a::Y;").unwrap();
    let graph = dependencies(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        graph["b"],
        BTreeSet::from(["a".to_string()]),
        "test code is skipped"
    );
    let mut path = vec!["a".to_string()];
    assert_eq!(
        cycle_from(&graph, "a", &mut path),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
