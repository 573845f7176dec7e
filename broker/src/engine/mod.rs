//! MQTT packets: the only part of the broker that knows rumqttd.
//!
//! certmq routes messages itself (`state`: a subscription tree and a queue per
//! session, durable for persistent sessions). rumqttd's router kept a commit log for
//! every filter ever subscribed and a match cache for every topic ever published,
//! never released, and kept nothing across a restart; what certmq uses of rumqttd is
//! its protocol module: the packet model ([`packet`]) and the MQTT 3.1.1/5 wire codec
//! ([`codec`]).

pub mod codec;

/// The packet model sessions use (rumqttd's protocol module).
pub mod packet {
    pub use rumqttd::protocol::{
        ConnAck, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter,
        LastWill, LastWillProperties, Login, Packet, PingResp, PubAck, PubAckReason, PubComp,
        PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, QoS,
        RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    };

    /// A PUBLISH with the given QoS, packet id and DUP flag (rumqttd keeps those fields
    /// private; its own serialization is the way in).
    pub fn publish(
        topic: &[u8],
        payload: &[u8],
        qos: u8,
        retain: bool,
        pkid: u16,
        dup: bool,
    ) -> Publish {
        use bytes::BufMut;
        let mut b = bytes::BytesMut::with_capacity(5 + topic.len() + payload.len());
        b.put_u8(0b0011_0000 | u8::from(retain) | ((qos.min(2)) << 1) | (u8::from(dup) << 3));
        b.put_u16(pkid);
        b.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
        b.put_slice(topic);
        b.put_slice(payload);
        Publish::deserialize(b.freeze())
    }

    /// `p` with another QoS, packet id and DUP flag; topic and payload are shared, not
    /// copied.
    pub fn with_qos(p: &Publish, qos: u8, pkid: u16, dup: bool) -> Publish {
        let mut out = publish(b"", b"", qos, p.retain, pkid, dup);
        out.topic = p.topic.clone();
        out.payload = p.payload.clone();
        out
    }
}
