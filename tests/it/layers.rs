//! The crate's modules import downward only: each top-level module of `src/`
//! names (`crate::x`) only modules of the layers before its own, in the order
//! `src/lib.rs` documents. A new upward import is a cycle in the making; this
//! test names the file and the module it reached for.

use std::path::{Path, PathBuf};

/// Bottom to top; modules in one layer may use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "time", "nofollow"],
    &["secret"],
    &["keys"],
    &["schedule", "model"],
    &["retention"],
    &["storage"],
    &["archive"],
    &["wal"],
    &["pg"],
    &["report"],
    &["catalog"],
    &["lock"],
    &["notify"],
    &["config"],
    &["jobs"],
    &["engine"],
    &["status"],
    &["daemon"],
    &["cli"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::x` names in code: comments and the unit tests at the end of
/// a file are left out (tests may reach anywhere).
fn named_modules(text: &str) -> Vec<String> {
    let code = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let own = layer(&top).unwrap_or_else(|| {
            panic!("src/{top} is in no layer: add it to LAYERS here and to the list in src/lib.rs")
        });
        let text = std::fs::read_to_string(file).unwrap();
        for module in named_modules(&text) {
            if let Some(theirs) = layer(&module)
                && theirs > own
            {
                upward.push(format!("{} imports crate::{module}", relative.display()));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "imports that point up the layers of src/lib.rs:\n{}",
        upward.join("\n")
    );
}
