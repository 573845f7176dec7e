//! Per-org limits, in process with real clients over mTLS: connections refused over
//! `max_connections` (v5 CONNACK 0x97, 3.1.1 rc 3) but takeovers admitted, an
//! oversized PUBLISH closing the connection (v5 DISCONNECT 0x95), SUBSCRIBE filters over
//! `max_subscriptions_per_session` refused one by one, Receive Maximum advertised and
//! enforced, limit changes applying to the next connection or packet, and the refusals
//! counted in the metrics.

mod harness;

use std::time::Duration;

use harness::{Harness, Refused, TestOrg};
use registry::{LimitsUpdate, OrgId, Registry};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as Rc5, DisconnectReasonCode, Packet as P5, SubscribeReasonCode as Sub5,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};

const WAIT: Duration = Duration::from_secs(5);

/// Lowers (or, as the platform, raises) `org`'s limits.
fn set(registry: &Registry, org: &OrgId, update: LimitsUpdate) {
    registry
        .update_org_limits(org, update, true)
        .expect("limits");
}

/// A v5 client of `org` as `identity` (`d:<type>:<id>` or `a:<app>`), its event loop
/// polled in the background: what it says comes out of the receiver, up to its end.
fn v5(org: &TestOrg, identity: &str) -> (rumqttc::v5::AsyncClient, Events5) {
    let cert = org.cert(identity);
    let client_id = match identity.split_once(':') {
        Some(("d", rest)) => format!("d:{}:{rest}", org.id),
        Some(("a", app)) => format!("a:{}:{app}", org.id),
        _ => panic!("identity {identity}"),
    };
    let opts = device_sim::client::mqtt_options_v5(&org.target, &client_id, Some(&cert))
        .expect("v5 options");
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let n = next5(&mut el).await;
            let end = !matches!(n, Next5::Packet(_));
            if tx.send(n).is_err() || end {
                return;
            }
        }
    });
    (client, Events5(rx))
}

/// What a v5 client's event loop said, in order.
struct Events5(tokio::sync::mpsc::UnboundedReceiver<Next5>);

impl Events5 {
    async fn next(&mut self) -> Next5 {
        match tokio::time::timeout(WAIT, self.0.recv()).await {
            Ok(Some(n)) => n,
            _ => Next5::Closed("no more events".into()),
        }
    }
}

/// What a v5 event loop said next: a packet, or how it ended (the reason code of a
/// server DISCONNECT, a refused CONNACK's code, or the error in words).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // A test helper; packets are moved once.
enum Next5 {
    Packet(P5),
    ServerDisconnect(DisconnectReasonCode),
    Refused(Rc5),
    #[allow(dead_code)] // Read through Debug in failure messages.
    Closed(String),
}

async fn next5(el: &mut rumqttc::v5::EventLoop) -> Next5 {
    use rumqttc::v5::{ConnectionError, Event, StateError};
    let r = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(P5::Disconnect(d))) => {
                    return Next5::ServerDisconnect(d.reason_code)
                }
                Ok(Event::Incoming(p)) => return Next5::Packet(p),
                Ok(Event::Outgoing(_)) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Next5::Refused(code),
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return Next5::ServerDisconnect(reason_code),
                Err(e) => return Next5::Closed(format!("{e:?}")),
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| Next5::Closed("timed out".into()))
}

/// The value of the counter line with all of `labels` in `metrics`, 0 if absent.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn refusals(h: &Harness, org: &str, limit: &str) -> u64 {
    counter(
        &h.broker.metrics_text(),
        "certmq_limit_refusals_total",
        &[&format!("org=\"{org}\""), &format!("limit=\"{limit}\"")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_takeovers_are_not() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    let beta = h.org("beta");
    set(
        &h.registry,
        &acme.id,
        LimitsUpdate {
            max_connections: Some(2),
            ..Default::default()
        },
    );
    let connect = |id: &'static str| {
        let acme = &acme;
        async move {
            let cert = acme.cert(&format!("d:sensor:{id}"));
            acme.connect(&format!("d:acme:sensor:{id}"), Some(&cert), None)
                .await
        }
    };
    let _one = connect("one").await.expect("first connection");
    let _two = connect("two").await.expect("second connection");

    // 3.1.1: CONNACK 3 (server unavailable), then closed.
    assert_eq!(
        connect("three").await.err(),
        Some(Refused::Connack(ConnectReturnCode::ServiceUnavailable))
    );
    // v5: CONNACK 0x97 (quota exceeded).
    let (_c, mut el) = v5(&acme, "d:sensor:four");
    match el.next().await {
        Next5::Refused(code) => assert_eq!(code, Rc5::QuotaExceeded),
        other => panic!("v5 CONNECT over the limit: {other:?}"),
    }
    assert_eq!(refusals(&h, "acme", "max_connections"), 2);

    // Taking over a live client id adds no session: admitted at the limit.
    let mut again = connect("one").await.expect("takeover at the limit");
    // Another org is not affected.
    let b = beta.cert("d:sensor:one");
    beta.connect("d:beta:sensor:one", Some(&b), None)
        .await
        .expect("beta");

    // Raised: the next connection is admitted.
    set(
        &h.registry,
        &acme.id,
        LimitsUpdate {
            max_connections: Some(3),
            ..Default::default()
        },
    );
    let _three = connect("three").await.expect("after raising the limit");

    // Lowered below the live count: nobody is closed, new connections are refused.
    h.registry
        .update_org_limits(
            &acme.id,
            LimitsUpdate {
                max_connections: Some(1),
                ..Default::default()
            },
            false,
        )
        .expect("lowering");
    assert_eq!(again.wait_closed(Duration::from_millis(300)).await, None);
    assert_eq!(h.broker.sessions().count(&acme.id), 3);
    assert_eq!(
        connect("five").await.err(),
        Some(Refused::Connack(ConnectReturnCode::ServiceUnavailable))
    );
    assert_eq!(refusals(&h, "acme", "max_connections"), 3);
    assert_eq!(refusals(&h, "beta", "max_connections"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_publish_closes_the_connection() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    set(
        &h.registry,
        &acme.id,
        LimitsUpdate {
            max_message_bytes: Some(100),
            ..Default::default()
        },
    );
    let app = acme.cert("a:dash");
    let mut a = acme.connect("a:acme:dash", Some(&app), None).await.unwrap();
    a.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;

    // v5: at the limit it is delivered; one byte over, DISCONNECT 0x95 and closed.
    let (c, mut el) = v5(&acme, "d:sensor:v5");
    assert!(matches!(el.next().await, Next5::Packet(P5::ConnAck(_))));
    c.publish(
        "iot-2/evt/e/fmt/bin",
        Q5::AtLeastOnce,
        false,
        vec![b'x'; 100],
    )
    .await
    .unwrap();
    assert_eq!(a.next_publish(WAIT).await.map(|p| p.1.len()), Some(100));
    c.publish(
        "iot-2/evt/e/fmt/bin",
        Q5::AtLeastOnce,
        false,
        vec![b'x'; 101],
    )
    .await
    .unwrap();
    let ended = loop {
        match el.next().await {
            Next5::Packet(_) => continue,
            other => break other,
        }
    };
    match ended {
        Next5::ServerDisconnect(code) => assert_eq!(code, DisconnectReasonCode::PacketTooLarge),
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }
    assert_eq!(a.next_publish(Duration::from_millis(300)).await, None);

    // 3.1.1: closed, nothing delivered.
    let dev = acme.cert("d:sensor:v4");
    let mut d = acme
        .connect("d:acme:sensor:v4", Some(&dev), None)
        .await
        .unwrap();
    d.client
        .publish(
            "iot-2/evt/e/fmt/bin",
            QoS::AtMostOnce,
            false,
            vec![b'x'; 101],
        )
        .await
        .unwrap();
    assert!(d.wait_closed(WAIT).await.is_some());
    assert_eq!(a.next_publish(Duration::from_millis(300)).await, None);
    assert_eq!(refusals(&h, "acme", "max_message_bytes"), 2);

    // Raised: the same message is the next packet's business only.
    set(
        &h.registry,
        &acme.id,
        LimitsUpdate {
            max_message_bytes: Some(1000),
            ..Default::default()
        },
    );
    let mut d = acme
        .connect("d:acme:sensor:v4", Some(&dev), None)
        .await
        .unwrap();
    d.client
        .publish(
            "iot-2/evt/e/fmt/bin",
            QoS::AtMostOnce,
            false,
            vec![b'x'; 101],
        )
        .await
        .unwrap();
    assert_eq!(a.next_publish(WAIT).await.map(|p| p.1.len()), Some(101));
    // Lowered (by the org itself) under a live session: its next PUBLISH is held to it.
    h.registry
        .update_org_limits(
            &acme.id,
            LimitsUpdate {
                max_message_bytes: Some(50),
                ..Default::default()
            },
            false,
        )
        .unwrap();
    d.client
        .publish(
            "iot-2/evt/e/fmt/bin",
            QoS::AtMostOnce,
            false,
            vec![b'x'; 51],
        )
        .await
        .unwrap();
    assert!(d.wait_closed(WAIT).await.is_some());
    assert_eq!(refusals(&h, "acme", "max_message_bytes"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_over_the_limit_are_refused_per_filter() {
    let h = Harness::start().await;
    let acme = h.org("acme");
    set(
        &h.registry,
        &acme.id,
        LimitsUpdate {
            max_subscriptions_per_session: Some(2),
            ..Default::default()
        },
    );
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let f = |t: &str| {
        rumqttc::SubscribeFilter::new(format!("iot-2/type/{t}/id/+/evt/+/fmt/+"), QoS::AtLeastOnce)
    };

    // 3.1.1: the filters past the limit get 0x80; a forbidden one keeps its own 0x80.
    let app = acme.cert("a:dash");
    let mut a = acme.connect("a:acme:dash", Some(&app), None).await.unwrap();
    a.client
        .subscribe_many([f("a"), f("b"), f("c")])
        .await
        .unwrap();
    let codes = loop {
        match tokio::time::timeout(WAIT, a.rx.recv()).await {
            Ok(Some(rumqttc::Packet::SubAck(s))) => break s.return_codes,
            Ok(Some(_)) => continue,
            _ => panic!("no SUBACK"),
        }
    };
    assert_eq!(codes, [ok, ok, SubscribeReasonCode::Failure]);
    // A filter it holds again is no new one; after an UNSUBSCRIBE there is room.
    assert_eq!(a.subscribe("iot-2/type/a/id/+/evt/+/fmt/+").await, [ok]);
    assert_eq!(
        a.subscribe("iot-2/type/c/id/+/evt/+/fmt/+").await,
        [SubscribeReasonCode::Failure]
    );
    a.client
        .unsubscribe("iot-2/type/a/id/+/evt/+/fmt/+")
        .await
        .unwrap();
    assert_eq!(a.subscribe("iot-2/type/c/id/+/evt/+/fmt/+").await, [ok]);
    assert_eq!(refusals(&h, "acme", "max_subscriptions_per_session"), 2);

    // v5: 0x97 for the filter past the limit.
    let (c, mut el) = v5(&acme, "a:v5");
    assert!(matches!(el.next().await, Next5::Packet(P5::ConnAck(_))));
    let f5 = |t: &str| {
        rumqttc::v5::mqttbytes::v5::Filter::new(
            format!("iot-2/type/{t}/id/+/evt/+/fmt/+"),
            Q5::AtLeastOnce,
        )
    };
    c.subscribe_many([f5("a"), f5("b"), f5("c")]).await.unwrap();
    let codes = loop {
        match el.next().await {
            Next5::Packet(P5::SubAck(s)) => break s.return_codes,
            Next5::Packet(_) => continue,
            other => panic!("no SUBACK: {other:?}"),
        }
    };
    assert_eq!(
        codes,
        [
            Sub5::Success(Q5::AtLeastOnce),
            Sub5::Success(Q5::AtLeastOnce),
            Sub5::QuotaExceeded
        ]
    );
    assert_eq!(refusals(&h, "acme", "max_subscriptions_per_session"), 3);

    // The messages of a granted filter still arrive.
    let dev = acme.cert("d:b:dev1");
    let d = acme
        .connect("d:acme:b:dev1", Some(&dev), None)
        .await
        .unwrap();
    d.client
        .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    assert_eq!(
        a.next_publish(WAIT).await.map(|p| p.0),
        Some("iot-2/type/b/id/dev1/evt/e/fmt/txt".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_is_advertised_and_enforced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    let acme = h.org("acme");

    // v5 CONNACK: Receive Maximum is the org's max_inflight_per_session.
    let (_c, mut el) = v5(&acme, "d:sensor:v5");
    match el.next().await {
        Next5::Packet(P5::ConnAck(ack)) => {
            assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(1000))
        }
        other => panic!("no CONNACK: {other:?}"),
    }
    set(
        &h.registry,
        &acme.id,
        LimitsUpdate {
            max_inflight_per_session: Some(2),
            ..Default::default()
        },
    );
    let (_c, mut el) = v5(&acme, "d:sensor:v5b");
    match el.next().await {
        Next5::Packet(P5::ConnAck(ack)) => {
            assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(2))
        }
        other => panic!("no CONNACK: {other:?}"),
    }

    // A 3.1.1 client with three QoS 2 PUBLISHes in flight (it never releases them:
    // a QoS 2 PUBLISH is in flight until the broker's PUBCOMP) is closed. (Raw packets:
    // a real client library would respect the limit. QoS 1 would not do: a PUBACK
    // that needs nothing on disk is written before the next PUBLISH is even read.)
    let dev = acme.cert("d:sensor:raw");
    let config = device_sim::client::tls_config(&acme.target, Some(&dev)).unwrap();
    let tcp = tokio::net::TcpStream::connect(h.mqtt).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(acme.target.sni.clone()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let client_id = b"d:acme:sensor:raw";
    let mut connect = vec![0x10, (10 + 2 + client_id.len()) as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
    connect.extend_from_slice(&[0, client_id.len() as u8]);
    connect.extend_from_slice(client_id);
    tls.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "admitted");
    let topic = b"iot-2/evt/e/fmt/txt";
    let mut burst = Vec::new();
    for pkid in 1..=3u8 {
        burst.extend_from_slice(&[0x34, (2 + topic.len() + 2 + 1) as u8, 0, topic.len() as u8]);
        burst.extend_from_slice(topic);
        burst.extend_from_slice(&[0, pkid, b'x']);
    }
    tls.write_all(&burst).await.unwrap();
    // Read until the broker closes: at most the PUBRECs of the first two.
    let mut got = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 64];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the broker kept a client over its in-flight limit");
    assert!(got.len() <= 8, "more than two PUBRECs: {got:?}");
    assert_eq!(refusals(&h, "acme", "max_inflight_per_session"), 1);

    // Within the limit (acknowledged one at a time) nothing happens.
    let dev = acme.cert("d:sensor:calm");
    let mut opts = acme.options("d:acme:sensor:calm", Some(&dev));
    opts.set_inflight(2);
    let mut d = harness::connect(opts).await.unwrap();
    for _ in 0..20 {
        d.client
            .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    let mut acks = 0;
    while acks < 20 {
        match tokio::time::timeout(WAIT, d.rx.recv()).await {
            Ok(Some(rumqttc::Packet::PubAck(_))) => acks += 1,
            Ok(Some(_)) => {}
            _ => panic!("only {acks} PUBACKs"),
        }
    }
    assert_eq!(refusals(&h, "acme", "max_inflight_per_session"), 1);
}
