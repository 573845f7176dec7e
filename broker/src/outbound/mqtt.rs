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
    let d = &dest.config;
    let config = tls::client_config(&dest.registry, d, &[])?;
    let name = tls::server_name(d)?;
    let (host, port) = d.host_port().map_err(|e| e.to_string())?;
    let peer = format!("{host}:{port}");
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| format!("{peer} did not accept a connection within {TIMEOUT:?}"))?
        .map_err(|e| tls::describe_io(&e, &peer))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = tokio::time::timeout(TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| format!("{peer} did not complete the TLS handshake within {TIMEOUT:?}"))?
        .map_err(|e| tls::describe_io(&e, &peer))?;

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
        .map_err(|e| tls::describe_io(&e, &peer))?;
    out.clear();
    let mut buf = BytesMut::with_capacity(4096);
    let ack = tokio::time::timeout(TIMEOUT, async {
        loop {
            match Version::V4.read(&mut buf, MAX_PACKET) {
                Ok(Packet::ConnAck(ack, _)) => return Ok(ack),
                Ok(other) => return Err(format!("the remote answered CONNECT with {other:?}")),
                Err(crate::engine::codec::CodecError::Incomplete) => {}
                Err(e) => return Err(format!("the remote sent a malformed packet: {e}")),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => {
                    return Err(format!(
                        "{peer} closed the connection before CONNACK (does it accept our \
                         client certificate?)"
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(tls::describe_io(&e, &peer)),
            }
        }
    })
    .await
    .map_err(|_| format!("{peer} sent no CONNACK within {TIMEOUT:?}"))??;
    let ConnAck { code, .. } = ack;
    if code != ConnectReturnCode::Success {
        return Err(refusal(&code));
    }
    dest.status.set(DestinationState::Connected);
    tracing::info!(org = %d.org, id = d.id, peer, "bridge connected");

    let session = dest.attach();
    let result = forward(dest, &session, &mut stream, buf, stop, &peer).await;
    session.detach();
    result
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
                    match Version::V4.read(&mut buf, MAX_PACKET) {
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
            }
        }
    }
}
