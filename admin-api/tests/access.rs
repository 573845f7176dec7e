//! Access control, audit log and custom domains through the admin API, in process:
//! `router(state)` driven with `oneshot`, the same request as the platform admin or as
//! an org token.

mod common;

use axum::http::{header, Method, StatusCode};
use common::{error_code, Api, Ca, Req, TOKEN as ADMIN};
use registry::store::Store;
use registry::OrgId;
use serde_json::{json, Value};

impl Api {
    /// Creates a token for `org` as `as_token`; returns (id, token).
    async fn create_token(&self, as_token: &str, org: &str, name: &str) -> (String, String) {
        let (s, b) = self
            .send(
                Method::POST,
                &format!("/api/v1/orgs/{org}/tokens"),
                Some(as_token),
                Req::Json(json!({ "name": name })),
            )
            .await
            .parts();
        assert_eq!(s, StatusCode::CREATED, "{b}");
        (
            b["id"].as_str().unwrap().to_owned(),
            b["token"].as_str().unwrap().to_owned(),
        )
    }

    /// `method uri` with `token` and an optional JSON body: (status, body).
    async fn as_token(
        &self,
        token: &str,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send(method, uri, Some(token), body.into())
            .await
            .parts()
    }

    /// Orgs acme and beta, each with a token `ops`: ((id, token) of acme's, of beta's).
    async fn acme_and_beta() -> (Api, (String, String), (String, String)) {
        let api = Api::new();
        api.create_org("acme").await;
        api.create_org("beta").await;
        let acme = api.create_token(ADMIN, "acme", "ops").await;
        let beta = api.create_token(ADMIN, "beta", "ops").await;
        (api, acme, beta)
    }

    async fn audit(&self, org: &str) -> Vec<Value> {
        let uri = if org == "_platform" {
            "/api/v1/audit".to_owned()
        } else {
            format!("/api/v1/orgs/{org}/audit")
        };
        let (s, b) = self.get(&uri).await.parts();
        assert_eq!(s, StatusCode::OK, "{b}");
        b.as_array().unwrap().clone()
    }
}

#[tokio::test]
async fn org_tokens_are_shown_once_and_stored_as_a_salted_mac() {
    let api = Api::new();
    api.create_org("acme").await;
    let a = api
        .json(
            Method::POST,
            "/api/v1/orgs/acme/tokens",
            json!({ "name": "ops" }),
        )
        .await;
    let (status, body) = a.parts();
    let cache = a
        .headers
        .get(header::CACHE_CONTROL)
        .map(|v| v.to_str().unwrap());
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(cache, Some("no-store"));
    let id = body["id"].as_str().unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(body["name"], "ops");
    assert_eq!(body["org"], "acme");
    assert!(body["created_at"].is_string());
    assert!(token.starts_with(&format!("cmq_{id}_")), "{token}");

    let (status, list) = api.get("/api/v1/orgs/acme/tokens").await.parts();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let listed = list[0].as_object().unwrap();
    let mut keys: Vec<&str> = listed.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "id", "name", "org"]);

    // Neither the token nor its secret part is anywhere in the store.
    let secret = token.rsplit('_').next().unwrap();
    for (key, value) in api.store.scan("").unwrap() {
        assert!(
            !value.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the token secret is stored in clear under {key}"
        );
    }

    for bad in [
        json!({}),
        json!({ "name": "" }),
        json!({ "name": "x", "extra": 1 }),
    ] {
        let (s, b) = api
            .json(Method::POST, "/api/v1/orgs/acme/tokens", bad)
            .await
            .parts();
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    }
}

#[tokio::test]
async fn an_org_token_sees_its_org_only() {
    let (api, (_, acme), (beta_token_id, _)) = Api::acme_and_beta().await;

    // Its own org, fully.
    let (s, b) = api
        .send(Method::GET, "/api/v1/orgs", Some(&acme), Req::Empty)
        .await
        .parts();
    assert_eq!(
        (s, b[0]["id"].clone(), b.as_array().unwrap().len()),
        (StatusCode::OK, json!("acme"), 1)
    );
    let (s, _) = api
        .send(Method::GET, "/api/v1/orgs/acme", Some(&acme), Req::Empty)
        .await
        .parts();
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .send(
            Method::POST,
            "/api/v1/orgs/acme/ca-certs",
            Some(&acme),
            Req::Json(json!({ "certificate": Ca::new("CA").pem })),
        )
        .await
        .parts();
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // It may mint and revoke tokens of its own org.
    let (second_id, second) = api.create_token(&acme, "acme", "ci").await;
    let (s, _) = api
        .send(Method::GET, "/api/v1/orgs/acme", Some(&second), Req::Empty)
        .await
        .parts();
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .send(
            Method::DELETE,
            &format!("/api/v1/orgs/acme/tokens/{second_id}"),
            Some(&acme),
            Req::Empty,
        )
        .await
        .parts();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api
        .send(Method::GET, "/api/v1/orgs/acme", Some(&second), Req::Empty)
        .await
        .parts();
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    // Another org is indistinguishable from one that does not exist, on every route.
    let (_, ghost) = api
        .send(Method::GET, "/api/v1/orgs/ghost", Some(&acme), Req::Empty)
        .await
        .parts();
    assert_eq!(ghost["error"]["message"], "org ghost not found");
    let cert = json!({ "certificate": Ca::new("CA").pem });
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "".into(), None),
        (Method::GET, "/ca-certs".into(), None),
        (Method::POST, "/ca-certs".into(), Some(cert.clone())),
        (Method::POST, "/ca-certs/preview".into(), Some(cert)),
        (Method::GET, "/ca-certs/x".into(), None),
        (
            Method::PATCH,
            "/ca-certs/x".into(),
            Some(json!({ "active": false })),
        ),
        (Method::DELETE, "/ca-certs/x".into(), None),
        (Method::GET, "/server-certs".into(), None),
        (Method::POST, "/server-certs/self-signed".into(), None),
        (Method::GET, "/server-certs/x".into(), None),
        (Method::DELETE, "/server-certs/x".into(), None),
        (Method::POST, "/server-certs/x/activate".into(), None),
        (Method::GET, "/server-certs/x/chain.pem".into(), None),
        (
            Method::POST,
            "/server-certs".into(),
            Some(json!({ "certificate": "x", "private_key": "y" })),
        ),
        (Method::GET, "/csrs".into(), None),
        (
            Method::POST,
            "/csrs".into(),
            Some(json!({ "subject": { "common_name": "x" } })),
        ),
        (Method::GET, "/csrs/x".into(), None),
        (Method::DELETE, "/csrs/x".into(), None),
        (
            Method::POST,
            "/csrs/x/certificate".into(),
            Some(json!({ "certificate": "x" })),
        ),
        (Method::GET, "/connections".into(), None),
        (Method::DELETE, "/connections/x".into(), None),
        (Method::GET, "/tokens".into(), None),
        (Method::POST, "/tokens".into(), Some(json!({ "name": "x" }))),
        (Method::DELETE, format!("/tokens/{beta_token_id}"), None),
        (Method::GET, "/domains".into(), None),
        (
            Method::PUT,
            "/domains".into(),
            Some(json!({ "domains": [] })),
        ),
        (Method::GET, "/audit".into(), None),
    ];
    for (method, tail, body) in routes {
        let uri = format!("/api/v1/orgs/beta{tail}");
        let (s, b) = api
            .send(method.clone(), &uri, Some(&acme), body.into())
            .await
            .parts();
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}: {b}");
        assert_eq!(
            b["error"]["message"], "org beta not found",
            "{method} {uri}"
        );
    }
    // Nothing of beta's was touched.
    assert_eq!(
        api.get("/api/v1/orgs/beta/tokens")
            .await
            .parts()
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Platform operations are forbidden, whichever org they name.
    for (method, uri, body) in [
        (Method::POST, "/api/v1/orgs", Some(json!({ "id": "gamma" }))),
        (Method::DELETE, "/api/v1/orgs/acme", None),
        (Method::DELETE, "/api/v1/orgs/beta", None),
        (Method::DELETE, "/api/v1/orgs/ghost", None),
        (Method::GET, "/api/v1/audit", None),
    ] {
        let (s, b) = api
            .send(method.clone(), uri, Some(&acme), body.into())
            .await
            .parts();
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {uri}"
        );
    }
    let (s, _) = api.get("/api/v1/orgs/beta").await.parts();
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn invalid_and_revoked_tokens_are_401() {
    let api = Api::new();
    api.create_org("acme").await;
    let (id, token) = api.create_token(ADMIN, "acme", "ops").await;
    let wrong_secret = format!("cmq_{id}_{}", "0".repeat(64));
    let unknown_id = format!("cmq_{}_{}", "0".repeat(16), "0".repeat(64));
    for bad in [
        "",
        "nope",
        wrong_secret.as_str(),
        unknown_id.as_str(),
        &token[..token.len() - 1],
    ] {
        for uri in ["/api/v1/orgs", "/api/v1/orgs/acme", "/api/v1/nope"] {
            // An empty token is no `Authorization` header at all.
            let auth = (!bad.is_empty()).then_some(bad);
            let (s, b) = api.send(Method::GET, uri, auth, Req::Empty).await.parts();
            assert_eq!(
                (s, error_code(&b)),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{bad:?} {uri}"
            );
        }
    }
    let (s, _) = api
        .empty(Method::DELETE, &format!("/api/v1/orgs/acme/tokens/{id}"))
        .await
        .parts();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .send(Method::GET, "/api/v1/orgs/acme", Some(&token), Req::Empty)
        .await
        .parts();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = api
        .empty(Method::DELETE, &format!("/api/v1/orgs/acme/tokens/{id}"))
        .await
        .parts();
    assert_eq!((s, error_code(&b)), (StatusCode::NOT_FOUND, "not_found"));

    // Deleting the org revokes its tokens too.
    let (_, token) = api.create_token(ADMIN, "acme", "ops").await;
    let (s, _) = api.empty(Method::DELETE, "/api/v1/orgs/acme").await.parts();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .send(Method::GET, "/api/v1/orgs", Some(&token), Req::Empty)
        .await
        .parts();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn audit_records_every_mutation_with_its_outcome() {
    let api = Api::new();
    api.create_org("acme").await;
    api.create_org("beta").await;
    let (token_id, token) = api.create_token(ADMIN, "acme", "ops").await;

    // A success, a rule failure and a bad body by the org token; a read (not recorded);
    // another org's resource and a platform operation (recorded in the caller's own log,
    // not beta's; copied, like every org-token request, into the platform's); an
    // anonymous request (not recorded at all).
    let (s, ca) = api
        .send(
            Method::POST,
            "/api/v1/orgs/acme/ca-certs",
            Some(&token),
            Req::Json(json!({ "certificate": Ca::new("CA").pem })),
        )
        .await
        .parts();
    assert_eq!(s, StatusCode::CREATED);
    let ca_id = ca["id"].as_str().unwrap();
    let ca_uri = format!("/api/v1/orgs/acme/ca-certs/{ca_id}");
    let requests = [
        (
            token.as_str(),
            Method::POST,
            "/api/v1/orgs/acme/ca-certs",
            Some(json!({ "certificate": "junk" })),
            422,
        ),
        (
            &token,
            Method::PATCH,
            &ca_uri,
            Some(json!({ "activ": false })),
            400,
        ),
        (&token, Method::GET, "/api/v1/orgs/acme/ca-certs", None, 200),
        (
            &token,
            Method::DELETE,
            "/api/v1/orgs/beta/ca-certs/x",
            None,
            404,
        ),
        (
            &token,
            Method::POST,
            "/api/v1/orgs",
            Some(json!({ "id": "x" })),
            403,
        ),
        (
            "",
            Method::POST,
            "/api/v1/orgs/acme/ca-certs",
            Some(json!({})),
            401,
        ),
    ];
    for (as_token, method, uri, body, want) in requests {
        let (s, b) = api
            .send(method.clone(), uri, Some(as_token), body.into())
            .await
            .parts();
        assert_eq!(s.as_u16(), want, "{method} {uri}: {b}");
    }

    let log = api.audit("acme").await;
    let seen: Vec<(String, String, u64, Option<&str>, &str)> = log
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
                e["error"].as_str(),
                e["token_id"].as_str().unwrap(),
            )
        })
        .collect();
    let t = token_id.as_str();
    assert_eq!(
        seen,
        vec![
            (
                "POST".into(),
                "/api/v1/orgs".into(),
                403,
                Some("forbidden"),
                t
            ),
            (
                "DELETE".into(),
                "/api/v1/orgs/beta/ca-certs/x".into(),
                404,
                Some("not_found"),
                t
            ),
            (
                "PATCH".into(),
                format!("/api/v1/orgs/acme/ca-certs/{ca_id}"),
                400,
                Some("bad_request"),
                t
            ),
            (
                "POST".into(),
                "/api/v1/orgs/acme/ca-certs".into(),
                422,
                Some("not_pem_or_der"),
                t
            ),
            (
                "POST".into(),
                "/api/v1/orgs/acme/ca-certs".into(),
                201,
                None,
                t
            ),
            (
                "POST".into(),
                "/api/v1/orgs/acme/tokens".into(),
                201,
                None,
                "platform"
            ),
        ]
    );
    let newest = &log[0];
    assert_eq!(newest["org"], Value::Null);
    assert_eq!(log[1]["org"], "beta");
    assert_eq!(log[4]["summary"], "create ca-certs");
    assert_eq!(log[5]["summary"], format!("create token {token_id} (ops)"));
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [6, 5, 4, 3, 2, 1]);
    let at = newest["at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
        "{at}"
    );
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        !text.contains(&token),
        "the token leaked into the audit log"
    );
    assert!(api.audit("beta").await.is_empty());

    // Paging.
    let (_, page) = api.get("/api/v1/orgs/acme/audit?limit=2").await.parts();
    assert_eq!(page.as_array().unwrap().len(), 2);
    let (_, page) = api
        .get("/api/v1/orgs/acme/audit?limit=10&before=2")
        .await
        .parts();
    assert_eq!(
        page.as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1]
    );
    for bad in ["limit=0", "limit=1001", "limit=x", "nope=1"] {
        let (s, b) = api
            .get(&format!("/api/v1/orgs/acme/audit?{bad}"))
            .await
            .parts();
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
    }
    // An org token reads its own log.
    let (s, b) = api
        .send(
            Method::GET,
            "/api/v1/orgs/acme/audit",
            Some(&token),
            Req::Empty,
        )
        .await
        .parts();
    assert_eq!((s, b.as_array().unwrap().len()), (StatusCode::OK, 6));

    // Org lifecycle and the org token's requests are in the platform log, and survive
    // the org.
    let (s, _) = api.empty(Method::DELETE, "/api/v1/orgs/acme").await.parts();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let platform = api.audit("_platform").await;
    let summaries: Vec<&str> = platform
        .iter()
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    assert_eq!(
        summaries,
        [
            "delete org acme".to_owned(),
            "create org".into(),
            "delete ca-certs x".into(),
            format!("update ca-certs {ca_id}"),
            "create ca-certs".into(),
            "create ca-certs".into(),
            "create org beta".into(),
            "create org acme".into(),
        ]
    );
    assert_eq!(platform[0]["org"], "acme");
    assert_eq!(platform[0]["token_id"], "platform");
    let (s, _) = api.get("/api/v1/orgs/acme/audit").await.parts();
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn custom_domains_are_validated_unique_and_route_sni() {
    let api = Api::new();
    api.create_org("acme").await;
    api.create_org("beta").await;
    let put = |org: &'static str, domains: Value| {
        let api = &api;
        async move {
            api.json(
                Method::PUT,
                &format!("/api/v1/orgs/{org}/domains"),
                json!({ "domains": domains }),
            )
            .await
            .parts()
        }
    };

    let (s, b) = put("acme", json!(["IoT.Example.com", "iot.example.com."])).await;
    assert_eq!(
        (s, b.clone()),
        (StatusCode::OK, json!({ "domains": ["iot.example.com"] }))
    );
    let (s, got) = api.get("/api/v1/orgs/acme/domains").await.parts();
    assert_eq!((s, got), (StatusCode::OK, b));
    let acme = OrgId::try_from("acme").unwrap();
    assert_eq!(
        api.registry.org_for_host("acme.iot.example.com"),
        Some(acme.clone())
    );
    assert_eq!(api.registry.org_for_host("beta.iot.example.com"), None);

    for bad in [
        json!(["*.example.com"]),
        json!(["messaging.localhost"]),
        json!(["eu.messaging.localhost"]),
        json!(["localhost"]),
        json!(["under_score.example.com"]),
        json!(["10.1.2.3"]),
        json!((0..11)
            .map(|i| format!("d{i}.example.net"))
            .collect::<Vec<_>>()),
        json!("iot.example.org"),
    ] {
        let (s, b) = put("beta", bad.clone()).await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{bad}"
        );
    }
    for taken in [
        json!(["iot.example.com"]),
        json!(["eu.iot.example.com"]),
        json!(["example.com"]),
    ] {
        let (s, b) = put("beta", taken.clone()).await;
        assert_eq!(
            (s, error_code(&b)),
            (StatusCode::CONFLICT, "name_taken"),
            "{taken}"
        );
        assert!(
            !b["error"]["message"].as_str().unwrap().contains("acme"),
            "{b}"
        );
    }
    let (s, b) = api
        .json(
            Method::PUT,
            "/api/v1/orgs/beta/domains",
            json!({ "domains": [], "x": 1 }),
        )
        .await
        .parts();
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");

    // A self-signed certificate covers the custom host names too.
    let (s, cert) = api
        .empty(Method::POST, "/api/v1/orgs/acme/server-certs/self-signed")
        .await
        .parts();
    assert_eq!(s, StatusCode::CREATED, "{cert}");
    assert_eq!(
        cert["dns_names"],
        json!(["acme.messaging.localhost", "acme.iot.example.com"])
    );

    // Clearing drops the domain, but the name on acme's active certificate still routes
    // to acme (an exact certificate name) and still belongs to it: another org cannot
    // register a domain holding it (docs/security.md).
    let (s, b) = put("acme", json!([])).await;
    assert_eq!((s, b), (StatusCode::OK, json!({ "domains": [] })));
    assert_eq!(
        api.registry.org_for_host("acme.iot.example.com"),
        Some(acme.clone())
    );
    let (s, b) = put("beta", json!(["iot.example.com"])).await;
    assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "name_taken"));
    assert_eq!(
        api.registry.org_for_host("acme.iot.example.com"),
        Some(acme.clone())
    );
    assert_eq!(
        api.registry.org_host_names(&acme),
        ["acme.messaging.localhost"]
    );

    let log = api.audit("acme").await;
    assert_eq!(log[0]["summary"], "set domains []");
    assert_eq!(log[2]["summary"], "set domains [iot.example.com]");
}

/// Security review finding: what an org token did was only in the org's own log, which
/// goes with the org, so the platform admin lost it. Org-token actions are copied into
/// the platform log; an org's own view still shows only its own entries.
#[tokio::test]
async fn org_token_actions_reach_the_platform_log_and_outlive_the_org() {
    let (api, (acme_id, acme_token), (beta_id, beta_token)) = Api::acme_and_beta().await;
    for (token, org) in [(&acme_token, "acme"), (&beta_token, "beta")] {
        let uri = format!("/api/v1/orgs/{org}/domains");
        let body = json!({ "domains": [format!("{org}.example.com")] });
        let (s, _) = api.as_token(token, Method::PUT, &uri, Some(body)).await;
        assert_eq!(s, StatusCode::OK);
    }
    // acme's token probes beta: its own action, so in acme's log and the platform's.
    let probe_uri = "/api/v1/orgs/beta/ca-certs/x";
    let (s, _) = api
        .as_token(&acme_token, Method::DELETE, probe_uri, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let by = |log: &[Value], id: &str| -> Vec<String> {
        log.iter()
            .filter(|e| e["token_id"] == id)
            .map(|e| {
                format!(
                    "{} {}",
                    e["method"].as_str().unwrap(),
                    e["path"].as_str().unwrap()
                )
            })
            .collect()
    };
    let acme_put = "PUT /api/v1/orgs/acme/domains".to_owned();
    let probe = "DELETE /api/v1/orgs/beta/ca-certs/x".to_owned();
    let beta_put = "PUT /api/v1/orgs/beta/domains".to_owned();

    // Each org sees its own entries only.
    let acme_log = api.audit("acme").await;
    assert_eq!(by(&acme_log, &acme_id), [probe.clone(), acme_put.clone()]);
    assert!(by(&acme_log, &beta_id).is_empty());
    let beta_log = api.audit("beta").await;
    assert_eq!(by(&beta_log, &beta_id), std::slice::from_ref(&beta_put));
    assert!(by(&beta_log, &acme_id).is_empty());

    // The platform sees both orgs' token actions, and keeps them after acme is gone.
    let (s, _) = api.empty(Method::DELETE, "/api/v1/orgs/acme").await.parts();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let platform = api.audit("_platform").await;
    assert_eq!(by(&platform, &acme_id), [probe, acme_put]);
    assert_eq!(by(&platform, &beta_id), [beta_put]);
    // A re-created acme starts with an empty log: nothing of the old acme, nor of beta.
    api.create_org("acme").await;
    assert!(api.audit("acme").await.is_empty());
}
