//! The route index: the routes that can take a request, found from its host and path without
//! visiting every route, so that matching costs about the same with one route or thousands.
//!
//! Owns: the host maps (exact names, `*.suffix` names, any host) and, for each of them, a
//! radix trie of path prefixes; built once with the table, read-only afterwards.
//! Must not touch: what a match means (`RouteMatch::matches` confirms every candidate), the
//! routes themselves, and the heap on the request path (a lookup allocates nothing).
//!
//! The answer is the linear first-match scan's: the lowest config index among the routes that
//! match. Every route whose host pattern and path prefix fit the request is a candidate (a
//! superset is fine, the caller's `matches` decides), and the lowest confirmed candidate wins.
//! Hosts are looked up in any case without being folded into a copy: the host maps hash and
//! compare ASCII case-insensitively, as `HostMatch::matches` does.

use std::collections::{BTreeMap, HashMap};

use super::{HostMatch, RouteMatch};

/// Host buckets, each with the path prefixes of its routes.
#[derive(Debug)]
pub(super) struct RouteIndex {
    /// How many routes it was built from.
    routes: usize,
    /// Exact host -> its routes.
    exact: HostMap,
    /// Suffix with its leading dot (`.example.com`) -> its routes.
    suffix: HostMap,
    /// Routes for any host (and, defensively, suffixes that do not start with a dot).
    any: Trie,
}

impl RouteIndex {
    /// Indexes `matchers`, in config order.
    pub(super) fn new<'a>(matchers: impl IntoIterator<Item = &'a RouteMatch>) -> RouteIndex {
        type Bucket<'a> = BTreeMap<&'a [u8], Vec<u32>>;
        let mut exact: HashMap<Box<[u8]>, Bucket<'a>> = HashMap::new();
        let mut suffix: HashMap<Box<[u8]>, Bucket<'a>> = HashMap::new();
        let mut any = Bucket::new();
        let mut routes = 0;
        for (i, m) in matchers.into_iter().enumerate() {
            routes += 1;
            let bucket = match &m.host {
                HostMatch::Exact(h) => exact.entry(lower(h)).or_default(),
                HostMatch::Suffix(s) if s.starts_with('.') => suffix.entry(lower(s)).or_default(),
                HostMatch::Suffix(_) | HostMatch::Any => &mut any,
            };
            let i = u32::try_from(i).expect("fewer than 2^32 routes");
            bucket.entry(m.path_prefix.as_bytes()).or_default().push(i);
        }
        let tries = |map: HashMap<Box<[u8]>, Bucket<'a>>| {
            HostMap::new(
                map.into_iter()
                    .map(|(host, b)| (host, Trie::new(b)))
                    .collect(),
            )
        };
        RouteIndex {
            routes,
            exact: tries(exact),
            suffix: tries(suffix),
            any: Trie::new(any),
        }
    }

    /// How many routes it was built from.
    pub(super) fn len(&self) -> usize {
        self.routes
    }

    /// The lowest index `i` whose route's host and prefix fit `host` and `path` and for which
    /// `is_match(i)` holds. `host` is without port, in any case.
    #[inline]
    pub(super) fn find(
        &self,
        host: &str,
        path: &str,
        mut is_match: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let (host, path) = (host.as_bytes(), path.as_bytes());
        let mut best = usize::MAX;
        if let Some(trie) = self.exact.get(host) {
            trie.lowest(path, &mut best, &mut is_match);
        }
        if !self.suffix.is_empty() {
            // `*.b.c` takes `a.b.c` but not `.b.c`: suffixes start at a dot past the first
            // byte (a '.' byte is never inside a multi-byte UTF-8 character), and none is
            // longer than the longest pattern, so a host of many labels costs no more.
            let from = host.len().saturating_sub(self.suffix.longest).max(1);
            for at in from..host.len() {
                if host[at] == b'.' {
                    if let Some(trie) = self.suffix.get(&host[at..]) {
                        trie.lowest(path, &mut best, &mut is_match);
                    }
                }
            }
        }
        self.any.lowest(path, &mut best, &mut is_match);
        (best != usize::MAX).then_some(best)
    }
}

fn lower(s: &str) -> Box<[u8]> {
    s.as_bytes().to_ascii_lowercase().into_boxed_slice()
}

/// A radix trie of path prefixes: a node per prefix (and per branching point), holding the
/// routes whose prefix ends there, in config order.
#[derive(Debug)]
struct Trie {
    /// The root, the empty prefix, is `nodes[0]`.
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Config indices of the routes whose prefix is exactly this node's, ascending.
    routes: Box<[u32]>,
    /// The lowest config index in this node and below it: no need to look further once a
    /// lower one has matched.
    floor: u32,
    /// Children by the first byte of their label, ascending; labels are never empty.
    edges: Box<[Edge]>,
}

#[derive(Debug)]
struct Edge {
    first: u8,
    label: Box<[u8]>,
    node: u32,
}

impl Trie {
    /// From distinct prefixes (sorted, as a `BTreeMap` keeps them) and their routes.
    fn new(prefixes: BTreeMap<&[u8], Vec<u32>>) -> Trie {
        let items: Vec<(&[u8], Vec<u32>)> = prefixes.into_iter().collect();
        let mut trie = Trie { nodes: Vec::new() };
        trie.grow(&items, 0);
        trie
    }

    /// Adds the node for the prefix that every one of `items` shares up to `depth` (sorted,
    /// distinct, none shorter than `depth`), and what lies below it; returns its id.
    fn grow(&mut self, items: &[(&[u8], Vec<u32>)], depth: usize) -> u32 {
        let id = self.nodes.len();
        self.nodes.push(Node::default());
        let (routes, mut rest) = match items.split_first() {
            Some(((p, r), rest)) if p.len() == depth => (r.as_slice(), rest),
            _ => (&[][..], items),
        };
        let mut floor = routes.first().copied().unwrap_or(u32::MAX);
        let mut edges = Vec::new();
        while let Some(&(head, _)) = rest.first() {
            let first = head[depth];
            let n = rest.iter().take_while(|(p, _)| p[depth] == first).count();
            let (group, tail) = rest.split_at(n);
            // Sorted, so what the first and the last share is what the whole group shares.
            let last = group[n - 1].0;
            let end = depth
                + head[depth..]
                    .iter()
                    .zip(&last[depth..])
                    .take_while(|(a, b)| a == b)
                    .count();
            let node = self.grow(group, end);
            floor = floor.min(self.nodes[node as usize].floor);
            edges.push(Edge {
                first,
                label: head[depth..end].into(),
                node,
            });
            rest = tail;
        }
        self.nodes[id] = Node {
            routes: routes.into(),
            floor,
            edges: edges.into(),
        };
        u32::try_from(id).expect("fewer than 2^32 prefixes")
    }

    /// Lowers `best` to the lowest route here whose prefix `path` starts with and that
    /// `is_match` confirms.
    #[inline]
    fn lowest(&self, path: &[u8], best: &mut usize, is_match: &mut impl FnMut(usize) -> bool) {
        let mut node = &self.nodes[0];
        let mut at = 0;
        while (node.floor as usize) < *best {
            for &r in node.routes.iter() {
                let r = r as usize;
                if r >= *best {
                    break;
                }
                if is_match(r) {
                    *best = r;
                    break;
                }
            }
            let Some(&b) = path.get(at) else { return };
            let Ok(e) = node.edges.binary_search_by_key(&b, |e| e.first) else {
                return;
            };
            let edge = &node.edges[e];
            if !path[at..].starts_with(&edge.label) {
                return;
            }
            at += edge.label.len();
            node = &self.nodes[edge.node as usize];
        }
    }
}

/// Lower-cased host -> trie, looked up with a host in any case: open addressing over a hash
/// that folds ASCII case as it reads, so a lookup neither copies nor allocates.
#[derive(Debug)]
struct HostMap {
    /// A power of two, at least twice the entries; each slot an entry's index + 1, or 0.
    slots: Box<[u32]>,
    entries: Box<[(Box<[u8]>, Trie)]>,
    /// The length of the longest host.
    longest: usize,
}

impl HostMap {
    fn new(entries: Vec<(Box<[u8]>, Trie)>) -> HostMap {
        let mut slots = vec![0u32; (entries.len() * 2).next_power_of_two()];
        let mask = slots.len() - 1;
        for (i, (host, _)) in entries.iter().enumerate() {
            let mut at = folded_hash(host) as usize & mask;
            while slots[at] != 0 {
                at = (at + 1) & mask;
            }
            slots[at] = u32::try_from(i + 1).expect("fewer than 2^32 hosts");
        }
        HostMap {
            longest: entries
                .iter()
                .map(|(host, _)| host.len())
                .max()
                .unwrap_or(0),
            slots: slots.into(),
            entries: entries.into(),
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[inline]
    fn get(&self, host: &[u8]) -> Option<&Trie> {
        if self.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut at = folded_hash(host) as usize & mask;
        loop {
            let (key, trie) = self
                .entries
                .get((self.slots[at] as usize).checked_sub(1)?)?;
            if key.eq_ignore_ascii_case(host) {
                return Some(trie);
            }
            at = (at + 1) & mask;
        }
    }
}

/// A hash of `bytes` with ASCII letters lower-cased, eight bytes at a time.
#[inline]
fn folded_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = (h ^ fold_word(word)).wrapping_mul(K).rotate_left(23);
    }
    // The last eight bytes (overlapping what was read: a copy into a zeroed word would stall
    // the load that follows it), or all of a shorter host, a byte at a time.
    let last = match bytes.len().checked_sub(8) {
        Some(from) => u64::from_le_bytes(bytes[from..].try_into().expect("8 bytes")),
        None => bytes.iter().rev().fold(0, |w, &b| w << 8 | u64::from(b)),
    };
    h = (h ^ fold_word(last)).wrapping_mul(K);
    h ^ (h >> 29) ^ (h >> 47)
}

/// `word` with each byte from `A` to `Z` lower-cased (as `make_ascii_lowercase` on a word).
#[inline]
fn fold_word(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = word & (0x7f * ONES);
    let from_a = low7 + 0x3f * ONES; // top bit set in bytes >= 'A'
    let past_z = low7 + 0x25 * ONES; // top bit set in bytes > 'Z'
    let upper = from_a & !past_z & !word & (0x80 * ONES);
    word | (upper >> 2)
}

#[cfg(test)]
mod tests {
    use super::{fold_word, folded_hash};

    #[test]
    fn fold_word_lowers_ascii_letters_only() {
        for b in 0..=255u8 {
            let bytes = [b, b'A', b, b'z', 0xc3, b, 0x7f, b];
            let want = u64::from_le_bytes(bytes.map(|x| x.to_ascii_lowercase()));
            assert_eq!(fold_word(u64::from_le_bytes(bytes)), want, "{b:#x}");
        }
        let host = "Agent-7.EXAMPLE.com";
        assert_eq!(
            folded_hash(host.as_bytes()),
            folded_hash(b"agent-7.example.com")
        );
    }
}
