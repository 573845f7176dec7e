//! End-to-end tests of the broker: the real `certmq` binary on free ports, the admin
//! API over HTTP, rumqttc clients over real mTLS with explicit SNI.

mod support;

use std::time::Duration;

use rumqttc::{QoS, SubscribeReasonCode};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(700);

#[tokio::test]
async fn device_event_reaches_app_and_command_reaches_device() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let mut dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    dev.subscribe("iot-2/cmd/+/fmt/+").await;

    dev.client
        .publish(
            "iot-2/evt/temp/fmt/json",
            QoS::AtLeastOnce,
            false,
            r#"{"t":21}"#,
        )
        .await
        .unwrap();
    let (topic, payload) = app.next_publish(WAIT).await.expect("event at the app");
    assert_eq!(topic, "iot-2/type/sensor/id/dev1/evt/temp/fmt/json");
    assert_eq!(payload, br#"{"t":21}"#);

    app.client
        .publish(
            "iot-2/type/sensor/id/dev1/cmd/reboot/fmt/json",
            QoS::ExactlyOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    let (topic, _) = dev.next_publish(WAIT).await.expect("command at the device");
    assert_eq!(topic, "iot-2/cmd/reboot/fmt/json");
}

#[tokio::test]
async fn refuses_wrong_org_ca_expired_cert_no_cert_and_unknown_sni() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let beta = Org::create(&server, "beta").await;
    let sni = format!("acme.{DOMAIN}");

    // Control: the right CA passes the handshake.
    let good = acme.cert("d:sensor:dev1");
    raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&good))
        .await
        .expect("a device of acme's CA is admitted");

    // beta's CA never admits a device at acme.
    let foreign = beta.cert("d:sensor:dev1");
    let err = raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&foreign))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");

    let expired = acme
        .ca
        .issue_client("d:sensor:old", expired_options())
        .unwrap();
    let err = raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&expired))
        .await
        .unwrap_err();
    assert!(err.contains("CertificateExpired"), "{err}");

    let err = raw_handshake(server.mqtt, &sni, &acme.server_pem, None)
        .await
        .unwrap_err();
    assert!(
        err.contains("CertificateRequired") || err.contains("HandshakeFailure"),
        "{err}"
    );

    let err = raw_handshake(
        server.mqtt,
        &format!("nope.{DOMAIN}"),
        &acme.server_pem,
        Some(&good),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnrecognisedName") || err.contains("UnrecognizedName"),
        "{err}"
    );
    let err = raw_handshake(
        server.mqtt,
        "acme.example.org",
        &acme.server_pem,
        Some(&good),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnrecognisedName") || err.contains("UnrecognizedName"),
        "{err}"
    );
}

#[tokio::test]
async fn client_id_must_match_the_certificate() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let cert = acme.cert("d:sensor:dev1");
    for wrong in [
        "d:acme:sensor:dev2",
        "d:beta:sensor:dev1",
        "a:acme:dev1",
        "dev1",
        "",
    ] {
        let err = connect_with(&acme.target(), wrong, &cert)
            .await
            .err()
            .unwrap_or_else(|| panic!("{wrong:?} was admitted"));
        assert!(err.contains("NotAuthorized"), "{wrong}: {err}");
    }
    // A certificate without an identity admits nothing.
    let anon = acme.cert("plain device");
    let err = connect_with(&acme.target(), "d:acme:sensor:dev1", &anon)
        .await
        .err()
        .unwrap();
    assert!(err.contains("NotAuthorized"), "{err}");
    // The identity may also come from an rfc822Name SAN; apps may use A:<org>:<app>:<i>.
    let san = acme
        .ca
        .issue_client(
            "x",
            device_sim::certs::ClientCertOptions {
                cn: Some("Dashboard".into()),
                email_san: Some("a:dash".into()),
                ..Default::default()
            },
        )
        .unwrap();
    connect_with(&acme.target(), "A:acme:dash:instance-1", &san)
        .await
        .expect("SAN identity with a scalable-app client id");
}

#[tokio::test]
async fn orgs_are_isolated() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let beta = Org::create(&server, "beta").await;
    let mut acme_app = acme.connect("a:dash", "a:acme:dash").await;
    acme_app.subscribe("iot-2/type/+/id/+/evt/#").await;
    let mut beta_app = beta.connect("a:dash", "a:beta:dash").await;
    beta_app.subscribe("iot-2/type/+/id/+/evt/#").await;
    // Same device type and id in both orgs.
    let acme_dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let mut beta_dev = beta.connect("d:sensor:dev1", "d:beta:sensor:dev1").await;
    beta_dev.subscribe("iot-2/cmd/+/fmt/+").await;

    acme_dev
        .client
        .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, "acme-only")
        .await
        .unwrap();
    assert_eq!(acme_app.next_publish(WAIT).await.unwrap().1, b"acme-only");
    assert!(
        beta_app.next_publish(QUIET).await.is_none(),
        "beta saw acme's event"
    );

    acme_app
        .client
        .publish(
            "iot-2/type/sensor/id/dev1/cmd/c/fmt/txt",
            QoS::AtLeastOnce,
            false,
            "x",
        )
        .await
        .unwrap();
    assert!(
        beta_dev.next_publish(QUIET).await.is_none(),
        "beta's device got acme's command"
    );
}

#[tokio::test]
async fn unauthorized_subscribe_gets_failure_and_publish_disconnects() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    dev.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("iot-2/cmd/+/fmt/+".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("iot-2/type/+/id/+/evt/+/fmt/+".into(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    let codes = dev.next_suback().await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure
        ]
    );
    dev.client
        .publish(
            "iot-2/type/sensor/id/dev2/evt/e/fmt/f",
            QoS::AtLeastOnce,
            false,
            "spoof",
        )
        .await
        .unwrap();
    assert!(
        dev.wait_closed(WAIT).await.is_some(),
        "still connected after a forbidden publish"
    );
}

#[tokio::test]
async fn deactivating_a_ca_refuses_the_next_handshake_and_closes_sessions() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let mut live = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;

    let (s, v) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/orgs/acme/ca-certs/{}", acme.ca_id),
            Some(json!({ "active": false })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["active"], false);
    assert!(
        live.wait_closed(Duration::from_secs(2)).await.is_some(),
        "live session survived"
    );
    let sni = format!("acme.{DOMAIN}");
    let err = raw_handshake(
        server.mqtt,
        &sni,
        &acme.server_pem,
        Some(&acme.cert("d:sensor:dev2")),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );

    // Re-activate: admitted again, still no restart.
    api.call(
        reqwest::Method::PATCH,
        &format!("/orgs/acme/ca-certs/{}", acme.ca_id),
        Some(json!({ "active": true })),
    )
    .await;
    acme.connect("d:sensor:dev2", "d:acme:sensor:dev2").await;
}

#[tokio::test]
async fn activating_another_server_cert_takes_effect_on_the_next_handshake() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let new = api
        .post("/orgs/acme/server-certs/self-signed", json!({}))
        .await;
    assert_eq!(new["active"], false);
    let new_pem = new["pem"].as_str().unwrap().to_owned();
    let cert = acme.cert("d:sensor:dev1");
    let sni = format!("acme.{DOMAIN}");
    // The client pins the new certificate: refused while the old one is active.
    assert!(raw_handshake(server.mqtt, &sni, &new_pem, Some(&cert))
        .await
        .is_err());
    api.post(
        &format!(
            "/orgs/acme/server-certs/{}/activate",
            new["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    raw_handshake(server.mqtt, &sni, &new_pem, Some(&cert))
        .await
        .expect("new server certificate presented after activation");
    assert!(
        raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&cert))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn restart_keeps_orgs_cas_and_active_server_cert() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let server = server.restart_hard();
    let (s, v) = server
        .api()
        .call(reqwest::Method::GET, "/orgs/acme/ca-certs", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    // Same server certificate (pinned by the client), same CA.
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    dev.client
        .publish("iot-2/evt/boot/fmt/txt", QoS::AtLeastOnce, false, "again")
        .await
        .unwrap();
    assert!(app.next_publish(WAIT).await.is_some());
}

#[tokio::test]
async fn garbage_and_silent_sockets_do_not_disturb_others() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(server.mqtt).await.unwrap());
    }
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3],
        &[0u8; 4096],
    ] {
        let mut s = tokio::net::TcpStream::connect(server.mqtt).await.unwrap();
        let _ = s.write_all(junk).await;
        let mut buf = [0u8; 64];
        // The broker closes (or alerts and closes) rather than waiting.
        let _ = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("closed promptly");
    }
    // Garbage inside a good TLS session: a non-CONNECT first packet.
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    dev.client
        .publish(
            "iot-2/evt/e/fmt/f",
            QoS::AtLeastOnce,
            false,
            "still serving",
        )
        .await
        .unwrap();
    assert_eq!(app.next_publish(WAIT).await.unwrap().1, b"still serving");
    drop(silent);
}

#[tokio::test]
async fn retained_will_takeover_and_persistent_sessions() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;

    // Retained: a later subscriber gets the last retained event.
    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    dev.client
        .publish("iot-2/evt/state/fmt/txt", QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let (topic, payload) = app.next_publish(WAIT).await.expect("retained event");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("iot-2/type/sensor/id/dev1/evt/state/fmt/txt", &b"on"[..])
    );

    // Takeover: a second connection with the same client id closes the first.
    let mut first = acme.connect("d:sensor:dev2", "d:acme:sensor:dev2").await;
    let _second = acme.connect("d:sensor:dev2", "d:acme:sensor:dev2").await;
    assert!(
        first.wait_closed(WAIT).await.is_some(),
        "first session not taken over"
    );

    // Will: published when a device drops without DISCONNECT.
    let cert = acme.cert("d:sensor:dev3");
    let mut opts =
        device_sim::client::mqtt_options(&acme.target(), "d:acme:sensor:dev3", Some(&cert))
            .unwrap();
    opts.set_last_will(rumqttc::LastWill::new(
        "iot-2/evt/lost/fmt/txt",
        "gone",
        QoS::AtMostOnce,
        false,
    ));
    let (client, eventloop) = device_sim::client::async_client(opts, 10);
    let (_c, mut ev) = (client, eventloop);
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) = ev.poll().await.unwrap() {
            break;
        }
    }
    drop(ev); // socket closed without DISCONNECT
    let mut got_will = false;
    while let Some((topic, payload)) = app.next_publish(WAIT).await {
        if topic == "iot-2/type/sensor/id/dev3/evt/lost/fmt/txt" {
            assert_eq!(payload, b"gone");
            got_will = true;
            break;
        }
    }
    assert!(got_will, "will not published");
}

#[tokio::test]
async fn status_events_on_connect_and_disconnect() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    assert_eq!(
        app.subscribe("iot-2/type/+/id/+/mon").await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let (topic, payload) = app.next_publish(WAIT).await.expect("Connect status");
    assert_eq!(topic, "iot-2/type/sensor/id/dev1/mon");
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["Action"], "Connect");
    assert_eq!(v["ClientID"], "d:acme:sensor:dev1");
    assert_eq!(v["Protocol"], "mqtt4-tls");
    assert_eq!(v["Secure"], true);
    assert_eq!(v["Port"], server.mqtt.port());
    assert_eq!(v["ClientAddr"], "127.0.0.1");

    dev.client.disconnect().await.unwrap();
    let (_, payload) = app.next_publish(WAIT).await.expect("Disconnect status");
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["Action"], "Disconnect");
    assert_eq!(v["CloseCode"], 0);
    assert!(
        v["ConnectTime"].is_string() && v["Reason"].is_string(),
        "{v}"
    );
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queued_messages() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let cert = acme.cert("a:dash");
    let persistent = |cert: &device_sim::certs::ClientCert| {
        let mut o =
            device_sim::client::mqtt_options(&acme.target(), "a:acme:dash", Some(cert)).unwrap();
        o.set_clean_session(false);
        o
    };
    let (client, eventloop) = device_sim::client::async_client(persistent(&cert), 10);
    let mut app = support::start_loop(client, eventloop).await.unwrap();
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    app.client.disconnect().await.unwrap();
    app.wait_closed(WAIT).await;

    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    dev.client
        .publish(
            "iot-2/evt/while-away/fmt/txt",
            QoS::AtLeastOnce,
            false,
            "queued",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (client, eventloop) = device_sim::client::async_client(persistent(&cert), 10);
    let mut app = support::start_loop(client, eventloop).await.unwrap();
    let (topic, payload) = app
        .next_publish(WAIT)
        .await
        .expect("queued message after reconnect");
    assert_eq!(topic, "iot-2/type/sensor/id/dev1/evt/while-away/fmt/txt");
    assert_eq!(payload, b"queued");
}

#[tokio::test]
async fn a_clean_session_discards_the_persistent_one_before_it() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let cert = acme.cert("a:dash");
    let opts = |clean: bool| {
        let mut o =
            device_sim::client::mqtt_options(&acme.target(), "a:acme:dash", Some(&cert)).unwrap();
        o.set_clean_session(clean);
        o
    };
    let (c, el) = device_sim::client::async_client(opts(false), 10);
    let mut app = support::start_loop(c, el).await.unwrap();
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    app.client.disconnect().await.unwrap();
    app.wait_closed(WAIT).await;
    // A clean connect that does nothing else still ends the persistent session.
    let (c, el) = device_sim::client::async_client(opts(true), 10);
    let mut clean = support::start_loop(c, el).await.unwrap();
    clean.client.disconnect().await.unwrap();
    clean.wait_closed(WAIT).await;

    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    dev.client
        .publish(
            "iot-2/evt/e/fmt/txt",
            QoS::AtLeastOnce,
            false,
            "not for the old session",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, el) = device_sim::client::async_client(opts(false), 10);
    let mut app = support::start_loop(c, el).await.unwrap();
    assert!(
        app.next_publish(QUIET).await.is_none(),
        "the discarded session kept its subscription"
    );
}

#[tokio::test]
async fn mqtt5_client_gets_reason_codes() {
    use rumqttc::v5::mqttbytes::v5::{
        DisconnectReasonCode, Packet as P5, SubscribeReasonCode as Rc5,
    };
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;

    let cert = acme.cert("d:sensor:v5");
    let opts = device_sim::client::mqtt_options_v5(&acme.target(), "d:acme:sensor:v5", Some(&cert))
        .unwrap();
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    assert!(matches!(next_v5(&mut el).await, Ok(P5::ConnAck(_))));
    client
        .subscribe_many([
            rumqttc::v5::mqttbytes::v5::Filter::new("iot-2/cmd/+/fmt/+", Q5::AtLeastOnce),
            rumqttc::v5::mqttbytes::v5::Filter::new("#", Q5::AtLeastOnce),
        ])
        .await
        .unwrap();
    let suback = loop {
        if let Ok(P5::SubAck(s)) = next_v5(&mut el).await {
            break s;
        }
    };
    assert_eq!(
        suback.return_codes,
        vec![Rc5::Success(Q5::AtLeastOnce), Rc5::NotAuthorized]
    );

    client
        .publish("iot-2/evt/e/fmt/txt", Q5::AtLeastOnce, false, "v5 event")
        .await
        .unwrap();
    // The event loop sends only while polled: drive it to the PUBACK.
    while !matches!(next_v5(&mut el).await, Ok(P5::PubAck(_))) {}
    assert_eq!(app.next_publish(WAIT).await.unwrap().1, b"v5 event");

    client
        .publish("iot-2/evt/e/fmt/txt/extra", Q5::AtLeastOnce, false, "x")
        .await
        .unwrap();
    // rumqttc reports the server's DISCONNECT as an error carrying its reason code.
    let closed = loop {
        match next_v5(&mut el).await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        closed.contains("ServerDisconnect")
            && closed.contains(&format!("{:?}", DisconnectReasonCode::NotAuthorized)),
        "{closed}"
    );
}

/// An MQTT 5 application `a:acme:<app>` subscribed (QoS 1) to every event, with
/// `set` applied to its options; its event loop is the caller's to drive.
async fn v5_app(
    acme: &Org,
    app: &str,
    set: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    let cert = acme.cert(&format!("a:{app}"));
    let mut opts =
        device_sim::client::mqtt_options_v5(&acme.target(), &format!("a:acme:{app}"), Some(&cert))
            .unwrap();
    set(&mut opts);
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
    assert!(matches!(next_v5(&mut el).await, Ok(P5::ConnAck(_))));
    client
        .subscribe(
            "iot-2/type/+/id/+/evt/+/fmt/+",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    while !matches!(next_v5(&mut el).await, Ok(P5::SubAck(_))) {}
    (client, el)
}

/// The PUBLISHes an MQTT 5 event loop receives within `wait`.
async fn v5_publishes(
    el: &mut rumqttc::v5::EventLoop,
    wait: Duration,
) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(event) = tokio::time::timeout_at(deadline, el.poll()).await {
        match event {
            Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p))) => {
                got.push(p)
            }
            Ok(_) => {}
            Err(e) => panic!("the connection ended: {e:?}"),
        }
    }
    got
}

/// MQTT 5 Receive Maximum (found by Paho's test_flow_control1): an application that
/// takes two unacknowledged deliveries gets two until it acknowledges one.
#[tokio::test]
async fn mqtt5_client_receive_maximum_is_kept() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let (app, mut el) = v5_app(&acme, "slow", |o| {
        o.set_receive_maximum(Some(2)).set_manual_acks(true);
    })
    .await;
    let dev = acme.connect("d:sensor:s1", "d:acme:sensor:s1").await;
    for i in 0..5 {
        dev.client
            .publish(
                "iot-2/evt/e/fmt/txt",
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    let first = v5_publishes(&mut el, QUIET * 2).await;
    assert_eq!(first.len(), 2, "two in flight at most: {first:?}");
    app.ack(&first[0]).await.unwrap();
    let next = v5_publishes(&mut el, QUIET * 2).await;
    assert_eq!(next.len(), 1, "one more per acknowledgement: {next:?}");
    assert_eq!(&next[0].payload[..], b"m2");
}

/// MQTT 5 Maximum Packet Size (found by Paho's test_maximum_packet_size): a delivery
/// larger than the client takes is dropped, the connection stays, later ones arrive.
#[tokio::test]
async fn mqtt5_client_maximum_packet_size_is_kept() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let (_app, mut el) = v5_app(&acme, "small", |o| {
        o.set_max_packet_size(Some(200));
    })
    .await;
    let dev = acme.connect("d:sensor:s1", "d:acme:sensor:s1").await;
    for payload in [vec![b'x'; 400], b"small".to_vec()] {
        dev.client
            .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let got = v5_publishes(&mut el, QUIET * 2).await;
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [b"small"], "the 400-byte delivery is not sent");
}

/// MQTT 5 subscription identifiers (found by Paho's test_subscribe_identifiers): one
/// delivery through two overlapping subscriptions carries both their ids.
#[tokio::test]
async fn mqtt5_deliveries_carry_subscription_identifiers() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, SubscribeProperties};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let (app, mut el) = v5_app(&acme, "ids", |_| {}).await;
    for (filter, id) in [
        ("iot-2/type/sensor/id/+/evt/#", 9),
        ("iot-2/type/+/id/s1/evt/+/fmt/txt", 10),
    ] {
        let props = SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        };
        app.subscribe_with_properties(filter, Q5::AtLeastOnce, props)
            .await
            .unwrap();
        while !matches!(next_v5(&mut el).await, Ok(P5::SubAck(_))) {}
    }
    let dev = acme.connect("d:sensor:s1", "d:acme:sensor:s1").await;
    dev.client
        .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let got = v5_publishes(&mut el, QUIET * 2).await;
    assert_eq!(got.len(), 1, "one delivery: {got:?}");
    let mut ids = got[0]
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort_unstable();
    assert_eq!(ids, [9, 10], "the first subscription (v5_app's) has none");
}

/// MQTT 5 Will Delay Interval (found by Paho's test_will_delay): the will waits for
/// the delay, and a reconnect within it cancels it.
#[tokio::test]
async fn mqtt5_will_waits_for_its_delay() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, Packet as P5};
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let cert = acme.cert("d:sensor:w1");
    let connect = |delay: u32| {
        let mut o =
            device_sim::client::mqtt_options_v5(&acme.target(), "d:acme:sensor:w1", Some(&cert))
                .unwrap();
        let props = LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        o.set_last_will(LastWill::new(
            "iot-2/evt/gone/fmt/txt",
            "gone",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            Some(props),
        ))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(60));
        o
    };

    // Dropped without a DISCONNECT: the will comes after 2 s, not before.
    let (client, mut el) = rumqttc::v5::AsyncClient::new(connect(2), 10);
    assert!(matches!(next_v5(&mut el).await, Ok(P5::ConnAck(_))));
    let dropped = std::time::Instant::now();
    drop((client, el));
    let (topic, _) = app.next_publish(WAIT).await.expect("the will");
    let after = dropped.elapsed();
    assert_eq!(topic, "iot-2/type/sensor/id/w1/evt/gone/fmt/txt");
    assert!(
        after >= Duration::from_millis(1900),
        "the will came {after:?} after the drop"
    );

    // Back within the delay: no will.
    let (client, mut el) = rumqttc::v5::AsyncClient::new(connect(3), 10);
    assert!(matches!(next_v5(&mut el).await, Ok(P5::ConnAck(_))));
    drop((client, el));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (client, mut el) = rumqttc::v5::AsyncClient::new(connect(3), 10);
    assert!(matches!(next_v5(&mut el).await, Ok(P5::ConnAck(_))));
    assert!(
        app.next_publish(Duration::from_secs(4)).await.is_none(),
        "a will after the session was resumed"
    );
    drop(client);
}

async fn next_v5(
    el: &mut rumqttc::v5::EventLoop,
) -> Result<rumqttc::v5::mqttbytes::v5::Packet, String> {
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("v5 event")
        {
            Ok(rumqttc::v5::Event::Incoming(p)) => return Ok(p),
            Ok(_) => {}
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

#[tokio::test]
async fn intermediate_cas_build_chains_both_ways() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    // Root uploaded (by Org::create); the device sends leaf + intermediate.
    let issuing = acme.ca.issue_intermediate("acme issuing CA").unwrap();
    let dev = issuing
        .issue_client(
            "d:sensor:dev1",
            device_sim::certs::ClientCertOptions::default(),
        )
        .unwrap();
    assert_ne!(
        dev.chain_pem, dev.cert_pem,
        "the chain carries the intermediate"
    );
    connect_with(&acme.target(), "d:acme:sensor:dev1", &dev)
        .await
        .expect("leaf + intermediate chains to the uploaded root");
    let (_, conns) = api
        .call(reqwest::Method::GET, "/orgs/acme/connections", None)
        .await;
    assert_eq!(
        conns[0]["ca_id"],
        acme.ca_id.as_str(),
        "admitted by the root"
    );

    // An org that uploaded only the intermediate admits a device sending just its leaf.
    let beta = Org::create(&server, "beta").await;
    let beta_issuing = beta.ca.issue_intermediate("beta issuing CA").unwrap();
    let uploaded = api.upload_ca("beta", &beta_issuing.pem()).await;
    let leaf_only = beta_issuing
        .issue_client(
            "d:sensor:dev2",
            device_sim::certs::ClientCertOptions::default(),
        )
        .unwrap();
    let leaf_only = device_sim::certs::ClientCert {
        chain_pem: leaf_only.cert_pem.clone(),
        ..leaf_only
    };
    connect_with(&beta.target(), "d:beta:sensor:dev2", &leaf_only)
        .await
        .expect("a leaf issued by an uploaded intermediate");
    let (_, conns) = api
        .call(reqwest::Method::GET, "/orgs/beta/connections", None)
        .await;
    assert_eq!(conns[0]["ca_id"], uploaded["id"]);
}
