//! The checker itself, on small source trees written to a temporary directory: it names an
//! inverted import (in a `use` tree or a path in code), a mutual import, a module in no layer,
//! and passes a clean tree whose comments, strings and test code say anything they like.
//!
//! Owns: the synthetic trees and what must be said of them. Must not touch: the real crate.

use super::{read_crate, render, scan, show, violations, Crate};

/// The crate made of `files` (path under `src/`, text).
fn tree(files: &[(&str, &str)]) -> Crate {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (path, text) in files {
        let path = dir.path().join("src").join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the folders");
        std::fs::write(&path, text).expect("write a source file");
    }
    read_crate(dir.path())
}

/// The problems of the crate made of `files`, `count` of them.
fn check(files: &[(&str, &str)], count: usize) -> Vec<String> {
    let wrong = violations(&tree(files));
    assert_eq!(wrong.len(), count, "{wrong:#?}");
    wrong
}

/// Fails unless `problem` begins with `head` and holds each of `parts`.
fn says(problem: &str, head: &str, parts: &[&str]) {
    assert!(
        problem.starts_with(head),
        "{problem}\n--- should begin\n{head}"
    );
    for part in parts {
        assert!(problem.contains(part), "{problem}\n--- should hold\n{part}");
    }
}

/// A sound skeleton: each row of the layers has a module, and every arrow points down.
const CLEAN: &[(&str, &str)] = &[
    (
        "lib.rs",
        "pub mod app;\npub mod control;\npub mod proxy;\npub mod telemetry;\n",
    ),
    (
        "main.rs",
        "fn main() { cohort::demo::run(); cohort::app::start(); }\n",
    ),
    (
        "demo/mod.rs",
        "use crate::app;\npub fn run() { app::start(); }\n",
    ),
    (
        "app.rs",
        "use crate::control::reload::{self, Control};\npub fn start() {}\n",
    ),
    // A parent and its own children naming each other is not a cycle.
    (
        "control/mod.rs",
        "pub mod reload;\npub mod rollout;\npub use reload::Control;\n",
    ),
    (
        "control/reload.rs",
        "use super::rollout::Judge;\nuse crate::{proxy::Handler, telemetry};\n\
         pub struct Control;\nfn f() { telemetry::names::COUNT; }\n",
    ),
    (
        "control/rollout/mod.rs",
        "use crate::control::Control;\npub struct Judge;\n",
    ),
    (
        "proxy/mod.rs",
        "//! Never `crate::app::x`: a doc comment.\n\
         /* crate::control::reload::x, in a /* nested */ block comment */\n\
         const S: &str = \"crate::app::start\";\n\
         const R: &str = r#\"crate::app::start \" still raw\"#;\n\
         const Q: char = '\"'; const E: char = '\\''; fn l<'a>(x: &'a str) -> &'a str { x }\n\
         mod inner { use super::Handler; }\n\
         pub struct Handler;\n\
         fn f() { self::inner::g(); crate::telemetry::count(); }\n\
         #[cfg(test)]\nmod tests { use crate::app::start; }\n\
         #[cfg(test)]\nmod simulate;\n\
         #[cfg(not(test))]\nfn g() {}\n",
    ),
    // Test code may reach anywhere.
    ("proxy/simulate.rs", "use crate::app::start;\n"),
    ("proxy/handler_tests.rs", "use crate::control::reload;\n"),
    ("telemetry/mod.rs", "pub mod names;\npub fn count() {}\n"),
    (
        "telemetry/names.rs",
        "pub const COUNT: u64 = 0;\nuse super::count;\n",
    ),
];

fn with(changes: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut files: Vec<_> = CLEAN
        .iter()
        .filter(|(p, _)| !changes.iter().any(|(c, _)| c == p))
        .copied()
        .collect();
    files.extend_from_slice(changes);
    files
}

#[test]
fn paths_resolve_from_where_they_are_written() {
    let text = "use super::super::cells::{self, Tally as T};\n\
                mod inner {\n    fn f() { super::x::y(); self::z(); }\n}\n\
                fn g() { T::new(); cells::bins::B; let s = \"crate::app\"; }\n";
    let module = ["control", "rollout", "state", "format"].map(String::from);
    let got: Vec<(String, String, usize)> = scan::scan(&module, text, false)
        .references
        .iter()
        .map(|r| (show(&r.from), show(&r.path), r.line))
        .collect();
    let want = [
        ("", "control::rollout::cells", 1),
        ("", "control::rollout::cells::Tally", 1),
        ("::inner", "control::rollout::state::format::x::y", 3),
        ("::inner", "control::rollout::state::format::inner::z", 3),
        ("", "control::rollout::cells::Tally::new", 5),
        ("", "control::rollout::cells::bins::B", 5),
    ]
    .map(|(from, to, line)| {
        (
            format!("control::rollout::state::format{from}"),
            to.into(),
            line,
        )
    });
    assert_eq!(got, want);
}

#[test]
fn a_clean_tree_passes() {
    check(CLEAN, 0);
}

#[test]
fn an_inverted_import_in_a_use_tree_is_named_with_its_file_and_line() {
    let wrong = check(
        &with(&[(
            "telemetry/mod.rs",
            "//! a leaf\npub mod names;\nuse crate::{\n    telemetry::names::X,\n    \
             proxy::Handler,\n};\n",
        )]),
        2,
    );
    let place = "src/telemetry/mod.rs:5: `crate::proxy::Handler` in `proxy::Handler,`";
    says(
        &wrong[0],
        &format!("{place}: telemetry names proxy, a layer above it"),
        &[],
    );
    // The arrow down that the inverted one turns into a cycle.
    let down = "\n    proxy -> telemetry: src/proxy/mod.rs:8: ";
    says(&wrong[1], "proxy, telemetry name each other:", &[down]);
}

#[test]
fn an_inverted_path_in_code_and_one_through_a_use_name_are_named() {
    let wrong = check(
        &with(&[(
            "telemetry/names.rs",
            "use crate::control as c;\nfn f() {\n    let _ = crate::control::reload::Control;\n    \
             c::reload::Control;\n}\n",
        )]),
        4,
    );
    let places = [
        "src/telemetry/names.rs:1: `crate::control` in `use crate::control as c;`",
        "src/telemetry/names.rs:3: `crate::control::reload::Control` in \
         `let _ = crate::control::reload::Control;`",
        "src/telemetry/names.rs:4: `c::reload::Control` in `c::reload::Control;`",
    ];
    for (problem, place) in wrong.iter().zip(places) {
        says(
            problem,
            &format!("{place}: telemetry names control, a layer above it"),
            &[],
        );
    }
    // With the arrows down from control to proxy and on to telemetry, a ring of three.
    let ring = "control, proxy, telemetry reach each other round a cycle:";
    let back = "\n    telemetry -> control: src/telemetry/names.rs:1: `crate::control` in ";
    says(&wrong[3], ring, &[back]);
}

#[test]
fn a_mutual_import_between_siblings_is_caught() {
    let wrong = check(
        &with(&[(
            "control/rollout/mod.rs",
            "pub struct Judge;\nfn f() { super::reload::Control; }\n",
        )]),
        1,
    );
    assert_eq!(
        wrong[0],
        "control::reload, control::rollout name each other:\n    \
         control::reload -> control::rollout: src/control/reload.rs:1: \
         `super::rollout::Judge` in `use super::rollout::Judge;`\n    \
         control::rollout -> control::reload: src/control/rollout/mod.rs:2: \
         `super::reload::Control` in `fn f() { super::reload::Control; }`"
    );
}

#[test]
fn a_cycle_inside_one_layer_is_caught() {
    let wrong = check(
        &with(&[
            (
                "tls.rs",
                "use crate::samples;\nfn f() { samples::cells::Cells::new(); }\n",
            ),
            ("samples/mod.rs", "pub mod cells;\n"),
            (
                "samples/cells.rs",
                "use crate::tls as t;\nfn f() { t::load(); }\n",
            ),
        ]),
        1,
    );
    let back = "samples -> tls: src/samples/cells.rs:1: `crate::tls` in `use crate::tls as t;`";
    says(&wrong[0], "samples, tls name each other:", &[back]);
}

#[test]
fn a_module_in_no_layer_and_a_reach_into_demo_are_failures() {
    let wrong = check(
        &with(&[
            ("body.rs", "pub struct Body;\n"),
            ("app.rs", "pub fn start() { crate::demo::run(); }\n"),
        ]),
        4,
    );
    assert_eq!(
        wrong[0],
        "src/body.rs: module `body` is in no layer: place it in LAYERS"
    );
    let place = "src/app.rs:1: `crate::demo::run` in `pub fn start() { crate::demo::run(); }`";
    says(
        &wrong[1],
        &format!("{place}: app names demo, a layer above it"),
        &[],
    );
    says(
        &wrong[2],
        &format!("{place}: app names demo, which only main may name"),
        &[],
    );
    says(&wrong[3], "app, demo name each other:", &[]);
}

#[test]
fn the_graph_marks_arrows_up_and_in_cycles() {
    let rollout = "fn f() { super::reload::Control; }\n";
    let graph = render(&tree(&with(&[("control/rollout/mod.rs", rollout)])));
    let inside = "inside control:\n  reload -> rollout @\n  rollout -> reload @\n";
    says(
        &graph,
        "layers, highest first:\n  main\n",
        &["\n  main -> app, demo\n", inside],
    );
    let graph = render(&tree(&with(&[("telemetry/names.rs", "use crate::app;\n")])));
    says(&graph, "layers", &["\n  telemetry -> app ^@\n"]);
}
