//! MQTT framing on the client's socket: picks v3.1.1 or v5 from the CONNECT packet and
//! reads/writes packets with rumqttd's protocol module (the packet model sessions use,
//! re-exported as [`super::packet`]).

use bytes::BytesMut;
use rumqttd::protocol::{
    self, v4::V4, v5::V5, ConnAck, ConnectReturnCode, Disconnect, DisconnectProperties,
    DisconnectReasonCode, Packet, Protocol, SubscribeReasonCode,
};

/// The protocol a client speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

impl Version {
    /// The name status events and the connections API show (`mqtt4-tls`, `mqtt5`, …).
    pub fn label(self, transport: registry::Transport) -> &'static str {
        match (self, transport) {
            (Version::V4, registry::Transport::Tls) => "mqtt4-tls",
            (Version::V5, registry::Transport::Tls) => "mqtt5-tls",
            (Version::V4, registry::Transport::Plain) => "mqtt4",
            (Version::V5, registry::Transport::Plain) => "mqtt5",
        }
    }
}

/// A framing failure. `Incomplete` means "read more bytes".
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("need more bytes")]
    Incomplete,
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("unsupported MQTT protocol level {0}")]
    Level(u8),
    #[error("malformed packet: {0}")]
    Malformed(protocol::Error),
}

fn map(e: protocol::Error) -> CodecError {
    match e {
        protocol::Error::InsufficientBytes(_) => CodecError::Incomplete,
        e => CodecError::Malformed(e),
    }
}

/// Reads the protocol level from a buffered CONNECT, without consuming it.
pub fn connect_version(buf: &[u8]) -> Result<Version, CodecError> {
    let first = *buf.first().ok_or(CodecError::Incomplete)?;
    if first != 0x10 {
        return Err(CodecError::NotConnect);
    }
    // Remaining length: 1–4 bytes, 7 bits each.
    let mut i = 1;
    loop {
        let b = *buf.get(i).ok_or(CodecError::Incomplete)?;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(CodecError::NotConnect);
        }
    }
    let name_len = u16::from_be_bytes([
        *buf.get(i).ok_or(CodecError::Incomplete)?,
        *buf.get(i + 1).ok_or(CodecError::Incomplete)?,
    ]) as usize;
    let level = *buf.get(i + 2 + name_len).ok_or(CodecError::Incomplete)?;
    match level {
        3 | 4 => Ok(Version::V4),
        5 => Ok(Version::V5),
        l => Err(CodecError::Level(l)),
    }
}

/// The QoS and packet id of the PUBLISH at the head of `buf` (rumqttd keeps both
/// private once decoded). `None` when `buf` does not start with a whole PUBLISH header.
pub fn publish_meta(buf: &[u8]) -> Option<(u8, u16)> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let qos = (first >> 1) & 0b11;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    if qos == 0 {
        return Some((0, 0));
    }
    let topic_len = usize::from(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
    let at = i + 2 + topic_len;
    Some((qos, u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?])))
}

impl Version {
    /// Reads one packet from `buf`, consuming it.
    pub fn read(self, buf: &mut BytesMut, max_size: usize) -> Result<Packet, CodecError> {
        match self {
            Version::V4 => V4.read_mut(buf, max_size).map_err(map),
            Version::V5 => V5.read_mut(buf, max_size).map_err(map),
        }
    }

    /// Appends `packet` to `out`. A v3.1.1 client never sees v5 properties or reason codes.
    pub fn write(self, packet: Packet, out: &mut BytesMut) -> Result<(), CodecError> {
        let r = match self {
            Version::V4 => V4.write(downgrade(packet), out),
            Version::V5 => V5.write(packet, out),
        };
        r.map(|_| ()).map_err(CodecError::Malformed)
    }

    /// A CONNACK refusing the connection as not authorized (3.1.1 rc 5, v5 0x87).
    pub fn not_authorized(self) -> Packet {
        Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized,
            },
            None,
        )
    }

    /// A CONNACK refusing a wrong token (3.1.1 rc 4, v5 0x86).
    pub fn bad_credentials(self) -> Packet {
        Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::BadUserNamePassword,
            },
            None,
        )
    }

    /// The SUBACK code for a refused filter (3.1.1 0x80, v5 0x87).
    pub fn sub_refused(self) -> SubscribeReasonCode {
        match self {
            Version::V4 => SubscribeReasonCode::Failure,
            Version::V5 => SubscribeReasonCode::NotAuthorized,
        }
    }

    /// The packet to send before closing, if the protocol has one (v5 DISCONNECT with
    /// a reason string for humans).
    pub fn disconnect(self, reason: DisconnectReasonCode, text: &str) -> Option<Packet> {
        match self {
            Version::V4 => None,
            // Always with properties: rumqttd 0.20 miscounts the length of a DISCONNECT
            // that has a reason code but no properties.
            Version::V5 => Some(Packet::Disconnect(
                Disconnect {
                    reason_code: reason,
                },
                Some(DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(text.chars().take(200).collect()),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            )),
        }
    }
}

/// Strips what v3.1.1 cannot carry: properties, and v5-only SUBACK codes.
fn downgrade(packet: Packet) -> Packet {
    match packet {
        Packet::ConnAck(a, _) => Packet::ConnAck(a, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(a, _) => Packet::PubAck(a, None),
        Packet::PubRec(a, _) => Packet::PubRec(a, None),
        Packet::PubRel(a, _) => Packet::PubRel(a, None),
        Packet::PubComp(a, _) => Packet::PubComp(a, None),
        Packet::SubAck(mut a, _) => {
            for c in &mut a.return_codes {
                if !matches!(
                    c,
                    SubscribeReasonCode::QoS0
                        | SubscribeReasonCode::QoS1
                        | SubscribeReasonCode::QoS2
                        | SubscribeReasonCode::Success(_)
                ) {
                    *c = SubscribeReasonCode::Failure;
                }
            }
            Packet::SubAck(a, None)
        }
        Packet::UnsubAck(a, _) => Packet::UnsubAck(a, None),
        Packet::Disconnect(d, _) => Packet::Disconnect(d, None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_publish_header() {
        let mut buf = BytesMut::new();
        let p = crate::engine::packet::publish(b"a/b", b"xyz", 1, false, 513, false);
        Version::V4
            .write(Packet::Publish(p, None), &mut buf)
            .unwrap();
        assert_eq!(publish_meta(&buf), Some((1, 513)));
        assert_eq!(publish_meta(&buf[..3]), None);
        let mut buf = BytesMut::new();
        let p = crate::engine::packet::publish(b"a/b", b"xyz", 0, false, 0, false);
        Version::V5
            .write(Packet::Publish(p, None), &mut buf)
            .unwrap();
        assert_eq!(publish_meta(&buf), Some((0, 0)));
    }

    #[test]
    fn detects_versions_and_garbage() {
        // CONNECT, remaining length 12, "MQTT", level 4
        let v4 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
        assert_eq!(connect_version(&v4).unwrap(), Version::V4);
        let mut v5 = v4;
        v5[8] = 5;
        assert_eq!(connect_version(&v5).unwrap(), Version::V5);
        assert!(matches!(
            connect_version(&v4[..5]),
            Err(CodecError::Incomplete)
        ));
        assert!(matches!(
            connect_version(b"GET / HTTP/1.1"),
            Err(CodecError::NotConnect)
        ));
        let mut bad = v4;
        bad[8] = 9;
        assert!(matches!(connect_version(&bad), Err(CodecError::Level(9))));
    }
}
