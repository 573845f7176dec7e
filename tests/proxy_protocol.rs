//! certmq behind a real HAProxy (`mode tcp`, `send-proxy-v2`) with `--proxy-protocol`:
//! the broker sees the device's address, not the balancer's. HAProxy connects to
//! certmq from 127.0.0.9 (`source`), the devices connect to HAProxy from 127.0.0.1, so
//! every check below tells the two apart.
//!
//! Needs `haproxy`; skips when it is missing unless `CERTMQ_REQUIRE_INTEROP=1` (CI
//! installs it).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use device_sim::client::BrokerTarget;
use reqwest::Method;
use rumqttc::QoS;
use serde_json::{json, Value};
use support::*;

/// The address HAProxy connects to certmq from.
const BALANCER_SOURCE: &str = "127.0.0.9";

/// A HAProxy in the foreground, ended by its PID when dropped.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    async fn start(dir: &Path, backend: SocketAddr) -> Haproxy {
        let port = free_port();
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n  maxconn 1000\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  \
                 timeout server 60s\n\
                 frontend mqtt\n  bind 127.0.0.1:{port}\n  default_backend certmq\n\
                 backend certmq\n  server node1 {backend} send-proxy-v2 source {BALANCER_SOURCE}\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_listening(addr).await;
        Haproxy { child, addr }
    }

    fn target(&self, org: &Org) -> BrokerTarget {
        BrokerTarget {
            port: self.addr.port(),
            ..org.target()
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn behind_haproxy_the_broker_sees_the_device_address() {
    if !have_program("haproxy", &["-v"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&["--proxy-protocol"]);
    let acme = Org::create(&server, "acme").await;
    let api = server.api();
    let lb = Haproxy::start(tmp.path(), server.mqtt).await;

    // A device and an application, both through the balancer.
    let app_cert = acme.cert("a:watch");
    let mut app = connect_with(&lb.target(&acme), "a:acme:watch", &app_cert)
        .await
        .expect("application through HAProxy");
    app.subscribe("iot-2/type/+/id/+/mon").await;
    let dev_cert = acme.cert("d:sensor:dev1");
    let mut dev = connect_with(&lb.target(&acme), "d:acme:sensor:dev1", &dev_cert)
        .await
        .expect("device through HAProxy");

    // The status event and the connections listing carry the device's address.
    let (topic, payload) = app
        .next_publish(Duration::from_secs(5))
        .await
        .expect("a Connect status event");
    assert_eq!(topic, "iot-2/type/sensor/id/dev1/mon");
    let status: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(status["Action"], "Connect", "{status}");
    assert_eq!(status["ClientAddr"], "127.0.0.1", "{status}");
    let (s, conns) = api.call(Method::GET, "/orgs/acme/connections", None).await;
    assert_eq!(s, 200);
    let listed = conns
        .as_array()
        .and_then(|a| a.iter().find(|c| c["client_id"] == "d:acme:sensor:dev1"))
        .unwrap_or_else(|| panic!("device not listed: {conns}"))
        .clone();
    let listed_addr = listed.to_string();
    assert!(
        listed_addr.contains("127.0.0.1") && !listed_addr.contains(BALANCER_SOURCE),
        "{listed}"
    );

    // Messages flow through the balancer as usual.
    app.subscribe("iot-2/type/sensor/id/dev1/evt/+/fmt/+").await;
    dev.client
        .publish(
            "iot-2/evt/t/fmt/json",
            QoS::AtLeastOnce,
            false,
            b"21".to_vec(),
        )
        .await
        .unwrap();
    let got = loop {
        let (topic, payload) = app
            .next_publish(Duration::from_secs(5))
            .await
            .expect("the event through the balancer");
        if topic.ends_with("/evt/t/fmt/json") && payload == b"21" {
            break topic;
        }
    };
    assert_eq!(got, "iot-2/type/sensor/id/dev1/evt/t/fmt/json");

    // The org's network policy judges the device's address, not the balancer's:
    // denying the balancer's own address changes nothing …
    let put = |body: Value| {
        let api = &api;
        async move {
            let (s, v) = api
                .call(Method::PUT, "/orgs/acme/network-policy", Some(body))
                .await;
            assert_eq!(s, 200, "{v}");
        }
    };
    put(json!({"deny": [format!("{BALANCER_SOURCE}/32")]})).await;
    assert!(
        dev.wait_closed(Duration::from_millis(500)).await.is_none(),
        "the balancer's address is not the device's"
    );
    connect_with(
        &lb.target(&acme),
        "d:acme:sensor:dev2",
        &acme.cert("d:sensor:dev2"),
    )
    .await
    .expect("a new device through the balancer");
    // … denying the device's address closes it and refuses the next one.
    put(json!({"deny": ["127.0.0.1/32"]})).await;
    dev.wait_closed(Duration::from_secs(1))
        .await
        .expect("the device's address is denied");
    let Err(err) = connect_with(
        &lb.target(&acme),
        "d:acme:sensor:dev3",
        &acme.cert("d:sensor:dev3"),
    )
    .await
    else {
        panic!("a device from a denied address was admitted");
    };
    assert!(
        err.to_lowercase().contains("access") || err.contains("AccessDenied"),
        "{err}"
    );
    put(json!({"deny": []})).await;
}

#[tokio::test]
async fn a_connection_without_the_header_is_closed_and_others_are_served() {
    if !have_program("haproxy", &["-v"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&["--proxy-protocol", "--handshake-timeout", "2s"]);
    let acme = Org::create(&server, "acme").await;
    let lb = Haproxy::start(tmp.path(), server.mqtt).await;

    // A client that bypasses the balancer: its ClientHello is not a PROXY header.
    let sni = format!("acme.{DOMAIN}");
    let cert = acme.cert("d:sensor:dev1");
    let err = raw_handshake(server.mqtt, &sni, &acme.server_pem, Some(&cert))
        .await
        .expect_err("no PROXY header, no session");
    assert!(!err.is_empty());
    // Garbage, and a header cut short, held open: closed within the handshake timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut garbage = tokio::net::TcpStream::connect(server.mqtt).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut cut = tokio::net::TcpStream::connect(server.mqtt).await.unwrap();
    cut.write_all(b"\r\n\r\n\0\r\nQUIT\n\x21\x11")
        .await
        .unwrap();
    for (what, stream) in [("garbage", &mut garbage), ("a cut header", &mut cut)] {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after the handshake timeout"))
            .unwrap_or(0);
        assert_eq!(n, 0, "{what}: closed without an answer");
    }

    // Devices through the balancer are served all along.
    connect_with(&lb.target(&acme), "d:acme:sensor:dev1", &cert)
        .await
        .expect("through HAProxy");
    let text = server.api().0.metrics().await.unwrap();
    assert_eq!(
        metric(
            &text,
            "certmq_handshakes_total",
            &["reason=\"proxy_header_missing\""]
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        metric(&text, "certmq_handshakes_total", &["reason=\"timeout\""]).is_some(),
        "{text}"
    );
}
