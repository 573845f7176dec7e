//! Per-org limits end to end (docs/limits.md): the real `certmq` binary, its admin API
//! over HTTP with an org token and the platform token, and devices over mTLS. A limit
//! lowered through the API holds the next connection; raising needs the platform token;
//! the refusal is in the metrics.

mod support;

use device_sim::AdminClient;
use reqwest::Method;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_through_the_api_hold_the_next_connection() {
    let server = Server::start();
    let api = server.api();
    let acme = Org::create(&server, "acme").await;
    let token = api.post("/orgs/acme/tokens", json!({"name": "ops"})).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let org = Api(AdminClient::new(
        &format!("http://{}", server.admin),
        &token,
    ));

    // Defaults, then lowered by the org itself.
    let (status, limits) = org.call(Method::GET, "/orgs/acme/limits", None).await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(limits["max_connections"], 50000);
    let (status, limits) = org
        .call(
            Method::PUT,
            "/orgs/acme/limits",
            Some(json!({"max_connections": 1})),
        )
        .await;
    assert_eq!(
        (status, &limits["max_connections"]),
        (200, &json!(1)),
        "{limits}"
    );

    let _first = acme.connect("d:sensor:one", "d:acme:sensor:one").await;
    let cert = acme.cert("d:sensor:two");
    let refused = connect_with(&acme.target(), "d:acme:sensor:two", &cert)
        .await
        .err()
        .expect("a second connection over max_connections=1 was admitted");
    assert!(refused.contains("ServiceUnavailable"), "{refused}");

    // The org cannot raise it back; the platform can, and the next connection is in.
    let (status, body) = org
        .call(
            Method::PUT,
            "/orgs/acme/limits",
            Some(json!({"max_connections": 2})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "raise_needs_platform_token");
    let (status, body) = api
        .call(
            Method::PUT,
            "/orgs/acme/limits",
            Some(json!({"max_connections": 2})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    connect_with(&acme.target(), "d:acme:sensor:two", &cert)
        .await
        .expect("admitted after the platform raised the limit");

    let metrics = api.0.metrics().await.expect("metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("certmq_limit_refusals_total{")
                && l.contains("org=\"acme\"")
                && l.contains("limit=\"max_connections\"")
        })
        .unwrap_or_else(|| panic!("no refusal counted:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
}
