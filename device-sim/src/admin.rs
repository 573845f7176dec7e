//! A small client of the certmq admin REST API (`/api/v1`), for what the simulator sets
//! up itself: orgs, CA certificates, server certificates.

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// An admin API endpoint and its bearer token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// `url` is the admin listener, e.g. `http://127.0.0.1:8080` (`/api/v1` is added).
    pub fn new(url: &str, token: &str) -> Self {
        let url = url.trim_end_matches('/');
        let base = if url.ends_with("/api/v1") {
            url.to_owned()
        } else {
            format!("{url}/api/v1")
        };
        Self {
            base,
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// One call; `Ok((status, body))` for any HTTP answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// A call that must succeed (2xx); its JSON body.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, v) = self.call(method.clone(), path, body).await?;
        if !status.is_success() {
            bail!("{method} {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Creates org `id`; an existing org is fine.
    pub async fn ensure_org(&self, id: &str) -> Result<()> {
        let (status, v) = self
            .call(Method::POST, "/orgs", Some(json!({ "id": id, "name": id })))
            .await?;
        if status.is_success() || status == StatusCode::CONFLICT {
            return Ok(());
        }
        bail!("POST /orgs: {status} {v}")
    }

    /// Uploads a CA certificate (PEM) to `org`; when the org already has it, returns the
    /// existing one's id.
    pub async fn ensure_ca(&self, org: &str, pem: &str) -> Result<String> {
        let path = format!("/orgs/{org}/ca-certs");
        let (status, v) = self
            .call(Method::POST, &path, Some(json!({ "certificate": pem })))
            .await?;
        if status.is_success() {
            return id_of(&v);
        }
        if status != StatusCode::CONFLICT {
            bail!("POST {path}: {status} {v}");
        }
        let list = self.ok(Method::GET, &path, None).await?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|ca| ca["pem"].as_str().map(str::trim) == Some(pem.trim()))
            .map(id_of)
            .unwrap_or_else(|| Err(anyhow!("CA already uploaded but not found in {path}")))
    }

    /// Activates or deactivates a CA.
    pub async fn set_ca_active(&self, org: &str, id: &str, active: bool) -> Result<()> {
        self.ok(
            Method::PATCH,
            &format!("/orgs/{org}/ca-certs/{id}"),
            Some(json!({ "active": active })),
        )
        .await
        .map(drop)
    }

    /// Deletes a CA.
    pub async fn delete_ca(&self, org: &str, id: &str) -> Result<()> {
        self.ok(Method::DELETE, &format!("/orgs/{org}/ca-certs/{id}"), None)
            .await
            .map(drop)
    }

    /// Has the broker generate a self-signed server certificate; `(id, pem)`.
    pub async fn self_signed_server_cert(&self, org: &str) -> Result<(String, String)> {
        let v = self
            .ok(
                Method::POST,
                &format!("/orgs/{org}/server-certs/self-signed"),
                Some(json!({})),
            )
            .await?;
        Ok((id_of(&v)?, pem_of(&v)?))
    }

    /// Uploads a server certificate chain and its key; its id.
    pub async fn upload_server_cert(
        &self,
        org: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<String> {
        let v = self
            .ok(
                Method::POST,
                &format!("/orgs/{org}/server-certs"),
                Some(json!({ "certificate": chain_pem, "private_key": key_pem })),
            )
            .await?;
        id_of(&v)
    }

    /// Makes a server certificate the one presented.
    pub async fn activate_server_cert(&self, org: &str, id: &str) -> Result<()> {
        self.ok(
            Method::POST,
            &format!("/orgs/{org}/server-certs/{id}/activate"),
            None,
        )
        .await
        .map(drop)
    }

    /// The org's active server certificate: `(id, pem)`, if any.
    pub async fn active_server_cert(&self, org: &str) -> Result<Option<(String, String)>> {
        let list = self
            .ok(Method::GET, &format!("/orgs/{org}/server-certs"), None)
            .await?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["active"].as_bool() == Some(true))
            .map(|c| Ok((id_of(c)?, pem_of(c)?)))
            .transpose()
    }

    /// Deletes a (not active) server certificate.
    pub async fn delete_server_cert(&self, org: &str, id: &str) -> Result<()> {
        self.ok(
            Method::DELETE,
            &format!("/orgs/{org}/server-certs/{id}"),
            None,
        )
        .await
        .map(drop)
    }
}

fn id_of(v: &Value) -> Result<String> {
    v["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no id in {v}"))
}

fn pem_of(v: &Value) -> Result<String> {
    v["pem"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no pem in {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url() {
        assert_eq!(
            AdminClient::new("http://127.0.0.1:8080", "t").base,
            "http://127.0.0.1:8080/api/v1"
        );
        assert_eq!(
            AdminClient::new("http://h:1/", "t").base,
            "http://h:1/api/v1"
        );
        assert_eq!(
            AdminClient::new("http://h:1/api/v1", "t").base,
            "http://h:1/api/v1"
        );
    }
}
