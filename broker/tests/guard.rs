//! Per-source limits before admission, through real sockets: an address cannot hold
//! more than its share of unadmitted connections, and wrong device tokens lock the
//! identity out for a while.

mod harness;

use std::time::Duration;

use certmq_broker::{BrokerConfig, GuardConfig};
use harness::{Harness, Refused};
use registry::{Level, SecurityPolicy};
use rumqttc::ConnectReturnCode;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_unadmitted_connections() {
    let h = Harness::start_with(BrokerConfig {
        guard: GuardConfig {
            max_pending_per_ip: 4,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let acme = h.org("acme");
    // Four silent sockets (no ClientHello) take this address's places...
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tokio::net::TcpStream::connect(h.mqtt).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... so the fifth is closed at once, without a handshake.
    let mut fifth = tokio::net::TcpStream::connect(h.mqtt).await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    // When they go, a device from the same address connects again.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dev = acme.cert("d:sensor:dev1");
    acme.connect("d:acme:sensor:dev1", Some(&dev), None)
        .await
        .expect("the address has places again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_lock_the_identity_out() {
    let h = Harness::start_with(BrokerConfig {
        guard: GuardConfig {
            token_failures_per_identity: 3,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let acme = h.org("acme");
    h.registry
        .set_security_policy(
            &acme.id,
            SecurityPolicy {
                level: Level::TlsClientCertOrToken,
                ..Default::default()
            },
        )
        .unwrap();
    let token = "the-right-token-0123456789";
    h.registry
        .set_device_token(&acme.id, "d:sensor:dev1", Some(token.into()))
        .unwrap();
    let bad = Refused::Connack(ConnectReturnCode::BadUserNamePassword);
    for i in 0..3 {
        let r = acme
            .connect("d:acme:sensor:dev1", None, Some(&format!("guess-{i:016}")))
            .await;
        assert_eq!(r.err(), Some(bad.clone()));
    }
    // Now even the right token is refused, unchecked, for the rest of the window.
    let r = acme.connect("d:acme:sensor:dev1", None, Some(token)).await;
    assert_eq!(r.err(), Some(bad));
    // Another identity is not affected.
    h.registry
        .set_device_token(&acme.id, "d:sensor:dev2", Some(token.into()))
        .unwrap();
    acme.connect("d:acme:sensor:dev2", None, Some(token))
        .await
        .expect("another identity logs in");
}
