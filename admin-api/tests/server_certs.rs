//! Server certificate uploads (PEM, encrypted PEM, PKCS#12 as JSON and as a form) and
//! the CSR flow through the admin API, in process: `router(state)` driven with
//! `oneshot`; keys in formats only OpenSSL writes come from the `openssl` command.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::Engine;
use certmq_admin_api::{router, AppState, ConnectionsView};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use registry::seal::MasterKey;
use registry::store::SledStore;
use registry::{OrgId, Registry};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token";
const HOST: &str = "acme.messaging.localhost";

struct NoConnections;

impl ConnectionsView for NoConnections {
    fn list(&self, _: &OrgId) -> Vec<Value> {
        Vec::new()
    }
    fn kick(&self, _: &OrgId, _: &str) -> bool {
        false
    }
}

struct Api {
    app: Router,
    dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The error code of a failed request.
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

impl Api {
    fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
        let registry = Registry::new(
            store,
            MasterKey::from_bytes(&[1; 32]),
            "messaging.localhost",
        )
        .unwrap();
        let app = router(AppState {
            registry: Arc::new(registry),
            admin_token: Arc::new(TOKEN.to_owned()),
            connections: Arc::new(NoConnections),
        });
        Api { app, dir }
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn post_json(&self, uri: &str, body: Value) -> Reply {
        self.send(
            Method::POST,
            uri,
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, None, Body::empty()).await
    }

    /// A `multipart/form-data` POST of `(name, filename, bytes)` parts.
    async fn post_form(&self, uri: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Reply {
        const BOUNDARY: &str = "certmq-test-boundary-7d1f";
        let mut body = Vec::new();
        for (name, filename, data) in parts {
            body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
            let disposition = match filename {
                Some(f) => format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/x-pkcs12\r\n"),
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
            };
            body.extend_from_slice(disposition.as_bytes());
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        let ct = format!("multipart/form-data; boundary={BOUNDARY}");
        self.send(Method::POST, uri, Some(&ct), body).await
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A root CA that signs server leaves and CSRs.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(p: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(90);
}

impl Ca {
    fn new() -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "Public Test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        validity(&mut p);
        let key = KeyPair::generate().unwrap();
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    /// A server leaf for HOST and its key, PEM.
    fn leaf(&self) -> (String, String) {
        let mut p = CertificateParams::new(vec![HOST.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, HOST);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap().pem();
        (format!("{cert}{}", self.pem), key.serialize_pem())
    }

    fn sign_csr(&self, csr_pem: &str) -> String {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        validity(&mut csr.params);
        csr.signed_by(&self.issuer).unwrap().pem()
    }
}

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

fn assert_no_key_material(r: &Reply) {
    let text = r.text();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("sealed"),
        "a response carries key material: {text}"
    );
}

#[tokio::test]
async fn upload_pem_encrypted_pem_and_pkcs12() {
    let api = Api::new();
    assert_eq!(
        api.post_json("/api/v1/orgs", json!({"id": "acme"}))
            .await
            .status,
        StatusCode::CREATED
    );
    let ca = Ca::new();
    let url = "/api/v1/orgs/acme/server-certs";

    // Chain + PKCS#8 key.
    let (chain, key) = ca.leaf();
    let r = api
        .post_json(url, json!({"certificate": chain, "private_key": key}))
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
        .post_json(
            url,
            json!({"certificate": chain, "private_key": enc, "passphrase": "nope"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "bad_passphrase");
    let r = api
        .post_json(
            url,
            json!({"certificate": chain, "private_key": enc, "passphrase": "s3cret"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    // A key that is not the leaf's.
    let (chain, _) = ca.leaf();
    let (_, other) = ca.leaf();
    let r = api
        .post_json(url, json!({"certificate": chain, "private_key": other}))
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
        .post_json(
            url,
            json!({"pkcs12": wrapped.join("\n"), "password": "wrong"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "bad_passphrase");
    let r = api
        .post_json(url, json!({"pkcs12": wrapped.join("\n"), "password": "pw"}))
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
        .post_form(
            url,
            &[
                ("pkcs12", Some("server.p12"), &p12),
                ("password", None, b"pw"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_no_key_material(&r);
    let r = api
        .post_form(
            url,
            &[
                ("pkcs12", Some("server.p12"), b"garbage"),
                ("password", None, b"pw"),
            ],
        )
        .await;
    assert_eq!(r.code(), "malformed_pkcs12");
    let r = api.post_form(url, &[("pfx", Some("x.p12"), &p12)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    // Malformed requests.
    for body in [
        json!({"certificate": "x"}),
        json!({"pkcs12": "AAAA", "certificate": "x", "private_key": "y"}),
        json!({"pkcs12": "not base64!"}),
        json!({"certificate": "x", "private_key": "y", "password": "pw"}),
        json!({"certificate": "x", "private_key": "y", "extra": 1}),
    ] {
        let r = api.post_json(url, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
    }
    let r = api.send(Method::POST, url, Some("text/plain"), "x").await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = api
        .post_json(
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
        api.post_json("/api/v1/orgs", json!({ "id": org })).await;
    }
    let ca = Ca::new();

    let r = api
        .post_json(
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
        .send(
            Method::POST,
            &complete,
            Some("application/x-pem-file"),
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
        .send(
            Method::POST,
            &complete,
            Some("application/x-pem-file"),
            signed,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    let r = api
        .send(
            Method::POST,
            &format!("/api/v1/orgs/acme/server-certs/{cert_id}/activate"),
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["active"], true);

    // A certificate for another key is refused with the rule's code.
    let other = api
        .post_json(
            "/api/v1/orgs/acme/csrs",
            json!({"subject": {"common_name": HOST}}),
        )
        .await
        .json();
    let other_id = other["id"].as_str().unwrap();
    let (foreign, _) = ca.leaf();
    let r = api
        .send(
            Method::POST,
            &format!("/api/v1/orgs/acme/csrs/{other_id}/certificate"),
            Some("application/x-pem-file"),
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
        let r = api.post_json("/api/v1/orgs/acme/csrs", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
    }
    let r = api
        .post_json(
            "/api/v1/orgs/acme/csrs",
            json!({"subject": {"common_name": "beta.messaging.localhost"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "hostname_mismatch");

    let r = api
        .send(
            Method::DELETE,
            &format!("/api/v1/orgs/acme/csrs/{other_id}"),
            None,
            Body::empty(),
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
