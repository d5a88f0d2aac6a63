//! The layers of `src/` import only downward, and no host module imports another.
//!
//! Each top-level folder of `src/` has a layer (ARCHITECTURE.md draws them); a file may name
//! (`crate::X`, `super::X`) only folders of its own layer or below. Test code (`#[cfg(test)]`
//! modules) is held to the same rule. The test reads the sources as text: a `use` that goes up,
//! or a path written out in an expression, fails it with the file and line.

use std::path::{Path, PathBuf};

/// Bottom to top. Folders on one line are peers and may import each other only where the
/// exceptions below say.
const LAYERS: &[&[&str]] = &[
    &["util", "error"],
    &["store"],
    &["cmdb", "auth", "secrets"],
    &["applet"],
    &["registry", "config"],
    &["runtime"],
    &["kit"],
    &["modules"],
    &["service"],
    &["http", "cli"],
    &["lib", "main"],
];

/// Imports between peers of one layer that are allowed.
const PEERS: &[(&str, &str)] = &[("cli", "http")];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file below `src/`: `src/kit/fanout.rs` -> ["kit", "fanout"].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The `crate::a::b` and `super::a` paths named on a line, resolved to module paths; a group
/// (`use super::{a, b::c}`) gives one path per item.
fn named_paths(me: &[String], line: &str) -> Vec<Vec<String>> {
    let code = line.split("//").next().unwrap_or_default();
    let mut out = Vec::new();
    let word = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect::<String>();
    let segs = |s: &str| s.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>();
    // `rest` follows a resolved prefix `base`: one path, or one per item of a `{...}` group.
    let expand = |base: Vec<String>, rest: &str, out: &mut Vec<Vec<String>>| {
        let head = word(rest);
        let mut base = base;
        base.extend(segs(&head));
        let after = &rest[head.len()..];
        match after.strip_prefix('{') {
            Some(group) => {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                for item in inner.split(',') {
                    let mut p = base.clone();
                    p.extend(segs(&word(item.trim())));
                    out.push(p);
                }
            }
            None => out.push(base),
        }
    };
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand(Vec::new(), &code[i + 7..], &mut out);
    }
    for (i, _) in code.match_indices("super::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        // `super` is the parent of the file's module (for a mod.rs, of its folder's module).
        let mut base: Vec<String> = me.to_vec();
        base.pop();
        let mut rest = &code[i + 7..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        expand(base, rest, &mut out);
    }
    out
}

#[test]
fn layers_import_only_downward_and_modules_import_no_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let me = module_path(&src, file);
        let top = me.first().map(String::as_str).unwrap_or("lib");
        let Some(mine) = layer_of(top) else {
            wrong.push(format!("{}: the folder `{top}` has no layer in tests/layers.rs", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for path in named_paths(&me, line) {
                let Some(other) = path.first() else { continue };
                let at = format!("{}:{}", file.strip_prefix(&src).unwrap().display(), n + 1);
                // The crate root is the top layer: code below names an item where it is defined.
                let Some(theirs) = layer_of(other) else {
                    if top != "lib" && !other.is_empty() {
                        wrong.push(format!("{at}: `crate::{other}` is not a folder of src/ (name the item where it is defined)"));
                    }
                    continue;
                };
                if theirs > mine || (theirs == mine && other != top && !PEERS.contains(&(top, other.as_str()))) {
                    wrong.push(format!("{at}: `{top}` imports `{}` from a layer above or beside it", path.join("::")));
                }
                // Host modules: `modules::A` naming `modules::B`.
                if top == "modules" && other == "modules" && me.len() > 1 && path.len() > 1 && path[1] != me[1] {
                    wrong.push(format!("{at}: the module `{}` imports the module `{}` (share it through kit/)", me[1], path[1]));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_finds_an_upward_import() {
    let me = vec!["store".to_string(), "audit".to_string()];
    let found = named_paths(&me, "use crate::runtime::RunCtx; // not this: crate::http");
    assert_eq!(found, vec![vec!["runtime".to_string(), "RunCtx".to_string()]]);
    let theirs = layer_of(&found[0][0]).unwrap();
    assert!(theirs > layer_of("store").unwrap(), "runtime sits above store");
    let sup = named_paths(&["modules".into(), "netdev".into(), "cli".into()], "use super::super::ssh::client::Session;");
    assert_eq!(sup, vec![vec!["modules".to_string(), "ssh".to_string(), "client".to_string(), "Session".to_string()]]);
    assert!(named_paths(&me, "let x = my_crate::runtime::f();").is_empty());
    let group = named_paths(&["modules".into(), "netdev".into(), "fanout".into()], "use super::{RunState, backup::keep};");
    assert_eq!(
        group,
        vec![
            vec!["modules".to_string(), "netdev".to_string(), "RunState".to_string()],
            vec!["modules".to_string(), "netdev".to_string(), "backup".to_string(), "keep".to_string()],
        ]
    );
}

/// Module paths named by each file, resolved to the longest prefix that is a file of `src/`.
fn file_graph(src: &Path) -> (Vec<Vec<String>>, Vec<Vec<usize>>) {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mods: Vec<Vec<String>> = files.iter().map(|f| module_path(src, f)).collect();
    let index = |path: &[String]| (1..=path.len()).rev().find_map(|n| mods.iter().position(|m| m.as_slice() == &path[..n]));
    let mut edges = vec![Vec::new(); files.len()];
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            for path in named_paths(&mods[i], line) {
                if let Some(j) = index(&path).filter(|&j| j != i) {
                    edges[i].push(j);
                }
            }
        }
    }
    (mods, edges)
}

/// Strongly connected groups of files (Tarjan), the ones with more than one file.
fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct T<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on: Vec<bool>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(t: &mut T, v: usize) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        for &w in &t.edges[v] {
            match t.index[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on[w] => t.low[v] = t.low[v].min(iw),
                _ => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut group = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                t.out.push(group);
            }
        }
    }
    let n = edges.len();
    let mut t = T { edges, index: vec![None; n], low: vec![0; n], stack: Vec::new(), on: vec![false; n], next: 0, out: Vec::new() };
    for v in 0..n {
        if t.index[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycle_is_longer_than_a_file_and_its_own_submodules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (mods, edges) = file_graph(&src);
    let mut wrong = Vec::new();
    for group in cycles(&edges) {
        // Allowed: a module file and files below it (a parent and its children use each other).
        let shortest = group.iter().map(|&i| &mods[i]).min_by_key(|m| m.len()).unwrap();
        let nested = group.iter().all(|&i| mods[i].starts_with(shortest));
        if !nested {
            wrong.push(group.iter().map(|&i| mods[i].join("::")).collect::<Vec<_>>().join(" <-> "));
        }
    }
    assert!(wrong.is_empty(), "import cycles between files:\n{}", wrong.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle_of_siblings() {
    // 0 -> 1 -> 2 -> 0 and 3 alone.
    let edges = vec![vec![1], vec![2], vec![0], vec![0]];
    let found = cycles(&edges);
    assert_eq!(found.len(), 1);
    let mut g = found[0].clone();
    g.sort();
    assert_eq!(g, [0, 1, 2]);
}

#[test]
fn only_the_edges_know_their_frameworks() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let top = module_path(&src, file).first().cloned().unwrap_or_default();
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            // The storage engine too is named only by the store (and the error it converts).
            for (framework, edges) in [("axum", &["http"][..]), ("clap", &["cli"]), ("rusqlite", &["store", "error"]), ("sled", &["store"])]
            {
                let named = code.contains(&format!("{framework}::")) || code.trim_start().starts_with(&format!("use {framework}"));
                if named && !edges.contains(&top.trim_end_matches(".rs")) {
                    wrong.push(format!(
                        "{}:{}: `{framework}` outside src/{}/",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        edges[0]
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A CLI command may run in the server for a CLI on the local socket (`cli::local`) or over HTTP
/// (`cli::remote`): its output must go through `cli::stdio`, or it would land on the server's
/// own terminal. Only the CLI's ends of those two relay to the process's own streams.
#[test]
fn cli_commands_print_through_their_caller_streams() {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli");
    let mut files = Vec::new();
    sources(&cli, &mut files);
    let mut wrong = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("stdio.rs") && !f.ends_with("local.rs") && !f.ends_with("remote.rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for direct in ["println!", "eprintln!", "print!(", "eprint!(", "std::io::stdout()", "std::io::stderr()", "std::io::stdin()"] {
                let at = code.find(direct);
                // `println!` also matches inside `eprintln!`, `print!(` inside `eprint!(`.
                if at.is_some_and(|i| i == 0 || !code.as_bytes()[i - 1].is_ascii_alphanumeric() && code.as_bytes()[i - 1] != b'_') {
                    wrong.push(format!("{}:{}: `{direct}`", file.display(), n + 1));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "print through cli::stdio (outln!, errln!, read_stdin):\n{}", wrong.join("\n"));
}
