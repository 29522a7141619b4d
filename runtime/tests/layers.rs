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

/// The first path segment after each `crate::`, including every item of a `crate::{...}`
/// group (nested groups name deeper segments, which do not matter here).
fn crate_roots(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start => {
                        out.push(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
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
    assert_eq!(crate_roots(text), ["node", "start", "operate"]);
}
