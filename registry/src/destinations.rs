//! Outgoing destinations of an org: **bridges** (certmq connects to a remote MQTT broker
//! over mutual TLS and publishes the org's messages there) and **webhooks** (certmq POSTs
//! each message to an HTTPS endpoint). Each has its own client certificate (one of the
//! org's [client certificates](crate::client_certs)) and its own trust: the CA
//! certificates the remote server's certificate must chain to — never the system roots
//! unless `trust_system_roots` asks for them.
//!
//! The registry keeps and checks the configuration; the broker runs it (its `outbound`
//! module) and reports the state. Filters are in the application's view of the org's
//! topics (`iot-2/type/+/id/+/evt/+/fmt/+`); the broker checks them against the topic
//! rules before one is stored (see the admin API).

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use crate::cert;
use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::{new_id, Change, Registry};

/// Most destinations (bridges and webhooks together) one org may have.
pub const MAX_DESTINATIONS: usize = 32;
/// Most forwarding rules of one bridge.
pub const MAX_RULES: usize = 16;
/// Longest filter or topic template, in bytes.
const MAX_TOPIC: usize = 512;
/// Most CA certificates in one destination's trust bundle.
const MAX_TRUST: usize = 50;

/// Which kind of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Bridge,
    Webhook,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Bridge => "bridge",
            DestinationKind::Webhook => "webhook",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            DestinationKind::Bridge => 8883,
            DestinationKind::Webhook => 443,
        }
    }
}

/// One forwarding rule: messages of the org matching `filter` (the application's view
/// of topics) go out on `topic`, with placeholders filled in from the message's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    /// e.g. `iot-2/type/+/id/+/evt/+/fmt/+`.
    pub filter: String,
    /// The remote topic, e.g. `fleet/{org}/{type}/{id}/{event}`. Placeholders: `{org}`,
    /// `{type}`, `{id}`, `{event}`, `{format}`, `{cmd}`, and `{topic}` (the whole
    /// topic in the application's view). Default: `{topic}`.
    #[serde(default = "same_topic")]
    pub topic: String,
    /// 0 or 1 (default 1): QoS 1 is forwarded at least once.
    #[serde(default = "qos_one")]
    pub qos: u8,
}

/// A reverse rule of a bridge: messages the remote broker publishes on `filter` come
/// into the org as commands on `topic`, authorized as an application's publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReceiveRule {
    /// The remote filter subscribed to, e.g. `partner/cmd/+/+`.
    pub filter: String,
    /// The org's command topic, in the application's view:
    /// `iot-2/type/<type>/id/<id>/cmd/<cmd>/fmt/<format>`, where a level may be `{1}`,
    /// `{2}`, … — the remote topic's level matched by the filter's first, second, … `+`.
    pub topic: String,
    /// 0 or 1 (default 1): the QoS subscribed with at the remote.
    #[serde(default = "qos_one")]
    pub qos: u8,
}

fn same_topic() -> String {
    "{topic}".into()
}

fn qos_one() -> u8 {
    1
}

/// A destination as stored (bridge or webhook).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub id: String,
    pub org: OrgId,
    pub kind: DestinationKind,
    pub name: String,
    /// `mqtts://host[:port]` (bridge) or `https://host[:port]/path` (webhook).
    pub url: String,
    /// The TLS server name (SNI, and the name the remote certificate must carry);
    /// `None`: the URL's host.
    pub server_name: Option<String>,
    /// The org's client certificate presented to the remote; `None`: none.
    pub client_cert: Option<String>,
    /// PEM bundle the remote server certificate must chain to.
    pub ca_certificates: String,
    /// Also trust the operating system's root CAs.
    pub trust_system_roots: bool,
    /// The MQTT client id at the remote (bridges).
    pub client_id: Option<String>,
    /// Bridges: the rules; webhooks: one rule (its topic unused).
    pub forward: Vec<ForwardRule>,
    /// Bridges: what comes back from the remote into the org's command topics.
    #[serde(default)]
    pub receive: Vec<ReceiveRule>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Destination {
    /// The URL's host and port (checked when stored).
    pub fn host_port(&self) -> Result<(String, u16)> {
        let u = url::Url::parse(&self.url)
            .map_err(|e| Error::BadRequest(format!("url {:?}: {e}", self.url)))?;
        let host = u
            .host_str()
            .ok_or_else(|| Error::BadRequest(format!("url {:?} has no host", self.url)))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok((host, u.port().unwrap_or(self.kind.default_port())))
    }

    /// The path and query of the URL (`/` when it has none): what a webhook POSTs to.
    pub fn request_target(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(u) => match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_owned(),
            },
            Err(_) => "/".into(),
        }
    }

    /// The name the remote's certificate is checked against (and sent as SNI).
    pub fn tls_server_name(&self) -> Result<String> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => Ok(self.host_port()?.0),
        }
    }

    /// The MQTT client id at the remote: the configured one, else
    /// `certmq-<org>-<id>`.
    pub fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("certmq-{}-{}", self.org, self.id))
    }

    /// The CA certificates of the trust bundle, DER.
    pub fn trust_anchors(&self) -> Result<Vec<Vec<u8>>> {
        if self.ca_certificates.trim().is_empty() {
            return Ok(Vec::new());
        }
        Ok(cert::read_chain(self.ca_certificates.as_bytes())?)
    }
}

/// A new bridge: `POST /orgs/{org}/bridges`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BridgeRequest {
    pub name: String,
    /// `mqtts://host[:port]` (port 8883 when left out).
    pub url: String,
    /// TLS server name (SNI); default the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Id of one of the org's client certificates.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM bundle the remote server certificate must chain to.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// Also trust the system's root CAs (default false).
    #[serde(default)]
    pub trust_system_roots: bool,
    /// MQTT client id at the remote; default `certmq-<org>-<bridge id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    pub forward: Vec<ForwardRule>,
    /// Remote topics brought into the org as commands (default none).
    #[serde(default)]
    pub receive: Vec<ReceiveRule>,
}

/// A new webhook: `POST /orgs/{org}/webhooks`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    pub name: String,
    /// `https://host[:port]/path`.
    pub url: String,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub trust_system_roots: bool,
    /// The messages to POST, e.g. `iot-2/type/+/id/+/evt/+/fmt/+`.
    pub filter: String,
    /// 0 or 1 (default 1): QoS 1 messages are retried until the endpoint answers 2xx.
    #[serde(default = "qos_one")]
    pub qos: u8,
}

/// Deserializes a present field (even `null`) as `Some`, so a PATCH tells "leave it"
/// (absent) from "remove it" (`null`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A change to a destination: `PATCH`. Absent fields stay as they are; `null` removes
/// an optional one. Changing anything reconnects with the new settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DestinationPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub server_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub client_cert: Option<Option<String>>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub trust_system_roots: Option<bool>,
    /// Bridges only.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub client_id: Option<Option<String>>,
    /// Bridges only.
    #[serde(default)]
    pub forward: Option<Vec<ForwardRule>>,
    /// Bridges only.
    #[serde(default)]
    pub receive: Option<Vec<ReceiveRule>>,
    /// Webhooks only.
    #[serde(default)]
    pub filter: Option<String>,
    /// Webhooks only.
    #[serde(default)]
    pub qos: Option<u8>,
}

/// The placeholders a template may use.
const PLACEHOLDERS: [&str; 7] = ["org", "type", "id", "event", "format", "cmd", "topic"];

/// The values of the placeholders for one message: `topic` in the application's view.
fn placeholder<'a>(name: &str, org: &'a OrgId, topic: &'a str) -> Option<&'a str> {
    let l: Vec<&str> = topic.split('/').collect();
    let device = l.len() >= 5 && l[0] == "iot-2" && l[1] == "type" && l[3] == "id";
    let class = if device { l.get(5).copied() } else { None };
    match name {
        "org" => Some(org.as_str()),
        "topic" => Some(topic),
        "type" if device => Some(l[2]),
        "id" if device => Some(l[4]),
        "event" if class == Some("evt") => l.get(6).copied(),
        "cmd" if class == Some("cmd") => l.get(6).copied(),
        "format" if matches!(class, Some("evt" | "cmd")) && l.get(7) == Some(&"fmt") => {
            l.get(8).copied()
        }
        _ => None,
    }
}

/// The placeholders of `template`, in order; an error names an unclosed or unknown one.
fn placeholders(template: &str) -> std::result::Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("topic {template:?} has a `{{` without `}}`"))?;
        let name = &after[..end];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "topic {template:?} names {{{name}}}; the placeholders are {}",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
            ));
        }
        out.push(name);
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// `template` with its placeholders filled in for a message of `org` on `topic` (the
/// application's view). A placeholder the topic has no value for (not possible for a
/// stored rule: [`check_rule`] refuses those) becomes `_`.
pub fn expand_topic(template: &str, org: &OrgId, topic: &str) -> String {
    let mut out = String::with_capacity(template.len() + topic.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        out.push_str(placeholder(&after[..end], org, topic).unwrap_or("_"));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether `filter` is a well-formed MQTT topic filter.
fn check_filter(filter: &str) -> std::result::Result<(), String> {
    if filter.is_empty() || filter.len() > MAX_TOPIC {
        return Err(format!("filter must be 1 to {MAX_TOPIC} bytes"));
    }
    if filter.starts_with('$') || filter.contains('\0') {
        return Err(format!(
            "filter {filter:?} is not an MQTT topic filter of the org"
        ));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let bad = (l.contains('#') && (*l != "#" || i + 1 != levels.len()))
            || (l.contains('+') && *l != "+");
        if bad {
            return Err(format!(
                "filter {filter:?}: `+` must be a whole level and `#` the whole last level"
            ));
        }
    }
    Ok(())
}

/// A sample topic `filter` can match (wildcards as `x`), to learn which placeholders
/// every message it matches has.
fn sample_topic(filter: &str) -> String {
    filter
        .split('/')
        .map(|l| if l == "+" || l == "#" { "x" } else { l })
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks one forwarding rule (`bridge`: its topic template too).
fn check_rule(org: &OrgId, rule: &ForwardRule, bridge: bool) -> Result<()> {
    check_filter(&rule.filter).map_err(Error::BadRequest)?;
    if rule.qos > 1 {
        return Err(Error::BadRequest(format!(
            "qos {} for {:?}: destinations forward with QoS 0 or 1",
            rule.qos, rule.filter
        )));
    }
    if !bridge {
        return Ok(());
    }
    let t = &rule.topic;
    if t.is_empty() || t.len() > MAX_TOPIC || t.contains(['+', '#', '\0']) {
        return Err(Error::BadRequest(format!(
            "topic {t:?} must be 1 to {MAX_TOPIC} bytes without wildcards"
        )));
    }
    let names = placeholders(t).map_err(Error::BadRequest)?;
    // A filter ending in `#` matches the rest of the Watson shape after the levels it
    // names: `…/evt/#` still means `…/evt/<event>/fmt/<format>`.
    let mut sample = sample_topic(rule.filter.trim_end_matches("/#"));
    let named = sample.split('/').count();
    if rule.filter.ends_with('#') && named >= 6 {
        for i in named..9 {
            sample.push_str(if i == 7 { "/fmt" } else { "/x" });
        }
    }
    for name in names {
        if placeholder(name, org, &sample).is_none() {
            return Err(Error::BadRequest(format!(
                "topic {t:?} uses {{{name}}}, which not every message matching {:?} has; \
                 {{event}} needs a filter with `evt` at the event level, {{cmd}} one with \
                 `cmd`",
                rule.filter
            )));
        }
    }
    Ok(())
}

/// `template` with `{1}`, `{2}`, … replaced by the levels of `topic` that the `+`
/// levels of `filter` matched, in order; `None` when `topic` does not match `filter`
/// or the template names a level the filter does not have.
pub fn expand_received(filter: &str, template: &str, topic: &str) -> Option<String> {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    let mut wild = Vec::new();
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => break,
            "+" => wild.push(*t.get(i)?),
            lit if t.get(i) != Some(&lit) => return None,
            _ => {}
        }
    }
    if !f.contains(&"#") && f.len() != t.len() {
        return None;
    }
    let mut out = Vec::new();
    for level in template.split('/') {
        match level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            Some(n) => out.push(*wild.get(n.parse::<usize>().ok()?.checked_sub(1)?)?),
            None => out.push(level),
        }
    }
    Some(out.join("/"))
}

/// Checks one reverse rule: a remote filter and a command-topic template whose
/// placeholders name the filter's `+` levels. In an org whose topic policy is custom
/// (`custom`), the template may name any topic of the org's space instead
/// (docs/topic-policies.md): literal levels without wildcards, not starting with `$`.
fn check_receive(rule: &ReceiveRule, custom: bool) -> Result<()> {
    check_filter(&rule.filter).map_err(Error::BadRequest)?;
    if rule.qos > 1 {
        return Err(Error::BadRequest(format!(
            "qos {} for {:?}: a bridge subscribes with QoS 0 or 1",
            rule.qos, rule.filter
        )));
    }
    let pluses = rule.filter.split('/').filter(|l| *l == "+").count();
    let levels: Vec<&str> = rule.topic.split('/').collect();
    if custom {
        let placeholder_ok = |n: &str| n.parse::<usize>().is_ok_and(|n| (1..=pluses).contains(&n));
        let bad =
            levels.iter().find(
                |l| match l.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                    Some(n) => !placeholder_ok(n),
                    None => l.contains(['+', '#', '{', '}', '\0']),
                },
            );
        if rule.topic.is_empty() || rule.topic.starts_with('$') || bad.is_some() {
            return Err(Error::BadRequest(format!(
                "receive topic {:?} must be a topic of the org (no wildcards, not starting with $), each {{N}} a whole level naming the filter's N-th `+` (1 to {pluses})",
                rule.topic
            )));
        }
        return Ok(());
    }
    let shape = ["iot-2", "type", "", "id", "", "cmd", "", "fmt", ""];
    let wrong = || {
        Error::BadRequest(format!(
            "receive topic {:?} must be a command topic              iot-2/type/<type>/id/<id>/cmd/<cmd>/fmt/<format>, each variable level a name              or {{N}} (the filter's N-th `+`, 1 to {pluses})",
            rule.topic
        ))
    };
    if levels.len() != shape.len() {
        return Err(wrong());
    }
    for (level, want) in levels.iter().zip(shape) {
        if !want.is_empty() {
            if *level != want {
                return Err(wrong());
            }
            continue;
        }
        match level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            Some(n) => {
                if !n.parse::<usize>().is_ok_and(|n| (1..=pluses).contains(&n)) {
                    return Err(wrong());
                }
            }
            None => {
                crate::names::Name::try_from(*level).map_err(|_| wrong())?;
            }
        }
    }
    Ok(())
}

fn check_name_field(field: &str, v: &str, max: usize) -> Result<()> {
    if v.trim().is_empty() {
        return Err(Error::BadRequest(format!("{field} must not be empty")));
    }
    crate::text::check(field, v, max)
}

impl Destination {
    /// Checks every field against the rules and the org's client certificates.
    fn check(&self, r: &Registry) -> Result<()> {
        check_name_field("name", &self.name, 64)?;
        let u = url::Url::parse(&self.url)
            .map_err(|e| Error::BadRequest(format!("url {:?} is not a URL: {e}", self.url)))?;
        let (scheme, example) = match self.kind {
            DestinationKind::Bridge => ("mqtts", "mqtts://broker.example.com:8883"),
            DestinationKind::Webhook => ("https", "https://hooks.example.com/certmq"),
        };
        if u.scheme() != scheme {
            return Err(Error::BadRequest(format!(
                "url {:?}: a {} connects with {scheme}:// (e.g. {example}); certmq makes \
                 no unencrypted outgoing connection",
                self.url,
                self.kind.as_str()
            )));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(Error::BadRequest(format!("url {:?} has no host", self.url)));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(Error::BadRequest(format!(
                "url {:?} carries credentials; the destination authenticates with its client_cert",
                self.url
            )));
        }
        if self.kind == DestinationKind::Bridge && !matches!(u.path(), "" | "/") {
            return Err(Error::BadRequest(format!(
                "url {:?}: a bridge URL has no path",
                self.url
            )));
        }
        if let Some(n) = &self.server_name {
            let ok = n.parse::<std::net::IpAddr>().is_ok()
                || rustls_pki_types::DnsName::try_from(n.as_str()).is_ok();
            if !ok {
                return Err(Error::BadRequest(format!(
                    "server_name {n:?} is neither a DNS name nor an IP address"
                )));
            }
        }
        if let Some(id) = &self.client_cert {
            if r.client_record(&self.org, id).is_err() {
                return Err(Error::BadRequest(format!(
                    "client_cert {id:?} is not a client certificate of org {}; upload one \
                     with POST /orgs/{}/client-certs",
                    self.org, self.org
                )));
            }
        }
        let anchors = self
            .trust_anchors()
            .map_err(|e| Error::BadRequest(format!("ca_certificates: {e}")))?;
        if anchors.is_empty() && !self.trust_system_roots {
            return Err(Error::BadRequest(
                "ca_certificates is required: the PEM bundle of the CA(s) the remote \
                 server's certificate chains to (or set trust_system_roots: true to use \
                 the system's roots)"
                    .into(),
            ));
        }
        if anchors.len() > MAX_TRUST {
            return Err(Error::BadRequest(format!(
                "ca_certificates holds {} certificates; at most {MAX_TRUST}",
                anchors.len()
            )));
        }
        for der in &anchors {
            cert::details(der).map_err(|e| Error::BadRequest(format!("ca_certificates: {e}")))?;
        }
        if let Some(c) = &self.client_id {
            check_name_field("client_id", c, 128)?;
            if c.contains(char::is_whitespace) {
                return Err(Error::BadRequest(format!(
                    "client_id {c:?} contains white space"
                )));
            }
        }
        match self.kind {
            DestinationKind::Bridge => {
                if self.forward.is_empty() || self.forward.len() > MAX_RULES {
                    return Err(Error::BadRequest(format!(
                        "forward must hold 1 to {MAX_RULES} rules"
                    )));
                }
            }
            DestinationKind::Webhook => {
                if self.forward.len() != 1 {
                    return Err(Error::BadRequest("a webhook has one filter".into()));
                }
            }
        }
        for rule in &self.forward {
            check_rule(&self.org, rule, self.kind == DestinationKind::Bridge)?;
        }
        if self.receive.len() > MAX_RULES {
            return Err(Error::BadRequest(format!(
                "receive holds at most {MAX_RULES} rules"
            )));
        }
        let custom =
            !self.receive.is_empty() && r.topic_policy(&self.org).is_ok_and(|p| p.is_custom());
        for rule in &self.receive {
            check_receive(rule, custom)?;
        }
        Ok(())
    }
}

impl BridgeRequest {
    fn into_destination(self, org: &OrgId) -> Destination {
        let now = OffsetDateTime::now_utc();
        Destination {
            id: new_id(),
            org: org.clone(),
            kind: DestinationKind::Bridge,
            name: self.name,
            url: self.url,
            server_name: self.server_name,
            client_cert: self.client_cert,
            ca_certificates: self.ca_certificates.unwrap_or_default(),
            trust_system_roots: self.trust_system_roots,
            client_id: self.client_id,
            forward: self.forward,
            receive: self.receive,
            created_at: now,
            updated_at: now,
        }
    }
}

impl WebhookRequest {
    fn into_destination(self, org: &OrgId) -> Destination {
        let now = OffsetDateTime::now_utc();
        Destination {
            id: new_id(),
            org: org.clone(),
            kind: DestinationKind::Webhook,
            name: self.name,
            url: self.url,
            server_name: self.server_name,
            client_cert: self.client_cert,
            ca_certificates: self.ca_certificates.unwrap_or_default(),
            trust_system_roots: self.trust_system_roots,
            client_id: None,
            forward: vec![ForwardRule {
                filter: self.filter,
                topic: same_topic(),
                qos: self.qos,
            }],
            receive: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }
}

impl Registry {
    pub(crate) fn list_destination_records(&self, org: &OrgId) -> Result<Vec<Destination>> {
        self.scan_json(&layout::destinations(org))
    }

    /// Every destination of every org (the broker starts them).
    pub fn all_destinations(&self) -> Result<Vec<Destination>> {
        let mut out = Vec::new();
        for org in self.list_orgs()? {
            out.extend(self.list_destination_records(&org.id)?);
        }
        Ok(out)
    }

    /// The org's destinations of `kind`, oldest first.
    pub fn list_destinations(
        &self,
        org: &OrgId,
        kind: DestinationKind,
    ) -> Result<Vec<Destination>> {
        self.get_org(org)?;
        let mut all: Vec<Destination> = self
            .list_destination_records(org)?
            .into_iter()
            .filter(|d| d.kind == kind)
            .collect();
        all.sort_by_key(|d| d.created_at);
        Ok(all)
    }

    pub fn get_destination(
        &self,
        org: &OrgId,
        kind: DestinationKind,
        id: &str,
    ) -> Result<Destination> {
        self.get_org(org)?;
        self.get_json::<Destination>(&layout::destination(org, id))?
            .filter(|d| d.kind == kind)
            .ok_or_else(|| {
                Error::NotFound(format!("{} {id} not found in org {org}", kind.as_str()))
            })
    }

    /// Stores `d` after its checks, under the lock: 409 when the name is taken by
    /// another destination of the same kind or the org has [`MAX_DESTINATIONS`].
    fn store_destination(&self, d: &Destination, replacing: bool) -> Result<()> {
        d.check(self)?;
        let _g = self.lock();
        self.get_org(&d.org)?;
        let others: Vec<Destination> = self
            .list_destination_records(&d.org)?
            .into_iter()
            .filter(|o| o.id != d.id)
            .collect();
        if let Some(o) = others.iter().find(|o| o.kind == d.kind && o.name == d.name) {
            return Err(Error::Conflict(format!(
                "{} {} is already named {:?}",
                d.kind.as_str(),
                o.id,
                d.name
            )));
        }
        if !replacing && others.len() >= MAX_DESTINATIONS {
            return Err(Error::Conflict(format!(
                "org {} already has {MAX_DESTINATIONS} destinations, the most it may have",
                d.org
            )));
        }
        // A client certificate deleted meanwhile (deletes are checked under the lock).
        if let Some(id) = &d.client_cert {
            self.client_record(&d.org, id)?;
        }
        self.store
            .apply(vec![Self::put(layout::destination(&d.org, &d.id), d)])?;
        drop(_g);
        self.notify(Change::Org(d.org.clone()));
        Ok(())
    }

    /// Creates a bridge. 400 with the field that is wrong; 409 a name taken.
    pub fn create_bridge(&self, org: &OrgId, req: BridgeRequest) -> Result<Destination> {
        self.get_org(org)?;
        let d = req.into_destination(org);
        self.store_destination(&d, false)?;
        Ok(d)
    }

    /// Creates a webhook. 400 with the field that is wrong; 409 a name taken.
    pub fn create_webhook(&self, org: &OrgId, req: WebhookRequest) -> Result<Destination> {
        self.get_org(org)?;
        let d = req.into_destination(org);
        self.store_destination(&d, false)?;
        Ok(d)
    }

    /// Applies `patch` to a destination; the broker reconnects it with the new
    /// settings. Fields of the other kind (`forward` on a webhook) are a 400.
    pub fn update_destination(
        &self,
        org: &OrgId,
        kind: DestinationKind,
        id: &str,
        patch: DestinationPatch,
    ) -> Result<Destination> {
        let mut d = self.get_destination(org, kind, id)?;
        let wrong = match kind {
            DestinationKind::Bridge => {
                (patch.filter.is_some() || patch.qos.is_some()).then_some("filter and qos")
            }
            DestinationKind::Webhook => {
                (patch.forward.is_some() || patch.client_id.is_some() || patch.receive.is_some())
                    .then_some("forward, receive and client_id")
            }
        };
        if let Some(fields) = wrong {
            return Err(Error::BadRequest(format!(
                "{fields} are not fields of a {}",
                kind.as_str()
            )));
        }
        if let Some(v) = patch.name {
            d.name = v;
        }
        if let Some(v) = patch.url {
            d.url = v;
        }
        if let Some(v) = patch.server_name {
            d.server_name = v;
        }
        if let Some(v) = patch.client_cert {
            d.client_cert = v;
        }
        if let Some(v) = patch.ca_certificates {
            d.ca_certificates = v;
        }
        if let Some(v) = patch.trust_system_roots {
            d.trust_system_roots = v;
        }
        if let Some(v) = patch.client_id {
            d.client_id = v;
        }
        if let Some(v) = patch.forward {
            d.forward = v;
        }
        if let Some(v) = patch.receive {
            d.receive = v;
        }
        if let Some(rule) = d
            .forward
            .first_mut()
            .filter(|_| kind == DestinationKind::Webhook)
        {
            if let Some(v) = patch.filter {
                rule.filter = v;
            }
            if let Some(v) = patch.qos {
                rule.qos = v;
            }
        }
        d.updated_at = OffsetDateTime::now_utc();
        self.store_destination(&d, true)?;
        Ok(d)
    }

    /// Deletes a destination; the broker stops it and discards its queue.
    pub fn delete_destination(&self, org: &OrgId, kind: DestinationKind, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_destination(org, kind, id)?;
        self.store
            .apply(vec![crate::store::Op::Delete(layout::destination(org, id))])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> OrgId {
        OrgId::try_from("acme").unwrap()
    }

    #[test]
    fn topics_expand_from_the_message() {
        let o = org();
        let t = "iot-2/type/sensor/id/d1/evt/temp/fmt/json";
        assert_eq!(
            expand_topic("fleet/{org}/{type}/{id}/{event}/{format}", &o, t),
            "fleet/acme/sensor/d1/temp/json"
        );
        assert_eq!(expand_topic("{topic}", &o, t), t);
        let c = "iot-2/type/sensor/id/d1/cmd/reboot/fmt/txt";
        assert_eq!(expand_topic("c/{cmd}/{event}", &o, c), "c/reboot/_");
    }

    #[test]
    fn rules_are_checked_against_their_filter() {
        let o = org();
        let rule = |filter: &str, topic: &str| ForwardRule {
            filter: filter.into(),
            topic: topic.into(),
            qos: 1,
        };
        assert!(check_rule(
            &o,
            &rule("iot-2/type/+/id/+/evt/+/fmt/+", "f/{type}/{id}/{event}"),
            true
        )
        .is_ok());
        assert!(check_rule(
            &o,
            &rule("iot-2/type/+/id/+/evt/#", "f/{event}/{format}"),
            true
        )
        .is_ok());
        let e = check_rule(&o, &rule("iot-2/type/+/id/+/#", "f/{event}"), true).unwrap_err();
        assert!(e.to_string().contains("{event}"), "{e}");
        let e =
            check_rule(&o, &rule("iot-2/type/+/id/+/evt/+/fmt/+", "f/{nope}"), true).unwrap_err();
        assert!(e.to_string().contains("{nope}"), "{e}");
        assert!(check_rule(&o, &rule("iot-2/#/x", "t"), true).is_err());
        assert!(check_rule(&o, &rule("iot-2/a+/x", "t"), true).is_err());
        assert!(check_rule(&o, &rule("iot-2/type/+/id/+/evt/+/fmt/+", "out/+"), true).is_err());
        let recv = |filter: &str, topic: &str| ReceiveRule {
            filter: filter.into(),
            topic: topic.into(),
            qos: 1,
        };
        assert!(check_receive(
            &recv("p/cmd/+/+", "iot-2/type/sensor/id/{1}/cmd/{2}/fmt/txt"),
            false
        )
        .is_ok());
        assert!(check_receive(
            &recv("p/cmd/+", "iot-2/type/sensor/id/{1}/cmd/{2}/fmt/txt"),
            false
        )
        .is_err());
        assert!(check_receive(
            &recv("p/+", "iot-2/type/sensor/id/{1}/evt/x/fmt/txt"),
            false
        )
        .is_err());
        assert!(check_receive(&recv("p/+", "iot-2/type/sensor/id/{1}/cmd/x"), false).is_err());
        // A custom-mode org: any topic of its space, placeholders as whole levels.
        assert!(check_receive(&recv("p/+", "things/{1}/cmd/set"), true).is_ok());
        for bad in [
            "things/+/cmd",
            "things/{2}/cmd",
            "$SYS/x",
            "",
            "things/x{1}",
        ] {
            assert!(check_receive(&recv("p/+", bad), true).is_err(), "{bad}");
        }
        assert_eq!(
            expand_received(
                "p/cmd/+/+",
                "iot-2/type/s/id/{1}/cmd/{2}/fmt/txt",
                "p/cmd/d1/reboot"
            ),
            Some("iot-2/type/s/id/d1/cmd/reboot/fmt/txt".into())
        );
        assert_eq!(expand_received("p/cmd/+/+", "{1}", "p/evt/d1/x"), None);
        assert_eq!(expand_received("p/+/#", "{1}", "p/a/b/c"), Some("a".into()));
        let mut q2 = rule("iot-2/type/+/id/+/evt/+/fmt/+", "t");
        q2.qos = 2;
        assert!(check_rule(&o, &q2, true).is_err());
    }
}
