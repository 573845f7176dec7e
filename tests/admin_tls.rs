//! The admin API over HTTPS, with the real binary: the operator's certificate
//! (`--admin-tls-cert`, `--admin-tls-key`); the platform's generated certificate when
//! the admin address is not a loopback one; plain HTTP refused on an HTTPS port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use device_sim::certs::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "test-admin-token-0123456789";

/// A `certmq serve` on free ports with `extra` arguments; its admin address and
/// whether the ready line says TLS is on.
struct Serve {
    child: Child,
    admin: SocketAddr,
    tls: bool,
}

impl Serve {
    fn start(dir: &Path, admin: &str, extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_certmq"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--mqtt", "127.0.0.1:0", "--admin", admin])
            .args(extra)
            .env("CERTMQ_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn certmq");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            let line = lines.next().expect("certmq exited").expect("read");
            if line.starts_with("certmq ready ") {
                break line;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
                .to_owned()
        };
        let admin: SocketAddr = field("admin").parse().expect("admin address");
        Serve {
            child,
            admin,
            tls: field("admin_tls") == "on",
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over TLS to `addr`, trusting `roots` for `name`; the response.
async fn https_get(
    addr: SocketAddr,
    name: &str,
    roots: &str,
    path: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(roots.as_bytes()) {
        store
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let server =
        rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {name}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A plain HTTP request to `addr`: the response, or what went wrong.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return "connect failed".into();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if tcp.write_all(request.as_bytes()).await.is_err() {
        return "write failed".into();
    }
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_admin_api_serves_https_with_the_operators_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Ops CA").unwrap();
    let cert = ca.issue_server(&["admin.example.test".into()]).unwrap();
    let (crt, key) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    std::fs::write(&crt, &cert.chain_pem).unwrap();
    std::fs::write(&key, &cert.key_pem).unwrap();
    let data = dir.path().join("data");
    let s = Serve::start(
        &data,
        "127.0.0.1:0",
        &[
            "--admin-tls-cert",
            crt.to_str().unwrap(),
            "--admin-tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(s.tls, "the ready line says admin_tls=on");
    let health = https_get(s.admin, "admin.example.test", &ca.pem(), "/healthz")
        .await
        .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let orgs = https_get(s.admin, "admin.example.test", &ca.pem(), "/api/v1/orgs")
        .await
        .unwrap();
    assert!(
        orgs.starts_with("HTTP/1.1 200") && orgs.ends_with("[]"),
        "{orgs}"
    );
    let console = https_get(s.admin, "admin.example.test", &ca.pem(), "/console")
        .await
        .unwrap();
    assert!(
        console.contains("<html"),
        "the console is served: {console}"
    );
    // Plain HTTP on the HTTPS port gets no answer of the API.
    let plain = http_get(s.admin, "/healthz").await;
    assert!(!plain.contains("\"status\""), "{plain}");
    // A client that trusts another CA refuses the connection.
    let other = TestCa::new("Other").unwrap();
    let refused = https_get(s.admin, "admin.example.test", &other.pem(), "/healthz").await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn beyond_loopback_the_admin_api_is_https_with_the_platform_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Serve::start(&data, "0.0.0.0:0", &[]);
    assert!(s.tls, "no plain HTTP beyond loopback");
    let pem = std::fs::read_to_string(data.join("admin-tls.pem")).expect("admin-tls.pem written");
    let addr = SocketAddr::from(([127, 0, 0, 1], s.admin.port()));
    let health = https_get(addr, "messaging.localhost", &pem, "/healthz")
        .await
        .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let plain = http_get(addr, "/healthz").await;
    assert!(!plain.contains("\"status\""), "{plain}");
}

#[test]
fn a_certificate_without_its_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--admin-tls-cert", "/nonexistent.pem"])
        .env("CERTMQ_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-tls-key"), "{err}");
}
