//! The library's folders are layers (lib.rs): `node` at the bottom, then `enforce`, `start`
//! and `operate`. A module may use its own layer and the ones below, never one above. This
//! reads every source file and checks each `crate::...` path it names.
use std::path::{Path, PathBuf};

/// Layers bottom to top; `error` gathers every layer's error for the binaries and the edges
/// (`start`, `operate`), so only they may name it.
const LAYERS: [&str; 4] = ["node", "enforce", "start", "operate"];

fn rank(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == name)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every path named after `crate::`, as segments, with `crate::{...}` groups (nested ones
/// too) expanded and `self` in a group standing for the group's own path.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let consumed = expand(rest, Vec::new(), &mut out);
        rest = &rest[consumed..];
    }
    out
}

/// Reads one path (possibly a group) from the start of `text` below `prefix`; returns how many
/// bytes it read.
fn expand(text: &str, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut i = 0;
    loop {
        let ident: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        i += ident.len();
        if !ident.is_empty() && ident != "self" {
            prefix.push(ident);
        }
        if text[i..].starts_with("::{") {
            i += 3;
            loop {
                i += text[i..].len() - text[i..].trim_start().len();
                if text[i..].starts_with('}') {
                    return i + 1;
                }
                i += expand(&text[i..], prefix.clone(), out);
                i += text[i..].len() - text[i..].trim_start().len();
                if text[i..].starts_with(',') {
                    i += 1;
                }
            }
        } else if text[i..].starts_with("::") {
            i += 2;
        } else if text[i..].starts_with('{') && prefix.is_empty() {
            // `crate::{...}` itself.
            i += 1;
            loop {
                i += text[i..].len() - text[i..].trim_start().len();
                if text[i..].starts_with('}') || i >= text.len() {
                    return (i + 1).min(text.len());
                }
                i += expand(&text[i..], Vec::new(), out);
                i += text[i..].len() - text[i..].trim_start().len();
                if text[i..].starts_with(',') {
                    i += 1;
                }
            }
        } else {
            if !prefix.is_empty() {
                out.push(prefix);
            }
            return i;
        }
    }
}

/// The first path segment after each `crate::`.
fn crate_roots(text: &str) -> Vec<String> {
    crate_paths(text)
        .into_iter()
        .map(|p| p[0].clone())
        .collect()
}

/// The source file of the deepest module `path` names (the rest are items).
fn module_file(src: &Path, path: &[String]) -> Option<PathBuf> {
    let mut dir = src.to_path_buf();
    let mut found = None;
    for segment in path {
        let file = dir.join(format!("{segment}.rs"));
        let module = dir.join(segment).join("mod.rs");
        if file.is_file() {
            found = Some(file);
        } else if module.is_file() {
            found = Some(module);
        } else {
            break;
        }
        dir = dir.join(segment);
    }
    found
}

#[test]
fn layers_only_use_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut checked = 0;
    for (own, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        sources(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "no sources under src/{layer}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for root in crate_roots(&text) {
                checked += 1;
                let allowed = match (root.as_str(), rank(&root)) {
                    (_, Some(r)) => r <= own,
                    ("error", None) => own >= rank("start").unwrap(),
                    _ => false,
                };
                if !allowed {
                    violations.push(format!(
                        "{} ({layer}) uses crate::{root}",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "found only {checked} crate paths: is the scan broken?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn scanner_sees_groups_and_plain_paths() {
    let text = "use crate::{\n    node::config::Config,\n    start::{spec::Spec, shim},\n};\n\
                let e = crate::operate::gc::run(x);";
    assert_eq!(crate_roots(text), ["node", "start", "start", "operate"]);
}

/// No circle of imports between files: a module whose file uses another that, directly or
/// not, uses it back belongs with it, or what both use belongs below both (as the crate-wide
/// error once wrapped operate's errors while operate's modules used it).
#[test]
fn no_file_imports_itself_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.retain(|f| !f.starts_with(src.join("bin")));
    let edges: std::collections::BTreeMap<PathBuf, std::collections::BTreeSet<PathBuf>> = files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let uses = crate_paths(&text)
                .iter()
                .filter_map(|p| module_file(&src, p))
                .filter(|f| f != file)
                .collect();
            (file.clone(), uses)
        })
        .collect();
    let edge_count: usize = edges.values().map(|u| u.len()).sum();
    assert!(
        edge_count > 50,
        "only {edge_count} imports found: is the scan broken?"
    );
    // Depth-first search; a file met again while on the stack closes a circle.
    fn visit<'a>(
        file: &'a PathBuf,
        edges: &'a std::collections::BTreeMap<PathBuf, std::collections::BTreeSet<PathBuf>>,
        stack: &mut Vec<&'a PathBuf>,
        done: &mut std::collections::BTreeSet<&'a PathBuf>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|f| *f == file) {
            let names: Vec<String> = stack[at..]
                .iter()
                .chain([&file])
                .map(|f| {
                    f.display()
                        .to_string()
                        .replace(concat!(env!("CARGO_MANIFEST_DIR"), "/"), "")
                })
                .collect();
            circles.push(names.join(" -> "));
            return;
        }
        if !done.insert(file) {
            return;
        }
        stack.push(file);
        for next in edges.get(file).into_iter().flatten() {
            visit(next, edges, stack, done, circles);
        }
        stack.pop();
    }
    let (mut done, mut circles) = (std::collections::BTreeSet::new(), Vec::new());
    for file in edges.keys() {
        visit(file, &edges, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn scanner_expands_nested_groups() {
    let text =
        "use crate::{\n    node::{self, config::Config},\n    start::{spec::{Spec, X}, shim},\n};";
    let paths: Vec<String> = crate_paths(text).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "node",
            "node::config::Config",
            "start::spec::Spec",
            "start::spec::X",
            "start::shim"
        ]
    );
}
