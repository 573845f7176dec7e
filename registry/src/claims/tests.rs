//! Host names belong to the first org that claims them (docs/security.md): custom
//! domains, and the DNS names of an org's active server certificate.

use std::sync::{Arc, Barrier};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use time::{Duration, OffsetDateTime};

use crate::error::Error;
use crate::names::OrgId;
use crate::registry::tests::registry;
use crate::registry::Registry;
use crate::server_upload::UploadServerCert;

/// A self-signed server leaf for `sans`, with its key.
fn leaf(sans: &[&str]) -> UploadServerCert {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, sans[0]);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(90);
    let key = KeyPair::generate().unwrap();
    UploadServerCert::Pem {
        certificate: p.self_signed(&key).unwrap().pem(),
        private_key: key.serialize_pem(),
        passphrase: None,
    }
}

/// Uploads a leaf for `sans` to `org`; its id.
fn upload(r: &Registry, org: &OrgId, sans: &[&str]) -> Result<String, Error> {
    r.upload_server_cert(org, leaf(sans)).map(|c| c.cert.id)
}

fn taken(result: Result<impl std::fmt::Debug, Error>, host: &str) {
    match result {
        Err(Error::NameTaken(m)) => {
            assert!(m.contains(host), "the message names {host}: {m}");
            assert!(
                m.contains("another org"),
                "the message says who in general: {m}"
            );
        }
        other => panic!("{host}: expected name_taken, got {other:?}"),
    }
}

fn domains(r: &Registry, org: &OrgId, d: &[&str]) -> Result<(), Error> {
    r.set_domains(org, &d.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .map(drop)
}

#[test]
fn a_host_name_belongs_to_the_first_org_that_claims_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    let acme = r.create_org("acme", "").unwrap().id;
    let beta = r.create_org("beta", "").unwrap().id;
    // Uploaded by beta while nobody claims `late.test`; acme activates it first.
    let beta_late = upload(&r, &beta, &["beta.messaging.localhost", "late.test"]).unwrap();

    domains(&r, &acme, &["iot.example.com"]).unwrap();
    let own = upload(
        &r,
        &acme,
        &[
            "acme.messaging.localhost",
            "mqtt.acme.test",
            "late.test",
            "*.iot.example.com",
        ],
    )
    .unwrap();
    r.activate_server_cert(&acme, &own).unwrap();
    // An org's own names never conflict with themselves.
    domains(&r, &acme, &["iot.example.com", "acme.test"]).unwrap();

    // Beta's certificates may not name what acme owns: its certificate names, its base
    // host name, names in its custom domain, and wildcards covering any of those.
    for host in [
        "mqtt.acme.test",
        "late.test",
        "acme.messaging.localhost",
        "acme.iot.example.com",
        "x.iot.example.com",
        "iot.example.com",
        "*.iot.example.com",
        "*.example.com",
        "*.acme.test",
        "*.messaging.localhost",
    ] {
        taken(upload(&r, &beta, &["beta.messaging.localhost", host]), host);
    }
    // Nor may it register acme's domains, or a domain holding acme's certificate names.
    for d in [
        "iot.example.com",
        "a.iot.example.com",
        "example.com",
        "acme.test",
    ] {
        taken(domains(&r, &beta, &[d]), d);
    }
    taken(domains(&r, &beta, &["mqtt.acme.test"]), "mqtt.acme.test");
    // A certificate uploaded before acme claimed the name cannot be activated now.
    taken(r.activate_server_cert(&beta, &beta_late), "late.test");

    // The message never names the other org.
    match upload(
        &r,
        &beta,
        &["beta.messaging.localhost", "x.iot.example.com"],
    ) {
        Err(e) => assert!(!e.to_string().contains("acme"), "{e}"),
        Ok(_) => panic!("accepted"),
    }
    // Acme kept everything.
    for host in ["mqtt.acme.test", "late.test", "acme.iot.example.com"] {
        assert_eq!(r.org_for_host(host), Some(acme.clone()), "{host}");
    }
    assert!(r.domains(&beta).unwrap().is_empty());

    // Names nobody owns stay free, and a deleted org's names are released.
    let b = upload(&r, &beta, &["beta.messaging.localhost", "mqtt.beta.test"]).unwrap();
    r.activate_server_cert(&beta, &b).unwrap();
    assert_eq!(r.org_for_host("mqtt.beta.test"), Some(beta.clone()));
    r.delete_org(&acme).unwrap();
    r.activate_server_cert(&beta, &beta_late).unwrap();
    assert_eq!(r.org_for_host("late.test"), Some(beta.clone()));
    domains(&r, &beta, &["iot.example.com"]).unwrap();
}

#[test]
fn concurrent_claims_of_one_name_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let r = Arc::new(registry(dir.path()));
    for round in 0..4 {
        let shared = format!("shared{round}.test");
        let orgs: Vec<(OrgId, String)> = ["a", "b", "c"]
            .iter()
            .map(|o| {
                let id = r.create_org(&format!("{o}{round}"), "").unwrap().id;
                let own = format!("{id}.messaging.localhost");
                let cert = upload(&r, &id, &[&own, &shared]).unwrap();
                (id, cert)
            })
            .collect();
        let barrier = Arc::new(Barrier::new(orgs.len() + 1));
        let mut handles = Vec::new();
        for (org, cert) in orgs.clone() {
            let (r, barrier) = (r.clone(), barrier.clone());
            handles.push(std::thread::spawn(move || {
                barrier.wait();
                r.activate_server_cert(&org, &cert).is_ok()
            }));
        }
        // A fourth contender claims the name as a custom domain at the same time.
        let d = r.create_org(&format!("d{round}"), "").unwrap().id;
        let (r2, b2, s2) = (r.clone(), barrier.clone(), shared.clone());
        handles.push(std::thread::spawn(move || {
            b2.wait();
            r2.set_domains(&d, &[s2]).is_ok()
        }));
        let won: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
    }
}
