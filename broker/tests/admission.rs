//! Admission decided once: a real CONNECT over mTLS and the authorization dry run must
//! agree for every stage and every security level, and a policy change re-judges live
//! sessions with the same decision.

mod harness;

use std::time::Duration;

use harness::{Harness, Refused};
use registry::live::{AuthzRequest, Stage};
use registry::{Level, SecurityPolicy};
use rumqttc::ConnectReturnCode;

const TOKEN: &str = "0123456789abcdef-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_dry_run_agree_at_every_stage_and_level() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let other = h.org("other");
    h.registry
        .set_device_token(&acme.id, "d:sensor:dev1", Some(TOKEN.into()))
        .unwrap();
    h.registry
        .block_device(&acme.id, "d:sensor:bad", "stolen")
        .unwrap();
    let dev1 = acme.cert("d:sensor:dev1");
    let bad = acme.cert("d:sensor:bad");
    let anonymous = acme.cert("just a name");
    let foreign = other.cert("d:sensor:dev1");

    // (certificate, its name in messages, client id, token)
    let cases = [
        (&dev1, "dev1", "d:acme:sensor:dev1", None),
        (&dev1, "dev1", "d:acme:sensor:dev1", Some(TOKEN)),
        (
            &dev1,
            "dev1",
            "d:acme:sensor:dev1",
            Some("wrong-token-0000000"),
        ),
        (&dev1, "dev1", "d:acme:sensor:dev2", None),
        (&dev1, "dev1", "d:other:sensor:dev1", None),
        (&bad, "blocked", "d:acme:sensor:bad", None),
        (&anonymous, "no identity", "d:acme:sensor:dev1", None),
        (&foreign, "other org's CA", "d:acme:sensor:dev1", None),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for level in [
        Level::TlsClientCert,
        Level::TlsClientCertOrToken,
        Level::TlsToken,
        Level::TlsOptional,
    ] {
        let policy = SecurityPolicy {
            level,
            ..Default::default()
        };
        h.registry.set_security_policy(&acme.id, policy).unwrap();
        for (cert, name, client_id, token) in cases {
            let what = format!("{level:?} {name} {client_id} token={token:?}");
            let dry = h
                .broker
                .authz_check(
                    &acme.id,
                    &AuthzRequest {
                        certificate: cert.chain_pem.clone(),
                        client_id: Some(client_id.into()),
                        token: token.map(str::to_owned),
                        ..Default::default()
                    },
                )
                .unwrap();
            let connect = acme.connect(client_id, Some(cert), token).await;
            seen.insert(dry.stage.as_str());
            match connect {
                Ok(c) => {
                    assert!(
                        dry.allowed,
                        "{what}: CONNECT admitted, dry run said {dry:?}"
                    );
                    let _ = c.client.disconnect().await;
                }
                Err(Refused::Connack(ConnectReturnCode::BadUserNamePassword)) => {
                    assert_eq!(dry.stage, Stage::SecurityLevel, "{what}: {dry:?}");
                    assert!(token.is_some_and(|t| t != TOKEN), "{what}");
                }
                Err(Refused::Connack(ConnectReturnCode::NotAuthorized)) => {
                    assert!(!dry.allowed, "{what}: CONNECT refused, dry run allowed");
                    assert!(
                        matches!(
                            dry.stage,
                            Stage::Identity
                                | Stage::ClientId
                                | Stage::SecurityLevel
                                | Stage::Blocked
                        ),
                        "{what}: {dry:?}"
                    );
                }
                Err(other) => {
                    // Refused during the handshake: the certificate stage.
                    assert_eq!(
                        dry.stage,
                        Stage::Certificate,
                        "{what}: {other:?} vs {dry:?}"
                    );
                }
            }
        }
    }
    // The matrix reached every admission stage.
    for stage in [
        "admitted",
        "certificate",
        "identity",
        "client_id",
        "security_level",
        "blocked",
    ] {
        assert!(seen.contains(stage), "no case ended at {stage}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_alone_is_refused_at_tls_token_by_both() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    h.registry
        .set_security_policy(
            &acme.id,
            SecurityPolicy {
                level: Level::TlsToken,
                ..Default::default()
            },
        )
        .unwrap();
    let dev1 = acme.cert("d:sensor:dev1");
    let dry = h
        .broker
        .authz_check(
            &acme.id,
            &AuthzRequest {
                certificate: dev1.chain_pem.clone(),
                client_id: Some("d:acme:sensor:dev1".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!dry.allowed);
    assert_eq!(dry.stage, Stage::SecurityLevel);
    assert!(dry.reason.contains("tls_token"), "{}", dry.reason);
    let r = acme.connect("d:acme:sensor:dev1", Some(&dev1), None).await;
    assert_eq!(
        r.err(),
        Some(Refused::Connack(ConnectReturnCode::NotAuthorized))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_level_closes_sessions_it_no_longer_admits() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    h.registry
        .set_device_token(&acme.id, "d:sensor:tok", Some(TOKEN.into()))
        .unwrap();
    let plain = acme.cert("d:sensor:dev1");
    let tok = acme.cert("d:sensor:tok");
    let mut by_cert = acme
        .connect("d:acme:sensor:dev1", Some(&plain), None)
        .await
        .unwrap();
    let mut by_both = acme
        .connect("d:acme:sensor:tok", Some(&tok), Some(TOKEN))
        .await
        .unwrap();
    h.registry
        .set_security_policy(
            &acme.id,
            SecurityPolicy {
                level: Level::TlsToken,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        by_cert.wait_closed(Duration::from_secs(5)).await.is_some(),
        "a certificate-only session must close at tls_token"
    );
    assert!(
        by_both
            .wait_closed(Duration::from_millis(500))
            .await
            .is_none(),
        "a session admitted with a valid token stays"
    );
    // Replacing the token withdraws it from the live session too.
    h.registry
        .set_device_token(&acme.id, "d:sensor:tok", None)
        .unwrap();
    assert!(by_both.wait_closed(Duration::from_secs(5)).await.is_some());
}
