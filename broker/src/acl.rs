//! Topic rules (docs/contract.md, section 3): what each kind of client may publish and subscribe to,
//! and how its topics map into the broker's internal topic space.
//!
//! Every internal topic starts with `/tenants/<org>/`, and device short forms are
//! expanded, so a device event `iot-2/evt/E/fmt/F` is stored as
//! `/tenants/<org>/iot-2/type/<t>/id/<d>/evt/E/fmt/F`. Org isolation follows from the
//! prefix: nothing a client can publish or subscribe to maps outside its own org.
//! Pure functions only; no I/O.

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
}

/// `/tenants/<org>/`, the root of an org's internal topic space.
pub fn tenant_prefix(org: &OrgId) -> String {
    format!("/tenants/{org}/")
}

/// `/tenants/<org>/iot-2/type/<t>/id/<d>/mon`: where status events of a device go.
pub fn status_topic(org: &OrgId, device_type: &Name, device_id: &Name) -> String {
    format!("/tenants/{org}/iot-2/type/{device_type}/id/{device_id}/mon")
}

fn split(s: &str) -> Vec<&str> {
    s.split('/').collect()
}

impl Principal {
    /// The principal of an admitted client: `identity` in `org`, with the gateway scope
    /// the org's `policy` gives its gateway type, and — for a client id
    /// `A:<org>:<app>:<instance>` — a scalable application instance. The only way to
    /// make one: admission (`admission::decide`) calls it for every caller.
    pub fn new(
        org: OrgId,
        identity: Identity,
        policy: &SecurityPolicy,
        client_id: Option<&str>,
    ) -> Principal {
        let gateway_scope = match &identity {
            Identity::Gateway { gateway_type, .. } => policy.gateway_scope(gateway_type),
            _ => None,
        };
        let scalable = matches!(identity, Identity::App { .. })
            && client_id.is_some_and(|c| c.starts_with("A:"));
        Principal {
            org,
            identity,
            gateway_scope,
            scalable,
        }
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
        if levels[1] == "evt" {
            Ok(self.expand_short(&topic["iot-2/".len()..]))
        } else {
            Ok(format!("{}{topic}", tenant_prefix(&self.org)))
        }
    }

    /// Maps a subscription filter to its internal filter, or refuses it. Shared
    /// subscriptions (`$share/<group>/<filter>`) are open to applications; the group is
    /// scoped to the org so two orgs' groups never mix.
    pub fn subscribe_filter(&self, filter: &str) -> Result<String, Denied> {
        if let Some(rest) = filter.strip_prefix("$share/") {
            let (group, inner) = rest
                .split_once('/')
                .ok_or_else(|| self.denied("subscribe to", filter))?;
            if !matches!(self.identity, Identity::App { .. }) || Name::try_from(group).is_err() {
                return Err(self.denied("subscribe to", filter));
            }
            let mapped = Principal {
                scalable: false,
                ..self.clone()
            }
            .subscribe_filter(inner)?;
            return Ok(format!("$share/{}.{group}/{mapped}", self.org));
        }
        if self.scalable {
            // Watson scalable applications: instances of one app share its messages.
            // ':' cannot occur in a user's group name, so this group is the app's own.
            let mapped = Principal {
                scalable: false,
                ..self.clone()
            }
            .subscribe_filter(filter)?;
            if let Identity::App { app_id } = &self.identity {
                return Ok(format!("$share/{}:{app_id}/{mapped}", self.org));
            }
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
        if matches!(self.identity, Identity::Device { .. }) {
            Ok(self.expand_short(&filter["iot-2/".len()..]))
        } else {
            Ok(format!("{}{filter}", tenant_prefix(&self.org)))
        }
    }

    /// Maps an internal topic back to what this client sees: the tenant prefix goes,
    /// and a device sees its own commands in the short form `iot-2/cmd/C/fmt/F`.
    /// `None` for a topic outside the client's org (never delivered).
    pub fn outbound_topic(&self, internal: &str) -> Option<String> {
        let prefix = tenant_prefix(&self.org);
        let topic = internal.strip_prefix(prefix.as_str())?;
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
}
