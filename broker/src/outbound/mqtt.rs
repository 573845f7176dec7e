//! A bridge's connection: MQTT 3.1.1 over mutual TLS to the remote broker, publishing
//! the destination's queue with up to [`WINDOW`] QoS 1 messages in flight. A message
//! leaves the queue when the remote's PUBACK for it arrives.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{tls, Dest, TIMEOUT};
use crate::engine::codec::Version;
use crate::engine::packet::{self, ConnAck, ConnectReturnCode, Packet};
use crate::state::{Acked, SessionHandle};
use registry::live::DestinationState;

/// QoS 1 messages in flight to the remote at once.
const WINDOW: usize = 100;
/// The keep-alive asked for; a PINGREQ goes out at half of it.
const KEEP_ALIVE: u16 = 30;
/// The largest packet read from the remote.
const MAX_PACKET: usize = 1024 * 1024;

/// A CONNACK refusal in words.
fn refusal(code: &ConnectReturnCode) -> String {
    let words = match code {
        ConnectReturnCode::RefusedProtocolVersion
        | ConnectReturnCode::UnsupportedProtocolVersion => "it does not speak MQTT 3.1.1",
        ConnectReturnCode::ClientIdentifierNotValid => "it refuses the client id",
        ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::ServerUnavailable => {
            "the server is unavailable"
        }
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
        _ => "refused",
    };
    format!("the remote refused the MQTT connection: {words} (CONNACK {code:?})")
}

/// One connection to the remote: connect, forward until it fails (`Err` says why) or
/// `stop` (`Ok`).
pub(super) async fn connection(dest: &Dest, stop: &CancellationToken) -> Result<(), String> {
    let (host, port) = dest.config.host_port().map_err(|e| e.to_string())?;
    let peer = format!("{host}:{port}");
    let (mut stream, buf) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = connect(dest, &host, port, &peer) => c?,
    };
    let d = &dest.config;
    dest.status.set(DestinationState::Connected);
    tracing::info!(org = %d.org, id = d.id, peer, "bridge connected");

    let Some(session) = dest.attach(stop) else {
        return Ok(());
    };
    let result = forward(dest, &session, &mut stream, buf, stop, &peer).await;
    session.detach();
    result
}

/// Connects: TCP, TLS with the destination's config, CONNECT/CONNACK, and the
/// `receive` subscriptions. The stream and what was read past the CONNACK/SUBACK.
async fn connect(
    dest: &Dest,
    host: &str,
    port: u16,
    peer: &str,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, BytesMut), String> {
    let d = &dest.config;
    let config = tls::client_config(&dest.registry, d, &[])?;
    let name = tls::server_name(d)?;
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("{peer} did not accept a connection within {TIMEOUT:?}"))?
        .map_err(|e| tls::describe_io(&e, peer))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = tokio::time::timeout(TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| format!("{peer} did not complete the TLS handshake within {TIMEOUT:?}"))?
        .map_err(|e| tls::describe_io(&e, peer))?;

    let mut out = BytesMut::new();
    let connect = packet::Packet::Connect(
        rumqttd::protocol::Connect {
            keep_alive: KEEP_ALIVE,
            client_id: d.remote_client_id(),
            clean_session: true,
        },
        None,
        None,
        None,
        None,
    );
    Version::V4
        .write(connect, &mut out)
        .map_err(|e| format!("CONNECT: {e}"))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| tls::describe_io(&e, peer))?;
    out.clear();
    let mut buf = BytesMut::with_capacity(4096);
    let closed = "before CONNACK (does it accept our client certificate?)";
    let ack = answer(
        &mut stream,
        &mut buf,
        peer,
        "CONNACK",
        closed,
        |p| match p {
            Packet::ConnAck(ack, _) => Some(Ok(ack)),
            other => Some(Err(format!("the remote answered CONNECT with {other:?}"))),
        },
    )
    .await?;
    let ConnAck { code, .. } = ack;
    if code != ConnectReturnCode::Success {
        return Err(refusal(&code));
    }
    if !d.receive.is_empty() {
        subscribe(dest, &mut stream, &mut buf, peer).await?;
    }
    Ok((stream, buf))
}

/// Reads packets (within [`TIMEOUT`]) until `pick` decides on one: `Some` is the
/// answer (or why it is not one), `None` skips the packet. `what` names the awaited
/// packet and `closed` says when the remote closed, for the messages.
async fn answer<S, T>(
    stream: &mut S,
    buf: &mut BytesMut,
    peer: &str,
    what: &str,
    closed: &str,
    mut pick: impl FnMut(Packet) -> Option<Result<T, String>>,
) -> Result<T, String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let read = async {
        loop {
            match Version::V4.read(buf, MAX_PACKET) {
                Ok(p) => {
                    if let Some(r) = pick(p) {
                        return r;
                    }
                    continue;
                }
                Err(crate::engine::codec::CodecError::Incomplete) => {}
                Err(e) => return Err(format!("the remote sent a malformed packet: {e}")),
            }
            match stream.read_buf(buf).await {
                Ok(0) => return Err(format!("{peer} closed the connection {closed}")),
                Ok(_) => {}
                Err(e) => return Err(tls::describe_io(&e, peer)),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .map_err(|_| format!("{peer} sent no {what} within {TIMEOUT:?}"))?
}

/// Subscribes at the remote to the bridge's `receive` filters and waits for the
/// SUBACK: a refused filter fails the connection, naming it.
async fn subscribe<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    dest: &Dest,
    stream: &mut S,
    buf: &mut BytesMut,
    peer: &str,
) -> Result<(), String> {
    use rumqttd::protocol::{Filter, QoS, RetainForwardRule, Subscribe, SubscribeReasonCode};
    let rules = &dest.config.receive;
    let filters = rules
        .iter()
        .map(|r| Filter {
            path: r.filter.clone(),
            qos: if r.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        })
        .collect();
    let mut out = BytesMut::new();
    Version::V4
        .write(
            Packet::Subscribe(Subscribe { pkid: 1, filters }, None),
            &mut out,
        )
        .map_err(|e| format!("SUBSCRIBE: {e}"))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| tls::describe_io(&e, peer))?;
    let codes = answer(
        stream,
        buf,
        peer,
        "SUBACK",
        "after SUBSCRIBE",
        |p| match p {
            Packet::SubAck(ack, _) => Some(Ok(ack.return_codes)),
            _ => None,
        },
    )
    .await?;
    for (rule, code) in rules.iter().zip(codes) {
        let ok = matches!(
            code,
            SubscribeReasonCode::QoS0
                | SubscribeReasonCode::QoS1
                | SubscribeReasonCode::QoS2
                | SubscribeReasonCode::Success(_)
        );
        if !ok {
            return Err(format!(
                "the remote refused the subscription to {:?} ({code:?})",
                rule.filter
            ));
        }
    }
    Ok(())
}

/// A PUBLISH the remote sent (a `receive` rule's filter matched): into the org as a
/// command, authorized as an application's publish. `Some(ticket)` when it must be on
/// disk before it is acknowledged.
fn receive(dest: &Dest, publish: &packet::Publish, qos: u8) -> Option<crate::state::Ticket> {
    let d = &dest.config;
    let topic = std::str::from_utf8(&publish.topic).ok()?;
    let mapped = d
        .receive
        .iter()
        .find_map(|r| registry::destinations::expand_received(&r.filter, &r.topic, topic));
    let Some(mapped) = mapped else {
        tracing::debug!(org = %d.org, id = d.id, topic, "remote message matches no receive rule");
        return None;
    };
    let internal = match dest.principal.publish_topic(&mapped) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(org = %d.org, id = d.id, topic, cause = %e, "remote message refused");
            crate::metrics::dropped(d.org.as_str(), "bridge_topic_refused", 1);
            return None;
        }
    };
    let limits = dest
        .registry
        .org_limits(&d.org)
        .map(|l| crate::state::StateLimits::from(&l))
        .unwrap_or_default();
    let p = packet::publish(internal.as_bytes(), &publish.payload, qos, false, 0, false);
    let org = dest.state.org(&d.org);
    match dest
        .state
        .publish(&org, &dest.client, &p, qos, None, &limits, Vec::new())
    {
        Ok(ticket) => {
            dest.status
                .received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(ticket)
        }
        Err(refused) => {
            crate::metrics::limit_refused(d.org.as_str(), refused.limit());
            None
        }
    }
}

/// Writes the PUBACKs owed for everything durable up to ticket `done`, in order.
fn acknowledge(
    owed: &mut std::collections::VecDeque<(crate::state::Ticket, u16)>,
    done: crate::state::Ticket,
    out: &mut BytesMut,
) -> Result<(), String> {
    while let Some(&(ticket, pkid)) = owed.front() {
        if ticket > done {
            break;
        }
        owed.pop_front();
        let ack = rumqttd::protocol::PubAck {
            pkid,
            reason: rumqttd::protocol::PubAckReason::Success,
        };
        Version::V4
            .write(Packet::PubAck(ack, None), out)
            .map_err(|e| format!("PUBACK: {e}"))?;
    }
    Ok(())
}

/// Forwards the queue over `stream` until it fails or `stop`.
async fn forward<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    dest: &Dest,
    session: &SessionHandle,
    stream: &mut S,
    mut buf: BytesMut,
    stop: &CancellationToken,
    peer: &str,
) -> Result<(), String> {
    let org = &dest.config.org;
    let mut out = BytesMut::new();
    let mut inflight = 0usize;
    let mut heard = Instant::now();
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE) / 2));
    ping.tick().await;
    // PUBACKs owed to the remote for what it sent, each once its ticket is durable.
    let mut owed: std::collections::VecDeque<(crate::state::Ticket, u16)> = Default::default();
    let mut committed = dest.state.committed();
    loop {
        if inflight < WINDOW {
            let mut sent0 = 0u64;
            for delivery in session.take(WINDOW - inflight) {
                let p = &delivery.publish;
                let Some((app, rule)) = dest.route(&p.topic) else {
                    // Not for any rule (a filter changed meanwhile): done with it.
                    if delivery.pkid != 0 {
                        session.acked(delivery.pkid, false);
                    }
                    continue;
                };
                let topic = registry::destinations::expand_topic(&rule.template, org, &app);
                let qos = if delivery.pkid == 0 { 0 } else { 1 };
                let publish = packet::publish(
                    topic.as_bytes(),
                    &p.payload,
                    qos,
                    false,
                    delivery.pkid,
                    delivery.dup,
                );
                Version::V4
                    .write(Packet::Publish(publish, None), &mut out)
                    .map_err(|e| format!("PUBLISH: {e}"))?;
                if qos == 0 {
                    sent0 += 1;
                } else {
                    inflight += 1;
                }
            }
            if !out.is_empty() {
                stream
                    .write_all(&out)
                    .await
                    .map_err(|e| tls::describe_io(&e, peer))?;
                out.clear();
                dest.forwarded(sent0);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = Version::V4.write(Packet::Disconnect(rumqttd::protocol::Disconnect {
                    reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
                }, None), &mut out);
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
                return Ok(());
            }
            _ = session.notify().notified(), if inflight < WINDOW => {}
            _ = committed.changed(), if !owed.is_empty() => {
                let done = *committed.borrow_and_update();
                acknowledge(&mut owed, done, &mut out)?;
                stream.write_all(&out).await.map_err(|e| tls::describe_io(&e, peer))?;
                out.clear();
            }
            _ = ping.tick() => {
                if heard.elapsed() > Duration::from_secs(u64::from(KEEP_ALIVE) * 2) {
                    return Err(format!("{peer} has not answered for {}s", KEEP_ALIVE * 2));
                }
                Version::V4
                    .write(Packet::PingReq(rumqttd::protocol::PingReq), &mut out)
                    .map_err(|e| format!("PINGREQ: {e}"))?;
                stream.write_all(&out).await.map_err(|e| tls::describe_io(&e, peer))?;
                out.clear();
            }
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => return Err(format!("{peer} closed the connection")),
                    Ok(_) => heard = Instant::now(),
                    Err(e) => return Err(tls::describe_io(&e, peer)),
                }
                let mut acked = 0u64;
                loop {
                    let meta = crate::engine::codec::publish_meta(&buf);
                    match Version::V4.read(&mut buf, MAX_PACKET) {
                        Ok(Packet::Publish(p, _)) => {
                            let (qos, pkid) = meta.unwrap_or((0, 0));
                            let ticket = receive(dest, &p, qos.min(1));
                            if qos > 0 {
                                // Acknowledged once on disk; a refused one at once (it
                                // would be refused again).
                                owed.push_back((ticket.unwrap_or(0), pkid));
                            }
                        }
                        Ok(Packet::PubAck(ack, _)) => {
                            if matches!(session.acked(ack.pkid, false), Acked::Done) {
                                inflight = inflight.saturating_sub(1);
                                acked += 1;
                            }
                        }
                        Ok(_) => {}
                        Err(crate::engine::codec::CodecError::Incomplete) => break,
                        Err(e) => return Err(format!("the remote sent a malformed packet: {e}")),
                    }
                }
                dest.forwarded(acked);
                if !owed.is_empty() {
                    let done = *committed.borrow_and_update();
                    acknowledge(&mut owed, done, &mut out)?;
                    if !out.is_empty() {
                        stream.write_all(&out).await.map_err(|e| tls::describe_io(&e, peer))?;
                        out.clear();
                    }
                }
            }
        }
    }
}
