//! Holds the workspace's layering (docs/DESIGN.md draws it): which of our
//! crates may depend on which, and, inside the node and the proxy, which
//! top-level module may import which. A module may import its own
//! submodules and any module of a lower layer; never one of a higher layer
//! or a sibling of its own layer. Each top-level module's `//!` doc says
//! what it must not import.
//!
//! The check reads the sources as text: every `crate::…` path (grouped
//! `use crate::{a, b}` included) and every `super::…` path that climbs out
//! of its top-level module, outside comments. The crates' dependencies come
//! from their `Cargo.toml` `[dependencies]` tables (dev-dependencies may
//! reach further: tests can use anything). The unit tests at the bottom
//! show that each rule can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate of ours, the crates of ours it may depend on, and the
/// outside crates it must not (what keeps it synchronous, free of I/O or
/// free of the protocol, as its doc says).
const CRATES: &[(&str, &[&str], &[&str])] = &[
    ("protocol", &[], &["tokio", "tokio-util", "reqwest", "axum"]),
    ("vbmap", &[], &["tokio", "tokio-util", "reqwest", "axum"]),
    (
        "engine",
        &[],
        &[
            "tokio",
            "tokio-util",
            "reqwest",
            "axum",
            "fjall",
            "shoal-protocol",
        ],
    ),
    (
        "persist",
        &["shoal-engine"],
        &["tokio", "tokio-util", "reqwest", "axum", "shoal-protocol"],
    ),
    ("net", &[], &[]),
    ("auth", &[], &["tokio", "tokio-util", "reqwest", "axum"]),
    (
        "node",
        &[
            "shoal-protocol",
            "shoal-vbmap",
            "shoal-engine",
            "shoal-persist",
            "shoal-net",
            "shoal-auth",
        ],
        &["shoal-proxy"],
    ),
    (
        "proxy",
        &["shoal-protocol", "shoal-vbmap", "shoal-net", "shoal-auth"],
        &["shoal-node", "shoal-engine", "shoal-persist"],
    ),
];

/// The node's top-level modules, lowest layer first.
const NODE_LAYERS: &[&[&str]] = &[
    &["config", "version", "access", "transport", "host_memory"],
    &["bucket"],
    &["server", "replication"],
    &["cluster_view"],
    &["manager"],
    &["admin"],
    &["node"],
];

/// The proxy's top-level modules, lowest layer first.
const PROXY_LAYERS: &[&[&str]] = &[
    &["stats", "downstream"],
    &["config", "routing"],
    &["shared"],
    &["watcher", "session", "admin"],
    &["server"],
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crates_depend_only_on_what_they_may() {
    let mut broken = Vec::new();
    for (dir, allowed, forbidden) in CRATES {
        let manifest = std::fs::read_to_string(workspace().join(dir).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{dir}/Cargo.toml: {e}"));
        broken.extend(dependency_violations(dir, &manifest, allowed, forbidden));
    }
    assert!(
        broken.is_empty(),
        "crate dependencies:\n{}",
        broken.join("\n")
    );
}

#[test]
fn node_modules_import_only_lower_layers() {
    let broken = crate_violations("node", NODE_LAYERS);
    assert!(broken.is_empty(), "node layering:\n{}", broken.join("\n"));
}

#[test]
fn proxy_modules_import_only_lower_layers() {
    let broken = crate_violations("proxy", PROXY_LAYERS);
    assert!(broken.is_empty(), "proxy layering:\n{}", broken.join("\n"));
}

/// Every rule broken by the sources of crate `dir` under `layers`.
fn crate_violations(dir: &str, layers: &[&[&str]]) -> Vec<String> {
    let src = workspace().join(dir).join("src");
    let files = rust_files(&src);
    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read source");
            (
                path.strip_prefix(&src).expect("under src").to_path_buf(),
                text,
            )
        })
        .collect();
    let mut broken = layering_violations(layers, &sources);
    broken.extend(doc_violations(layers, &sources));
    broken
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// === the rules, on text ===

/// Breaches of `allowed`/`forbidden` in a manifest's `[dependencies]`.
fn dependency_violations(
    krate: &str,
    manifest: &str,
    allowed: &[&str],
    forbidden: &[&str],
) -> Vec<String> {
    dependencies(manifest)
        .into_iter()
        .filter_map(|dep| {
            if forbidden.contains(&dep.as_str()) {
                Some(format!("{krate} depends on {dep}, which it must not"))
            } else if dep.starts_with("shoal-") && !allowed.contains(&dep.as_str()) {
                Some(format!("{krate} depends on {dep}, which is not below it"))
            } else {
                None
            }
        })
        .collect()
}

/// The names in a manifest's `[dependencies]` table.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_table = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[dependencies]";
            continue;
        }
        if in_table {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim();
                if !name.is_empty() && !name.starts_with('#') {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

/// Each import of a top-level module by another that `layers` forbids, and
/// each top-level module that has no layer. `sources` are paths relative
/// to `src/` with their text.
fn layering_violations(layers: &[&[&str]], sources: &[(PathBuf, String)]) -> Vec<String> {
    let layer_of: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, mods)| mods.iter().map(move |m| (*m, i)))
        .collect();
    let reexports = sources
        .iter()
        .find(|(path, _)| path == Path::new("lib.rs"))
        .map(|(_, text)| root_reexports(text))
        .unwrap_or_default();
    let mut broken = Vec::new();
    for (path, text) in sources {
        let module_path = module_path(path);
        let Some(top) = module_path.first() else {
            continue; // lib.rs: the root re-exports, it imports nothing
        };
        let Some(&own) = layer_of.get(top.as_str()) else {
            broken.push(format!("{}: module `{top}` has no layer", path.display()));
            continue;
        };
        for target in imported_modules(&module_path, &strip_comments(text)) {
            let target = reexports.get(&target).cloned().unwrap_or(target);
            if target == *top {
                continue;
            }
            match layer_of.get(target.as_str()) {
                Some(&layer) if layer < own => {}
                Some(&layer) => broken.push(format!(
                    "{}: `{top}` (layer {own}) imports `{target}` (layer {layer}), {}",
                    path.display(),
                    if layer == own {
                        "a sibling"
                    } else {
                        "a layer above it"
                    }
                )),
                None => broken.push(format!(
                    "{}: `{top}` imports `crate::{target}`, which has no layer",
                    path.display()
                )),
            }
        }
    }
    broken
}

/// Top-level modules without a file, and those below the top layer (the
/// wiring, which may import everything) whose `//!` doc does not say what
/// they must not import (or that they import nothing).
fn doc_violations(layers: &[&[&str]], sources: &[(PathBuf, String)]) -> Vec<String> {
    let mut broken = Vec::new();
    let top = layers.len().saturating_sub(1);
    for (layer, module) in layers
        .iter()
        .enumerate()
        .flat_map(|(i, mods)| mods.iter().map(move |m| (i, m)))
    {
        let file = sources.iter().find(|(path, _)| {
            *path == Path::new(&format!("{module}.rs")) || *path == Path::new(module).join("mod.rs")
        });
        let Some((path, text)) = file else {
            broken.push(format!("module `{module}` has a layer but no file"));
            continue;
        };
        if layer == top {
            continue;
        }
        let doc: String = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        if !doc.contains("must not import") && !doc.contains("imports nothing") {
            broken.push(format!(
                "{}: the `//!` doc does not say what `{module}` must not import",
                path.display()
            ));
        }
    }
    broken
}

/// The module path of a file relative to `src/`: `server/ascii.rs` →
/// `[server, ascii]`, `server/mod.rs` → `[server]`, `lib.rs` → `[]`.
fn module_path(path: &Path) -> Vec<String> {
    let mut parts: Vec<String> = path
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// Root names re-exported by `lib.rs` (`pub use config::NodeConfig;`) →
/// the module they come from.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in lib.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.trim_end_matches(';').split_once("::") else {
            continue;
        };
        let names = names.trim_matches(|c| c == '{' || c == '}');
        for name in names.split(',') {
            let name = name.trim().rsplit(' ').next().unwrap_or("");
            if !name.is_empty() {
                map.insert(name.to_string(), module.to_string());
            }
        }
    }
    map
}

/// The text without `//` comments (doc comments included) or string
/// literals' contents, so neither counts as an import.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut prev = '\0';
        let mut kept = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if in_string {
                if c == '"' && prev != '\\' {
                    in_string = false;
                    kept.push('"');
                }
            } else if c == '\'' && chars.get(i + 1) == Some(&'"') && chars.get(i + 2) == Some(&'\'')
            {
                // The char literal '"' opens no string.
                i += 3;
                continue;
            } else if c == '"' {
                in_string = true;
                kept.push('"');
            } else if c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            } else {
                kept.push(c);
            }
            prev = if prev == '\\' && c == '\\' { '\0' } else { c };
            i += 1;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// The top-level modules `text` (a file whose module path is `at`) refers
/// to through `crate::` and `super::` paths.
fn imported_modules(at: &[String], text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `shoal_crate::` or the like
        }
        found.extend(first_segments(&text[i + "crate::".len()..]));
    }
    for (i, _) in text.match_indices("super::") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // counted with the chain's first `super::`
        }
        let mut rest = &text[i..];
        let mut climbs = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = r;
        }
        // A file's own module path is `at`, one level deeper inside each
        // inline `mod x {` opened before this point (test modules, at the
        // end of a file); `super::` climbs from there.
        let depth = at.len() + inline_modules(&text[..i]);
        if climbs >= depth {
            found.extend(first_segments(rest));
        }
    }
    found
}

/// How many inline modules (`mod x {`) `text` opens.
fn inline_modules(text: &str) -> usize {
    text.match_indices("mod ")
        .filter(|(i, _)| {
            let before = text[..*i].chars().last();
            let after = &text[i + 4..];
            let name_end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && name_end > 0
                && after[name_end..].trim_start().starts_with('{')
        })
        .count()
}

/// The first path segment after a `crate::` (each one for a group
/// `{a, b::c}`).
fn first_segments(rest: &str) -> Vec<String> {
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 1;
        let mut end = group.len();
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut items = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let group = &group[..end];
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&group[start..]);
        return items.into_iter().filter_map(ident).collect();
    }
    ident(rest).into_iter().collect()
}

/// The identifier at the start of `text` (after whitespace), unless it is
/// `self` or `*`.
fn ident(text: &str) -> Option<String> {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let word = &text[..end];
    (!word.is_empty() && word != "self").then(|| word.to_string())
}

// === the checker's own tests: each rule can fail ===

#[cfg(test)]
mod checker {
    use super::*;

    const LAYERS: &[&[&str]] = &[&["low"], &["mid_a", "mid_b"], &["top"]];

    fn src(files: &[(&str, &str)]) -> Vec<(PathBuf, String)> {
        files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect()
    }

    #[test]
    fn downward_imports_pass_and_upward_or_sibling_ones_fail() {
        let ok = src(&[
            ("low.rs", "use std::x;\n"),
            ("mid_a/mod.rs", "use crate::low::Thing;\nmod inner;\n"),
            (
                "mid_a/inner.rs",
                "use super::super::low;\nuse super::Other;\n",
            ),
            (
                "mid_b/x.rs",
                "use super::Y;\n#[cfg(test)]\nmod tests {\n    use super::super::Z;\n}\n",
            ),
            ("top.rs", "use crate::{low, mid_a::X, mid_b};\n"),
        ]);
        assert!(layering_violations(LAYERS, &ok).is_empty());
        let bad = src(&[
            ("low.rs", "fn f() { crate::top::run(); }\n"),
            ("mid_a.rs", "use crate::{low::A, mid_b::{B, C}};\n"),
            ("mid_b/x.rs", "use super::super::top::T;\n"),
        ]);
        let broken = layering_violations(LAYERS, &bad);
        assert_eq!(broken.len(), 3, "{broken:#?}");
        assert!(broken[0].contains("`low` (layer 0) imports `top` (layer 2), a layer above it"));
        assert!(broken[1].contains("`mid_a` (layer 1) imports `mid_b` (layer 1), a sibling"));
        assert!(broken[2].contains("`mid_b` (layer 1) imports `top`"));
    }

    #[test]
    fn comments_and_strings_do_not_count_and_unknown_modules_fail() {
        let files = src(&[
            (
                "low.rs",
                "// see crate::top\nlet s = \"crate::top\"; /// [`crate::top`]\n",
            ),
            ("mid_a.rs", "use crate::nowhere::X;\n"),
            ("stray.rs", "\n"),
        ]);
        let broken = layering_violations(LAYERS, &files);
        assert_eq!(broken.len(), 2, "{broken:#?}");
        assert!(broken[0].contains("`crate::nowhere`, which has no layer"));
        assert!(broken[1].contains("module `stray` has no layer"));
    }

    #[test]
    fn root_reexports_resolve_to_their_module() {
        let files = src(&[
            (
                "lib.rs",
                "pub use top::{Node, NodeError};\npub use low::Thing;\n",
            ),
            ("mid_a.rs", "use crate::Node;\nuse crate::Thing;\n"),
        ]);
        let broken = layering_violations(LAYERS, &files);
        assert_eq!(broken.len(), 1, "{broken:#?}");
        assert!(broken[0].contains("imports `top`"));
    }

    #[test]
    fn module_docs_must_say_what_they_must_not_import() {
        let files = src(&[
            ("low.rs", "//! Low. Imports nothing.\n"),
            ("mid_a.rs", "//! Mid. Must not\n//! import: `top`.\n"),
            ("mid_b/mod.rs", "//! Mid b, silent on it.\n"),
        ]);
        let broken = doc_violations(LAYERS, &files);
        assert_eq!(broken.len(), 2, "{broken:#?}");
        assert!(broken[0].contains("`mid_b` must not import"));
        assert!(broken[1].contains("module `top` has a layer but no file"));
    }

    #[test]
    fn dependencies_outside_the_allowed_set_fail() {
        let manifest = "[package]\nname = \"x\"\n\n[dependencies]\nshoal-engine = { path = \"../engine\" }\ntokio = { workspace = true }\n\n[dev-dependencies]\nshoal-node = { path = \"../node\" }\n";
        assert_eq!(dependencies(manifest), ["shoal-engine", "tokio"]);
        assert!(dependency_violations("x", manifest, &["shoal-engine"], &[]).is_empty());
        let broken = dependency_violations("x", manifest, &[], &["tokio"]);
        assert_eq!(
            broken,
            [
                "x depends on shoal-engine, which is not below it",
                "x depends on tokio, which it must not"
            ]
        );
    }
}
