//! Who may connect and what they may do: token authentication and security levels,
//! plain MQTT for `tls_optional`, gateways acting for devices, shared subscriptions, and
//! the allow/deny matrix over kind × topic × action.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use rumqttc::{MqttOptions, QoS};
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(5);

async fn put_policy(server: &Server, policy: serde_json::Value) {
    let (s, v) = server
        .api()
        .call(Method::PUT, "/orgs/acme/security-policy", Some(policy))
        .await;
    assert_eq!(s, 200, "{v}");
}

async fn token_for(server: &Server, identity: &str) -> String {
    let v = server
        .api()
        .post("/orgs/acme/device-tokens", json!({ "identity": identity }))
        .await;
    v["token"].as_str().unwrap().to_owned()
}

/// A TLS connection without a client certificate, authenticating with a token.
async fn connect_token(org: &Org, client_id: &str, token: &str) -> Result<Client, String> {
    let mut opts = device_sim::client::mqtt_options(&org.target(), client_id, None).unwrap();
    opts.set_credentials("use-token-auth", token);
    let (c, el) = device_sim::client::async_client(opts, 10);
    start_loop(c, el).await
}

async fn connect_plain(server: &Server, client_id: &str, token: &str) -> Result<Client, String> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", server.mqtt_plain.port());
    opts.set_credentials("use-token-auth", token);
    let (c, el) = rumqttc::AsyncClient::new(opts, 10);
    start_loop(c, el).await
}

#[tokio::test]
async fn security_levels_tokens_and_plain_mqtt() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let token = token_for(&server, "d:sensor:dev1").await;
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;

    // Default level: a certificate is required, a token does not replace it.
    let err = connect_token(&acme, "d:acme:sensor:dev1", &token)
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("CertificateRequired") || err.contains("HandshakeFailure"),
        "{err}"
    );
    assert!(connect_plain(&server, "d:acme:sensor:dev1", &token)
        .await
        .is_err());

    put_policy(&server, json!({ "level": "tls_client_cert_or_token" })).await;
    let mut over_tls = connect_token(&acme, "d:acme:sensor:dev1", &token)
        .await
        .unwrap();
    let err = connect_token(&acme, "d:acme:sensor:dev2", &token)
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("BadUserNamePassword") || err.contains("NotAuthorized"),
        "{err}"
    );
    let err = connect_token(&acme, "d:acme:sensor:dev1", "wrong-token")
        .await
        .err()
        .unwrap();
    assert!(err.contains("BadUserNamePassword"), "{err}");
    acme.connect("d:sensor:dev3", "d:acme:sensor:dev3").await; // certificates still work
    let err = connect_plain(&server, "d:acme:sensor:dev1", &token)
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("NotAuthorized"),
        "plain MQTT needs tls_optional: {err}"
    );

    put_policy(&server, json!({ "level": "tls_optional" })).await;
    let mut plain = connect_plain(&server, "d:acme:sensor:dev1", &token)
        .await
        .unwrap();
    plain
        .client
        .publish(
            "iot-2/evt/plain/fmt/txt",
            QoS::AtLeastOnce,
            false,
            "over 1883",
        )
        .await
        .unwrap();
    let (topic, payload) = app.next_publish(WAIT).await.unwrap();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        (
            "iot-2/type/sensor/id/dev1/evt/plain/fmt/txt",
            &b"over 1883"[..]
        )
    );

    // Raising the level closes the sessions it no longer admits, at once.
    put_policy(&server, json!({ "level": "tls_client_cert" })).await;
    assert!(
        plain.wait_closed(Duration::from_secs(1)).await.is_some(),
        "plain session survived"
    );
    assert!(
        over_tls.wait_closed(Duration::from_secs(1)).await.is_some(),
        "token session survived"
    );

    // A per-type override: only `legacy` devices may use tokens; deleting the token
    // closes the session it admitted.
    put_policy(
        &server,
        json!({ "level": "tls_client_cert", "device_types": { "legacy": "tls_token" } }),
    )
    .await;
    let legacy = token_for(&server, "d:legacy:old1").await;
    assert!(connect_token(&acme, "d:acme:sensor:dev1", &token)
        .await
        .is_err());
    let mut old = connect_token(&acme, "d:acme:legacy:old1", &legacy)
        .await
        .unwrap();
    let (s, _) = server
        .api()
        .call(
            Method::DELETE,
            "/orgs/acme/device-tokens/d:legacy:old1",
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert!(
        old.wait_closed(Duration::from_secs(1)).await.is_some(),
        "deleted token still admits"
    );
}

#[tokio::test]
async fn gateways_act_for_devices_within_their_scope() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let mut gw = acme.connect("g:gw:g1", "g:acme:gw:g1").await;
    assert_eq!(
        gw.subscribe("iot-2/type/+/id/+/cmd/+/fmt/+").await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    gw.client
        .publish(
            "iot-2/type/sensor/id/behind1/evt/temp/fmt/json",
            QoS::AtLeastOnce,
            false,
            "1",
        )
        .await
        .unwrap();
    assert_eq!(
        app.next_publish(WAIT).await.unwrap().0,
        "iot-2/type/sensor/id/behind1/evt/temp/fmt/json"
    );
    gw.client
        .publish("iot-2/evt/self/fmt/json", QoS::AtLeastOnce, false, "2")
        .await
        .unwrap();
    assert_eq!(
        app.next_publish(WAIT).await.unwrap().0,
        "iot-2/type/gw/id/g1/evt/self/fmt/json"
    );
    app.client
        .publish(
            "iot-2/type/sensor/id/behind1/cmd/reset/fmt/json",
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(
        gw.next_publish(WAIT).await.unwrap().0,
        "iot-2/type/sensor/id/behind1/cmd/reset/fmt/json"
    );

    // Scope gateways of type gw to sensors: acting for a camera closes the connection.
    put_policy(
        &server,
        json!({ "gateway_device_types": { "gw": ["sensor"] } }),
    )
    .await;
    let gw = acme.connect("g:gw:g2", "g:acme:gw:g2").await;
    gw.client
        .publish(
            "iot-2/type/sensor/id/ok/evt/e/fmt/f",
            QoS::AtLeastOnce,
            false,
            "in scope",
        )
        .await
        .unwrap();
    assert_eq!(app.next_publish(WAIT).await.unwrap().1, b"in scope");
    let mut gw = gw;
    gw.client
        .publish(
            "iot-2/type/camera/id/c1/evt/e/fmt/f",
            QoS::AtLeastOnce,
            false,
            "out of scope",
        )
        .await
        .unwrap();
    assert!(gw.wait_closed(WAIT).await.is_some());
}

/// How many of `total` events each client of a shared group received (waiting up to
/// 10 s for all, then 300 ms more to catch duplicates).
async fn count_split(clients: &mut [Client], total: usize) -> Vec<usize> {
    let mut counts = vec![0; clients.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counts.iter().sum::<usize>() < total && tokio::time::Instant::now() < deadline {
        for (i, c) in clients.iter_mut().enumerate() {
            if c.next_publish(Duration::from_millis(50)).await.is_some() {
                counts[i] += 1;
            }
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        while c.next_publish(Duration::from_millis(300)).await.is_some() {
            counts[i] += 1;
        }
    }
    counts
}

#[tokio::test]
async fn shared_subscriptions_split_events_among_app_instances() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let cert = acme.cert("a:workers");
    // Scalable app instances share automatically; explicit $share groups work too.
    let mut i1 = connect_with(&acme.target(), "A:acme:workers:i1", &cert)
        .await
        .unwrap();
    let mut i2 = connect_with(&acme.target(), "A:acme:workers:i2", &cert)
        .await
        .unwrap();
    i1.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    i2.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let mut s1 = acme.connect("a:s1", "a:acme:s1").await;
    let mut s2 = acme.connect("a:s2", "a:acme:s2").await;
    s1.subscribe("$share/pool/iot-2/type/+/id/+/evt/+/fmt/+")
        .await;
    s2.subscribe("$share/pool/iot-2/type/+/id/+/evt/+/fmt/+")
        .await;

    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    const N: usize = 20;
    for n in 0..N {
        dev.client
            .publish(
                "iot-2/evt/e/fmt/txt",
                QoS::AtLeastOnce,
                false,
                n.to_string(),
            )
            .await
            .unwrap();
    }
    let scalable = count_split(&mut [i1, i2], N).await;
    let pool = count_split(&mut [s1, s2], N).await;
    for counts in [&scalable, &pool] {
        assert_eq!(
            counts.iter().sum::<usize>(),
            N,
            "each event once per group: {counts:?}"
        );
        assert!(
            counts.iter().all(|c| *c > 0),
            "the load is not split: {counts:?}"
        );
    }
}

#[tokio::test]
async fn allow_deny_matrix_over_kind_topic_and_action() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let certs: HashMap<&str, (String, &str)> = [
        (
            "device",
            (acme.cert("d:sensor:dev1").chain_pem, "d:acme:sensor:dev1"),
        ),
        ("gateway", (acme.cert("g:gw:g1").chain_pem, "g:acme:gw:g1")),
        ("app", (acme.cert("a:dash").chain_pem, "a:acme:dash")),
    ]
    .into_iter()
    .collect();
    // (topic, action, allowed for device, gateway, app)
    let matrix: &[(&str, &str, [bool; 3])] = &[
        ("iot-2/evt/temp/fmt/json", "publish", [true, true, false]),
        ("iot-2/evt/+/fmt/json", "publish", [false, false, false]),
        (
            "iot-2/type/sensor/id/dev9/evt/temp/fmt/json",
            "publish",
            [false, true, false],
        ),
        (
            "iot-2/type/sensor/id/dev1/cmd/reboot/fmt/json",
            "publish",
            [false, false, true],
        ),
        (
            "iot-2/cmd/reboot/fmt/json",
            "publish",
            [false, false, false],
        ),
        (
            "iot-2/type/sensor/id/dev1/mon",
            "publish",
            [false, false, false],
        ),
        ("#", "publish", [false, false, false]),
        ("iot-2/cmd/+/fmt/+", "subscribe", [true, false, false]),
        ("iot-2/cmd/#", "subscribe", [true, false, false]),
        ("iot-2/evt/+/fmt/+", "subscribe", [false, false, false]),
        (
            "iot-2/type/+/id/+/cmd/+/fmt/+",
            "subscribe",
            [false, true, false],
        ),
        (
            "iot-2/type/+/id/+/evt/+/fmt/+",
            "subscribe",
            [false, false, true],
        ),
        ("iot-2/type/+/id/+/evt/#", "subscribe", [false, false, true]),
        ("iot-2/type/+/id/+/mon", "subscribe", [false, false, true]),
        (
            "$share/g/iot-2/type/+/id/+/evt/+/fmt/+",
            "subscribe",
            [false, false, true],
        ),
        ("iot-2/#", "subscribe", [false, false, false]),
        ("#", "subscribe", [false, false, false]),
        (
            "/tenants/other/iot-2/type/+/id/+/evt/+/fmt/+",
            "subscribe",
            [false, false, false],
        ),
    ];
    let mut failures = Vec::new();
    for (topic, action, expected) in matrix {
        for (i, kind) in ["device", "gateway", "app"].iter().enumerate() {
            let (pem, client_id) = &certs[kind];
            let (s, d) = api
                .call(
                    Method::POST,
                    "/orgs/acme/authz/check",
                    Some(json!({ "certificate": pem, "client_id": client_id, "topic": topic, "action": action })),
                )
                .await;
            assert_eq!(s, 200, "{d}");
            if d["allowed"] != expected[i] {
                failures.push(format!("{kind} {action} {topic}: got {d}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // The dry run is the broker's own path: spot-check two cells over real MQTT.
    let mut dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    assert_eq!(
        dev.subscribe("iot-2/evt/+/fmt/+").await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    assert_eq!(
        app.subscribe("iot-2/type/+/id/+/mon").await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
}
