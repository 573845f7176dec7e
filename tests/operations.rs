//! Operating certmq (docs/operations.md), with the real binary: the config file and its
//! precedence, graceful drain on SIGTERM, admin token and master key rotation, backup
//! and restore.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use rumqttc::QoS;
use support::*;

const RETAINED_TOPIC: &str = "iot-2/evt/state/fmt/txt";
/// [`RETAINED_TOPIC`] published by `d:sensor:s1`, as the org's retained list names it.
const RETAINED_LISTED: &str = "iot-2/type/sensor/id/s1/evt/state/fmt/txt";

/// `certmq serve` with `args` and `env` (and no `CERTMQ_*` variable from this process
/// besides those); the child and its ready line, or its standard error when it exited
/// before it was ready.
fn spawn_serve(args: &[&str], env: &[(&str, &str)]) -> Result<(Child, String), String> {
    spawn_serve_logging(args, env, None)
}

/// [`spawn_serve`], with the log at info written to `log` when given.
fn spawn_serve_logging(
    args: &[&str],
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> Result<(Child, String), String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certmq"));
    cmd.arg("serve").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CERTMQ_") {
            cmd.env_remove(k);
        }
    }
    let (level, stderr) = match log {
        Some(path) => (
            "info",
            Stdio::from(std::fs::File::create(path).expect("log file")),
        ),
        None => ("warn", Stdio::piped()),
    };
    let mut child = cmd
        .envs(env.iter().copied())
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn certmq");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if line.starts_with("certmq ready ") {
            std::thread::spawn(move || for _ in lines {});
            if let Some(stderr) = child.stderr.take() {
                std::thread::spawn(move || std::io::copy(&mut { stderr }, &mut std::io::sink()));
            }
            return Ok((child, line));
        }
    }
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Err(err)
}

/// The value of `name=` in certmq's ready line.
fn field<'a>(ready: &'a str, name: &str) -> &'a str {
    ready
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a `certmq` command to its end; (success, stdout + stderr).
fn certmq(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(args)
        .env_remove("CERTMQ_MASTER_KEY")
        .env_remove("CERTMQ_NEW_MASTER_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run certmq");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_config_file_sets_the_listeners_and_a_flag_or_variable_overrides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = tmp.path().join("certmq.toml");
    std::fs::write(
        &file,
        format!(
            "# certmq serve --config\n\
             data_dir = {:?}\n\
             mqtt = \"127.0.0.1:{port}\"\n\
             admin = \"127.0.0.1:0\"\n\
             domain = \"file.example\"\n\
             handshake_timeout = \"5s\"\n\
             max_packet_size = 65536\n\
             drain_timeout = 2\n",
            tmp.path().join("data")
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let token = [("CERTMQ_ADMIN_TOKEN", TOKEN)];

    let (child, ready) = spawn_serve(&["--config", config], &token).expect("start");
    assert_eq!(field(&ready, "mqtt"), format!("127.0.0.1:{port}"));
    assert_eq!(field(&ready, "domain"), "file.example");
    assert!(
        tmp.path().join("data/store").exists(),
        "data_dir from the file"
    );
    stop(child);

    // The variable beats the file; the flag beats both.
    let env = [
        ("CERTMQ_ADMIN_TOKEN", TOKEN),
        ("CERTMQ_DOMAIN", "env.example"),
    ];
    let (child, ready) = spawn_serve(&["--config", config], &env).expect("start");
    assert_eq!(field(&ready, "domain"), "env.example");
    stop(child);
    let (child, ready) =
        spawn_serve(&["--config", config, "--domain", "flag.example"], &env).expect("start");
    assert_eq!(field(&ready, "domain"), "flag.example");
    stop(child);
}

#[test]
fn a_bad_config_file_is_refused_naming_the_key_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("certmq.toml");
    std::fs::write(&file, "mqtt = \"127.0.0.1:0\"\nmqt_plain = \"off\"\n").unwrap();
    let err = spawn_serve(&["--config", file.to_str().unwrap()], &[]).expect_err("refused");
    assert!(
        err.contains("line 2") && err.contains("unknown field `mqt_plain`"),
        "{err}"
    );
    std::fs::write(&file, "connect_timeout = \"ten seconds\"\n").unwrap();
    let err = spawn_serve(&["--config", file.to_str().unwrap()], &[]).expect_err("refused");
    assert!(
        err.contains("line 1") && err.contains("invalid duration"),
        "{err}"
    );
    let missing = tmp.path().join("missing.toml");
    let err = spawn_serve(&["--config", missing.to_str().unwrap()], &[]).expect_err("refused");
    assert!(err.contains("reading the config file"), "{err}");
}

/// Publishes `payload` retained at QoS 1 as `client` and waits for the PUBACK.
async fn publish_acked(client: &mut Client, payload: &str) {
    client
        .client
        .publish(RETAINED_TOPIC, QoS::AtLeastOnce, true, payload.as_bytes())
        .await
        .expect("publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, client.rx.recv()).await {
            Ok(Some(rumqttc::Packet::PubAck(_))) => return,
            Ok(Some(_)) => {}
            _ => panic!("no PUBACK"),
        }
    }
}

/// Sends SIGTERM to `server` and waits for it to exit; asserts it exited 0 within the
/// default drain timeout (10 s), and returns how long it took.
async fn terminate(server: Server) -> Duration {
    let (status, took) = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    took
}

/// The retained topics of `org` through the API.
async fn retained_topics(server: &Server, org: &str) -> Vec<String> {
    let (status, list) = server
        .api()
        .call(Method::GET, &format!("/orgs/{org}/retained"), None)
        .await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["topic"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn sigterm_drains_sessions_and_exits_0_with_acknowledged_messages_kept() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(tmp.path());
    let acme = Org::create(&server, "acme").await;
    let mut dev = acme.connect("d:sensor:s1", "d:acme:sensor:s1").await;
    publish_acked(&mut dev, "acknowledged before SIGTERM").await;

    let cert = acme.cert("d:sensor:v5");
    let opts = device_sim::client::mqtt_options_v5(&acme.target(), "d:acme:sensor:v5", Some(&cert))
        .unwrap();
    let (_v5, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    let first = tokio::time::timeout(Duration::from_secs(10), el.poll()).await;
    assert!(
        matches!(first, Ok(Ok(rumqttc::v5::Event::Incoming(P5::ConnAck(_))))),
        "{first:?}"
    );
    let v5_closed = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), el.poll()).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return format!("{e:?}"),
                Err(_) => return "no DISCONNECT".to_owned(),
            }
        }
    });

    // The default drain timeout is 10 s; an idle broker drains in far less.
    terminate(server).await;
    let closed = v5_closed.await.unwrap();
    assert!(
        closed.contains("ServerDisconnect")
            && closed.contains(&format!("{:?}", DisconnectReasonCode::ServerShuttingDown)),
        "{closed}"
    );
    assert!(
        dev.wait_closed(Duration::from_secs(5)).await.is_some(),
        "the 3.1.1 client was disconnected"
    );

    let server = Server::start_in(tmp.path());
    assert_eq!(retained_topics(&server, "acme").await, [RETAINED_LISTED]);
}

#[tokio::test]
async fn the_admin_token_rotates_through_the_api_and_the_old_one_stops_working() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_owned();
    let args = [
        "--data-dir",
        dir.as_str(),
        "--mqtt",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    // No CERTMQ_ADMIN_TOKEN: the token is generated into the token file.
    let (child, ready) = spawn_serve(&args, &[]).expect("start");
    let url = format!("http://{}", field(&ready, "admin"));
    let file = tmp.path().join("admin-token");
    let old = std::fs::read_to_string(&file).unwrap();
    let api = device_sim::AdminClient::new(&url, old.trim());
    let (status, body) = api
        .call(Method::POST, "/admin-token/rotate", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{body}");
    let new = body["token"].as_str().expect("token").to_owned();
    assert_ne!(new, old.trim());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), new, "file updated");

    let (status, _) = api.call(Method::GET, "/orgs", None).await.unwrap();
    assert_eq!(status.as_u16(), 401, "the old token is refused at once");
    let api = device_sim::AdminClient::new(&url, &new);
    let (status, _) = api.call(Method::GET, "/orgs", None).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    let (_, audit) = api.call(Method::GET, "/audit", None).await.unwrap();
    assert!(
        audit
            .to_string()
            .contains("rotated the platform admin token"),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains(&new),
        "the audit log never holds a token"
    );
    stop(child);

    // After a restart the new token still works.
    let (child, ready) = spawn_serve(&args, &[]).expect("restart");
    let url = format!("http://{}", field(&ready, "admin"));
    let api = device_sim::AdminClient::new(&url, &new);
    let (status, _) = api.call(Method::GET, "/orgs", None).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    stop(child);

    // A token from CERTMQ_ADMIN_TOKEN cannot be rotated by certmq.
    let server = Server::start();
    let (status, body) = server
        .api()
        .call(Method::POST, "/admin-token/rotate", None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("CERTMQ_ADMIN_TOKEN"), "{body}");
}

/// Starts certmq on `dir` with `CERTMQ_MASTER_KEY` set to `key`; its standard error
/// when it refuses to start.
fn start_with_master_key(dir: &Path, key: &str) -> Result<(Child, String), String> {
    let dir = dir.to_str().unwrap();
    spawn_serve(
        &[
            "--data-dir",
            dir,
            "--mqtt",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[("CERTMQ_ADMIN_TOKEN", TOKEN), ("CERTMQ_MASTER_KEY", key)],
    )
}

#[tokio::test]
async fn rotating_the_master_key_reseals_every_key_and_the_old_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start_in(dir);
    let acme = Org::create(&server, "acme").await;
    let old = std::fs::read_to_string(dir.join("master.key")).unwrap();
    let data_dir = dir.to_str().unwrap();

    // Refused while the broker runs: it holds the store.
    let (ok, out) = certmq(&["rotate-master-key", "--data-dir", data_dir], &[]);
    assert!(
        !ok && out.contains("another certmq is using the data dir"),
        "{out}"
    );
    terminate(server).await;

    // A malformed new key changes nothing.
    let keys = tempfile::tempdir().unwrap();
    let bad = keys.path().join("bad.key");
    std::fs::write(&bad, "not hex").unwrap();
    let (ok, out) = certmq(
        &[
            "rotate-master-key",
            "--data-dir",
            data_dir,
            "--new-key-file",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok && out.contains("expected 64 hex characters"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("master.key")).unwrap(),
        old
    );

    let new = "ab".repeat(32);
    let new_file = keys.path().join("new.key");
    std::fs::write(&new_file, &new).unwrap();
    let (ok, out) = certmq(
        &[
            "rotate-master-key",
            "--data-dir",
            data_dir,
            "--new-key-file",
            new_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{out}");
    assert!(out.contains("re-sealed"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("master.key")).unwrap(),
        new
    );
    assert!(!dir.join("master.key.new").exists());

    // The old key no longer opens the data dir, and start-up says which key failed.
    let err = start_with_master_key(dir, old.trim()).expect_err("old key refused");
    assert!(
        err.contains("the master key from CERTMQ_MASTER_KEY does not open"),
        "{err}"
    );

    // With the new key the org's server certificate is presented as before.
    let server = Server::start_in(dir);
    let sni = format!("acme.{DOMAIN}");
    let device = acme.cert("d:sensor:s1");
    raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&device))
        .await
        .expect("handshake with the org's server certificate");
}

#[tokio::test]
async fn backup_wipe_restore_brings_back_orgs_cas_server_certs_and_retained_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let server = Server::start_in(&dir);
    let acme = Org::create(&server, "acme").await;
    let mut dev = acme.connect("d:sensor:s1", "d:acme:sensor:s1").await;
    publish_acked(&mut dev, "kept").await;
    let data_dir = dir.to_str().unwrap();
    let out = tmp.path().join("backup");
    let out_dir = out.to_str().unwrap();

    let (ok, text) = certmq(&["backup", "--data-dir", data_dir, "--out", out_dir], &[]);
    assert!(
        !ok && text.contains("another certmq is using the data dir"),
        "{text}"
    );
    terminate(server).await;

    let (ok, text) = certmq(&["backup", "--data-dir", data_dir, "--out", out_dir], &[]);
    assert!(ok, "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
    let (ok, text) = certmq(&["restore", "--from", out_dir, "--data-dir", data_dir], &[]);
    assert!(ok, "{text}");
    // A second restore over live data is refused.
    let (ok, text) = certmq(&["restore", "--from", out_dir, "--data-dir", data_dir], &[]);
    assert!(!ok && text.contains("already holds a store"), "{text}");

    let server = Server::start_in(&dir);
    let api = server.api();
    let (status, cas) = api.call(Method::GET, "/orgs/acme/ca-certs", None).await;
    assert_eq!(status, 200);
    assert_eq!(cas[0]["id"], acme.ca_id.as_str());
    assert_eq!(retained_topics(&server, "acme").await, [RETAINED_LISTED]);
    let sni = format!("acme.{DOMAIN}");
    let started = Instant::now();
    raw_handshake(
        server.mqtt,
        &sni,
        &acme.server_pem,
        Some(&acme.cert("d:sensor:s1")),
    )
    .await
    .expect("the restored server certificate is presented and the CA admits");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn json_logs_show_the_effective_config_and_unknown_server_names_once_per_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("certmq.log");
    let dir = tmp.path().join("data");
    let file = tmp.path().join("certmq.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {dir:?}\nmqtt = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nlog_format = \"json\"\n"
        ),
    )
    .unwrap();
    let (child, ready) = spawn_serve_logging(
        &["--config", file.to_str().unwrap()],
        &[("CERTMQ_ADMIN_TOKEN", TOKEN)],
        Some(&log),
    )
    .expect("start");
    let mqtt: std::net::SocketAddr = field(&ready, "mqtt").parse().unwrap();
    let trust = device_sim::certs::TestCa::new("any").unwrap().pem();
    for i in 0..20 {
        let r = raw_handshake(mqtt, &format!("nobody{i}.example"), &trust, None).await;
        let e = r.expect_err("an unknown name was served");
        assert!(
            e.contains("UnrecognisedName") || e.contains("nrecogni"),
            "{e}"
        );
    }
    stop(child);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    let effective: Vec<_> = lines
        .iter()
        .filter(|v| message(v).starts_with("effective configuration"))
        .collect();
    assert_eq!(effective.len(), 1, "{text}");
    assert_eq!(effective[0]["fields"]["log_format"], "json");
    assert!(!text.contains(TOKEN), "the admin token reached the log");
    let unknown = lines
        .iter()
        .filter(|v| message(v).contains("unrecognized_name"))
        .count();
    assert_eq!(unknown, 1, "20 unknown names, one line: {text}");
}

#[tokio::test]
async fn every_metric_has_help_text() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let mut dev = acme.connect("d:sensor:s1", "d:acme:sensor:s1").await;
    publish_acked(&mut dev, "counted").await;
    let trust = device_sim::certs::TestCa::new("any").unwrap().pem();
    let _ = raw_handshake(server.mqtt, "nobody.example", &trust, None).await;
    let text = server.api().0.metrics().await.unwrap();
    let with = |prefix: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    };
    let typed = with("# TYPE ");
    let helped = with("# HELP ");
    assert!(typed.len() >= 8, "{text}");
    let missing: Vec<_> = typed.difference(&helped).collect();
    assert!(
        missing.is_empty(),
        "metrics without HELP: {missing:?}\n{text}"
    );
    // Every sample belongs to a family with a TYPE.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        assert!(
            typed
                .iter()
                .any(|t| name == t || name.starts_with(&format!("{t}_"))),
            "no TYPE for {name}"
        );
    }
}

#[tokio::test]
async fn server_certs_list_active_first_then_newest() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let path = "/orgs/acme/server-certs";
    let second = api
        .post(&format!("{path}/self-signed"), serde_json::json!({}))
        .await;
    let third = api
        .post(&format!("{path}/self-signed"), serde_json::json!({}))
        .await;
    let second = second["id"].as_str().unwrap().to_owned();
    let third = third["id"].as_str().unwrap().to_owned();
    api.post(&format!("{path}/{second}/activate"), serde_json::json!({}))
        .await;
    let (_, list) = api.call(Method::GET, path, None).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(list[0]["active"], true);
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], second, "the active one first");
    assert_eq!(ids[1], third, "then the newest");
    assert_eq!(list[2]["pem"], acme.server_pem.as_str(), "the oldest last");
}

/// Operator finding: the dry run answered `Other(OtherError(UnsupportedCertVersion))`
/// for an X.509 v1 device certificate.
#[tokio::test]
async fn the_dry_run_explains_a_v1_certificate_in_words() {
    let server = Server::start();
    Org::create(&server, "acme").await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = OpensslCa::new(tmp.path(), "Acme v1 test CA");
    server.api().upload_ca("acme", &ca.pem).await;
    let dir = tmp.path();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "dev.key",
            "-subj",
            "/CN=d:sensor:dev1",
            "-out",
            "dev.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "dev.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            "dev.pem",
        ],
    );
    let pem = std::fs::read_to_string(dir.join("dev.pem")).unwrap();
    let (status, d) = server
        .api()
        .call(
            Method::POST,
            "/orgs/acme/authz/check",
            Some(serde_json::json!({"certificate": pem})),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["allowed"], false);
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("not X.509 v3"), "{reason}");
    assert!(!reason.contains("Other("), "{reason}");
}

/// Operator finding: every line of a connection said `org="acme" org="acme"`.
#[tokio::test]
async fn a_connection_names_its_org_once_per_log_line() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("certmq.log");
    let dir = tmp.path().join("data");
    let (child, ready) = spawn_serve_logging(
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "--mqtt",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[("CERTMQ_ADMIN_TOKEN", TOKEN)],
        Some(&log),
    )
    .expect("start");
    let api = device_sim::AdminClient::new(&format!("http://{}", field(&ready, "admin")), TOKEN);
    api.create_org("acme", "Acme").await.unwrap();
    let ca = device_sim::certs::TestCa::new("acme CA").unwrap();
    api.upload_ca("acme", &ca.pem(), None).await.unwrap();
    let server = api.self_signed_server_cert("acme").await.unwrap();
    let target = device_sim::client::BrokerTarget {
        host: "127.0.0.1".into(),
        port: field(&ready, "mqtt")
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        sni: format!("acme.{DOMAIN}"),
        server_ca_pem: server.pem,
    };
    let cert = ca
        .issue_client(
            "d:sensor:s1",
            device_sim::certs::ClientCertOptions::default(),
        )
        .unwrap();
    let dev = connect_with(&target, "d:acme:sensor:s1", &cert)
        .await
        .unwrap();
    dev.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(child);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("connected"), "{text}");
    assert!(
        text.lines().all(|l| l.matches("org=\"acme\"").count() <= 1),
        "{text}"
    );
}

/// A rotation interrupted between the store's batch and the key file's rename (the
/// store sealed under `master.key.new`, `master.key` still the old key) is finished by
/// running the command again.
#[tokio::test]
async fn an_interrupted_master_key_rotation_is_finished_by_running_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start_in(dir);
    let acme = Org::create(&server, "acme").await;
    terminate(server).await;
    let data_dir = dir.to_str().unwrap();
    let old = std::fs::read_to_string(dir.join("master.key")).unwrap();

    // Re-seal under a new key, then put the files back as a crash before the rename
    // would have left them.
    let (ok, out) = certmq(
        &["rotate-master-key", "--data-dir", data_dir],
        &[("CERTMQ_NEW_MASTER_KEY", &"cd".repeat(32))],
    );
    assert!(ok, "{out}");
    std::fs::rename(dir.join("master.key"), dir.join("master.key.new")).unwrap();
    std::fs::write(dir.join("master.key"), &old).unwrap();

    let (ok, out) = certmq(&["rotate-master-key", "--data-dir", data_dir], &[]);
    assert!(
        ok && out.contains("finished an interrupted rotation"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("master.key")).unwrap(),
        "cd".repeat(32)
    );
    let server = Server::start_in(dir);
    raw_handshake(
        server.mqtt,
        &format!("acme.{DOMAIN}"),
        &acme.server_pem,
        Some(&acme.cert("d:sensor:s1")),
    )
    .await
    .expect("the org's server certificate after the finished rotation");
}

/// Operator finding: a second broker on the same data dir failed with sled's raw
/// `WouldBlock`.
#[test]
fn a_second_broker_on_the_same_data_dir_is_told_why_it_cannot_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let args = [
        "--data-dir",
        dir,
        "--mqtt",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    let token = [("CERTMQ_ADMIN_TOKEN", TOKEN)];
    let (first, _) = spawn_serve(&args, &token).expect("first broker");
    let err = spawn_serve(&args, &token).expect_err("second broker refused");
    assert!(
        err.contains("another certmq is using the data dir") && !err.contains("WouldBlock"),
        "{err}"
    );
    stop(first);
}

/// Connects `client_id` as a persistent (clean session 0) 3.1.1 client.
async fn connect_persistent(org: &Org, identity: &str, client_id: &str) -> Client {
    let cert = org.cert(identity);
    let mut opts =
        device_sim::client::mqtt_options(&org.target(), client_id, Some(&cert)).expect("options");
    opts.set_clean_session(false);
    let (client, eventloop) = device_sim::client::async_client(opts, 200);
    start_loop(client, eventloop)
        .await
        .unwrap_or_else(|e| panic!("{client_id}: {e}"))
}

/// SIGTERM while a device publishes QoS 1 as fast as it can: every message it got a
/// PUBACK for reaches the offline application's persistent session after the restart
/// (the drain writes owed acknowledgements only for messages already on disk).
#[tokio::test]
async fn sigterm_under_load_loses_no_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(tmp.path());
    let acme = Org::create(&server, "acme").await;
    let mut app = connect_persistent(&acme, "a:dash", "a:acme:dash").await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    app.client.disconnect().await.unwrap();
    app.wait_closed(Duration::from_secs(5)).await;

    let mut dev = acme.connect("d:sensor:s1", "d:acme:sensor:s1").await;
    let publisher = dev.client.clone();
    tokio::spawn(async move {
        for i in 0u32.. {
            let payload = i.to_string();
            if publisher
                .publish("iot-2/evt/n/fmt/txt", QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // PUBACKs arrive in publish order: `acked` acknowledged means 0..acked are.
    let mut acked = 0u32;
    while acked < 200 {
        match tokio::time::timeout(Duration::from_secs(10), dev.rx.recv()).await {
            Ok(Some(rumqttc::Packet::PubAck(_))) => acked += 1,
            Ok(Some(_)) => {}
            _ => panic!("no PUBACK after {acked}"),
        }
    }
    let term = tokio::spawn(terminate(server));
    loop {
        match tokio::time::timeout(Duration::from_secs(15), dev.rx.recv()).await {
            Ok(Some(rumqttc::Packet::PubAck(_))) => acked += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    term.await.unwrap();

    let server = Server::start_in(tmp.path());
    let org = Org {
        mqtt: server.mqtt,
        ..acme
    };
    let mut app = connect_persistent(&org, "a:dash", "a:acme:dash").await;
    let mut got = std::collections::BTreeSet::new();
    while let Some((_, payload)) = app.next_publish(Duration::from_secs(3)).await {
        if let Ok(n) = String::from_utf8_lossy(&payload).parse::<u32>() {
            got.insert(n);
        }
    }
    let lost: Vec<u32> = (0..acked).filter(|n| !got.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged messages lost: {lost:?}",
        lost.len()
    );
    eprintln!(
        "acknowledged {acked}, delivered after the restart {}",
        got.len()
    );
}
