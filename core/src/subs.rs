//! The subscription index: which connection slots have a pattern matching a topic.
//!
//! Exact patterns live in a hash map (one lookup per publish); wildcard patterns in a trie of
//! segments, so matching costs O(depth) rather than O(patterns). A slot appears once per distinct
//! pattern; the broker deduplicates connections holding several matching patterns.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::topic::Pattern;

/// Index of a connection in the broker's connection table.
pub(crate) type Slot = u32;

#[derive(Default)]
pub(crate) struct SubIndex {
    exact: HashMap<Arc<str>, Vec<Slot>>,
    wild: Node,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Self>,
    star: Option<Box<Self>>,
    /// Patterns ending at this node.
    here: Vec<Slot>,
    /// Patterns ending with `>` after this node.
    rest: Vec<Slot>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

fn remove_slot(list: &mut Vec<Slot>, slot: Slot) {
    if let Some(i) = list.iter().position(|s| *s == slot) {
        list.swap_remove(i);
        if list.capacity() > 8 && list.len() < list.capacity() / 4 {
            list.shrink_to_fit();
        }
    }
}

impl SubIndex {
    pub(crate) fn insert(&mut self, pattern: &Pattern, slot: Slot) {
        if !pattern.is_wildcard() {
            let key = pattern.shared().clone();
            self.exact.entry(key).or_default().push(slot);
            return;
        }
        let mut node = &mut self.wild;
        let segments: SmallVec<[&str; 16]> = pattern.as_str().split('.').collect();
        for (i, seg) in segments.iter().enumerate() {
            match *seg {
                ">" if i + 1 == segments.len() => {
                    node.rest.push(slot);
                    return;
                }
                "*" => node = node.star.get_or_insert_with(Box::default),
                seg => node = node.children.entry(Box::from(seg)).or_default(),
            }
        }
        node.here.push(slot);
    }

    pub(crate) fn remove(&mut self, pattern: &Pattern, slot: Slot) {
        if !pattern.is_wildcard() {
            if let Some(list) = self.exact.get_mut(pattern.as_str()) {
                remove_slot(list, slot);
                if list.is_empty() {
                    self.exact.remove(pattern.as_str());
                }
            }
            return;
        }
        let segments: SmallVec<[&str; 16]> = pattern.as_str().split('.').collect();
        remove_wild(&mut self.wild, &segments, slot);
    }

    /// Calls `f` for every (slot, pattern) entry matching `topic`; a slot may come several times.
    pub(crate) fn for_each_match(&self, topic: &str, mut f: impl FnMut(Slot)) {
        if let Some(list) = self.exact.get(topic) {
            list.iter().for_each(|s| f(*s));
        }
        if self.wild.is_empty() {
            return;
        }
        let segments: SmallVec<[&str; 16]> = topic.split('.').collect();
        walk(&self.wild, &segments, &mut f);
    }

    #[cfg(test)]
    /// Number of exact topics.
    pub(crate) fn exact_topics(&self) -> usize {
        self.exact.len()
    }
}

fn remove_wild(node: &mut Node, segments: &[&str], slot: Slot) {
    match segments {
        [">"] => remove_slot(&mut node.rest, slot),
        [] => remove_slot(&mut node.here, slot),
        ["*", tail @ ..] => {
            if let Some(star) = node.star.as_deref_mut() {
                remove_wild(star, tail, slot);
                if star.is_empty() {
                    node.star = None;
                }
            }
        }
        [seg, tail @ ..] => {
            if let Some(child) = node.children.get_mut(*seg) {
                remove_wild(child, tail, slot);
                if child.is_empty() {
                    node.children.remove(*seg);
                }
            }
        }
    }
}

fn walk(node: &Node, segments: &[&str], f: &mut impl FnMut(Slot)) {
    let Some((seg, tail)) = segments.split_first() else {
        node.here.iter().for_each(|s| f(*s));
        return;
    };
    node.rest.iter().for_each(|s| f(*s));
    if let Some(child) = node.children.get(*seg) {
        walk(child, tail, f);
    }
    if let Some(star) = &node.star {
        walk(star, tail, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s, Default::default()).unwrap()
    }

    fn matches(index: &SubIndex, topic: &str) -> Vec<Slot> {
        let mut out = Vec::new();
        index.for_each_match(topic, |s| out.push(s));
        out.sort_unstable();
        out
    }

    #[test]
    fn exact_and_wildcards() {
        let mut ix = SubIndex::default();
        ix.insert(&pat("a.b"), 1);
        ix.insert(&pat("a.*"), 2);
        ix.insert(&pat("a.>"), 3);
        ix.insert(&pat(">"), 4);
        ix.insert(&pat("*.b.c"), 5);
        assert_eq!(matches(&ix, "a.b"), vec![1, 2, 3, 4]);
        assert_eq!(matches(&ix, "a.b.c"), vec![3, 4, 5]);
        assert_eq!(matches(&ix, "a"), vec![4]);
        assert_eq!(matches(&ix, "x.y"), vec![4]);
        ix.remove(&pat("a.*"), 2);
        ix.remove(&pat(">"), 4);
        assert_eq!(matches(&ix, "a.b"), vec![1, 3]);
        ix.remove(&pat("a.>"), 3);
        ix.remove(&pat("*.b.c"), 5);
        assert!(ix.wild.is_empty(), "trie pruned when empty");
        ix.remove(&pat("a.b"), 1);
        assert_eq!(ix.exact_topics(), 0);
    }

    #[test]
    fn agrees_with_pattern_matches() {
        let patterns = [
            "a", "a.b", "a.*", "*.b", "a.>", "*.*", ">", "a.*.c", "*.>", "b.c.>",
        ];
        let topics = [
            "a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "b.c.d.e", "c.d",
        ];
        let mut ix = SubIndex::default();
        for (i, p) in patterns.iter().enumerate() {
            ix.insert(&pat(p), i as Slot);
        }
        for t in topics {
            let expected: Vec<Slot> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| pat(p).matches(t))
                .map(|(i, _)| i as Slot)
                .collect();
            assert_eq!(matches(&ix, t), expected, "topic {t}");
        }
    }
}
