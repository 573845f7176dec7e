//! Connections for the benchmarks: source addresses in 127.0.0.0/8, TCP with
//! `TCP_NODELAY`, TLS with explicit SNI, the MQTT CONNECT → CONNACK exchange, and a
//! packet reader over any byte stream.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::mqtt::{self, Packet};
use crate::certs::{parse_certs, ClientCert};
use crate::verifier::{PinningVerifier, TrustAnyServer};

/// A TLS client stream.
pub(crate) type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Which 127.0.0.x source address each connection binds to.
///
/// One source address can hold about 28,000 connections to one broker port (the
/// ephemeral port range, 32768–60999 by default). Beyond that, connections are spread
/// over 127.0.0.1, 127.0.0.2, … (all of 127.0.0.0/8 is loopback on Linux): connection
/// `i` binds to `127.0.0.(1 + i / per_addr)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddrs {
    /// 0: do not bind, let the kernel choose.
    count: u8,
    per_addr: usize,
}

impl SourceAddrs {
    /// Connections per source address when spreading (below the default ephemeral range).
    pub const PER_ADDR: usize = 20_000;

    /// Let the kernel choose (no bind).
    pub fn kernel() -> Self {
        Self {
            count: 0,
            per_addr: Self::PER_ADDR,
        }
    }

    /// As many addresses as `connections` need at [`Self::PER_ADDR`] each; no bind at
    /// all when one address is enough.
    pub fn for_connections(connections: usize) -> Result<Self> {
        if connections <= Self::PER_ADDR {
            return Ok(Self::kernel());
        }
        Self::spread(connections.div_ceil(Self::PER_ADDR), Self::PER_ADDR)
    }

    /// `count` addresses 127.0.0.1 … 127.0.0.`count`, `per_addr` connections each.
    pub fn spread(count: usize, per_addr: usize) -> Result<Self> {
        if !(1..=254).contains(&count) {
            bail!("source addresses: {count} is not in 1..=254 (127.0.0.1 … 127.0.0.254)");
        }
        if !(1..=28_000).contains(&per_addr) {
            bail!("connections per source address: {per_addr} is not in 1..=28000");
        }
        Ok(Self {
            count: count as u8,
            per_addr,
        })
    }

    /// Number of addresses used (0: the kernel chooses).
    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// The source address of connection `index`, or `None` when the kernel chooses.
    /// Past `count * per_addr` connections the addresses wrap around.
    pub fn for_index(&self, index: usize) -> Option<Ipv4Addr> {
        if self.count == 0 {
            return None;
        }
        let slot = (index / self.per_addr) % usize::from(self.count);
        Some(Ipv4Addr::new(127, 0, 0, 1 + slot as u8))
    }
}

/// How connections reach the broker.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    pub(crate) addr: SocketAddr,
    pub(crate) sni: ServerName<'static>,
    pub(crate) source: SourceAddrs,
}

impl Dialer {
    /// TCP connection number `index` (its source address per [`SourceAddrs`]), with
    /// `TCP_NODELAY` set.
    pub(crate) async fn tcp(&self, index: usize) -> io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = self.source.for_index(index) {
            socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
        }
        socket.set_nodelay(true)?;
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// TCP + TLS handshake with `config` (which carries the client certificate).
    pub(crate) async fn tls(&self, index: usize, config: Arc<ClientConfig>) -> io::Result<Tls> {
        let tcp = self.tcp(index).await?;
        TlsConnector::from(config)
            .connect(self.sni.clone(), tcp)
            .await
    }
}

/// The rustls client configuration of one simulated client: ring, TLS 1.2/1.3, client
/// certificate `cert`; the broker is verified against `server_ca_pem` only when
/// `verify_server` (see [`TrustAnyServer`]); TLS session resumption (an in-memory
/// ticket store of this config) only when `resumption`.
pub(crate) fn client_config(
    cert: &ClientCert,
    server_ca_pem: &str,
    verify_server: bool,
    resumption: bool,
) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous();
    let builder = if verify_server {
        let trusted = parse_certs(server_ca_pem).context("server CA PEM")?;
        builder.with_custom_certificate_verifier(Arc::new(PinningVerifier::new(
            trusted,
            provider.clone(),
        )?))
    } else {
        builder.with_custom_certificate_verifier(Arc::new(TrustAnyServer::new(&provider)))
    };
    let chain = parse_certs(&cert.chain_pem).context("client certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| anyhow!("client private key PEM: {e}"))?;
    let mut config = builder
        .with_client_auth_cert(chain, key)
        .context("client certificate/key")?;
    config.resumption = if resumption {
        Resumption::in_memory_sessions(8)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Reads MQTT packets from a byte stream through one growable buffer.
pub(crate) struct PacketReader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub(crate) fn new(io: R, capacity: usize) -> Self {
        Self {
            io,
            buf: vec![0; capacity.max(64)],
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// The stream (bytes still buffered are dropped).
    pub(crate) fn into_inner(self) -> R {
        self.io
    }

    /// The next complete packet in the buffer, if any.
    pub(crate) fn next_packet(&mut self) -> io::Result<Option<Packet<'_>>> {
        match mqtt::parse(&self.buf[self.start..self.end])? {
            Some((packet, used)) => {
                self.start += used;
                Ok(Some(packet))
            }
            None => Ok(None),
        }
    }

    /// Reads more bytes; `UnexpectedEof` when the peer closed.
    pub(crate) async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            // Move the partial packet to the front; grow when it fills the buffer.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }
}

/// Sends CONNECT (3.1.1; clean session unless `clean_session` is false) as `client_id`
/// and waits for an accepting CONNACK; returns its session-present flag.
pub(crate) async fn mqtt_connect<S>(
    reader: &mut PacketReader<S>,
    client_id: &str,
    keep_alive_secs: u16,
    clean_session: bool,
) -> Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = reader.get_mut();
    io.write_all(&mqtt::connect(client_id, keep_alive_secs, clean_session))
        .await?;
    io.flush().await?;
    loop {
        while let Some(packet) = reader.next_packet()? {
            if let Packet::ConnAck {
                code,
                session_present,
            } = packet
            {
                if code == 0 {
                    return Ok(session_present);
                }
                bail!("CONNACK refused with return code {code}");
            }
        }
        reader
            .fill()
            .await
            .context("connection closed before CONNACK")?;
    }
}

/// Sends SUBSCRIBE and waits for a SUBACK granting it.
pub(crate) async fn mqtt_subscribe<S>(
    reader: &mut PacketReader<S>,
    filter: &str,
    qos: u8,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = reader.get_mut();
    io.write_all(&mqtt::subscribe(1, filter, qos)).await?;
    io.flush().await?;
    loop {
        while let Some(packet) = reader.next_packet()? {
            if let Packet::SubAck { codes, .. } = packet {
                if codes.iter().any(|c| *c >= 0x80) {
                    bail!("subscription to {filter} refused");
                }
                return Ok(());
            }
        }
        reader
            .fill()
            .await
            .context("connection closed before SUBACK")?;
    }
}

/// A connection that got its CONNACK, with how long it took.
pub(crate) struct Opened {
    pub(crate) reader: PacketReader<Tls>,
    /// TCP connect + TLS handshake.
    pub(crate) handshake: Duration,
    /// CONNECT written → CONNACK read.
    pub(crate) connack: Duration,
    /// Whether the TLS session was resumed.
    pub(crate) resumed: bool,
    /// The CONNACK's session-present flag (an earlier persistent session was found).
    pub(crate) session_present: bool,
}

/// Dials connection `index`, does the TLS handshake with `config` and the MQTT CONNECT
/// (clean session unless `clean_session` is false), all within `timeout`.
pub(crate) async fn open(
    dialer: &Dialer,
    index: usize,
    config: Arc<ClientConfig>,
    client_id: &str,
    keep_alive_secs: u16,
    clean_session: bool,
    timeout: Duration,
) -> Result<Opened> {
    let work = async {
        let started = Instant::now();
        let tls = dialer.tls(index, config).await.context("TLS handshake")?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        let handshake = started.elapsed();
        let mut reader = PacketReader::new(tls, 256);
        let sent = Instant::now();
        let session_present =
            mqtt_connect(&mut reader, client_id, keep_alive_secs, clean_session).await?;
        Ok(Opened {
            reader,
            handshake,
            connack: sent.elapsed(),
            resumed,
            session_present,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow!("no CONNACK within {timeout:?}"))?
}

/// Sends DISCONNECT and a TLS close_notify, without waiting for the broker.
pub(crate) async fn close(mut tls: Tls) {
    let _ = tls.write_all(&mqtt::DISCONNECT).await;
    let _ = tls.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_chooses_up_to_one_address_worth() {
        let s = SourceAddrs::for_connections(SourceAddrs::PER_ADDR).expect("ok");
        assert_eq!(s, SourceAddrs::kernel());
        assert_eq!(s.count(), 0);
        assert_eq!(s.for_index(0), None);
        assert_eq!(s.for_index(1_000_000), None);
    }

    #[test]
    fn spreads_over_127_0_0_x() {
        let s = SourceAddrs::for_connections(50_000).expect("ok");
        assert_eq!(s.count(), 3);
        assert_eq!(s.for_index(0), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(s.for_index(19_999), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(s.for_index(20_000), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(s.for_index(49_999), Some(Ipv4Addr::new(127, 0, 0, 3)));
        // Wraps around rather than leaving 127.0.0.0/8's configured range.
        assert_eq!(s.for_index(60_000), Some(Ipv4Addr::new(127, 0, 0, 1)));
        let per_addr = (0..50_000)
            .filter(|i| s.for_index(*i) == Some(Ipv4Addr::new(127, 0, 0, 2)))
            .count();
        assert_eq!(per_addr, SourceAddrs::PER_ADDR);
    }

    #[test]
    fn spread_limits() {
        assert!(SourceAddrs::spread(0, 100).is_err());
        assert!(SourceAddrs::spread(255, 100).is_err());
        assert!(SourceAddrs::spread(2, 0).is_err());
        assert!(SourceAddrs::spread(2, 30_000).is_err());
        let s = SourceAddrs::spread(254, 1).expect("ok");
        assert_eq!(s.for_index(253), Some(Ipv4Addr::new(127, 0, 0, 254)));
        assert!(SourceAddrs::for_connections(254 * SourceAddrs::PER_ADDR + 1).is_err());
    }

    #[tokio::test]
    async fn reader_reassembles_split_packets() {
        let mut wire = Vec::new();
        mqtt::publish(&mut wire, "t", 1, 7, &[1u8; 200]);
        mqtt::puback(&mut wire, 9);
        let (client, mut server) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            for chunk in wire.chunks(5) {
                server.write_all(chunk).await.expect("write");
            }
        });
        let mut r = PacketReader::new(client, 8);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            while let Some(p) = r.next_packet().expect("valid") {
                seen.push(match p {
                    Packet::Publish { pkid, payload, .. } => (pkid, payload.len()),
                    Packet::PubAck { pkid } => (Some(pkid), 0),
                    other => panic!("unexpected {other:?}"),
                });
            }
            if seen.len() < 2 {
                r.fill().await.expect("fill");
            }
        }
        assert_eq!(seen, vec![(Some(7), 200), (Some(9), 0)]);
        writer.await.expect("writer");
        assert!(r.fill().await.is_err(), "EOF after the writer is gone");
    }
}
