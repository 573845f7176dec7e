//! The org's limits inside one session (docs/limits.md): the connection count at
//! CONNECT, then per packet the message size, the subscriptions held and the QoS 1/2
//! PUBLISHes in flight. Kept apart from `bridge.rs`, which calls in at four places.

use std::collections::HashSet;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::info;

use super::bridge::Bridge;
use super::SessionError;
use crate::engine::codec::Version;
use crate::engine::packet::{
    ConnAck, ConnectReturnCode, DisconnectReasonCode, Packet, Publish, SubscribeReasonCode,
};
use crate::limits::{self, LiveLimits};

/// The CONNACK refusing a connection over the org's `max_connections`: MQTT 5 0x97
/// *quota exceeded*; 3.1.1 has no such code, so rc 3 *server unavailable*.
pub(super) fn over_connections(version: Version) -> Packet {
    let code = match version {
        Version::V5 => ConnectReturnCode::QuotaExceeded,
        Version::V4 => ConnectReturnCode::ServiceUnavailable,
    };
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

/// Advertises `max_inflight_per_session` as the v5 CONNACK's Receive Maximum (what a
/// client may have in flight to the broker). 3.1.1 has no such property.
pub(super) fn advertise(connack: &mut Packet, version: Version, limits: &mut LiveLimits) {
    if version != Version::V5 {
        return;
    }
    let receive_max = u16::try_from(limits.get().max_inflight_per_session).unwrap_or(u16::MAX);
    if let Packet::ConnAck(_, props) = connack {
        props.get_or_insert_with(Default::default).receive_max = Some(receive_max);
    }
}

/// What one session holds against its org's per-session limits.
pub(super) struct Quota {
    pub(super) limits: LiveLimits,
    /// Distinct (internal) filters the session holds on this connection.
    filters: HashSet<String>,
    /// QoS 1/2 PUBLISHes read from the client and not yet acknowledged to it (PUBACK,
    /// or PUBCOMP for QoS 2).
    inflight: usize,
}

impl Quota {
    pub(super) fn new(limits: LiveLimits) -> Quota {
        Quota {
            limits,
            filters: HashSet::new(),
            inflight: 0,
        }
    }

    /// Whether the session may hold `filter` (internal form) too; the refusal code for
    /// its SUBACK slot otherwise (v5 0x97, 3.1.1 0x80 after the downgrade). A filter
    /// the session already holds is replaced, not added.
    pub(super) fn subscribe(&mut self, filter: &str) -> Option<SubscribeReasonCode> {
        if self.filters.contains(filter) {
            return None;
        }
        let max = self.limits.get().max_subscriptions_per_session as usize;
        if self.filters.len() >= max {
            let org = self.limits.org();
            info!(max, "subscription refused: max_subscriptions_per_session");
            crate::metrics::limit_refused(org.as_str(), limits::MAX_SUBSCRIPTIONS);
            return Some(SubscribeReasonCode::QuotaExceeded);
        }
        self.filters.insert(filter.to_owned());
        None
    }

    /// The session no longer holds `filter` (internal form).
    pub(super) fn unsubscribed(&mut self, filter: &str) {
        self.filters.remove(filter);
    }

    /// A client PUBLISH that needs no acknowledgement of its own after all (a resent
    /// QoS 2 message the broker already had).
    pub(super) fn released_one(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// Counts the broker's acknowledgement of a client PUBLISH off the in-flight count.
    pub(super) fn acknowledged(&mut self, packet: &Packet) {
        if matches!(packet, Packet::PubAck(..) | Packet::PubComp(..)) {
            self.inflight = self.inflight.saturating_sub(1);
        }
    }
}

/// Whether `publish` is QoS 1 or 2. rumqttd keeps the QoS private; its length counts
/// the packet id only when there is one.
fn has_packet_id(publish: &Publish) -> bool {
    publish.len() > 2 + publish.topic.len() + publish.payload.len()
}

impl Bridge {
    /// Checks an inbound PUBLISH against `max_message_bytes` and
    /// `max_inflight_per_session`. Over either, a v5 client gets DISCONNECT 0x95
    /// *packet too large* or 0x93 *receive maximum exceeded* and the connection closes
    /// (3.1.1: closed); counted in `certmq_limit_refusals_total`.
    pub(super) async fn publish_within_limits<S: AsyncWrite + Unpin>(
        &mut self,
        publish: &Publish,
        stream: &mut S,
    ) -> Result<(), SessionError> {
        let l = *self.quota.limits.get();
        let size = publish.payload.len();
        let (limit, code, text) = if size > l.max_message_bytes as usize {
            (
                limits::MAX_MESSAGE_BYTES,
                DisconnectReasonCode::PacketTooLarge,
                format!(
                    "payload of {size} bytes is over the org's max_message_bytes ({})",
                    l.max_message_bytes
                ),
            )
        } else if has_packet_id(publish)
            && self.quota.inflight >= l.max_inflight_per_session as usize
        {
            (
                limits::MAX_INFLIGHT,
                DisconnectReasonCode::ReceiveMaximumExceeded,
                format!(
                    "more than the org's max_inflight_per_session ({}) unacknowledged QoS 1/2 publishes",
                    l.max_inflight_per_session
                ),
            )
        } else {
            if has_packet_id(publish) {
                self.quota.inflight += 1;
            }
            return Ok(());
        };
        let org = self.principal.org.as_str();
        info!(limit, cause = %text, "closing: over a limit");
        crate::metrics::limit_refused(org, limit);
        if let Some(p) = self.version.disconnect(code, &text) {
            let mut buf = std::mem::take(&mut self.wbuf);
            self.version.write(p, &mut buf)?;
            let _ = stream.write_all(&buf).await;
            let _ = stream.flush().await;
        }
        Err(SessionError::OverLimit { limit, text })
    }
}
