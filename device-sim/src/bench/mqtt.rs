//! A minimal MQTT 3.1.1 codec for the benchmarks: just the packets a load generator
//! sends (CONNECT, SUBSCRIBE, PUBLISH QoS 0/1, PUBACK, PINGREQ, DISCONNECT) and parses
//! (CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP).
//!
//! Why not rumqttc here: the benchmarks need to bind the client socket to a chosen
//! 127.0.0.x source address, read the TLS session state (resumed or not), hold tens of
//! thousands of idle connections with one buffer each and no task, and batch many
//! PUBLISH packets into one TLS record. rumqttc does none of these.

use std::io;

/// PINGREQ.
pub(crate) const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT.
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// A packet parsed from a read buffer (borrowing topic and payload from it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    SubAck {
        pkid: u16,
        codes: &'a [u8],
    },
    Publish {
        qos: u8,
        pkid: Option<u16>,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PubAck {
        pkid: u16,
    },
    PingResp,
    /// Any other packet type (the high nibble of its first byte).
    Other(u8),
}

fn push_len(buf: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn push_str(buf: &mut Vec<u8>, s: &[u8]) {
    // Every string we send is far below 64 KiB.
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// CONNECT, protocol level 4 (3.1.1), no will, no credentials; clean session unless
/// `clean_session` is false (a persistent session: the broker keeps its subscriptions
/// and queues QoS 1/2 messages while it is offline).
pub(crate) fn connect(client_id: &str, keep_alive_secs: u16, clean_session: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 + client_id.len());
    buf.push(0x10);
    push_len(&mut buf, 10 + 2 + client_id.len());
    push_str(&mut buf, b"MQTT");
    buf.push(4); // protocol level
    buf.push(if clean_session { 0x02 } else { 0x00 }); // connect flags
    buf.extend_from_slice(&keep_alive_secs.to_be_bytes());
    push_str(&mut buf, client_id.as_bytes());
    buf
}

/// SUBSCRIBE to one filter.
pub(crate) fn subscribe(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + filter.len());
    buf.push(0x82);
    push_len(&mut buf, 2 + 2 + filter.len() + 1);
    buf.extend_from_slice(&pkid.to_be_bytes());
    push_str(&mut buf, filter.as_bytes());
    buf.push(qos);
    buf
}

/// Appends a PUBLISH (QoS 0 without, QoS 1 with a packet id) to `buf`.
pub(crate) fn publish(buf: &mut Vec<u8>, topic: &str, qos: u8, pkid: u16, payload: &[u8]) {
    buf.push(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    push_len(buf, 2 + topic.len() + id_len + payload.len());
    push_str(buf, topic.as_bytes());
    if qos > 0 {
        buf.extend_from_slice(&pkid.to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

/// Appends a PUBACK to `buf`.
pub(crate) fn puback(buf: &mut Vec<u8>, pkid: u16) {
    buf.extend_from_slice(&[0x40, 0x02]);
    buf.extend_from_slice(&pkid.to_be_bytes());
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed MQTT packet: {what}"),
    )
}

fn u16_at(b: &[u8], at: usize) -> io::Result<u16> {
    match b.get(at..at + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(invalid("truncated")),
    }
}

/// Parses the first packet of `buf`: `Ok(None)` when more bytes are needed, else the
/// packet and how many bytes it took.
pub(crate) fn parse(buf: &[u8]) -> io::Result<Option<(Packet<'_>, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut header = 1;
    loop {
        let Some(&b) = buf.get(header) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Err(invalid("remaining length over 4 bytes"));
        }
    }
    let Some(body) = buf.get(header..header + len) else {
        return Ok(None);
    };
    let packet = match first >> 4 {
        2 => {
            if len < 2 {
                return Err(invalid("short CONNACK"));
            }
            Packet::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            }
        }
        3 => {
            let qos = (first >> 1) & 3;
            let topic_len = usize::from(u16_at(body, 0)?);
            let topic = body.get(2..2 + topic_len).ok_or_else(|| invalid("topic"))?;
            let mut at = 2 + topic_len;
            let pkid = if qos > 0 {
                let id = u16_at(body, at)?;
                at += 2;
                Some(id)
            } else {
                None
            };
            Packet::Publish {
                qos,
                pkid,
                topic,
                payload: body.get(at..).ok_or_else(|| invalid("payload"))?,
            }
        }
        4 => Packet::PubAck {
            pkid: u16_at(body, 0)?,
        },
        9 => Packet::SubAck {
            pkid: u16_at(body, 0)?,
            codes: &body[2..],
        },
        13 => Packet::PingResp,
        other => Packet::Other(other),
    };
    Ok(Some((packet, header + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_bytes() {
        let c = connect("d:acme:sensor:dev1", 60, true);
        assert_eq!(c[0], 0x10);
        assert_eq!(usize::from(c[1]), c.len() - 2);
        assert_eq!(&c[2..10], b"\x00\x04MQTT\x04\x02");
        assert_eq!(&c[10..12], &[0, 60]);
        assert_eq!(&c[14..], b"d:acme:sensor:dev1");
        let p = connect("d:acme:sensor:dev1", 60, false);
        assert_eq!(&p[2..10], b"\x00\x04MQTT\x04\x00", "clean session 0");
        assert_eq!(&p[10..], &c[10..], "the rest is the same");
    }

    #[test]
    fn publish_roundtrip_qos0_and_qos1_with_long_length() {
        let payload = vec![7u8; 300]; // remaining length needs two bytes
        for qos in [0u8, 1] {
            let mut buf = Vec::new();
            publish(&mut buf, "iot-2/evt/e/fmt/bin", qos, 513, &payload);
            buf.extend_from_slice(&PINGREQ); // trailing bytes are left alone
            let (p, used) = parse(&buf).expect("valid").expect("complete");
            assert_eq!(used, buf.len() - 2);
            assert_eq!(
                p,
                Packet::Publish {
                    qos,
                    pkid: (qos > 0).then_some(513),
                    topic: b"iot-2/evt/e/fmt/bin",
                    payload: &payload,
                }
            );
            // Every strict prefix is incomplete, never an error.
            for cut in 0..used {
                assert_eq!(parse(&buf[..cut]).expect("prefix"), None);
            }
        }
    }

    #[test]
    fn acks_and_pings() {
        let (p, n) = parse(&[0x20, 0x02, 0x00, 0x05]).expect("ok").expect("done");
        assert_eq!(
            (p, n),
            (
                Packet::ConnAck {
                    session_present: false,
                    code: 5
                },
                4
            )
        );
        let (p, _) = parse(&[0x90, 0x04, 0x00, 0x01, 0x01, 0x80])
            .expect("ok")
            .expect("done");
        assert_eq!(
            p,
            Packet::SubAck {
                pkid: 1,
                codes: &[0x01, 0x80]
            }
        );
        let mut b = Vec::new();
        puback(&mut b, 42);
        assert_eq!(
            parse(&b).expect("ok").expect("done").0,
            Packet::PubAck { pkid: 42 }
        );
        assert_eq!(
            parse(&[0xD0, 0x00]).expect("ok").expect("done").0,
            Packet::PingResp
        );
        assert_eq!(
            parse(&DISCONNECT).expect("ok").expect("done").0,
            Packet::Other(14)
        );
        let s = subscribe(1, "iot-2/#", 1);
        assert_eq!(s, b"\x82\x0c\x00\x01\x00\x07iot-2/#\x01");
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert!(parse(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(parse(&[0x20, 0x01, 0x00]).is_err());
        assert!(parse(&[0x32, 0x03, 0x00, 0x09, 0x61]).is_err());
    }
}
