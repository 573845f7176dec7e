//! Sessions and the packet bridge, in process: subscription refusals merged into the
//! engine's SUBACK, a forbidden publish closing the connection, and an org deleted and
//! created again starting with nothing of the old one in the engine.

mod harness;

use std::time::Duration;

use harness::Harness;
use rumqttc::{QoS, SubscribeReasonCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suback_answers_each_filter_in_order() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let app = acme.cert("a:dash");
    let mut c = acme.connect("a:acme:dash", Some(&app), None).await.unwrap();
    c.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("iot-2/type/+/id/+/evt/+/fmt/+".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("iot-2/cmd/+/fmt/+".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("iot-2/type/s/id/d/mon".into(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    let codes = loop {
        match tokio::time::timeout(Duration::from_secs(5), c.rx.recv()).await {
            Ok(Some(rumqttc::Packet::SubAck(a))) => break a.return_codes,
            Ok(Some(_)) => continue,
            _ => panic!("no SUBACK"),
        }
    };
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtMostOnce),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_publish_closes_only_that_session() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let dev = acme.cert("d:sensor:dev1");
    let app = acme.cert("a:dash");
    let mut a = acme.connect("a:acme:dash", Some(&app), None).await.unwrap();
    a.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let mut d = acme
        .connect("d:acme:sensor:dev1", Some(&dev), None)
        .await
        .unwrap();
    d.client
        .publish(
            "iot-2/type/sensor/id/dev2/evt/x/fmt/json",
            QoS::AtLeastOnce,
            false,
            "spoof",
        )
        .await
        .unwrap();
    assert!(d.wait_closed(Duration::from_secs(5)).await.is_some());
    assert!(a.wait_closed(Duration::from_millis(200)).await.is_none());
    assert_eq!(a.next_publish(Duration::from_millis(300)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_created_again_inherits_nothing_from_a_deleted_one() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let dev = acme.cert("d:sensor:dev1");
    let app = acme.cert("a:dash");

    // A retained event, and a persistent session with a command queued for it.
    let d = acme
        .connect("d:acme:sensor:dev1", Some(&dev), None)
        .await
        .unwrap();
    d.client
        .publish(
            "iot-2/evt/state/fmt/json",
            QoS::AtLeastOnce,
            true,
            "secret-state",
        )
        .await
        .unwrap();
    let mut opts = acme.options("d:acme:sensor:lock", Some(&acme.cert("d:sensor:lock")));
    opts.set_clean_session(false);
    let mut lock = harness::connect(opts).await.unwrap();
    lock.subscribe("iot-2/cmd/+/fmt/+").await;
    lock.client.disconnect().await.unwrap();
    lock.wait_closed(Duration::from_secs(5)).await;
    let mut a = acme.connect("a:acme:dash", Some(&app), None).await.unwrap();
    // The old tenant's state is there before the delete.
    a.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let (_, retained) = a
        .next_publish(Duration::from_secs(5))
        .await
        .expect("retained");
    assert_eq!(retained, b"secret-state");
    a.client
        .publish(
            "iot-2/type/sensor/id/lock/cmd/unlock/fmt/json",
            QoS::AtLeastOnce,
            false,
            "open",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    h.registry.delete_org(&acme.id).unwrap();
    // Give the purge time to run after the sessions closed.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let again = h.org("acme");
    let mut a = again
        .connect("a:acme:dash", Some(&again.cert("a:dash")), None)
        .await
        .unwrap();
    a.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    assert_eq!(
        a.next_publish(Duration::from_millis(500)).await,
        None,
        "the new org received the old one's retained message"
    );
    let mut opts = again.options("d:acme:sensor:lock", Some(&again.cert("d:sensor:lock")));
    opts.set_clean_session(false);
    let mut lock = harness::connect(opts).await.unwrap();
    assert!(
        !lock.session_present,
        "the old tenant's session was handed over"
    );
    assert_eq!(lock.next_publish(Duration::from_millis(500)).await, None);
}
