//! Custom domains end to end: the real `certmq` binary, domains registered through the
//! admin API, then TLS handshakes and MQTT clients whose SNI is `<org>.<custom domain>`
//! (names that resolve nowhere: device-sim reaches the broker through its local relay).

mod support;

use std::time::Duration;

use device_sim::client::BrokerTarget;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rumqttc::QoS;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(5);
const CUSTOM: &str = "iot.example.test";

#[track_caller]
fn assert_unrecognized(result: Result<(), String>) {
    let err = result.expect_err("the handshake should fail");
    assert!(
        err.contains("UnrecognisedName") || err.contains("UnrecognizedName"),
        "{err}"
    );
}

/// An org with a CA, created through the API, its custom domain registered; no server
/// certificate yet.
async fn org_with_domain(server: &Server, id: &str) -> (device_sim::certs::TestCa, String) {
    let api = server.api();
    api.post("/orgs", json!({ "id": id })).await;
    let ca = device_sim::certs::TestCa::new(&format!("{id} root CA")).unwrap();
    let ca_id = api.upload_ca(id, &ca.pem()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            &format!("/orgs/{id}/domains"),
            Some(json!({ "domains": [CUSTOM] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "domains": [CUSTOM] }));
    (ca, ca_id)
}

fn target(server: &Server, sni: &str, server_ca_pem: &str) -> BrokerTarget {
    BrokerTarget {
        host: "127.0.0.1".into(),
        port: server.mqtt.port(),
        sni: sni.into(),
        server_ca_pem: server_ca_pem.into(),
    }
}

/// A device connected at `<org>.<custom>` publishes; an application of the same org
/// connected at `<org>.<base domain>` receives it.
async fn event_flows(org: &Org, device_target: &BrokerTarget) {
    let mut app = org.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let dev = connect_with(
        device_target,
        "d:acme:sensor:dev1",
        &org.cert("d:sensor:dev1"),
    )
    .await
    .unwrap_or_else(|e| panic!("device at {} could not connect: {e}", device_target.sni));
    dev.client
        .publish("iot-2/evt/temp/fmt/json", QoS::AtLeastOnce, false, "21")
        .await
        .unwrap();
    let (topic, payload) = app.next_publish(WAIT).await.expect("event at the app");
    assert_eq!(topic, "iot-2/type/sensor/id/dev1/evt/temp/fmt/json");
    assert_eq!(payload, b"21");
}

#[tokio::test]
async fn sni_on_a_custom_domain_selects_the_org() {
    let server = Server::start();
    let (ca, ca_id) = org_with_domain(&server, "acme").await;
    // A self-signed certificate made after the domain was registered covers it too.
    let srv = server
        .api()
        .post("/orgs/acme/server-certs/self-signed", json!({}))
        .await;
    assert_eq!(
        srv["dns_names"],
        json!(["acme.messaging.localhost", format!("acme.{CUSTOM}")])
    );
    let org = Org {
        id: "acme".into(),
        ca,
        ca_id,
        server_pem: srv["pem"].as_str().unwrap().to_owned(),
        mqtt: server.mqtt,
    };
    let sni = format!("acme.{CUSTOM}");
    let cert = org.cert("d:sensor:dev1");
    raw_handshake(server.mqtt, &sni, &org.server_pem, Some(&cert))
        .await
        .expect("handshake at the custom domain");
    event_flows(&org, &target(&server, &sni, &org.server_pem)).await;

    // Not the domain's owner, an unregistered domain, the bare domain: no org.
    for name in [
        format!("beta.{CUSTOM}"),
        "acme.unknown.example.test".to_owned(),
        CUSTOM.to_owned(),
    ] {
        assert_unrecognized(raw_handshake(server.mqtt, &name, &org.server_pem, Some(&cert)).await);
    }
}

#[tokio::test]
async fn wildcard_server_cert_for_a_custom_domain() {
    let server = Server::start();
    let (ca, ca_id) = org_with_domain(&server, "acme").await;

    // The org's own server PKI: a root and a leaf for *.<custom> plus one exact name.
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.distinguished_name
        .push(DnType::CommonName, "Acme server root");
    let root_cert = root.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root, root_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec![format!("*.{CUSTOM}"), "mqtt.acme-devices.test".into()])
            .unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, format!("*.{CUSTOM}"));
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let api = server.api();
    let (status, uploaded) = api
        .call(
            reqwest::Method::POST,
            "/orgs/acme/server-certs",
            Some(json!({
                "certificate": leaf_cert.pem(),
                "private_key": leaf_key.serialize_pem(),
            })),
        )
        .await;
    assert_eq!(status, 201, "{uploaded}");
    let id = uploaded["id"].as_str().unwrap();
    if uploaded["active"] != json!(true) {
        api.post(&format!("/orgs/acme/server-certs/{id}/activate"), json!({}))
            .await;
    }

    let org = Org {
        id: "acme".into(),
        ca,
        ca_id,
        server_pem: root_cert.pem(),
        mqtt: server.mqtt,
    };
    let cert = org.cert("d:sensor:dev1");
    // The client checks the wildcard against the name it asked for (WebPKI, via the root).
    let sni = format!("acme.{CUSTOM}");
    raw_handshake(server.mqtt, &sni, &org.server_pem, Some(&cert))
        .await
        .expect("handshake at acme.<custom> with the wildcard certificate");
    // An exact name on the active certificate selects the org as well.
    raw_handshake(
        server.mqtt,
        "mqtt.acme-devices.test",
        &org.server_pem,
        Some(&cert),
    )
    .await
    .expect("handshake at an exact certificate name");

    // A device connects with rumqttc (through device-sim's relay: the name resolves
    // nowhere) and its session works.
    let mut dev = connect_with(
        &target(&server, &sni, &org.server_pem),
        "d:acme:sensor:dev1",
        &cert,
    )
    .await
    .unwrap_or_else(|e| panic!("device at {sni} could not connect: {e}"));
    let granted = dev.subscribe("iot-2/cmd/+/fmt/+").await;
    assert_eq!(
        granted,
        [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    for name in [
        format!("beta.{CUSTOM}"),
        "acme.unknown.example.test".to_owned(),
    ] {
        assert_unrecognized(raw_handshake(server.mqtt, &name, &org.server_pem, Some(&cert)).await);
    }
}
