//! Operations: Prometheus metrics scraped and parsed, and the authorization dry run
//! answering with the rule that decided.

mod support;

use std::collections::HashMap;

use reqwest::Method;
use rumqttc::QoS;
use serde_json::json;
use support::*;

/// Parses the text exposition into `name{labels}` → value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn find(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> Option<f64> {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}{{")) && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
        .reduce(|a, b| a + b)
}

#[tokio::test]
async fn metrics_count_connections_handshakes_messages_and_expiry() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    for _ in 0..3 {
        dev.client
            .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    for _ in 0..3 {
        app.next_publish(std::time::Duration::from_secs(5))
            .await
            .unwrap();
    }
    let foreign = device_sim::certs::TestCa::new("x")
        .unwrap()
        .issue_client("d:s:d", Default::default())
        .unwrap();
    let _ = raw_handshake(
        server.mqtt,
        &format!("acme.{DOMAIN}"),
        &acme.server_pem,
        Some(&foreign),
    )
    .await;
    let _ = raw_handshake(
        server.mqtt,
        &format!("nope.{DOMAIN}"),
        &acme.server_pem,
        Some(&foreign),
    )
    .await;

    let api = server.api();
    let unauth = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    let text = api.0.metrics().await.unwrap();
    let m = parse_metrics(&text);
    assert_eq!(
        find(
            &m,
            "certmq_connections",
            &["org=\"acme\"", "kind=\"device\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        find(&m, "certmq_connections", &["org=\"acme\"", "kind=\"app\""]),
        Some(1.0)
    );
    assert!(
        find(
            &m,
            "certmq_handshakes_total",
            &["org=\"acme\"", "result=\"ok\""]
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(
        find(
            &m,
            "certmq_handshakes_total",
            &["org=\"acme\"", "reason=\"unknown_ca\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        find(
            &m,
            "certmq_handshakes_total",
            &["reason=\"unrecognized_name\""]
        ),
        Some(1.0)
    );
    assert!(
        find(
            &m,
            "certmq_publishes_total",
            &["org=\"acme\"", "kind=\"device\""]
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    assert!(
        find(
            &m,
            "certmq_deliveries_total",
            &["org=\"acme\"", "kind=\"app\""]
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    let days = find(
        &m,
        "certmq_cert_days_to_expiry",
        &["org=\"acme\"", "kind=\"ca\""],
    )
    .unwrap();
    assert!((360.0..=366.0).contains(&days), "{days}");
    assert!(find(&m, "certmq_cert_not_after_seconds", &["kind=\"server\""]).is_some());
}

#[tokio::test]
async fn authz_dry_run_names_the_deciding_rule() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let dev = acme.cert("d:sensor:dev1");
    let check = |body: serde_json::Value| {
        let api = &api;
        async move {
            api.call(Method::POST, "/orgs/acme/authz/check", Some(body))
                .await
        }
    };

    // The request and answer are the shared `registry::live` types; the OpenAPI
    // document names exactly their fields.
    let request = json!({
        "certificate": dev.chain_pem, "client_id": "d:acme:sensor:dev1",
        "topic": "iot-2/evt/temp/fmt/json", "action": "publish"
    });
    let mut with_token = keys(&request);
    with_token.push("token".into());
    with_token.sort();
    assert_eq!(api.documented_properties("AuthzCheck").await, with_token);
    let decision_fields = api.documented_properties("AuthzDecision").await;
    let stages = api.documented_schema("AuthzStage").await["enum"].clone();
    let documented = |d: &serde_json::Value| {
        assert_eq!(keys(d), decision_fields, "{d}");
        assert!(stages.as_array().unwrap().contains(&d["stage"]), "{d}");
    };

    let (s, d) = check(request).await;
    assert_eq!(s, 200, "{d}");
    documented(&d);
    assert_eq!(d["allowed"], true);
    assert_eq!(d["ca_id"], acme.ca_id.as_str());
    assert_eq!(
        d["internal_topic"],
        "/tenants/acme/iot-2/type/sensor/id/dev1/evt/temp/fmt/json"
    );

    let (_, d) =
        check(json!({ "certificate": dev.chain_pem, "topic": "iot-2/type/x/id/y/evt/e/fmt/f" }))
            .await;
    assert_eq!(
        (d["allowed"].as_bool(), d["stage"].as_str()),
        (Some(false), Some("topic"))
    );

    let (_, d) = check(json!({
        "certificate": dev.chain_pem, "topic": "iot-2/cmd/+/fmt/+", "action": "subscribe"
    }))
    .await;
    assert_eq!(d["allowed"], true, "{d}");

    let (_, d) =
        check(json!({ "certificate": dev.chain_pem, "client_id": "d:acme:sensor:other" })).await;
    assert_eq!(d["stage"], "client_id");
    assert_eq!(d["expected_client_id"], "d:acme:sensor:dev1");

    let foreign = device_sim::certs::TestCa::new("x")
        .unwrap()
        .issue_client("d:sensor:dev1", Default::default())
        .unwrap();
    let (_, d) = check(json!({ "certificate": foreign.chain_pem })).await;
    assert_eq!(
        (d["allowed"].as_bool(), d["stage"].as_str()),
        (Some(false), Some("certificate")),
        "{d}"
    );
    documented(&d);

    api.post(
        "/orgs/acme/blocked-devices",
        json!({ "identity": "d:sensor:dev1" }),
    )
    .await;
    let (_, d) = check(json!({ "certificate": dev.chain_pem })).await;
    assert_eq!(d["stage"], "blocked");
    documented(&d);

    let (s, d) = check(json!({ "certificate": "garbage" })).await;
    assert_eq!(s, 400, "{d}");
    let (s, _) = api
        .call(
            Method::POST,
            "/orgs/nope/authz/check",
            Some(json!({ "certificate": dev.chain_pem })),
        )
        .await;
    assert_eq!(s, 404);
}
