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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unadmitted_client_cannot_make_the_broker_buffer_a_large_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let acme = h.org("acme");
    let dev = acme.cert("d:sensor:dev1");
    let config = device_sim::client::tls_config(&acme.target, Some(&dev)).unwrap();
    let tcp = tokio::net::TcpStream::connect(h.mqtt).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(acme.target.sni.clone()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    // A CONNECT announcing 1 MiB (the packet size limit): more than an unadmitted
    // client may send. Its first 64 KiB + a little are refused before it ends.
    let mut header = vec![0x10];
    let mut len = 1024 * 1024 - 16;
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        header.push(b);
        if len == 0 {
            break;
        }
    }
    header.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
    tls.write_all(&header).await.unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    let mut sent = 0;
    let mut closed = false;
    while sent < 512 * 1024 {
        if tls.write_all(&chunk).await.is_err() {
            closed = true;
            break;
        }
        sent += chunk.len();
    }
    if !closed {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
        closed = matches!(r, Ok(Ok(0)) | Ok(Err(_)));
    }
    // (The writes may all succeed into socket buffers; what matters is that the broker
    // closes before the CONNECT is complete, instead of buffering up to 1 MiB of it
    // until the CONNECT timeout.)
    assert!(closed, "the broker kept reading a {sent}-byte CONNECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalable_app_instances_share_live_events_but_get_no_retained_ones() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let dev = acme.cert("d:sensor:dev1");
    let app = acme.cert("a:dash");
    let d = acme
        .connect("d:acme:sensor:dev1", Some(&dev), None)
        .await
        .unwrap();
    d.client
        .publish(
            "iot-2/evt/state/fmt/json",
            QoS::AtLeastOnce,
            true,
            "retained",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A plain application gets the retained event on subscribing ...
    let mut plain = acme.connect("a:acme:dash", Some(&app), None).await.unwrap();
    plain.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    assert!(plain.next_publish(Duration::from_secs(2)).await.is_some());
    // ... a scalable instance (a shared subscription) does not: MQTT 5 sends no
    // retained messages to shared subscriptions, and Watson delivers none at all.
    let mut instance = acme
        .connect("A:acme:dash:i1", Some(&app), None)
        .await
        .unwrap();
    instance.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    assert_eq!(
        instance.next_publish(Duration::from_millis(500)).await,
        None
    );
    // Live events still reach it.
    d.client
        .publish("iot-2/evt/temp/fmt/json", QoS::AtLeastOnce, false, "live")
        .await
        .unwrap();
    let (topic, _) = instance
        .next_publish(Duration::from_secs(2))
        .await
        .expect("a live event");
    assert_eq!(topic, "iot-2/type/sensor/id/dev1/evt/temp/fmt/json");
}
