//! `GET`/`PUT /orgs/{org}/limits` through the admin API, in process (`router(state)`
//! driven with `oneshot`): defaults, lowering with an org token, raising only with the
//! platform token, range errors named, other orgs' tokens kept out, and an org
//! re-created after deletion starting from the defaults again.

mod common;

use axum::http::{Method, StatusCode};
use common::{Api, Req, TOKEN as ADMIN};
use registry::OrgLimits;
use serde_json::{json, Value};

const LIMITS: &str = "/api/v1/orgs/acme/limits";

fn defaults() -> Value {
    json!({
        "max_connections": 50000,
        "max_message_bytes": 1048576,
        "max_retained_messages": 10000,
        "max_retained_bytes": 67108864,
        "max_subscriptions_per_session": 100,
        "max_queued_messages_per_session": 1000,
        "max_inflight_per_session": 1000
    })
}

/// An org token for `org`, created by the platform admin.
async fn org_token(api: &Api, org: &str) -> String {
    let (s, b) = api
        .json(
            Method::POST,
            &format!("/api/v1/orgs/{org}/tokens"),
            json!({"name": "ops"}),
        )
        .await
        .parts();
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["token"].as_str().unwrap().to_owned()
}

async fn put(api: &Api, token: &str, body: Value) -> (StatusCode, Value) {
    api.send(Method::PUT, LIMITS, Some(token), Req::Json(body))
        .await
        .parts()
}

async fn get(api: &Api, token: &str) -> (StatusCode, Value) {
    api.send(Method::GET, LIMITS, Some(token), Req::Empty)
        .await
        .parts()
}

#[tokio::test]
async fn defaults_lower_raise_and_ranges() {
    let api = Api::new();
    api.create_org("acme").await;
    api.create_org("beta").await;
    let acme = org_token(&api, "acme").await;
    let beta = org_token(&api, "beta").await;

    // Defaults, for the platform and for the org's own token.
    assert_eq!(get(&api, ADMIN).await, (StatusCode::OK, defaults()));
    assert_eq!(get(&api, &acme).await, (StatusCode::OK, defaults()));
    let d = OrgLimits::default();
    assert_eq!(serde_json::to_value(d).unwrap(), defaults());

    // An org token lowers: the fields given change, the others are kept.
    let (s, b) = put(
        &api,
        &acme,
        json!({"max_connections": 10, "max_message_bytes": 4096}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut expected = defaults();
    expected["max_connections"] = json!(10);
    expected["max_message_bytes"] = json!(4096);
    assert_eq!(b, expected);
    assert_eq!(get(&api, &acme).await, (StatusCode::OK, expected.clone()));
    // The whole object back, unchanged, is no raise.
    assert_eq!(put(&api, &acme, expected.clone()).await.0, StatusCode::OK);

    // Raising with the org token: 403, nothing changed, even by one and even when
    // another field is lowered in the same request.
    for body in [
        json!({"max_connections": 11}),
        json!({"max_connections": 5, "max_message_bytes": 4097}),
        json!({"max_inflight_per_session": 1001}),
    ] {
        let (s, b) = put(&api, &acme, body.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}: {b}");
        assert_eq!(b["error"]["code"], "raise_needs_platform_token", "{b}");
    }
    assert_eq!(get(&api, &acme).await.1, expected);

    // The platform raises, past the defaults too.
    let (s, b) = put(
        &api,
        ADMIN,
        json!({"max_connections": 100000, "max_message_bytes": 1048576}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["max_connections"], 100000);
    assert_eq!(b["max_message_bytes"], 1048576);

    // Out of range: 422 with the rule's name, for either token, and nothing changed.
    for (token, body) in [
        (ADMIN, json!({"max_connections": 0})),
        (ADMIN, json!({"max_message_bytes": 268435456})),
        (ADMIN, json!({"max_inflight_per_session": 65536})),
        (ADMIN, json!({"max_subscriptions_per_session": 100001})),
        (acme.as_str(), json!({"max_queued_messages_per_session": 0})),
    ] {
        let (s, b) = put(&api, token, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {b}");
        assert_eq!(b["error"]["code"], "limit_out_of_range", "{b}");
        let field = body.as_object().unwrap().keys().next().unwrap().clone();
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.contains(&field), "{message}");
    }
    assert_eq!(get(&api, ADMIN).await.1["max_connections"], 100000);

    // Not JSON limits: 400 (unknown field, wrong type, negative).
    for body in [
        json!({"max_conections": 5}),
        json!({"max_connections": "5"}),
        json!({"max_connections": -1}),
    ] {
        let (s, b) = put(&api, ADMIN, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
    }

    // Another org's token sees nothing here: 404 both ways, and no change.
    let (s, b) = get(&api, &beta).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (s, _) = put(&api, &beta, json!({"max_connections": 1})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(get(&api, ADMIN).await.1["max_connections"], 100000);

    // Unknown org.
    let (s, _) = api
        .send(
            Method::GET,
            "/api/v1/orgs/nope/limits",
            Some(ADMIN),
            Req::Empty,
        )
        .await
        .parts();
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The change is audited with what was set.
    let (s, log) = api.get("/api/v1/orgs/acme/audit").await.parts();
    assert_eq!(s, StatusCode::OK);
    let summaries: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["status"], e["summary"].as_str().unwrap_or("")))
        .collect();
    assert!(
        summaries
            .iter()
            .any(|s| s.starts_with("200 ") && s.contains("max_connections=100000")),
        "{summaries:?}"
    );
    assert!(
        summaries.iter().any(|s| s.starts_with("403 ")),
        "{summaries:?}"
    );
}

#[tokio::test]
async fn a_re_created_org_starts_from_the_defaults() {
    let api = Api::new();
    api.create_org("acme").await;
    let (s, _) = put(&api, ADMIN, json!({"max_connections": 3})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(get(&api, ADMIN).await.1["max_connections"], 3);
    let a = api.empty(Method::DELETE, "/api/v1/orgs/acme").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(get(&api, ADMIN).await.0, StatusCode::NOT_FOUND);
    api.create_org("acme").await;
    assert_eq!(get(&api, ADMIN).await, (StatusCode::OK, defaults()));
}
