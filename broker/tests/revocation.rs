//! Revocation, in process: CRLs that RFC 5280 allows but webpki refuses, revocation
//! along the path a chain was verified through, and the admitting CA recorded from that
//! path rather than from whatever the client sent.

mod harness;

use std::time::Duration;

use device_sim::certs::{ClientCert, ClientCertOptions, TestCa};
use harness::{Harness, Refused};
use registry::live::{AuthzRequest, Stage};

/// A version 2 CRL with no extensions at all (no CRL number, no AKI), as Python's
/// `cryptography` makes by default, listing `serial` and signed by `ca`.
fn bare_crl(ca: &TestCa, serial: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("ca.pem");
    let key = dir.path().join("ca-key.pem");
    std::fs::write(&cert, ca.pem()).unwrap();
    std::fs::write(&key, ca.key_pem()).unwrap();
    let serial: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let script = r#"
import sys, datetime
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
ca = x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read())
key = serialization.load_pem_private_key(open(sys.argv[2], 'rb').read(), None)
now = datetime.datetime.now(datetime.timezone.utc)
revoked = x509.RevokedCertificateBuilder().serial_number(int(sys.argv[3], 16)) \
    .revocation_date(now).build()
crl = x509.CertificateRevocationListBuilder().issuer_name(ca.subject) \
    .last_update(now - datetime.timedelta(minutes=1)) \
    .next_update(now + datetime.timedelta(days=1)) \
    .add_revoked_certificate(revoked).sign(key, hashes.SHA256())
sys.stdout.write(crl.public_bytes(serialization.Encoding.PEM).decode())
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&cert)
        .arg(&key)
        .arg(serial)
        .output()
        .expect("python3 (with the cryptography package) makes the CRL");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_without_extensions_revokes_and_keeps_the_org_online() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let dev1 = acme.cert("d:sensor:dev1");
    let dev2 = acme.cert("d:sensor:dev2");
    let mut live = acme
        .connect("d:acme:sensor:dev1", Some(&dev1), None)
        .await
        .unwrap();

    let crl = bare_crl(&acme.ca, &dev1.serial);
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"));
    h.registry
        .add_crl(&acme.id, crl.as_bytes())
        .expect("an RFC 5280 CRL is accepted");

    assert!(
        live.wait_closed(Duration::from_secs(5)).await.is_some(),
        "the revoked device's live session closes"
    );
    let again = acme.connect("d:acme:sensor:dev1", Some(&dev1), None).await;
    assert!(
        matches!(&again, Err(Refused::Other(e)) if e.contains("CertificateRevoked") || e.contains("Revoked")),
        "the next handshake is refused as revoked: {:?}",
        again.err()
    );
    // The org stays online for everyone else, and its health says so.
    acme.connect("d:acme:sensor:dev2", Some(&dev2), None)
        .await
        .expect("another device of the org connects");
    assert_eq!(h.broker.tls_error(&acme.id), None);
    // The dry run answers with the decision, not an error.
    let d = h
        .broker
        .authz_check(
            &acme.id,
            &AuthzRequest {
                certificate: dev1.chain_pem.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((d.allowed, d.stage), (false, Stage::Certificate));
}

fn issued(ca: &TestCa, identity: &str) -> ClientCert {
    ca.issue_client(identity, ClientCertOptions::default())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_follows_the_verified_path_through_intermediates() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let inter = acme.ca.issue_intermediate("acme issuing CA").unwrap();
    let via = issued(&inter, "d:sensor:via");
    let direct = acme.cert("d:sensor:direct");
    let mut live = acme
        .connect("d:acme:sensor:via", Some(&via), None)
        .await
        .unwrap();
    let mut live_direct = acme
        .connect("d:acme:sensor:direct", Some(&direct), None)
        .await
        .unwrap();

    // The root revokes the intermediate: every device below it is out, now and later.
    let inter_serial = {
        let der = registry::cert::read_single(inter.pem().as_bytes()).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        c.raw_serial().to_vec()
    };
    h.registry
        .add_crl(
            &acme.id,
            acme.ca.crl_pem(&[&inter_serial], 1).unwrap().as_bytes(),
        )
        .unwrap();
    assert!(live.wait_closed(Duration::from_secs(5)).await.is_some());
    assert!(acme
        .connect("d:acme:sensor:via", Some(&via), None)
        .await
        .is_err());
    assert!(
        live_direct
            .wait_closed(Duration::from_millis(300))
            .await
            .is_none(),
        "a device the root issued directly is not affected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediates_own_crl_revokes_its_device() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let inter = acme.ca.issue_intermediate("acme issuing CA").unwrap();
    h.registry
        .add_ca(&acme.id, inter.pem().as_bytes(), "issuing CA")
        .unwrap();
    let via = issued(&inter, "d:sensor:via");
    let mut live = acme
        .connect("d:acme:sensor:via", Some(&via), None)
        .await
        .unwrap();
    h.registry
        .add_crl(
            &acme.id,
            inter.crl_pem(&[&via.serial], 1).unwrap().as_bytes(),
        )
        .unwrap();
    assert!(live.wait_closed(Duration::from_secs(5)).await.is_some());
    assert!(acme
        .connect("d:acme:sensor:via", Some(&via), None)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admitting_ca_comes_from_the_verified_path_not_the_clients_order() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    // A second active root of the org.
    let other = TestCa::new("acme second root").unwrap();
    let other_id = h
        .registry
        .add_ca(&acme.id, other.pem().as_bytes(), "")
        .unwrap()
        .id;
    let inter = acme.ca.issue_intermediate("acme issuing CA").unwrap();
    let leaf = issued(&inter, "d:sensor:dev1");
    // The client puts a certificate issued by the other root before its real
    // intermediate.
    let junk = issued(&other, "d:sensor:junk");
    let chain = format!("{}{}{}", leaf.cert_pem, junk.cert_pem, inter.pem());
    let sneaky = ClientCert::from_pem(&chain, &leaf.key_pem).unwrap();
    let mut live = acme
        .connect("d:acme:sensor:dev1", Some(&sneaky), None)
        .await
        .unwrap();
    let sessions = h.broker.sessions().list(&acme.id);
    assert_eq!(
        sessions[0].ca_id, acme.ca_id,
        "recorded under the CA that admitted it"
    );
    assert_ne!(sessions[0].ca_id, other_id);
    // Deactivating the CA that really admitted it closes it.
    h.registry
        .update_ca(&acme.id, &acme.ca_id, Some(false), None)
        .unwrap();
    assert!(live.wait_closed(Duration::from_secs(5)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_fails_to_build_keeps_the_org_on_its_last_good_one() {
    use registry::store::{Op, Store};
    let h = Harness::start().await;
    let acme = h.org("acme");
    let dev = acme.cert("d:sensor:dev1");
    acme.connect("d:acme:sensor:dev1", Some(&dev), None)
        .await
        .expect("connects while healthy");
    assert_eq!(h.broker.tls_error(&acme.id), None);
    // The active server certificate's record goes bad (a disk fault, a bad restore).
    h.store
        .apply(vec![Op::Put(
            format!("srv/acme/{}", acme.server_cert_id),
            b"not json".to_vec(),
        )])
        .unwrap();
    // Any change makes the broker rebuild the org's config, which now fails ...
    h.registry
        .block_device(&acme.id, "d:sensor:other", "test")
        .unwrap();
    let error = h
        .broker
        .tls_error(&acme.id)
        .expect("the failure is reported");
    assert!(!error.is_empty());
    // ... and the org keeps being served with its last good config.
    acme.connect("d:acme:sensor:dev1", Some(&dev), None)
        .await
        .expect("the org stays online");
}
