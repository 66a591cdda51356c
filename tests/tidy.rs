//! Repository hygiene: every source file says what it owns, and files stay readable in size.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 5);
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! doc: {missing:?}"
    );
}

#[test]
fn source_files_stay_under_900_lines() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let long: Vec<_> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > 900)
        .collect();
    assert!(
        long.is_empty(),
        "split these files by responsibility: {long:?}"
    );
}

fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules named after each `crate::` in `text`, grouped imports included:
/// `use crate::{a, b::c}` names `a` and `b`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top level on commas (nested braces belong to their item).
            let mut depth = 0;
            let mut item_start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(ident(&group[item_start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&group[item_start..j]));
                        item_start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

#[test]
fn grouped_crate_imports_are_seen() {
    assert_eq!(
        crate_paths(
            "use crate::{config::{Role, Stage}, images, ranking::x};\nuse crate::index::Db;"
        ),
        ["config", "images", "ranking", "index"]
    );
}

/// Which top-level modules of `src/` each module refers to (`crate::<module>` anywhere in its
/// files, tests included).
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path.clone());
        } else {
            continue;
        }
        let mut deps = std::collections::BTreeSet::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for module in crate_paths(&text) {
                if module != name {
                    deps.insert(module);
                }
            }
        }
        graph.insert(name, deps);
    }
    graph
}

#[test]
fn modules_depend_one_way_with_no_cycles() {
    let graph = module_graph();
    assert!(graph.contains_key("config") && graph.contains_key("pipeline"));
    // Lower layers must not reach up. Each (module, modules it may never use).
    let forbidden: &[(&str, &[&str])] = &[
        ("config", &["*"]),
        ("images", &["*"]),
        ("ranking", &["*"]),
        ("logging", &["*"]),
        ("files", &["*"]),
        // What makes two runs the same is decided from configuration alone.
        (
            "identity",
            &[
                "serving", "roles", "datasets", "pipeline", "index", "metrics", "runs", "report",
                "record", "cli", "compare", "prompts", "images", "chat",
            ],
        ),
        (
            "serving",
            &[
                "datasets", "roles", "pipeline", "index", "metrics", "runs", "report", "record",
                "cli",
            ],
        ),
        (
            "roles",
            &[
                "serving", "datasets", "pipeline", "index", "metrics", "runs", "report", "record",
                "cli",
            ],
        ),
        (
            "chat",
            &[
                "config", "serving", "roles", "datasets", "pipeline", "index", "metrics", "runs",
                "report", "record", "cli", "compare", "prompts",
            ],
        ),
        (
            "datasets",
            &[
                "serving", "roles", "pipeline", "index", "metrics", "runs", "report", "record",
                "cli",
            ],
        ),
        (
            "metrics",
            &[
                "serving", "roles", "pipeline", "index", "runs", "report", "record", "cli",
                "compare",
            ],
        ),
        ("record", &["pipeline", "runs", "report", "cli", "index"]),
        ("runs", &["pipeline", "report", "cli", "serving"]),
        // The report reads a run folder's journal through `runs`, as `compare` does.
        (
            "report",
            &["pipeline", "cli", "serving", "index", "roles", "compare"],
        ),
        (
            "compare",
            &["pipeline", "cli", "serving", "index", "roles", "report"],
        ),
        (
            "index",
            &["pipeline", "runs", "report", "record", "cli", "metrics"],
        ),
        ("pipeline", &["report", "cli"]),
    ];
    let mut wrong = Vec::new();
    for (module, never) in forbidden {
        for dep in graph.get(*module).into_iter().flatten() {
            if never.contains(&"*") || never.contains(&dep.as_str()) {
                wrong.push(format!("{module} uses {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken: {wrong:?}");
    // And no cycle anywhere: depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        graph: &'a std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|x| *x == m) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m) {
            return None;
        }
        stack.push(m);
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}
