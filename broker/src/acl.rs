//! Topic rules (docs/contract.md, section 3): what each kind of client may publish and subscribe to,
//! and how its topics map into the broker's internal topic space.
//!
//! Every internal topic starts with `/tenants/<org>/`, and device short forms are
//! expanded, so a device event `iot-2/evt/E/fmt/F` is stored as
//! `/tenants/<org>/iot-2/type/<t>/id/<d>/evt/E/fmt/F`. Org isolation follows from the
//! prefix: nothing a client can publish or subscribe to maps outside its own org.
//!
//! In an org whose topic policy is `custom` (docs/topic-policies.md), the rule that
//! applies to the client decides instead, and its topic `T` maps to
//! `/tenants/<org>/T` unchanged: the same prefix, so isolation holds the same way.
//! Pure functions only; no I/O.

use std::sync::Arc;

use registry::topic_policy::{self, AppliedRule, TopicPolicy};
use registry::{Identity, Name, OrgId, SecurityPolicy};

/// Why a topic or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// One level of an allowed topic pattern.
#[derive(Debug, Clone, Copy)]
enum Level {
    /// This exact text.
    Lit(&'static str),
    /// Any valid name (device type, id, event, command, format).
    Var,
}
use Level::{Lit, Var};

/// An allowed topic shape; `hash_from` is the first level at which a `#` filter is
/// allowed (it can only reach topics of the same class from there on).
struct Pattern {
    levels: &'static [Level],
    hash_from: usize,
}

const DEVICE_EVT: Pattern = Pattern {
    levels: &[Lit("iot-2"), Lit("evt"), Var, Lit("fmt"), Var],
    hash_from: usize::MAX,
};
const DEVICE_CMD: Pattern = Pattern {
    levels: &[Lit("iot-2"), Lit("cmd"), Var, Lit("fmt"), Var],
    hash_from: 2,
};
const FULL_EVT: Pattern = Pattern {
    levels: &[
        Lit("iot-2"),
        Lit("type"),
        Var,
        Lit("id"),
        Var,
        Lit("evt"),
        Var,
        Lit("fmt"),
        Var,
    ],
    hash_from: 6,
};
const FULL_CMD: Pattern = Pattern {
    levels: &[
        Lit("iot-2"),
        Lit("type"),
        Var,
        Lit("id"),
        Var,
        Lit("cmd"),
        Var,
        Lit("fmt"),
        Var,
    ],
    hash_from: 6,
};
const FULL_MON: Pattern = Pattern {
    levels: &[Lit("iot-2"), Lit("type"), Var, Lit("id"), Var, Lit("mon")],
    hash_from: usize::MAX,
};

impl Pattern {
    /// Whether a concrete topic (no wildcards) has this shape.
    fn matches_topic(&self, levels: &[&str]) -> bool {
        levels.len() == self.levels.len()
            && self.levels.iter().zip(levels).all(|(p, l)| match p {
                Lit(s) => s == l,
                Var => Name::try_from(*l).is_ok(),
            })
    }

    /// Whether every topic `filter` can match has this shape.
    fn covers_filter(&self, levels: &[&str]) -> bool {
        for (i, l) in levels.iter().enumerate() {
            if *l == "#" {
                return i == levels.len() - 1 && i >= self.hash_from;
            }
            match self.levels.get(i) {
                None => return false,
                Some(Lit(s)) if s != l => return false,
                Some(Lit(_)) => {}
                Some(Var) if *l == "+" || Name::try_from(*l).is_ok() => {}
                Some(Var) => return false,
            }
        }
        levels.len() == self.levels.len()
    }
}

/// Which rules decide a principal's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topics {
    /// Watson IoT's fixed rules (docs/contract.md, section 3).
    Watson,
    /// The org's custom topic policy: the rule that applies to this client, its
    /// templates filled (`None`: no rule applies, everything is denied).
    Custom(Option<Arc<AppliedRule>>),
    /// Anything in the org's topic space (the org's own destinations in custom mode).
    Anywhere,
}

/// An authenticated client: its org (from SNI) and its certificate identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub org: OrgId,
    pub identity: Identity,
    /// For a gateway whose type the org's policy limits: the device types it may act for.
    pub gateway_scope: Option<Vec<Name>>,
    /// For a scalable application instance (`A:<org>:<app>:<instance>`): every
    /// subscription is shared among the app's instances.
    pub scalable: bool,
    /// Which rules decide its topics.
    pub topics: Topics,
    /// Custom mode: the topic (client view) its status events go to, when the policy
    /// names one; otherwise the Watson `mon` topic.
    pub status_topic: Option<String>,
}

/// `/tenants/<org>/`, the root of an org's internal topic space.
pub fn tenant_prefix(org: &OrgId) -> String {
    format!("/tenants/{org}/")
}

/// `/tenants/<org>/iot-2/type/<t>/id/<d>/mon`: where status events of a device go.
pub fn status_topic(org: &OrgId, device_type: &Name, device_id: &Name) -> String {
    format!("/tenants/{org}/iot-2/type/{device_type}/id/{device_id}/mon")
}

#[derive(Clone, Copy)]
enum Action {
    Publish,
    Subscribe,
}

fn split(s: &str) -> Vec<&str> {
    s.split('/').collect()
}

impl Principal {
    /// The principal of an admitted client: `identity` in `org`, with the gateway scope
    /// the org's `policy` gives its gateway type, and — for a client id
    /// `A:<org>:<app>:<instance>` — a scalable application instance, with the rule
    /// the org's `topics` policy gives it. The only way to make one: admission
    /// (`admission::decide`) calls it for every caller.
    pub fn new(
        org: OrgId,
        identity: Identity,
        policy: &SecurityPolicy,
        topics: &TopicPolicy,
        client_id: Option<&str>,
    ) -> Principal {
        let gateway_scope = match &identity {
            Identity::Gateway { gateway_type, .. } => policy.gateway_scope(gateway_type),
            _ => None,
        };
        // Only a Watson scalable client id: in custom mode a client id of another
        // form that happens to start with `A:` is just a name.
        let scalable = matches!(identity, Identity::App { .. })
            && client_id.is_some_and(|c| c.starts_with("A:") && identity.admits_client_id(&org, c));
        let status_topic = topics.status_topic_for(&identity);
        let topics = if topics.is_custom() {
            Topics::Custom(topics.rule_for(&identity).map(Arc::new))
        } else {
            Topics::Watson
        };
        Principal {
            org,
            identity,
            gateway_scope,
            scalable,
            topics,
            status_topic,
        }
    }

    /// Whether the org's custom topic policy decides this client's topics.
    pub fn is_custom(&self) -> bool {
        !matches!(self.topics, Topics::Watson)
    }

    /// Whether this gateway may act for devices of type `t` (level 2 of a full topic);
    /// `+` is allowed only when the gateway is not scoped.
    fn in_gateway_scope(&self, t: &str) -> bool {
        match &self.gateway_scope {
            None => true,
            Some(types) => types.iter().any(|x| x.as_str() == t),
        }
    }

    /// The device type and id this principal publishes as in the short form, if any.
    fn own_device(&self) -> Option<(&Name, &Name)> {
        match &self.identity {
            Identity::Device {
                device_type,
                device_id,
            } => Some((device_type, device_id)),
            Identity::Gateway {
                gateway_type,
                gateway_id,
            } => Some((gateway_type, gateway_id)),
            Identity::App { .. } => None,
        }
    }

    fn expand_short(&self, rest: &str) -> String {
        match self.own_device() {
            Some((t, d)) => format!("{}iot-2/type/{t}/id/{d}/{rest}", tenant_prefix(&self.org)),
            None => format!("{}iot-2/{rest}", tenant_prefix(&self.org)),
        }
    }

    fn denied(&self, what: &str, topic: &str) -> Denied {
        let kind = self.identity.kind().as_str();
        Denied(format!("{kind} {} may not {what} {topic:?}", self.identity))
    }

    /// Maps a topic this client publishes to on to its internal topic, or refuses it.
    pub fn publish_topic(&self, topic: &str) -> Result<String, Denied> {
        self.publish_mapped(topic, false).map(|(t, _)| t)
    }

    /// [`Principal::publish_topic`], with the rule that allowed it in words.
    pub fn publish_explained(&self, topic: &str) -> Result<(String, String), Denied> {
        self.publish_mapped(topic, true)
            .map(|(t, why)| (t, why.unwrap_or_default()))
    }

    /// The internal topic, and with `explain` the rule that allowed it in words (only
    /// the dry run asks: the publish path does not pay for the sentence).
    fn publish_mapped(
        &self,
        topic: &str,
        explain: bool,
    ) -> Result<(String, Option<String>), Denied> {
        match &self.topics {
            Topics::Watson => {}
            Topics::Custom(rule) => {
                return self.custom(rule.as_deref(), topic, Action::Publish, explain)
            }
            Topics::Anywhere => return self.anywhere(topic, Action::Publish, explain),
        }
        let levels = split(topic);
        let allowed = match self.identity {
            Identity::Device { .. } => DEVICE_EVT.matches_topic(&levels),
            Identity::Gateway { .. } => {
                DEVICE_EVT.matches_topic(&levels)
                    || (FULL_EVT.matches_topic(&levels) && self.in_gateway_scope(levels[2]))
            }
            Identity::App { .. } => FULL_CMD.matches_topic(&levels),
        };
        if !allowed {
            return Err(self.denied("publish to", topic));
        }
        let internal = if levels[1] == "evt" {
            self.expand_short(&topic["iot-2/".len()..])
        } else {
            format!("{}{topic}", tenant_prefix(&self.org))
        };
        Ok((internal, self.watson_reason(explain)))
    }

    fn watson_reason(&self, explain: bool) -> Option<String> {
        explain.then(|| format!("topic rule for {} allows it", self.identity.kind().as_str()))
    }

    /// Custom mode: `topic` (a topic name to publish to, or a filter to subscribe to)
    /// against the rule that applies.
    fn custom(
        &self,
        rule: Option<&AppliedRule>,
        topic: &str,
        action: Action,
        explain: bool,
    ) -> Result<(String, Option<String>), Denied> {
        let (verb, problem) = match action {
            Action::Publish => ("publish to", topic_policy::client_topic_problem(topic)),
            Action::Subscribe => ("subscribe to", topic_policy::client_filter_problem(topic)),
        };
        if let Some(p) = problem {
            return Err(Denied(format!(
                "{} may not {verb} {topic:?}: {p}",
                self.identity
            )));
        }
        let Some(rule) = rule else {
            return Err(Denied(format!(
                "no rule of the org's topic policy applies to {}, so it may not {verb} {topic:?}",
                self.identity
            )));
        };
        let (list, found) = match action {
            Action::Publish => (
                &rule.publish,
                rule.publish
                    .iter()
                    .find(|f| topic_policy::topic_matches(f, topic)),
            ),
            Action::Subscribe => (
                &rule.subscribe,
                rule.subscribe
                    .iter()
                    .find(|f| topic_policy::filter_covers(f, topic)),
            ),
        };
        match found {
            Some(f) => Ok((
                format!("{}{topic}", tenant_prefix(&self.org)),
                explain
                    .then(|| format!("{} allows {} to {verb} {f:?}", rule.name(), self.identity)),
            )),
            None => Err(Denied(format!(
                "{} lets {} {verb} only {list:?}, and {topic:?} is within none of them",
                rule.name(),
                self.identity
            ))),
        }
    }

    /// Anything valid in the org's topic space.
    fn anywhere(
        &self,
        topic: &str,
        action: Action,
        explain: bool,
    ) -> Result<(String, Option<String>), Denied> {
        let problem = match action {
            Action::Publish => topic_policy::client_topic_problem(topic),
            Action::Subscribe => topic_policy::client_filter_problem(topic),
        };
        match problem {
            Some(p) => Err(Denied(format!("{topic:?}: {p}"))),
            None => Ok((
                format!("{}{topic}", tenant_prefix(&self.org)),
                explain.then(|| "anywhere in the org's topic space".into()),
            )),
        }
    }

    /// Maps a subscription filter to its internal filter, or refuses it. Shared
    /// subscriptions (`$share/<group>/<filter>`) are open to applications; the group is
    /// scoped to the org so two orgs' groups never mix.
    /// In custom mode any client may share a subscription its rule allows.
    pub fn subscribe_filter(&self, filter: &str) -> Result<String, Denied> {
        self.subscribe_mapped(filter, false).map(|(f, _)| f)
    }

    /// [`Principal::subscribe_filter`], with the rule that allowed it in words.
    pub fn subscribe_explained(&self, filter: &str) -> Result<(String, String), Denied> {
        self.subscribe_mapped(filter, true)
            .map(|(f, why)| (f, why.unwrap_or_default()))
    }

    /// The internal filter, and with `explain` the rule that allowed it in words.
    fn subscribe_mapped(
        &self,
        filter: &str,
        explain: bool,
    ) -> Result<(String, Option<String>), Denied> {
        if let Some(rest) = filter.strip_prefix("$share/") {
            let (group, inner) = rest
                .split_once('/')
                .ok_or_else(|| self.denied("subscribe to", filter))?;
            let app = matches!(self.identity, Identity::App { .. });
            if !(app || self.is_custom()) || Name::try_from(group).is_err() {
                return Err(self.denied("subscribe to", filter));
            }
            let (mapped, why) = Principal {
                scalable: false,
                ..self.clone()
            }
            .subscribe_mapped(inner, explain)?;
            return Ok((format!("$share/{}.{group}/{mapped}", self.org), why));
        }
        if self.scalable {
            // Watson scalable applications: instances of one app share its messages.
            // ':' cannot occur in a user's group name, so this group is the app's own.
            let (mapped, why) = Principal {
                scalable: false,
                ..self.clone()
            }
            .subscribe_mapped(filter, explain)?;
            if let Identity::App { app_id } = &self.identity {
                return Ok((format!("$share/{}:{app_id}/{mapped}", self.org), why));
            }
        }
        match &self.topics {
            Topics::Watson => {}
            Topics::Custom(rule) => {
                return self.custom(rule.as_deref(), filter, Action::Subscribe, explain)
            }
            Topics::Anywhere => return self.anywhere(filter, Action::Subscribe, explain),
        }
        let levels = split(filter);
        let allowed = match self.identity {
            Identity::Device { .. } => DEVICE_CMD.covers_filter(&levels),
            Identity::Gateway { .. } => {
                FULL_CMD.covers_filter(&levels)
                    && (self.gateway_scope.is_none() || self.in_gateway_scope(levels[2]))
            }
            Identity::App { .. } => {
                FULL_EVT.covers_filter(&levels) || FULL_MON.covers_filter(&levels)
            }
        };
        if !allowed {
            return Err(self.denied("subscribe to", filter));
        }
        let internal = if matches!(self.identity, Identity::Device { .. }) {
            self.expand_short(&filter["iot-2/".len()..])
        } else {
            format!("{}{filter}", tenant_prefix(&self.org))
        };
        Ok((internal, self.watson_reason(explain)))
    }

    /// The client's view of one of its internal subscription filters (what it sent in
    /// SUBSCRIBE), custom mode only: `None` in watson mode or for a filter that is not
    /// one of the forms [`Principal::subscribe_filter`] makes.
    pub fn client_filter(&self, internal: &str) -> Option<String> {
        if !self.is_custom() {
            return None;
        }
        let prefix = tenant_prefix(&self.org);
        if let Some(rest) = internal.strip_prefix("$share/") {
            let (group, inner) = rest.split_once('/')?;
            let inner = inner.strip_prefix(prefix.as_str())?;
            return match group.strip_prefix(&format!("{}.", self.org)) {
                Some(g) => Some(format!("$share/{g}/{inner}")),
                // The scalable application's own group.
                None => Some(inner.to_owned()),
            };
        }
        internal.strip_prefix(prefix.as_str()).map(str::to_owned)
    }

    /// Maps an internal topic back to what this client sees: the tenant prefix goes,
    /// and a device sees its own commands in the short form `iot-2/cmd/C/fmt/F`.
    /// `None` for a topic outside the client's org (never delivered).
    pub fn outbound_topic(&self, internal: &str) -> Option<String> {
        let prefix = tenant_prefix(&self.org);
        let topic = internal.strip_prefix(prefix.as_str())?;
        if self.is_custom() {
            return Some(topic.to_owned());
        }
        if let Identity::Device {
            device_type,
            device_id,
        } = &self.identity
        {
            let own = format!("iot-2/type/{device_type}/id/{device_id}/");
            return topic.strip_prefix(&own).map(|rest| format!("iot-2/{rest}"));
        }
        Some(topic.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(org: &str, id: &str) -> Principal {
        Principal::new(
            OrgId::try_from(org).unwrap(),
            Identity::parse(id).unwrap(),
            &SecurityPolicy::default(),
            &TopicPolicy::default(),
            None,
        )
    }

    #[test]
    fn device_publishes_events_in_short_form_only() {
        let d = p("acme", "d:sensor:dev1");
        assert_eq!(
            d.publish_topic("iot-2/evt/temp/fmt/json").unwrap(),
            "/tenants/acme/iot-2/type/sensor/id/dev1/evt/temp/fmt/json"
        );
        for t in [
            "iot-2/evt/+/fmt/json",
            "iot-2/evt/temp/fmt/json/extra",
            "iot-2/cmd/reboot/fmt/json",
            "iot-2/type/sensor/id/dev2/evt/temp/fmt/json",
            "/tenants/other/iot-2/type/x/id/y/evt/a/fmt/b",
            "iot-2/evt//fmt/json",
            "#",
            "",
        ] {
            assert!(d.publish_topic(t).is_err(), "{t}");
        }
    }

    #[test]
    fn device_subscribes_to_its_commands() {
        let d = p("acme", "d:sensor:dev1");
        assert_eq!(
            d.subscribe_filter("iot-2/cmd/+/fmt/+").unwrap(),
            "/tenants/acme/iot-2/type/sensor/id/dev1/cmd/+/fmt/+"
        );
        assert!(d.subscribe_filter("iot-2/cmd/#").is_ok());
        assert!(d.subscribe_filter("iot-2/cmd/reboot/fmt/json").is_ok());
        for f in [
            "#",
            "iot-2/#",
            "iot-2/+/reboot/fmt/json",
            "iot-2/evt/+/fmt/+",
            "iot-2/cmd/#/fmt",
            "iot-2/type/+/id/+/cmd/+/fmt/+",
            "$share/g/iot-2/cmd/+/fmt/+",
        ] {
            assert!(d.subscribe_filter(f).is_err(), "{f}");
        }
    }

    #[test]
    fn application_rules() {
        let a = p("acme", "a:dash");
        assert_eq!(
            a.subscribe_filter("iot-2/type/+/id/+/evt/+/fmt/+").unwrap(),
            "/tenants/acme/iot-2/type/+/id/+/evt/+/fmt/+"
        );
        assert!(a.subscribe_filter("iot-2/type/+/id/+/evt/#").is_ok());
        assert!(a.subscribe_filter("iot-2/type/+/id/+/mon").is_ok());
        assert_eq!(
            a.subscribe_filter("$share/workers/iot-2/type/+/id/+/evt/+/fmt/+")
                .unwrap(),
            "$share/acme.workers//tenants/acme/iot-2/type/+/id/+/evt/+/fmt/+"
        );
        for f in [
            "#",
            "iot-2/type/+/id/+/#",
            "iot-2/type/+/id/+/cmd/+/fmt/+",
            "iot-2/+/+/id/+/evt/+/fmt/+",
        ] {
            assert!(a.subscribe_filter(f).is_err(), "{f}");
        }
        assert_eq!(
            a.publish_topic("iot-2/type/sensor/id/dev1/cmd/reboot/fmt/json")
                .unwrap(),
            "/tenants/acme/iot-2/type/sensor/id/dev1/cmd/reboot/fmt/json"
        );
        assert!(a
            .publish_topic("iot-2/type/+/id/dev1/cmd/reboot/fmt/json")
            .is_err());
        assert!(a.publish_topic("iot-2/type/s/id/d/evt/e/fmt/f").is_err());
    }

    #[test]
    fn gateway_rules() {
        let g = p("acme", "g:gw:g1");
        assert_eq!(
            g.publish_topic("iot-2/evt/e/fmt/f").unwrap(),
            "/tenants/acme/iot-2/type/gw/id/g1/evt/e/fmt/f"
        );
        assert!(g
            .publish_topic("iot-2/type/sensor/id/d9/evt/e/fmt/f")
            .is_ok());
        assert!(g.subscribe_filter("iot-2/type/+/id/+/cmd/+/fmt/+").is_ok());
        assert!(g.subscribe_filter("iot-2/type/+/id/+/evt/+/fmt/+").is_err());
    }

    #[test]
    fn scoped_gateways_and_scalable_apps() {
        let mut g = p("acme", "g:gw:g1");
        g.gateway_scope = Some(vec![Name::try_from("sensor").unwrap()]);
        assert!(g
            .publish_topic("iot-2/type/sensor/id/d9/evt/e/fmt/f")
            .is_ok());
        assert!(g
            .publish_topic("iot-2/type/camera/id/d9/evt/e/fmt/f")
            .is_err());
        assert!(
            g.publish_topic("iot-2/evt/e/fmt/f").is_ok(),
            "itself, always"
        );
        assert!(g
            .subscribe_filter("iot-2/type/sensor/id/+/cmd/+/fmt/+")
            .is_ok());
        assert!(g.subscribe_filter("iot-2/type/+/id/+/cmd/+/fmt/+").is_err());

        let mut a = p("acme", "a:dash");
        a.scalable = true;
        assert_eq!(
            a.subscribe_filter("iot-2/type/+/id/+/evt/+/fmt/+").unwrap(),
            "$share/acme:dash//tenants/acme/iot-2/type/+/id/+/evt/+/fmt/+"
        );
        assert_eq!(
            a.subscribe_filter("$share/g/iot-2/type/+/id/+/mon")
                .unwrap(),
            "$share/acme.g//tenants/acme/iot-2/type/+/id/+/mon"
        );
    }

    #[test]
    fn outbound_views_and_isolation() {
        let d = p("acme", "d:sensor:dev1");
        assert_eq!(
            d.outbound_topic("/tenants/acme/iot-2/type/sensor/id/dev1/cmd/r/fmt/json")
                .unwrap(),
            "iot-2/cmd/r/fmt/json"
        );
        assert!(d
            .outbound_topic("/tenants/acme/iot-2/type/sensor/id/dev2/cmd/r/fmt/json")
            .is_none());
        assert!(d
            .outbound_topic("/tenants/other/iot-2/type/sensor/id/dev1/cmd/r/fmt/json")
            .is_none());
        let a = p("acme", "a:dash");
        assert_eq!(
            a.outbound_topic("/tenants/acme/iot-2/type/s/id/d/evt/e/fmt/f")
                .unwrap(),
            "iot-2/type/s/id/d/evt/e/fmt/f"
        );
        // An org whose id is a prefix of another's never sees the other's topics.
        let short = p("acm", "a:dash");
        assert!(short
            .outbound_topic("/tenants/acme/iot-2/type/s/id/d/evt/e/fmt/f")
            .is_none());
    }

    fn custom(org: &str, id: &str, policy: &str) -> Principal {
        let topics: TopicPolicy = serde_json::from_str(policy).unwrap();
        topics.validate().unwrap();
        Principal::new(
            OrgId::try_from(org).unwrap(),
            Identity::parse(id).unwrap(),
            &SecurityPolicy::default(),
            &topics,
            None,
        )
    }

    const FLEET: &str = r###"{"mode":"custom","rules":[
        {"who":"d:*:*","publish":["devices/{type}/{id}/#"],"subscribe":["devices/{type}/{id}/cmd/#"]},
        {"who":"a:*","client_id":"*","publish":["devices/+/+/cmd/#"],"subscribe":["devices/#","iot-2/type/+/id/+/mon"]}]}"###;

    #[test]
    fn custom_devices_use_their_own_topics_only() {
        let d = custom("acme", "d:sensor:dev1", FLEET);
        assert_eq!(
            d.publish_topic("devices/sensor/dev1/temp").unwrap(),
            "/tenants/acme/devices/sensor/dev1/temp"
        );
        assert_eq!(
            d.subscribe_filter("devices/sensor/dev1/cmd/#").unwrap(),
            "/tenants/acme/devices/sensor/dev1/cmd/#"
        );
        assert!(d.subscribe_filter("devices/sensor/dev1/cmd/+/x").is_ok());
        for t in [
            "devices/sensor/dev2/temp",
            "devices/sensor/+/temp",
            "devices/sensor/dev1/#",
            "devices/sensor",
            "/devices/sensor/dev1/temp",
            "/tenants/other/devices/sensor/dev1/temp",
            "$SYS/broker",
            "",
        ] {
            assert!(d.publish_topic(t).is_err(), "publish {t}");
        }
        for f in [
            "#",
            "+/+/+/cmd/#",
            "devices/sensor/+/cmd/#",
            "devices/sensor/dev1/#",
            "devices/sensor/dev1/cmd/#/x",
            "devices/sensor/dev1/cmd/a#",
            "$SYS/#",
            "/tenants/acme/#",
            "",
        ] {
            assert!(d.subscribe_filter(f).is_err(), "subscribe {f}");
        }
        // `..` is a plain level in MQTT: this stays in dev1's own topics, where dev2's
        // subscribers (`devices/sensor/dev2/...`) never see it.
        assert_eq!(
            d.publish_topic("devices/sensor/dev1/../dev2/temp").unwrap(),
            "/tenants/acme/devices/sensor/dev1/../dev2/temp"
        );
        let e = d.publish_topic("devices/sensor/dev2/temp").unwrap_err().0;
        assert!(e.contains("rules[0] (d:*:*)"), "{e}");
        assert!(e.contains("devices/sensor/dev1/#"), "{e}");
        assert_eq!(
            d.outbound_topic("/tenants/acme/devices/sensor/dev1/cmd/reboot")
                .unwrap(),
            "devices/sensor/dev1/cmd/reboot"
        );
    }

    #[test]
    fn custom_mode_keeps_orgs_apart() {
        let a = custom("acme", "a:dash", FLEET);
        let other = custom("acme2", "a:dash", FLEET);
        let short = custom("acm", "a:dash", FLEET);
        assert_eq!(
            a.subscribe_filter("devices/#").unwrap(),
            "/tenants/acme/devices/#"
        );
        assert_eq!(
            other.subscribe_filter("devices/#").unwrap(),
            "/tenants/acme2/devices/#"
        );
        for p in [&other, &short] {
            assert!(p.outbound_topic("/tenants/acme/devices/s/d/temp").is_none());
        }
        // Whatever a client sends, the internal topic stays under its own prefix.
        for t in [
            "devices/x/y/cmd/r",
            "devices/../../acme2/devices/x/y/cmd/r",
            "devices/+/+/cmd/r",
            "devices//y/cmd/r",
        ] {
            if let Ok(internal) = a.publish_topic(t) {
                assert!(internal.starts_with("/tenants/acme/devices/"), "{t}");
            }
        }
        // Shared subscriptions: the inner filter is checked; the group is the org's.
        assert_eq!(
            a.subscribe_filter("$share/workers/devices/#").unwrap(),
            "$share/acme.workers//tenants/acme/devices/#"
        );
        assert!(a.subscribe_filter("$share/workers/#").is_err());
        assert!(a.subscribe_filter("$share/bad group/devices/#").is_err());
        assert!(a.subscribe_filter("$share/workers").is_err());
        let d = custom("acme", "d:sensor:dev1", FLEET);
        assert!(d
            .subscribe_filter("$share/g/devices/sensor/dev1/cmd/#")
            .is_ok());
        assert!(d.subscribe_filter("$share/g/devices/#").is_err());
        // The client view of each internal filter, for re-checking after a change.
        for f in [
            "devices/#",
            "$share/workers/devices/#",
            "iot-2/type/+/id/+/mon",
        ] {
            let internal = a.subscribe_filter(f).unwrap();
            assert_eq!(a.client_filter(&internal).unwrap(), f);
        }
        assert!(p("acme", "a:dash")
            .client_filter("/tenants/acme/x")
            .is_none());
    }

    #[test]
    fn custom_applications_and_unmatched_identities() {
        let a = custom("acme", "a:dash", FLEET);
        assert!(a.publish_topic("devices/s/d/cmd/reboot").is_ok());
        assert!(a.publish_topic("devices/s/d/temp").is_err());
        // Watson status events stay on their topic, which a custom rule may allow.
        assert_eq!(
            a.subscribe_filter("iot-2/type/+/id/+/mon").unwrap(),
            "/tenants/acme/iot-2/type/+/id/+/mon"
        );
        let g = custom("acme", "g:gw:g1", FLEET);
        let e = g.publish_topic("devices/gw/g1/x").unwrap_err().0;
        assert!(e.contains("no rule"), "{e}");
        assert!(g.subscribe_filter("#").is_err());
        // Scalable applications keep their shared group in custom mode.
        let mut s = a.clone();
        s.scalable = true;
        let internal = s.subscribe_filter("devices/#").unwrap();
        assert_eq!(internal, "$share/acme:dash//tenants/acme/devices/#");
        assert_eq!(s.client_filter(&internal).unwrap(), "devices/#");
        // An empty custom policy denies everything.
        let none = custom("acme", "a:dash", r###"{"mode":"custom"}"###);
        assert!(none.publish_topic("x").is_err());
        assert!(none.subscribe_filter("x").is_err());
    }

    #[test]
    fn custom_explanations_name_the_rule_and_filter() {
        let a = custom("acme", "a:dash", FLEET);
        let (_, why) = a.subscribe_explained("devices/s/+/temp").unwrap();
        assert_eq!(
            why,
            "rules[1] (a:*) allows a:dash to subscribe to \"devices/#\""
        );
        let (_, why) = a.publish_explained("devices/s/d/cmd/x").unwrap();
        assert!(why.contains("\"devices/+/+/cmd/#\""), "{why}");
        let e = a.publish_explained("a/+").unwrap_err().0;
        assert!(e.contains("wildcards"), "{e}");
        let watson = p("acme", "d:sensor:dev1");
        let (_, why) = watson.publish_explained("iot-2/evt/e/fmt/f").unwrap();
        assert_eq!(why, "topic rule for device allows it");
    }

    #[test]
    fn anywhere_is_the_org_topic_space() {
        let mut dest = p("acme", "a:certmq");
        dest.topics = Topics::Anywhere;
        assert_eq!(
            dest.subscribe_filter("things/#").unwrap(),
            "/tenants/acme/things/#"
        );
        assert!(dest.subscribe_filter("$SYS/#").is_err());
        assert!(dest.publish_topic("a/+").is_err());
    }
}
