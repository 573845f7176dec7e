//! MQTT over WebSockets (`--ws`), at the HTTP level: the upgrade is only on `/mqtt` with
//! the subprotocol `mqtt`, and the TLS in front of it is the per-org mTLS of port 8883.
//! (Full MQTT sessions over WebSockets with Eclipse Paho: `tests/interop.rs`.)

mod support;

use std::sync::Arc;
use std::time::Duration;

use device_sim::certs::{ClientCertOptions, TestCa};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens TLS to the WebSocket port as `org`'s client with `cert`, sends `request` and
/// returns what came back (or the error).
async fn over_tls(
    server: &Server,
    org: &Org,
    cert: &device_sim::certs::ClientCert,
    request: &str,
) -> Result<String, String> {
    let mut target = org.target();
    target.port = server.ws.port();
    let config: Arc<rustls::ClientConfig> =
        device_sim::client::tls_config(&target, Some(cert)).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(server.ws)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(target.sni.clone()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut out))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out[..n]).into_owned())
}

fn upgrade(path: &str, protocol: Option<&str>) -> String {
    let proto = protocol.map_or_else(String::new, |p| format!("Sec-WebSocket-Protocol: {p}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: acme.{DOMAIN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    )
}

#[tokio::test]
async fn the_upgrade_needs_path_mqtt_subprotocol_mqtt_and_the_orgs_mtls() {
    let server = Server::start();
    let acme = Org::create(&server, "acme").await;
    let dev = acme.cert("d:sensor:dev1");

    let ok = over_tls(&server, &acme, &dev, &upgrade("/mqtt", Some("mqtt")))
        .await
        .unwrap();
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    assert!(
        ok.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "{ok}"
    );

    let wrong_path = over_tls(&server, &acme, &dev, &upgrade("/", Some("mqtt")))
        .await
        .unwrap();
    assert!(wrong_path.starts_with("HTTP/1.1 404"), "{wrong_path}");
    assert!(wrong_path.contains("/mqtt"), "{wrong_path}");

    let no_protocol = over_tls(&server, &acme, &dev, &upgrade("/mqtt", None))
        .await
        .unwrap();
    assert!(no_protocol.starts_with("HTTP/1.1 400"), "{no_protocol}");
    assert!(no_protocol.contains("subprotocol"), "{no_protocol}");

    let garbage = over_tls(&server, &acme, &dev, "\u{1}\u{2}garbage\r\n\r\n").await;
    assert!(
        !garbage.as_deref().unwrap_or("").starts_with("HTTP/1.1 101"),
        "{garbage:?}"
    );

    // A certificate from a CA acme never uploaded: refused in the TLS handshake, as on
    // the MQTT port.
    let stranger = TestCa::new("Unknown CA")
        .unwrap()
        .issue_client("d:sensor:dev1", ClientCertOptions::default())
        .unwrap();
    let refused = over_tls(&server, &acme, &stranger, &upgrade("/mqtt", Some("mqtt"))).await;
    let text = format!("{refused:?}");
    assert!(
        refused.is_err() || !refused.as_deref().unwrap_or("").starts_with("HTTP/1.1 101"),
        "{text}"
    );
    assert!(
        text.contains("UnknownCA") || text.contains("unknown"),
        "{text}"
    );
}
