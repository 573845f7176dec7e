//! The PROXY protocol, version 2 (HAProxy's `send-proxy-v2`): behind an L4 balancer
//! every connection starts with a binary header that names the client's address as
//! the balancer saw it. With `--proxy-protocol` the MQTT listeners read it before
//! anything else, and that address is the one the per-address limits, the org's
//! network policy, the status events (`ClientAddr`) and the logs see.
//!
//! The header is mandatory on such a listener: a connection that does not start with
//! one is closed, since otherwise any client reaching the port directly could claim any
//! address. Parsing is the `ppp` crate's; this module only reads exactly the header's
//! bytes off the socket (never more: what follows is the TLS ClientHello).

use std::fmt;
use std::net::SocketAddr;

use ppp::v2::{Addresses, Command, Header, PROTOCOL_PREFIX};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest header accepted: the addresses plus room for TLVs (HAProxy sends a few
/// dozen bytes; the format allows 64 KiB, which no balancer needs).
const MAX_HEADER: usize = 1024;

/// The fixed part: the signature, version and command, family and protocol, length.
const MINIMUM_LENGTH: usize = 16;

/// Why a connection's PROXY header was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// The first bytes are not the PROXY v2 signature (e.g. a client that bypassed
    /// the balancer, or a balancer sending version 1).
    NotProxy,
    /// The header announces more than [`MAX_HEADER`] bytes.
    TooLong(usize),
    /// The signature is there but the header does not parse.
    Malformed(String),
    /// The connection ended inside the header.
    Truncated,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NotProxy => f.write_str(
                "the connection does not start with a PROXY protocol v2 header \
                 (--proxy-protocol is on: only the balancer may connect)",
            ),
            ProxyError::TooLong(n) => {
                write!(
                    f,
                    "PROXY header of {n} bytes (at most {MAX_HEADER} accepted)"
                )
            }
            ProxyError::Malformed(e) => write!(f, "malformed PROXY v2 header: {e}"),
            ProxyError::Truncated => f.write_str("the connection ended inside the PROXY header"),
        }
    }
}

impl ProxyError {
    /// A short label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            ProxyError::NotProxy => "proxy_header_missing",
            ProxyError::TooLong(_) | ProxyError::Malformed(_) => "proxy_header_malformed",
            ProxyError::Truncated => "proxy_header_truncated",
        }
    }
}

/// Reads one PROXY v2 header from `io` and returns the client's address: the source
/// address of a `PROXY` command over TCP/UDP on IPv4 or IPv6, else `None` (a `LOCAL`
/// command, as balancers send for their own health checks, or an address family that
/// has no IP: the connection's own peer address stands).
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut fixed = [0u8; MINIMUM_LENGTH];
    read_exact(io, &mut fixed[..PROTOCOL_PREFIX.len()]).await?;
    if &fixed[..PROTOCOL_PREFIX.len()] != PROTOCOL_PREFIX {
        return Err(ProxyError::NotProxy);
    }
    read_exact(io, &mut fixed[PROTOCOL_PREFIX.len()..]).await?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_HEADER {
        return Err(ProxyError::TooLong(MINIMUM_LENGTH + len));
    }
    let mut header = Vec::with_capacity(MINIMUM_LENGTH + len);
    header.extend_from_slice(&fixed);
    header.resize(MINIMUM_LENGTH + len, 0);
    read_exact(io, &mut header[MINIMUM_LENGTH..]).await?;
    let parsed =
        Header::try_from(header.as_slice()).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if parsed.command == Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

async fn read_exact<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> Result<(), ProxyError> {
    io.read_exact(buf).await.map(drop).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProxyError::Truncated
        } else {
            ProxyError::Malformed(e.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, IPv4, IPv6, Protocol, Version};

    fn header(command: Command, addresses: impl Into<Addresses>) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses.into())
            .write_tlv(ppp::v2::Type::NoOp, &[0; 5])
            .and_then(|b| b.build())
            .unwrap()
    }

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cursor).await;
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).await.unwrap();
        (r, rest)
    }

    #[tokio::test]
    async fn reads_the_client_address_and_nothing_after_the_header() {
        let mut bytes = header(
            Command::Proxy,
            IPv4::new([203, 0, 113, 9], [10, 0, 0, 1], 40123, 8883),
        );
        bytes.extend_from_slice(b"\x16\x03\x01 hello");
        let (r, rest) = read(&bytes).await;
        assert_eq!(r, Ok(Some("203.0.113.9:40123".parse().unwrap())));
        assert_eq!(rest, b"\x16\x03\x01 hello", "the TLS bytes stay unread");

        let v6 = header(
            Command::Proxy,
            IPv6::new(
                "2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap(),
                "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
                1,
                2,
            ),
        );
        assert_eq!(
            read(&v6).await.0,
            Ok(Some("[2001:db8::7]:1".parse().unwrap()))
        );
    }

    #[tokio::test]
    async fn local_command_keeps_the_peer_address() {
        let bytes = header(Command::Local, Addresses::Unspecified);
        assert_eq!(read(&bytes).await.0, Ok(None));
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_header() {
        // A TLS ClientHello straight from a client that bypassed the balancer.
        let (r, _) = read(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00").await;
        assert_eq!(r, Err(ProxyError::NotProxy));
        // Version 1 (text) is not accepted.
        let (r, _) = read(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").await;
        assert_eq!(r, Err(ProxyError::NotProxy));
        // Cut short.
        let full = header(Command::Proxy, IPv4::new([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
        assert_eq!(read(&full[..20]).await.0, Err(ProxyError::Truncated));
        // A length no balancer sends.
        let mut long = PROTOCOL_PREFIX.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(read(&long).await.0, Err(ProxyError::TooLong(16 + 65535)));
        // A bad version nibble.
        let mut bad = full.clone();
        bad[12] = 0x31;
        assert!(matches!(read(&bad).await.0, Err(ProxyError::Malformed(_))));
    }
}
