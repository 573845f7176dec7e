//! The admin API end to end, in process: `router(state)` driven with `oneshot` over a
//! registry in a temp dir, certificates minted with rcgen.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use certmq_admin_api::ConnectionsView;
use common::{error_code, Api, Req};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use registry::live::{Auth, SessionInfo};
use registry::{Identity, Kind, OrgId, Transport};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;

/// One live session, `d:acme:sensor:dev1`, in org `acme`.
struct StubConnections;

impl ConnectionsView for StubConnections {
    fn list(&self, org: &OrgId) -> Vec<SessionInfo> {
        if org.as_str() == "acme" {
            vec![SessionInfo {
                client_id: "d:acme:sensor:dev1".into(),
                org: org.clone(),
                identity: Identity::parse("d:sensor:dev1").unwrap(),
                kind: Kind::Device,
                auth: Auth::Certificate,
                transport: Transport::Tls,
                ca_id: "ca1".into(),
                ca_fingerprint: "ab:cd".into(),
                cert_serial: "01".into(),
                cert_not_after: OffsetDateTime::UNIX_EPOCH,
                remote_addr: "127.0.0.1:40000".parse().unwrap(),
                protocol: "mqtt4-tls".into(),
                since: OffsetDateTime::UNIX_EPOCH,
                node: "n1".into(),
                token_version: None,
            }]
        } else {
            Vec::new()
        }
    }

    fn kick(&self, org: &OrgId, client_id: &str) -> bool {
        org.as_str() == "acme" && client_id == "d:acme:sensor:dev1"
    }
}

fn cert(is_ca: bool, days_from: i64, days_to: i64) -> rcgen::Certificate {
    let mut p = CertificateParams::new(if is_ca {
        Vec::new()
    } else {
        vec!["leaf.example".to_owned()]
    })
    .unwrap();
    p.distinguished_name.push(DnType::CommonName, "Test CA");
    if is_ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let now = OffsetDateTime::now_utc();
    p.not_before = now + Duration::days(days_from);
    p.not_after = now + Duration::days(days_to);
    p.self_signed(&KeyPair::generate().unwrap()).unwrap()
}

fn ca() -> rcgen::Certificate {
    cert(true, -1, 365)
}

#[tokio::test]
async fn healthz_needs_no_token_and_the_api_does() {
    let api = Api::new();
    assert_eq!(
        api.send(Method::GET, "/healthz", None, Req::Empty)
            .await
            .parts(),
        (
            StatusCode::OK,
            json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })
        )
    );
    assert_eq!(
        api.send(Method::GET, "/readyz", None, Req::Empty)
            .await
            .parts(),
        (
            StatusCode::OK,
            json!({ "status": "ready", "store": "ok", "message_state": "ok" })
        )
    );

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic dGVzdA=="),
        Some("Bearer "),
    ] {
        for uri in ["/api/v1/orgs", "/api/v1/no-such-route"] {
            let mut req = Request::get(uri);
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let resp = api
                .app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{uri} {auth:?}");
            assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(error_code(&body), "unauthorized");
        }
    }

    let (status, body) = api.get("/api/v1/orgs").await.parts();
    assert_eq!((status, body), (StatusCode::OK, json!([])));
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_error_shape() {
    let api = Api::new();
    let (status, body) = api.get("/nope").await.parts();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = api.get("/api/v1/nope").await.parts();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = api.empty(Method::PUT, "/api/v1/orgs").await.parts();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method_not_allowed");
}

#[tokio::test]
async fn orgs_lifecycle() {
    let api = Api::new();
    let (status, body) = api
        .json(
            Method::POST,
            "/api/v1/orgs",
            json!({ "id": "acme", "name": "Acme Corp" }),
        )
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["id"], "acme");
    assert_eq!(body["name"], "Acme Corp");

    let (status, body) = api
        .json(Method::POST, "/api/v1/orgs", json!({ "id": "acme" }))
        .await
        .parts();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "conflict");

    for bad in ["Acme", "1acme", "a-b", ""] {
        let (status, body) = api
            .json(Method::POST, "/api/v1/orgs", json!({ "id": bad }))
            .await
            .parts();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(&body), "bad_request");
    }
    // Security review finding: NUL and bidi controls were accepted in org names.
    for bad in [
        "Bad\u{0}Corp",
        "Evil\u{202e}gpj.exe",
        "x\u{2067}y",
        "tab\there",
    ] {
        let (status, body) = api
            .json(
                Method::POST,
                "/api/v1/orgs",
                json!({ "id": "beta", "name": bad }),
            )
            .await
            .parts();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("org name contains") && message.contains("control"),
            "{message}"
        );
    }
    let (status, body) = api
        .json(Method::POST, "/api/v1/orgs", json!({ "name": "no id" }))
        .await
        .parts();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "bad_request");

    let (status, body) = api.get("/api/v1/orgs").await.parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(
        api.get("/api/v1/orgs/acme").await.parts().1["name"],
        "Acme Corp"
    );

    for missing in ["/api/v1/orgs/globex", "/api/v1/orgs/NOT-VALID"] {
        let (status, body) = api.get(missing).await.parts();
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(error_code(&body), "not_found");
    }

    let (status, body) = api.empty(Method::DELETE, "/api/v1/orgs/acme").await.parts();
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(
        api.get("/api/v1/orgs/acme").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.empty(Method::DELETE, "/api/v1/orgs/acme").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn ca_uploads_in_every_form() {
    let api = Api::new();
    api.create_org("acme").await;
    let url = "/api/v1/orgs/acme/ca-certs";

    let pem_ca = ca();
    let (status, body) = api
        .raw(
            Method::POST,
            &format!("{url}?description=fleet%20CA"),
            "application/x-pem-file",
            pem_ca.pem(),
        )
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["description"], "fleet CA");
    assert_eq!(body["active"], true);
    assert_eq!(body["is_ca"], true);
    assert_eq!(body["fingerprint_sha256"].as_str().unwrap().len(), 64);
    assert!(body["pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));

    let der_ca = ca();
    let (status, body) = api
        .raw(
            Method::POST,
            url,
            "application/pkix-cert",
            der_ca.der().to_vec(),
        )
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let json_ca = ca();
    let (status, body) = api
        .json(
            Method::POST,
            url,
            json!({ "certificate": json_ca.pem(), "description": "from JSON" }),
        )
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["description"], "from JSON");

    let (status, body) = api
        .raw(Method::POST, url, "application/x-pem-file", pem_ca.pem())
        .await
        .parts();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "conflict");

    let (status, body) = api.get(url).await.parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn ca_rule_violations_are_422_with_the_rule_code() {
    let api = Api::new();
    api.create_org("acme").await;
    let url = "/api/v1/orgs/acme/ca-certs";
    let two = format!("{}{}", ca().pem(), ca().pem());
    let cases: [(&str, Vec<u8>); 5] = [
        ("multiple_certificates", two.into_bytes()),
        ("not_a_ca", cert(false, -1, 30).pem().into_bytes()),
        ("expired", cert(true, -30, -1).pem().into_bytes()),
        ("not_yet_valid", cert(true, 2, 30).pem().into_bytes()),
        ("not_pem_or_der", b"\x00\x01garbage bytes".to_vec()),
    ];
    for (code, bytes) in cases {
        for endpoint in [url.to_owned(), format!("{url}/preview")] {
            let (status, body) = api
                .raw(
                    Method::POST,
                    &endpoint,
                    "application/octet-stream",
                    bytes.clone(),
                )
                .await
                .parts();
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{code}: {body}");
            assert_eq!(error_code(&body), code);
        }
    }
    assert_eq!(api.get(url).await.parts().1, json!([]));
}

#[tokio::test]
async fn ca_preview_show_patch_delete() {
    let api = Api::new();
    api.create_org("acme").await;
    let url = "/api/v1/orgs/acme/ca-certs";
    let the_ca = ca();

    let (status, body) = api
        .raw(
            Method::POST,
            &format!("{url}/preview"),
            "application/x-pem-file",
            the_ca.pem(),
        )
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["key_type"], "EC P-256");
    assert_eq!(
        api.get(url).await.parts().1,
        json!([]),
        "preview stores nothing"
    );

    let (_, created) = api
        .raw(Method::POST, url, "application/x-pem-file", the_ca.pem())
        .await
        .parts();
    let item = format!("{url}/{}", created["id"].as_str().unwrap());
    let (status, body) = api.get(&item).await.parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["fingerprint_sha256"], created["fingerprint_sha256"]);

    let (status, body) = api
        .json(Method::PATCH, &item, json!({ "active": false }))
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], false);
    assert_eq!(body["description"], "");
    let (status, body) = api
        .json(Method::PATCH, &item, json!({ "description": "old root" }))
        .await
        .parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&body["active"], &body["description"]),
        (&json!(false), &json!("old root"))
    );
    let (status, body) = api
        .json(Method::PATCH, &item, json!({ "activ": true }))
        .await
        .parts();
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused"
    );
    assert_eq!(error_code(&body), "bad_request");

    // Another org cannot see it; neither can an unknown org.
    api.create_org("globex").await;
    let id = created["id"].as_str().unwrap();
    for other in [
        format!("/api/v1/orgs/globex/ca-certs/{id}"),
        format!("/api/v1/orgs/nosuch/ca-certs/{id}"),
    ] {
        let (status, body) = api.get(&other).await.parts();
        assert_eq!(status, StatusCode::NOT_FOUND, "{other}");
        assert_eq!(error_code(&body), "not_found");
        assert_eq!(
            api.empty(Method::DELETE, &other).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let (status, _) = api
        .raw(
            Method::POST,
            "/api/v1/orgs/nosuch/ca-certs",
            "application/x-pem-file",
            ca().pem(),
        )
        .await
        .parts();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .raw(
            Method::POST,
            "/api/v1/orgs/nosuch/ca-certs/preview",
            "application/x-pem-file",
            ca().pem(),
        )
        .await
        .parts();
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(
        api.empty(Method::DELETE, &item).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.get(&item).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn oversized_and_malformed_bodies_use_the_error_shape() {
    let api = Api::new();
    api.create_org("acme").await;

    let big = vec![b'a'; 2 * 1024 * 1024];
    for (uri, ct) in [
        ("/api/v1/orgs/acme/ca-certs", "application/x-pem-file"),
        ("/api/v1/orgs/acme/ca-certs", "application/json"),
        ("/api/v1/orgs", "application/json"),
    ] {
        let (status, body) = api.raw(Method::POST, uri, ct, big.clone()).await.parts();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{uri} {ct}");
        assert_eq!(error_code(&body), "payload_too_large");
    }

    for uri in ["/api/v1/orgs", "/api/v1/orgs/acme/ca-certs"] {
        let (status, body) = api
            .raw(Method::POST, uri, "application/json", "{\"id\": ")
            .await
            .parts();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(error_code(&body), "bad_request");
    }

    let (status, body) = api
        .raw(Method::POST, "/api/v1/orgs", "text/plain", "{\"id\":\"x\"}")
        .await
        .parts();
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&body), "unsupported_media_type");
}

#[tokio::test]
async fn server_certs_self_signed_activate_delete() {
    let api = Api::new();
    api.create_org("acme").await;
    let url = "/api/v1/orgs/acme/server-certs";

    let (status, first) = api
        .empty(Method::POST, &format!("{url}/self-signed"))
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["active"], true, "the first one becomes active");
    assert_eq!(first["dns_names"], json!(["acme.messaging.localhost"]));
    assert!(first.get("private_key").is_none() && first.get("sealed_key").is_none());
    assert!(!first["pem"].as_str().unwrap().contains("PRIVATE KEY"));

    let (status, second) = api
        .empty(Method::POST, &format!("{url}/self-signed"))
        .await
        .parts();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(second["active"], false);

    let (status, list) = api.get(url).await.parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);

    let first_url = format!("{url}/{}", first["id"].as_str().unwrap());
    let second_url = format!("{url}/{}", second["id"].as_str().unwrap());
    let (status, body) = api
        .empty(Method::POST, &format!("{second_url}/activate"))
        .await
        .parts();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], true);
    assert_eq!(api.get(&first_url).await.parts().1["active"], false);

    let (status, body) = api.empty(Method::DELETE, &second_url).await.parts();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "conflict");
    assert_eq!(
        api.empty(Method::DELETE, &first_url).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.get(&first_url).await.status, StatusCode::NOT_FOUND);

    api.create_org("globex").await;
    let other = second_url.replace("/acme/", "/globex/");
    assert_eq!(api.get(&other).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.empty(Method::POST, &format!("{other}/activate"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.empty(Method::POST, "/api/v1/orgs/nosuch/server-certs/self-signed")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/v1/orgs/nosuch/server-certs").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn connections_list_and_kick() {
    let api = Api::with_connections(StubConnections);
    api.create_org("acme").await;
    let (status, body) = api.get("/api/v1/orgs/acme/connections").await.parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["client_id"], "d:acme:sensor:dev1");
    assert_eq!(body[0]["auth"], "certificate");
    assert_eq!(body[0]["remote_addr"], "127.0.0.1:40000");
    assert!(
        body[0].get("token_version").is_none(),
        "internal fields stay internal: {body}"
    );

    let (status, body) = api
        .empty(
            Method::DELETE,
            "/api/v1/orgs/acme/connections/d:acme:sensor:dev1",
        )
        .await
        .parts();
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = api
        .empty(
            Method::DELETE,
            "/api/v1/orgs/acme/connections/d:acme:sensor:dev2",
        )
        .await
        .parts();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");

    let (status, body) = api.get("/api/v1/orgs/nosuch/connections").await.parts();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
}
