//! `certmq-sim provision`: a CA, device and application certificates as PEM files, and
//! optionally an org on certmq with that CA and a server certificate.
//!
//! Two rules keep a newcomer from being stranded: an existing CA in the output directory
//! is reused, never overwritten without `force` (the certificates it issued, and every
//! org that trusts it, would silently stop matching); and `server.pem` is always the
//! chain certmq actually presents for the org — when the org already has an active
//! server certificate, that one, not a new inactive one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::admin::AdminClient;
use crate::certs::{ClientCertOptions, TestCa};

/// What to provision (the CLI's `provision` arguments).
#[derive(Debug, Clone)]
pub struct Options {
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// An existing CA to sign with: certificate and key files.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// Common name of a newly minted CA.
    pub ca_cn: String,
    pub device_type: String,
    /// Devices dev1 … devN.
    pub devices: usize,
    /// Also an application certificate `a:<app_id>` (empty: none).
    pub app_id: String,
    /// Validity of the client certificates, days.
    pub days: i64,
    pub org: Option<String>,
    /// Base messaging domain (`<org>.<domain>`).
    pub domain: String,
    /// Issue a server certificate for `<org>.<domain>` from the CA (uploaded and
    /// activated with `admin`).
    pub server_cert: bool,
    /// certmq's admin API URL and token: create the org and register the CA there.
    pub admin: Option<(String, String)>,
    /// Replace a CA already in the output directory.
    pub force: bool,
}

/// Loads a CA from its certificate and key files.
pub fn load_ca(cert: &Path, key: &Path) -> Result<TestCa> {
    TestCa::from_pem(&read(cert)?, &read(key)?)
        .with_context(|| format!("load CA from {} / {}", cert.display(), key.display()))
}

/// Provisions; returns what was done, a line each, for the operator.
pub async fn run(opts: &Options) -> Result<Vec<String>> {
    let mut said = Vec::new();
    std::fs::create_dir_all(opts.out.join("devices"))
        .with_context(|| format!("create {}", opts.out.display()))?;
    let ca = ca(opts, &mut said)?;
    let now = time::OffsetDateTime::now_utc();
    let cert_opts = ClientCertOptions {
        not_after: now + time::Duration::days(opts.days),
        ..Default::default()
    };
    let dir = opts.out.join("devices");
    for n in 1..=opts.devices {
        let identity = format!("d:{}:dev{n}", opts.device_type);
        let cert = ca.issue_client(&identity, cert_opts.clone())?;
        let base = format!("{}-dev{n}", opts.device_type);
        write_file(&dir.join(format!("{base}.pem")), &cert.chain_pem, false)?;
        write_file(&dir.join(format!("{base}.key.pem")), &cert.key_pem, true)?;
    }
    said.push(format!(
        "issued {} device certificates (d:{}:dev1 …) -> {}",
        opts.devices,
        opts.device_type,
        dir.display()
    ));
    if !opts.app_id.is_empty() {
        let identity = format!("a:{}", opts.app_id);
        let cert = ca.issue_client(&identity, cert_opts)?;
        let cert_path = opts.out.join(format!("app-{}.pem", opts.app_id));
        write_file(&cert_path, &cert.chain_pem, false)?;
        write_file(
            &opts.out.join(format!("app-{}.key.pem", opts.app_id)),
            &cert.key_pem,
            true,
        )?;
        said.push(format!(
            "issued application certificate {identity} -> {}",
            cert_path.display()
        ));
    }
    let server = match (&opts.org, opts.server_cert) {
        (Some(org), true) => {
            let name = format!("{org}.{}", opts.domain);
            let cert = ca.issue_server(std::slice::from_ref(&name))?;
            write_file(&opts.out.join("server.pem"), &cert.chain_pem, false)?;
            write_file(&opts.out.join("server-key.pem"), &cert.key_pem, true)?;
            said.push(format!(
                "issued server certificate for {name} -> {}",
                opts.out.join("server.pem").display()
            ));
            Some(cert)
        }
        (None, true) => bail!("--server-cert needs --org"),
        _ => None,
    };
    let (Some((url, token)), Some(org)) = (&opts.admin, &opts.org) else {
        return Ok(said);
    };
    let admin = AdminClient::new(url, token);
    admin.ensure_org(org).await?;
    let ca_id = admin.ensure_ca(org, &ca.pem()).await?;
    said.push(format!("org {org}: CA registered (id {ca_id})"));
    let server_pem = opts.out.join("server.pem");
    match server {
        Some(cert) => {
            let id = admin
                .upload_server_cert(org, &cert.chain_pem, &cert.key_pem)
                .await?;
            admin.activate_server_cert(org, &id).await?;
            said.push(format!(
                "org {org}: server certificate uploaded and activated (id {id})"
            ));
        }
        None => match admin.active_server_cert(org).await? {
            // The org already presents one: that is the chain clients must trust.
            Some(active) => {
                write_file(&server_pem, &active.pem, false)?;
                said.push(format!(
                    "org {org}: already presents server certificate {} (left as it is); its chain -> {}",
                    active.id,
                    server_pem.display()
                ));
            }
            None => {
                let cert = admin.self_signed_server_cert(org).await?;
                if cert.view["active"].as_bool() != Some(true) {
                    admin.activate_server_cert(org, &cert.id).await?;
                }
                write_file(&server_pem, &cert.pem, false)?;
                said.push(format!(
                    "org {org}: self-signed server certificate generated and activated (id {}) -> {}",
                    cert.id,
                    server_pem.display()
                ));
            }
        },
    }
    Ok(said)
}

/// The CA to sign with: the one given, else the one already in the output directory,
/// else a new one (also when `force` replaces the one there).
fn ca(opts: &Options, said: &mut Vec<String>) -> Result<TestCa> {
    if let Some((cert, key)) = &opts.ca {
        return load_ca(cert, key);
    }
    let (cert, key) = (opts.out.join("ca.pem"), opts.out.join("ca-key.pem"));
    match (cert.exists(), key.exists(), opts.force) {
        (true, true, false) => {
            let ca = load_ca(&cert, &key)?;
            said.push(format!(
                "using the CA {:?} already in {} (--force mints a new one)",
                ca.common_name(),
                opts.out.display()
            ));
            return Ok(ca);
        }
        (true, false, false) | (false, true, false) => bail!(
            "{} has only one of ca.pem and ca-key.pem: not replacing it (pass --ca-cert and \
             --ca-key, or --force to mint a new CA over it)",
            opts.out.display()
        ),
        _ => {}
    }
    let ca = TestCa::new(&opts.ca_cn)?;
    write_file(&cert, &ca.pem(), false)?;
    write_file(&key, &ca.key_pem(), true)?;
    said.push(format!(
        "minted CA {:?} -> {}",
        ca.common_name(),
        cert.display()
    ));
    Ok(ca)
}

/// Reads a text file, naming it in the error.
pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Writes `contents` to `path`; `private` files get mode 0600 (before any byte is written).
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    #[cfg(unix)]
    if private {
        // The file may have existed with a wider mode.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    file.write_all(contents.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}
