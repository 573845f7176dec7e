//! Watson-style status events: every device and gateway session announces its
//! connect and disconnect as JSON on `iot-2/type/<t>/id/<d>/mon`, in the format Watson
//! IoT applications already parse.

use std::net::SocketAddr;

use bytes::Bytes;
use registry::Identity;
use time::OffsetDateTime;

use crate::acl::Principal;

/// What a session's status events say about it.
pub(super) struct StatusEvents {
    pub(super) principal: Principal,
    pub(super) client_id: String,
    pub(super) addr: SocketAddr,
    /// The broker port the client connected to.
    pub(super) port: u16,
    pub(super) protocol: &'static str,
    pub(super) secure: bool,
    pub(super) connected_at: OffsetDateTime,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl StatusEvents {
    /// The internal `mon` topic (or, in custom mode, the policy's `status_topic`);
    /// `None` for applications, which have no status events.
    fn topic(&self) -> Option<Bytes> {
        if let Some(t) = &self.principal.status_topic {
            let prefix = crate::acl::tenant_prefix(&self.principal.org);
            return Some(Bytes::from(format!("{prefix}{t}")));
        }
        let (t, d) = match &self.principal.identity {
            Identity::Device {
                device_type,
                device_id,
            } => (device_type, device_id),
            Identity::Gateway {
                gateway_type,
                gateway_id,
            } => (gateway_type, gateway_id),
            Identity::App { .. } => return None,
        };
        Some(Bytes::from(crate::acl::status_topic(
            &self.principal.org,
            t,
            d,
        )))
    }

    fn base(&self, action: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("Action".into(), action.into());
        m.insert("Time".into(), rfc3339(OffsetDateTime::now_utc()).into());
        m.insert("ClientAddr".into(), self.addr.ip().to_string().into());
        m.insert("ClientID".into(), self.client_id.clone().into());
        m.insert("Port".into(), self.port.into());
        m.insert("Protocol".into(), self.protocol.into());
        m.insert("Secure".into(), self.secure.into());
        m
    }

    /// The Connect event: topic and payload.
    pub(super) fn connect(&self) -> Option<(Bytes, Bytes)> {
        let body = serde_json::Value::Object(self.base("Connect"));
        Some((self.topic()?, Bytes::from(body.to_string())))
    }

    /// The Disconnect event, with the v5 reason code `code` and `reason` in words.
    pub(super) fn disconnect(&self, code: u8, reason: &str) -> Option<(Bytes, Bytes)> {
        let mut m = self.base("Disconnect");
        m.insert("ConnectTime".into(), rfc3339(self.connected_at).into());
        m.insert("CloseCode".into(), code.into());
        m.insert("Reason".into(), reason.into());
        Some((
            self.topic()?,
            Bytes::from(serde_json::Value::Object(m).to_string()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::{OrgId, SecurityPolicy};

    fn events(identity: &str) -> StatusEvents {
        StatusEvents {
            principal: Principal::new(
                OrgId::try_from("acme").unwrap(),
                Identity::parse(identity).unwrap(),
                &SecurityPolicy::default(),
                &Default::default(),
                None,
            ),
            client_id: "d:acme:sensor:dev1".into(),
            addr: "192.0.2.7:40000".parse().unwrap(),
            port: 8883,
            protocol: "mqtt4-tls",
            secure: true,
            connected_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn devices_announce_connect_and_disconnect_in_watson_format() {
        let e = events("d:sensor:dev1");
        let (topic, body) = e.connect().unwrap();
        assert_eq!(&topic[..], b"/tenants/acme/iot-2/type/sensor/id/dev1/mon");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Action"], "Connect");
        assert_eq!(v["ClientAddr"], "192.0.2.7");
        assert_eq!(v["Port"], 8883);
        assert_eq!(v["Secure"], true);
        let (_, body) = e.disconnect(0x8E, "session taken over").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Action"], "Disconnect");
        assert_eq!(v["CloseCode"], 0x8E);
        assert_eq!(v["ConnectTime"], "1970-01-01T00:00:00Z");
        assert_eq!(v["Reason"], "session taken over");
    }

    #[test]
    fn applications_have_no_status_events() {
        assert!(events("a:dash").connect().is_none());
    }
}
