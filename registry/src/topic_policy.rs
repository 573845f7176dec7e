//! Topic policy per org (docs/topic-policies.md): `watson` (the default, the fixed
//! Watson IoT topic scheme of docs/contract.md, section 3) or `custom`, where ordered
//! rules per kind of identity say which MQTT topics a client may publish to and
//! subscribe to, with `{type}`, `{id}` and `{app}` filled from its certificate identity.
//!
//! This module owns the record, its validation (every bad entry is a 422
//! `invalid_topic_rule` naming its path, e.g. `rules[1].publish[0]`), which rule
//! applies to an identity (the first whose `who` matches), the expansion of a rule's
//! templates for one identity, and MQTT topic matching. The broker maps the allowed
//! topics into the org's internal topic space (`broker/src/acl.rs`). Pure functions
//! but the two registry calls at the end.

use serde::{Deserialize, Serialize};

use crate::cert::{CertError, Rule};
use crate::error::Result;
use crate::layout;
use crate::names::{Identity, Name, OrgId};
use crate::registry::{Change, Registry};

/// Most rules a policy may have.
pub const MAX_RULES: usize = 64;
/// Most entries in one rule's `publish` or `subscribe` list.
pub const MAX_ENTRIES: usize = 64;
/// Longest template (topic filter, client id, status topic), bytes.
pub const MAX_TEMPLATE_BYTES: usize = 512;

/// Which topic scheme an org's clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TopicMode {
    /// Watson IoT's `iot-2/…` topics (docs/contract.md, section 3).
    #[default]
    Watson,
    /// The org's own rules.
    Custom,
}

/// An org's topic policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({
        "mode": "custom",
        "rules": [
            {"who": "d:*:*", "publish": ["devices/{type}/{id}/#"], "subscribe": ["devices/{type}/{id}/cmd/#"]},
            {"who": "a:*", "publish": ["devices/+/+/cmd/#"], "subscribe": ["devices/#"]}
        ]
    }))
)]
#[serde(deny_unknown_fields)]
pub struct TopicPolicy {
    #[serde(default)]
    pub mode: TopicMode,
    /// Custom mode only: the rules in order; the first whose `who` matches a client's
    /// identity applies to it. No matching rule: the client connects and may neither
    /// publish nor subscribe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<TopicRule>,
    /// Custom mode only: where device and gateway status events go instead of
    /// `iot-2/type/{type}/id/{id}/mon`, e.g. `devices/{type}/{id}/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_topic: Option<String>,
}

/// One rule of a custom policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// Whom it applies to: `d:<type|*>:<id|*>`, `g:<type|*>:<id|*>` or `a:<app|*>`.
    pub who: String,
    /// The client id these clients must use: absent, the Watson one
    /// (`d:<org>:<type>:<id>`, `a:<org>:<app>`, `A:<org>:<app>:<instance>`…); `*`, any
    /// (an empty one gets a broker-assigned id where MQTT allows it); otherwise a
    /// template the client id must equal, e.g. `{id}` or `{app}-worker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Topic filters (templates) a PUBLISH topic must match one of.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic filters (templates) a SUBSCRIBE filter must lie within one of.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// A parsed `who`: `None` is `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Device(Option<Name>, Option<Name>),
    Gateway(Option<Name>, Option<Name>),
    App(Option<Name>),
}

impl Who {
    fn parse(s: &str) -> std::result::Result<Who, String> {
        let part = |p: &str| -> std::result::Result<Option<Name>, String> {
            if p == "*" {
                Ok(None)
            } else {
                Name::try_from(p).map(Some).map_err(|e| e.to_string())
            }
        };
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["d", t, i] => Ok(Who::Device(part(t)?, part(i)?)),
            ["g", t, i] => Ok(Who::Gateway(part(t)?, part(i)?)),
            ["a", a] => Ok(Who::App(part(a)?)),
            _ => Err(format!(
                "{s:?} is not d:<type|*>:<id|*>, g:<type|*>:<id|*> or a:<app|*>"
            )),
        }
    }

    fn matches(&self, identity: &Identity) -> bool {
        let m = |p: &Option<Name>, v: &Name| p.as_ref().is_none_or(|p| p == v);
        match (self, identity) {
            (
                Who::Device(t, i),
                Identity::Device {
                    device_type,
                    device_id,
                },
            ) => m(t, device_type) && m(i, device_id),
            (
                Who::Gateway(t, i),
                Identity::Gateway {
                    gateway_type,
                    gateway_id,
                },
            ) => m(t, gateway_type) && m(i, gateway_id),
            (Who::App(a), Identity::App { app_id }) => m(a, app_id),
            _ => false,
        }
    }

    /// The placeholders its templates may use.
    fn placeholders(&self) -> &'static [&'static str] {
        match self {
            Who::Device(..) | Who::Gateway(..) => &["type", "id"],
            Who::App(_) => &["app"],
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Who::Device(..) => "device",
            Who::Gateway(..) => "gateway",
            Who::App(_) => "application",
        }
    }
}

/// What a client id must be under the rule that applies to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdRule {
    /// The Watson client id of the identity.
    Watson,
    /// Any client id (empty: broker-assigned where MQTT allows it).
    Any,
    /// Exactly this one.
    Exact(String),
}

impl ClientIdRule {
    /// Whether `client_id` is admitted for `identity` in `org`.
    pub fn admits(&self, identity: &Identity, org: &OrgId, client_id: &str) -> bool {
        match self {
            ClientIdRule::Watson => identity.admits_client_id(org, client_id),
            ClientIdRule::Any => true,
            ClientIdRule::Exact(s) => s == client_id,
        }
    }

    /// The client id this rule expects, for messages (`None`: any).
    pub fn expected(&self, identity: &Identity, org: &OrgId) -> Option<String> {
        match self {
            ClientIdRule::Watson => Some(identity.client_id(org)),
            ClientIdRule::Any => None,
            ClientIdRule::Exact(s) => Some(s.clone()),
        }
    }
}

/// The rule that applies to one identity, its templates filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRule {
    /// Its index in the policy's `rules`.
    pub index: usize,
    /// Its `who`, as written.
    pub who: String,
    pub client_id: ClientIdRule,
    /// Topic filters, placeholders filled.
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl AppliedRule {
    /// `rules[1] (d:*:*)`: how messages name it.
    pub fn name(&self) -> String {
        format!("rules[{}] ({})", self.index, self.who)
    }
}

/// The values of an identity's placeholders.
fn values(identity: &Identity) -> [(&'static str, &str); 2] {
    match identity {
        Identity::Device {
            device_type,
            device_id,
        } => [("type", device_type.as_str()), ("id", device_id.as_str())],
        Identity::Gateway {
            gateway_type,
            gateway_id,
        } => [("type", gateway_type.as_str()), ("id", gateway_id.as_str())],
        Identity::App { app_id } => [("app", app_id.as_str()), ("app", app_id.as_str())],
    }
}

/// Fills `{name}` placeholders of a validated template (unknown ones stay as written;
/// validation made sure there are none).
fn fill(template: &str, identity: &Identity) -> String {
    let mut out = template.to_owned();
    for (k, v) in values(identity) {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

fn invalid(message: String) -> crate::Error {
    CertError::new(Rule::InvalidTopicRule, message).into()
}

/// Checks the placeholders of `template`: each `{name}` must be one of `allowed`;
/// with `whole_level`, each must be a whole topic level. Returns the template with
/// every placeholder replaced by `x` (to check the rest as a topic).
fn check_placeholders(
    template: &str,
    allowed: &[&str],
    kind: &str,
    whole_level: bool,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        if rest[open..].starts_with('}') {
            return Err("an unmatched \"}\"".into());
        }
        let Some(close) = rest[open..].find('}') else {
            return Err("an unmatched \"{\"".into());
        };
        let name = &rest[open + 1..open + close];
        if !["type", "id", "app"].contains(&name) {
            return Err(format!(
                "{{{name}}} is not a placeholder ({{type}}, {{id}} or {{app}})"
            ));
        }
        if !allowed.contains(&name) {
            return Err(format!("{{{name}}} is not defined for {kind} rules"));
        }
        if whole_level {
            let after = &rest[open + close + 1..];
            let starts = out.is_empty() || out.ends_with('/');
            if !starts || !(after.is_empty() || after.starts_with('/')) {
                return Err(format!(
                    "{{{name}}} must be a whole topic level (as in devices/{{{name}}}/x)"
                ));
            }
        }
        out.push('x');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Why `s` is not a valid MQTT topic filter for a rule, if it is not.
fn filter_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("an empty topic filter".into());
    }
    if s.starts_with('$') {
        return Some("topics starting with $ are reserved to the broker".into());
    }
    if s.contains('\0') {
        return Some("a NUL character".into());
    }
    let levels: Vec<&str> = s.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if *l == "#" && i != levels.len() - 1 {
            return Some("# is allowed only as the last level".into());
        }
        if l.len() > 1 && (l.contains('#') || l.contains('+')) {
            return Some(format!(
                "a wildcard must be a whole level ({l:?} mixes it with text)"
            ));
        }
    }
    None
}

/// Why `s` is not a valid topic name (no wildcards), if it is not.
fn topic_problem(s: &str) -> Option<String> {
    if s.contains(['+', '#']) {
        return Some("a topic name has no wildcards".into());
    }
    filter_problem(s)
}

impl TopicPolicy {
    /// Checks every field; the first bad one is named by its path (`rules[1].publish[0]`).
    pub fn validate(&self) -> Result<()> {
        if self.mode == TopicMode::Watson {
            if !self.rules.is_empty() {
                return Err(invalid(
                    "rules: the watson mode has fixed rules; set mode custom to give your own"
                        .into(),
                ));
            }
            if self.status_topic.is_some() {
                return Err(invalid(
                    "status_topic: the watson mode publishes status events on iot-2/type/<type>/id/<id>/mon; set mode custom to choose another topic".into(),
                ));
            }
            return Ok(());
        }
        if self.rules.len() > MAX_RULES {
            return Err(invalid(format!(
                "rules: {} rules; at most {MAX_RULES}",
                self.rules.len()
            )));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let who = Who::parse(&rule.who).map_err(|e| invalid(format!("rules[{i}].who: {e}")))?;
            let kind = who.kind();
            if let Some(c) = &rule.client_id {
                let path = format!("rules[{i}].client_id");
                if c.is_empty() {
                    return Err(invalid(format!(
                        "{path}: empty; leave it out for the Watson client id, or use * for any"
                    )));
                }
                if c.len() > MAX_TEMPLATE_BYTES || c.chars().any(char::is_control) {
                    return Err(invalid(format!(
                        "{path}: at most {MAX_TEMPLATE_BYTES} bytes, no control characters"
                    )));
                }
                if c != "*" {
                    check_placeholders(c, who.placeholders(), kind, false)
                        .map_err(|e| invalid(format!("{path}: {e}")))?;
                }
            }
            for (list, entries) in [("publish", &rule.publish), ("subscribe", &rule.subscribe)] {
                if entries.len() > MAX_ENTRIES {
                    return Err(invalid(format!(
                        "rules[{i}].{list}: {} entries; at most {MAX_ENTRIES}",
                        entries.len()
                    )));
                }
                for (j, t) in entries.iter().enumerate() {
                    let path = format!("rules[{i}].{list}[{j}]");
                    if t.len() > MAX_TEMPLATE_BYTES {
                        return Err(invalid(format!(
                            "{path}: longer than {MAX_TEMPLATE_BYTES} bytes"
                        )));
                    }
                    let plain = check_placeholders(t, who.placeholders(), kind, true)
                        .map_err(|e| invalid(format!("{path}: {e}")))?;
                    if let Some(p) = filter_problem(&plain) {
                        return Err(invalid(format!("{path}: {t:?}: {p}")));
                    }
                }
            }
        }
        if let Some(s) = &self.status_topic {
            if s.len() > MAX_TEMPLATE_BYTES {
                return Err(invalid(format!(
                    "status_topic: longer than {MAX_TEMPLATE_BYTES} bytes"
                )));
            }
            let plain = check_placeholders(s, &["type", "id"], "status", true)
                .map_err(|e| invalid(format!("status_topic: {e}")))?;
            if let Some(p) = topic_problem(&plain) {
                return Err(invalid(format!("status_topic: {s:?}: {p}")));
            }
        }
        Ok(())
    }

    pub fn is_custom(&self) -> bool {
        self.mode == TopicMode::Custom
    }

    /// The rule that applies to `identity` (the first whose `who` matches), filled in.
    /// `None` in watson mode, or when no rule matches (everything is denied).
    pub fn rule_for(&self, identity: &Identity) -> Option<AppliedRule> {
        if !self.is_custom() {
            return None;
        }
        self.rules.iter().enumerate().find_map(|(index, r)| {
            let who = Who::parse(&r.who).ok()?;
            if !who.matches(identity) {
                return None;
            }
            let client_id = match r.client_id.as_deref() {
                None => ClientIdRule::Watson,
                Some("*") => ClientIdRule::Any,
                Some(t) => ClientIdRule::Exact(fill(t, identity)),
            };
            Some(AppliedRule {
                index,
                who: r.who.clone(),
                client_id,
                publish: r.publish.iter().map(|t| fill(t, identity)).collect(),
                subscribe: r.subscribe.iter().map(|t| fill(t, identity)).collect(),
            })
        })
    }

    /// The client id rule for `identity`: the Watson one unless a custom rule says
    /// otherwise.
    pub fn client_id_rule(&self, identity: &Identity) -> ClientIdRule {
        self.rule_for(identity)
            .map_or(ClientIdRule::Watson, |r| r.client_id)
    }

    /// Custom mode: the topic (client view) status events of a device or gateway go
    /// to, when the policy names one.
    pub fn status_topic_for(&self, identity: &Identity) -> Option<String> {
        let t = self.status_topic.as_ref().filter(|_| self.is_custom())?;
        match identity {
            Identity::App { .. } => None,
            _ => Some(fill(t, identity)),
        }
    }
}

/// Whether the concrete `topic` matches `filter` (MQTT 4.7; a filter whose first level
/// is a wildcard does not match a topic starting with `$`).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `inner` can match is matched by `outer` (both valid filters).
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let o: Vec<&str> = outer.split('/').collect();
    let i: Vec<&str> = inner.split('/').collect();
    for (n, a) in o.iter().enumerate() {
        if *a == "#" {
            return true;
        }
        // `inner` shorter: only a trailing `#` of `outer` (which also matches its
        // parent level) would cover it, and that returned above.
        let Some(b) = i.get(n) else {
            return false;
        };
        match (*a, *b) {
            (_, "#") => return false,
            ("+", _) => {}
            (a, b) if a == b && b != "+" => {}
            _ => return false,
        }
    }
    o.len() == i.len()
}

/// Whether `s` is a valid topic filter a client may use in custom mode (wildcards as
/// whole levels, `#` last, nothing starting with `$`).
pub fn client_filter_problem(s: &str) -> Option<String> {
    filter_problem(s)
}

/// Whether `s` is a valid topic name a client may publish to in custom mode.
pub fn client_topic_problem(s: &str) -> Option<String> {
    topic_problem(s)
}

impl Registry {
    /// The org's topic policy (`watson` until set).
    pub fn topic_policy(&self, org: &OrgId) -> Result<TopicPolicy> {
        self.get_org(org)?;
        Ok(self
            .get_json(&layout::topic_policy(org))?
            .unwrap_or_default())
    }

    /// Replaces the org's topic policy after checking it (a bad one changes nothing).
    /// The broker applies it to live sessions at once.
    pub fn set_topic_policy(&self, org: &OrgId, policy: TopicPolicy) -> Result<TopicPolicy> {
        policy.validate()?;
        let _g = self.lock();
        self.get_org(org)?;
        self.store
            .apply(vec![Self::put(layout::topic_policy(org), &policy)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> TopicPolicy {
        serde_json::from_str(json).unwrap()
    }

    fn id(s: &str) -> Identity {
        Identity::parse(s).unwrap()
    }

    fn refused(p: &TopicPolicy) -> String {
        match p.validate() {
            Err(crate::Error::Rejected(e)) => {
                assert_eq!(e.rule, Rule::InvalidTopicRule);
                e.message
            }
            other => panic!("{p:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn first_matching_rule_applies_with_its_templates_filled() {
        let p = policy(
            r###"{"mode":"custom","rules":[
                {"who":"d:camera:*","publish":["cams/{id}/#"]},
                {"who":"d:*:*","client_id":"{type}-{id}","publish":["devices/{type}/{id}/#"],"subscribe":["devices/{type}/{id}/cmd/#"]},
                {"who":"a:*","client_id":"*","publish":["devices/+/+/cmd/#"],"subscribe":["#"]}]}"###,
        );
        p.validate().unwrap();
        let cam = p.rule_for(&id("d:camera:c1")).unwrap();
        assert_eq!((cam.index, cam.publish), (0, vec!["cams/c1/#".to_owned()]));
        assert!(cam.subscribe.is_empty());
        assert_eq!(cam.client_id, ClientIdRule::Watson);
        let dev = p.rule_for(&id("d:sensor:s1")).unwrap();
        assert_eq!(dev.index, 1);
        assert_eq!(dev.publish, ["devices/sensor/s1/#"]);
        assert_eq!(dev.subscribe, ["devices/sensor/s1/cmd/#"]);
        assert_eq!(dev.client_id, ClientIdRule::Exact("sensor-s1".into()));
        assert_eq!(dev.name(), "rules[1] (d:*:*)");
        assert_eq!(
            p.rule_for(&id("a:dash")).unwrap().client_id,
            ClientIdRule::Any
        );
        assert!(p.rule_for(&id("g:gw:1")).is_none(), "no rule: denied");
        assert!(TopicPolicy::default().rule_for(&id("a:dash")).is_none());
        let org = OrgId::try_from("acme").unwrap();
        assert!(ClientIdRule::Watson.admits(&id("a:x"), &org, "A:acme:x:1"));
        assert!(!ClientIdRule::Watson.admits(&id("a:x"), &org, "x"));
        assert!(ClientIdRule::Any.admits(&id("a:x"), &org, ""));
    }

    #[test]
    fn bad_rules_are_named_by_their_path() {
        let cases = [
            (
                r###"{"mode":"custom","rules":[{"who":"d:*:*"},{"who":"d:*:*","publish":["x/{app}"]}]}"###,
                "rules[1].publish[0]: {app} is not defined for device rules",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"a:*","subscribe":["ok/#","x/{id}"]}]}"###,
                "rules[0].subscribe[1]: {id} is not defined for application rules",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"d:*:*","publish":["a/#/b"]}]}"###,
                "rules[0].publish[0]",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"d:*:*","publish":[""]}]}"###,
                "empty topic filter",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"d:*:*","publish":["x/{unknown}"]}]}"###,
                "{unknown} is not a placeholder",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"d:*:*","publish":["dev{id}/x"]}]}"###,
                "whole topic level",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"d:*:*","publish":["x/{id"]}]}"###,
                "unmatched",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"d:*:*","publish":["a+/b"]}]}"###,
                "whole level",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"d:*:*","publish":["$SYS/#"]}]}"###,
                "reserved",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"x:*","publish":["a"]}]}"###,
                "rules[0].who",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"d:bad name:*"}]}"###,
                "rules[0].who",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"a:*","client_id":""}]}"###,
                "rules[0].client_id",
            ),
            (
                r###"{"mode":"custom","rules":[{"who":"a:*","client_id":"{id}"}]}"###,
                "rules[0].client_id: {id} is not defined for application rules",
            ),
            (r###"{"mode":"watson","rules":[{"who":"a:*"}]}"###, "rules:"),
            (
                r###"{"mode":"custom","status_topic":"s/{app}"}"###,
                "status_topic",
            ),
            (
                r###"{"mode":"custom","status_topic":"s/+/x"}"###,
                "status_topic",
            ),
        ];
        for (json, want) in cases {
            let m = refused(&policy(json));
            assert!(m.contains(want), "{json}: {m}");
        }
        let many = TopicPolicy {
            mode: TopicMode::Custom,
            rules: vec![
                TopicRule {
                    who: "a:*".into(),
                    client_id: None,
                    publish: vec![],
                    subscribe: vec![],
                };
                MAX_RULES + 1
            ],
            status_topic: None,
        };
        assert!(refused(&many).contains("at most 64"));
        let mut long = policy(r###"{"mode":"custom","rules":[{"who":"a:*"}]}"###);
        long.rules[0].publish = vec!["x".into(); MAX_ENTRIES + 1];
        assert!(refused(&long).contains("rules[0].publish: 65 entries"));
        // Unknown fields are refused when the JSON is read.
        assert!(
            serde_json::from_str::<TopicPolicy>(r###"{"mode":"custom","rulez":[]}"###).is_err()
        );
        assert!(serde_json::from_str::<TopicPolicy>(r###"{"mode":"acl"}"###).is_err());
        // An empty custom policy is valid: it denies everything.
        policy(r###"{"mode":"custom"}"###).validate().unwrap();
        policy(r###"{"mode":"custom","rules":[{"who":"d:*:*","publish":["devices/{type}/{id}/#","+/x","#"]}],"status_topic":"devices/{type}/{id}/status"}"###)
            .validate()
            .unwrap();
    }

    #[test]
    fn topic_matching_follows_mqtt() {
        for (f, t, want) in [
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("+", "", true),
            ("/+", "/x", true),
        ] {
            assert_eq!(topic_matches(f, t), want, "{f} {t}");
        }
    }

    #[test]
    fn filter_cover_is_set_inclusion() {
        for (outer, inner, want) in [
            ("devices/s/1/cmd/#", "devices/s/1/cmd/#", true),
            ("devices/s/1/cmd/#", "devices/s/1/cmd/+/fmt", true),
            ("devices/s/1/cmd/#", "devices/s/1/cmd", true),
            ("devices/s/1/cmd/#", "devices/s/1/#", false),
            ("devices/s/1/cmd/#", "devices/s/+/cmd/x", false),
            ("devices/s/1/cmd/#", "devices/#", false),
            ("devices/+/1", "devices/s/1", true),
            ("devices/+/1", "devices/+/1", true),
            ("devices/+/1", "devices/#", false),
            ("devices/s/1", "devices/+/1", false),
            ("devices/s/1", "devices/s/1/x", false),
            ("devices/s/1/x", "devices/s/1", false),
            ("#", "anything/#", true),
            ("a/+", "a/+/b", false),
        ] {
            assert_eq!(filter_covers(outer, inner), want, "{outer} ⊇ {inner}");
        }
    }

    #[test]
    fn a_bad_policy_changes_nothing_and_a_good_one_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        assert_eq!(r.topic_policy(&acme).unwrap(), TopicPolicy::default());
        let good = policy(
            r###"{"mode":"custom","rules":[{"who":"a:*","client_id":"*","publish":["#"],"subscribe":["#"]}]}"###,
        );
        assert_eq!(r.set_topic_policy(&acme, good.clone()).unwrap(), good);
        let bad = policy(r###"{"mode":"custom","rules":[{"who":"a:*","publish":["a/#/b"]}]}"###);
        assert!(r.set_topic_policy(&acme, bad).is_err());
        assert_eq!(r.topic_policy(&acme).unwrap(), good);
        let json = serde_json::to_string(&TopicPolicy::default()).unwrap();
        assert_eq!(json, r###"{"mode":"watson"}"###);
    }
}
