//! The admin API over HTTPS: with the operator's certificate and key
//! (`--admin-tls-cert`, `--admin-tls-key`), or — when the admin address is not a
//! loopback one and no files are given — with the platform's generated certificate.
//! Plain HTTP stays only for loopback addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the admin API is served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum AdminTls {
    /// HTTPS with these files (PEM: the chain, leaf first; the key).
    Files { cert: PathBuf, key: PathBuf },
    /// HTTPS on a non-loopback address, plain HTTP on loopback (no files given).
    #[default]
    Auto,
}

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls config to serve with, or `None` for plain HTTP. With `Auto` on a
/// non-loopback address the platform certificate is used and its PEM written to
/// `<data_dir>/admin-tls.pem`, for clients to trust.
pub(crate) fn server_config(
    tls: &AdminTls,
    addr: SocketAddr,
    registry: &registry::Registry,
    data_dir: &Path,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (chain, key) = match tls {
        AdminTls::Files { cert, key } => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("admin TLS certificate {}", cert.display()))?;
            if chain.is_empty() {
                anyhow::bail!(
                    "admin TLS certificate {}: no PEM certificate in it",
                    cert.display()
                );
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("admin TLS key {} (PEM, unencrypted)", key.display()))?;
            (chain, key)
        }
        AdminTls::Auto if addr.ip().is_loopback() => return Ok(None),
        AdminTls::Auto => {
            let (chain, key) = registry
                .platform_cert()
                .context("the platform certificate for the admin API")?;
            let pem: String = chain.iter().map(|d| registry::cert::to_pem(d)).collect();
            let file = data_dir.join("admin-tls.pem");
            std::fs::write(&file, pem).with_context(|| format!("writing {}", file.display()))?;
            tracing::warn!(
                admin = %addr,
                certificate = %file.display(),
                "the admin API listens beyond loopback without --admin-tls-cert: serving \
                 HTTPS with the platform's generated certificate (trust the file named here, \
                 or give your own with --admin-tls-cert and --admin-tls-key)"
            );
            let chain = chain.into_iter().map(CertificateDer::from).collect();
            (chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the admin TLS certificate and key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Serves `app` over TLS on `listener` until `stop`; then waits (a few seconds at
/// most) for the requests in progress.
pub(crate) async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::Router,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop.clone());
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, cause = %e, "admin API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, cause = %e, "admin API connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
