//! A subscription tree: MQTT topic filters by level, so matching a topic costs its
//! number of levels (plus the wildcard branches on the way), not the number of filters.
//! Persistent sessions' subscriptions live here (one tree per org).

use std::collections::HashMap;

/// Who subscribed with a filter, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The subscriber (a persistent session's client id).
    pub client: String,
    /// The subscription's options: maximum QoS and flags (see `state::opts`).
    pub opts: u8,
    /// The shared-subscription group (`$share/<group>/…`), if any.
    pub group: Option<String>,
    /// The MQTT 5 subscription identifier; 0 for none.
    pub id: u32,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    /// The `+` child.
    plus: Option<Box<Node>>,
    /// Filters ending here.
    here: Vec<Entry>,
    /// Filters ending with `#` below this level (which also match this level).
    hash: Vec<Entry>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.hash.is_empty()
    }
}

/// Topic filters and their subscribers.
#[derive(Debug, Default)]
pub(crate) struct FilterTree {
    root: Node,
    len: usize,
    /// Subscribers per distinct filter (as given, `$share/…` included): what this node
    /// needs from the cluster.
    holders: HashMap<String, usize>,
    /// Told when a filter gets its first holder or loses its last (cluster interest).
    watch: Option<Watch>,
}

/// Where a tree reports its distinct filters coming and going, with its org.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub org: registry::OrgId,
    pub tx: tokio::sync::mpsc::UnboundedSender<Interest>,
}

/// A change of the filters a node holds (see `cluster`).
#[derive(Debug)]
pub(crate) enum Interest {
    Add(registry::OrgId, String),
    Remove(registry::OrgId, String),
    /// Answered once every change sent before it is in effect.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Splits `$share/<group>/<filter>` into the group and the filter.
pub(crate) fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
    {
        Some((group, rest)) => (Some(group), rest),
        None => (None, filter),
    }
}

/// The level of `topic` that is its first level as its clients see it, when that level
/// starts with `$`: wildcards never match it (MQTT 4.7.2). An internal topic
/// (`/tenants/<org>/…`) starts after the tenant prefix; any other at level 0.
fn dollar_level(levels: &[&str]) -> Option<usize> {
    let first = match levels {
        ["", "tenants", _, ..] => 3,
        _ => 0,
    };
    levels
        .get(first)
        .filter(|l| l.starts_with('$'))
        .map(|_| first)
}

/// Whether MQTT filter `filter` (not a shared one) matches `topic`: `+` one level, `#`
/// the rest (its parent level included); wildcards never match a first level that
/// starts with `$` (MQTT 4.7.2), the first level after the tenant prefix included.
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    let levels: Vec<&str> = topic.split('/').collect();
    let dollar = dollar_level(&levels);
    let mut f = filter.split('/');
    let mut t = levels.iter().enumerate();
    loop {
        match (f.next(), t.next()) {
            (Some("#" | "+"), Some((i, _))) if dollar == Some(i) => return false,
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some((_, b))) if a == *b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl FilterTree {
    /// Reports filter changes to `watch` from now on, starting with an `Add` for every
    /// filter held.
    pub(crate) fn set_watch(&mut self, watch: Watch) {
        for f in self.holders.keys() {
            let _ = watch.tx.send(Interest::Add(watch.org.clone(), f.clone()));
        }
        self.watch = Some(watch);
    }

    /// Forgets every subscription (the org is gone), reporting each filter removed; the
    /// watch stays.
    pub(crate) fn clear(&mut self) {
        if let Some(w) = &self.watch {
            for f in self.holders.keys() {
                let _ = w.tx.send(Interest::Remove(w.org.clone(), f.clone()));
            }
        }
        let watch = self.watch.take();
        *self = FilterTree::default();
        self.watch = watch;
    }

    fn held(&mut self, filter: &str) {
        let n = self.holders.entry(filter.to_owned()).or_insert(0);
        *n += 1;
        if *n == 1 {
            if let Some(w) = &self.watch {
                let _ = w.tx.send(Interest::Add(w.org.clone(), filter.to_owned()));
            }
        }
    }

    fn released(&mut self, filter: &str) {
        if let Some(n) = self.holders.get_mut(filter) {
            *n -= 1;
            if *n == 0 {
                self.holders.remove(filter);
                if let Some(w) = &self.watch {
                    let _ =
                        w.tx.send(Interest::Remove(w.org.clone(), filter.to_owned()));
                }
            }
        }
    }

    /// Subscriptions held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds (or replaces) `client`'s subscription with `filter`
    /// (`$share/<group>/<filter>` for a shared one).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, filter: &str, client: &str, opts: u8) {
        self.insert_with_id(filter, client, opts, 0);
    }

    /// [`FilterTree::insert`] with an MQTT 5 subscription identifier (0: none).
    pub(crate) fn insert_with_id(&mut self, filter: &str, client: &str, opts: u8, id: u32) {
        let (group, path) = split_shared(filter);
        let entry = Entry {
            client: client.to_owned(),
            opts,
            group: group.map(str::to_owned),
            id,
        };
        let mut node = &mut self.root;
        let mut levels = path.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                let list = &mut node.hash;
                if let Some(e) = list.iter_mut().find(|e| same(e, &entry)) {
                    e.opts = opts;
                    e.id = id;
                } else {
                    list.push(entry);
                    self.len += 1;
                    self.held(filter);
                }
                return;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.to_owned()).or_default()
            };
        }
        if let Some(e) = node.here.iter_mut().find(|e| same(e, &entry)) {
            e.opts = opts;
            e.id = id;
        } else {
            node.here.push(entry);
            self.len += 1;
            self.held(filter);
        }
    }

    /// Removes `client`'s subscription with `filter`; whether it had one.
    pub(crate) fn remove(&mut self, filter: &str, client: &str) -> bool {
        let (group, path) = split_shared(filter);
        let levels: Vec<&str> = path.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, client, group);
        if removed {
            self.len -= 1;
            self.released(filter);
        }
        removed
    }

    /// Calls `f` with every subscription whose filter matches `topic`.
    pub(crate) fn matches<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a Entry)) {
        let levels: Vec<&str> = topic.split('/').collect();
        // Wildcards do not match a first level starting with `$` (MQTT 4.7.2).
        let dollar = dollar_level(&levels);
        walk(&self.root, &levels, 0, dollar, &mut f);
    }
}

fn same(a: &Entry, b: &Entry) -> bool {
    a.client == b.client && a.group == b.group
}

fn remove_at(node: &mut Node, levels: &[&str], client: &str, group: Option<&str>) -> bool {
    let is = |e: &Entry| e.client == client && e.group.as_deref() == group;
    let Some((level, rest)) = levels.split_first() else {
        let before = node.here.len();
        node.here.retain(|e| !is(e));
        return node.here.len() != before;
    };
    if *level == "#" && rest.is_empty() {
        let before = node.hash.len();
        node.hash.retain(|e| !is(e));
        return node.hash.len() != before;
    }
    if *level == "+" {
        let Some(child) = node.plus.as_deref_mut() else {
            return false;
        };
        let removed = remove_at(child, rest, client, group);
        if child.is_empty() {
            node.plus = None;
        }
        return removed;
    }
    let Some(child) = node.children.get_mut(*level) else {
        return false;
    };
    let removed = remove_at(child, rest, client, group);
    if child.is_empty() {
        node.children.remove(*level);
    }
    removed
}

/// Visits the entries of `node` (at level `depth` of the topic) that match the rest of
/// the topic, `levels`; no wildcard matches level `dollar`.
fn walk<'a>(
    node: &'a Node,
    levels: &[&str],
    depth: usize,
    dollar: Option<usize>,
    f: &mut impl FnMut(&'a Entry),
) {
    let wildcards = dollar != Some(depth);
    if wildcards {
        node.hash.iter().for_each(&mut *f);
    }
    let Some((level, rest)) = levels.split_first() else {
        node.here.iter().for_each(&mut *f);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, rest, depth + 1, dollar, f);
    }
    if wildcards {
        if let Some(child) = node.plus.as_deref() {
            walk(child, rest, depth + 1, dollar, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(tree: &FilterTree, topic: &str) -> Vec<String> {
        let mut v = Vec::new();
        tree.matches(topic, |e| v.push(e.client.clone()));
        v.sort();
        v
    }

    #[test]
    fn matches_like_mqtt() {
        let mut t = FilterTree::default();
        t.insert("a/b/c", "exact", 1);
        t.insert("a/+/c", "plus", 1);
        t.insert("a/#", "hash", 1);
        t.insert("#", "all", 0);
        t.insert("+/+", "two", 0);
        t.insert("$share/g/a/b/c", "shared", 1);
        assert_eq!(t.len(), 6);
        assert_eq!(
            matching(&t, "a/b/c"),
            ["all", "exact", "hash", "plus", "shared"]
        );
        // `a/#` matches its parent level too.
        assert_eq!(matching(&t, "a"), ["all", "hash"]);
        assert_eq!(matching(&t, "a/x"), ["all", "hash", "two"]);
        assert_eq!(matching(&t, "b/b/c"), ["all"]);
        // Empty levels are levels (internal topics start with one).
        t.insert("/tenants/acme/#", "tenant", 1);
        assert_eq!(matching(&t, "/tenants/acme/x"), ["all", "tenant"]);
        assert_eq!(matching(&t, "/tenants/other/x"), ["all"]);
        // `$` topics are not matched by wildcards at the first level.
        assert_eq!(matching(&t, "$SYS/x"), Vec::<String>::new());
        // Nor at the first level a client sees, after the tenant prefix.
        t.insert("/tenants/acme/+/x", "tenant-plus", 1);
        t.insert("/tenants/acme/$SYS/x", "tenant-exact", 1);
        t.insert("/tenants/acme/$SYS/#", "tenant-below", 1);
        assert_eq!(
            matching(&t, "/tenants/acme/$SYS/x"),
            ["all", "tenant-below", "tenant-exact"]
        );
        assert_eq!(
            matching(&t, "/tenants/acme/a/x"),
            ["all", "tenant", "tenant-plus"]
        );
    }

    #[test]
    fn one_filter_matches_like_the_tree() {
        for (filter, topic, hit) in [
            ("a/+/c", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/b", "a/b/c", false),
            ("+/+", "a/b", true),
            ("#", "$SYS/x", false),
            ("/tenants/acme/#", "/tenants/acme/x", true),
            ("/tenants/acme/#", "/tenants/other/x", false),
            ("/tenants/acme/#", "/tenants/acme/$x/y", false),
            ("/tenants/acme/+/y", "/tenants/acme/$x/y", false),
            ("/tenants/acme/$x/+", "/tenants/acme/$x/y", true),
            ("/tenants/acme/$x/#", "/tenants/acme/$x", true),
            ("/tenants/+/$x/y", "/tenants/acme/$x/y", true),
        ] {
            let mut t = FilterTree::default();
            t.insert(filter, "c", 0);
            let mut tree = false;
            t.matches(topic, |_| tree = true);
            assert_eq!(filter_matches(filter, topic), hit, "{filter} vs {topic}");
            assert_eq!(tree, hit, "tree: {filter} vs {topic}");
        }
    }

    #[test]
    fn removal_prunes_and_replaces() {
        let mut t = FilterTree::default();
        t.insert("a/+/c", "x", 0);
        t.insert("a/+/c", "x", 1);
        assert_eq!(t.len(), 1, "a second subscribe replaces");
        let mut qos = 9;
        t.matches("a/b/c", |e| qos = e.opts);
        assert_eq!(qos, 1);
        assert!(!t.remove("a/+/c", "y"));
        assert!(t.remove("a/+/c", "x"));
        assert!(!t.remove("a/+/c", "x"));
        assert_eq!(t.len(), 0);
        assert!(t.root.is_empty(), "empty branches are pruned");
        t.insert("$share/g/a/#", "x", 1);
        assert!(!t.remove("a/#", "x"), "a shared subscription is its own");
        assert!(t.remove("$share/g/a/#", "x"));
    }

    /// The cluster's interest: one `Add` when a filter gets its first holder, one
    /// `Remove` when it loses its last; replacing a subscription changes nothing.
    #[test]
    fn the_watch_sees_each_distinct_filter_come_and_go() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let org = registry::OrgId::try_from("acme".to_owned()).unwrap();
        let mut t = FilterTree::default();
        t.insert("a/b", "held-before", 0);
        t.set_watch(Watch {
            org: org.clone(),
            tx,
        });
        t.insert("a/+", "x", 0);
        t.insert("a/+", "y", 1);
        t.insert("a/+", "y", 2); // replaced: still two holders
        t.insert("$share/g/a/+", "z", 1);
        assert!(t.remove("a/+", "x"));
        assert!(!t.remove("a/+", "x"));
        assert!(t.remove("a/+", "y"));
        t.insert("c/#", "x", 0);
        t.clear();
        let mut seen = Vec::new();
        while let Ok(i) = rx.try_recv() {
            seen.push(match i {
                Interest::Add(o, f) => format!("+{o}:{f}"),
                Interest::Remove(o, f) => format!("-{o}:{f}"),
                Interest::Barrier(_) => "barrier".into(),
            });
        }
        let (head, mut tail) = seen.split_at(5);
        assert_eq!(
            head,
            [
                "+acme:a/b",
                "+acme:a/+",
                "+acme:$share/g/a/+",
                "-acme:a/+",
                "+acme:c/#"
            ]
        );
        let mut cleared = tail.to_vec();
        cleared.sort();
        tail = &cleared;
        assert_eq!(tail, ["-acme:$share/g/a/+", "-acme:a/b", "-acme:c/#"]);
        assert_eq!(t.len(), 0);
    }
}
