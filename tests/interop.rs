//! Interop with other MQTT stacks: the real `mosquitto_pub` / `mosquitto_sub` (OpenSSL,
//! libmosquitto) and Eclipse Paho for Python, connecting by host name so the SNI is
//! `<org>.messaging.localhost` (resolved by nss-myhostname, see README).
//!
//! When the tools are missing the tests skip, unless `CERTMQ_REQUIRE_INTEROP=1` (set by
//! `.ci/run` after installing them), where a missing tool is a failure.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::*;

/// Whether interop can run here; panics when it must but cannot.
fn available(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    let resolves = std::net::ToSocketAddrs::to_socket_addrs(&(format!("acme.{DOMAIN}"), 1))
        .is_ok_and(|mut a| a.any(|a| a.ip().is_loopback()));
    if ok && resolves {
        return true;
    }
    let why = if ok {
        format!("acme.{DOMAIN} does not resolve to loopback (install libnss-myhostname)")
    } else {
        format!("{tool} not found")
    };
    assert!(!interop_required(), "CERTMQ_REQUIRE_INTEROP=1 but {why}");
    eprintln!("skipping interop test: {why}");
    false
}

/// Whether `program` runs `check` (loading a client library, `what`) and interop can
/// run here; panics when it must but cannot.
fn library(program: &str, check: &[&str], what: &str) -> bool {
    let loads = Command::new(program)
        .args(check)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !loads {
        assert!(
            !interop_required(),
            "CERTMQ_REQUIRE_INTEROP=1 but {what} is missing"
        );
        eprintln!("skipping interop test: {what} is missing");
        return false;
    }
    available(program, &["--version"])
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn write(&self, name: &str, contents: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_string_lossy().into_owned()
    }
}

fn tls_args(files: &Files, org: &Org, identity: &str, name: &str) -> Vec<String> {
    let cert = org.cert(identity);
    vec![
        "-h".into(),
        format!("{}.{DOMAIN}", org.id),
        "-p".into(),
        org.mqtt.port().to_string(),
        "--cafile".into(),
        files.write("server.pem", &org.server_pem),
        "--cert".into(),
        files.write(&format!("{name}.pem"), &cert.chain_pem),
        "--key".into(),
        files.write(&format!("{name}.key"), &cert.key_pem),
    ]
}

#[tokio::test]
async fn mosquitto_device_event_reaches_mosquitto_app() {
    if !available("mosquitto_pub", &["--help"]) {
        return;
    }
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let files = Files::new();

    for (version, payload) in [("mqttv311", "v311 hello"), ("mqttv5", "v5 hello")] {
        // Retained, on an event of its own per version: the application receives it
        // whenever its subscription lands, so the test has no race to lose.
        let event = format!("temp-{version}");
        let publish = Command::new("mosquitto_pub")
            .args(tls_args(&files, &acme, "d:sensor:dev1", "dev1"))
            .args(["-i", "d:acme:sensor:dev1", "-V", version, "-q", "1", "-r"])
            .args(["-t", &format!("iot-2/evt/{event}/fmt/json"), "-m", payload])
            .output()
            .expect("mosquitto_pub");
        assert!(
            publish.status.success(),
            "mosquitto_pub ({version}) failed: {}",
            String::from_utf8_lossy(&publish.stderr)
        );
        let out = Command::new("mosquitto_sub")
            .args(tls_args(&files, &acme, "a:dash", "app"))
            .args([
                "-i",
                "a:acme:dash",
                "-V",
                version,
                "-v",
                "-C",
                "1",
                "-W",
                "10",
            ])
            .args(["-t", &format!("iot-2/type/+/id/+/evt/{event}/fmt/+")])
            .output()
            .expect("mosquitto_sub");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.trim(),
            format!("iot-2/type/sensor/id/dev1/evt/{event}/fmt/json {payload}"),
            "mosquitto_sub ({version}) stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn mosquitto_wrong_client_id_and_foreign_ca_are_refused() {
    if !available("mosquitto_pub", &["--help"]) {
        return;
    }
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let beta = Org::create(&server, "beta").await;
    let files = Files::new();

    let out = Command::new("mosquitto_pub")
        .args(tls_args(&files, &acme, "d:sensor:dev1", "dev1"))
        .args([
            "-i",
            "d:acme:sensor:other",
            "-t",
            "iot-2/evt/e/fmt/f",
            "-m",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("not authori"), "{err}");

    // beta's device, acme's host name: the TLS handshake fails.
    let beta_cert = beta.cert("d:sensor:dev1");
    let mut args = tls_args(&files, &acme, "d:sensor:dev1", "dev1");
    let cert_at = args.iter().position(|a| a == "--cert").unwrap() + 1;
    args[cert_at] = files.write("beta.pem", &beta_cert.chain_pem);
    args[cert_at + 2] = files.write("beta.key", &beta_cert.key_pem);
    let out = Command::new("mosquitto_pub")
        .args(args)
        .args([
            "-i",
            "d:acme:sensor:dev1",
            "-t",
            "iot-2/evt/e/fmt/f",
            "-m",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a foreign CA's device was admitted");
}

#[tokio::test]
async fn paho_python_device_and_app() {
    paho_round_trip(false).await;
}

/// The same round trip over MQTT over WebSockets (`--ws`): TLS with the org's server
/// certificate and the clients' certificates, then `/mqtt` with subprotocol `mqtt`.
#[tokio::test]
async fn paho_python_over_websockets() {
    paho_round_trip(true).await;
}

/// MQTT.js (Node) over `wss://` with client certificates, as browsers' and Node's most
/// used MQTT client connects: `NODE_PATH` must find the `mqtt` package (`.ci/run`
/// installs it under `target/node`).
#[tokio::test]
async fn mqttjs_over_websockets() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/mqttjs_ws.js");
    if !library(
        "node",
        &["-e", "require('mqtt')"],
        "node's mqtt package (NODE_PATH)",
    ) {
        return;
    }
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let files = Files::new();
    let dev = acme.cert("d:sensor:dev1");
    let app = acme.cert("a:dash");
    let url = format!("wss://acme.{DOMAIN}:{}/mqtt", server.ws.port());
    let out = Command::new("node")
        .arg(&script)
        .args([
            &url,
            &files.write("server.pem", &acme.server_pem),
            &files.write("dev.pem", &dev.chain_pem),
            &files.write("dev.key", &dev.key_pem),
            &files.write("app.pem", &app.chain_pem),
            &files.write("app.key", &app.key_pem),
            "acme",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "MQTT.js over wss failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("event iot-2/type/sensor/id/dev1/evt/temp/fmt/json {\"t\":21}"),
        "{stdout}"
    );
}

async fn paho_round_trip(websockets: bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/paho_roundtrip.py");
    if !library(
        "python3",
        &["-c", "import paho.mqtt.client"],
        "python3's paho-mqtt",
    ) {
        return;
    }
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let files = Files::new();
    let dev = acme.cert("d:sensor:dev1");
    let app = acme.cert("a:dash");
    let port = if websockets {
        server.ws.port()
    } else {
        acme.mqtt.port()
    };
    let out = Command::new("python3")
        .arg(&script)
        .args([
            &format!("acme.{DOMAIN}"),
            &port.to_string(),
            &files.write("server.pem", &acme.server_pem),
            &files.write("dev.pem", &dev.chain_pem),
            &files.write("dev.key", &dev.key_pem),
            &files.write("app.pem", &app.chain_pem),
            &files.write("app.key", &app.key_pem),
        ])
        .args(websockets.then_some("websockets"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paho round trip failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("event iot-2/type/sensor/id/dev1/evt/temp/fmt/json"),
        "{stdout}"
    );
    assert!(
        stdout.contains("command iot-2/cmd/reboot/fmt/json"),
        "{stdout}"
    );
}
