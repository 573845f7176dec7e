//! Server certificate uploads (PEM, encrypted PEM, PKCS#12 as JSON and as a form) and
//! the CSR flow through the admin API, in process: `router(state)` driven with
//! `oneshot`; keys in formats only OpenSSL writes come from the `openssl` command.

mod common;

use std::path::Path;
use std::process::Command;

use axum::http::{header, Method, StatusCode};
use base64::Engine;
use common::{form, Answer, Api, Ca, HOST, TOKEN};
use serde_json::json;

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed by this test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A PKCS#12 file (OpenSSL 3 defaults) of a fresh leaf, password `pw`.
fn pkcs12(api: &Api, ca: &Ca, name: &str) -> Vec<u8> {
    let (chain, key) = ca.leaf();
    std::fs::write(api.path().join(format!("{name}.crt")), chain).unwrap();
    std::fs::write(api.path().join(format!("{name}.key")), key).unwrap();
    let (c, k) = (format!("{name}.crt"), format!("{name}.key"));
    openssl(
        api.path(),
        &[
            "pkcs12", "-export", "-in", &c, "-inkey", &k, "-passout", "pass:pw",
        ],
    )
}

fn assert_no_key_material(r: &Answer) {
    let text = r.text();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("sealed"),
        "a response carries key material: {text}"
    );
}

#[tokio::test]
async fn upload_pem_encrypted_pem_and_pkcs12() {
    let api = Api::new();
    api.create_org("acme").await;
    let ca = Ca::new("Public Test CA");
    let url = "/api/v1/orgs/acme/server-certs";

    // Chain + PKCS#8 key.
    let (chain, key) = ca.leaf();
    let r = api
        .json(
            Method::POST,
            url,
            json!({"certificate": chain, "private_key": key}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    assert_eq!(v["active"], false);
    assert_eq!(v["origin"], "uploaded");
    assert_eq!(v["dns_names"], json!([HOST]));
    assert_eq!(v["fingerprint_sha256"].as_str().unwrap().len(), 64);
    assert_no_key_material(&r);
    let first = v["id"].as_str().unwrap().to_owned();

    // The chain download: PEM, leaf first, never the key.
    let r = api.get(&format!("{url}/{first}/chain.pem")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/x-pem-file");
    assert!(r.headers[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .contains("chain.pem"));
    assert_eq!(r.text(), v["pem"].as_str().unwrap());
    assert_eq!(r.text().matches("BEGIN CERTIFICATE").count(), 2);
    assert_no_key_material(&r);

    // Encrypted PKCS#8 with its passphrase; a wrong one is a 422 naming the rule.
    let (chain, key) = ca.leaf();
    std::fs::write(api.path().join("k.pem"), key).unwrap();
    let enc = String::from_utf8(openssl(
        api.path(),
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "k.pem",
            "-passout",
            "pass:s3cret",
        ],
    ))
    .unwrap();
    let r = api
        .json(
            Method::POST,
            url,
            json!({"certificate": chain, "private_key": enc, "passphrase": "nope"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "bad_passphrase");
    let r = api
        .json(
            Method::POST,
            url,
            json!({"certificate": chain, "private_key": enc, "passphrase": "s3cret"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    // A key that is not the leaf's.
    let (chain, _) = ca.leaf();
    let (_, other) = ca.leaf();
    let r = api
        .json(
            Method::POST,
            url,
            json!({"certificate": chain, "private_key": other}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "key_mismatch");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("public keys differ"));

    // PKCS#12 as base64 in JSON, wrapped as `base64` wraps it.
    let p12 = pkcs12(&api, &ca, "a");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&p12);
    let wrapped: Vec<String> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let r = api
        .json(
            Method::POST,
            url,
            json!({"pkcs12": wrapped.join("\n"), "password": "wrong"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "bad_passphrase");
    let r = api
        .json(
            Method::POST,
            url,
            json!({"pkcs12": wrapped.join("\n"), "password": "pw"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        r.json()["pem"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );

    // PKCS#12 as a form upload (`curl -F pkcs12=@server.p12 -F password=pw`).
    let p12 = pkcs12(&api, &ca, "b");
    let r = api
        .send(
            Method::POST,
            url,
            Some(TOKEN),
            form(&[
                ("pkcs12", Some("server.p12"), &p12),
                ("password", None, b"pw"),
            ]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_no_key_material(&r);
    let r = api
        .send(
            Method::POST,
            url,
            Some(TOKEN),
            form(&[
                ("pkcs12", Some("server.p12"), b"garbage"),
                ("password", None, b"pw"),
            ]),
        )
        .await;
    assert_eq!(r.code(), "malformed_pkcs12");
    let r = api
        .send(
            Method::POST,
            url,
            Some(TOKEN),
            form(&[("pfx", Some("x.p12"), &p12)]),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    // Malformed requests.
    for body in [
        json!({"certificate": "x"}),
        json!({"pkcs12": "AAAA", "certificate": "x", "private_key": "y"}),
        json!({"pkcs12": "not base64!"}),
        json!({"certificate": "x", "private_key": "y", "password": "pw"}),
        json!({"certificate": "x", "private_key": "y", "extra": 1}),
    ] {
        let r = api.json(Method::POST, url, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
    }
    let r = api.raw(Method::POST, url, "text/plain", "x").await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = api
        .json(
            Method::POST,
            "/api/v1/orgs/nope/server-certs",
            json!({"certificate": "x", "private_key": "y"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let list = api.get(url).await.json();
    assert_eq!(list.as_array().unwrap().len(), 4);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["active"] == false));
}

#[tokio::test]
async fn csr_generate_sign_upload_activate() {
    let api = Api::new();
    for org in ["acme", "beta"] {
        api.create_org(org).await;
    }
    let ca = Ca::new("Public Test CA");

    let r = api
        .json(
            Method::POST,
            "/api/v1/orgs/acme/csrs",
            json!({
                "subject": {"common_name": HOST, "organization": "Acme Corp", "country": "DE"},
                "sans": [HOST],
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_no_key_material(&r);
    let csr = r.json();
    let id = csr["id"].as_str().unwrap().to_owned();
    assert_eq!(csr["status"], "pending");
    assert_eq!(csr["key_type"], "ecdsa-p256");
    assert_eq!(csr["subject"]["organization"], "Acme Corp");
    assert!(csr["server_cert_id"].is_null());

    assert_eq!(api.get("/api/v1/orgs/acme/csrs").await.json()[0]["id"], id);
    assert_eq!(
        api.get(&format!("/api/v1/orgs/acme/csrs/{id}"))
            .await
            .json(),
        csr
    );
    let pem = api.get(&format!("/api/v1/orgs/acme/csrs/{id}.pem")).await;
    assert_eq!(pem.status, StatusCode::OK);
    assert_eq!(pem.headers[header::CONTENT_TYPE], "application/x-pem-file");
    assert_eq!(pem.text(), csr["csr_pem"].as_str().unwrap());
    // Another org's path does not reach it.
    assert_eq!(
        api.get(&format!("/api/v1/orgs/beta/csrs/{id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/v1/orgs/acme/csrs/nope.pem").await.status,
        StatusCode::NOT_FOUND
    );

    // Signed by the CA, uploaded as the raw PEM body.
    let signed = ca.sign_csr(&pem.text());
    let complete = format!("/api/v1/orgs/acme/csrs/{id}/certificate");
    let r = api
        .raw(
            Method::POST,
            &complete,
            "application/x-pem-file",
            signed.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let cert = r.json();
    assert_eq!(cert["origin"], "csr");
    assert_eq!(cert["active"], false);
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    let csr = api
        .get(&format!("/api/v1/orgs/acme/csrs/{id}"))
        .await
        .json();
    assert_eq!(csr["status"], "completed");
    assert_eq!(csr["server_cert_id"], cert_id.as_str());
    let r = api
        .raw(Method::POST, &complete, "application/x-pem-file", signed)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let r = api
        .empty(
            Method::POST,
            &format!("/api/v1/orgs/acme/server-certs/{cert_id}/activate"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["active"], true);

    // A certificate for another key is refused with the rule's code.
    let other = api
        .json(
            Method::POST,
            "/api/v1/orgs/acme/csrs",
            json!({"subject": {"common_name": HOST}}),
        )
        .await
        .json();
    let other_id = other["id"].as_str().unwrap();
    let (foreign, _) = ca.leaf();
    let r = api
        .raw(
            Method::POST,
            &format!("/api/v1/orgs/acme/csrs/{other_id}/certificate"),
            "application/x-pem-file",
            foreign,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "key_mismatch");

    // Bad requests.
    for body in [
        json!({"subject": {}}),
        json!({"subject": {"common_name": HOST}, "key_type": "dsa-1024"}),
        json!({"subject": {"common_name": HOST, "country": "Germany"}}),
        json!({"subject": {"common_name": HOST}, "sans": ["not a host"]}),
        json!({"subject": {"common_name": HOST, "title": "x"}}),
    ] {
        let r = api
            .json(Method::POST, "/api/v1/orgs/acme/csrs", body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
    }
    let r = api
        .json(
            Method::POST,
            "/api/v1/orgs/acme/csrs",
            json!({"subject": {"common_name": "beta.messaging.localhost"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "hostname_mismatch");

    let r = api
        .empty(
            Method::DELETE,
            &format!("/api/v1/orgs/acme/csrs/{other_id}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get("/api/v1/orgs/acme/csrs")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A host name belongs to the first org that claims it: another org's claim is a 409
/// `name_taken` naming the host, never the owner (docs/security.md).
#[tokio::test]
async fn host_names_belong_to_the_first_org() {
    let api = Api::new();
    api.create_org("acme").await;
    api.create_org("beta").await;
    let ca = Ca::new("Public Test CA");
    let upload = |org: &'static str, sans: &'static [&'static str]| {
        let (chain, key) = ca.leaf_for(sans);
        let api = &api;
        async move {
            api.json(
                Method::POST,
                &format!("/api/v1/orgs/{org}/server-certs"),
                json!({"certificate": chain, "private_key": key}),
            )
            .await
        }
    };
    let taken = |r: Answer, host: &str| {
        let (status, body) = r.parts();
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "name_taken", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(host), "{message}");
        assert!(!message.contains("acme"), "the owner leaks: {message}");
    };

    // Beta uploads a certificate for a name nobody owns yet; acme then claims it.
    let r = upload("beta", &["beta.messaging.localhost", "mqtt.shared.test"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let beta_cert = r.json()["id"].as_str().unwrap().to_owned();
    let r = upload("acme", &[HOST, "mqtt.shared.test"]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let acme_cert = r.json()["id"].as_str().unwrap().to_owned();
    let r = api
        .empty(
            Method::POST,
            &format!("/api/v1/orgs/acme/server-certs/{acme_cert}/activate"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = api
        .json(
            Method::PUT,
            "/api/v1/orgs/acme/domains",
            json!({"domains": ["iot.example.com"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    taken(
        api.empty(
            Method::POST,
            &format!("/api/v1/orgs/beta/server-certs/{beta_cert}/activate"),
        )
        .await,
        "mqtt.shared.test",
    );
    taken(
        upload("beta", &["beta.messaging.localhost", "x.iot.example.com"]).await,
        "x.iot.example.com",
    );
    taken(
        api.json(
            Method::PUT,
            "/api/v1/orgs/beta/domains",
            json!({"domains": ["example.com"]}),
        )
        .await,
        "example.com",
    );
    // The owner keeps its domain.
    let r = api.get("/api/v1/orgs/acme/domains").await;
    assert_eq!(r.json()["domains"], json!(["iot.example.com"]));
}
