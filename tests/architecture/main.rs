//! The crate's layers, checked from its own sources (issue 15): every path of the crate that
//! code in `src/` writes is resolved to the module it names, and the check fails, naming the
//! file, the line and the path as written, when
//! - a module names one in a layer above its own (layers are by top-level module),
//! - modules name each other, directly or round a ring: top-level modules, and siblings at
//!   depth 2 (`control::reload` and `control::rollout`); a module and its own children naming
//!   each other is not a cycle (re-exports are normal),
//! - anything but `main` names `demo`,
//! - a top-level module is in no layer (a new one must be placed).
//!
//! Test code is left out: `#[cfg(test)]` items and the modules they declare, files whose names
//! end in `tests.rs`, and modules under one called `tests`.
//!
//! `cargo test --test architecture -- --ignored --nocapture print_graph` prints the arrows.

mod scan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use scan::{ModPath, Reference};

/// Top-level modules, highest layer first; the modules of one row share a layer and may name
/// each other (one way).
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["demo"],
    &["app"],
    &["control"],
    &["edge"],
    &["proxy"],
    &["routing"],
    &["upstream"],
    &["config"],
    &["samples", "lifecycle", "failure", "tls", "usage"],
    &["telemetry"],
];

/// Modules only `main` may name, whatever their layer.
const ONLY_MAIN_NAMES: &[&str] = &["demo"];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&top))
}

fn show(m: &[String]) -> String {
    m.join("::")
}

/// A reference from one module to another, and where it was written.
#[derive(Clone, Debug)]
struct Arrow {
    from: ModPath,
    to: ModPath,
    file: String,
    at: Reference,
}

impl Arrow {
    fn place(&self) -> String {
        let r = &self.at;
        format!(
            "{}:{}: `{}` in `{}`",
            self.file, r.line, r.written, r.source
        )
    }
}

/// The crate as its sources show it.
struct Crate {
    /// Every top-level module (test code aside), with the file that holds it.
    tops: BTreeMap<String, String>,
    arrows: Vec<Arrow>,
}

/// The module of a file under `src/`: `a/b.rs` and `a/b/mod.rs` are `a::b`, `lib.rs` the root.
fn module_of(rel: &Path) -> ModPath {
    let mut parts: ModPath = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Reads `root/src`; files are named relative to `root`.
fn read_crate(root: &Path) -> Crate {
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut modules: BTreeSet<ModPath> = BTreeSet::new();
    let mut test: Vec<ModPath> = Vec::new();
    let mut scanned = Vec::new();
    for path in files {
        let rel = path.strip_prefix(root.join("src")).expect("under src");
        let module = module_of(rel);
        let text = std::fs::read_to_string(&path).expect("a source file");
        let name = rel
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into());
        let s = scan::scan(&module, &text, module == ["main"]);
        if name.ends_with("tests.rs") || module.iter().any(|m| m == "tests") || s.all_test {
            test.push(module);
            continue;
        }
        modules.insert(module.clone());
        modules.extend(s.inline.iter().cloned());
        test.extend(s.test.iter().cloned());
        let file = Path::new("src").join(rel).display().to_string();
        scanned.push((module, file, s));
    }
    let is_test = |m: &ModPath| test.iter().any(|t| m.starts_with(t));
    let resolve = |path: &ModPath| -> Option<ModPath> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains(p))
    };
    let mut tops = BTreeMap::new();
    let mut arrows = Vec::new();
    for (module, file, s) in scanned {
        if is_test(&module) {
            continue;
        }
        if module.len() == 1 {
            tops.insert(module[0].clone(), file.clone());
        }
        for r in s.references {
            let Some(to) = resolve(&r.path) else { continue };
            if is_test(&r.from) || is_test(&to) {
                continue;
            }
            // A name a `use` brought in adds an arrow only where it reaches deeper.
            if r.via
                .as_ref()
                .is_some_and(|v| resolve(v).as_ref() == Some(&to))
            {
                continue;
            }
            let from = r.from.clone();
            arrows.push(Arrow {
                from,
                to,
                file: file.clone(),
                at: r,
            });
        }
    }
    Crate { tops, arrows }
}

/// The nodes an arrow joins in the cycle check: top-level modules when it crosses between
/// them, siblings at depth 2 when it stays inside one (a module and its own children: none).
fn edge(a: &Arrow) -> Option<(ModPath, ModPath)> {
    let (f, t) = (&a.from, &a.to);
    if f.is_empty() || t.is_empty() {
        return None;
    }
    if f[0] != t[0] {
        return Some((f[..1].to_vec(), t[..1].to_vec()));
    }
    (f.len() >= 2 && t.len() >= 2 && f[1] != t[1]).then(|| (f[..2].to_vec(), t[..2].to_vec()))
}

/// Each edge between nodes, with the first arrow that makes it.
fn graph(c: &Crate) -> BTreeMap<(ModPath, ModPath), &Arrow> {
    let mut g = BTreeMap::new();
    for a in &c.arrows {
        if let Some(e) = edge(a) {
            g.entry(e).or_insert(a);
        }
    }
    g
}

/// The groups of nodes that reach each other (strongly connected, more than one node).
fn knots(g: &BTreeMap<(ModPath, ModPath), &Arrow>) -> Vec<Vec<ModPath>> {
    let mut next: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (f, t) in g.keys() {
        next.entry(f).or_default().push(t);
        next.entry(t).or_default();
    }
    let reach = |from: &ModPath| -> BTreeSet<ModPath> {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![from]);
        while let Some(n) = todo.pop() {
            for &m in &next[n] {
                if seen.insert(m.clone()) {
                    todo.push(m);
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&ModPath, BTreeSet<ModPath>> =
        next.keys().map(|&n| (n, reach(n))).collect();
    let mut out: Vec<Vec<ModPath>> = Vec::new();
    for (&n, r) in &reached {
        if !r.contains(n) || out.iter().any(|k| k.contains(n)) {
            continue;
        }
        out.push(
            reached
                .keys()
                .filter(|&&m| r.contains(m) && reached[m].contains(n))
                .map(|&m| m.clone())
                .collect(),
        );
    }
    out
}

/// Everything wrong with the crate, one message each, in the order files and lines go.
fn violations(c: &Crate) -> Vec<String> {
    let mut wrong = Vec::new();
    for (top, file) in &c.tops {
        if layer_of(top).is_none() {
            wrong.push(format!(
                "{file}: module `{top}` is in no layer: place it in LAYERS"
            ));
        }
    }
    for a in &c.arrows {
        let (from, to) = (&a.from[0], &a.to[0]);
        if from == to {
            continue;
        }
        if let (Some(f), Some(t)) = (layer_of(from), layer_of(to)) {
            if t < f {
                let rows = format!("{:?} above {:?}", LAYERS[t], LAYERS[f]);
                wrong.push(format!(
                    "{}: {from} names {to}, a layer above it ({rows})",
                    a.place()
                ));
            }
        }
        if ONLY_MAIN_NAMES.iter().any(|m| m == to) && from != "main" {
            wrong.push(format!(
                "{}: {from} names {to}, which only main may name",
                a.place()
            ));
        }
    }
    let g = graph(c);
    for knot in knots(&g) {
        let names: Vec<String> = knot.iter().map(|m| show(m)).collect();
        let mut msg = match knot.len() {
            2 => format!("{} name each other:", names.join(", ")),
            _ => format!("{} reach each other round a cycle:", names.join(", ")),
        };
        let mut both_ways = Vec::new();
        for ((f, t), a) in &g {
            if knot.contains(f) && knot.contains(t) {
                msg.push_str(&format!("\n    {} -> {}: {}", show(f), show(t), a.place()));
                if f < t && g.contains_key(&(t.clone(), f.clone())) {
                    both_ways.push(format!("{} <-> {}", show(f), show(t)));
                }
            }
        }
        if knot.len() > 2 && !both_ways.is_empty() {
            msg.push_str(&format!(
                "\n    of which both ways: {}",
                both_ways.join(", ")
            ));
        }
        wrong.push(msg);
    }
    wrong
}

/// The arrows, for the note: top level, then between siblings inside each top-level module.
/// `^` marks an arrow up the layers, `@` one in a cycle.
fn render(c: &Crate) -> String {
    let g = graph(c);
    let knot_of: BTreeMap<ModPath, usize> = knots(&g)
        .into_iter()
        .enumerate()
        .flat_map(|(n, k)| k.into_iter().map(move |m| (m, n)))
        .collect();
    let mut out = String::from("layers, highest first:\n");
    for row in LAYERS {
        out.push_str(&format!("  {}\n", row.join(", ")));
    }
    let unplaced: Vec<&str> = c
        .tops
        .keys()
        .map(String::as_str)
        .filter(|t| layer_of(t).is_none())
        .collect();
    if !unplaced.is_empty() {
        out.push_str(&format!("in no layer: {}\n", unplaced.join(", ")));
    }
    let mut by_parent: BTreeMap<Option<String>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (f, t) in g.keys() {
        let up = f.len() == 1
            && matches!((layer_of(&f[0]), layer_of(&t[0])), (Some(a), Some(b)) if b < a);
        let cycle = knot_of.get(f).is_some_and(|k| knot_of.get(t) == Some(k));
        let mark = match (up, cycle) {
            (true, true) => " ^@",
            (true, false) => " ^",
            (false, true) => " @",
            (false, false) => "",
        };
        let parent = (f.len() == 2).then(|| f[0].clone());
        let (fname, tname) = (
            f.last().cloned().unwrap_or_default(),
            t.last().cloned().unwrap_or_default(),
        );
        by_parent
            .entry(parent)
            .or_default()
            .entry(fname)
            .or_default()
            .push(format!("{tname}{mark}"));
    }
    for (parent, rows) in by_parent {
        match parent {
            None => out.push_str("top level (^ up the layers, @ in a cycle):\n"),
            Some(p) => out.push_str(&format!("inside {p}:\n")),
        }
        for (f, to) in rows {
            out.push_str(&format!("  {f} -> {}\n", to.join(", ")));
        }
    }
    out
}

#[test]
fn arrows_point_down_and_one_way() {
    let c = read_crate(Path::new(env!("CARGO_MANIFEST_DIR")));
    let wrong = violations(&c);
    assert!(
        wrong.is_empty(),
        "{} problems with the layers:\n{}\n",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
#[ignore = "prints the module graph: cargo test --test architecture -- --ignored --nocapture"]
fn print_graph() {
    println!(
        "{}",
        render(&read_crate(Path::new(env!("CARGO_MANIFEST_DIR"))))
    );
}

mod self_tests;
