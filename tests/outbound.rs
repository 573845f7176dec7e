//! Outgoing connections with real servers: a bridge to a real mosquitto that requires
//! a client certificate (the identity uploaded as PKCS#12, swapped through the API
//! while running, a wrong trust bundle, messages queued across a certmq restart), and a
//! webhook to a real HTTPS server that requires a client certificate (made from a CSR
//! generated on the broker), answering 500 before it accepts.
//!
//! The bridge test needs `mosquitto`; it skips when it is missing unless
//! `CERTMQ_REQUIRE_INTEROP=1` (CI installs it).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use device_sim::certs::{ClientCertOptions, TestCa};
use device_sim::client::BrokerTarget;
use reqwest::Method;
use rumqttc::QoS;
use serde_json::{json, Value};
use support::*;

/// Polls `GET path` until `done` holds (10 s), returning the last answer.
async fn wait_for(api: &Api, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, v) = api.call(Method::GET, path, None).await;
        assert_eq!(code, 200, "GET {path}: {v}");
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A mosquitto on `port` requiring client certificates issued by the partner CA, with
/// the certificate's CN as the user name (so its log says who connected).
struct Mosquitto {
    child: Child,
    log: std::path::PathBuf,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16) -> Mosquitto {
        let log = dir.join("mosquitto.log");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nper_listener_settings false\nallow_anonymous true\n\
                 persistence false\nlog_dest file {log}\nlog_type all\n\
                 listener {port} 127.0.0.1\ncafile {dir}/partner.pem\n\
                 certfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
                 require_certificate true\nuse_identity_as_username true\n",
                log = log.display(),
                dir = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PKCS#12 file (OpenSSL 3's default encryption) of `cert`, made by `openssl`.
fn pkcs12(dir: &Path, name: &str, cert: &device_sim::certs::ClientCert, password: &str) -> String {
    std::fs::write(dir.join(format!("{name}.pem")), &cert.chain_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &cert.key_pem).unwrap();
    let out = format!("{name}.p12");
    let pass = format!("pass:{password}");
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            &format!("{name}.pem"),
            "-inkey",
            &format!("{name}.key"),
            "-passout",
            &pass,
            "-out",
            &out,
        ],
    );
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(out)).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_forwards_to_mosquitto_over_mtls_and_changes_without_restart() {
    if !have_program("mosquitto", &["-h"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let partner = TestCa::new("Partner Root CA").unwrap();
    let upstream = partner.issue_server(&["localhost".into()]).unwrap();
    std::fs::write(dir.join("partner.pem"), partner.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), &upstream.chain_pem).unwrap();
    std::fs::write(dir.join("server.key"), &upstream.key_pem).unwrap();
    let port = free_port();
    let mut mosquitto = Mosquitto::start(dir, port);

    // What arrives upstream, seen by a client of the upstream broker.
    let target = BrokerTarget {
        host: "127.0.0.1".into(),
        port,
        sni: "localhost".into(),
        server_ca_pem: partner.pem(),
    };
    let watcher_cert = partner
        .issue_client("watcher", ClientCertOptions::default())
        .unwrap();
    let mut watcher = connect_with(&target, "watcher", &watcher_cert)
        .await
        .unwrap();
    watcher.subscribe("fleet/#").await;

    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    // The identity certmq presents: a PKCS#12 file with a password.
    let one = partner
        .issue_client("certmq-bridge-one", ClientCertOptions::default())
        .unwrap();
    let (code, cc1) = api
        .call(
            Method::POST,
            "/orgs/acme/client-certs",
            Some(json!({"pkcs12": pkcs12(dir, "one", &one, "s3cret"), "password": "s3cret"})),
        )
        .await;
    assert_eq!(code, 201, "{cc1}");
    assert!(!cc1.to_string().contains("PRIVATE"), "{cc1}");
    let cc1 = cc1["id"].as_str().unwrap().to_owned();

    let bridge = api
        .post(
            "/orgs/acme/bridges",
            json!({
                "name": "upstream",
                "url": format!("mqtts://localhost:{port}"),
                "client_cert": cc1,
                "ca_certificates": partner.pem(),
                "forward": [{"filter": "iot-2/type/+/id/+/evt/+/fmt/+",
                             "topic": "fleet/{org}/{type}/{id}/{event}", "qos": 1}],
                "receive": [{"filter": "partner/cmd/+/+",
                             "topic": "iot-2/type/sensor/id/{1}/cmd/{2}/fmt/txt"}]
            }),
        )
        .await;
    let path = format!("/orgs/acme/bridges/{}", bridge["id"].as_str().unwrap());
    let b = wait_for(&api, &path, |b| b["state"] == "connected").await;
    assert_eq!(b["state"], "connected", "{b}");

    let mut device = acme.connect("d:sensor:d1", "d:acme:sensor:d1").await;
    device
        .client
        .publish("iot-2/evt/temp/fmt/json", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    let got = watcher.next_publish(Duration::from_secs(10)).await;
    assert_eq!(
        got,
        Some(("fleet/acme/sensor/d1/temp".into(), b"21.5".to_vec()))
    );
    let b = wait_for(&api, &path, |b| b["forwarded"] == 1).await;
    assert_eq!(b["forwarded"], 1, "{b}");

    // The reverse direction: the partner sends a command to the device.
    device.subscribe("iot-2/cmd/+/fmt/+").await;
    watcher
        .client
        .publish("partner/cmd/d1/reboot", QoS::AtLeastOnce, false, "now")
        .await
        .unwrap();
    let got = device.next_publish(Duration::from_secs(10)).await;
    assert_eq!(
        got,
        Some(("iot-2/cmd/reboot/fmt/txt".into(), b"now".to_vec()))
    );
    // A level the topic rules do not allow as a name: refused, nothing delivered.
    watcher
        .client
        .publish("partner/cmd/d1/bad!name", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let b = wait_for(&api, &path, |b| b["received"] == 1).await;
    assert_eq!(b["received"], 1, "{b}");
    assert_eq!(device.next_publish(Duration::from_millis(500)).await, None);

    // A client certificate in use cannot be deleted.
    let (code, e) = api
        .call(
            Method::DELETE,
            &format!("/orgs/acme/client-certs/{cc1}"),
            None,
        )
        .await;
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{e}"
    );

    // Another identity (PEM this time), swapped in while running.
    let two = partner
        .issue_client("certmq-bridge-two", ClientCertOptions::default())
        .unwrap();
    let cc2 = api
        .post(
            "/orgs/acme/client-certs",
            json!({"certificate": two.chain_pem, "private_key": two.key_pem}),
        )
        .await;
    let (code, v) = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"client_cert": cc2["id"]})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !mosquitto.log().contains("u'certmq-bridge-two'") {
        assert!(
            Instant::now() < deadline,
            "the bridge never reconnected as certmq-bridge-two:\n{}",
            mosquitto.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(&api, &path, |b| b["state"] == "connected").await;
    device
        .client
        .publish("iot-2/evt/temp/fmt/json", QoS::AtLeastOnce, false, "22.0")
        .await
        .unwrap();
    let got = watcher.next_publish(Duration::from_secs(10)).await;
    assert_eq!(
        got,
        Some(("fleet/acme/sensor/d1/temp".into(), b"22.0".to_vec()))
    );

    // The wrong trust bundle: failed, with the reason in words.
    let other = TestCa::new("Some Other CA").unwrap();
    api.call(
        Method::PATCH,
        &path,
        Some(json!({"ca_certificates": other.pem()})),
    )
    .await;
    let b = wait_for(&api, &path, |b| b["state"] == "failed").await;
    assert_eq!(b["state"], "failed", "{b}");
    assert!(
        b["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown issuer"),
        "{b}"
    );

    // Queued while the bridge cannot connect — acknowledged to the device, on disk.
    while device.rx.try_recv().is_ok() {}
    for i in 0..3 {
        device
            .client
            .publish(
                "iot-2/evt/queued/fmt/txt",
                QoS::AtLeastOnce,
                false,
                format!("q{i}"),
            )
            .await
            .unwrap();
    }
    // Only what the device got a PUBACK for is promised: wait for the three.
    let mut acks = 0;
    while acks < 3 {
        match tokio::time::timeout(Duration::from_secs(10), device.rx.recv()).await {
            Ok(Some(rumqttc::Packet::PubAck(_))) => acks += 1,
            Ok(Some(_)) => {}
            _ => panic!("{acks} of 3 PUBACKs"),
        }
    }
    let b = wait_for(&api, &path, |b| b["queued"] == 3).await;
    assert_eq!(b["queued"], 3, "{b}");
    drop(device);

    // certmq killed and started again, the upstream down meanwhile.
    let _ = mosquitto.child.kill();
    let _ = mosquitto.child.wait();
    let server = server.restart_hard();
    let api = server.api();
    let b = wait_for(&api, &path, |b| b["queued"] == 3).await;
    assert_eq!(b["queued"], 3, "queue survives the restart: {b}");
    let mosquitto = Mosquitto::start(dir, port);
    let mut watcher = connect_with(&target, "watcher2", &watcher_cert)
        .await
        .unwrap();
    watcher.subscribe("fleet/#").await;
    api.call(
        Method::PATCH,
        &path,
        Some(json!({"ca_certificates": partner.pem()})),
    )
    .await;
    for i in 0..3 {
        let got = watcher.next_publish(Duration::from_secs(15)).await;
        assert_eq!(
            got,
            Some((
                "fleet/acme/sensor/d1/queued".into(),
                format!("q{i}").into_bytes()
            )),
            "message {i}; mosquitto log:\n{}",
            mosquitto.log()
        );
    }
    let b = wait_for(&api, &path, |b| b["queued"] == 0).await;
    assert_eq!(
        (b["state"].as_str(), b["queued"].as_u64()),
        (Some("connected"), Some(0)),
        "{b}"
    );

    // Client certificates are in the expiry metrics.
    let metrics = api.0.metrics().await.unwrap();
    let used = format!(
        "kind=\"client\",id=\"{}\",active=\"true\"",
        cc2["id"].as_str().unwrap()
    );
    assert!(metrics.contains(&used), "{metrics}");
    // Deleting the org stops its bridge.
    let client_id = b["client_id"].as_str().unwrap().to_owned();
    let (code, _) = api.call(Method::DELETE, "/orgs/acme", None).await;
    assert_eq!(code, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mosquitto
        .log()
        .contains(&format!("Client {client_id} disconnected"))
    {
        assert!(
            Instant::now() < deadline,
            "the bridge was not stopped:\n{}",
            mosquitto.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTPS endpoint requiring a client certificate from `ca`; answers 500 to the first
/// `fail_first` requests, then 204, and reports every request body.
async fn https_endpoint(
    ca: &TestCa,
    fail_first: usize,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use http_body_util::BodyExt;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let cert = ca.issue_server(&["localhost".into()]).unwrap();
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile_certs(&cert.chain_pem);
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&ca.pem()) {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx, seen) = (acceptor.clone(), tx.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (tx, seen) = (tx.clone(), seen.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let bytes = req.into_body().collect().await?.to_bytes();
                            let mut body: Value =
                                serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            body["_path"] = json!(path);
                            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = tx.send(body);
                            let status = if n < fail_first { 500 } else { 204 };
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(hyper::body::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_posts_json_to_an_https_endpoint_that_requires_a_client_cert() {
    let partner = TestCa::new("Partner Root CA").unwrap();
    let (addr, mut received) = https_endpoint(&partner, 2).await;

    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();

    // The client identity from a CSR generated on the broker: the key never leaves it.
    let csr = api
        .post(
            "/orgs/acme/csrs",
            json!({"subject": {"common_name": "certmq acme webhooks"}, "purpose": "client"}),
        )
        .await;
    assert_eq!(csr["purpose"], "client", "{csr}");
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &partner.pem(),
        rcgen::KeyPair::from_pem(&partner.key_pem()).unwrap(),
    )
    .unwrap();
    let signed = rcgen::CertificateSigningRequestParams::from_pem(csr["csr_pem"].as_str().unwrap())
        .unwrap()
        .signed_by(&issuer)
        .unwrap()
        .pem();
    let (code, done) = api
        .post_raw(
            &format!(
                "/orgs/acme/csrs/{}/certificate",
                csr["id"].as_str().unwrap()
            ),
            Some("application/x-pem-file"),
            signed,
        )
        .await;
    assert_eq!(code, 201, "{done}");
    let client_cert = done["id"].as_str().unwrap().to_owned();
    assert_eq!(done["origin"], "csr");

    let hook = api
        .post(
            "/orgs/acme/webhooks",
            json!({
                "name": "archive",
                "url": format!("https://localhost:{}/ingest?src=certmq", addr.port()),
                "client_cert": client_cert,
                "ca_certificates": partner.pem(),
                "filter": "iot-2/type/+/id/+/evt/+/fmt/+"
            }),
        )
        .await;
    let path = format!("/orgs/acme/webhooks/{}", hook["id"].as_str().unwrap());

    let device = acme.connect("d:sensor:d1", "d:acme:sensor:d1").await;
    device
        .client
        .publish("iot-2/evt/temp/fmt/json", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    // Answered 500 twice: the same message comes again until it is taken.
    for attempt in 0..3 {
        let body = tokio::time::timeout(Duration::from_secs(15), received.recv())
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt} never arrived"))
            .unwrap();
        assert_eq!(body["_path"], "/ingest");
        assert_eq!(body["topic"], "iot-2/type/sensor/id/d1/evt/temp/fmt/json");
        assert_eq!(body["payload"], "21.5");
        assert_eq!(body["payload_encoding"], "utf8");
        assert_eq!(body["qos"], 1);
        assert_eq!(body["client_id"], "d:acme:sensor:d1");
        assert!(
            body["received_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{body}"
        );
    }
    let h = wait_for(&api, &path, |h| h["forwarded"] == 1).await;
    assert_eq!(h["forwarded"], 1, "{h}");
    assert_eq!(h["last_http_status"], 204, "{h}");
    assert!(h["failures"].as_u64().unwrap_or(0) >= 2, "{h}");
    assert_eq!(h["state"], "connected", "{h}");

    // A binary payload goes as base64.
    device
        .client
        .publish(
            "iot-2/evt/blob/fmt/bin",
            QoS::AtLeastOnce,
            false,
            vec![0xff, 0x00, 0xfe],
        )
        .await
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(15), received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (body["payload"].as_str(), body["payload_encoding"].as_str()),
        (Some("/wD+"), Some("base64"))
    );

    // Without a client certificate the endpoint refuses the handshake: told in words.
    let bare = api
        .post(
            "/orgs/acme/webhooks",
            json!({
                "name": "no-identity",
                "url": format!("https://localhost:{}/ingest", addr.port()),
                "ca_certificates": partner.pem(),
                "filter": "iot-2/type/+/id/+/evt/+/fmt/+"
            }),
        )
        .await;
    let bare_path = format!("/orgs/acme/webhooks/{}", bare["id"].as_str().unwrap());
    device
        .client
        .publish("iot-2/evt/temp/fmt/json", QoS::AtLeastOnce, false, "23")
        .await
        .unwrap();
    let b = wait_for(&api, &bare_path, |b| b["state"] == "failed").await;
    let why = b["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("TLS alert") && why.contains("client certificate"),
        "{b}"
    );
}

#[tokio::test]
async fn destinations_refuse_bad_input_and_keep_orgs_apart() {
    let server = Server::start();
    Org::create(&server, "acme").await;
    Org::create(&server, "beta").await;
    let api = server.api();
    let partner = TestCa::new("Partner").unwrap();
    let id = partner
        .issue_client("certmq-beta", ClientCertOptions::default())
        .unwrap();
    let beta_cert = api
        .post(
            "/orgs/beta/client-certs",
            json!({"certificate": id.chain_pem, "private_key": id.key_pem}),
        )
        .await;
    let bridge = |url: &str, filter: &str, cert: Option<&str>| {
        json!({"name": "b", "url": url, "client_cert": cert, "ca_certificates": partner.pem(),
               "forward": [{"filter": filter, "topic": "out/{id}"}]})
    };
    let events = "iot-2/type/+/id/+/evt/+/fmt/+";
    for (body, needle) in [
        (bridge("mqtt://localhost:1883", events, None), "mqtts://"),
        (
            bridge("mqtts://localhost", "iot-2/type/+/id/+/cmd/+/fmt/+", None),
            "may not subscribe",
        ),
        (
            bridge("mqtts://localhost", events, beta_cert["id"].as_str()),
            "not a client certificate of org acme",
        ),
        (
            bridge("mqtts://user:pw@localhost", events, None),
            "credentials",
        ),
        (
            json!({"name": "r", "url": "mqtts://localhost", "ca_certificates": partner.pem(),
                   "forward": [{"filter": events}],
                   "receive": [{"filter": "p/+", "topic": "iot-2/type/s/id/{1}/evt/x/fmt/txt"}]}),
            "must be a command topic",
        ),
    ] {
        let (code, e) = api
            .call(Method::POST, "/orgs/acme/bridges", Some(body))
            .await;
        assert_eq!(code, 400, "{e}");
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    let (code, e) = api
        .call(
            Method::POST,
            "/orgs/acme/webhooks",
            Some(json!({"name": "w", "url": "https://localhost/x", "filter": events})),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    assert!(e.to_string().contains("ca_certificates is required"), "{e}");
    // A server-only certificate is no client identity.
    let srv = partner.issue_server(&["x.example".into()]).unwrap();
    let (code, e) = api
        .call(
            Method::POST,
            "/orgs/acme/client-certs",
            Some(json!({"certificate": srv.chain_pem, "private_key": srv.key_pem})),
        )
        .await;
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (422, Some("not_for_client_auth")),
        "{e}"
    );
    let (code, list) = api.call(Method::GET, "/orgs/acme/bridges", None).await;
    assert_eq!((code, list), (200, json!([])));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_destination_fills_only_its_own_bounded_queue() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let (code, v) = api
        .call(
            Method::PUT,
            "/orgs/acme/limits",
            Some(json!({"max_queued_messages_per_session": 5})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let partner = TestCa::new("Partner").unwrap();
    // Nothing listens there.
    let bridge = api
        .post(
            "/orgs/acme/bridges",
            json!({"name": "nowhere", "url": format!("mqtts://localhost:{}", free_port()),
                   "ca_certificates": partner.pem(),
                   "forward": [{"filter": "iot-2/type/+/id/+/evt/+/fmt/+"}]}),
        )
        .await;
    let path = format!("/orgs/acme/bridges/{}", bridge["id"].as_str().unwrap());
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let mut device = acme.connect("d:sensor:d1", "d:acme:sensor:d1").await;
    const N: usize = 50;
    for i in 0..N {
        device
            .client
            .publish(
                "iot-2/evt/e/fmt/txt",
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    // Every message is acknowledged to the device and reaches the application: the
    // destination slows nobody.
    let mut acks = 0;
    while acks < N {
        match tokio::time::timeout(Duration::from_secs(10), device.rx.recv()).await {
            Ok(Some(rumqttc::Packet::PubAck(_))) => acks += 1,
            Ok(Some(_)) => {}
            _ => panic!("{acks} of {N} PUBACKs"),
        }
    }
    for i in 0..N {
        let got = app.next_publish(Duration::from_secs(10)).await;
        assert_eq!(got.map(|g| g.1), Some(format!("m{i}").into_bytes()));
    }
    // The destination keeps its newest 5, the rest are dropped and counted.
    let b = wait_for(&api, &path, |b| b["queued"] == 5).await;
    assert_eq!(b["queued"], 5, "{b}");
    assert_eq!(b["state"], "failed", "{b}");
    assert!(
        b["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused the connection"),
        "{b}"
    );
    let metrics = api.0.metrics().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "certmq_dropped_total{{org=\"acme\",reason=\"queue_full\"}} {}",
            N - 5
        )),
        "{metrics}"
    );

    // Deleting the bridge discards its queue; deleting the org removes the rest.
    let (code, _) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(code, 204);
    let (code, _) = api.call(Method::GET, &path, None).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_never_answers_fails_with_a_timeout() {
    let partner = TestCa::new("Partner").unwrap();
    let cert = partner.issue_server(&["localhost".into()]).unwrap();
    // TLS without a client certificate, then silence.
    let config = {
        use rustls::pki_types::pem::PemObject;
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(rustls_pemfile_certs(&cert.chain_pem), key)
        .unwrap()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                held.push(tls);
            }
        }
    });
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let hook = api
        .post(
            "/orgs/acme/webhooks",
            json!({"name": "silent", "url": format!("https://localhost:{port}/"),
                   "ca_certificates": partner.pem(), "filter": "iot-2/type/+/id/+/evt/+/fmt/+"}),
        )
        .await;
    let path = format!("/orgs/acme/webhooks/{}", hook["id"].as_str().unwrap());
    let device = acme.connect("d:sensor:d1", "d:acme:sensor:d1").await;
    device
        .client
        .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(25);
    let b = loop {
        let (_, b) = api.call(Method::GET, &path, None).await;
        if b["state"] == "failed" || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        b["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer within"),
        "{b}"
    );
    assert_eq!(b["queued"], 1, "kept for the next attempt: {b}");
}
