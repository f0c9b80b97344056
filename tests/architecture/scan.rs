//! Reading one source file for the architecture test: what of the crate its code names.
//!
//! Owns: blanking comments, strings and character literals; skipping `#[cfg(test)]` items;
//! following inline modules; and resolving `crate::`, `self::`, `super::` (and, in the binary,
//! `cohort::`) paths, `use` trees and the names a `use` brought in. Must not touch: what is
//! allowed (the layers and cycles are judged in `main.rs`).

use std::collections::BTreeMap;

/// A module's path from the crate root: `["control", "reload"]`; the root is empty.
pub type ModPath = Vec<String>;

/// One path of the crate written in a file's code.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The module whose code it is (inline modules included).
    pub from: ModPath,
    /// What it names, from the crate root (an item's path; the caller finds its module).
    pub path: ModPath,
    /// When written through a name a `use` brought in, the path that `use` named.
    pub via: Option<ModPath>,
    pub line: usize,
    /// The path as written, `super::rollout::Judge`.
    pub written: String,
    /// The source line it stands on, trimmed.
    pub source: String,
}

/// What one file adds to the crate's picture.
#[derive(Default)]
pub struct Scan {
    pub references: Vec<Reference>,
    /// Modules declared inline (`mod name { ... }`) outside test code.
    pub inline: Vec<ModPath>,
    /// Modules declared under `#[cfg(test)]` (`mod simulate;`): their files are test code.
    pub test: Vec<ModPath>,
    /// An inner `#![cfg(test)]`: the whole file is test code.
    pub all_test: bool,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` with comments, strings and character literals blanked (newlines kept), so that what
/// is left is code and every offset keeps its line.
fn code_only(text: &str) -> Vec<char> {
    let s: Vec<char> = text.chars().collect();
    let mut out = s.clone();
    let mut blank = |from: usize, to: usize| {
        for c in &mut out[from..to.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let at = |j: usize| s.get(j).copied();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let fresh = i == 0 || !is_ident(s[i - 1]);
        let end = if c == '/' && at(i + 1) == Some('/') {
            s[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(s.len(), |p| i + p)
        } else if c == '/' && at(i + 1) == Some('*') {
            let (mut depth, mut j) = (0, i);
            while j < s.len() {
                if s[j] == '/' && at(j + 1) == Some('*') {
                    depth += 1;
                    j += 2;
                } else if s[j] == '*' && at(j + 1) == Some('/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j
        } else if fresh && (c == 'r' || (c == 'b' && at(i + 1) == Some('r'))) {
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let hashes = s[j..].iter().take_while(|&&c| c == '#').count();
            j += hashes;
            if at(j) != Some('"') {
                i += 1;
                continue;
            }
            j += 1;
            while j < s.len() && !(s[j] == '"' && (1..=hashes).all(|k| at(j + k) == Some('#'))) {
                j += 1;
            }
            j + 1 + hashes
        } else if c == '"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c == '\'' && at(i + 1) == Some('\\') {
            // '\n', '\'', '\u{..}': the escaped character is never the closing quote.
            let mut j = i + 3;
            while j < s.len() && s[j] != '\'' {
                j += 1;
            }
            j + 1
        } else if c == '\'' && at(i + 2) == Some('\'') {
            i + 3
        } else {
            // Code, or a lifetime.
            i += 1;
            continue;
        };
        blank(i, end);
        i = end;
    }
    out
}

/// Whether an attribute's text (white space removed) makes its item test code.
fn is_test_cfg(attr: &str) -> bool {
    let words: Vec<&str> = attr.split(|c: char| !is_ident(c)).collect();
    attr.starts_with("cfg(") && words.contains(&"test") && !words.contains(&"not")
}

/// The index just past the bracket that closes the one at `open`.
fn close_of(code: &[char], open: usize) -> usize {
    let mut depth = 0i32;
    for (j, &c) in code.iter().enumerate().skip(open) {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// Skips the item starting at `i` (to its `;` or its closing brace); returns where it ends and,
/// for `mod name;`, the module it declares.
fn skip_item(code: &[char], mut i: usize) -> (usize, Option<String>) {
    let mut words: Vec<String> = Vec::new();
    while i < code.len() {
        match code[i] {
            ';' => {
                let declared = words.iter().position(|w| w == "mod");
                return (i + 1, declared.and_then(|p| words.get(p + 1).cloned()));
            }
            '(' | '[' => i = close_of(code, i),
            '{' => return (close_of(code, i), None),
            c if is_ident(c) => {
                let start = i;
                while i < code.len() && is_ident(code[i]) {
                    i += 1;
                }
                words.push(code[start..i].iter().collect());
            }
            _ => i += 1,
        }
    }
    (i, None)
}

fn skip_ws(code: &[char], mut i: usize) -> usize {
    while i < code.len() && code[i].is_whitespace() {
        i += 1;
    }
    i
}

fn word_at(code: &[char], i: usize) -> (String, usize) {
    let mut j = i;
    while j < code.len() && is_ident(code[j]) {
        j += 1;
    }
    (code[i..j].iter().collect(), j)
}

/// One path a use tree (or a plain path) ends in.
struct Leaf {
    path: ModPath,
    written: String,
    /// The name it is known by afterwards (`as` rename or last segment).
    name: Option<String>,
    at: usize,
}

/// Reads a path or use tree at `i` after `prefix` (already resolved; `written` as written);
/// pushes every path it ends in; returns where it stops.
fn tree(code: &[char], i: usize, prefix: &ModPath, written: &str, out: &mut Vec<Leaf>) -> usize {
    let (mut path, mut written, mut i) = (prefix.clone(), written.to_string(), skip_ws(code, i));
    let mut at = i;
    loop {
        if code.get(i) == Some(&'{') {
            i += 1;
            loop {
                i = skip_ws(code, i);
                if i >= code.len() || code[i] == '}' {
                    return i + 1;
                }
                i = tree(code, i, &path, &written, out);
                i = skip_ws(code, i);
                if code.get(i) == Some(&',') {
                    i += 1;
                }
            }
        }
        let (seg, end) = word_at(code, i);
        if seg.is_empty() {
            // A glob (which brings in no one name), or a path cut short.
            let written = written.trim_end_matches(':').into();
            out.push(Leaf {
                path,
                written,
                name: None,
                at,
            });
            return i;
        }
        at = i;
        written.push_str(&seg);
        match seg.as_str() {
            "super" => {
                path.pop();
            }
            "self" => {}
            _ => path.push(seg.clone()),
        }
        i = skip_ws(code, end);
        if code.get(i) == Some(&':') && code.get(i + 1) == Some(&':') {
            written.push_str("::");
            i = skip_ws(code, i + 2);
            continue;
        }
        let mut name = Some(seg.clone());
        if seg == "self" {
            // `a::{self, b}` names `a` itself.
            name = path.last().cloned();
            written.truncate(written.len() - "::self".len());
        }
        let (next, after) = word_at(code, i);
        if next == "as" {
            let (alias, after) = word_at(code, skip_ws(code, after));
            name = Some(alias).filter(|a| a != "_");
            i = after;
        }
        out.push(Leaf {
            path,
            written,
            name,
            at,
        });
        return i;
    }
}

/// Reads the file of module `module`; `binary` says it is `main.rs` (where `cohort::` is the
/// library's root).
pub fn scan(module: &[String], text: &str, binary: bool) -> Scan {
    let code = code_only(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut line_of = Vec::with_capacity(code.len() + 1);
    let mut n = 1;
    for &c in &code {
        line_of.push(n);
        n += usize::from(c == '\n');
    }
    line_of.push(n);
    let mut out = Scan::default();
    // Inline modules open around the cursor, with the brace depth inside each.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let (mut depth, mut in_use, mut test_item, mut i) = (0usize, false, false, 0usize);
    let mut names: BTreeMap<String, ModPath> = BTreeMap::new();
    let within = |inline: &[(String, usize)]| -> ModPath {
        let inner = inline.iter().map(|(m, _)| m.clone());
        module.iter().cloned().chain(inner).collect()
    };
    while i < code.len() {
        let c = code[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            let inner = code.get(i + 1) == Some(&'!');
            let open = skip_ws(&code, i + 1 + usize::from(inner));
            if code.get(open) == Some(&'[') {
                let end = close_of(&code, open);
                let attr: String = code[open + 1..end - 1]
                    .iter()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                if is_test_cfg(&attr) {
                    if inner && inline.is_empty() {
                        out.all_test = true;
                        return out;
                    }
                    test_item = true;
                }
                i = end;
                continue;
            }
        }
        if test_item {
            test_item = false;
            let (end, declared) = skip_item(&code, i);
            if let Some(m) = declared {
                out.test
                    .push(within(&inline).into_iter().chain([m]).collect());
            }
            i = end;
            continue;
        }
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            ';' => in_use = false,
            _ => {}
        }
        if !is_ident(c) {
            i += 1;
            continue;
        }
        let (word, end) = word_at(&code, i);
        let start = i;
        i = end;
        // The tail of a longer path, a field or a method: not where a path starts.
        if start > 0 && matches!(code[start - 1], ':' | '.') {
            continue;
        }
        if word == "use" {
            in_use = true;
            continue;
        }
        if word == "mod" {
            let (name, after) = word_at(&code, skip_ws(&code, end));
            if code.get(skip_ws(&code, after)) == Some(&'{') {
                out.inline
                    .push(within(&inline).into_iter().chain([name.clone()]).collect());
                inline.push((name, depth + 1));
            }
            continue;
        }
        let colons = skip_ws(&code, end);
        if !(code.get(colons) == Some(&':') && code.get(colons + 1) == Some(&':')) {
            continue;
        }
        let here = within(&inline);
        let (base, via) = match word.as_str() {
            "crate" => (Vec::new(), None),
            "cohort" if binary => (Vec::new(), None),
            "self" => (here.clone(), None),
            "super" => (here[..here.len().saturating_sub(1)].to_vec(), None),
            w => match names.get(w) {
                Some(p) => (p.clone(), Some(p.clone())),
                None => continue,
            },
        };
        let mut leaves = Vec::new();
        i = tree(&code, colons + 2, &base, &format!("{word}::"), &mut leaves);
        for leaf in leaves {
            if in_use && via.is_none() {
                if let Some(name) = &leaf.name {
                    names.insert(name.clone(), leaf.path.clone());
                }
            }
            let line = line_of[leaf.at.min(code.len())];
            out.references.push(Reference {
                from: here.clone(),
                path: leaf.path,
                via: via.clone(),
                line,
                written: leaf.written,
                source: lines.get(line - 1).map_or("", |l| l.trim()).to_string(),
            });
        }
    }
    out
}
