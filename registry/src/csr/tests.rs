//! CSRs: generation, validation of the request, and completion into a server
//! certificate, with a test CA signing as a public CA would.

use std::path::Path;

use x509_parser::prelude::{FromDer, X509CertificationRequest};

use super::*;
use crate::cert::Rule;
use crate::registry::tests::registry;
use crate::server_upload::tests::{openssl, Ca, HOST};

fn setup(dir: &Path) -> (Registry, OrgId) {
    let r = registry(&dir.join("store"));
    let org = r.create_org("acme", "").unwrap().id;
    (r, org)
}

fn request(cn: &str, sans: &[&str], key_type: KeyType) -> CsrRequest {
    CsrRequest {
        subject: CsrSubject {
            common_name: cn.into(),
            ..Default::default()
        },
        sans: sans.iter().map(|s| s.to_string()).collect(),
        key_type,
        ..Default::default()
    }
}

/// The server certificate a server CSR became.
fn server(c: CsrCompletion) -> crate::NewServerCert {
    match c {
        CsrCompletion::Server(s) => s,
        CsrCompletion::Client(c) => panic!("a client certificate: {}", c.cert.id),
    }
}

fn rule_of<T: std::fmt::Debug>(r: Result<T>) -> Rule {
    match r {
        Err(Error::Rejected(e)) => e.rule,
        other => panic!("expected a 422, got {other:?}"),
    }
}

/// The CSR's public key BIT STRING and its algorithm description.
fn csr_key(pem: &str) -> (Vec<u8>, String) {
    let der = cert::pem_blocks(pem.as_bytes()).unwrap().remove(0).1;
    let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
    csr.verify_signature()
        .expect("the CSR is self-signed by its key");
    let spki = &csr.certification_request_info.subject_pki;
    let alg = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => format!("EC {}", ec.key_size()),
        other => format!("{other:?}"),
    };
    (spki.subject_public_key.data.to_vec(), alg)
}

#[test]
fn csr_is_signed_completed_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let (r, org) = setup(dir.path());
    let mut req = request(HOST, &[HOST], KeyType::default());
    req.subject = CsrSubject {
        common_name: HOST.into(),
        organization: Some("Acme Corp".into()),
        organizational_unit: Some("IoT".into()),
        country: Some("DE".into()),
        state: Some("Berlin".into()),
        locality: Some("Berlin".into()),
        email: Some("ops@acme.example".into()),
    };
    let csr = r.create_csr(&org, req).unwrap();
    assert_eq!(csr.status, CsrStatus::Pending);
    assert_eq!(csr.key_type, KeyType::EcdsaP256);
    assert_eq!(csr.sans, vec![HOST]);
    assert!(csr
        .csr_pem
        .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let (public, alg) = csr_key(&csr.csr_pem);
    assert_eq!(alg, "EC 256");
    let json = serde_json::to_string(&csr).unwrap();
    assert!(
        !json.contains("sealed") && !json.contains("PRIVATE"),
        "{json}"
    );

    // OpenSSL agrees: the signature verifies and the subject is what was asked for.
    std::fs::write(dir.path().join("req.pem"), &csr.csr_pem).unwrap();
    openssl(dir.path(), &["req", "-verify", "-noout", "-in", "req.pem"]);
    let subject = String::from_utf8(openssl(
        dir.path(),
        &[
            "req", "-noout", "-subject", "-nameopt", "RFC2253", "-in", "req.pem",
        ],
    ))
    .unwrap();
    for part in [
        "CN=acme.messaging.localhost",
        "O=Acme Corp",
        "OU=IoT",
        "C=DE",
        "ST=Berlin",
        "L=Berlin",
        "ops@acme.example",
    ] {
        assert!(subject.contains(part), "{part} missing in {subject}");
    }
    assert_eq!(r.csr_pem(&org, &csr.id).unwrap(), csr.csr_pem);
    assert_eq!(r.list_csrs(&org).unwrap().len(), 1);

    // A public CA signs it (with an intermediate); the chain arrives in reverse order.
    let root = Ca::root("Public Root");
    let int = root.intermediate("Public Intermediate");
    let leaf = int.sign_csr(&csr.csr_pem, |_| {});
    let chain = format!("{}{leaf}", int.pem);
    let done = server(r.complete_csr(&org, &csr.id, chain.as_bytes()).unwrap());
    assert_eq!(done.cert.origin, "csr");
    assert!(!done.cert.active);
    assert_eq!(done.notes.len(), 1, "reordered: {:?}", done.notes);
    let csr_now = r.get_csr(&org, &csr.id).unwrap();
    assert_eq!(csr_now.status, CsrStatus::Completed);
    assert_eq!(
        csr_now.server_cert_id.as_deref(),
        Some(done.cert.id.as_str())
    );
    assert!(
        r.csr_record(&org, &csr.id).unwrap().sealed_key.is_empty(),
        "the key moved to the server certificate"
    );

    // Activated, the broker gets the CSR's key under the server certificate.
    r.activate_server_cert(&org, &done.cert.id).unwrap();
    let (served, key) = r.tls_material(&org).unwrap().unwrap().server.unwrap();
    assert_eq!(keys::load(&key).unwrap().public, public);
    assert_eq!(served.len(), 2);

    assert!(matches!(
        r.complete_csr(&org, &csr.id, chain.as_bytes()),
        Err(Error::Conflict(_))
    ));
}

#[test]
fn completion_checks_the_key_and_the_server_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (r, org) = setup(dir.path());
    let ca = Ca::root("Public Root");
    let csr = r
        .create_csr(&org, request(HOST, &[], KeyType::EcdsaP384))
        .unwrap();
    assert_eq!(csr.sans, vec![HOST], "no sans: the common name");
    assert_eq!(csr_key(&csr.csr_pem).1, "EC 384");

    // A certificate for another key (another CSR) is refused.
    let other = r
        .create_csr(&org, request(HOST, &[HOST], KeyType::default()))
        .unwrap();
    let wrong = ca.sign_csr(&other.csr_pem, |_| {});
    assert_eq!(
        rule_of(r.complete_csr(&org, &csr.id, wrong.as_bytes())),
        Rule::KeyMismatch
    );

    // The CA changed the names: no longer this org's host.
    let renamed = ca.sign_csr(&csr.csr_pem, |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName(
            "beta.messaging.localhost".try_into().unwrap(),
        )]
    });
    assert_eq!(
        rule_of(r.complete_csr(&org, &csr.id, renamed.as_bytes())),
        Rule::HostnameMismatch
    );
    let expired = ca.sign_csr(&csr.csr_pem, |p| {
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(10);
        p.not_after = now - time::Duration::days(1);
    });
    assert_eq!(
        rule_of(r.complete_csr(&org, &csr.id, expired.as_bytes())),
        Rule::Expired
    );
    assert_eq!(
        rule_of(r.complete_csr(&org, &csr.id, b"garbage")),
        Rule::NotPemOrDer
    );
    assert_eq!(r.get_csr(&org, &csr.id).unwrap().status, CsrStatus::Pending);

    let good = ca.sign_csr(&csr.csr_pem, |_| {});
    r.complete_csr(&org, &csr.id, good.as_bytes()).unwrap();
}

#[test]
fn rsa_csr() {
    let dir = tempfile::tempdir().unwrap();
    let (r, org) = setup(dir.path());
    let started = std::time::Instant::now();
    let csr = r
        .create_csr(&org, request(HOST, &[HOST], KeyType::Rsa2048))
        .unwrap();
    eprintln!("RSA 2048 CSR in {:?}", started.elapsed());
    assert_eq!(csr_key(&csr.csr_pem).1, "RSA 2048");
    let leaf = Ca::root("Public Root").sign_csr(&csr.csr_pem, |_| {});
    let done = server(r.complete_csr(&org, &csr.id, leaf.as_bytes()).unwrap());
    assert_eq!(done.cert.details.key_type, "RSA 2048");
}

#[test]
fn request_validation() {
    let dir = tempfile::tempdir().unwrap();
    let (r, org) = setup(dir.path());
    let bad = |req: CsrRequest| match r.create_csr(&org, req) {
        Err(Error::BadRequest(m)) => m,
        other => panic!("expected a 400, got {other:?}"),
    };
    bad(request("", &[HOST], KeyType::default()));
    bad(request("   ", &[HOST], KeyType::default()));
    bad(request(&"x".repeat(65), &[HOST], KeyType::default()));
    bad(request(HOST, &["not a name"], KeyType::default()));
    bad(request(
        HOST,
        &["-bad-.messaging.localhost"],
        KeyType::default(),
    ));
    assert!(bad(request("Acme Broker", &[], KeyType::default())).contains("sans"));
    let mut req = request(HOST, &[HOST], KeyType::default());
    req.subject.country = Some("Germany".into());
    bad(req);
    let mut req = request(HOST, &[HOST], KeyType::default());
    req.subject.email = Some("no-at-sign".into());
    bad(req);

    // Names that never cover the org's host are refused before a key is made.
    assert_eq!(
        rule_of(r.create_csr(
            &org,
            request("beta.messaging.localhost", &[], KeyType::default())
        )),
        Rule::HostnameMismatch
    );
    // A wildcard over other orgs' host names is not (docs/security.md).
    assert!(matches!(
        r.create_csr(
            &org,
            request(HOST, &["*.messaging.localhost"], KeyType::default())
        ),
        Err(Error::NameTaken(m)) if m.contains("*.messaging.localhost")
    ));
    // Wildcards under the org's own names and IP addresses are fine.
    let csr = r
        .create_csr(
            &org,
            request(
                HOST,
                &[HOST, "*.acme.messaging.localhost", "127.0.0.1"],
                KeyType::default(),
            ),
        )
        .unwrap();
    assert_eq!(
        csr.sans,
        vec![HOST, "*.acme.messaging.localhost", "127.0.0.1"]
    );

    let nope = OrgId::try_from("nope").unwrap();
    assert!(matches!(
        r.create_csr(&nope, request(HOST, &[], KeyType::default())),
        Err(Error::NotFound(_))
    ));
    let parsed: CsrRequest = serde_json::from_str(
        r#"{"subject":{"common_name":"x"},"sans":["x"],"key_type":"rsa-4096"}"#,
    )
    .unwrap();
    assert_eq!(parsed.key_type, KeyType::Rsa4096);
    assert!(serde_json::from_str::<CsrRequest>(
        r#"{"subject":{"common_name":"x"},"key_type":"dsa"}"#
    )
    .is_err());
}

#[test]
fn csrs_are_deleted_alone_or_with_their_org() {
    let dir = tempfile::tempdir().unwrap();
    let (r, org) = setup(dir.path());
    let a = r
        .create_csr(&org, request(HOST, &[], KeyType::default()))
        .unwrap();
    let b = r
        .create_csr(&org, request(HOST, &[], KeyType::default()))
        .unwrap();
    let ids: Vec<String> = r
        .list_csrs(&org)
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec![a.id.clone(), b.id.clone()], "oldest first");
    r.delete_csr(&org, &a.id).unwrap();
    assert!(matches!(r.get_csr(&org, &a.id), Err(Error::NotFound(_))));
    r.delete_org(&org).unwrap();
    r.create_org("acme", "").unwrap();
    assert!(
        r.list_csrs(&org).unwrap().is_empty(),
        "a new org of the same name starts clean"
    );
}
