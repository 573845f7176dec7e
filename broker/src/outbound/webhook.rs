//! A webhook's connection: HTTPS POSTs of the destination's queue, one message per
//! request, in order, over one kept-alive connection. A message leaves the queue when
//! the endpoint answers 2xx; any other answer, a failure or no answer within the
//! timeout ends the connection (`Err`), and the message is sent again after the
//! backoff.

use std::collections::VecDeque;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use registry::live::DestinationState;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{tls, Dest, TIMEOUT};
use crate::state::{Delivery, SessionHandle};

/// Messages taken from the queue at once (then POSTed one by one).
const BATCH: usize = 64;
/// The most of an answer's body read (and thrown away).
const MAX_ANSWER: usize = 64 * 1024;

/// The JSON body of one POST.
#[derive(Serialize)]
struct Body<'a> {
    topic: &'a str,
    payload: String,
    payload_encoding: &'static str,
    qos: u8,
    retain: bool,
    client_id: &'a str,
    received_at: String,
}

fn body(app_topic: &str, d: &Delivery) -> Vec<u8> {
    let (payload, payload_encoding) = match std::str::from_utf8(&d.publish.payload) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&d.publish.payload),
            "base64",
        ),
    };
    let received_at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(d.at).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let b = Body {
        topic: app_topic,
        payload,
        payload_encoding,
        qos: if d.pkid == 0 { 0 } else { 1 },
        retain: d.publish.retain,
        client_id: &d.from,
        received_at,
    };
    serde_json::to_vec(&b).unwrap_or_default()
}

/// Opens a connection to the endpoint.
async fn open(dest: &Dest, peer: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let d = &dest.config;
    let config = tls::client_config(&dest.registry, d, &[b"http/1.1"])?;
    let name = tls::server_name(d)?;
    let (host, port) = d.host_port().map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| format!("{peer} did not accept a connection within {TIMEOUT:?}"))?
        .map_err(|e| tls::describe_io(&e, peer))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| format!("{peer} did not complete the TLS handshake within {TIMEOUT:?}"))?
        .map_err(|e| tls::describe_io(&e, peer))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("{peer}: HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// An HTTP failure in words (a TLS failure inside it told as such).
fn describe_http(e: &hyper::Error, peer: &str) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return tls::describe_io(io, peer);
        }
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return tls::describe_tls(t);
        }
        source = s.source();
    }
    format!("{peer}: HTTP: {e}")
}

/// POSTs the queue until a delivery fails (`Err` says why) or `stop` (`Ok`).
pub(super) async fn connection(dest: &Dest, stop: &CancellationToken) -> Result<(), String> {
    let (host, port) = dest.config.host_port().map_err(|e| e.to_string())?;
    let peer = format!("{host}:{port}");
    let Some(session) = dest.attach(stop) else {
        return Ok(());
    };
    let result = deliver(dest, &session, stop, &peer).await;
    session.detach();
    result
}

async fn deliver(
    dest: &Dest,
    session: &SessionHandle,
    stop: &CancellationToken,
    peer: &str,
) -> Result<(), String> {
    let d = &dest.config;
    let target = d.request_target();
    // The Host header: the URL's host (IPv6 in brackets), with the port unless 443.
    let (host, port) = d.host_port().map_err(|e| e.to_string())?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let authority = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut pending: VecDeque<Delivery> = VecDeque::new();
    loop {
        if pending.is_empty() {
            pending.extend(session.take(BATCH));
        }
        let Some(next) = pending.front() else {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = session.notify().notified() => continue,
            }
        };
        if stop.is_cancelled() {
            return Ok(());
        }
        let Some((app, _)) = dest.route(&next.publish.topic) else {
            if next.pkid != 0 {
                session.acked(next.pkid, false);
            }
            pending.pop_front();
            continue;
        };
        let payload = Bytes::from(body(&app, next));
        let request = || {
            Request::post(target.as_str())
                .header(hyper::header::HOST, authority.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("certmq/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(payload.clone()))
                .map_err(|e| format!("building the request: {e}"))
        };
        // A kept-alive connection the endpoint closed meanwhile fails before the request
        // is sent: then once more on a new one.
        let reused = sender.as_ref().is_some_and(|s| !s.is_closed());
        let mut answer = None;
        for fresh in [!reused, true] {
            let s = match sender.as_mut() {
                Some(s) if !fresh => s,
                _ => sender.insert(open(dest, peer).await?),
            };
            let a = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                a = tokio::time::timeout(TIMEOUT, s.send_request(request()?)) => a,
            };
            match a {
                Err(_) => return Err(format!("{peer} did not answer within {TIMEOUT:?}")),
                Ok(Ok(a)) => {
                    answer = Some(a);
                    break;
                }
                Ok(Err(e))
                    if fresh
                        || !(e.is_canceled() || e.is_closed() || e.is_incomplete_message()) =>
                {
                    return Err(describe_http(&e, peer));
                }
                Ok(Err(_)) => sender = None,
            }
        }
        let Some(answer) = answer else {
            return Err(format!("{peer} closed every connection before answering"));
        };
        let code = answer.status();
        dest.status.http(code.as_u16());
        // Read the answer so the connection can carry the next request.
        let _ = tokio::time::timeout(
            TIMEOUT,
            Limited::new(answer.into_body(), MAX_ANSWER).collect(),
        )
        .await;
        if !code.is_success() {
            return Err(format!(
                "the endpoint answered HTTP {}{}",
                code.as_u16(),
                code.canonical_reason()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(done) = pending.pop_front() {
            if done.pkid != 0 {
                session.acked(done.pkid, false);
            }
        }
        dest.status.set(DestinationState::Connected);
        dest.forwarded(1);
    }
}
