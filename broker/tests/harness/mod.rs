//! An in-process broker for the broker's own tests: a registry over sled in a temp dir,
//! [`Broker`] serving mTLS on 127.0.0.1 port 0, orgs with rcgen-minted CAs set up
//! straight through the registry, and rumqttc clients that connect with explicit SNI.
//! No binary, no admin API: focused tests of admission, sessions and the bridge.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certmq_broker::{Broker, BrokerConfig};
use device_sim::certs::{ClientCert, ClientCertOptions, TestCa};
use device_sim::client::{self, BrokerTarget};
use registry::seal::MasterKey;
use registry::store::SledStore;
use registry::{OrgId, Registry};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, Packet};
use tokio_util::sync::CancellationToken;

/// The base domain the harness serves.
pub const DOMAIN: &str = "messaging.localhost";

/// A broker serving on a free port, stopped when dropped.
pub struct Harness {
    pub broker: Arc<Broker>,
    pub registry: Arc<Registry>,
    pub mqtt: SocketAddr,
    /// The registry's store, for tests that corrupt it on purpose.
    pub store: Arc<SledStore>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(BrokerConfig::default()).await
    }

    /// A harness whose broker runs with `config`.
    pub async fn start_with(config: BrokerConfig) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SledStore::open(dir.path()).expect("store"));
        let key = MasterKey::from_bytes(&[7; 32]);
        let registry = Arc::new(Registry::new(store.clone(), key, DOMAIN).expect("registry"));
        let broker = Broker::new(registry.clone(), config).expect("broker");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mqtt = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(broker.clone().serve(listener, shutdown.child_token()));
        Harness {
            broker,
            registry,
            mqtt,
            store,
            shutdown,
            _dir: dir,
        }
    }

    /// Creates org `id` with one active CA and an active self-signed server cert.
    pub fn org(&self, id: &str) -> TestOrg {
        self.registry.create_org(id, id).expect("org");
        let org = OrgId::try_from(id).expect("org id");
        let ca = TestCa::new(&format!("{id} root CA")).expect("CA");
        let ca_id = self
            .registry
            .add_ca(&org, ca.pem().as_bytes(), "")
            .expect("CA upload")
            .id;
        let server = self.registry.create_self_signed(&org).expect("server cert");
        self.registry
            .activate_server_cert(&org, &server.id)
            .expect("activate");
        TestOrg {
            id: org,
            server_cert_id: server.id,
            ca,
            ca_id,
            target: BrokerTarget {
                host: "127.0.0.1".into(),
                port: self.mqtt.port(),
                sni: format!("{id}.{DOMAIN}"),
                server_ca_pem: server.pem,
            },
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An org of the harness.
pub struct TestOrg {
    pub id: OrgId,
    /// The active server certificate.
    pub server_cert_id: String,
    pub ca: TestCa,
    pub ca_id: String,
    pub target: BrokerTarget,
}

impl TestOrg {
    /// A client certificate for `identity` (its CN) from the org's CA.
    pub fn cert(&self, identity: &str) -> ClientCert {
        self.ca
            .issue_client(identity, ClientCertOptions::default())
            .expect("client cert")
    }

    /// Connects with `cert` (and a token as password of `use-token-auth`, if given).
    pub async fn connect(
        &self,
        client_id: &str,
        cert: Option<&ClientCert>,
        token: Option<&str>,
    ) -> Result<Client, Refused> {
        let mut opts = self.options(client_id, cert);
        if let Some(t) = token {
            opts.set_credentials("use-token-auth", t);
        }
        connect(opts).await
    }

    /// MQTT 3.1.1 options for `client_id` to this org (clean session, keep-alive 30 s).
    pub fn options(&self, client_id: &str, cert: Option<&ClientCert>) -> rumqttc::MqttOptions {
        client::mqtt_options(&self.target, client_id, cert).expect("options")
    }
}

/// Connects with `opts` and waits for the CONNACK.
pub async fn connect(opts: rumqttc::MqttOptions) -> Result<Client, Refused> {
    let (client, eventloop) = client::async_client(opts, 100);
    Client::start(client, eventloop).await
}

/// How a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A CONNACK with this code.
    Connack(ConnectReturnCode),
    /// Anything else (TLS alert, closed socket, timeout), in words.
    Other(String),
}

/// A connected client whose event loop runs in the background.
pub struct Client {
    pub client: AsyncClient,
    /// The CONNACK's session-present flag.
    pub session_present: bool,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Packet>,
    pub closed: tokio::sync::watch::Receiver<Option<String>>,
}

impl Client {
    async fn start(client: AsyncClient, mut eventloop: EventLoop) -> Result<Client, Refused> {
        let first = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        return match ack.code {
                            ConnectReturnCode::Success => Ok(ack.session_present),
                            code => Err(Refused::Connack(code)),
                        }
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        return Err(Refused::Connack(code))
                    }
                    Err(e) => return Err(Refused::Other(format!("{e:?}"))),
                }
            }
        })
        .await;
        let session_present =
            first.map_err(|_| Refused::Other("timed out waiting for CONNACK".into()))??;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (closed_tx, closed) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        let _ = tx.send(p);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = closed_tx.send(Some(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        Ok(Client {
            client,
            session_present,
            rx,
            closed,
        })
    }

    /// The next PUBLISH within `wait`, as (topic, payload).
    pub async fn next_publish(&mut self, wait: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Packet::Publish(p))) => return Some((p.topic, p.payload.to_vec())),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Subscribes at QoS 1 and returns the SUBACK's codes.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
                Ok(Some(Packet::SubAck(a))) => return a.return_codes,
                Ok(Some(_)) => continue,
                _ => panic!("no SUBACK"),
            }
        }
    }

    /// Waits until the broker closes the connection.
    pub async fn wait_closed(&mut self, wait: Duration) -> Option<String> {
        match tokio::time::timeout(wait, self.closed.wait_for(|c| c.is_some())).await {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        }
    }
}
