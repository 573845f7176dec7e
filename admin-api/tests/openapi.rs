//! The OpenAPI document (`GET /api/v1/openapi.json`) against the router that serves it,
//! in process (`router(state)` driven with `oneshot`): it is public; it documents
//! exactly the routes of [`ROUTES`]; the router serves every documented operation and
//! no undocumented method on a documented path; who needs a token is as documented; and
//! real answers — status, content type, body — are what the document says.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{header, StatusCode};
use certmq_admin_api::MAX_BODY_BYTES;
use common::{essence, form, Answer, Api, Ca, Req, HOST, TOKEN};
use serde_json::{json, Value};
use time::Duration;

/// Every route `router()` serves besides the web console, as (method, path): the API's
/// surface (docs/api.md). The router takes its routes from the handlers'
/// `#[utoipa::path]` attributes, which the document is built from too; this list pins
/// the surface, so a route added, moved or dropped fails here until the list says so,
/// and a route served without documentation fails `documents_exactly_the_routes`.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/audit"),
    ("POST", "/api/v1/admin-token/rotate"),
    ("POST", "/api/v1/orgs"),
    ("GET", "/api/v1/orgs"),
    ("GET", "/api/v1/orgs/{org}"),
    ("DELETE", "/api/v1/orgs/{org}"),
    ("POST", "/api/v1/orgs/{org}/ca-certs"),
    ("GET", "/api/v1/orgs/{org}/ca-certs"),
    ("POST", "/api/v1/orgs/{org}/ca-certs/preview"),
    ("GET", "/api/v1/orgs/{org}/ca-certs/{id}"),
    ("PATCH", "/api/v1/orgs/{org}/ca-certs/{id}"),
    ("DELETE", "/api/v1/orgs/{org}/ca-certs/{id}"),
    ("POST", "/api/v1/orgs/{org}/server-certs"),
    ("GET", "/api/v1/orgs/{org}/server-certs"),
    ("POST", "/api/v1/orgs/{org}/server-certs/self-signed"),
    ("GET", "/api/v1/orgs/{org}/server-certs/{id}"),
    ("DELETE", "/api/v1/orgs/{org}/server-certs/{id}"),
    ("POST", "/api/v1/orgs/{org}/server-certs/{id}/activate"),
    ("GET", "/api/v1/orgs/{org}/server-certs/{id}/chain.pem"),
    ("POST", "/api/v1/orgs/{org}/csrs"),
    ("GET", "/api/v1/orgs/{org}/csrs"),
    ("GET", "/api/v1/orgs/{org}/csrs/{id}"),
    ("GET", "/api/v1/orgs/{org}/csrs/{id}.pem"),
    ("DELETE", "/api/v1/orgs/{org}/csrs/{id}"),
    ("POST", "/api/v1/orgs/{org}/csrs/{id}/certificate"),
    ("GET", "/api/v1/orgs/{org}/connections"),
    ("DELETE", "/api/v1/orgs/{org}/connections/{id}"),
    ("POST", "/api/v1/orgs/{org}/tokens"),
    ("GET", "/api/v1/orgs/{org}/tokens"),
    ("DELETE", "/api/v1/orgs/{org}/tokens/{id}"),
    ("GET", "/api/v1/orgs/{org}/domains"),
    ("PUT", "/api/v1/orgs/{org}/domains"),
    ("GET", "/api/v1/orgs/{org}/audit"),
    ("POST", "/api/v1/orgs/{org}/authz/check"),
    ("GET", "/api/v1/orgs/{org}/security-policy"),
    ("PUT", "/api/v1/orgs/{org}/security-policy"),
    ("GET", "/api/v1/orgs/{org}/retained"),
    ("DELETE", "/api/v1/orgs/{org}/retained"),
    ("GET", "/api/v1/orgs/{org}/limits"),
    ("PUT", "/api/v1/orgs/{org}/limits"),
    ("POST", "/api/v1/orgs/{org}/device-tokens"),
    ("GET", "/api/v1/orgs/{org}/device-tokens"),
    ("DELETE", "/api/v1/orgs/{org}/device-tokens/{id}"),
    ("POST", "/api/v1/orgs/{org}/blocked-devices"),
    ("GET", "/api/v1/orgs/{org}/blocked-devices"),
    ("DELETE", "/api/v1/orgs/{org}/blocked-devices/{id}"),
    ("POST", "/api/v1/orgs/{org}/crls"),
    ("GET", "/api/v1/orgs/{org}/crls"),
    ("DELETE", "/api/v1/orgs/{org}/crls/{id}"),
    ("POST", "/api/v1/orgs/{org}/client-certs"),
    ("GET", "/api/v1/orgs/{org}/client-certs"),
    ("POST", "/api/v1/orgs/{org}/client-certs/preview"),
    ("GET", "/api/v1/orgs/{org}/client-certs/{id}"),
    ("DELETE", "/api/v1/orgs/{org}/client-certs/{id}"),
    ("POST", "/api/v1/orgs/{org}/bridges"),
    ("GET", "/api/v1/orgs/{org}/bridges"),
    ("GET", "/api/v1/orgs/{org}/bridges/{id}"),
    ("PATCH", "/api/v1/orgs/{org}/bridges/{id}"),
    ("DELETE", "/api/v1/orgs/{org}/bridges/{id}"),
    ("POST", "/api/v1/orgs/{org}/webhooks"),
    ("GET", "/api/v1/orgs/{org}/webhooks"),
    ("GET", "/api/v1/orgs/{org}/webhooks/{id}"),
    ("PATCH", "/api/v1/orgs/{org}/webhooks/{id}"),
    ("DELETE", "/api/v1/orgs/{org}/webhooks/{id}"),
    ("GET", "/api/v1/orgs/{org}/devices"),
    ("GET", "/api/v1/orgs/{org}/devices/{id}"),
    ("POST", "/api/v1/orgs/{org}/revoked-certs"),
    ("GET", "/api/v1/orgs/{org}/revoked-certs"),
    ("DELETE", "/api/v1/orgs/{org}/revoked-certs/{id}"),
    ("GET", "/api/v1/orgs/{org}/network-policy"),
    ("PUT", "/api/v1/orgs/{org}/network-policy"),
    ("GET", "/api/v1/orgs/{org}/topic-policy"),
    ("PUT", "/api/v1/orgs/{org}/topic-policy"),
    ("POST", "/api/v1/orgs/{org}/ca-certs/verification-code"),
];

/// Documented paths that share another path's route (`{id}.pem` is the `{id}` route,
/// see `csrs::show`), so the methods of that route answer on them too.
const SHARED_ROUTES: &[&str] = &["/api/v1/orgs/{org}/csrs/{id}.pem"];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

impl Api {
    async fn document(&self) -> Doc {
        let a = self
            .send("GET", "/api/v1/openapi.json", None, Req::Empty)
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.essence().as_deref(), Some("application/json"));
        Doc(a.json())
    }
}

/// The parsed document.
struct Doc(Value);

impl Doc {
    /// Every (method, path) it documents.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in self.0["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        ops
    }

    fn op(&self, method: &str, path: &str) -> &Value {
        let op = &self.0["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        op
    }

    /// Whether the operation needs no token (`security: [{}]`).
    fn is_public(&self, method: &str, path: &str) -> bool {
        self.op(method, path)["security"] == json!([{}])
    }

    /// Follows a local `$ref`.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v["$ref"].as_str() {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            v = self
                .0
                .pointer(pointer)
                .unwrap_or_else(|| panic!("unresolved $ref {r}"));
        }
        v
    }

    /// Checks an answer of `method path` against the document: its status is
    /// documented, its content type is one documented for it, and a JSON body fits the
    /// schema.
    fn check(&self, method: &str, path: &str, a: &Answer) {
        let what = format!("{method} {path} answered {}", a.status.as_u16());
        let responses = &self.op(method, path)["responses"];
        let documented = responses[a.status.as_str()].clone();
        assert!(
            documented.is_object(),
            "{what}, which is not documented: {}",
            String::from_utf8_lossy(&a.body)
        );
        let response = self.resolve(&documented);
        let Some(content) = response["content"].as_object() else {
            assert!(a.body.is_empty(), "{what} with a body; none is documented");
            return;
        };
        let got = a
            .essence()
            .unwrap_or_else(|| panic!("{what} without a content type"));
        let (_, media) = content
            .iter()
            .find(|(ct, _)| essence(ct) == got)
            .unwrap_or_else(|| panic!("{what} as {got}; documented: {:?}", content.keys()));
        if got == "application/json" {
            if let Err(e) = self.validate(&a.json(), &media["schema"], "$") {
                panic!(
                    "{what}: the body does not fit the schema: {e}\n{}",
                    a.json()
                );
            }
        }
    }

    /// Checks a JSON request body against the documented request schema.
    fn check_request(&self, method: &str, path: &str, body: &Value) {
        let schema = &self.op(method, path)["requestBody"]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path}: no JSON request body is documented"
        );
        if let Err(e) = self.validate(body, schema, "$") {
            panic!("{method} {path}: the request does not fit the schema: {e}\n{body}");
        }
    }

    /// Properties, required names and whether other keys are allowed, of an object
    /// schema, with `allOf` parts merged (`None` when it is not an object schema).
    fn object_parts(&self, schema: &Value) -> Option<(BTreeMap<String, Value>, BTreeSet<String>)> {
        let schema = self.resolve(schema);
        if let Some(parts) = schema["allOf"].as_array() {
            let mut props = BTreeMap::new();
            let mut required = BTreeSet::new();
            for p in parts {
                let (pp, rr) = self.object_parts(p)?;
                props.extend(pp);
                required.extend(rr);
            }
            return Some((props, required));
        }
        let props = schema["properties"].as_object()?;
        let required = schema["required"]
            .as_array()
            .map(|r| r.iter().map(|n| n.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        Some((
            props.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            required,
        ))
    }

    /// A small JSON Schema check: types, enums, arrays, maps, `oneOf`, and objects whose
    /// keys must all be documented (drift in either direction fails).
    fn validate(&self, v: &Value, schema: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(options) = schema["oneOf"].as_array() {
            return options
                .iter()
                .find(|o| self.validate(v, o, at).is_ok())
                .map(|_| ())
                .ok_or_else(|| format!("{at}: fits no oneOf option"));
        }
        if let Some((props, required)) = self.object_parts(schema) {
            let obj = v
                .as_object()
                .ok_or_else(|| format!("{at}: not an object"))?;
            for r in &required {
                if !obj.contains_key(r) {
                    return Err(format!("{at}: required `{r}` is missing"));
                }
            }
            for (k, value) in obj {
                let s = props
                    .get(k)
                    .ok_or_else(|| format!("{at}: `{k}` is not documented"))?;
                self.validate(value, s, &format!("{at}.{k}"))?;
            }
            return Ok(());
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => return Ok(()),
        };
        let fits = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            other => panic!("type {other}"),
        });
        if !fits {
            return Err(format!("{at}: {v} is not {types:?}"));
        }
        if let Some(values) = schema["enum"].as_array() {
            if !v.is_null() && !values.contains(v) {
                return Err(format!("{at}: {v} is not one of {values:?}"));
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), v.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.validate(item, items, &format!("{at}[{i}]"))?;
            }
        }
        if let (Some(values), Some(map)) = (schema.get("additionalProperties"), v.as_object()) {
            if values.is_object() {
                for (k, value) in map {
                    self.validate(value, values, &format!("{at}.{k}"))?;
                }
            }
        }
        Ok(())
    }
}

/// `template` with its `{...}` parameters replaced by `args`, in order.
fn fill(template: &str, args: &[&str]) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut args = args.iter();
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&rest[..start]);
        out.push_str(args.next().expect("an argument per parameter"));
        rest = &rest[end + 1..];
    }
    assert!(args.next().is_none(), "more arguments than parameters");
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_document_is_public_openapi_3() {
    let api = Api::new();
    let doc = api.document().await;
    assert!(doc.0["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc.0["info"]["title"], "certmq admin API");
    // Also with a token, and the same document.
    let a = api
        .send("GET", "/api/v1/openapi.json", Some(TOKEN), Req::Empty)
        .await;
    assert_eq!(a.json(), doc.0);
}

#[tokio::test]
async fn documents_exactly_the_routes() {
    let doc = Api::new().document().await;
    let documented = doc.operations();
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(routes.len(), ROUTES.len(), "ROUTES lists a route twice");
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unlisted: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && unlisted.is_empty(),
        "routes without documentation: {undocumented:?}; documented but not in ROUTES: {unlisted:?}"
    );
}

/// The router's own answers for a path it has no route for (404 `no such route`) and a
/// method a path has no handler for (405).
fn is_router_fallback(a: &Answer) -> bool {
    a.status == StatusCode::METHOD_NOT_ALLOWED
        || (a.status == StatusCode::NOT_FOUND && a.json()["error"]["message"] == "no such route")
}

#[tokio::test]
async fn the_router_serves_what_is_documented_and_no_other_method() {
    let api = Api::new();
    let doc = api.document().await;
    let documented = doc.operations();
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        // An org that does not exist: every handler answers 404 `org .. not found`,
        // which is not the router's 404.
        let uri = fill(path, &["nosuch", "x1"][..path.matches('{').count()]);
        for method in METHODS {
            let body = match method {
                "GET" | "DELETE" => Req::Empty,
                _ => Req::Json(json!({})),
            };
            let a = api.send(method, &uri, Some(TOKEN), body).await;
            if documented.contains(&(method.to_owned(), path.clone())) {
                assert!(
                    !is_router_fallback(&a),
                    "documented {method} {path} is not served: {} {:?}",
                    a.status,
                    a.body
                );
                doc.check(method, path, &a);
            } else if !SHARED_ROUTES.contains(&path.as_str()) {
                assert_eq!(
                    (a.status, a.code().as_str()),
                    (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
}

#[tokio::test]
async fn tokens_are_needed_where_documented() {
    let api = Api::new();
    let doc = api.document().await;
    assert_eq!(doc.0["security"], json!([{ "bearer": [] }]));
    assert_eq!(
        doc.0["components"]["securitySchemes"]["bearer"],
        json!({
            "type": "http",
            "scheme": "bearer",
            "description": doc.0["components"]["securitySchemes"]["bearer"]["description"]
        })
    );
    let mut public = Vec::new();
    for (method, path) in doc.operations() {
        let uri = fill(&path, &["nosuch", "x1"][..path.matches('{').count()]);
        let a = api.send(&method, &uri, None, Req::Empty).await;
        if doc.is_public(&method, &path) {
            assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            public.push(path);
        } else {
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
            assert_eq!(a.code(), "unauthorized");
            doc.check(&method, &path, &a);
        }
    }
    assert_eq!(public, ["/api/v1/openapi.json", "/healthz", "/readyz"]);
}

#[tokio::test]
async fn the_document_is_well_formed() {
    let doc = Api::new().document().await;
    // Every $ref resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc.0, &mut all);
    assert!(!all.is_empty());
    for r in all {
        assert!(doc.0.pointer(&r[1..]).is_some(), "unresolved {r}");
    }

    let mut ids = BTreeSet::new();
    for (method, path) in doc.operations() {
        let op = doc.op(&method, &path);
        let what = format!("{method} {path}");
        assert!(
            ids.insert(op["operationId"].as_str().unwrap().to_owned()),
            "{what}: operationId twice"
        );
        assert!(op["summary"].is_string(), "{what}: no summary");
        assert!(
            op["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{what}: no tag"
        );
        let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert!(
            statuses.iter().any(|s| s.starts_with('2')),
            "{what}: no success answer"
        );
        if !doc.is_public(&method, &path) {
            for s in ["401", "500"] {
                assert!(statuses.iter().any(|x| *x == s), "{what}: no {s}");
            }
        }
        if path.contains("{org}") {
            assert!(statuses.iter().any(|x| *x == "404"), "{what}: no 404");
        }
        if op["requestBody"].is_object() {
            for s in ["400", "413"] {
                assert!(statuses.iter().any(|x| *x == s), "{what}: no {s}");
            }
        }
        // Every error answer is the error shape — except the readiness probe's 503,
        // which is its report (the same shape as its 200), not an error of the caller.
        for (status, response) in op["responses"].as_object().unwrap() {
            if what.ends_with(" /readyz") && status == "503" {
                continue;
            }
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &doc.resolve(response)["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ErrorBody",
                    "{what} {status}"
                );
            }
        }
    }

    // The error codes: the API's own and every certificate rule's.
    let codes = &doc.0["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"];
    for c in [
        "bad_request",
        "unauthorized",
        "forbidden",
        "raise_needs_platform_token",
        "not_found",
        "conflict",
        "payload_too_large",
        "unsupported_media_type",
        "internal",
        "not_a_ca",
        "hostname_mismatch",
        "crl_not_from_org_ca",
        "crl_outdated",
        "limit_out_of_range",
    ] {
        assert!(codes.as_array().unwrap().contains(&json!(c)), "{c}");
    }
}

/// The org the script works in.
const ORG: &str = "acme";

/// Calls the API and checks every answer against the document; records which
/// operations were called. An operation is written `"METHOD path"`, the path as the
/// document has it but relative to `/api/v1` (except `/healthz` and `/metrics`), with
/// `{org}` standing for [`ORG`] and `{id}` for the `id` argument; a query may follow.
struct Script {
    api: Api,
    doc: Doc,
    called: BTreeSet<(String, String)>,
}

impl Script {
    async fn call_as(&mut self, token: Option<&str>, op: &str, id: &str, req: Req) -> Answer {
        let (method, path) = op.split_once(' ').unwrap();
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let path = match path {
            "/healthz" | "/readyz" | "/metrics" => path.to_owned(),
            _ => format!("/api/v1{path}"),
        };
        let mut uri = path.replace("{org}", ORG).replace("{id}", id);
        if !query.is_empty() {
            uri = format!("{uri}?{query}");
        }
        let sent = match &req {
            Req::Json(v) => Some(v.clone()),
            _ => None,
        };
        let a = self.api.send(method, &uri, token, req).await;
        self.doc.check(method, &path, &a);
        if let (Some(body), true) = (sent, a.status.is_success()) {
            self.doc.check_request(method, &path, &body);
        }
        self.called.insert((method.to_owned(), path));
        a
    }

    /// Calls with the admin token, asserts the status and returns the JSON body (`Null`
    /// when there is none).
    async fn send(&mut self, status: u16, op: &str, id: &str, req: Req) -> Value {
        let a = self.call_as(Some(TOKEN), op, id, req).await;
        let body = String::from_utf8_lossy(&a.body);
        assert_eq!(a.status.as_u16(), status, "{op}: {body}");
        serde_json::from_slice(&a.body).unwrap_or(Value::Null)
    }

    async fn get(&mut self, status: u16, path: &str, id: &str) -> Value {
        self.send(status, &format!("GET {path}"), id, Req::Empty)
            .await
    }

    async fn delete(&mut self, status: u16, path: &str, id: &str) -> Value {
        self.send(status, &format!("DELETE {path}"), id, Req::Empty)
            .await
    }

    /// Calls and asserts the error code (and that its status is the code's).
    async fn refused(&mut self, code: &str, op: &str, id: &str, req: Req) {
        let status = match code {
            "bad_request" => 400,
            "forbidden" => 403,
            "conflict" => 409,
            "payload_too_large" => 413,
            "unsupported_media_type" => 415,
            _ => 422,
        };
        let body = self.send(status, op, id, req).await;
        assert_eq!(body["error"]["code"], code, "{op}");
    }
}

fn pem(bytes: &str) -> Req {
    Req::Raw("application/x-pem-file".into(), bytes.as_bytes().to_vec())
}

#[tokio::test]
async fn answers_are_as_documented() {
    let api = Api::new();
    let doc = api.document().await;
    let mut s = Script {
        api,
        doc,
        called: BTreeSet::new(),
    };
    let ca = Ca::new("Test CA");
    let json = Req::Json;
    let id_of = |v: &Value| v["id"].as_str().unwrap().to_owned();

    // Orgs, and the answers every route may give.
    let org = json(json!({"id": ORG, "name": "Acme Corp"}));
    s.send(201, "POST /orgs", "", org).await;
    s.refused("conflict", "POST /orgs", "", json(json!({"id": ORG})))
        .await;
    s.get(200, "/orgs", "").await;
    s.get(200, "/orgs/{org}", "").await;
    let bad = Req::Raw("application/json".into(), b"{".to_vec());
    s.refused("bad_request", "POST /orgs", "", bad).await;
    let text = Req::Raw("text/plain".into(), b"{}".to_vec());
    s.refused("unsupported_media_type", "POST /orgs", "", text)
        .await;
    let big = Req::Raw("application/json".into(), vec![b' '; MAX_BODY_BYTES + 1]);
    s.refused("payload_too_large", "POST /orgs", "", big).await;
    let a = s.call_as(None, "GET /orgs", "", Req::Empty).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // CA certificates.
    let ca_id = id_of(
        &s.send(201, "POST /orgs/{org}/ca-certs", "", pem(&ca.pem))
            .await,
    );
    let again = json(json!({"certificate": ca.pem}));
    s.send(409, "POST /orgs/{org}/ca-certs", "", again).await;
    let (leaf, key) = ca.leaf();
    let leaf_only = &leaf[..leaf.find("-----END CERTIFICATE-----").unwrap() + 25];
    let preview = "POST /orgs/{org}/ca-certs/preview";
    s.refused("not_a_ca", preview, "", pem(leaf_only)).await;
    s.send(200, preview, "", pem(&Ca::new("Other").pem)).await;
    s.get(200, "/orgs/{org}/ca-certs", "").await;
    s.get(200, "/orgs/{org}/ca-certs/{id}", &ca_id).await;
    let patch = "PATCH /orgs/{org}/ca-certs/{id}";
    let off = json(json!({"active": false, "description": "test"}));
    s.send(200, patch, &ca_id, off).await;
    s.send(200, patch, &ca_id, json(json!({"active": true})))
        .await;

    // Server certificates: self-signed (active, as the first one), uploaded as JSON and
    // as a form.
    let self_signed = "POST /orgs/{org}/server-certs/self-signed";
    let first = id_of(&s.send(201, self_signed, "", Req::Empty).await);
    let upload = "POST /orgs/{org}/server-certs";
    let chain_and_key = || json(json!({"certificate": leaf, "private_key": key}));
    let uploaded = id_of(&s.send(201, upload, "", chain_and_key()).await);
    s.send(409, upload, "", chain_and_key()).await;
    let (leaf2, key2) = ca.leaf();
    let fields = form(&[
        ("certificate", None, leaf2.as_bytes()),
        ("private_key", None, key2.as_bytes()),
    ]);
    s.send(201, upload, "", fields).await;
    s.refused("unsupported_media_type", upload, "", pem(&leaf))
        .await;
    let (foreign, _) = Ca::new("Other").leaf();
    let mismatch = json(json!({"certificate": foreign, "private_key": key}));
    s.refused("key_mismatch", upload, "", mismatch).await;
    s.get(200, "/orgs/{org}/server-certs", "").await;
    s.get(200, "/orgs/{org}/server-certs/{id}", &uploaded).await;
    s.get(200, "/orgs/{org}/server-certs/{id}/chain.pem", &uploaded)
        .await;
    s.delete(409, "/orgs/{org}/server-certs/{id}", &first).await;
    let activate = "POST /orgs/{org}/server-certs/{id}/activate";
    s.send(200, activate, &uploaded, Req::Empty).await;
    s.delete(204, "/orgs/{org}/server-certs/{id}", &first).await;

    // CSRs.
    let request = json(json!({
        "subject": {"common_name": HOST, "organization": "Acme Corp", "country": "DE"},
        "sans": [HOST],
        "key_type": "ecdsa-p384"
    }));
    let csr = id_of(&s.send(201, "POST /orgs/{org}/csrs", "", request).await);
    s.get(200, "/orgs/{org}/csrs", "").await;
    s.get(200, "/orgs/{org}/csrs/{id}", &csr).await;
    let a = s
        .call_as(
            Some(TOKEN),
            "GET /orgs/{org}/csrs/{id}.pem",
            &csr,
            Req::Empty,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let signed = ca.sign_csr(std::str::from_utf8(&a.body).unwrap());
    let complete = "POST /orgs/{org}/csrs/{id}/certificate";
    s.send(201, complete, &csr, pem(&signed)).await;
    s.send(409, complete, &csr, pem(&signed)).await;
    s.delete(204, "/orgs/{org}/csrs/{id}", &csr).await;
    let elsewhere = json(json!({"subject": {"common_name": "elsewhere.example"}}));
    s.refused("hostname_mismatch", "POST /orgs/{org}/csrs", "", elsewhere)
        .await;

    // Client certificates and the destinations that use them; a client CSR.
    let (client, client_key) = ca.client_leaf("certmq-acme");
    let cc = "POST /orgs/{org}/client-certs";
    let body = || json(json!({"certificate": client, "private_key": client_key}));
    let previewed = s
        .send(200, "POST /orgs/{org}/client-certs/preview", "", body())
        .await;
    assert_eq!(previewed["chain_length"], 1, "{previewed}");
    let cc_id = id_of(&s.send(201, cc, "", body()).await);
    s.send(409, cc, "", body()).await;
    let (server_only, server_key) = ca.leaf();
    let wrong = json(json!({"certificate": server_only, "private_key": server_key}));
    s.refused("not_for_client_auth", cc, "", wrong).await;
    let (server_only, server_key) = ca.leaf();
    let wrong = json(json!({"certificate": server_only, "private_key": server_key}));
    s.refused(
        "not_for_client_auth",
        "POST /orgs/{org}/client-certs/preview",
        "",
        wrong,
    )
    .await;
    s.get(200, "/orgs/{org}/client-certs", "").await;
    s.get(200, "/orgs/{org}/client-certs/{id}", &cc_id).await;
    let client_csr = json(json!({"subject": {"common_name": "certmq acme"}, "purpose": "client"}));
    let client_csr = id_of(&s.send(201, "POST /orgs/{org}/csrs", "", client_csr).await);
    let a = s
        .call_as(
            Some(TOKEN),
            "GET /orgs/{org}/csrs/{id}.pem",
            &client_csr,
            Req::Empty,
        )
        .await;
    let signed = ca.sign_csr(std::str::from_utf8(&a.body).unwrap());
    let made = s.send(201, complete, &client_csr, pem(&signed)).await;
    assert_eq!(made["origin"], "csr", "{made}");
    let bridge = json(json!({
        "name": "upstream", "url": "mqtts://broker.example.com", "client_cert": cc_id,
        "ca_certificates": ca.pem,
        "forward": [{"filter": "iot-2/type/+/id/+/evt/+/fmt/+", "topic": "fleet/{type}/{id}"}]
    }));
    let bridge = id_of(&s.send(201, "POST /orgs/{org}/bridges", "", bridge).await);
    let bad = json(
        json!({"name": "x", "url": "mqtt://broker.example.com", "ca_certificates": ca.pem,
        "forward": [{"filter": "iot-2/type/+/id/+/evt/+/fmt/+"}]}),
    );
    s.refused("bad_request", "POST /orgs/{org}/bridges", "", bad)
        .await;
    s.get(200, "/orgs/{org}/bridges", "").await;
    s.get(200, "/orgs/{org}/bridges/{id}", &bridge).await;
    let rename = json(json!({"name": "upstream-2", "client_id": null}));
    s.send(200, "PATCH /orgs/{org}/bridges/{id}", &bridge, rename)
        .await;
    s.delete(409, "/orgs/{org}/client-certs/{id}", &cc_id).await;
    let hook = json(
        json!({"name": "archive", "url": "https://hooks.example.com/in",
        "ca_certificates": ca.pem, "filter": "iot-2/type/+/id/+/evt/+/fmt/+"}),
    );
    let hook = id_of(&s.send(201, "POST /orgs/{org}/webhooks", "", hook).await);
    s.get(200, "/orgs/{org}/webhooks", "").await;
    s.get(200, "/orgs/{org}/webhooks/{id}", &hook).await;
    let qos0 = json(json!({"qos": 0}));
    s.send(200, "PATCH /orgs/{org}/webhooks/{id}", &hook, qos0)
        .await;
    s.delete(204, "/orgs/{org}/webhooks/{id}", &hook).await;
    s.delete(204, "/orgs/{org}/bridges/{id}", &bridge).await;
    s.delete(204, "/orgs/{org}/client-certs/{id}", &cc_id).await;

    // Org tokens, and what an org token may not do.
    let ops = json(json!({"name": "ops"}));
    let t = s.send(201, "POST /orgs/{org}/tokens", "", ops).await;
    let token = t["token"].as_str().unwrap().to_owned();
    s.get(200, "/orgs/{org}/tokens", "").await;
    for op in [
        "POST /orgs",
        "DELETE /orgs/{org}",
        "GET /audit",
        "GET /metrics",
        "POST /admin-token/rotate",
    ] {
        let req = match op {
            "POST /orgs" => json(json!({"id": "beta"})),
            _ => Req::Empty,
        };
        let a = s.call_as(Some(&token), op, "", req).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (403, "forbidden"),
            "{op}"
        );
    }
    // Limits: an org token may lower them, not raise them.
    s.get(200, "/orgs/{org}/limits", "").await;
    let lower = json(json!({"max_connections": 100}));
    let a = s
        .call_as(Some(&token), "PUT /orgs/{org}/limits", "", lower)
        .await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.text());
    let raise = json(json!({"max_connections": 1000}));
    let a = s
        .call_as(Some(&token), "PUT /orgs/{org}/limits", "", raise)
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (403, "raise_needs_platform_token")
    );
    let raise = json(json!({"max_connections": 1000}));
    s.send(200, "PUT /orgs/{org}/limits", "", raise).await;
    let zero = json(json!({"max_connections": 0}));
    s.refused("limit_out_of_range", "PUT /orgs/{org}/limits", "", zero)
        .await;
    s.delete(204, "/orgs/{org}/tokens/{id}", &id_of(&t)).await;

    // Domains, security policy, device tokens.
    let domains = json(json!({"domains": ["iot.example.com"]}));
    s.send(200, "PUT /orgs/{org}/domains", "", domains).await;
    s.get(200, "/orgs/{org}/domains", "").await;
    let policy = json(json!({
        "level": "tls_client_cert",
        "device_types": {"legacy": "tls_optional"},
        "gateway_device_types": {"gw": ["sensor"]}
    }));
    s.send(200, "PUT /orgs/{org}/security-policy", "", policy)
        .await;
    s.get(200, "/orgs/{org}/security-policy", "").await;
    let set_token = "POST /orgs/{org}/device-tokens";
    let generated = json(json!({"identity": "d:legacy:dev1"}));
    s.send(201, set_token, "", generated).await;
    let given = json(json!({"identity": "d:legacy:dev2", "token": "s3cret-token-16ch"}));
    s.send(201, set_token, "", given).await;
    let short = json(json!({"identity": "d:legacy:dev2", "token": "8-chars!"}));
    s.send(400, set_token, "", short).await;
    s.get(200, "/orgs/{org}/device-tokens", "").await;
    s.delete(204, "/orgs/{org}/device-tokens/{id}", "d:legacy:dev1")
        .await;
    s.delete(400, "/orgs/{org}/device-tokens/{id}", "nope")
        .await;

    // Revocation.
    let block = "POST /orgs/{org}/blocked-devices";
    let stolen = || json(json!({"identity": "d:sensor:dev2", "reason": "stolen"}));
    s.send(201, block, "", stolen()).await;
    s.send(409, block, "", stolen()).await;
    s.get(200, "/orgs/{org}/blocked-devices", "").await;
    s.delete(204, "/orgs/{org}/blocked-devices/{id}", "d:sensor:dev2")
        .await;
    let upload = "POST /orgs/{org}/crls";
    let crl = id_of(
        &s.send(201, upload, "", pem(&ca.crl(2, Duration::hours(1))))
            .await,
    );
    let older = pem(&ca.crl(1, Duration::hours(2)));
    s.refused("crl_outdated", upload, "", older).await;
    let foreign = pem(&Ca::new("Other").crl(1, Duration::hours(1)));
    s.refused("crl_not_from_org_ca", upload, "", foreign).await;
    s.get(200, "/orgs/{org}/crls", "").await;
    s.delete(204, "/orgs/{org}/crls/{id}", &crl).await;

    // Fleet operations: the inventory (an admission as the broker reports it), one
    // certificate revoked, the network policy, a CA verification code.
    let fp = "ab".repeat(32);
    s.api
        .registry
        .record_admission(registry::devices::Admission {
            org: registry::OrgId::try_from(ORG).unwrap(),
            identity: registry::Identity::parse("d:sensor:dev1").unwrap(),
            client_id: "d:acme:sensor:dev1".into(),
            addr: "127.0.0.1".parse().unwrap(),
            cert: Some(registry::devices::SeenCert {
                fingerprint_sha256: fp.clone(),
                serial: "01".into(),
                not_after: time::OffsetDateTime::now_utc() + Duration::days(10),
                ca_id: ca_id.clone(),
            }),
            took_over_from: None,
        });
    let page = s
        .get(
            200,
            "/orgs/{org}/devices?expiring_within_days=30&limit=10",
            "",
        )
        .await;
    assert_eq!(page[0]["identity"], "d:sensor:dev1");
    assert_eq!(page[0]["connected"], false);
    s.get(400, "/orgs/{org}/devices?limit=100000", "").await;
    s.get(200, "/orgs/{org}/devices/{id}", "d:sensor:dev1")
        .await;
    s.get(404, "/orgs/{org}/devices/{id}", "d:sensor:nope")
        .await;
    s.get(400, "/orgs/{org}/devices/{id}", "nope").await;
    let revoke = "POST /orgs/{org}/revoked-certs";
    let unknown = json(json!({"fingerprint_sha256": "cd".repeat(32)}));
    s.refused("unknown_certificate", revoke, "", unknown).await;
    let by_fp = || json(json!({"fingerprint_sha256": fp, "reason": "key leaked"}));
    let revoked = id_of(&s.send(201, revoke, "", by_fp()).await);
    s.send(409, revoke, "", by_fp()).await;
    s.refused("bad_request", revoke, "", json(json!({}))).await;
    let by_serial = json(json!({"ca_id": "nope", "serial": "02"}));
    s.send(404, revoke, "", by_serial).await;
    s.get(200, "/orgs/{org}/revoked-certs", "").await;
    s.delete(204, "/orgs/{org}/revoked-certs/{id}", &revoked)
        .await;
    s.delete(404, "/orgs/{org}/revoked-certs/{id}", &revoked)
        .await;
    let net = "PUT /orgs/{org}/network-policy";
    let good = json(json!({"allow": ["10.0.0.0/8"], "deny": ["10.1.2.3"]}));
    s.send(200, net, "", good).await;
    let bad = json(json!({"allow": ["10.0.0.0/33"]}));
    s.refused("invalid_cidr", net, "", bad).await;
    let dead = json(json!({"allow": ["10.1.0.0/16"], "deny": ["10.0.0.0/8"]}));
    s.refused("cidr_overlap", net, "", dead).await;
    let policy = s.get(200, "/orgs/{org}/network-policy", "").await;
    assert_eq!(policy["deny"], json!(["10.1.2.3/32"]));
    let topics = "PUT /orgs/{org}/topic-policy";
    let custom = || {
        json(json!({"mode": "custom", "rules": [
            {"who": "d:*:*", "client_id": "{id}", "publish": ["things/{id}/#"]},
            {"who": "a:*", "client_id": "*", "subscribe": ["things/#"]}
        ], "status_topic": "things/{id}/status"}))
    };
    s.send(200, topics, "", custom()).await;
    let bad = json(json!({"mode": "custom", "rules": [{"who": "d:*:*", "publish": ["x/{app}"]}]}));
    s.refused("invalid_topic_rule", topics, "", bad).await;
    let stored = s.get(200, "/orgs/{org}/topic-policy", "").await;
    assert_eq!(stored["rules"][0]["client_id"], "{id}");
    s.send(200, topics, "", json(json!({"mode": "watson"})))
        .await;
    let code = "POST /orgs/{org}/ca-certs/verification-code";
    let c = s.send(201, code, "", Req::Empty).await;
    assert_eq!(c["code"].as_str().unwrap().len(), 32);

    // Broker-backed: without a broker, no sessions and no dry run.
    s.get(200, "/orgs/{org}/connections", "").await;
    s.delete(404, "/orgs/{org}/connections/{id}", "d:acme:sensor:dev1")
        .await;
    s.get(200, "/orgs/{org}/retained", "").await;
    s.delete(
        404,
        "/orgs/{org}/retained?topic=iot-2/type/t/id/d/evt/e/fmt/f",
        "",
    )
    .await;
    s.delete(400, "/orgs/{org}/retained?topic=iot-2/type/%2B/id/d", "")
        .await;
    let check = json(json!({"certificate": leaf}));
    s.send(500, "POST /orgs/{org}/authz/check", "", check).await;

    // Audit (entries of the calls above), ops.
    let page = s.get(200, "/orgs/{org}/audit", "").await;
    assert!(page.as_array().unwrap().len() > 10);
    s.get(400, "/orgs/{org}/audit?limit=0", "").await;
    s.get(200, "/audit", "").await;
    // The harness's platform token is set from outside, as CERTMQ_ADMIN_TOKEN is.
    s.send(409, "POST /admin-token/rotate", "", Req::Empty)
        .await;
    s.get(200, "/metrics", "").await;
    s.get(200, "/healthz", "").await;
    s.get(200, "/readyz", "").await;
    s.get(200, "/openapi.json", "").await;

    s.delete(204, "/orgs/{org}/ca-certs/{id}", &ca_id).await;
    s.delete(204, "/orgs/{org}", "").await;

    let missed: Vec<_> = s.doc.operations().difference(&s.called).cloned().collect();
    assert!(
        missed.is_empty(),
        "operations this test does not call: {missed:?}"
    );
}
