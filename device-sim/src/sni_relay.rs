//! Decoupling the TLS server name (SNI) from the TCP address rumqttc dials.
//!
//! rumqttc 0.25 uses `MqttOptions`' broker host both as the TCP address it resolves and
//! dials *and* as the rustls `ServerName` (hence the SNI), and it offers no hook to
//! supply a pre-connected stream. We therefore always give rumqttc the SNI name as its
//! host, and then:
//!
//! * **direct** (the normal case, zero overhead): when the SNI name resolves to the
//!   target address (e.g. `acme.messaging.localhost` → loopback through nss-myhostname or
//!   an /etc/hosts line, with the target on loopback), rumqttc dials the name itself;
//! * **relay** (fallback, e.g. custom domains that resolve nowhere): rumqttc is told to go
//!   through an HTTP `CONNECT` proxy (its `proxy` feature). The proxy is a tiny in-process
//!   relay listening on `127.0.0.1:<ephemeral>` that ignores the requested host and
//!   connects to the real target address. TLS still runs end-to-end inside rumqttc, so
//!   the SNI, certificate verification and TLS alerts are exactly those of a direct
//!   connection; only the bytes take one extra loopback hop.
//!
//! Relays run on one background thread with its own Tokio runtime (so they outlive any
//! test runtime) and stay up for the life of the process; there is one per distinct
//! target address.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a client reaches the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// rumqttc dials `host` itself (it is also the TLS server name).
    Direct { host: String },
    /// rumqttc uses `host` as TLS server name and reaches the broker through the local
    /// relay listening on `127.0.0.1:relay_port`.
    Relay { host: String, relay_port: u16 },
}

impl Route {
    /// The host rumqttc is configured with (TLS server name).
    pub(crate) fn host(&self) -> &str {
        match self {
            Route::Direct { host } | Route::Relay { host, .. } => host,
        }
    }

    /// The rumqttc proxy setting for this route, if any.
    pub(crate) fn proxy(&self) -> Option<rumqttc::Proxy> {
        match self {
            Route::Direct { .. } => None,
            Route::Relay { relay_port, .. } => Some(rumqttc::Proxy {
                ty: rumqttc::ProxyType::Http,
                auth: rumqttc::ProxyAuth::None,
                addr: Ipv4Addr::LOCALHOST.to_string(),
                port: *relay_port,
            }),
        }
    }
}

/// Chooses the route for `(dial_host, port)` with TLS server name `name`.
///
/// Direct when `name == dial_host`, or when every address `name` resolves to is one of
/// the addresses of `dial_host` (any loopback address counting as equal to a loopback
/// target); relay otherwise. `force_relay` always picks the relay.
pub(crate) fn route(dial_host: &str, port: u16, name: &str, force_relay: bool) -> Result<Route> {
    if !force_relay && name == dial_host {
        return Ok(Route::Direct {
            host: name.to_owned(),
        });
    }
    let dial = resolve(dial_host, port);
    if dial.is_empty() {
        return Err(anyhow!("cannot resolve broker address {dial_host}:{port}"));
    }
    if !force_relay {
        let via_name = resolve(name, port);
        let dial_is_loopback = dial.iter().any(|a| a.ip().is_loopback());
        let same = !via_name.is_empty()
            && via_name
                .iter()
                .all(|a| dial.contains(a) || (dial_is_loopback && a.ip().is_loopback()));
        if same {
            return Ok(Route::Direct {
                host: name.to_owned(),
            });
        }
    }
    Ok(Route::Relay {
        host: name.to_owned(),
        relay_port: relay_port_for(dial)?,
    })
}

/// Resolves `host:port`, caching the answer (also failures, as an empty list) for the
/// life of the process so a name that resolves nowhere costs one lookup only.
fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    type Cache = Mutex<HashMap<(String, u16), Vec<SocketAddr>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (host.to_owned(), port);
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return hit;
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    if let Ok(mut c) = cache.lock() {
        c.insert(key, addrs.clone());
    }
    addrs
}

/// Returns the port of the relay to `dial`, starting it on first use.
fn relay_port_for(dial: Vec<SocketAddr>) -> Result<u16> {
    static RELAYS: OnceLock<Mutex<HashMap<Vec<SocketAddr>, u16>>> = OnceLock::new();
    let relays = RELAYS.get_or_init(Default::default);
    let mut relays = relays
        .lock()
        .map_err(|_| anyhow!("relay registry poisoned"))?;
    if let Some(port) = relays.get(&dial) {
        return Ok(*port);
    }
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind relay")?;
    listener
        .set_nonblocking(true)
        .context("relay nonblocking")?;
    let port = listener.local_addr().context("relay address")?.port();
    let targets = dial.clone();
    std::thread::Builder::new()
        .name(format!("certmq-sim-relay-{port}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("relay runtime: {e}");
                    return;
                }
            };
            runtime.block_on(serve(listener, targets));
        })
        .context("spawn relay thread")?;
    relays.insert(dial, port);
    Ok(port)
}

/// Accept loop of one relay.
async fn serve(listener: std::net::TcpListener, targets: Vec<SocketAddr>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("relay listener: {e}");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let targets = targets.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay_one(stream, &targets).await {
                        tracing::debug!("relay connection ended: {e:#}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("relay accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Largest HTTP `CONNECT` request head the relay accepts.
const MAX_HEAD: usize = 8 * 1024;

/// Serves one proxied connection: reads the `CONNECT` head, dials the target, answers
/// `200`, then copies bytes both ways until either side closes.
async fn relay_one(mut client: TcpStream, targets: &[SocketAddr]) -> Result<()> {
    client.set_nodelay(true)?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let body_start = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Err(anyhow!("client closed before CONNECT"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(pos) = find_head_end(&head) {
            break pos;
        }
        if head.len() > MAX_HEAD {
            return Err(anyhow!("CONNECT head too long"));
        }
    };
    if !head.starts_with(b"CONNECT ") {
        client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await?;
        return Err(anyhow!("not a CONNECT request"));
    }
    let mut upstream = match TcpStream::connect(targets).await {
        Ok(s) => s,
        Err(e) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                .await?;
            return Err(e.into());
        }
    };
    upstream.set_nodelay(true)?;
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    if body_start < head.len() {
        upstream.write_all(&head[body_start..]).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Index just past the `\r\n\r\n` that ends an HTTP head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found() {
        assert_eq!(find_head_end(b"CONNECT a:1 HTTP/1.1\r\n\r\n"), Some(24));
        assert_eq!(find_head_end(b"CONNECT a:1 HTTP/1.1\r\n\r\nxyz"), Some(24));
        assert_eq!(find_head_end(b"CONNECT a:1 HTTP/1.1\r\n"), None);
    }

    #[test]
    fn same_name_is_direct() {
        let r = route("127.0.0.1", 8883, "127.0.0.1", false).expect("route");
        assert_eq!(
            r,
            Route::Direct {
                host: "127.0.0.1".into()
            }
        );
        assert!(r.proxy().is_none());
    }

    #[test]
    fn resolvable_loopback_name_is_direct() {
        let name = "acme.messaging.localhost";
        let resolved = resolve(name, 8883);
        let r = route("127.0.0.1", 8883, name, false).expect("route");
        if !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()) {
            // nss-myhostname (or /etc/hosts) present: no relay needed.
            assert_eq!(r, Route::Direct { host: name.into() });
        } else {
            assert!(matches!(r, Route::Relay { .. }), "{r:?}");
        }
    }

    #[test]
    fn forced_relay_uses_proxy() {
        let r = route("127.0.0.1", 8883, "acme.messaging.localhost", true).expect("route");
        assert_eq!(r.host(), "acme.messaging.localhost");
        let proxy = r.proxy().expect("proxy");
        assert_eq!(proxy.addr, "127.0.0.1");
        let again = route("127.0.0.1", 8883, "other.messaging.localhost", true).expect("route");
        assert_eq!(again.proxy().map(|p| p.port), Some(proxy.port));
    }
}
