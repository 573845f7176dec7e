//! The one client of the certmq admin REST API (`/api/v1`, bearer token, JSON errors
//! `{"error":{"code","message"}}`).
//!
//! The simulator (`provision`, `bench reload`, `compare`), `certmq demo` and the
//! end-to-end tests all talk to the API through [`AdminClient`], so the URL layout, the
//! authentication and the error format are known in one place. It has two layers:
//!
//! * a general surface — [`AdminClient::call`] answers any HTTP status as
//!   `(status, body)` for callers that judge the status themselves (tests asserting on
//!   error codes); [`AdminClient::get`], [`post`](AdminClient::post), … require a 2xx and
//!   turn anything else into an [`ApiError`] carrying the API's error code and message;
//!   [`AdminClient::call_raw`] and [`AdminClient::get_text`] send and fetch raw bodies
//!   (PEM uploads and downloads);
//! * typed helpers for what the callers set up again and again: orgs, CA certificates,
//!   server certificates.

use std::fmt;

use anyhow::{anyhow, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// An admin API endpoint and its bearer token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// The admin listener's root, e.g. `http://127.0.0.1:8080` (`/metrics` lives here).
    root: String,
    /// `<root>/api/v1`, which every `path` argument is relative to.
    base: String,
    token: String,
    http: reqwest::Client,
}

/// A non-2xx answer of the admin API, with the API's own error code and message, so
/// callers can tell e.g. "already exists" (409) from a real failure by downcasting.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The request's method.
    pub method: Method,
    /// The request's path below `/api/v1`.
    pub path: String,
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// `error.code` of the answer (`None` when the body is not the API's error shape).
    pub code: Option<String>,
    /// `error.message` of the answer, or the whole body when it has no such field.
    pub message: String,
}

impl ApiError {
    fn new(method: Method, path: &str, status: StatusCode, body: &Value) -> Self {
        let error = &body["error"];
        Self {
            method,
            path: path.to_owned(),
            status,
            code: error["code"].as_str().map(str::to_owned),
            message: match error["message"].as_str() {
                Some(m) => m.to_owned(),
                None => body.to_string(),
            },
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.method, self.path, self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ApiError {}

/// A certificate (CA or server) as the API describes it: the id and PEM every caller
/// needs, and the whole JSON view (subject, fingerprint, DNS names, …) for the rest.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The certificate's id in the org.
    pub id: String,
    /// The certificate, PEM.
    pub pem: String,
    /// The API's whole answer for it.
    pub view: Value,
}

impl Certificate {
    fn from_view(view: Value) -> Result<Self> {
        let field = |name: &str| {
            view[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no {name} in {view}"))
        };
        Ok(Self {
            id: field("id")?,
            pem: field("pem")?,
            view: view.clone(),
        })
    }
}

impl AdminClient {
    /// `url` is the admin listener, e.g. `http://127.0.0.1:8080` (`/api/v1` is added;
    /// a URL already ending in `/api/v1` is taken as is).
    pub fn new(url: &str, token: &str) -> Self {
        let url = url.trim_end_matches('/');
        let root = url.strip_suffix("/api/v1").unwrap_or(url);
        Self {
            root: root.to_owned(),
            base: format!("{root}/api/v1"),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// One JSON call (`body` sent as JSON when given); `Ok((status, body))` for any HTTP
    /// answer. `Err` only when there is no answer (connection refused, reset, …). A body
    /// that is not JSON comes back as a JSON string; an empty body as `null`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self.request(method.clone(), path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, _, text) = send(req, &method, path).await?;
        Ok((status, json_of(text)))
    }

    /// One call with a raw body (e.g. a PEM upload), with `content_type` when given;
    /// answered like [`AdminClient::call`].
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self.request(method.clone(), path).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let (status, _, text) = send(req, &method, path).await?;
        Ok((status, json_of(text)))
    }

    /// A GET whose answer is not JSON (PEM downloads): `(status, content type, body)`.
    pub async fn get_text(&self, path: &str) -> Result<(StatusCode, String, String)> {
        send(self.request(Method::GET, path), &Method::GET, path).await
    }

    /// The Prometheus text of the admin listener's `/metrics` (which sits beside
    /// `/api/v1`, not below it).
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.root);
        let req = self.http.get(&url).bearer_auth(&self.token);
        let (status, _, text) = send(req, &Method::GET, "/metrics").await?;
        if !status.is_success() {
            return Err(ApiError::new(Method::GET, "/metrics", status, &json_of(text)).into());
        }
        Ok(text)
    }

    /// A JSON call that must succeed (2xx): its JSON body. Any other status is an
    /// [`ApiError`].
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, v) = self.call(method.clone(), path, body).await?;
        if !status.is_success() {
            return Err(ApiError::new(method, path, status, &v).into());
        }
        Ok(v)
    }

    /// `GET path`, which must succeed.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.ok(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, which must succeed.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.ok(Method::POST, path, Some(body)).await
    }

    /// `PUT path` with a JSON body, which must succeed.
    pub async fn put(&self, path: &str, body: Value) -> Result<Value> {
        self.ok(Method::PUT, path, Some(body)).await
    }

    /// `PATCH path` with a JSON body, which must succeed.
    pub async fn patch(&self, path: &str, body: Value) -> Result<Value> {
        self.ok(Method::PATCH, path, Some(body)).await
    }

    /// `DELETE path`, which must succeed.
    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.ok(Method::DELETE, path, None).await
    }

    /// Creates org `id` named `name`; the org's view.
    pub async fn create_org(&self, id: &str, name: &str) -> Result<Value> {
        self.post("/orgs", json!({ "id": id, "name": name })).await
    }

    /// Creates org `id` (named `id`); an existing org is fine.
    pub async fn ensure_org(&self, id: &str) -> Result<()> {
        match self.create_org(id, id).await {
            Err(e) if status_of(&e) == Some(StatusCode::CONFLICT) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Uploads a CA certificate (PEM) to `org`, with a description (shown in the
    /// console) when given.
    pub async fn upload_ca(
        &self,
        org: &str,
        pem: &str,
        description: Option<&str>,
    ) -> Result<Certificate> {
        let mut body = json!({ "certificate": pem });
        if let Some(d) = description {
            body["description"] = json!(d);
        }
        Certificate::from_view(self.post(&format!("/orgs/{org}/ca-certs"), body).await?)
    }

    /// Uploads a CA certificate (PEM) to `org`; when the org already has it, returns the
    /// existing one's id.
    pub async fn ensure_ca(&self, org: &str, pem: &str) -> Result<String> {
        let err = match self.upload_ca(org, pem, None).await {
            Ok(ca) => return Ok(ca.id),
            Err(e) if status_of(&e) == Some(StatusCode::CONFLICT) => e,
            Err(e) => return Err(e),
        };
        let path = format!("/orgs/{org}/ca-certs");
        let list = self.get(&path).await?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|ca| ca["pem"].as_str().map(str::trim) == Some(pem.trim()))
            .map(|ca| Ok(Certificate::from_view(ca.clone())?.id))
            .unwrap_or_else(|| Err(err.context(format!("the CA is not found in {path}"))))
    }

    /// Activates or deactivates a CA.
    pub async fn set_ca_active(&self, org: &str, id: &str, active: bool) -> Result<()> {
        let path = format!("/orgs/{org}/ca-certs/{id}");
        self.patch(&path, json!({ "active": active }))
            .await
            .map(drop)
    }

    /// Deletes a CA.
    pub async fn delete_ca(&self, org: &str, id: &str) -> Result<()> {
        self.delete(&format!("/orgs/{org}/ca-certs/{id}"))
            .await
            .map(drop)
    }

    /// Has the broker generate a self-signed server certificate for the org (inactive
    /// when the org already has an active one).
    pub async fn self_signed_server_cert(&self, org: &str) -> Result<Certificate> {
        let path = format!("/orgs/{org}/server-certs/self-signed");
        Certificate::from_view(self.post(&path, json!({})).await?)
    }

    /// Uploads a server certificate chain and its key; its id.
    pub async fn upload_server_cert(
        &self,
        org: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<String> {
        let body = json!({ "certificate": chain_pem, "private_key": key_pem });
        let v = self
            .post(&format!("/orgs/{org}/server-certs"), body)
            .await?;
        Ok(Certificate::from_view(v)?.id)
    }

    /// Makes a server certificate the one presented.
    pub async fn activate_server_cert(&self, org: &str, id: &str) -> Result<()> {
        let path = format!("/orgs/{org}/server-certs/{id}/activate");
        self.ok(Method::POST, &path, None).await.map(drop)
    }

    /// The org's active server certificate, if any.
    pub async fn active_server_cert(&self, org: &str) -> Result<Option<Certificate>> {
        let list = self.get(&format!("/orgs/{org}/server-certs")).await?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["active"].as_bool() == Some(true))
            .map(|c| Certificate::from_view(c.clone()))
            .transpose()
    }

    /// Deletes a (not active) server certificate.
    pub async fn delete_server_cert(&self, org: &str, id: &str) -> Result<()> {
        self.delete(&format!("/orgs/{org}/server-certs/{id}"))
            .await
            .map(drop)
    }

    /// A request to `<base><path>` with the bearer token.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
}

/// Sends `req`; `(status, content type, body text)` of the answer.
async fn send(
    req: reqwest::RequestBuilder,
    method: &Method,
    path: &str,
) -> Result<(StatusCode, String, String)> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp
        .text()
        .await
        .with_context(|| format!("{method} {path}: read the answer"))?;
    Ok((status, content_type, text))
}

/// A body as JSON: parsed when it is JSON, `null` when empty, else a JSON string.
fn json_of(text: String) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The HTTP status of an [`ApiError`] inside `e`, if that is what it is.
fn status_of(e: &anyhow::Error) -> Option<StatusCode> {
    e.downcast_ref::<ApiError>().map(|a| a.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url() {
        for (url, root) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://h:1/", "http://h:1"),
            ("http://h:1/api/v1", "http://h:1"),
            ("http://h:1/api/v1/", "http://h:1"),
        ] {
            let c = AdminClient::new(url, "t");
            assert_eq!(c.root, root, "{url}");
            assert_eq!(c.base, format!("{root}/api/v1"), "{url}");
        }
    }

    #[test]
    fn api_errors_name_the_code_and_message() {
        let body = json!({ "error": { "code": "not_a_ca", "message": "not a CA" } });
        let e = ApiError::new(
            Method::POST,
            "/orgs/acme/ca-certs",
            StatusCode::UNPROCESSABLE_ENTITY,
            &body,
        );
        assert_eq!(e.code.as_deref(), Some("not_a_ca"));
        assert_eq!(
            e.to_string(),
            "POST /orgs/acme/ca-certs: 422 Unprocessable Entity not_a_ca: not a CA"
        );
        let other = ApiError::new(Method::GET, "/x", StatusCode::BAD_GATEWAY, &json!("oops"));
        assert_eq!(other.code, None);
        assert_eq!(other.to_string(), "GET /x: 502 Bad Gateway: \"oops\"");
        let wrapped = anyhow::Error::from(e).context("setting up");
        assert_eq!(status_of(&wrapped), Some(StatusCode::UNPROCESSABLE_ENTITY));
    }

    #[test]
    fn bodies_become_json() {
        assert_eq!(json_of(String::new()), Value::Null);
        assert_eq!(json_of("{\"a\":1}".into()), json!({ "a": 1 }));
        assert_eq!(json_of("-----BEGIN".into()), json!("-----BEGIN"));
    }
}
