//! Custom topic policies (docs/topic-policies.md) end to end: the real binary, real
//! mTLS MQTT clients (rumqttc 3.1.1 and 5, `mosquitto_pub`/`mosquitto_sub`), the admin
//! API over HTTP.

mod support;

use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use rumqttc::{QoS, SubscribeReasonCode};
use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(700);

fn fleet() -> Value {
    json!({"mode": "custom", "rules": [
        {"who": "d:*:*", "publish": ["devices/{type}/{id}/#"], "subscribe": ["devices/{type}/{id}/cmd/#"]},
        {"who": "a:*", "client_id": "*", "publish": ["devices/+/+/cmd/#"], "subscribe": ["devices/#", "iot-2/type/+/id/+/mon"]}
    ]})
}

async fn put_policy(server: &Server, org: &str, policy: Value) -> (u16, Value) {
    server
        .api()
        .call(
            Method::PUT,
            &format!("/orgs/{org}/topic-policy"),
            Some(policy),
        )
        .await
}

async fn set_policy(server: &Server, org: &str, policy: Value) {
    let (s, body) = put_policy(server, org, policy.clone()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["mode"], policy["mode"], "{body}");
    assert_eq!(
        body["rules"].as_array().map(Vec::len),
        policy["rules"].as_array().map(Vec::len)
    );
}

async fn publish(c: &Client, topic: &str, payload: &str) {
    c.client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .expect("publish");
}

#[tokio::test]
async fn devices_and_applications_use_the_orgs_own_topics() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    set_policy(&server, "acme", fleet()).await;

    // No client_id in the device rule: the Watson one. `*` for applications.
    let mut dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let mut app = acme.connect("a:dash", "dashboard-1").await;
    assert_eq!(
        app.subscribe("devices/#").await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        dev.subscribe("devices/sensor/dev1/cmd/#").await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // Beyond its own topics a device is refused, without losing the connection.
    assert_eq!(
        dev.subscribe("devices/#").await,
        [SubscribeReasonCode::Failure]
    );
    assert_eq!(
        dev.subscribe("devices/sensor/dev2/cmd/#").await,
        [SubscribeReasonCode::Failure]
    );

    publish(&dev, "devices/sensor/dev1/temp", "21.5").await;
    assert_eq!(
        app.next_publish(WAIT).await.unwrap(),
        ("devices/sensor/dev1/temp".to_owned(), b"21.5".to_vec())
    );
    publish(&app, "devices/sensor/dev1/cmd/reboot", "now").await;
    assert_eq!(
        dev.next_publish(WAIT).await.unwrap(),
        ("devices/sensor/dev1/cmd/reboot".to_owned(), b"now".to_vec())
    );
    // The application's own subscription sees its command too (it is under devices/#).
    assert_eq!(
        app.next_publish(WAIT).await.unwrap().0,
        "devices/sensor/dev1/cmd/reboot"
    );

    // A client id the rule does not give is refused at CONNECT.
    let cert = acme.cert("d:sensor:dev2");
    let e = connect_with(&acme.target(), "dev2", &cert)
        .await
        .err()
        .unwrap();
    assert!(e.contains("NotAuthorized") || e.contains("connack"), "{e}");

    // Watson topics mean nothing special in custom mode: not in the device's rule.
    publish(&dev, "iot-2/evt/temp/fmt/json", "x").await;
    assert!(
        dev.wait_closed(WAIT).await.is_some(),
        "a forbidden publish closes"
    );
    assert!(app.next_publish(QUIET).await.is_none());
}

#[tokio::test]
async fn two_custom_orgs_with_the_same_topics_and_client_ids_stay_apart() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let beta = Org::create(&server, "beta").await;
    let open = json!({"mode": "custom", "rules": [
        {"who": "a:*", "client_id": "*", "publish": ["#"], "subscribe": ["#"]}
    ]});
    set_policy(&server, "acme", open.clone()).await;
    set_policy(&server, "beta", open).await;

    // The same client id in two orgs: two sessions, no takeover across orgs.
    let mut a = acme.connect("a:paho", "myclientid").await;
    let mut b = beta.connect("a:paho", "myclientid").await;
    a.subscribe("#").await;
    b.subscribe("#").await;
    b.subscribe("$share/g/TopicA").await;
    publish(&a, "TopicA", "from acme").await;
    assert_eq!(
        a.next_publish(WAIT).await.unwrap(),
        ("TopicA".to_owned(), b"from acme".to_vec())
    );
    assert!(
        b.next_publish(QUIET).await.is_none(),
        "beta saw acme's message"
    );
    assert!(b.closed.borrow().is_none() && a.closed.borrow().is_none());
    publish(&b, "TopicA", "from beta").await;
    assert_eq!(b.next_publish(WAIT).await.unwrap().1, b"from beta");
    assert!(
        a.next_publish(QUIET).await.is_none(),
        "acme saw beta's message"
    );

    // `$` topics are the broker's: a custom client may not use them.
    assert_eq!(a.subscribe("$SYS/#").await, [SubscribeReasonCode::Failure]);
    let sessions = server
        .api()
        .call(Method::GET, "/orgs/acme/connections", None)
        .await
        .1;
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
}

#[tokio::test]
async fn a_put_applies_to_live_sessions() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let wide = json!({"mode": "custom", "rules": [
        {"who": "d:*:*", "publish": ["#"]},
        {"who": "a:*", "client_id": "*", "subscribe": ["devices/#", "other/#"]}
    ]});
    set_policy(&server, "acme", wide).await;
    let mut app = acme.connect("a:dash", "dash").await;
    let mut dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    app.subscribe("devices/#").await;
    app.subscribe("other/#").await;
    publish(&dev, "other/x", "1").await;
    assert_eq!(app.next_publish(WAIT).await.unwrap().0, "other/x");

    // The application loses other/#; its devices/# subscription stays.
    let narrow = json!({"mode": "custom", "rules": [
        {"who": "d:*:*", "publish": ["devices/{type}/{id}/#", "other/#"]},
        {"who": "a:*", "client_id": "*", "subscribe": ["devices/#"]}
    ]});
    set_policy(&server, "acme", narrow).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&dev, "other/x", "2").await;
    publish(&dev, "devices/sensor/dev1/t", "3").await;
    assert_eq!(
        app.next_publish(WAIT).await.unwrap(),
        ("devices/sensor/dev1/t".to_owned(), b"3".to_vec()),
        "other/x arrived after its subscription was withdrawn"
    );
    assert!(app.closed.borrow().is_none());

    // A publish the new rules forbid closes the publisher, as in watson mode.
    publish(&dev, "elsewhere/x", "4").await;
    assert!(dev.wait_closed(WAIT).await.is_some());

    // A mode switch closes the org's sessions: they reconnect under the new mode.
    set_policy(&server, "acme", json!({"mode": "watson"})).await;
    assert!(
        app.wait_closed(WAIT).await.is_some(),
        "mode switch kept the session"
    );
    // In watson mode the Watson client id is needed again.
    let cert = acme.cert("a:dash");
    assert!(connect_with(&acme.target(), "dash", &cert).await.is_err());
    acme.connect("a:dash", "a:acme:dash").await;
}

#[tokio::test]
async fn bad_policies_are_refused_with_the_path_and_change_nothing() {
    let server = Server::start();
    Org::create(&server, "acme").await;
    let api = server.api();
    let (s, body) = api.call(Method::GET, "/orgs/acme/topic-policy", None).await;
    assert_eq!((s, body), (200, json!({"mode": "watson"})));
    set_policy(&server, "acme", fleet()).await;

    for (policy, want) in [
        (
            json!({"mode": "custom", "rules": [{"who": "a:*"}, {"who": "d:*:*", "publish": ["x/{app}"]}]}),
            "rules[1].publish[0]: {app} is not defined for device rules",
        ),
        (
            json!({"mode": "custom", "rules": [{"who": "d:*:*", "subscribe": ["a/#/b"]}]}),
            "rules[0].subscribe[0]",
        ),
        (
            json!({"mode": "custom", "rules": [{"who": "d:*:*", "publish": [""]}]}),
            "rules[0].publish[0]",
        ),
        (
            json!({"mode": "custom", "rules": [{"who": "d:*:*", "publish": ["x/{unknown}"]}]}),
            "{unknown}",
        ),
        (
            json!({"mode": "custom", "rules": [{"who": "z:*", "publish": ["x"]}]}),
            "rules[0].who",
        ),
        (
            json!({"mode": "custom", "rules": vec![json!({"who": "a:*"}); 65]}),
            "at most 64",
        ),
        (
            json!({"mode": "watson", "status_topic": "s/{id}"}),
            "status_topic",
        ),
    ] {
        let (s, body) = put_policy(&server, "acme", policy.clone()).await;
        assert_eq!(s, 422, "{policy}: {body}");
        assert_eq!(body["error"]["code"], "invalid_topic_rule", "{body}");
        let m = body["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{policy}: {m}");
    }
    // Unknown fields and modes are malformed JSON for this route: 400.
    let (s, _) = put_policy(&server, "acme", json!({"mode": "acl"})).await;
    assert_eq!(s, 400);
    let (s, _) = put_policy(&server, "acme", json!({"mode": "custom", "rulez": []})).await;
    assert_eq!(s, 400);
    let (_, body) = api.call(Method::GET, "/orgs/acme/topic-policy", None).await;
    assert_eq!(body, fleet(), "a refused policy changed the stored one");
    // Unknown org.
    let (s, _) = put_policy(&server, "nope", fleet()).await;
    assert_eq!(s, 404);

    // Audited like other policy changes.
    let (_, audit) = api.call(Method::GET, "/orgs/acme/audit", None).await;
    let summaries: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["summary"].as_str())
        .collect();
    assert!(
        summaries.contains(&"topic policy set: custom, 2 rules"),
        "{summaries:?}"
    );
}

#[tokio::test]
async fn the_dry_run_explains_custom_decisions() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    set_policy(&server, "acme", fleet()).await;
    let api = server.api();
    let dev = acme.cert("d:sensor:dev1").chain_pem;
    let check = |cert: String, client_id: &str, topic: &str, action: &str| {
        let body =
            json!({"certificate": cert, "client_id": client_id, "topic": topic, "action": action});
        let api = &api;
        async move {
            let (s, d) = api
                .call(Method::POST, "/orgs/acme/authz/check", Some(body))
                .await;
            assert_eq!(s, 200, "{d}");
            d
        }
    };
    let d = check(
        dev.clone(),
        "d:acme:sensor:dev1",
        "devices/sensor/dev1/temp",
        "publish",
    )
    .await;
    assert_eq!(d["allowed"], true, "{d}");
    assert_eq!(
        d["internal_topic"],
        "/tenants/acme/devices/sensor/dev1/temp"
    );
    assert_eq!(
        d["reason"],
        "rules[0] (d:*:*) allows d:sensor:dev1 to publish to \"devices/sensor/dev1/#\""
    );
    let d = check(dev.clone(), "d:acme:sensor:dev1", "devices/#", "subscribe").await;
    assert_eq!(d["allowed"], false, "{d}");
    assert_eq!(d["stage"], "topic");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("rules[0] (d:*:*)") && reason.contains("devices/sensor/dev1/cmd/#"),
        "{reason}"
    );
    // An identity no rule covers: admitted, every topic denied, and said so.
    let gw = acme.cert("g:gw:g1").chain_pem;
    let d = check(gw, "g:acme:gw:g1", "devices/gw/g1/x", "publish").await;
    assert_eq!(d["stage"], "topic", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("no rule"), "{d}");
    // The client id the rule asks for: `*` shows none; a wrong one is named.
    let app = acme.cert("a:dash").chain_pem;
    let d = check(app, "anything", "devices/+/+/temp", "subscribe").await;
    assert_eq!(d["allowed"], true, "{d}");
    assert_eq!(d["expected_client_id"], Value::Null);
    let d = check(dev, "dev1", "devices/sensor/dev1/temp", "publish").await;
    assert_eq!(d["stage"], "client_id", "{d}");
}

/// The policy the Paho conformance runner sets, with MQTT 3.1.1 and 5 clients: any
/// client id, an empty one assigned by the broker (MQTT 5 returns it in the CONNACK).
#[tokio::test]
async fn an_open_policy_takes_any_client_id_over_311_and_5() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    set_policy(
        &server,
        "acme",
        json!({"mode":"custom","rules":[{"who":"a:*","client_id":"*","publish":["#"],"subscribe":["#"]}]}),
    )
    .await;
    let mut sub = acme.connect("a:paho", "myclientid").await;
    sub.subscribe("TopicA/+").await;

    let cert = acme.cert("a:paho");
    let opts = device_sim::client::mqtt_options_v5(&acme.target(), "", Some(&cert)).unwrap();
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    let connack = loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK")
        {
            Ok(rumqttc::v5::Event::Incoming(P5::ConnAck(a))) => break a,
            Ok(_) => {}
            Err(e) => panic!("{e:?}"),
        }
    };
    let assigned = connack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("an assigned client id");
    assert!(assigned.starts_with("certmq-"), "{assigned}");
    client
        .publish("TopicA/B", Q5::AtLeastOnce, false, "v5")
        .await
        .unwrap();
    while !matches!(
        tokio::time::timeout(WAIT, el.poll()).await.expect("PUBACK"),
        Ok(rumqttc::v5::Event::Incoming(P5::PubAck(_)))
    ) {}
    assert_eq!(
        sub.next_publish(WAIT).await.unwrap(),
        ("TopicA/B".to_owned(), b"v5".to_vec())
    );
    let (_, sessions) = server
        .api()
        .call(Method::GET, "/orgs/acme/connections", None)
        .await;
    let ids: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["client_id"].as_str())
        .collect();
    assert!(ids.contains(&assigned.as_str()), "{ids:?}");

    // 3.1.1 with an empty client id and clean session: assigned too.
    let mut empty = acme.connect("a:paho", "").await;
    empty.subscribe("TopicA/+").await;
    publish(&sub, "TopicA/C", "311").await;
    assert_eq!(empty.next_publish(WAIT).await.unwrap().1, b"311");
}

#[tokio::test]
async fn status_events_go_where_the_policy_says() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut policy = fleet();
    set_policy(&server, "acme", policy.clone()).await;
    // Default: the Watson mon topic, which the application's rule allows.
    let mut app = acme.connect("a:dash", "dash").await;
    app.subscribe("iot-2/type/+/id/+/mon").await;
    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let (topic, body) = app.next_publish(WAIT).await.unwrap();
    assert_eq!(topic, "iot-2/type/sensor/id/dev1/mon");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Action"], "Connect");
    drop(dev);

    policy["status_topic"] = json!("devices/{type}/{id}/status");
    set_policy(&server, "acme", policy).await;
    let mut app = acme.connect("a:dash", "dash2").await;
    app.subscribe("devices/+/+/status").await;
    let _dev = acme.connect("d:sensor:dev2", "d:acme:sensor:dev2").await;
    let (topic, body) = app.next_publish(WAIT).await.unwrap();
    assert_eq!(topic, "devices/sensor/dev2/status");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Action"], "Connect");
}

/// The fenced JSON block that follows `<!-- example:NAME -->` in
/// docs/topic-policies.md: the worked examples run as written.
fn doc_example(name: &str) -> Value {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/topic-policies.md"
    ))
    .expect("docs/topic-policies.md");
    let marker = format!("<!-- example:{name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} missing"));
    let rest = &doc[at..];
    let start = rest.find("```json\n").expect("a json block") + "```json\n".len();
    let end = rest[start..].find("```").expect("end of block");
    serde_json::from_str(&rest[start..start + end]).expect("the example is JSON")
}

#[tokio::test]
async fn worked_example_things_with_rumqttc() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    set_policy(&server, "acme", doc_example("things")).await;
    let mut app = acme.connect("a:backend", "backend").await;
    app.subscribe("things/+/telemetry").await;
    let mut thing = acme.connect("d:thermostat:t-100", "t-100").await;
    thing.subscribe("things/t-100/cmd/#").await;
    publish(&thing, "things/t-100/telemetry", "{\"temp\":20}").await;
    assert_eq!(
        app.next_publish(WAIT).await.unwrap().0,
        "things/t-100/telemetry"
    );
    publish(&app, "things/t-100/cmd/setpoint", "21").await;
    assert_eq!(
        thing.next_publish(WAIT).await.unwrap().0,
        "things/t-100/cmd/setpoint"
    );
    // Another thing's topics are not its own.
    publish(&thing, "things/t-200/telemetry", "x").await;
    assert!(thing.wait_closed(WAIT).await.is_some());
}

#[tokio::test]
async fn worked_example_gateways_with_rumqttc() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    set_policy(&server, "acme", doc_example("gateways")).await;
    let mut ops = acme.connect("a:ops", "a:acme:ops").await;
    ops.subscribe("sites/#").await;
    let mut gw = acme.connect("g:site:berlin", "g:acme:site:berlin").await;
    gw.subscribe("sites/berlin/cmd/#").await;
    publish(&gw, "sites/berlin/meters/m1/energy", "42").await;
    assert_eq!(
        ops.next_publish(WAIT).await.unwrap().0,
        "sites/berlin/meters/m1/energy"
    );
    publish(&ops, "sites/berlin/cmd/firmware", "v2").await;
    assert_eq!(
        gw.next_publish(WAIT).await.unwrap().0,
        "sites/berlin/cmd/firmware"
    );
    // A meter reads the sites' broadcast topics, nothing else.
    let mut meter = acme.connect("d:meter:m1", "d:acme:meter:m1").await;
    assert_eq!(
        meter.subscribe("sites/+/broadcast").await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        meter.subscribe("sites/#").await,
        [SubscribeReasonCode::Failure]
    );
    // One gateway cannot write in another site's topics.
    publish(&gw, "sites/paris/meters/m9/energy", "1").await;
    assert!(gw.wait_closed(WAIT).await.is_some());
}

#[tokio::test]
async fn mosquitto_clients_in_custom_mode() {
    if !have_program("mosquitto_pub", &["--help"]) {
        return;
    }
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    set_policy(&server, "acme", doc_example("things")).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, contents: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_string_lossy().into_owned()
    };
    let args = |identity: &str, name: &str| {
        let cert = acme.cert(identity);
        vec![
            "-h".to_owned(),
            format!("acme.{DOMAIN}"),
            "-p".into(),
            acme.mqtt.port().to_string(),
            "--cafile".into(),
            write("server.pem", &acme.server_pem),
            "--cert".into(),
            write(&format!("{name}.pem"), &cert.chain_pem),
            "--key".into(),
            write(&format!("{name}.key"), &cert.key_pem),
        ]
    };
    for version in ["mqttv311", "mqttv5"] {
        // Retained, so the subscriber gets it whenever its subscription lands.
        let out = Command::new("mosquitto_pub")
            .args(args("d:thermostat:t-100", "thing"))
            .args(["-i", "t-100", "-V", version, "-q", "1", "-r"])
            .args([
                "-t",
                &format!("things/t-100/telemetry/{version}"),
                "-m",
                "20.5",
            ])
            .output()
            .expect("mosquitto_pub");
        assert!(
            out.status.success(),
            "mosquitto_pub ({version}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("mosquitto_sub")
            .args(args("a:backend", "app"))
            .args(["-i", "backend", "-V", version, "-v", "-C", "1", "-W", "10"])
            .args(["-t", &format!("things/+/telemetry/{version}")])
            .output()
            .expect("mosquitto_sub");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("things/t-100/telemetry/{version} 20.5"),
            "mosquitto_sub ({version}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The Watson client id is not this rule's: refused.
    let out = Command::new("mosquitto_pub")
        .args(args("d:thermostat:t-100", "thing"))
        .args([
            "-i",
            "d:acme:thermostat:t-100",
            "-t",
            "things/t-100/x",
            "-m",
            "1",
        ])
        .output()
        .expect("mosquitto_pub");
    assert!(!out.status.success());
}

/// Destinations of a custom-mode org take any filter of its topic space (and receive
/// into any topic of it), where a watson-mode org's take application filters only: a
/// bridge from acme (custom) into beta (custom, standing in for a partner broker) on
/// the same broker, both ways.
#[tokio::test(flavor = "multi_thread")]
async fn destinations_of_a_custom_org_use_its_topics() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let beta = Org::create(&server, "beta").await;
    let open = json!({"mode": "custom", "rules": [
        {"who": "a:*", "client_id": "*", "publish": ["#"], "subscribe": ["#"]}
    ]});
    set_policy(&server, "acme", doc_example("things")).await;
    set_policy(&server, "beta", open).await;
    let api = server.api();
    // The bridge's identity in beta, issued by beta's CA, uploaded to acme.
    let id = beta.cert("a:from-acme");
    let cert = api
        .post(
            "/orgs/acme/client-certs",
            json!({"certificate": id.chain_pem, "private_key": id.key_pem}),
        )
        .await;
    let bridge = |filter: &str| {
        json!({"name": "to-beta", "url": format!("mqtts://127.0.0.1:{}", beta.mqtt.port()),
               "server_name": format!("beta.{DOMAIN}"), "client_cert": cert["id"],
               "ca_certificates": beta.server_pem, "client_id": "acme-bridge",
               "forward": [{"filter": filter, "topic": "acme/{topic}", "qos": 1}],
               "receive": [{"filter": "acme-cmd/+", "topic": "things/{1}/cmd/from-beta", "qos": 1}]})
    };
    // Watson filters mean nothing special here; the org's own topics are what it takes.
    let (code, b) = api
        .call(
            Method::POST,
            "/orgs/acme/bridges",
            Some(bridge("things/+/telemetry")),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let (code, e) = api
        .call(Method::POST, "/orgs/acme/bridges", Some(bridge("$SYS/#")))
        .await;
    assert_eq!(code, 400, "{e}");

    let mut partner = beta.connect("a:partner", "partner").await;
    partner.subscribe("acme/#").await;
    let mut thing = acme.connect("d:thermostat:t-100", "t-100").await;
    thing.subscribe("things/t-100/cmd/#").await;
    // The bridge connects in the background: publish until the partner has it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let got = loop {
        publish(&thing, "things/t-100/telemetry", "20.5").await;
        if let Some(m) = partner.next_publish(Duration::from_millis(500)).await {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing bridged");
    };
    assert_eq!(
        got,
        ("acme/things/t-100/telemetry".to_owned(), b"20.5".to_vec())
    );
    // And back: the partner's command reaches the thing on its own topic.
    publish(&partner, "acme-cmd/t-100", "21").await;
    assert_eq!(
        thing.next_publish(WAIT).await.unwrap(),
        ("things/t-100/cmd/from-beta".to_owned(), b"21".to_vec())
    );
}

/// A persistent session that was offline during a change keeps only what its rule
/// allows when it comes back.
#[tokio::test]
async fn a_persistent_session_resumes_with_what_the_policy_allows_now() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let wide = json!({"mode": "custom", "rules": [
        {"who": "d:*:*", "publish": ["#"]},
        {"who": "a:*", "client_id": "*", "subscribe": ["devices/#", "other/#"]}
    ]});
    set_policy(&server, "acme", wide).await;
    let cert = acme.cert("a:archive");
    let opts = || {
        let mut o =
            device_sim::client::mqtt_options(&acme.target(), "archive", Some(&cert)).unwrap();
        o.set_clean_session(false);
        o
    };
    let (c, el) = device_sim::client::async_client(opts(), 10);
    let mut app = start_loop(c, el).await.unwrap();
    app.subscribe("devices/#").await;
    app.subscribe("other/#").await;
    app.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    set_policy(
        &server,
        "acme",
        json!({"mode": "custom", "rules": [
            {"who": "d:*:*", "publish": ["#"]},
            {"who": "a:*", "client_id": "*", "subscribe": ["devices/#"]}
        ]}),
    )
    .await;
    let (c, el) = device_sim::client::async_client(opts(), 10);
    let mut app = start_loop(c, el).await.unwrap();
    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    publish(&dev, "other/x", "gone").await;
    publish(&dev, "devices/sensor/dev1/t", "kept").await;
    assert_eq!(
        app.next_publish(WAIT).await.unwrap(),
        ("devices/sensor/dev1/t".to_owned(), b"kept".to_vec()),
        "the withdrawn subscription survived the reconnect"
    );
}
