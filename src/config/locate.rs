//! Finds where a field path such as `routes[0].split[1].percent` sits in a YAML text, so
//! validation errors (found after serde has forgotten positions) can name line and column.
//!
//! Owns: walking YAML parser events with their marks. Must not touch: config semantics.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                segs.push(Seg::Key(rest[..i].to_string()));
            }
            rest = &rest[i..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(n) = stripped[..end].parse() {
                    segs.push(Seg::Index(n));
                }
                rest = &stripped[end + 1..];
            }
        } else {
            segs.push(Seg::Key(rest.to_string()));
        }
    }
    segs
}

/// A node in the document tree, rebuilt from events: just enough to walk a path.
enum Node {
    Scalar(Marker),
    Seq(Marker, Vec<Node>),
    Map(Marker, Vec<(String, Marker, Node)>),
}

impl Node {
    fn mark(&self) -> Marker {
        match self {
            Node::Scalar(m) | Node::Seq(m, _) | Node::Map(m, _) => *m,
        }
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
}

enum Frame {
    Seq(Marker, Vec<Node>),
    Map(
        Marker,
        Vec<(String, Marker, Node)>,
        Option<(String, Marker)>,
    ),
}

impl Builder {
    fn push_node(&mut self, node: Node, key_text: Option<String>) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    let mark = node.mark();
                    *pending = Some((key_text.unwrap_or_default(), mark));
                }
                Some((key, mark)) => entries.push((key, mark, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => self.push_node(Node::Scalar(mark), Some(text)),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(mark, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map(mark, Vec::new(), None)),
            Event::SequenceEnd => {
                if let Some(Frame::Seq(m, items)) = self.stack.pop() {
                    self.push_node(Node::Seq(m, items), None);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(m, entries, _)) = self.stack.pop() {
                    // A block mapping's start mark lands after its first key; the key reads
                    // better. A flow mapping's start mark is its `{`, which is right as it is.
                    let m = match entries.first() {
                        Some((_, key_mark, _)) if key_mark.index() < m.index() => *key_mark,
                        _ => m,
                    };
                    self.push_node(Node::Map(m, entries), None);
                }
            }
            Event::Alias(..) => self.push_node(Node::Scalar(mark), None),
            _ => {}
        }
    }
}

/// Deeper than any config (serde_yaml itself refuses nesting past 128), shallow enough that
/// walking the tree cannot exhaust the stack.
const MAX_DEPTH: usize = 256;

/// The first document's tree. Events are pulled one by one rather than through
/// `Parser::load`, which recurses once per nesting level and so overflows the stack on a
/// deeply nested block sequence (`- - - - ...`); past `MAX_DEPTH` there is no tree.
fn load(text: &str) -> Option<Node> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().ok()?;
        if matches!(ev, Event::DocumentEnd | Event::StreamEnd) {
            break;
        }
        builder.on_event(ev, mark);
        if builder.stack.len() > MAX_DEPTH {
            return None;
        }
    }
    builder.root
}

/// 1-based (line, column) of the first sequence or mapping nested more than `limit` deep,
/// found in one linear pass (libyaml, under serde_yaml, takes time quadratic in the depth of
/// flow collections before serde's own depth limit applies). `None` when there is none or
/// the text does not parse before that point. The scanner reads ahead in flow context and
/// gives up past 255 open brackets; that counts as too deep.
pub fn too_deep(text: &str, limit: usize) -> Option<(usize, usize)> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(e) if e.info() == "recursion limit exceeded" => {
                return Some((e.marker().line(), e.marker().col() + 1));
            }
            Err(_) => return None,
        };
        match ev {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > limit {
                    return Some((mark.line(), mark.col() + 1));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::DocumentEnd | Event::StreamEnd => return None,
            _ => {}
        }
    }
}

/// A mapping key that appears twice in the same mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Field path of the second occurrence, such as `upstreams.stable`.
    pub field: String,
    pub key: String,
    /// 1-based position of the second occurrence's key.
    pub line: usize,
    pub column: usize,
}

/// The first key (in document order) repeated within one mapping, which YAML forbids but a
/// typed map would silently collapse. `None` if there is none or the text does not parse.
pub fn duplicate_key(text: &str) -> Option<DuplicateKey> {
    fn walk(node: &Node, path: &str) -> Option<DuplicateKey> {
        match node {
            Node::Scalar(_) => None,
            Node::Seq(_, items) => items
                .iter()
                .enumerate()
                .find_map(|(i, n)| walk(n, &format!("{path}[{i}]"))),
            Node::Map(_, entries) => entries.iter().enumerate().find_map(|(i, (key, mark, n))| {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                // Non-scalar keys have no text; they are not compared.
                let repeated = !key.is_empty() && entries[..i].iter().any(|(k, ..)| k == key);
                if repeated {
                    return Some(DuplicateKey {
                        field,
                        key: key.clone(),
                        line: mark.line(),
                        column: mark.col() + 1,
                    });
                }
                walk(n, &field)
            }),
        }
    }
    walk(&load(text)?, "")
}

/// 1-based (line, column) of `path`'s value in `text`, or of its deepest present ancestor
/// (a missing field is reported where its parent is). `None` if the text does not parse.
pub fn field_position(text: &str, path: &str) -> Option<(usize, usize)> {
    let root = load(text)?;
    let mut node = &root;
    let mut best = node.mark();
    for seg in parse_path(path) {
        let next =
            match (&seg, node) {
                (Seg::Key(k), Node::Map(_, entries)) => entries
                    .iter()
                    .find(|(key, ..)| key == k)
                    .map(|(_, key_mark, n)| {
                        // A scalar value is best reported where it stands; a block at its key.
                        match n {
                            Node::Scalar(_) => (n, n.mark()),
                            _ => (n, *key_mark),
                        }
                    }),
                (Seg::Index(i), Node::Seq(_, items)) => items.get(*i).map(|n| (n, n.mark())),
                _ => None,
            };
        match next {
            Some((n, mark)) => {
                node = n;
                best = mark;
            }
            None => break,
        }
    }
    Some((best.line(), best.col() + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "listeners:\n  - name: public\n    address: 1.2.3.4:80\nroutes:\n  - name: a\n    split:\n      - cohort: s\n        percent: 95\n      - cohort: c\n        percent: 5.5\n";

    #[test]
    fn finds_nested_fields() {
        assert_eq!(
            field_position(DOC, "routes[0].split[1].percent"),
            Some((10, 18))
        );
        assert_eq!(field_position(DOC, "listeners[0].address"), Some((3, 14)));
        assert_eq!(field_position(DOC, "routes[0].split"), Some((6, 5)));
    }

    #[test]
    fn missing_field_reports_nearest_ancestor() {
        assert_eq!(
            field_position(DOC, "routes[0].split[1].upstream"),
            Some((9, 9))
        );
        assert_eq!(field_position(DOC, "routes[3]"), Some((4, 1)));
    }

    #[test]
    fn finds_the_second_of_two_equal_keys() {
        let text = "a:\n  b: 1\n  c: [{x: 1, y: 2, x: 3}]\n  b: 2\n";
        assert_eq!(
            duplicate_key(text),
            Some(DuplicateKey {
                field: "a.c[0].x".into(),
                key: "x".into(),
                line: 3,
                column: 20,
            })
        );
        assert_eq!(duplicate_key(DOC), None);
        assert_eq!(duplicate_key("a: ["), None);
    }

    #[test]
    fn flow_collections_are_found_at_their_opening_bracket() {
        let text = "a:\n  - {x: 1}\n  - {}\n  - [1, {y: 2}]\n";
        assert_eq!(field_position(text, "a[0]"), Some((2, 5)));
        assert_eq!(field_position(text, "a[1]"), Some((3, 5)));
        assert_eq!(field_position(text, "a[2][1]"), Some((4, 9)));
        assert_eq!(field_position(text, "a[2][1].y"), Some((4, 13)));
    }

    #[test]
    fn bad_yaml_gives_none() {
        assert_eq!(field_position("a: [", "a"), None);
    }

    #[test]
    fn too_deep_finds_the_first_collection_past_the_limit() {
        // Root mapping, routes, a route, its split, a split entry: five levels.
        assert_eq!(too_deep(DOC, 5), None);
        assert_eq!(too_deep(DOC, 4).map(|(line, _)| line), Some(7));
        assert!(too_deep(DOC, 1).is_some());
        assert_eq!(too_deep("[[[1]]]", 2), Some((1, 3)));
        assert_eq!(too_deep("[[[1]]]", 3), None);
        assert_eq!(too_deep(&"[".repeat(200), 128), Some((1, 129)));
        assert_eq!(too_deep(&"[".repeat(300_000), 128), Some((1, 256)));
        assert_eq!(too_deep(&"{a: ".repeat(300_000), 128), Some((1, 1021)));
        assert!(too_deep(&"- ".repeat(300_000), 128).is_some());
        assert_eq!(too_deep("a: [", 2), None);
    }

    #[test]
    fn deep_nesting_gives_none_without_overflowing_the_stack() {
        let indented = |n: usize| (0..n).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        for n in [MAX_DEPTH + 1, 100_000] {
            for text in [
                "- ".repeat(n),
                format!("{}x{}", "[".repeat(n), "]".repeat(n)),
                format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)),
                indented(n.min(2_000)),
            ] {
                assert_eq!(duplicate_key(&text), None, "depth {n}");
                assert_eq!(field_position(&text, "a"), None, "depth {n}");
            }
        }
        let shallow = format!("{}a: 1\n", "- ".repeat(MAX_DEPTH - 1));
        assert!(field_position(&shallow, "a").is_some());
    }
}
