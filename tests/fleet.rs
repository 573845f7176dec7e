//! Fleet operations end to end (docs/api.md, "Fleet operations"): the real binary, the
//! admin API over HTTP, MQTT clients over mTLS. Revoking one certificate, the device
//! inventory, the network policy, CA proof of possession and the
//! `tls_client_cert_and_token` security level; bad input changes nothing.

mod support;

use std::time::{Duration, Instant};

use device_sim::certs::{ClientCert, ClientCertOptions};
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

fn fingerprint(cert: &ClientCert) -> String {
    registry::cert::fingerprint(&cert.der)
}

#[tokio::test]
async fn revoking_one_certificate_closes_its_session_and_refuses_only_that_certificate() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let beta = Org::create(&server, "beta").await;
    let api = server.api();
    let old = acme.cert("d:sensor:dev1");
    let mut dev1 = connect_with(&acme.target(), "d:acme:sensor:dev1", &old)
        .await
        .unwrap();
    let other = acme.cert("d:sensor:dev2");
    let mut dev2 = connect_with(&acme.target(), "d:acme:sensor:dev2", &other)
        .await
        .unwrap();
    let mut in_beta = beta.connect("d:sensor:dev1", "d:beta:sensor:dev1").await;

    // The inventory knows the certificate, its serial and the CA that admitted it.
    let (s, d) = api
        .call(Method::GET, "/orgs/acme/devices/d:sensor:dev1", None)
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["connected"], true);
    assert_eq!(d["client_id"], "d:acme:sensor:dev1");
    assert_eq!(
        d["certificates"][0]["fingerprint_sha256"],
        fingerprint(&old)
    );
    assert_eq!(d["certificates"][0]["ca_id"], acme.ca_id.as_str());

    // Bad input: an unknown fingerprint, a malformed one, another org's certificate.
    for (body, status, code) in [
        (
            json!({"fingerprint_sha256": "ab".repeat(32)}),
            422,
            "unknown_certificate",
        ),
        (json!({"fingerprint_sha256": "xyz"}), 400, "bad_request"),
        (json!({"serial": "01"}), 400, "bad_request"),
    ] {
        let (s, v) = api
            .call(Method::POST, "/orgs/acme/revoked-certs", Some(body))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{v}"
        );
    }
    let foreign = json!({"fingerprint_sha256": fingerprint(&old)});
    let (s, v) = api
        .call(Method::POST, "/orgs/beta/revoked-certs", Some(foreign))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("unknown_certificate"))
    );
    still_open(&mut dev1).await;
    let (_, list) = api
        .call(Method::GET, "/orgs/acme/revoked-certs", None)
        .await;
    assert_eq!(list, json!([]));

    // Revoke by fingerprint: the live session closes at once, the handshake is refused.
    let sent = Instant::now();
    let rec = api
        .post(
            "/orgs/acme/revoked-certs",
            json!({"fingerprint_sha256": fingerprint(&old), "reason": "key leaked"}),
        )
        .await;
    assert_eq!(rec["identity"], "d:sensor:dev1");
    dev1.wait_closed(Duration::from_secs(1))
        .await
        .expect("the revoked certificate's session was not closed within a second");
    eprintln!("revoke → session closed in {:?}", sent.elapsed());
    still_open(&mut dev2).await;
    still_open(&mut in_beta).await;
    let sni = format!("acme.{DOMAIN}");
    let err = raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&old))
        .await
        .unwrap_err();
    assert!(err.contains("CertificateRevoked"), "{err}");
    let (s, _) = api
        .call(
            Method::POST,
            "/orgs/acme/revoked-certs",
            Some(json!({"fingerprint_sha256": fingerprint(&old)})),
        )
        .await;
    assert_eq!(s, 409, "revoking twice is a conflict");

    // The same identity connects with a new certificate.
    let new = acme.cert("d:sensor:dev1");
    let _dev1 = connect_with(&acme.target(), "d:acme:sensor:dev1", &new)
        .await
        .expect("the identity connects with another certificate");
    let (_, d) = api
        .call(Method::GET, "/orgs/acme/devices/d:sensor:dev1", None)
        .await;
    let fps: Vec<&str> = d["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["fingerprint_sha256"].as_str().unwrap())
        .collect();
    assert_eq!(fps, [fingerprint(&old), fingerprint(&new)], "{d}");

    // Revoke by CA and serial (hex, colons optional).
    let serial: String = other.serial.iter().map(|b| format!("{b:02X}")).collect();
    let by_serial = api
        .post(
            "/orgs/acme/revoked-certs",
            json!({"ca_id": acme.ca_id, "serial": serial}),
        )
        .await;
    dev2.wait_closed(Duration::from_secs(1))
        .await
        .expect("revoked by CA and serial: the session closes");
    let (_, list) = api
        .call(Method::GET, "/orgs/acme/revoked-certs", None)
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    // Lifting a revocation admits the certificate again.
    let id = rec["id"].as_str().unwrap();
    let (s, _) = api
        .call(
            Method::DELETE,
            &format!("/orgs/acme/revoked-certs/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&old))
        .await
        .expect("a lifted revocation admits the certificate");
    assert!(
        raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&other))
            .await
            .is_err(),
        "the other revocation stands ({by_serial})"
    );
    // Audited like every change.
    let (_, audit) = api.call(Method::GET, "/orgs/acme/audit", None).await;
    let summaries: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["summary"].as_str())
        .collect();
    assert!(
        summaries
            .iter()
            .any(|s| s.starts_with("revoke certificate")),
        "{summaries:?}"
    );
    let text = api.0.metrics().await.unwrap();
    assert!(
        metric(
            &text,
            "certmq_handshakes_total",
            &["org=\"acme\"", "reason=\"certificate_revoked\""]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
}

#[tokio::test]
async fn the_inventory_pages_filters_and_counts_expiring_certificates() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let soon = ClientCertOptions {
        not_after: time::OffsetDateTime::now_utc() + time::Duration::days(10),
        ..Default::default()
    };
    let expiring = acme.ca.issue_client("d:sensor:dev0", soon).unwrap();
    let _live = connect_with(&acme.target(), "d:acme:sensor:dev0", &expiring)
        .await
        .unwrap();
    // The others' certificates (the default 30 days would count as expiring) last a year.
    let lasting = |identity: &str| {
        let opts = ClientCertOptions {
            not_after: time::OffsetDateTime::now_utc() + time::Duration::days(365),
            ..Default::default()
        };
        acme.ca.issue_client(identity, opts).unwrap()
    };
    for i in 1..5 {
        let cert = lasting(&format!("d:sensor:dev{i}"));
        let mut c = connect_with(&acme.target(), &format!("d:acme:sensor:dev{i}"), &cert)
            .await
            .unwrap();
        c.client.disconnect().await.unwrap();
        c.wait_closed(Duration::from_secs(5)).await;
    }
    let _app = connect_with(&acme.target(), "a:acme:dash", &lasting("a:dash"))
        .await
        .unwrap();
    // Reconnecting adds no certificate and no record.
    for _ in 0..3 {
        let c = connect_with(&acme.target(), "d:acme:sensor:dev0", &expiring)
            .await
            .unwrap();
        drop(c);
    }
    let _live = connect_with(&acme.target(), "d:acme:sensor:dev0", &expiring)
        .await
        .unwrap();

    let get = |q: &str| {
        let api = &api;
        let path = format!("/orgs/acme/devices{q}");
        async move { api.call(Method::GET, &path, None).await }
    };
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["identity"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, all) = get("").await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(ids(&all).len(), 6);
    // Pages of two, in identity order, until a short page.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (s, page) = get(&format!("?prefix=d:&limit=2{after}")).await;
        assert_eq!(s, 200, "{page}");
        let page = ids(&page);
        seen.extend(page.clone());
        if page.len() < 2 {
            break;
        }
        after = format!("&after={}", page.last().unwrap());
    }
    assert_eq!(
        seen,
        (0..5)
            .map(|i| format!("d:sensor:dev{i}"))
            .collect::<Vec<_>>()
    );
    let (_, soon) = get("?expiring_within_days=30").await;
    assert_eq!(ids(&soon), ["d:sensor:dev0"]);
    assert_eq!(soon[0]["certificates"].as_array().map(Vec::len), Some(1));
    let (_, live) = get("?connected=true").await;
    assert_eq!(ids(&live), ["a:dash", "d:sensor:dev0"]);
    let (_, gone) = get("?connected=false&prefix=d:").await;
    assert_eq!(ids(&gone).len(), 4);
    for bad in [
        "?limit=100000",
        "?limit=0",
        "?expiring_within_days=99999",
        "?colour=red",
    ] {
        let (s, v) = get(bad).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {v}"
        );
    }
    let text = api.0.metrics().await.unwrap();
    assert_eq!(
        metric(&text, "certmq_device_certs_expiring", &["org=\"acme\""]),
        Some(1.0),
        "{text}"
    );

    // Another org sees none of it; deleting the org deletes its inventory.
    let _beta = Org::create(&server, "beta").await;
    let (s, v) = api.call(Method::GET, "/orgs/beta/devices", None).await;
    assert_eq!((s, v), (200, json!([])));
    let (s, _) = api
        .call(Method::GET, "/orgs/beta/devices/d:sensor:dev0", None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api.call(Method::DELETE, "/orgs/acme", None).await;
    assert_eq!(s, 204);
    let _acme = Org::create(&server, "acme").await;
    let (s, v) = get("").await;
    assert_eq!(
        (s, v),
        (200, json!([])),
        "a re-created org starts with no inventory"
    );
}

#[tokio::test]
async fn a_network_policy_refuses_addresses_before_any_certificate_work() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let beta = Org::create(&server, "beta").await;
    let api = server.api();
    let mut dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let mut in_beta = beta.connect("d:sensor:dev1", "d:beta:sensor:dev1").await;
    let put = |body: Value| {
        let api = &api;
        async move {
            api.call(Method::PUT, "/orgs/acme/network-policy", Some(body))
                .await
        }
    };

    // Malformed and dead entries: 422 naming the entry, nothing changed.
    let (s, v) = put(json!({"allow": ["203.0.113.0/24", "10.0.0.0/33"]})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_cidr"))
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("allow[1]"),
        "{v}"
    );
    let (s, v) = put(json!({"allow": ["127.0.0.1"], "deny": ["127.0.0.0/8"]})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("cidr_overlap"))
    );
    let (s, v) = put(json!({"allow": "127.0.0.1"})).await;
    assert_eq!(s, 400, "{v}");
    let (_, v) = api
        .call(Method::GET, "/orgs/acme/network-policy", None)
        .await;
    assert_eq!(v, json!({"allow": [], "deny": []}));
    still_open(&mut dev).await;

    // Denying the address closes the live session and refuses the next handshake with
    // access_denied, whatever certificate it would present (none here).
    let (s, v) = put(json!({"deny": ["127.0.0.1"]})).await;
    assert_eq!(
        (s, v),
        (200, json!({"allow": [], "deny": ["127.0.0.1/32"]}))
    );
    dev.wait_closed(Duration::from_secs(1))
        .await
        .expect("a session from a denied address is closed");
    let sni = format!("acme.{DOMAIN}");
    let err = raw_handshake(server.mqtt, &sni, &acme.server_pem, None)
        .await
        .unwrap_err();
    assert!(err.contains("AccessDenied"), "{err}");
    still_open(&mut in_beta).await;
    beta.connect("d:sensor:dev2", "d:beta:sensor:dev2").await;

    // An allow list without this address refuses it too, counted apart.
    let (s, _) = put(json!({"allow": ["10.0.0.0/8", "2001:db8::/32"]})).await;
    assert_eq!(s, 200);
    let cert = acme.cert("d:sensor:dev1");
    let err = raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&cert))
        .await
        .unwrap_err();
    assert!(err.contains("AccessDenied"), "{err}");
    let text = api.0.metrics().await.unwrap();
    for reason in ["denied", "not_allowed"] {
        assert_eq!(
            metric(
                &text,
                "certmq_network_refusals_total",
                &["org=\"acme\"", &format!("reason=\"{reason}\"")]
            ),
            Some(1.0),
            "{text}"
        );
    }
    assert!(metric(&text, "certmq_network_refusals_total", &["org=\"beta\""]).is_none());

    // The plain listener has no SNI: the policy applies once the CONNECT names the org.
    let (s, _) = api
        .call(
            Method::PUT,
            "/orgs/acme/security-policy",
            Some(json!({"level": "tls_optional"})),
        )
        .await;
    assert_eq!(s, 200);
    let token = api
        .post(
            "/orgs/acme/device-tokens",
            json!({"identity": "d:legacy:dev7"}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain = |token: String| async move {
        let mut opts =
            rumqttc::MqttOptions::new("d:acme:legacy:dev7", "127.0.0.1", server.mqtt_plain.port());
        opts.set_credentials("use-token-auth", token);
        let (c, el) = rumqttc::AsyncClient::new(opts, 10);
        start_loop(c, el).await
    };
    let err = plain(token.clone())
        .await
        .err()
        .expect("plain MQTT from a refused address");
    assert!(err.contains("NotAuthorized"), "{err}");

    // Allowing it again admits it, on both listeners.
    let (s, _) = put(json!({"allow": ["127.0.0.0/8"]})).await;
    assert_eq!(s, 200);
    acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    plain(token)
        .await
        .expect("plain MQTT from an allowed address");
}

#[tokio::test]
async fn a_ca_upload_proves_possession_of_its_key_when_the_org_requires_it() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let (s, _) = api
        .call(
            Method::PUT,
            "/orgs/acme/security-policy",
            Some(json!({"require_ca_proof": true})),
        )
        .await;
    assert_eq!(s, 200);
    let new_ca = device_sim::certs::TestCa::new("acme second CA").unwrap();
    let stranger = device_sim::certs::TestCa::new("stranger").unwrap();
    let upload = |body: Value| {
        let api = &api;
        async move {
            api.call(Method::POST, "/orgs/acme/ca-certs", Some(body))
                .await
        }
    };
    let (s, v) = upload(json!({"certificate": new_ca.pem()})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("proof_of_possession_required"))
    );

    let code = api
        .post("/orgs/acme/ca-certs/verification-code", json!({}))
        .await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let proof = |ca: &device_sim::certs::TestCa, cn: &str| {
        ca.issue_client(cn, ClientCertOptions::default())
            .unwrap()
            .cert_pem
    };
    for bad in [proof(&stranger, &code), proof(&new_ca, "not-the-code")] {
        let (s, v) =
            upload(json!({"certificate": new_ca.pem(), "verification_certificate": bad})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("proof_of_possession_failed")),
            "{v}"
        );
    }
    let (_, cas) = api.call(Method::GET, "/orgs/acme/ca-certs", None).await;
    assert_eq!(cas.as_array().map(Vec::len), Some(1), "nothing stored");
    let (s, v) = upload(json!({
        "certificate": new_ca.pem(),
        "verification_certificate": proof(&new_ca, &code),
    }))
    .await;
    assert_eq!(s, 201, "{v}");
    let dev = new_ca
        .issue_client("d:sensor:dev9", ClientCertOptions::default())
        .unwrap();
    connect_with(&acme.target(), "d:acme:sensor:dev9", &dev)
        .await
        .expect("a device of the proven CA connects");
}

#[tokio::test]
async fn certificate_and_token_needs_both() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let mut live = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    let (s, v) = api
        .call(
            Method::PUT,
            "/orgs/acme/security-policy",
            Some(json!({"level": "tls_client_cert_and_token"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    live.wait_closed(Duration::from_secs(1))
        .await
        .expect("a certificate alone no longer suffices");
    let token = api
        .post(
            "/orgs/acme/device-tokens",
            json!({"identity": "d:sensor:dev1"}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cert = acme.cert("d:sensor:dev1");
    let err = connect_with(&acme.target(), "d:acme:sensor:dev1", &cert)
        .await
        .err()
        .expect("a certificate without the token is refused");
    assert!(err.contains("NotAuthorized"), "{err}");
    let mut opts =
        device_sim::client::mqtt_options(&acme.target(), "d:acme:sensor:dev1", Some(&cert))
            .unwrap();
    opts.set_credentials("use-token-auth", token.clone());
    let (client, eventloop) = device_sim::client::async_client(opts, 10);
    start_loop(client, eventloop)
        .await
        .expect("certificate and token together are admitted");
    // A token without a certificate is refused at the TLS layer (the level needs one).
    let err = raw_handshake(
        server.mqtt,
        &format!("acme.{DOMAIN}"),
        &acme.server_pem,
        None,
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
}
