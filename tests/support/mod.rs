//! Test support: start the real `certmq` binary on free ports, talk to its admin API
//! over HTTP, and connect MQTT clients over real mTLS.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use device_sim::certs::{ClientCert, ClientCertOptions, TestCa};
use device_sim::client::{self, BrokerTarget};
use device_sim::AdminClient;
use reqwest::Method;
use rumqttc::{AsyncClient, Event, EventLoop, Packet};
use serde_json::Value;

pub const DOMAIN: &str = "messaging.localhost";
pub const TOKEN: &str = "test-admin-token";

/// A running `certmq serve` child process with its own data directory.
pub struct Server {
    child: Child,
    pub mqtt: SocketAddr,
    pub admin: SocketAddr,
    /// The plain MQTT listener (orgs with level `tls_optional`).
    pub mqtt_plain: SocketAddr,
    /// MQTT over WebSockets (TLS, `/mqtt`).
    pub ws: SocketAddr,
    data_dir: PathBuf,
    /// The flags it was started with after the usual ones (kept for a restart).
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on free loopback ports in a fresh temp dir.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::spawn(&dir, "127.0.0.1:0");
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on free loopback ports over `dir`, which the caller keeps (and
    /// may inspect or reuse after the server is gone).
    pub fn start_in(dir: &Path) -> Server {
        Self::spawn(dir, "127.0.0.1:0")
    }

    /// Starts a server like [`Server::start`] with `extra` flags after the usual ones.
    pub fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::spawn_with(tmp.path(), "127.0.0.1:0", extra, &[]);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on free loopback ports over `dir` with `extra` flags and
    /// environment variables (e.g. `--store postgres://…`, `CERTMQ_MASTER_KEY`).
    pub fn start_in_with(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn_with(dir, "127.0.0.1:0", extra, env)
    }

    fn spawn(dir: &Path, mqtt: &str) -> Server {
        Self::spawn_with(dir, mqtt, &[], &[])
    }

    fn spawn_with(dir: &Path, mqtt: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_certmq"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--mqtt", mqtt, "--admin", "127.0.0.1:0", "--domain", DOMAIN])
            .args(["--mqtt-plain", "127.0.0.1:0", "--ws", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied())
            .env("CERTMQ_ADMIN_TOKEN", TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("CERTMQ_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn certmq");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            let line = lines
                .next()
                .expect("certmq exited before it was ready")
                .expect("read stdout");
            if line.starts_with("certmq ready ") {
                break line;
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |name: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
        };
        Server {
            mqtt: field("mqtt"),
            admin: field("admin"),
            mqtt_plain: field("mqtt_plain"),
            ws: field("ws"),
            child,
            data_dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: None,
        }
    }

    /// Stops the process (SIGKILL: nothing is flushed on the way out) and starts a new
    /// one on the same data dir and MQTT port, with the same extra flags.
    pub fn restart_hard(mut self) -> Server {
        self.kill_hard();
        let tmp = self._tmp.take();
        let mqtt = self.mqtt.to_string();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let mut s = Self::spawn_with(&self.data_dir, &mqtt, &extra, &[]);
        s._tmp = tmp;
        s
    }

    /// Kills the process (SIGKILL, by its PID) and waits for it; the data dir stays.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit; its exit
    /// status and how long it took. The data dir stays for a restart.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for certmq") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "certmq still running 30 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's process id (for RSS readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A client of this server's admin API, with the admin token.
    pub fn api(&self) -> Api {
        Api(AdminClient::new(&format!("http://{}", self.admin), TOKEN))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin API over real HTTP: device-sim's [`AdminClient`], with answers a test can
/// assert on directly — the status as a number, and a panic naming the request when the
/// server does not answer (or, for [`Api::post`], answers outside 2xx).
pub struct Api(pub AdminClient);

impl Api {
    /// Any call; `(status, body)` whatever the status.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, v) = self
            .0
            .call(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        (status.as_u16(), v)
    }

    /// A POST that must succeed; its JSON answer.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.0
            .post(path, body)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Uploads a CA certificate, which must succeed; the CA's view.
    pub async fn upload_ca(&self, org: &str, pem: &str) -> Value {
        self.0
            .upload_ca(org, pem, None)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
            .view
    }

    /// A POST of a raw body (PEM) with an optional content type; `(status, body)`.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: String,
    ) -> (u16, Value) {
        let (status, v) = self
            .0
            .call_raw(Method::POST, path, content_type, body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:#}"));
        (status.as_u16(), v)
    }

    /// A GET returning the raw body (PEM downloads): `(status, content type, body)`.
    pub async fn get_text(&self, path: &str) -> (u16, String, String) {
        let (status, ct, text) = self
            .0
            .get_text(path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        (status.as_u16(), ct, text)
    }

    /// `components.schemas.<name>` of the served OpenAPI document: for answers the API
    /// passes through from the broker, whose types the document can only copy.
    pub async fn documented_schema(&self, name: &str) -> Value {
        let (s, doc) = self.call(Method::GET, "/openapi.json", None).await;
        assert_eq!(s, 200, "{doc}");
        let schema = doc["components"]["schemas"][name].clone();
        assert!(schema.is_object(), "no schema {name}");
        schema
    }

    /// The property names of [`Api::documented_schema`].
    pub async fn documented_properties(&self, name: &str) -> Vec<String> {
        let schema = self.documented_schema(name).await;
        let mut names: Vec<String> = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no properties"))
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// The keys of a JSON object, sorted.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// One org set up through the API: a CA uploaded, an active self-signed server cert.
pub struct Org {
    pub id: String,
    pub ca: TestCa,
    pub ca_id: String,
    pub server_pem: String,
    pub mqtt: SocketAddr,
}

impl Org {
    pub async fn create(server: &Server, id: &str) -> Org {
        let api = server.api().0;
        let setup = async {
            api.create_org(id, id).await?;
            let ca = TestCa::new(&format!("{id} root CA"))?;
            let ca_id = api.upload_ca(id, &ca.pem(), None).await?.id;
            let srv = api.self_signed_server_cert(id).await?;
            anyhow::Ok((ca, ca_id, srv.pem))
        };
        let (ca, ca_id, server_pem) = setup
            .await
            .unwrap_or_else(|e| panic!("set up org {id}: {e:#}"));
        Org {
            id: id.to_owned(),
            ca,
            ca_id,
            server_pem,
            mqtt: server.mqtt,
        }
    }

    pub fn target(&self) -> BrokerTarget {
        BrokerTarget {
            host: "127.0.0.1".into(),
            port: self.mqtt.port(),
            sni: format!("{}.{DOMAIN}", self.id),
            server_ca_pem: self.server_pem.clone(),
        }
    }

    pub fn cert(&self, identity: &str) -> ClientCert {
        self.ca
            .issue_client(identity, ClientCertOptions::default())
            .expect("client cert")
    }

    /// Connects `client_id` with a certificate for `identity` and waits for the CONNACK.
    pub async fn connect(&self, identity: &str, client_id: &str) -> Client {
        let cert = self.cert(identity);
        connect_with(&self.target(), client_id, &cert)
            .await
            .unwrap_or_else(|e| panic!("{client_id} could not connect: {e}"))
    }
}

/// An MQTT client whose event loop runs in the background, forwarding what it receives.
pub struct Client {
    pub client: AsyncClient,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Packet>,
    /// Set when the event loop stops (connection closed by the broker or an error).
    pub closed: tokio::sync::watch::Receiver<Option<String>>,
}

/// Connects over mTLS; `Err` carries the connection error text (TLS alert, refused
/// CONNACK) when the broker refuses.
pub async fn connect_with(
    target: &BrokerTarget,
    client_id: &str,
    cert: &ClientCert,
) -> Result<Client, String> {
    let opts = client::mqtt_options(target, client_id, Some(cert)).map_err(|e| e.to_string())?;
    let (client, eventloop) = client::async_client(opts, 100);
    start_loop(client, eventloop).await
}

pub async fn start_loop(client: AsyncClient, mut eventloop: EventLoop) -> Result<Client, String> {
    // Wait for the CONNACK (or the error) before handing the client out.
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("connack {:?}", ack.code))
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("{e:?}")),
            }
        }
    })
    .await
    .map_err(|_| "timed out waiting for CONNACK".to_string())?;
    first?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(p)) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = closed_tx.send(Some(format!("{e:?}")));
                    return;
                }
            }
        }
    });
    Ok(Client { client, rx, closed })
}

impl Client {
    /// The next PUBLISH received within `wait`, as (topic, payload).
    pub async fn next_publish(&mut self, wait: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Packet::Publish(p))) => return Some((p.topic, p.payload.to_vec())),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// The next SUBACK's return codes.
    pub async fn next_suback(&mut self) -> Vec<rumqttc::SubscribeReasonCode> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
                Ok(Some(Packet::SubAck(a))) => return a.return_codes,
                Ok(Some(_)) => continue,
                _ => panic!("no SUBACK"),
            }
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        self.next_suback().await
    }

    /// Waits until the broker closes the connection; the error text.
    pub async fn wait_closed(&mut self, wait: Duration) -> Option<String> {
        let r = tokio::time::timeout(wait, self.closed.wait_for(|c| c.is_some())).await;
        match r {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        }
    }
}

/// A raw TLS handshake with explicit SNI and optional client cert. Returns the error
/// text if the server refused (an alert during the handshake or on the first read).
pub async fn raw_handshake(
    mqtt: SocketAddr,
    sni: &str,
    server_pem: &str,
    cert: Option<&ClientCert>,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = BrokerTarget {
        host: "127.0.0.1".into(),
        port: mqtt.port(),
        sni: sni.into(),
        server_ca_pem: server_pem.into(),
    };
    let config: Arc<rustls::ClientConfig> =
        client::tls_config(&target, cert).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(mqtt)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server judges the client certificate after the client's Finished, so
    // a refusal arrives as an alert on the first read. Send a CONNECT to provoke a reply.
    let connect = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ];
    tls.write_all(&connect).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

pub fn expired_options() -> ClientCertOptions {
    let now = time::OffsetDateTime::now_utc();
    ClientCertOptions {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
        ..ClientCertOptions::default()
    }
}

/// Runs the `openssl` command in `dir` and returns its stdout; panics with openssl's
/// stderr when it fails (tests that sign with a "public" CA use the real tool).
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
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

/// `openssl req` arguments for a new, unencrypted ECDSA P-256 key.
const NEW_P256_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A CA made with the openssl command line — `ca.pem` and `ca.key` in its directory — as
/// an operator's own PKI or a public CA would be, signing server certificates.
pub struct OpensslCa {
    dir: PathBuf,
    /// The CA certificate, PEM (what devices trust to verify the broker).
    pub pem: String,
}

impl OpensslCa {
    /// Makes a P-256 root CA in `dir`.
    pub fn new(dir: &Path, common_name: &str) -> OpensslCa {
        let subject = format!("/CN={common_name}");
        let ca = [
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            &subject,
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        openssl(dir, &[&["req", "-x509"][..], &NEW_P256_KEY, &ca].concat());
        OpensslCa {
            dir: dir.to_path_buf(),
            pem: std::fs::read_to_string(dir.join("ca.pem")).expect("CA PEM"),
        }
    }

    /// The CA's private key file.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// Signs `<name>.csr` (in the CA's directory) as a TLS server certificate for `host`
    /// (SAN, serverAuth, CA:FALSE); returns the certificate file, `<name>.crt`.
    pub fn sign_server(&self, name: &str, host: &str) -> PathBuf {
        let (csr, crt, ext) = (
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n\
                 basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            ),
        )
        .expect("write extensions");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
        self.dir.join(crt)
    }

    /// A new key (`<name>.key`) and a server certificate for `host` (`<name>.crt`).
    pub fn issue_server(&self, name: &str, host: &str) -> (PathBuf, PathBuf) {
        let (key, csr, subject) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("/CN={host}"),
        );
        let request = ["-keyout", &key, "-out", &csr, "-subj", &subject];
        openssl(
            &self.dir,
            &[&["req", "-new"][..], &NEW_P256_KEY, &request].concat(),
        );
        (self.sign_server(name, host), self.dir.join(key))
    }
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits (10 s at most) until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the first series `name{…}` whose labels include every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Asserts that the broker leaves `client`'s session open (300 ms).
pub async fn still_open(client: &mut Client) {
    assert!(
        client
            .wait_closed(Duration::from_millis(300))
            .await
            .is_none(),
        "an unaffected session was closed"
    );
}

/// Whether CI demands every external tool (`CERTMQ_REQUIRE_INTEROP=1`, set by
/// `.ci/run`): a test that would skip for lack of one fails instead.
pub fn interop_required() -> bool {
    std::env::var("CERTMQ_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// Whether `program` runs (started with `probe`); when it does not, panics if
/// [`interop_required`], else says the test is skipped and returns false.
pub fn have_program(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            !interop_required(),
            "CERTMQ_REQUIRE_INTEROP=1 but {program} is missing"
        );
        eprintln!("skipping: {program} not found");
    }
    ok
}

/// A visit with a persistent session (clean session 0, unless `clean`): subscribes to
/// `subscribe` (QoS 1) if given, takes the PUBLISHes that arrive until every payload of
/// `want` has (at most 10 s of silence), disconnects. Whether the CONNACK said session
/// present, and the payloads received, in order.
pub async fn visit(
    target: &BrokerTarget,
    client_id: &str,
    cert: &ClientCert,
    clean: bool,
    subscribe: Option<&str>,
    want: &[String],
) -> (bool, Vec<String>) {
    use rumqttc::{Event, Packet};
    let mut opts = client::mqtt_options(target, client_id, Some(cert)).unwrap();
    opts.set_clean_session(clean);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    let mut present = None;
    let mut got = Vec::new();
    let done = |got: &Vec<String>| want.iter().all(|w| got.contains(w));
    let mut leaving = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) => {
                present = Some(a.session_present);
                if let Some(f) = subscribe {
                    client
                        .subscribe(f, rumqttc::QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) if done(&got) && !leaving => {
                leaving = true;
                client.disconnect().await.unwrap();
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => panic!("{client_id}: no answer; got {got:?}, want {want:?}"),
        }
        if present.is_some() && subscribe.is_none() && done(&got) && !leaving {
            leaving = true;
            client.disconnect().await.unwrap();
        }
    }
    (present.expect("CONNACK"), got)
}

/// Commands `first..first+n` (payloads `cmd-<i>`) to Watson device `sensor`/`id`,
/// QoS 1, published by application `app`; their payloads.
pub async fn commands(app: &Client, id: &str, first: usize, n: usize) -> Vec<String> {
    let mut sent = Vec::new();
    for i in first..first + n {
        let body = format!("cmd-{i}");
        app.client
            .publish(
                format!("iot-2/type/sensor/id/{id}/cmd/go/fmt/txt"),
                rumqttc::QoS::AtLeastOnce,
                false,
                body.clone(),
            )
            .await
            .unwrap();
        sent.push(body);
    }
    sent
}
