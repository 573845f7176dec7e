//! What the admin API's integration tests share: the API over a registry in a temp
//! dir (`router(state)` driven with `oneshot`), one way to send a request and read its
//! answer, and a CA minted with rcgen. Each test file uses part of it.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use certmq_admin_api::{router, AdminToken, AppState, ConnectionsView};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, SerialNumber,
};
use registry::live::SessionInfo;
use registry::seal::MasterKey;
use registry::store::SledStore;
use registry::{OrgId, Registry};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;

/// The platform admin token.
pub const TOKEN: &str = "test-admin-token";

/// The host name of org `acme`.
pub const HOST: &str = "acme.messaging.localhost";

/// A broker with no live sessions.
pub struct NoConnections;

impl ConnectionsView for NoConnections {
    fn list(&self, _: &OrgId) -> Vec<SessionInfo> {
        Vec::new()
    }
    fn kick(&self, _: &OrgId, _: &str) -> bool {
        false
    }
}

/// The admin API over a registry in a temp dir, which also has room for a test's files
/// ([`Api::path`]).
pub struct Api {
    pub app: Router,
    pub registry: Arc<Registry>,
    pub store: Arc<SledStore>,
    dir: tempfile::TempDir,
}

/// A request body.
pub enum Req {
    Empty,
    Json(Value),
    /// A body with its content type.
    Raw(String, Vec<u8>),
}

impl From<Option<Value>> for Req {
    /// `None` is no body.
    fn from(body: Option<Value>) -> Req {
        body.map_or(Req::Empty, Req::Json)
    }
}

/// What came back.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Api {
    /// The API with a broker that has no live sessions.
    pub fn new() -> Api {
        Api::with_connections(NoConnections)
    }

    pub fn with_connections(connections: impl ConnectionsView) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
        let registry = Arc::new(
            Registry::new(
                store.clone(),
                MasterKey::from_bytes(&[1; 32]),
                "messaging.localhost",
            )
            .unwrap(),
        );
        let app = router(AppState {
            registry: registry.clone(),
            admin_token: Arc::new(AdminToken::new(TOKEN.to_owned(), None)),
            connections: Arc::new(connections),
        });
        Api {
            app,
            registry,
            store,
            dir,
        }
    }

    /// A scratch directory for the test's own files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a request with `token` as the bearer token (no `Authorization` header when
    /// `None`).
    pub async fn send(
        &self,
        method: impl AsRef<str>,
        uri: &str,
        token: Option<&str>,
        req: Req,
    ) -> Answer {
        let mut b = Request::builder().method(method.as_ref()).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match req {
            Req::Empty => Body::empty(),
            Req::Json(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            Req::Raw(ct, bytes) => {
                b = b.header(header::CONTENT_TYPE, ct.as_str());
                Body::from(bytes)
            }
        };
        let resp = self
            .app
            .clone()
            .oneshot(b.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// As the platform admin, with no body.
    pub async fn empty(&self, method: Method, uri: &str) -> Answer {
        self.send(method, uri, Some(TOKEN), Req::Empty).await
    }

    /// `GET` as the platform admin.
    pub async fn get(&self, uri: &str) -> Answer {
        self.empty(Method::GET, uri).await
    }

    /// As the platform admin, with a JSON body.
    pub async fn json(&self, method: Method, uri: &str, body: Value) -> Answer {
        self.send(method, uri, Some(TOKEN), Req::Json(body)).await
    }

    /// As the platform admin, with a body of `content_type`.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> Answer {
        let req = Req::Raw(content_type.to_owned(), body.into());
        self.send(method, uri, Some(TOKEN), req).await
    }

    /// Creates org `id` as the platform admin.
    pub async fn create_org(&self, id: &str) {
        let a = self
            .json(Method::POST, "/api/v1/orgs", json!({ "id": id }))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    }
}

impl Answer {
    /// The body as JSON; panics when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The status and the body as JSON, `Null` when the body is empty.
    pub fn parts(&self) -> (StatusCode, Value) {
        let body = if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        };
        (self.status, body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error.code` of an error answer, whose shape [`error_code`] asserts.
    #[track_caller]
    pub fn code(&self) -> String {
        error_code(&self.json()).to_owned()
    }

    /// The content type without parameters, lowercase.
    pub fn essence(&self) -> Option<String> {
        self.headers
            .get(header::CONTENT_TYPE)
            .map(|v| essence(v.to_str().unwrap()))
    }
}

/// A content type without parameters, lowercase.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_ascii_lowercase()
}

/// Asserts the API's error shape and returns the code.
#[track_caller]
pub fn error_code(body: &Value) -> &str {
    let err = body["error"].as_object().expect("an error object");
    assert_eq!(err.len(), 2, "{body}");
    assert!(
        !err["message"].as_str().expect("a message").is_empty(),
        "{body}"
    );
    err["code"].as_str().expect("a code")
}

/// A `multipart/form-data` body of `(name, filename, bytes)` parts; a part with a
/// filename is a PKCS#12 file.
pub fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Req {
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
    Req::Raw(format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// A root CA that signs server leaves, CSRs and CRLs.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(p: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(90);
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        validity(&mut p);
        let key = KeyPair::generate().unwrap();
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    /// A server leaf for [`HOST`] (+ this CA) and its key, PEM.
    pub fn leaf(&self) -> (String, String) {
        self.leaf_for(&[HOST])
    }

    /// A server leaf for the DNS names `sans` (+ this CA) and its key, PEM.
    pub fn leaf_for(&self, sans: &[&str]) -> (String, String) {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, sans[0]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap().pem();
        (format!("{cert}{}", self.pem), key.serialize_pem())
    }

    /// A client leaf (clientAuth, for outgoing connections) and its key, PEM.
    pub fn client_leaf(&self, cn: &str) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap().pem();
        (cert, key.serialize_pem())
    }

    pub fn sign_csr(&self, csr_pem: &str) -> String {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        validity(&mut csr.params);
        csr.signed_by(&self.issuer).unwrap().pem()
    }

    /// A CRL issued `age` ago.
    pub fn crl(&self, number: u64, age: Duration) -> String {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - age,
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}
