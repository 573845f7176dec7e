//! Validated names: org ids, device types and ids, application ids, the identity a
//! certificate carries and the MQTT client id built from it (docs/contract.md, sections 1 and 2).
//!
//! Every type validates on construction, so code that holds one never re-checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused; the message says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

/// An organization id: 1–32 chars `[a-z0-9]`, starting with a letter (a DNS label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

impl TryFrom<&str> for OrgId {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        let ok = (1..=32).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok {
            Ok(OrgId(s.to_owned()))
        } else {
            Err(NameError(format!(
                "invalid org id {s:?}: 1-32 characters a-z0-9, starting with a letter"
            )))
        }
    }
}

/// A device type, device id or application id: 1–36 chars `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        let ok = (1..=36).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(Name(s.to_owned()))
        } else {
            Err(NameError(format!(
                "invalid name {s:?}: 1-36 characters A-Z a-z 0-9 _ . -"
            )))
        }
    }
}

macro_rules! string_newtype {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                <$t>::try_from(s.as_str())
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                <$t>::try_from(s)
            }
        }
    };
}
string_newtype!(OrgId);
string_newtype!(Name);

impl OrgId {
    /// The org id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who a certificate says its holder is. The org is never in the certificate: it comes
/// from the SNI name the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Identity {
    /// `d:<type>:<id>`
    Device { device_type: Name, device_id: Name },
    /// `g:<type>:<id>`
    Gateway {
        gateway_type: Name,
        gateway_id: Name,
    },
    /// `a:<appId>`
    App { app_id: Name },
}

/// The kind of a client, as used in metrics and the connections API.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Device,
    Gateway,
    App,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Gateway => "gateway",
            Kind::App => "app",
        }
    }
}

impl Identity {
    /// Parses `d:<type>:<id>`, `g:<type>:<id>` or `a:<appId>`.
    pub fn parse(s: &str) -> Result<Identity, NameError> {
        let bad = || {
            NameError(format!(
                "{s:?} is not an identity: expected d:<type>:<id>, g:<type>:<id> or a:<appId>"
            ))
        };
        let mut parts = s.split(':');
        let (kind, a, b, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
        if rest.is_some() {
            return Err(bad());
        }
        match (kind, a, b) {
            (Some("d"), Some(t), Some(d)) => Ok(Identity::Device {
                device_type: Name::try_from(t)?,
                device_id: Name::try_from(d)?,
            }),
            (Some("g"), Some(t), Some(d)) => Ok(Identity::Gateway {
                gateway_type: Name::try_from(t)?,
                gateway_id: Name::try_from(d)?,
            }),
            (Some("a"), Some(app), None) => Ok(Identity::App {
                app_id: Name::try_from(app)?,
            }),
            _ => Err(bad()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Identity::Device { .. } => Kind::Device,
            Identity::Gateway { .. } => Kind::Gateway,
            Identity::App { .. } => Kind::App,
        }
    }

    /// The client id this identity must use when connecting to `org`
    /// (applications may also use `A:<org>:<app>:<instance>`, see [`Identity::admits_client_id`]).
    pub fn client_id(&self, org: &OrgId) -> String {
        match self {
            Identity::Device {
                device_type,
                device_id,
            } => format!("d:{org}:{device_type}:{device_id}"),
            Identity::Gateway {
                gateway_type,
                gateway_id,
            } => format!("g:{org}:{gateway_type}:{gateway_id}"),
            Identity::App { app_id } => format!("a:{org}:{app_id}"),
        }
    }

    /// Whether `client_id` is the one this identity must use in `org` (docs/contract.md, 2.3).
    pub fn admits_client_id(&self, org: &OrgId, client_id: &str) -> bool {
        if client_id == self.client_id(org) {
            return true;
        }
        // Scalable applications: A:<org>:<appId>:<instance>, instance a valid name.
        match self {
            Identity::App { app_id } => {
                let prefix = format!("A:{org}:{app_id}:");
                client_id
                    .strip_prefix(&prefix)
                    .is_some_and(|instance| Name::try_from(instance).is_ok())
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Identity {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Identity::parse(&s)
    }
}

impl From<Identity> for String {
    fn from(i: Identity) -> String {
        i.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Device {
                device_type,
                device_id,
            } => write!(f, "d:{device_type}:{device_id}"),
            Identity::Gateway {
                gateway_type,
                gateway_id,
            } => write!(f, "g:{gateway_type}:{gateway_id}"),
            Identity::App { app_id } => write!(f, "a:{app_id}"),
        }
    }
}

/// Reads org and identity from a client id: `d:<org>:<type>:<id>`, `g:<org>:<type>:<id>`,
/// `a:<org>:<app>` or `A:<org>:<app>:<instance>`. Used where no certificate names the
/// client (token authentication, plain MQTT).
pub fn parse_client_id(client_id: &str) -> Option<(OrgId, Identity)> {
    let parts: Vec<&str> = client_id.split(':').collect();
    let (org, identity) = match parts.as_slice() {
        ["d", org, t, d] => (org, format!("d:{t}:{d}")),
        ["g", org, t, d] => (org, format!("g:{t}:{d}")),
        ["a", org, app] => (org, format!("a:{app}")),
        ["A", org, app, instance] => {
            Name::try_from(*instance).ok()?;
            (org, format!("a:{app}"))
        }
        _ => return None,
    };
    Some((
        OrgId::try_from(*org).ok()?,
        Identity::parse(&identity).ok()?,
    ))
}

/// Maps an SNI host name to the org it names: `<org>.<domain>` for the base domain or
/// any of `extra_domains`. Returns `None` for any other name.
pub fn org_from_host<'a>(
    host: &str,
    domain: &str,
    extra_domains: impl IntoIterator<Item = &'a str>,
) -> Option<OrgId> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let (label, rest) = host.split_once('.')?;
    let matches = rest == domain.to_ascii_lowercase()
        || extra_domains
            .into_iter()
            .any(|d| rest == d.to_ascii_lowercase());
    if matches {
        OrgId::try_from(label).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids() {
        assert!(OrgId::try_from("acme").is_ok());
        assert!(OrgId::try_from("a1").is_ok());
        assert!(OrgId::try_from("1a").is_err());
        assert!(OrgId::try_from("Acme").is_err());
        assert!(OrgId::try_from("").is_err());
        assert!(OrgId::try_from("a-b").is_err());
        assert!(OrgId::try_from(&*"a".repeat(33)).is_err());
        assert!(OrgId::try_from(&*"a".repeat(32)).is_ok());
    }

    #[test]
    fn names() {
        assert!(Name::try_from("sensor_1.a-B").is_ok());
        assert!(Name::try_from("a/b").is_err());
        assert!(Name::try_from("a+b").is_err());
        assert!(Name::try_from("a#").is_err());
        assert!(Name::try_from(&*"x".repeat(37)).is_err());
    }

    #[test]
    fn identities_round_trip() {
        for s in ["d:sensor:dev1", "g:gw:g1", "a:dashboard"] {
            assert_eq!(Identity::parse(s).unwrap().to_string(), s);
        }
        for s in ["d:sensor", "x:a:b", "a:b:c", "d:a:b:c", "d:s/x:1", ""] {
            assert!(Identity::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn client_ids() {
        let org = OrgId::try_from("acme").unwrap();
        let dev = Identity::parse("d:sensor:dev1").unwrap();
        assert!(dev.admits_client_id(&org, "d:acme:sensor:dev1"));
        assert!(!dev.admits_client_id(&org, "d:other:sensor:dev1"));
        assert!(!dev.admits_client_id(&org, "d:acme:sensor:dev2"));
        let app = Identity::parse("a:dash").unwrap();
        assert!(app.admits_client_id(&org, "a:acme:dash"));
        assert!(app.admits_client_id(&org, "A:acme:dash:i1"));
        assert!(!app.admits_client_id(&org, "A:acme:dash:"));
        assert!(!app.admits_client_id(&org, "A:acme:other:i1"));
    }

    #[test]
    fn client_ids_parse_back_to_org_and_identity() {
        let (o, i) = parse_client_id("d:acme:sensor:dev1").unwrap();
        assert_eq!(
            (o.as_str(), i.to_string().as_str()),
            ("acme", "d:sensor:dev1")
        );
        let (_, i) = parse_client_id("A:acme:dash:i1").unwrap();
        assert_eq!(i.to_string(), "a:dash");
        for bad in [
            "d:acme:sensor",
            "x:acme:a",
            "d:Acme:s:d",
            "A:acme:dash:",
            "a:acme:d:e",
            "",
        ] {
            assert!(parse_client_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        let o = |h| org_from_host(h, "messaging.localhost", ["iot.example.com"]);
        assert_eq!(o("acme.messaging.localhost").unwrap().as_str(), "acme");
        assert_eq!(o("ACME.messaging.localhost.").unwrap().as_str(), "acme");
        assert_eq!(o("acme.iot.example.com").unwrap().as_str(), "acme");
        assert!(o("messaging.localhost").is_none());
        assert!(o("a.b.messaging.localhost").is_none());
        assert!(o("acme.example.com").is_none());
    }
}
