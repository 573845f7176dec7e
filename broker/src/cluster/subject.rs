//! Internal MQTT topics and filters as NATS subjects, so that NATS does the filtering
//! between nodes.
//!
//! The internal topic `/tenants/<org>/<l1>/<l2>/…` is the subject
//! `certmq.m.<org>.<l1>.<l2>.…`, each level escaped into a valid NATS token: NATS
//! tokens cannot be empty nor contain `.`, `*`, `>` or whitespace, MQTT levels can.
//! A level's bytes `%`, `.`, `*`, `>`, whitespace and other non-printable ASCII become
//! `%XX` (hex, upper case); an empty level is a lone `%` (which no escaped level can
//! be). A filter's `+` is `*`, a trailing `#` is `>` plus the subject of the parent
//! level (MQTT `a/#` matches `a`).

/// Every subject of a message between nodes starts with this.
pub(crate) const MESSAGES: &str = "certmq.m";
/// Retained messages: `certmq.r.<org>.<levels…>`, the last one per subject kept.
pub(crate) const RETAINED: &str = "certmq.r";

/// Whether `b` must be escaped in a token.
fn special(b: u8) -> bool {
    matches!(b, b'%' | b'.' | b'*' | b'>') || b <= b' ' || b == 0x7f
}

/// One MQTT level (or an org id, a group name) as a NATS token.
pub(crate) fn token(level: &str) -> String {
    if level.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(level.len());
    for (i, c) in level.char_indices() {
        let b = level.as_bytes()[i];
        if c.is_ascii() && special(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The MQTT level a token stands for (`None`: not a token [`token`] makes).
pub(crate) fn level(token: &str) -> Option<String> {
    let mut out = String::new();
    push_level(&mut out, token)?;
    Some(out)
}

/// Appends the MQTT level `token` stands for to `out` (`None`: not a token [`token`]
/// makes; `out` is then left as it was or longer). Runs for every level of every
/// message from another node: a token without escapes (most) is copied as it is,
/// with no allocation of its own.
fn push_level(out: &mut String, token: &str) -> Option<()> {
    if token == "%" {
        return Some(());
    }
    if !token.contains('%') {
        out.push_str(token);
        return Some(());
    }
    let bytes = token.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    out.push_str(std::str::from_utf8(&decoded).ok()?);
    Some(())
}

/// Splits an internal topic or filter into its org and the levels after it.
fn split_internal(internal: &str) -> Option<(&str, &str)> {
    internal.strip_prefix("/tenants/")?.split_once('/')
}

/// The subject of internal topic `/tenants/<org>/<levels…>`; `None` for anything else.
pub(crate) fn subject(topic: &str) -> Option<String> {
    let (org, rest) = split_internal(topic)?;
    let mut s = format!("{MESSAGES}.{}", token(org));
    for l in rest.split('/') {
        s.push('.');
        s.push_str(&token(l));
    }
    Some(s)
}

/// The subject of the retained message at internal topic `topic`.
pub(crate) fn retained_subject(topic: &str) -> Option<String> {
    let s = subject(topic)?;
    Some(format!("{RETAINED}{}", &s[MESSAGES.len()..]))
}

/// The internal topic of a subject [`subject`] made.
pub(crate) fn topic(subject: &str) -> Option<(String, String)> {
    topic_under(MESSAGES, subject)
}

/// The internal topic of a subject [`retained_subject`] made.
pub(crate) fn retained_topic(subject: &str) -> Option<(String, String)> {
    topic_under(RETAINED, subject)
}

fn topic_under(prefix: &str, subject: &str) -> Option<(String, String)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut tokens = rest.split('.');
    let org = level(tokens.next()?)?;
    // One allocation for the whole topic (escapes only shorten a level).
    let mut topic = String::with_capacity("/tenants/".len() + rest.len());
    topic.push_str("/tenants/");
    topic.push_str(&org);
    let mut levels = 0;
    for t in tokens {
        topic.push('/');
        push_level(&mut topic, t)?;
        levels += 1;
    }
    (levels > 0).then_some((org, topic))
}

/// The subjects that carry what internal filter `/tenants/<org>/<filter…>` (not a
/// shared one) matches: one, or two for a trailing `#` (its parent level too). `None`
/// for a filter outside an org's topic space.
pub(crate) fn filter_subjects(filter: &str) -> Option<Vec<String>> {
    let (org, rest) = split_internal(filter)?;
    let mut base = format!("{MESSAGES}.{}", token(org));
    let levels: Vec<&str> = rest.split('/').collect();
    let mut out = Vec::with_capacity(2);
    for (i, l) in levels.iter().enumerate() {
        let last = i + 1 == levels.len();
        match *l {
            "#" if last => {
                // `a/#` matches `a` itself: not for `#` alone (no topic is the org).
                if i > 0 {
                    out.push(base.clone());
                }
                base.push_str(".>");
                out.push(base);
                return Some(out);
            }
            "+" => base.push_str(".*"),
            l => {
                base.push('.');
                base.push_str(&token(l));
            }
        }
    }
    out.push(base);
    Some(out)
}

/// Whether NATS subject filter `filter` matches `subject` (the NATS rules: `*` one
/// token, a trailing `>` one or more).
#[cfg(test)]
fn nats_matches(filter: &str, subject: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, ft) in f.iter().enumerate() {
        match *ft {
            ">" if i + 1 == f.len() => return s.len() > i,
            "*" if i < s.len() => {}
            t if s.get(i) == Some(&t) => {}
            _ => return false,
        }
    }
    f.len() == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tree::filter_matches;

    /// A valid NATS token: not empty, none of `.`, `*`, `>` or whitespace.
    fn valid_token(t: &str) -> bool {
        !t.is_empty() && !t.contains(['.', '*', '>']) && !t.chars().any(char::is_whitespace)
    }

    const LEVELS: &[&str] = &[
        "a", "b", "", "%", "%25", ".", "a.b", "*", ">", "a b", "\t", "\r\n", "\u{7f}", "\u{1}",
        "$SYS", "$share", "é", "日本", "x%2Ey", "100%", "..", "a*b>c", "+x", "x#",
    ];

    #[test]
    fn every_level_is_a_valid_token_and_comes_back() {
        for l in LEVELS {
            let t = token(l);
            assert!(valid_token(&t), "{l:?} → {t:?}");
            assert_eq!(level(&t).as_deref(), Some(*l), "{l:?} → {t:?}");
        }
        // Every ASCII byte on its own and inside a level.
        for b in 0u8..=0x7f {
            let s = String::from(char::from(b));
            for l in [s.clone(), format!("x{s}y")] {
                let t = token(&l);
                assert!(valid_token(&t), "{l:?} → {t:?}");
                assert_eq!(level(&t), Some(l));
            }
        }
        // Distinct levels, distinct tokens.
        let mut seen = std::collections::HashSet::new();
        for l in LEVELS {
            assert!(seen.insert(token(l)), "{l:?}");
        }
    }

    #[test]
    fn topics_round_trip() {
        for t in [
            "/tenants/acme/iot-2/type/t/id/d/evt/e/fmt/json",
            "/tenants/acme/a//b",
            "/tenants/acme/",
            "/tenants/acme//",
            "/tenants/acme/$SYS/x",
            "/tenants/acme/a.b/c*d/e>f/g h/100%",
        ] {
            let s = subject(t).unwrap();
            assert!(s.starts_with("certmq.m.acme."), "{s}");
            assert!(s.split('.').all(valid_token), "{t:?} → {s:?}");
            assert_eq!(topic(&s), Some(("acme".to_owned(), t.to_owned())));
        }
        assert_eq!(
            subject("/tenants/acme/a/b.c/").as_deref(),
            Some("certmq.m.acme.a.b%2Ec.%")
        );
        assert_eq!(
            retained_subject("/tenants/acme/a/b.c/").as_deref(),
            Some("certmq.r.acme.a.b%2Ec.%")
        );
        assert_eq!(
            retained_topic("certmq.r.acme.a.b%2Ec.%"),
            Some(("acme".to_owned(), "/tenants/acme/a/b.c/".to_owned()))
        );
        assert_eq!(retained_topic("certmq.m.acme.a"), None);
        assert_eq!(subject("/elsewhere/a"), None);
        assert_eq!(subject("/tenants/acme"), None);
        assert_eq!(topic("certmq.m.acme"), None);
        assert_eq!(topic("certmq.m.acme.%zz"), None);
        assert_eq!(topic("other.acme.a"), None);
    }

    #[test]
    fn filters_map_wildcards() {
        assert_eq!(
            filter_subjects("/tenants/acme/a/+/c").unwrap(),
            ["certmq.m.acme.a.*.c"]
        );
        assert_eq!(
            filter_subjects("/tenants/acme/a/#").unwrap(),
            ["certmq.m.acme.a", "certmq.m.acme.a.>"]
        );
        assert_eq!(
            filter_subjects("/tenants/acme/#").unwrap(),
            ["certmq.m.acme.>"]
        );
        assert_eq!(
            filter_subjects("/tenants/acme/+").unwrap(),
            ["certmq.m.acme.*"]
        );
        // `#` and `+` inside a level are not wildcards (MQTT refuses such filters;
        // they are still mapped literally).
        assert_eq!(
            filter_subjects("/tenants/acme/a+/b#").unwrap(),
            ["certmq.m.acme.a+.b#"]
        );
        assert_eq!(filter_subjects("/other/a"), None);
    }

    /// Property: over a set of topics and filters, a filter's subjects match a topic's
    /// subject on NATS exactly when the filter matches the topic in MQTT — and never a
    /// topic of another org. One exception: MQTT wildcards do not match a first level
    /// starting with `$`, NATS ones do; there NATS brings the message to the node and
    /// the node's own matching drops it (NATS may match more, never less).
    #[test]
    fn nats_matches_iff_mqtt_matches() {
        let levels = ["a", "b", "", "$x", "a.b", "*", ">", "%", "c d"];
        let mut topics = Vec::new();
        for org in ["acme", "beta"] {
            for a in levels {
                topics.push(format!("/tenants/{org}/{a}"));
                for b in levels {
                    topics.push(format!("/tenants/{org}/{a}/{b}"));
                    for c in ["a", ""] {
                        topics.push(format!("/tenants/{org}/{a}/{b}/{c}"));
                    }
                }
            }
        }
        let parts = ["a", "", "$x", "a.b", "*", "+", "#"];
        let mut filters = Vec::new();
        for a in parts {
            filters.push(format!("/tenants/acme/{a}"));
            for b in parts {
                if a == "#" {
                    continue;
                }
                filters.push(format!("/tenants/acme/{a}/{b}"));
                for c in parts {
                    if b == "#" {
                        continue;
                    }
                    filters.push(format!("/tenants/acme/{a}/{b}/{c}"));
                }
            }
        }
        let mut checked = 0;
        for f in &filters {
            let subs = filter_subjects(f).unwrap();
            for t in &topics {
                let s = subject(t).unwrap();
                let nats = subs.iter().any(|sub| nats_matches(sub, &s));
                let mqtt = filter_matches(f, t);
                if t.starts_with("/tenants/beta/") {
                    assert!(!nats, "acme's filter {f:?} matched beta's {t:?}");
                }
                let dollar = t["/tenants/acme/".len().min(t.len())..].starts_with('$')
                    || t["/tenants/beta/".len().min(t.len())..].starts_with('$');
                if dollar {
                    assert!(
                        nats || !mqtt,
                        "filter {f:?} topic {t:?} ({subs:?} vs {s:?})"
                    );
                } else {
                    assert_eq!(nats, mqtt, "filter {f:?} topic {t:?} ({subs:?} vs {s:?})");
                }
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
