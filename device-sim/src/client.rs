//! MQTT-over-TLS client setup for simulated devices, gateways and applications.
//!
//! # How the SNI name is sent while dialing another address
//!
//! The broker picks the org from the TLS SNI name (`<org>.messaging.localhost`), while
//! tests usually know the broker only as `127.0.0.1:<port>`. rumqttc 0.25 uses the
//! `MqttOptions` host both as the address it resolves and dials *and* as the rustls
//! `ServerName` (an IP address there would mean no SNI at all); it has no hook to set the
//! server name separately or to hand it a pre-connected stream, and rustls has no SNI
//! override either. So [`mqtt_options`] always gives rumqttc the **SNI name as host**,
//! and makes sure the TCP connection still ends up at [`BrokerTarget::host`]:
//!
//! * if the SNI name resolves to the target address (the normal case here:
//!   nss-myhostname resolves every `*.localhost` name to loopback, elsewhere an
//!   /etc/hosts line does it), rumqttc simply dials the name — no overhead;
//! * otherwise (e.g. a custom domain that resolves nowhere, or a target that is not the
//!   address the name resolves to), rumqttc is pointed at a tiny in-process HTTP
//!   `CONNECT` relay on loopback (rumqttc's `proxy` feature) that connects to the target
//!   address whatever host is asked for. TLS still runs end to end inside rumqttc, so the
//!   SNI, certificate checks and TLS alerts are identical; only the bytes take an extra
//!   loopback hop.
//!
//! This keeps rumqttc's own TLS path (so its errors are the real rustls errors) instead
//! of, say, terminating TLS in a local plaintext relay. An empty [`BrokerTarget::sni`]
//! means "dial `host` and use it as server name" — with an IP address as host, no SNI is
//! sent at all, which the broker must refuse with `unrecognized_name`.
//!
//! The server certificate is checked against [`BrokerTarget::server_ca_pem`] with WebPKI
//! (including the host name), and a certificate listed there verbatim is also accepted
//! when it is a self-signed leaf (see `PinningVerifier`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, NetworkOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;

use crate::certs::{parse_certs, ClientCert};
use crate::sni_relay::{self, Route};
use crate::verifier::PinningVerifier;

/// MQTT keep-alive used by simulated clients.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Seconds rumqttc allows for TCP connect + TLS handshake + CONNACK.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Largest MQTT packet a simulated client sends or accepts.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;

/// Where and how to reach the broker for one org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerTarget {
    /// TCP address to dial: an IP address (e.g. `127.0.0.1`) or a host name.
    pub host: String,
    /// MQTT-over-TLS port (8883 by default on the broker).
    pub port: u16,
    /// TLS server name to send, which selects the org, e.g. `acme.messaging.localhost`.
    /// Empty: use `host` as server name (no SNI when `host` is an IP address).
    pub sni: String,
    /// PEM certificate(s) the client trusts for the server certificate: a CA, or the
    /// server's own (possibly self-signed) leaf.
    pub server_ca_pem: String,
}

impl BrokerTarget {
    /// Target for `org` on the base `domain` (SNI `<org>.<domain>`).
    pub fn for_org(host: &str, port: u16, org: &str, domain: &str, server_ca_pem: &str) -> Self {
        Self {
            host: host.to_owned(),
            port,
            sni: format!("{org}.{domain}"),
            server_ca_pem: server_ca_pem.to_owned(),
        }
    }

    /// The name rumqttc is configured with: the SNI name, or `host` when it is empty.
    fn server_name(&self) -> &str {
        if self.sni.is_empty() {
            &self.host
        } else {
            &self.sni
        }
    }
}

/// The rustls crypto provider used by every simulated client (ring).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for `target`: TLS 1.2/1.3 with the ring
/// provider, the server verified against `target.server_ca_pem`, and client
/// authentication with `client`'s chain (`chain_pem`) and key when given.
pub fn tls_config(target: &BrokerTarget, client: Option<&ClientCert>) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let trusted = parse_certs(&target.server_ca_pem).context("server CA PEM")?;
    let verifier = PinningVerifier::new(trusted, provider.clone())?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match client {
        Some(cert) => {
            let chain: Vec<CertificateDer<'static>> =
                parse_certs(&cert.chain_pem).context("client certificate PEM")?;
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
                .map_err(|e| anyhow!("client private key PEM: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate/key")?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Network options for simulated clients: `TCP_NODELAY` (latency measurements would
/// otherwise see Nagle delays) and [`CONNECT_TIMEOUT_SECS`].
pub fn network_options() -> NetworkOptions {
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    net
}

/// MQTT 3.1.1 options for `client_id` over TLS to `target`: keep-alive 30 s, clean
/// session, 1 MiB packets, SNI handled as described in the [module docs](self).
///
/// Use [`async_client`] (or set [`network_options`] on the event loop yourself) to also
/// get `TCP_NODELAY`.
pub fn mqtt_options(
    target: &BrokerTarget,
    client_id: &str,
    client: Option<&ClientCert>,
) -> Result<MqttOptions> {
    mqtt_options_routed(target, client_id, client, false)
}

/// [`mqtt_options`] with the choice of forcing the relay route (tests).
pub(crate) fn mqtt_options_routed(
    target: &BrokerTarget,
    client_id: &str,
    client: Option<&ClientCert>,
    force_relay: bool,
) -> Result<MqttOptions> {
    let tls = tls_config(target, client)?;
    let route = route(target, force_relay)?;
    let mut opts = MqttOptions::new(client_id, route.host(), target.port);
    opts.set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    if let Some(proxy) = route.proxy() {
        opts.set_proxy(proxy);
    }
    Ok(opts)
}

/// MQTT 5 options for `client_id` over TLS to `target`: keep-alive 30 s, clean start,
/// 1 MiB packets, `TCP_NODELAY`, SNI handled as described in the [module docs](self).
pub fn mqtt_options_v5(
    target: &BrokerTarget,
    client_id: &str,
    client: Option<&ClientCert>,
) -> Result<rumqttc::v5::MqttOptions> {
    let tls = tls_config(target, client)?;
    let route = route(target, false)?;
    let mut opts = rumqttc::v5::MqttOptions::new(client_id, route.host(), target.port);
    opts.set_keep_alive(KEEP_ALIVE)
        .set_clean_start(true)
        .set_max_packet_size(u32::try_from(MAX_PACKET_SIZE).ok())
        .set_connection_timeout(CONNECT_TIMEOUT_SECS)
        .set_network_options(network_options())
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    if let Some(proxy) = route.proxy() {
        opts.set_proxy(proxy);
    }
    Ok(opts)
}

/// Creates a v3.1.1 client and its event loop with [`network_options`] applied.
/// `cap` is the request channel capacity.
pub fn async_client(opts: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(opts, cap);
    eventloop.set_network_options(network_options());
    (client, eventloop)
}

fn route(target: &BrokerTarget, force_relay: bool) -> Result<Route> {
    sni_relay::route(&target.host, target.port, target.server_name(), force_relay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{ClientCertOptions, TestCa};
    use rumqttc::tokio_rustls::TlsAcceptor;
    use rumqttc::{Event, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The server certificate a fake broker presents.
    struct ServerCert {
        der: CertificateDer<'static>,
        key_pem: String,
        /// What the client should trust.
        trust_pem: String,
    }

    /// A leaf for `*.{domain}` issued by a fresh CA (the CA is trusted).
    fn ca_issued_server_cert(domain: &str) -> ServerCert {
        let ca = TestCa::new("server ca").expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec![format!("*.{domain}")]).expect("params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem()).expect("ca key");
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&ca.der().to_vec().into(), ca_key).expect("issuer");
        let leaf = params.signed_by(&key, &issuer).expect("leaf");
        ServerCert {
            der: leaf.der().clone(),
            key_pem: key.serialize_pem(),
            trust_pem: ca.pem(),
        }
    }

    /// A self-signed leaf for `name` (the leaf itself is trusted), optionally marked CA.
    fn self_signed_server_cert(name: &str, is_ca: bool) -> ServerCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let cert = params.self_signed(&key).expect("self-signed");
        ServerCert {
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            trust_pem: crate::certs::der_to_pem(cert.der()),
        }
    }

    /// A one-connection TLS "broker" on loopback presenting `server`; it records the SNI
    /// and whether a client certificate (chaining to `client_ca`) was sent, reads CONNECT
    /// and answers CONNACK(accepted).
    async fn fake_broker(
        server: &ServerCert,
        client_ca: &TestCa,
    ) -> (u16, tokio::task::JoinHandle<Option<(Option<String>, bool)>>) {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(client_ca.der().to_vec().into())
            .expect("client root");
        let provider = provider();
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(
                vec![server.der.clone()],
                PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("key"),
            )
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.ok()?;
            let mut tls = acceptor.accept(tcp).await.ok()?;
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            let has_client_cert = tls.get_ref().1.peer_certificates().is_some();
            let mut buf = [0u8; 512];
            let n = tls.read(&mut buf).await.ok()?;
            assert!(n > 0 && buf[0] == 0x10, "expected CONNECT");
            // Skip the remaining-length varint, then "\0\x04MQTT", then the level.
            let varint_len = buf[1..n].iter().position(|b| b & 0x80 == 0)? + 1;
            let level = *buf.get(1 + varint_len + 6)?;
            let connack: &[u8] = if level == 5 {
                &[0x20, 0x03, 0x00, 0x00, 0x00]
            } else {
                &[0x20, 0x02, 0x00, 0x00]
            };
            tls.write_all(connack).await.ok()?;
            tls.flush().await.ok()?;
            // Keep the connection until the client goes away.
            let _ = tls.read(&mut buf).await;
            Some((sni, has_client_cert))
        });
        (port, task)
    }

    /// Connects a device through `mqtt_options_routed` to a fake broker presenting
    /// `server`; returns the client-side result and what the broker saw.
    async fn connect_once(
        server: ServerCert,
        force_relay: bool,
        sni: &str,
    ) -> (
        Result<(), rumqttc::ConnectionError>,
        Option<(Option<String>, bool)>,
    ) {
        let device_ca = TestCa::new("device ca").expect("ca");
        let device = device_ca
            .issue_client("d:sensor:dev1", ClientCertOptions::default())
            .expect("cert");
        let (port, broker) = fake_broker(&server, &device_ca).await;
        let target = BrokerTarget {
            host: "127.0.0.1".into(),
            port,
            sni: sni.into(),
            server_ca_pem: server.trust_pem.clone(),
        };
        let opts = mqtt_options_routed(&target, "d:acme:sensor:dev1", Some(&device), force_relay)
            .expect("options");
        let (client, mut eventloop) = async_client(opts, 10);
        let result = match tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("no timeout")
        {
            Ok(event) => {
                assert!(matches!(event, Event::Incoming(Packet::ConnAck(_))));
                client.disconnect().await.expect("disconnect");
                let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        drop(eventloop);
        let seen = tokio::time::timeout(Duration::from_secs(5), broker)
            .await
            .expect("broker done")
            .expect("broker task");
        (result, seen)
    }

    /// Connects to a fake broker with a CA-issued certificate and checks that it saw
    /// the org's SNI name and a client certificate.
    async fn assert_sends_sni(force_relay: bool) {
        let server = ca_issued_server_cert("messaging.localhost");
        let sni = "acme.messaging.localhost";
        let (result, seen) = connect_once(server, force_relay, sni).await;
        result.expect("connected");
        assert_eq!(seen, Some((Some(sni.to_owned()), true)));
    }

    #[tokio::test]
    async fn relay_route_sends_sni_and_dials_target() {
        assert_sends_sni(true).await;
    }

    #[tokio::test]
    async fn auto_route_sends_sni() {
        // Direct when *.localhost resolves to loopback here, relay otherwise: both must work.
        assert_sends_sni(false).await;
    }

    #[tokio::test]
    async fn self_signed_leaf_is_trusted_when_pinned() {
        for is_ca in [false, true] {
            let server = self_signed_server_cert("acme.messaging.localhost", is_ca);
            let (result, seen) = connect_once(server, false, "acme.messaging.localhost").await;
            result.unwrap_or_else(|e| panic!("connected (is_ca={is_ca}): {e}"));
            assert!(seen.is_some());
        }
    }

    #[tokio::test]
    async fn server_cert_for_another_name_is_refused() {
        let server = self_signed_server_cert("other.messaging.localhost", false);
        let (result, _) = connect_once(server, false, "acme.messaging.localhost").await;
        let err = result.expect_err("name mismatch must fail");
        assert!(err.to_string().contains("TLS"), "{err}");

        let server = ca_issued_server_cert("messaging.localhost");
        let (result, _) = connect_once(server, true, "acme.example.test").await;
        assert!(
            result.is_err(),
            "*.messaging.localhost does not cover acme.example.test"
        );
    }

    #[tokio::test]
    async fn untrusted_server_is_refused() {
        let mut server = ca_issued_server_cert("messaging.localhost");
        server.trust_pem = TestCa::new("unrelated").expect("ca").pem();
        let (result, _) = connect_once(server, false, "acme.messaging.localhost").await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn v5_options_connect_with_sni() {
        let server = ca_issued_server_cert("messaging.localhost");
        let device_ca = TestCa::new("device ca").expect("ca");
        let device = device_ca
            .issue_client("d:sensor:dev1", ClientCertOptions::default())
            .expect("cert");
        let (port, broker) = fake_broker(&server, &device_ca).await;
        let target = BrokerTarget {
            host: "127.0.0.1".into(),
            port,
            sni: "acme.messaging.localhost".into(),
            server_ca_pem: server.trust_pem.clone(),
        };
        let opts = mqtt_options_v5(&target, "d:acme:sensor:dev1", Some(&device)).expect("opts");
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
        let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("no timeout")
            .expect("connected");
        assert!(matches!(
            event,
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_))
        ));
        client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
        drop(eventloop);
        let seen = tokio::time::timeout(Duration::from_secs(5), broker)
            .await
            .expect("broker done")
            .expect("broker task");
        assert_eq!(
            seen,
            Some((Some("acme.messaging.localhost".to_owned()), true))
        );
    }

    #[test]
    fn tls_config_rejects_garbage_pem() {
        let target = BrokerTarget {
            host: "127.0.0.1".into(),
            port: 8883,
            sni: "acme.messaging.localhost".into(),
            server_ca_pem: "not a pem".into(),
        };
        assert!(tls_config(&target, None).is_err());
    }

    #[test]
    fn for_org_builds_sni() {
        let t = BrokerTarget::for_org("127.0.0.1", 8883, "acme", "messaging.localhost", "");
        assert_eq!(t.sni, "acme.messaging.localhost");
        assert_eq!(t.server_name(), "acme.messaging.localhost");
    }
}
