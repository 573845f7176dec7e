//! Server certificate lifecycle end to end, against the real `certmq` binary: a CSR
//! generated on the broker, signed by a "public" CA made with `openssl`, uploaded and
//! activated without a restart; uploads surviving `kill -9`; keys never on disk in clear.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use device_sim::client::BrokerTarget;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

const HOST: &str = "acme.messaging.localhost";

fn target(server: &Server, trusted_pem: &str) -> BrokerTarget {
    BrokerTarget {
        host: "127.0.0.1".into(),
        port: server.mqtt.port(),
        sni: HOST.into(),
        server_ca_pem: trusted_pem.into(),
    }
}

#[tokio::test]
async fn csr_signed_by_a_public_ca_is_activated_without_restart() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // Before: devices pin the self-signed certificate.
    let device = acme.cert("d:sensor:dev1");
    let old = connect_with(&acme.target(), "d:acme:sensor:dev1", &device)
        .await
        .expect("connects with the self-signed certificate");
    drop(old);

    // 1. The broker generates the key and the CSR.
    let csr = api
        .post(
            "/orgs/acme/csrs",
            json!({"subject": {"common_name": HOST, "organization": "Acme Corp"}, "sans": [HOST]}),
        )
        .await;
    let id = csr["id"].as_str().unwrap().to_owned();
    let (status, ct, pem) = api.get_text(&format!("/orgs/acme/csrs/{id}.pem")).await;
    assert_eq!(status, 200);
    assert_eq!(ct, "application/x-pem-file");
    std::fs::write(dir.join("server.csr"), &pem).unwrap();
    openssl(dir, &["req", "-verify", "-noout", "-in", "server.csr"]);

    // 2. A public CA (made here with openssl) signs it.
    let public = OpensslCa::new(dir, "Test Public CA");
    let signed = std::fs::read_to_string(public.sign_server("server", HOST)).unwrap();
    let public_ca = public.pem.clone();

    // 3. Upload the signed certificate: an inactive server cert; the CSR is completed.
    let (status, cert) = api
        .post_raw(
            &format!("/orgs/acme/csrs/{id}/certificate"),
            Some("application/x-pem-file"),
            signed,
        )
        .await;
    assert_eq!(status, 201, "{cert}");
    assert_eq!(cert["origin"], "csr");
    assert_eq!(cert["active"], false);
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    let (_, csr_now) = api
        .call(Method::GET, &format!("/orgs/acme/csrs/{id}"), None)
        .await;
    assert_eq!(csr_now["status"], "completed");

    // Not active yet: a client trusting only the public CA is still refused.
    let fresh = acme.cert("d:sensor:dev2");
    assert!(
        connect_with(&target(&server, &public_ca), "d:acme:sensor:dev2", &fresh)
            .await
            .is_err(),
        "the CSR certificate is served before activation"
    );

    // 4. Activate: the next handshake presents it, no restart.
    api.post(
        &format!("/orgs/acme/server-certs/{cert_id}/activate"),
        json!({}),
    )
    .await;
    connect_with(&target(&server, &public_ca), "d:acme:sensor:dev2", &fresh)
        .await
        .expect("a client trusting only the public CA connects");
    let err = connect_with(&acme.target(), "d:acme:sensor:dev1", &device)
        .await
        .err()
        .expect("a client pinning the old self-signed certificate is refused");
    assert!(!err.contains("connack"), "refused in TLS, not MQTT: {err}");
}

/// A CA that signs server leaves for HOST.
struct UploadCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl UploadCa {
    fn new() -> UploadCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "Upload Test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = p.self_signed(&key).unwrap().pem();
        UploadCa {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    /// (certificate PEM, key PEM, key PKCS#8 DER)
    fn leaf(&self, serial: usize) -> (String, String, Vec<u8>) {
        let mut p = CertificateParams::new(vec![HOST.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, HOST);
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, format!("upload {serial}"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(30);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap().pem();
        (cert, key.serialize_pem(), key.serialize_der())
    }
}

#[tokio::test]
async fn kill_9_during_an_upload_burst_leaves_only_whole_certificates() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let ca = UploadCa::new();
    let leaves: Vec<_> = (0..60).map(|i| ca.leaf(i)).collect();

    // Four uploaders in parallel until the server goes away, so uploads are in flight
    // when it dies; acknowledged ids are recorded.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let bodies: Vec<Value> = leaves
        .iter()
        .map(|(c, k, _)| json!({"certificate": format!("{c}{}", ca.pem), "private_key": k}))
        .collect();
    let mut burst = Vec::new();
    for chunk in bodies.chunks(bodies.len() / 4) {
        let api = server.api();
        let acked = acked.clone();
        let sent = sent.clone();
        let chunk = chunk.to_vec();
        burst.push(tokio::spawn(async move {
            for body in chunk {
                sent.fetch_add(1, Ordering::SeqCst);
                // No answer (the server was killed): this upload is not acknowledged.
                let answer = api
                    .0
                    .call(Method::POST, "/orgs/acme/server-certs", Some(body))
                    .await;
                let Ok((status, v)) = answer else { return };
                if status != 201 {
                    return;
                }
                acked
                    .lock()
                    .unwrap()
                    .push(v["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    // Kill mid-burst: after a few acknowledged uploads, while more are in flight.
    tokio::time::timeout(Duration::from_secs(30), async {
        while acked.lock().unwrap().len() < 8 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("uploads are acknowledged");
    let server = server.restart_hard();
    for task in burst {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        sent.load(Ordering::SeqCst) < leaves.len(),
        "the burst ended before the kill; nothing was interrupted"
    );

    // Every acknowledged upload survived, and every stored certificate is whole:
    // activating it and completing a handshake proves chain and key belong together.
    let api = server.api();
    let (status, list) = api.call(Method::GET, "/orgs/acme/server-certs", None).await;
    assert_eq!(status, 200);
    let uploaded: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["origin"] == "uploaded")
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    for id in &acked {
        assert!(uploaded.contains(id), "acknowledged upload {id} was lost");
    }
    let device = acme.cert("d:sensor:dev1");
    for id in &uploaded {
        let (status, v) = api
            .call(
                Method::POST,
                &format!("/orgs/acme/server-certs/{id}/activate"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "activate {id}: {v}");
        raw_handshake(server.mqtt, HOST, &ca.pem, Some(&device))
            .await
            .unwrap_or_else(|e| panic!("certificate {id} does not complete a handshake: {e}"));
    }
    eprintln!(
        "{} acknowledged before kill -9, {} stored, all served",
        acked.len(),
        uploaded.len()
    );
}

#[tokio::test]
async fn uploaded_private_keys_never_reach_the_disk_in_clear() {
    let server = Server::start();
    Org::create(&server, "acme").await;
    let api = server.api();
    let ca = UploadCa::new();
    let (cert, key_pem, key_der) = ca.leaf(0);
    let v = api
        .post(
            "/orgs/acme/server-certs",
            json!({"certificate": cert, "private_key": key_pem}),
        )
        .await;
    let id = v["id"].as_str().unwrap();
    assert!(!v.to_string().contains("PRIVATE KEY"));
    api.post(&format!("/orgs/acme/server-certs/{id}/activate"), json!({}))
        .await;
    // A CSR's key is generated and sealed on the broker too.
    api.post("/orgs/acme/csrs", json!({"subject": {"common_name": HOST}}))
        .await;

    // The key as DER, and as the base64 body of its PEM (first line), anywhere on disk.
    let pem_line = key_pem.lines().nth(1).unwrap().to_owned();
    let mut files = Vec::new();
    walk(server.data_dir(), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes
                .windows(key_der.len())
                .any(|w| w == key_der.as_slice()),
            "the PKCS#8 key is in clear in {}",
            f.display()
        );
        assert!(
            !bytes
                .windows(pem_line.len())
                .any(|w| w == pem_line.as_bytes()),
            "the PEM key is in clear in {}",
            f.display()
        );
    }
}

fn walk(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}
