//! Revocation end to end: blocking an identity, uploading a CRL, deleting a CA and
//! kicking through the connections API each close exactly the affected live sessions
//! at once, and the next attempt is refused.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(5);

/// Waits for a session to be closed by the broker and returns how long it took from
/// `since` (the moment the API call was sent) until the client saw the close.
async fn closed_within(client: &mut Client, since: Instant) -> Duration {
    client
        .wait_closed(Duration::from_secs(1))
        .await
        .expect("the live session was not closed within a second");
    since.elapsed()
}

#[tokio::test]
async fn blocking_an_identity_closes_its_session_and_refuses_it() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let mut dev1 = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let mut dev2 = acme.connect("d:sensor:dev2", "d:acme:sensor:dev2").await;

    let sent = Instant::now();
    let b = api
        .post(
            "/orgs/acme/blocked-devices",
            json!({ "identity": "d:sensor:dev2", "reason": "stolen" }),
        )
        .await;
    assert_eq!(b["identity"], "d:sensor:dev2");
    let took = closed_within(&mut dev2, sent).await;
    eprintln!("block → session closed in {took:?}");
    still_open(&mut dev1).await;

    let err = connect_with(
        &acme.target(),
        "d:acme:sensor:dev2",
        &acme.cert("d:sensor:dev2"),
    )
    .await
    .err()
    .expect("a blocked identity was admitted");
    assert!(err.contains("NotAuthorized"), "{err}");
    let (s, v) = api
        .call(Method::GET, "/orgs/acme/blocked-devices", None)
        .await;
    assert_eq!((s, v[0]["reason"].as_str()), (200, Some("stolen")));

    let (s, _) = api
        .call(
            Method::DELETE,
            "/orgs/acme/blocked-devices/d:sensor:dev2",
            None,
        )
        .await;
    assert_eq!(s, 204);
    acme.connect("d:sensor:dev2", "d:acme:sensor:dev2").await;
}

#[tokio::test]
async fn a_crl_closes_the_revoked_session_and_refuses_its_handshake() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let good = acme.cert("d:sensor:dev1");
    let bad = acme.cert("d:sensor:dev2");
    let mut dev1 = connect_with(&acme.target(), "d:acme:sensor:dev1", &good)
        .await
        .unwrap();
    let mut dev2 = connect_with(&acme.target(), "d:acme:sensor:dev2", &bad)
        .await
        .unwrap();

    // A CRL signed by another org's CA is refused and changes nothing.
    let stranger = device_sim::certs::TestCa::new("stranger").unwrap();
    let foreign = stranger.crl_pem(&[&bad.serial], 1).unwrap();
    let (status, v) = api.post_raw("/orgs/acme/crls", None, foreign).await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["code"], "crl_not_from_org_ca");
    still_open(&mut dev2).await;

    let crl = acme.ca.crl_pem(&[&bad.serial], 2).unwrap();
    let sent = Instant::now();
    let (status, v) = api
        .post_raw("/orgs/acme/crls", Some("application/x-pem-file"), crl)
        .await;
    assert_eq!(status, 201, "{v}");
    let took = closed_within(&mut dev2, sent).await;
    eprintln!("CRL upload → session closed in {took:?}");
    still_open(&mut dev1).await;

    let err = raw_handshake(
        server.mqtt,
        &format!("acme.{DOMAIN}"),
        &acme.server_pem,
        Some(&bad),
    )
    .await
    .unwrap_err();
    assert!(err.contains("CertificateRevoked"), "{err}");
    raw_handshake(
        server.mqtt,
        &format!("acme.{DOMAIN}"),
        &acme.server_pem,
        Some(&good),
    )
    .await
    .expect("an unrevoked certificate of the same CA is admitted");
    let (_, list) = api.call(Method::GET, "/orgs/acme/crls", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn deleting_a_ca_closes_only_its_sessions() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let second = device_sim::certs::TestCa::new("second").unwrap();
    let second_id = api.upload_ca("acme", &second.pem()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut old = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let cert = second
        .issue_client(
            "d:sensor:dev2",
            device_sim::certs::ClientCertOptions::default(),
        )
        .unwrap();
    let mut new = connect_with(&acme.target(), "d:acme:sensor:dev2", &cert)
        .await
        .unwrap();

    let sent = Instant::now();
    let (s, _) = api
        .call(
            Method::DELETE,
            &format!("/orgs/acme/ca-certs/{second_id}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let took = closed_within(&mut new, sent).await;
    eprintln!("CA delete → session closed in {took:?}");
    still_open(&mut old).await;
}

#[tokio::test]
async fn connections_api_lists_and_kicks() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let beta = Org::create(&server, "beta").await;
    let api = server.api();
    let mut dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let _other = beta.connect("d:sensor:dev1", "d:beta:sensor:dev1").await;

    let (s, list) = api.call(Method::GET, "/orgs/acme/connections", None).await;
    assert_eq!(s, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let c = &list[0];
    assert_eq!(c["client_id"], "d:acme:sensor:dev1");
    assert_eq!(c["identity"], "d:sensor:dev1");
    assert_eq!(c["kind"], "device");
    assert_eq!(c["ca_id"], acme.ca_id.as_str());
    assert_eq!(c["ca_fingerprint"].as_str().map(str::len), Some(64));
    assert!(c["cert_serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(c["remote_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(c["since"].is_string() && c["cert_not_after"].is_string());
    // The broker's session type, passed through: the OpenAPI document copies it.
    assert_eq!(keys(c), api.documented_properties("Session").await);

    // Another org's client id is not found through acme.
    let (s, _) = api
        .call(
            Method::DELETE,
            "/orgs/acme/connections/d:beta:sensor:dev1",
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            Method::DELETE,
            "/orgs/acme/connections/d:acme:sensor:dev1",
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert!(dev.wait_closed(WAIT).await.is_some());
}
