//! The web console in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, with fantoccini) against the real `certmq` binary, clicking and typing as
//! an admin would: sign in, create an org, upload CAs through the file input (an expired
//! one is refused with its rule shown), run the CSR wizard end to end with a CA made here
//! with `openssl`, activate, kick a live device, and check what an org token sees.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`; `CERTMQ_CHROMIUM` / `CERTMQ_CHROMEDRIVER` name other binaries) and
//! `openssl`. Without the browser the test is skipped with a message — unless
//! `CERTMQ_REQUIRE_BROWSER=1` (CI sets it), where it fails.
//!
//! `CERTMQ_CONSOLE_SCREENSHOTS=<dir>` saves a PNG of each main page there; that is how
//! `docs/console/` is made.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use device_sim::certs::{ClientCertOptions, TestCa};
use device_sim::client::BrokerTarget;
use fantoccini::{Client, ClientBuilder, Locator};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use support::*;
use time::OffsetDateTime;

/// How long a page may take to show what the test waits for.
const WAIT: Duration = Duration::from_secs(10);
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;
const HOST: &str = "acme.messaging.localhost";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let page = Page::new(&browser.client, &server);
    let api = server.api();

    // `/` leads to the console; sign in with the platform admin token.
    page.goto("/").await;
    page.wait_text("h1", "Sign in").await;
    let url = page.c.current_url().await.expect("url");
    assert_eq!(url.path(), "/console", "{url}");
    page.fill("#token", TOKEN).await;
    page.click("#sign-in").await;
    page.wait_text("h1", "Organizations").await;
    page.wait_text("#who", "Platform admin").await;

    // Create an org through the form; another one through the API, for the scope check.
    page.fill("#org-id", "acme").await;
    page.fill("#org-name", "Acme Corp").await;
    page.click("#org-create").await;
    page.wait_text("h1", "Organization acme").await;
    api.post("/orgs", json!({ "id": "beta", "name": "Beta Ltd" }))
        .await;

    // Upload the devices' CA with the file input: the server's preview, then save; the
    // table lists it with its SHA-256 fingerprint.
    let device_ca = TestCa::new("Acme Device CA").expect("CA");
    let device_ca_file = write(dir, "acme-device-ca.pem", &device_ca.pem());
    let fp = fingerprint(dir, &device_ca_file);
    page.send_file("#ca-file", &device_ca_file).await;
    page.wait_text("#ca-preview", "Preview of acme-device-ca.pem")
        .await;
    page.wait_text("#ca-preview", &fp).await;
    page.shot("ca-preview").await;
    page.fill("#ca-description", "devices in the field").await;
    page.click("#ca-save").await;
    let row = format!("tr[data-fingerprint='{fp}']");
    page.wait_text(&row, &fp).await;
    page.wait_text(&row, "CN=Acme Device CA").await;

    // An expired CA is refused in the preview, with the rule that failed.
    let expired = write(dir, "old-root.pem", &ca_pem("Old Root", -400, -10));
    page.send_file("#ca-file", &expired).await;
    let error = page
        .wait_text(".alert.error", "old-root.pem was not accepted")
        .await;
    assert!(error.contains("expired"), "{error}");
    assert_eq!(page.text(".alert.error .error-code").await, "expired");
    let (_, cas) = api
        .call(reqwest::Method::GET, "/orgs/acme/ca-certs", None)
        .await;
    assert_eq!(cas.as_array().map(Vec::len), Some(1), "{cas}");
    page.shot("ca-certs").await;

    // The active switch, and a delete confirmed in a dialog that names the certificate.
    let toggle = format!("{row} input[role='switch']");
    page.click(&toggle).await;
    page.wait_text("#toast", "Deactivated CN=Acme Device CA")
        .await;
    page.click(&toggle).await;
    page.wait_text("#toast", "Activated CN=Acme Device CA")
        .await;
    let spare = api
        .post(
            "/orgs/acme/ca-certs",
            json!({ "certificate": ca_pem("Acme Spare CA", -1, 200) }),
        )
        .await;
    page.c.refresh().await.expect("reload");
    let spare_row = format!("tr[data-id='{}']", spare["id"].as_str().expect("id"));
    page.click(&format!("{spare_row} button.danger")).await;
    page.wait_text("dialog", "Delete CA certificate “CN=Acme Spare CA”?")
        .await;
    page.shot("ca-delete").await;
    page.click("#confirm-ok").await;
    page.wait_gone(&spare_row).await;
    let (_, cas) = api
        .call(reqwest::Method::GET, "/orgs/acme/ca-certs", None)
        .await;
    assert_eq!(cas.as_array().map(Vec::len), Some(1), "{cas}");
    assert_eq!(cas[0]["active"], true, "{cas}");

    // A CA that goes dark in 20 days, for the expiry overview.
    api.post(
        "/orgs/beta/ca-certs",
        json!({ "certificate": ca_pem("Beta Legacy CA", -345, 20) }),
    )
    .await;

    // The CSR wizard: subject, CSR, signed by a CA made here with openssl, activate.
    page.click_link("CSR wizard").await;
    page.wait_text(".wizard", "Subject and key").await;
    page.fill("#csr-cn", HOST).await;
    page.fill("#csr-o", "Acme Corp").await;
    page.fill("#csr-c", "DE").await;
    page.click("#csr-create").await;
    page.wait_text(".wizard", "Upload the signed certificate")
        .await;
    let csr_pem = page.prop("#csr-pem", "value").await;
    assert!(csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    page.shot("csr-wizard").await;
    let server_ca = OpensslCa::new(dir, "Console Test CA");
    write(dir, "console.csr", &csr_pem);
    let signed = server_ca.sign_server("console", HOST);
    page.send_file("#signed-file", &signed).await;
    page.click("#signed-upload").await;
    page.wait_text(".wizard", "Activate it when you are ready")
        .await;
    page.click("#csr-activate").await;
    page.wait_text("#csr-state", &format!("devices connecting to {HOST}"))
        .await;
    page.shot("csr-activated").await;
    let (_, certs) = api
        .call(reqwest::Method::GET, "/orgs/acme/server-certs", None)
        .await;
    let active: Vec<&Value> = certs
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["active"] == true)
        .collect();
    assert_eq!(active.len(), 1, "{certs}");
    assert_eq!(active[0]["origin"], "csr");

    // Server certificates: a self-signed one stays inactive beside the active one; a
    // key that is not the leaf's is refused inline with the rule.
    page.click_link("Server certificates").await;
    page.wait_text("table", HOST).await;
    page.click("#self-signed").await;
    page.wait_text(".card", "inactive: activate it when ready")
        .await;
    let (other_leaf, _other_key) = server_ca.issue_server("other", HOST);
    page.send_file("#srv-chain", &other_leaf).await;
    page.send_file("#srv-key", &server_ca.key_file()).await;
    page.click("#srv-upload").await;
    let error = page
        .wait_text("#server-upload-messages", "key_mismatch")
        .await;
    assert!(error.contains("does not belong to the leaf"), "{error}");
    page.shot("server-certs").await;

    // A device connects — trusting only the CA that signed the CSR, so this also shows
    // the activated certificate is the one presented — and is kicked from the console.
    let target = BrokerTarget {
        host: "127.0.0.1".into(),
        port: server.mqtt.port(),
        sni: HOST.into(),
        server_ca_pem: server_ca.pem.clone(),
    };
    let cert = device_ca
        .issue_client("d:sensor:dev1", ClientCertOptions::default())
        .expect("device cert");
    let mut device = connect_with(&target, "d:acme:sensor:dev1", &cert)
        .await
        .expect("device connects with the CSR certificate presented");
    page.click_link("Connections").await;
    let row = "tr[data-client-id='d:acme:sensor:dev1']";
    page.wait_text(row, "d:sensor:dev1").await;
    page.shot("connections").await;
    page.click(&format!("{row} button.kick")).await;
    page.wait_gone(row).await;
    page.wait_text(
        ".tab-body",
        "No device or application of this org is connected",
    )
    .await;
    assert!(
        device.wait_closed(WAIT).await.is_some(),
        "the kicked device is still connected"
    );

    // The device inventory: search, expiring soon, the certificate history, and one
    // certificate revoked after a confirmation — its session closes.
    let mut device = connect_with(&target, "d:acme:sensor:dev1", &cert)
        .await
        .expect("the device connects again");
    page.click_link("Devices").await;
    let row = "tr[data-identity='d:sensor:dev1']";
    page.wait_text(row, "connected").await;
    page.fill("#dev-prefix", "d:sensor:").await;
    page.click("#dev-expiring").await;
    page.click("#dev-search").await;
    page.wait_text(row, "d:acme:sensor:dev1").await;
    page.click(&format!("{row} details summary")).await;
    page.wait_text(&format!("{row} details"), "valid").await;
    page.shot("devices").await;
    page.click(&format!("{row} button.revoke")).await;
    page.wait_text("#confirm-title", "Revoke this certificate")
        .await;
    page.click("#confirm-ok").await;
    page.wait_text(&format!("{row} details"), "revoked").await;
    assert!(
        device.wait_closed(WAIT).await.is_some(),
        "the revoked certificate's session is still open"
    );
    assert!(
        connect_with(&target, "d:acme:sensor:dev1", &cert)
            .await
            .is_err(),
        "the revoked certificate connects"
    );
    page.click(&format!("{row} button.lift")).await;
    page.wait_text(&format!("{row} details"), "valid").await;

    // The network policy: a malformed entry is refused, naming it; a good one is saved.
    page.click_link("Network policy").await;
    page.fill("#net-allow", "10.0.0.0/33").await;
    page.click("#net-save").await;
    let error = page.wait_text(".alert.error", "invalid_cidr").await;
    assert!(error.contains("allow[0]"), "{error}");
    page.fill("#net-allow", "127.0.0.0/8").await;
    page.fill("#net-deny", "127.0.0.2").await;
    page.click("#net-save").await;
    page.wait_text(".alert.ok", "Saved").await;
    assert_eq!(page.prop("#net-deny", "value").await, "127.0.0.2/32");
    page.shot("network-policy").await;

    // The security policy: proof of possession on, a verification code.
    page.click_link("Security policy").await;
    page.wait_for("#sec-level").await;
    page.click("#sec-ca-proof").await;
    page.click("#sec-save").await;
    page.wait_text(".alert.ok", "Saved").await;
    let (_, policy) = api
        .call(reqwest::Method::GET, "/orgs/acme/security-policy", None)
        .await;
    assert_eq!(policy["require_ca_proof"], true, "{policy}");
    page.click("#sec-code-new").await;
    let code = page.wait_text("#sec-code", "valid until").await;
    assert!(code.contains("openssl"), "{code}");
    page.shot("security-policy").await;
    let code = page.text("#sec-code-value").await;
    // A CA upload now needs its proof: refused without, saved with one.
    page.click_link("CA certificates").await;
    let proven = TestCa::new("Acme Proven CA").expect("CA");
    let proven_file = write(dir, "acme-proven-ca.pem", &proven.pem());
    page.send_file("#ca-file", &proven_file).await;
    page.wait_text("#ca-preview", "Preview of acme-proven-ca.pem")
        .await;
    page.click("#ca-save").await;
    page.wait_text(".alert.error", "proof_of_possession_required")
        .await;
    let verification = proven
        .issue_client(&code, ClientCertOptions::default())
        .expect("verification certificate");
    page.send_file("#ca-file", &proven_file).await;
    page.wait_text("#ca-preview", "Preview of acme-proven-ca.pem")
        .await;
    page.click("#ca-upload-title ~ details:last-of-type summary")
        .await;
    page.fill("#ca-proof", &verification.cert_pem).await;
    page.click("#ca-save").await;
    page.wait_text("table", "CN=Acme Proven CA").await;

    // Blocked devices and CRLs.
    page.click_link("Blocked devices").await;
    page.wait_text(".tab-body", "No identity is blocked").await;
    page.fill("#block-identity", "d:sensor:dev2").await;
    page.fill("#block-reason", "lost in the field").await;
    page.click("#block-add").await;
    page.wait_text("table", "lost in the field").await;
    page.shot("blocked-devices").await;

    page.click_link("CRLs").await;
    page.wait_text(".tab-body", "No CRLs uploaded").await;
    let crl = write(
        dir,
        "device-ca.crl.pem",
        &device_ca.crl_pem(&[&[0x42]], 7).expect("CRL"),
    );
    page.send_file("#crl-file", &crl).await;
    page.click("#crl-upload").await;
    page.wait_text("table", "CN=Acme Device CA").await;
    page.shot("crls").await;

    // The audit log shows the refused preview with its rule.
    page.click_link("Audit log").await;
    page.wait_text("table", "ca-certs/preview").await;
    page.wait_text("table", "expired").await;
    page.shot("audit").await;

    // The expiry overview: beta's CA going dark in 20 days, not acme's year-long one.
    page.click_link("Expiry overview").await;
    let expiring = page.wait_text("table", "CN=Beta Legacy CA").await;
    assert!(!expiring.contains("Acme Device CA"), "{expiring}");
    page.shot("expiry").await;
    page.click_link("Organizations").await;
    page.wait_text("table", "Beta Ltd").await;
    page.shot("orgs").await;

    // Phone width: the CA table becomes cards, nothing overflows sideways.
    page.c.set_window_size(390, 844).await.expect("resize");
    page.goto("/console#/org/acme/ca-certs").await;
    page.wait_text(&format!("tr[data-fingerprint='{fp}']"), &fp)
        .await;
    let overflow = page
        .c
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        overflow,
        json!(false),
        "the page scrolls sideways at 390 px"
    );
    page.shot("phone-ca-certs").await;
    page.c.set_window_size(WIDTH, HEIGHT).await.expect("resize");

    // An org token, created in the console, sees its org only.
    page.goto("/console#/org/acme/settings").await;
    // The org's limits, read-only: the defaults.
    let limits = page.wait_text("#limits", "50,000").await;
    assert!(limits.contains("1,048,576 bytes"), "{limits}");
    page.fill("#token-name", "ops").await;
    page.click("#token-create").await;
    page.wait_text(".tab-body", "Copy it now").await;
    let org_token = page.prop("#new-token", "value").await;
    assert!(org_token.starts_with("cmq_"), "{org_token}");
    page.click("#sign-out").await;
    page.wait_text("h1", "Sign in").await;
    page.fill("#token", &org_token).await;
    page.click("#sign-in").await;
    page.wait_text("h1", "Organization acme").await;
    page.wait_text("#who", "Org token · acme").await;
    page.click_link("Organizations").await;
    let orgs = page.wait_text("table", "acme").await;
    assert!(!orgs.contains("beta"), "{orgs}");
    assert!(!page.displayed("#org-create").await);
    // Another org's page: the server's 404, shown with its message.
    page.goto("/console#/org/beta/ca-certs").await;
    page.wait_text(".alert.error", "org beta not found").await;

    drop(browser);
}

/// Chromium under chromedriver, with a fresh profile. Dropping it ends the WebDriver
/// session (chromedriver then quits the browser it started) and stops chromedriver by
/// its process id, so no browser outlives a failed test.
struct Browser {
    client: Client,
    /// Held for its `Drop`; declared after `client`, so it goes last.
    _driver: Driver,
    _profile: tempfile::TempDir,
    /// This test's turn with the browser: the tests of this file run one browser at a
    /// time (Chromium sessions started side by side on 2 cores failed with a reset).
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Whose turn it is to run a browser.
static BROWSER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Browser {
    /// `None` (after saying why) when no browser is installed and none is required.
    async fn start() -> Option<Browser> {
        let turn = BROWSER_TURN.lock().await;
        let programs = find_program("CERTMQ_CHROMIUM", &["chromium", "chromium-browser"])
            .zip(find_program("CERTMQ_CHROMEDRIVER", &["chromedriver"]));
        let Some((chromium, chromedriver)) = programs else {
            let why = "chromium and chromedriver are not installed \
                       (Debian: apt-get install chromium chromium-driver)";
            if std::env::var("CERTMQ_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{why}, and CERTMQ_REQUIRE_BROWSER=1 requires them");
            }
            eprintln!("skipping the browser test: {why}");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let mut driver = Driver {
            child,
            port,
            session: None,
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The machine has no network: without these flags Chromium waits on background
        // connections (updates, sync, QUIC probes).
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--force-device-scale-factor=1",
        ]
        .map(String::from)
        .into();
        args.push(format!("--window-size={WIDTH},{HEIGHT}"));
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("start a chromium session");
        driver.session = client.session_id().await.expect("session id");
        Some(Browser {
            client,
            _driver: driver,
            _profile: profile,
            _turn: turn,
        })
    }
}

/// The chromedriver process, and the session it runs for the test.
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = &self.session {
            end_session(self.port, id);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/{id}` over a plain blocking socket (a `Drop` cannot await):
/// chromedriver closes the browser it started for that session.
fn end_session(port: u16, id: &str) {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(WAIT));
    let request = format!(
        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(request.as_bytes()).is_ok() {
        let _ = conn.read_to_end(&mut Vec::new());
    }
}

/// `$env` when set, else the first of `names` on the PATH.
fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The console in the browser, with the waits a person does without thinking.
struct Page<'a> {
    c: &'a Client,
    base: String,
    shots: Option<PathBuf>,
}

impl<'a> Page<'a> {
    /// The console of `server` in the browser `c`.
    fn new(c: &'a Client, server: &Server) -> Page<'a> {
        Page {
            c,
            base: format!("http://{}", server.admin),
            shots: std::env::var_os("CERTMQ_CONSOLE_SCREENSHOTS").map(PathBuf::from),
        }
    }

    /// Signs in with the platform admin token and waits for the list of orgs.
    async fn sign_in(&self) {
        self.goto("/").await;
        self.fill("#token", TOKEN).await;
        self.click("#sign-in").await;
        self.wait_text("h1", "Organizations").await;
    }

    async fn goto(&self, path: &str) {
        self.c
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("goto");
    }

    /// Waits until `css` matches an element whose visible text contains `needle`;
    /// returns that text.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(elements) = self.c.find_all(Locator::Css(css)).await {
                for el in elements {
                    if let Ok(text) = el.text().await {
                        if text.contains(needle) {
                            return text;
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no {css:?} containing {needle:?}; the page says:\n{}",
                    self.text("main").await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        while !self
            .c
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
        {
            assert!(Instant::now() < deadline, "{css:?} is still there");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        match self.c.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(e) => format!("<no {css:?}: {e}>"),
        }
    }

    async fn displayed(&self, css: &str) -> bool {
        match self.c.find(Locator::Css(css)).await {
            Ok(el) => el.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn prop(&self, css: &str, name: &str) -> String {
        let el = self.wait_for(css).await;
        el.prop(name).await.expect("prop").unwrap_or_default()
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.find(Locator::Css(css)).await
    }

    async fn find(&self, locator: Locator<'_>) -> fantoccini::elements::Element {
        self.c
            .wait()
            .at_most(WAIT)
            .for_element(locator)
            .await
            .unwrap_or_else(|e| panic!("no {locator:?}: {e}"))
    }

    async fn fill(&self, css: &str, value: &str) {
        let el = self.wait_for(css).await;
        el.clear().await.expect("clear");
        el.send_keys(value).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.expect("click");
    }

    /// Follows the link (a tab or the main navigation) with exactly this text.
    async fn click_link(&self, text: &str) {
        let link = self.find(Locator::LinkText(text)).await;
        link.click().await.expect("click");
    }

    /// Chooses `file` in the `<input type=file>` matched by `css`.
    async fn send_file(&self, css: &str, file: &Path) {
        let el = self.wait_for(css).await;
        el.send_keys(file.to_str().expect("UTF-8 path"))
            .await
            .expect("choose file");
    }

    /// With `CERTMQ_CONSOLE_SCREENSHOTS`, saves the whole page as `<name>.png`.
    async fn shot(&self, name: &str) {
        let Some(dir) = &self.shots else { return };
        std::fs::create_dir_all(dir).expect("screenshot dir");
        let (width, height) = self.c.get_window_size().await.expect("size");
        let (width, height) = (
            u32::try_from(width).unwrap_or(WIDTH),
            u32::try_from(height).unwrap_or(HEIGHT),
        );
        // A clean, whole page: no toast, no focus ring, scrolled to the top, the window
        // as tall as the page (plus what the window takes beyond the viewport).
        let script = "document.querySelector('#toast').classList.remove('show'); \
                      document.activeElement?.blur(); window.scrollTo(0, 0); \
                      return document.documentElement.scrollHeight \
                             + window.outerHeight - window.innerHeight;";
        let full = self.c.execute(script, vec![]).await.expect("script");
        let full = full.as_u64().and_then(|h| u32::try_from(h).ok());
        let full = full.unwrap_or(height).clamp(height, 2400);
        self.c.set_window_size(width, full).await.expect("resize");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = self.c.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
        self.c.set_window_size(width, height).await.expect("resize");
    }
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

/// The SHA-256 fingerprint as certmq shows it (lowercase hex, no colons), by openssl.
fn fingerprint(dir: &Path, pem: &Path) -> String {
    let path = pem.to_str().expect("UTF-8 path");
    let out = openssl(
        dir,
        &["x509", "-in", path, "-noout", "-fingerprint", "-sha256"],
    );
    let line = String::from_utf8(out).expect("UTF-8");
    let (_, hex) = line.trim().split_once('=').expect("Fingerprint=..");
    hex.replace(':', "").to_lowercase()
}

/// A self-signed CA certificate valid from `from` to `to` days from now.
fn ca_pem(common_name: &str, from: i64, to: i64) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    params
        .self_signed(&KeyPair::generate().expect("key"))
        .expect("sign")
        .pem()
}

/// The Outgoing page: a client certificate checked and uploaded, a webhook created with
/// it whose failure shows in words, a deletion confirmed; and the CSR wizard making a
/// client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_connections_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let page = Page::new(&browser.client, &server);
    let api = server.api();
    api.post("/orgs", json!({ "id": "acme", "name": "Acme Corp" }))
        .await;
    page.sign_in().await;
    page.goto("/console#/org/acme/outgoing").await;
    page.wait_text("h2", "Client certificates").await;

    // A server-only certificate is refused by the check, with its rule.
    let partner = TestCa::new("Partner CA").expect("CA");
    let server_only = partner
        .issue_server(&["x.example".into()])
        .expect("server cert");
    page.send_file("#cli-chain", &write(dir, "srv.pem", &server_only.chain_pem))
        .await;
    page.send_file("#cli-key", &write(dir, "srv.key", &server_only.key_pem))
        .await;
    page.click("#cli-check").await;
    page.wait_text("#cli-upload-messages", "not_for_client_auth")
        .await;

    // A client certificate: checked (nothing stored), then uploaded.
    let identity = partner
        .issue_client("certmq-acme", ClientCertOptions::default())
        .expect("client cert");
    page.send_file("#cli-chain", &write(dir, "cli.pem", &identity.chain_pem))
        .await;
    page.send_file("#cli-key", &write(dir, "cli.key", &identity.key_pem))
        .await;
    page.click("#cli-check").await;
    page.wait_text("#cli-preview", "It would be accepted").await;
    page.wait_text("#cli-preview", "CN=certmq-acme").await;
    let (_, none) = api
        .call(reqwest::Method::GET, "/orgs/acme/client-certs", None)
        .await;
    assert_eq!(none, json!([]), "a check stores nothing");
    page.click("#cli-upload").await;
    page.wait_text(
        "#cli-upload-messages",
        "Uploaded client certificate CN=certmq-acme",
    )
    .await;
    let (_, certs) = api
        .call(reqwest::Method::GET, "/orgs/acme/client-certs", None)
        .await;
    let cert_id = certs[0]["id"].as_str().expect("id").to_owned();
    page.wait_text("table", "CN=certmq-acme").await;

    // A webhook with it, to a port where nothing listens: its failure in words.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    page.fill("#hook-name", "archive").await;
    page.fill("#hook-url", &format!("https://localhost:{closed}/in"))
        .await;
    page.wait_for("#hook-cert")
        .await
        .select_by_value(&cert_id)
        .await
        .expect("choose the client certificate");
    page.fill("#hook-ca", &partner.pem()).await;
    page.click("#hook-create").await;
    page.wait_text("#toast", "Created webhook archive").await;
    let device_ca = TestCa::new("Acme Devices").expect("CA");
    api.upload_ca("acme", &device_ca.pem()).await;
    let srv = api
        .0
        .self_signed_server_cert("acme")
        .await
        .expect("server cert");
    let target = BrokerTarget {
        host: "127.0.0.1".into(),
        port: server.mqtt.port(),
        sni: HOST.into(),
        server_ca_pem: srv.pem,
    };
    let cert = device_ca
        .issue_client("d:sensor:dev1", ClientCertOptions::default())
        .expect("device cert");
    let device = connect_with(&target, "d:acme:sensor:dev1", &cert)
        .await
        .expect("device connects");
    device
        .client
        .publish(
            "iot-2/evt/temp/fmt/json",
            rumqttc::QoS::AtLeastOnce,
            false,
            "21",
        )
        .await
        .expect("publish");
    // The page refreshes states every 5 s.
    page.wait_text("tr[data-state='failed']", "refused the connection")
        .await;
    page.shot("outgoing").await;
    page.click("button[aria-label='Delete webhook archive']")
        .await;
    page.wait_text("dialog", "Delete webhook “archive”?").await;
    page.click("#confirm-ok").await;
    page.wait_text("#toast", "Deleted webhook archive").await;
    let (_, hooks) = api
        .call(reqwest::Method::GET, "/orgs/acme/webhooks", None)
        .await;
    assert_eq!(hooks, json!([]));

    // The CSR wizard makes a client certificate too.
    page.click_link("CSR wizard").await;
    page.wait_for("#csr-purpose")
        .await
        .select_by_value("client")
        .await
        .expect("choose the purpose");
    page.fill("#csr-cn", "certmq acme bridge").await;
    page.click("#csr-create").await;
    page.wait_text(".wizard", "Upload the signed certificate")
        .await;
    let snippet = page.prop(".wizard details pre", "textContent").await;
    assert!(
        snippet.contains("extendedKeyUsage = clientAuth"),
        "{snippet}"
    );
    let csr_pem = page.prop("#csr-pem", "value").await;
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &partner.pem(),
        KeyPair::from_pem(&partner.key_pem()).expect("key"),
    )
    .expect("issuer");
    let signed = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem)
        .expect("CSR")
        .signed_by(&issuer)
        .expect("sign")
        .pem();
    page.send_file("#signed-file", &write(dir, "bridge.crt", &signed))
        .await;
    page.click("#signed-upload").await;
    page.wait_text("#csr-state", "This CSR became client certificate")
        .await;
    let (_, certs) = api
        .call(reqwest::Method::GET, "/orgs/acme/client-certs", None)
        .await;
    assert_eq!(certs.as_array().map(Vec::len), Some(2), "{certs}");
}

/// The Security policy page's per-type levels and device tokens, and the dry run page:
/// what an operator checks before changing a fleet's rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_tokens_and_dry_run_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let page = Page::new(&browser.client, &server);
    let api = server.api();
    api.post("/orgs", json!({ "id": "acme", "name": "Acme Corp" }))
        .await;
    let ca = TestCa::new("Acme Devices").expect("CA");
    api.upload_ca("acme", &ca.pem()).await;
    page.sign_in().await;

    // A per-type level, added and saved.
    page.goto("/console#/org/acme/security-policy").await;
    page.wait_text("h3", "Levels per device or gateway type")
        .await;
    page.fill("#sec-type-name", "legacy").await;
    page.wait_for("#sec-type-level")
        .await
        .select_by_value("tls_client_cert_or_token")
        .await
        .expect("choose a level");
    page.click("#sec-type-add").await;
    page.wait_text("tr[data-type='legacy']", "legacy").await;
    page.click("#sec-save").await;
    page.wait_text(".alert.ok", "Saved").await;
    let (_, policy) = api
        .call(reqwest::Method::GET, "/orgs/acme/security-policy", None)
        .await;
    assert_eq!(
        policy["device_types"],
        json!({"legacy": "tls_client_cert_or_token"}),
        "{policy}"
    );

    // The topic policy, as JSON: a wrong rule is named, a good one is saved.
    // Loaded (the textarea's value, not its text) before it is replaced.
    let deadline = Instant::now() + WAIT;
    while !page.prop("#topics-json", "value").await.contains("watson") {
        assert!(Instant::now() < deadline, "the topic policy never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page.fill(
        "#topics-json",
        r#"{"mode":"custom","rules":[{"who":"d:*:*","publish":["x/{app}"]}]}"#,
    )
    .await;
    page.click("#topics-save").await;
    page.wait_text("#topics-messages", "rules[0].publish[0]")
        .await;
    page.fill(
        "#topics-json",
        r#"{"mode":"custom","rules":[{"who":"d:*:*","publish":["devices/{type}/{id}/#"]}]}"#,
    )
    .await;
    page.click("#topics-save").await;
    page.wait_text("#topics-messages .alert.ok", "Saved").await;
    let (_, topics) = api
        .call(reqwest::Method::GET, "/orgs/acme/topic-policy", None)
        .await;
    assert_eq!(
        topics["rules"][0]["publish"],
        json!(["devices/{type}/{id}/#"])
    );
    // Back to watson for the dry run below, which checks Watson topics.
    let (s, _) = api
        .call(
            reqwest::Method::PUT,
            "/orgs/acme/topic-policy",
            Some(json!({"mode": "watson"})),
        )
        .await;
    assert_eq!(s, 200);

    // A device token: generated, shown once, listed, deleted.
    page.fill("#token-identity", "d:legacy:dev9").await;
    page.click("#token-set").await;
    let shown = page.wait_text("#token-shown", "").await;
    assert!(shown.len() >= 16, "{shown:?}");
    page.wait_text("tr[data-identity='d:legacy:dev9']", "d:legacy:dev9")
        .await;
    page.shot("policy-tokens").await;
    page.click("button[aria-label='Delete the token of d:legacy:dev9']")
        .await;
    page.click("#confirm-ok").await;
    page.wait_gone("tr[data-identity='d:legacy:dev9']").await;

    // The dry run: a device certificate, its client id and a topic it may not use.
    let cert = ca
        .issue_client("d:sensor:dev1", ClientCertOptions::default())
        .expect("device cert");
    page.click_link("Dry run").await;
    page.send_file("#dry-file", &write(dir, "dev1.pem", &cert.chain_pem))
        .await;
    page.fill("#dry-client-id", "d:acme:sensor:dev1").await;
    page.fill("#dry-topic", "iot-2/evt/temp/fmt/json").await;
    page.click("#dry-check").await;
    page.wait_text("#dry-verdict", "Allowed").await;
    page.wait_text(
        "#dry-result",
        "/tenants/acme/iot-2/type/sensor/id/dev1/evt/temp/fmt/json",
    )
    .await;
    page.fill("#dry-topic", "iot-2/type/other/id/x/evt/temp/fmt/json")
        .await;
    page.click("#dry-check").await;
    page.wait_text("#dry-verdict", "Refused").await;
    page.wait_text("#dry-result", "stage topic").await;
    page.shot("dry-run").await;
}
