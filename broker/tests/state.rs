//! The broker's message state through real mTLS clients: persistent sessions (MQTT 5
//! expiry, queue bounds, QoS 0 while online), wills with their QoS and retain flag,
//! and the retained-bytes limit. (Restarts and `kill -9` are tested with the binary in
//! the top-level `tests/durable.rs`.)

mod harness;

use std::time::Duration;

use harness::{Client, Harness, TestOrg};
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet as P5};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{Packet, QoS};

const WAIT: Duration = Duration::from_secs(5);
const CMD: &str = "iot-2/type/lock/id/door1/cmd/unlock/fmt/json";

async fn persistent(org: &TestOrg, identity: &str, client_id: &str) -> Client {
    let cert = org.cert(identity);
    let mut opts = org.options(client_id, Some(&cert));
    opts.set_clean_session(false);
    harness::connect(opts).await.expect("connect")
}

async fn clean(org: &TestOrg, identity: &str, client_id: &str) -> Client {
    let cert = org.cert(identity);
    org.connect(client_id, Some(&cert), None)
        .await
        .expect("connect")
}

/// The door subscribes to its commands with a persistent session, then goes offline.
async fn door_offline(org: &TestOrg) {
    let mut door = persistent(org, "d:lock:door1", "d:acme:lock:door1").await;
    door.subscribe("iot-2/cmd/+/fmt/+").await;
    door.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Publishes QoS 1 messages and waits for every PUBACK.
async fn publish_acked(c: &mut Client, topic: &str, payloads: impl Iterator<Item = Vec<u8>>) {
    let mut n = 0;
    for p in payloads {
        c.client
            .publish(topic, QoS::AtLeastOnce, false, p)
            .await
            .expect("publish");
        n += 1;
    }
    while n > 0 {
        match tokio::time::timeout(WAIT, c.rx.recv()).await {
            Ok(Some(Packet::PubAck(_))) => n -= 1,
            Ok(Some(_)) => {}
            _ => panic!("{n} PUBACKs missing"),
        }
    }
}

async fn v5_event(el: &mut rumqttc::v5::EventLoop) -> Result<P5, String> {
    loop {
        match tokio::time::timeout(WAIT, el.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(p))) => return Ok(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{e:?}")),
            Err(_) => return Err("timeout".into()),
        }
    }
}

/// An MQTT 5 connection with `expiry` seconds of session expiry; its session-present.
async fn v5_connect(
    org: &TestOrg,
    identity: &str,
    client_id: &str,
    expiry: u32,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop, bool) {
    let cert = org.cert(identity);
    let mut opts =
        device_sim::client::mqtt_options_v5(&org.target, client_id, Some(&cert)).expect("opts");
    opts.set_clean_start(false);
    opts.set_connect_properties(ConnectProperties {
        session_expiry_interval: Some(expiry),
        ..Default::default()
    });
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
    let present = match v5_event(&mut el).await {
        Ok(P5::ConnAck(ack)) => ack.session_present,
        other => panic!("no CONNACK: {other:?}"),
    };
    (client, el, present)
}

#[tokio::test]
async fn an_mqtt5_session_lives_for_its_expiry_interval_and_no_longer() {
    let h = Harness::start().await;
    let org = h.org("acme");
    let (client, mut el, present) = v5_connect(&org, "d:lock:door1", "d:acme:lock:door1", 2).await;
    assert!(!present);
    client
        .subscribe("iot-2/cmd/+/fmt/+", Q5::AtLeastOnce)
        .await
        .unwrap();
    while !matches!(v5_event(&mut el).await, Ok(P5::SubAck(_))) {}
    client.disconnect().await.unwrap();
    let _ = v5_event(&mut el).await;

    let mut app = clean(&org, "a:ops", "a:acme:ops").await;
    publish_acked(&mut app, CMD, std::iter::once(b"while away".to_vec())).await;

    // Within the expiry: the session and its queued command are there.
    let (client, mut el, present) = v5_connect(&org, "d:lock:door1", "d:acme:lock:door1", 2).await;
    assert!(present, "within its expiry");
    match v5_event(&mut el).await {
        Ok(P5::Publish(p)) => assert_eq!(&p.payload[..], b"while away"),
        other => panic!("no queued command: {other:?}"),
    }
    client.disconnect().await.unwrap();
    let _ = v5_event(&mut el).await;

    // Past it: gone, and a command sent meanwhile was not kept for it.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    publish_acked(&mut app, CMD, std::iter::once(b"too late".to_vec())).await;
    let (_c, mut el, present) = v5_connect(&org, "d:lock:door1", "d:acme:lock:door1", 2).await;
    assert!(!present, "expired");
    assert!(
        !matches!(v5_event(&mut el).await, Ok(P5::Publish(_))),
        "nothing queued for an expired session"
    );
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_messages_and_counts_them() {
    let h = Harness::start().await;
    let org = h.org("acme");
    door_offline(&org).await;

    let mut app = clean(&org, "a:ops", "a:acme:ops").await;
    publish_acked(&mut app, CMD, (0..1005).map(|i| i.to_string().into_bytes())).await;

    let mut door = persistent(&org, "d:lock:door1", "d:acme:lock:door1").await;
    assert!(door.session_present);
    let first = door.next_publish(WAIT).await.expect("queued commands");
    assert_eq!(first.1, b"5", "the 5 oldest were dropped");
    let mut got = 1;
    while door
        .next_publish(Duration::from_millis(500))
        .await
        .is_some()
    {
        got += 1;
    }
    assert_eq!(got, 1000, "the queue holds 1,000");
    let metrics = h.broker.metrics_text();
    assert!(
        metrics.contains(r#"certmq_dropped_total{org="acme",reason="queue_full"} 5"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_online_persistent_session_gets_qos0_and_its_wills_keep_qos_and_retain() {
    let h = Harness::start().await;
    let org = h.org("acme");
    let mut app = persistent(&org, "a:dash", "a:acme:dash").await;
    app.client
        .subscribe("iot-2/type/+/id/+/evt/+/fmt/+", QoS::ExactlyOnce)
        .await
        .unwrap();
    while !matches!(
        tokio::time::timeout(WAIT, app.rx.recv()).await,
        Ok(Some(Packet::SubAck(_)))
    ) {}

    // A device with a retained QoS 1 will; it publishes at QoS 0 and then drops.
    let cert = org.cert("d:sensor:s1");
    let mut opts = org.options("d:acme:sensor:s1", Some(&cert));
    opts.set_last_will(rumqttc::LastWill::new(
        "iot-2/evt/gone/fmt/txt",
        "bye",
        QoS::AtLeastOnce,
        true,
    ));
    let dev = harness::connect(opts).await.expect("connect");
    dev.client
        .publish("iot-2/evt/t/fmt/txt", QoS::AtMostOnce, false, "q0")
        .await
        .unwrap();
    let (topic, payload) = app.next_publish(WAIT).await.expect("QoS 0 while online");
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("iot-2/type/sensor/id/s1/evt/t/fmt/txt", &b"q0"[..])
    );

    // Ends without DISCONNECT: the will goes out at QoS 1, retained.
    h.broker.sessions().kick(
        &org.id,
        "d:acme:sensor:s1",
        certmq_broker::CloseReason::Kicked,
    );
    let will = loop {
        match tokio::time::timeout(WAIT, app.rx.recv()).await {
            Ok(Some(Packet::Publish(p))) if p.topic.ends_with("/gone/fmt/txt") => break p,
            Ok(Some(_)) => {}
            other => panic!("no will: {other:?}"),
        }
    };
    assert_eq!(&will.payload[..], b"bye");
    assert_eq!(will.qos, QoS::AtLeastOnce, "the will's own QoS");
    let retained = h.broker.retained(&org.id);
    assert_eq!(retained.len(), 1, "{retained:?}");
    assert_eq!(
        retained[0].topic,
        "iot-2/type/sensor/id/s1/evt/gone/fmt/txt"
    );
    assert_eq!(retained[0].qos, 1);
}

#[tokio::test]
async fn retained_bytes_are_bounded_per_org() {
    let h = Harness::start().await;
    let org = h.org("acme");
    let payload = vec![b'x'; 1_000_000];
    let (mut stored, mut refused) = (0, 0);
    let mut dev = clean(&org, "d:sensor:s1", "d:acme:sensor:s1").await;
    // 200 × 1 MB retained: 67 fit under the 64 MiB default, each one after is refused
    // and closes the connection.
    for i in 0..200 {
        dev.client
            .publish(
                format!("iot-2/evt/e{i}/fmt/bin"),
                QoS::AtLeastOnce,
                true,
                payload.clone(),
            )
            .await
            .unwrap();
        let acked = loop {
            match tokio::time::timeout(WAIT, dev.rx.recv()).await {
                Ok(Some(Packet::PubAck(_))) => break true,
                Ok(Some(_)) => {}
                _ => break false,
            }
        };
        if acked {
            stored += 1;
        } else {
            refused += 1;
            assert!(dev.wait_closed(WAIT).await.is_some(), "closed");
            dev = clean(&org, "d:sensor:s1", "d:acme:sensor:s1").await;
        }
        if refused == 5 {
            break;
        }
    }
    assert_eq!(stored, 67);
    let retained = h.broker.retained(&org.id);
    assert_eq!(retained.len(), 67);
    assert!(retained.iter().map(|r| r.bytes).sum::<usize>() <= 64 << 20);
    let metrics = h.broker.metrics_text();
    assert!(
        metrics.contains(r#"certmq_limit_refusals_total{org="acme",limit="max_retained_bytes"} 5"#),
        "{metrics}"
    );
    // Replacing a retained message with a smaller one, or clearing it, is allowed.
    dev.client
        .publish("iot-2/evt/e0/fmt/bin", QoS::AtLeastOnce, true, Vec::new())
        .await
        .unwrap();
    let cleared = loop {
        match tokio::time::timeout(WAIT, dev.rx.recv()).await {
            Ok(Some(Packet::PubAck(_))) => break true,
            Ok(Some(_)) => {}
            _ => break false,
        }
    };
    assert!(cleared);
    assert_eq!(h.broker.retained(&org.id).len(), 66);
}

#[tokio::test]
async fn the_org_limits_bound_its_queues_and_retained_messages() {
    let h = Harness::start().await;
    let org = h.org("acme");
    let limits = registry::OrgLimits {
        max_queued_messages_per_session: 3,
        max_retained_messages: 1,
        ..Default::default()
    };
    h.registry
        .set_org_limits(&org.id, limits, true)
        .expect("limits");
    door_offline(&org).await;
    let mut app = clean(&org, "a:ops", "a:acme:ops").await;
    publish_acked(&mut app, CMD, (0..10).map(|i| i.to_string().into_bytes())).await;
    let mut door = persistent(&org, "d:lock:door1", "d:acme:lock:door1").await;
    let mut got = Vec::new();
    while let Some((_, p)) = door.next_publish(Duration::from_millis(500)).await {
        got.push(String::from_utf8(p).unwrap());
    }
    assert_eq!(got, ["7", "8", "9"], "the newest 3");

    let mut dev = clean(&org, "d:sensor:s1", "d:acme:sensor:s1").await;
    dev.client
        .publish("iot-2/evt/a/fmt/txt", QoS::AtLeastOnce, true, "1")
        .await
        .unwrap();
    dev.client
        .publish("iot-2/evt/b/fmt/txt", QoS::AtLeastOnce, true, "2")
        .await
        .unwrap();
    assert!(
        dev.wait_closed(WAIT).await.is_some(),
        "the second is refused"
    );
    assert_eq!(h.broker.retained(&org.id).len(), 1);
}

#[tokio::test]
async fn mqtt5_subscription_options_are_honoured() {
    use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
    let h = Harness::start().await;
    let org = h.org("acme");
    let mut dev = clean(&org, "d:sensor:s1", "d:acme:sensor:s1").await;
    dev.client
        .publish("iot-2/evt/state/fmt/txt", QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    while !matches!(
        tokio::time::timeout(WAIT, dev.rx.recv()).await,
        Ok(Some(Packet::PubAck(_)))
    ) {}

    // An application: no-local on one filter, retain-as-published and "retained only
    // on a new subscription" on another, "never" on a third.
    let (app, mut el, _) = v5_connect(&org, "a:dash", "a:acme:dash", 0).await;
    let events = "iot-2/type/+/id/+/evt/+/fmt/+";
    let mut keep = Filter::new(events, Q5::AtLeastOnce);
    keep.preserve_retain = true;
    keep.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    let mut mine = Filter::new("iot-2/type/sensor/id/s1/evt/+/fmt/+", Q5::AtLeastOnce);
    mine.retain_forward_rule = RetainForwardRule::Never;
    app.subscribe_many([keep.clone(), mine]).await.unwrap();
    let mut retained = 0;
    loop {
        match v5_event(&mut el).await {
            Ok(P5::Publish(p)) => {
                assert!(p.retain, "a retained message for a new subscription");
                retained += 1;
            }
            Ok(P5::SubAck(_)) => {}
            Err(_) => break,
            Ok(_) => {}
        }
        if retained > 1 {
            panic!("the `never` filter got the retained message too");
        }
        if retained == 1 {
            // Anything else would arrive within the same burst.
            match tokio::time::timeout(Duration::from_millis(300), el.poll()).await {
                Ok(Ok(rumqttc::v5::Event::Incoming(P5::Publish(_)))) => {
                    panic!("a second retained copy")
                }
                _ => break,
            }
        }
    }
    assert_eq!(retained, 1);
    // Subscribing again to a filter it holds: no retained message this time.
    app.subscribe_many([keep]).await.unwrap();
    loop {
        match v5_event(&mut el).await {
            Ok(P5::SubAck(_)) => break,
            Ok(P5::Publish(_)) => panic!("retained message sent for a held filter"),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        !matches!(
            tokio::time::timeout(Duration::from_millis(300), el.poll()).await,
            Ok(Ok(rumqttc::v5::Event::Incoming(P5::Publish(_))))
        ),
        "no retained message for a filter already held"
    );
    // A live retained publish keeps its retain flag under retain-as-published.
    dev.client
        .publish("iot-2/evt/state/fmt/txt", QoS::AtLeastOnce, true, "off")
        .await
        .unwrap();
    let p = loop {
        match v5_event(&mut el).await {
            Ok(P5::Publish(p)) => break p,
            Ok(_) => {}
            Err(e) => panic!("no live message: {e}"),
        }
    };
    assert_eq!(&p.payload[..], b"off");
    assert!(p.retain, "retain as published");
}

#[tokio::test]
async fn unreadable_records_are_skipped_and_the_rest_loads() {
    use registry::store::{Op, Store};
    let h = Harness::start().await;
    let org = h.org("acme");
    door_offline(&org).await;
    let mut app = clean(&org, "a:ops", "a:acme:ops").await;
    publish_acked(&mut app, CMD, (0..3).map(|i| i.to_string().into_bytes())).await;
    let mut dev = clean(&org, "d:sensor:s1", "d:acme:sensor:s1").await;
    dev.client
        .publish("iot-2/evt/state/fmt/txt", QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    while !matches!(
        tokio::time::timeout(WAIT, dev.rx.recv()).await,
        Ok(Some(Packet::PubAck(_)))
    ) {}
    h.broker.sync_state(Duration::from_secs(5));

    // Damage: a truncated queued message, a retained record of garbage, a session
    // record that is not JSON, and a key of no known kind.
    let queued = h.store.scan("msg/acme/q/").unwrap();
    assert_eq!(queued.len(), 3, "three commands queued on disk");
    let (first_key, first) = &queued[0];
    h.store
        .apply(vec![
            Op::Put(first_key.clone(), first[..first.len() / 2].to_vec()),
            Op::Put("msg/acme/r//tenants/acme/x".into(), b"garbage".to_vec()),
            Op::Put("msg/acme/s/d:acme:lock:ghost".into(), b"{not json".to_vec()),
            Op::Put("msg/acme/zz/what".into(), b"?".to_vec()),
        ])
        .unwrap();

    // A broker started over this store loads everything else.
    let restarted = certmq_broker::Broker::new(h.registry.clone(), Default::default())
        .expect("starts despite damaged records");
    let retained = restarted.retained(&org.id);
    assert_eq!(retained.len(), 1, "the good retained message: {retained:?}");
    assert_eq!(
        retained[0].topic,
        "iot-2/type/sensor/id/s1/evt/state/fmt/txt"
    );
    assert_eq!(
        restarted.state_counts(),
        (1, 2),
        "one persistent session (not the ghost), its two intact commands"
    );
}

#[tokio::test]
async fn a_burst_of_qos0_messages_larger_than_the_window_is_delivered_whole() {
    let h = Harness::start().await;
    let org = h.org("acme");
    let mut app = clean(&org, "a:dash", "a:acme:dash").await;
    app.client
        .subscribe("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtMostOnce)
        .await
        .unwrap();
    while !matches!(
        tokio::time::timeout(WAIT, app.rx.recv()).await,
        Ok(Some(Packet::SubAck(_)))
    ) {}
    // 2,500 QoS 0 events, more than one delivery batch (1,000), then nothing more: the
    // rest must not wait for a next publish.
    let dev = clean(&org, "d:sensor:s1", "d:acme:sensor:s1").await;
    for i in 0..2500 {
        dev.client
            .publish("iot-2/evt/e/fmt/txt", QoS::AtMostOnce, false, i.to_string())
            .await
            .unwrap();
    }
    let mut got = 0;
    while app.next_publish(Duration::from_secs(2)).await.is_some() {
        got += 1;
    }
    assert_eq!(got, 2500);
}

#[tokio::test]
async fn connection_gauges_report_zero_instead_of_vanishing() {
    let h = Harness::start().await;
    let org = h.org("acme");
    let metrics = h.broker.metrics_text();
    for kind in ["device", "gateway", "app"] {
        assert!(
            metrics.contains(&format!(
                "certmq_connections{{org=\"acme\",kind=\"{kind}\"}} 0"
            )),
            "{metrics}"
        );
    }
    let dev = clean(&org, "d:sensor:s1", "d:acme:sensor:s1").await;
    let metrics = h.broker.metrics_text();
    assert!(metrics.contains("certmq_connections{org=\"acme\",kind=\"device\"} 1"));
    dev.client.disconnect().await.unwrap();
    let mut zero = false;
    for _ in 0..50 {
        if h.broker
            .metrics_text()
            .contains("certmq_connections{org=\"acme\",kind=\"device\"} 0")
        {
            zero = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(zero, "back to 0, still reported");
}
