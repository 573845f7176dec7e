//! How message state is kept in the store: the keys under `msg/<org>/`, and the record
//! of one message.
//!
//! | key                              | value                                   |
//! |----------------------------------|-----------------------------------------|
//! | `msg/<org>/r/<topic>`            | a retained message                      |
//! | `msg/<org>/s/<client id>`        | a persistent session (JSON)             |
//! | `msg/<org>/q/<client id>/<seq>`  | a message queued for it (QoS 1/2)       |
//! | `msg/<org>/i/<client id>/<pkid>` | a QoS 2 PUBLISH it sent, not yet PUBREL |
//! | `msg/<org>/o/<client id>/<pkid>` | a PUBREL it owes us (delivery QoS 2)    |
//!
//! A message record is a small header and the message as an MQTT 5 PUBLISH (so its
//! properties survive too): version, QoS, expiry (Unix seconds, 0 = never), time
//! stored (Unix seconds); from version 2 the publisher's client id (u16 length, UTF-8);
//! then the packet. Version 1 records (no client id) still load.

use bytes::{Buf, BufMut, BytesMut};
use registry::OrgId;
use serde::{Deserialize, Serialize};

use crate::engine::codec::Version;
use crate::engine::packet::{self, Packet, Publish, PublishProperties};

const VERSION: u8 = 2;
/// Version, QoS, expiry, time stored.
const HEADER: usize = 18;

/// One message as certmq keeps it: retained, or queued for a persistent session.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    /// Internal topic (`/tenants/<org>/…`), payload and retain flag.
    pub publish: Publish,
    pub props: Option<PublishProperties>,
    /// QoS the message was published with (a delivery gets the lower of this and the
    /// subscription's).
    pub qos: u8,
    /// When the message expires (MQTT 5 message expiry), Unix seconds.
    pub expires_at: Option<u64>,
    /// When it was stored, Unix seconds.
    pub at: u64,
    /// The client id of the session that published it (`""`: the broker's own, or a
    /// version 1 record).
    pub from: String,
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Message {
    pub(crate) fn new(
        publish: &Publish,
        props: Option<PublishProperties>,
        qos: u8,
        from: &str,
    ) -> Message {
        let at = now();
        let expires_at = props
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|s| at + u64::from(s));
        Message {
            publish: packet::with_qos(publish, 0, 0, false),
            props,
            qos,
            expires_at,
            at,
            from: from.to_owned(),
        }
    }

    pub(crate) fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// Payload bytes (what the retained limits count).
    pub(crate) fn size(&self) -> usize {
        self.publish.payload.len()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(32 + self.publish.topic.len() + self.size());
        out.put_u8(VERSION);
        out.put_u8(self.qos);
        out.put_u64(self.expires_at.unwrap_or(0));
        out.put_u64(self.at);
        let from = &self.from.as_bytes()[..self.from.len().min(usize::from(u16::MAX))];
        out.put_u16(u16::try_from(from.len()).unwrap_or(0));
        out.put_slice(from);
        let p = packet::with_qos(&self.publish, 1, 1, false);
        // A packet the codec cannot write cannot have been read from a client.
        let _ = Version::V5.write(Packet::Publish(p, self.props.clone()), &mut out);
        out.to_vec()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Message, String> {
        if bytes.len() < HEADER {
            return Err(format!("truncated record ({} bytes)", bytes.len()));
        }
        let mut b = &bytes[..HEADER];
        let version = b.get_u8();
        if !(1..=VERSION).contains(&version) {
            return Err(format!("unknown record version {version}"));
        }
        let qos = b.get_u8();
        let expires_at = Some(b.get_u64()).filter(|e| *e != 0);
        let at = b.get_u64();
        let mut body = &bytes[HEADER..];
        let mut from = String::new();
        if version >= 2 {
            if body.len() < 2 {
                return Err("truncated record (client id)".into());
            }
            let n = usize::from(body.get_u16());
            if body.len() < n {
                return Err("truncated record (client id)".into());
            }
            from = String::from_utf8_lossy(&body[..n]).into_owned();
            body = &body[n..];
        }
        let mut rest = BytesMut::from(body);
        match Version::V5.read(&mut rest, usize::MAX) {
            Ok(Packet::Publish(p, props)) if rest.is_empty() => Ok(Message {
                publish: packet::with_qos(&p, 0, 0, false),
                props,
                qos,
                expires_at,
                at,
                from,
            }),
            Ok(_) => Err("not a PUBLISH record".into()),
            Err(e) => Err(format!("bad PUBLISH in record: {e}")),
        }
    }
}

/// A persistent session's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SessionRecord {
    /// Filters (internal form) and their options (QoS and flags, `state::opts`).
    pub subs: Vec<(String, u8)>,
    /// The MQTT 5 subscription identifiers of those filters that have one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<(String, u32)>,
    /// Seconds the session outlives its connection; `None`: never expires.
    pub expiry: Option<u32>,
    /// When its client disconnected (Unix seconds); `None` while connected, or
    /// when the broker stopped with it connected.
    pub offline_since: Option<u64>,
}

pub(crate) fn org_prefix(org: &OrgId) -> String {
    registry::message_keys::org(org)
}

pub(crate) fn retained(org: &OrgId, topic: &str) -> String {
    format!("{}r/{topic}", org_prefix(org))
}

pub(crate) fn session(org: &OrgId, client: &str) -> String {
    format!("{}s/{client}", org_prefix(org))
}

pub(crate) fn queued(org: &OrgId, client: &str, seq: u64) -> String {
    format!("{}q/{client}/{seq:016x}", org_prefix(org))
}

pub(crate) fn inbound(org: &OrgId, client: &str, pkid: u16) -> String {
    format!("{}i/{client}/{pkid}", org_prefix(org))
}

pub(crate) fn release(org: &OrgId, client: &str, pkid: u16) -> String {
    format!("{}o/{client}/{pkid}", org_prefix(org))
}

/// A stored key, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    Retained(&'a str),
    Session(&'a str),
    Queued(&'a str, u64),
    Inbound(&'a str, u16),
    Release(&'a str, u16),
}

/// Parses a key under `msg/`: its org and what it is.
pub(crate) fn parse(key: &str) -> Option<(OrgId, Key<'_>)> {
    let rest = key.strip_prefix(registry::message_keys::ALL)?;
    let (org, rest) = rest.split_once('/')?;
    let org = OrgId::try_from(org).ok()?;
    let (kind, rest) = rest.split_once('/')?;
    let parsed = match kind {
        "r" => Key::Retained(rest),
        "s" => Key::Session(rest),
        "q" => {
            let (client, seq) = rest.rsplit_once('/')?;
            Key::Queued(client, u64::from_str_radix(seq, 16).ok()?)
        }
        "i" => {
            let (client, pkid) = rest.rsplit_once('/')?;
            Key::Inbound(client, pkid.parse().ok()?)
        }
        "o" => {
            let (client, pkid) = rest.rsplit_once('/')?;
            Key::Release(client, pkid.parse().ok()?)
        }
        _ => return None,
    };
    Some((org, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let p = packet::publish(b"/tenants/acme/a/b", b"hello", 2, true, 0, false);
        let props = PublishProperties {
            message_expiry_interval: Some(60),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let m = Message::new(&p, Some(props.clone()), 2, "d:acme:sensor:1");
        let back = Message::decode(&m.encode()).unwrap();
        assert_eq!(back.publish.topic, p.topic);
        assert_eq!(back.publish.payload, p.payload);
        assert!(back.publish.retain);
        assert_eq!(back.qos, 2);
        assert_eq!(back.expires_at, m.expires_at);
        assert_eq!(back.props.unwrap().user_properties, props.user_properties);
        assert_eq!(back.from, "d:acme:sensor:1");
        let bytes = m.encode();
        // A version 1 record (before the publisher was kept) still loads.
        let mut v1 = bytes.clone();
        v1[0] = 1;
        v1.drain(HEADER..HEADER + 2 + "d:acme:sensor:1".len());
        let old = Message::decode(&v1).unwrap();
        assert_eq!((old.from.as_str(), old.qos), ("", 2));
        assert!(Message::decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(Message::decode(b"garbage").is_err());
    }

    #[test]
    fn keys_parse_back() {
        let org = OrgId::try_from("acme").unwrap();
        let q = queued(&org, "d:acme:t:d1", 42);
        assert_eq!(
            parse(&q),
            Some((org.clone(), Key::Queued("d:acme:t:d1", 42)))
        );
        let r = retained(&org, "/tenants/acme/x/y");
        assert_eq!(
            parse(&r),
            Some((org.clone(), Key::Retained("/tenants/acme/x/y")))
        );
        assert_eq!(
            parse(&inbound(&org, "a:acme:app", 7)),
            Some((org.clone(), Key::Inbound("a:acme:app", 7)))
        );
        assert_eq!(parse("msg/acme/z/x"), None);
    }
}
