//! The web console: a single-page app for certificate administration, served at
//! `/console` by the admin server itself.
//!
//! The console is three static files (`admin-api/console/`: HTML, plain JavaScript and
//! CSS, no build step) embedded in the binary with `include_str!`, so `certmq serve` is
//! all it takes. It owns no logic and no state: the page calls `/api/v1` with the bearer
//! token the user types at sign-in (kept in the tab's `sessionStorage`) and shows what
//! the API answers, errors included. The assets themselves need no token — they hold no
//! secret, and the API does all the checking.
//!
//! Every asset is sent with a strict Content-Security-Policy (`default-src 'self'`, no
//! inline script or style, no framing): the console loads nothing from anywhere else.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Where the console lives; `/` redirects here.
pub(crate) const PATH: &str = "/console";

/// The policy sent with every asset: same origin only, no inline code, no framing, and
/// forms never submit anywhere (the script handles them).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    content_type: &'static str,
    body: &'static str,
}

static INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../console/index.html"),
};
static SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../console/app.js"),
};
static STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("../console/app.css"),
};
static ICON: Asset = Asset {
    content_type: "image/svg+xml",
    body: include_str!("../console/icon.svg"),
};

impl IntoResponse for &'static Asset {
    fn into_response(self) -> Response {
        let headers: [(HeaderName, HeaderValue); 6] = [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // Revalidate every time: an upgraded binary must never run yesterday's script
            // against today's API. The files are small.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ];
        (headers, self.body).into_response()
    }
}

/// The console's routes, without auth: `/` (redirect), `/console` and its assets.
/// Merged into [`crate::router`] beside `/api/v1`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to(PATH) }))
        .route(PATH, get(|| async { &INDEX }))
        .route("/console/", get(|| async { Redirect::to(PATH) }))
        .route("/console/app.js", get(|| async { &SCRIPT }))
        .route("/console/app.css", get(|| async { &STYLE }))
        .route("/console/icon.svg", get(|| async { &ICON }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> Response {
        routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header(resp: &Response, name: HeaderName) -> &str {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn assets_have_their_content_type_and_a_strict_policy() {
        for (path, ct) in [
            ("/console", "text/html"),
            ("/console/app.js", "text/javascript"),
            ("/console/app.css", "text/css"),
            ("/console/icon.svg", "image/svg+xml"),
        ] {
            let resp = get(path).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert!(
                header(&resp, header::CONTENT_TYPE).starts_with(ct),
                "{path}"
            );
            let csp = header(&resp, header::CONTENT_SECURITY_POLICY);
            assert!(csp.starts_with("default-src 'self';"), "{path}: {csp}");
            assert!(!csp.contains("unsafe"), "{path}: {csp}");
            assert_eq!(header(&resp, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        }
    }

    #[tokio::test]
    async fn root_and_trailing_slash_redirect_to_the_console() {
        for path in ["/", "/console/"] {
            let resp = get(path).await;
            assert!(resp.status().is_redirection(), "{path}");
            assert_eq!(header(&resp, header::LOCATION), PATH);
        }
    }

    /// The policy forbids inline code and other origins; the files must not need them.
    #[test]
    fn assets_need_nothing_the_policy_forbids() {
        for asset in [&INDEX, &SCRIPT, &STYLE, &ICON] {
            for external in ["http://", "https://", "//fonts.", "@import"] {
                let hits: Vec<&str> = asset
                    .body
                    .lines()
                    .filter(|l| l.contains(external))
                    // The SVG namespace is an identifier, not a fetch; nor is an example
                    // URL shown as a form's placeholder (marked so on its line).
                    .filter(|l| !l.contains("xmlns=\"http://www.w3.org/2000/svg\""))
                    .filter(|l| !l.ends_with("// placeholder text, never fetched"))
                    .collect();
                assert!(hits.is_empty(), "{}: {hits:?}", asset.content_type);
            }
        }
        let html = INDEX.body;
        assert!(!html.contains("style="), "inline style attribute");
        assert!(!html.contains("<style"), "inline style element");
        assert_eq!(
            html.matches("<script").count(),
            html.matches("<script type=\"module\" src=\"/console/")
                .count(),
            "every script must be an external same-origin file"
        );
        assert!(
            !SCRIPT.body.contains("innerHTML"),
            "build DOM nodes, not HTML"
        );
        assert!(!SCRIPT.body.contains("eval("));
    }
}
