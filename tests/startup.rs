//! Start-up refusals: the real binary on a data directory it must not touch.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Runs `certmq serve` over `dir` without `CERTMQ_MASTER_KEY`; returns its exit success
/// and standard error, or panics when it is still running after `wait` (a server that
/// started instead of refusing).
fn serve_expecting_exit(dir: &std::path::Path, wait: Duration) -> (bool, String) {
    serve_with_token_expecting_exit(dir, TOKEN, wait)
}

fn serve_with_token_expecting_exit(
    dir: &std::path::Path,
    token: &str,
    wait: Duration,
) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--mqtt", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--mqtt-plain", "off", "--domain", DOMAIN])
        .env("CERTMQ_ADMIN_TOKEN", token)
        .env_remove("CERTMQ_MASTER_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certmq");
    let deadline = Instant::now() + wait;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for certmq") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("certmq kept running when it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (status.success(), err)
}

/// Security review finding: with `master.key` gone, start-up silently wrote a new key
/// and then failed on the sealed keys it could not open.
#[tokio::test]
async fn a_missing_master_key_is_not_replaced_when_sealed_keys_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start_in(dir);
    let org = Org::create(&server, "acme").await;
    drop(server);

    let key_path = dir.join("master.key");
    let key = std::fs::read(&key_path).unwrap();
    std::fs::remove_file(&key_path).unwrap();

    let (ok, stderr) = serve_expecting_exit(dir, Duration::from_secs(20));
    assert!(!ok, "certmq started without its master key: {stderr}");
    let want = format!(
        "sealed keys exist in {} but master.key is missing: restore it or set \
         CERTMQ_MASTER_KEY; refusing to create a new one",
        dir.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!key_path.exists(), "a new master key was written");

    // With the key restored everything is as it was: the sealed key still opens.
    std::fs::write(&key_path, key).unwrap();
    let server = Server::start_in(dir);
    let (status, certs) = server
        .api()
        .call(reqwest::Method::GET, "/orgs/acme/server-certs", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(certs[0]["pem"].as_str().unwrap(), org.server_pem);
    assert_eq!(certs[0]["active"], true);
}

#[tokio::test]
async fn a_fresh_data_dir_gets_a_new_master_key() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(tmp.path());
    assert!(tmp.path().join("master.key").exists());
    drop(server);
}

/// Operator finding: a one-character `CERTMQ_ADMIN_TOKEN` was accepted.
#[test]
fn a_short_admin_token_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, stderr) = serve_with_token_expecting_exit(tmp.path(), "x", Duration::from_secs(20));
    assert!(!ok, "started with a one-character admin token");
    assert!(
        stderr.contains("CERTMQ_ADMIN_TOKEN") && stderr.contains("at least 16"),
        "{stderr}"
    );
}

/// Operator finding: with `CERTMQ_ADMIN_TOKEN` set, a token file from an earlier start
/// stayed on disk, and `$(cat admin-token)` got 401 with no hint.
#[tokio::test]
async fn a_stale_token_file_is_removed_when_the_variable_decides() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("admin-token");
    std::fs::write(&file, "cmq_an-older-generated-token-000000").unwrap();
    let server = Server::start_in(tmp.path());
    assert!(!file.exists(), "the stale token file is gone");
    let (status, _) = server.api().call(reqwest::Method::GET, "/orgs", None).await;
    assert_eq!(status, 200, "the variable's token works");
    drop(server);
    // A file holding the same token as the variable is left alone.
    std::fs::write(&file, TOKEN).unwrap();
    let server = Server::start_in(tmp.path());
    assert!(file.exists());
    drop(server);
}

/// A `--store` value certmq cannot use is refused without showing it: it may hold a
/// password (found in review: clap, then the config file's parser, quoted it whole).
#[test]
fn a_bad_store_url_is_refused_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certmq.toml");
    std::fs::write(&config, "store = \"mysql://certmq:hunter2@db/certmq\"\n").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_certmq"))
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--mqtt", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .env("CERTMQ_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run certmq");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let flag = run(&["--store", "mysql://certmq:hunter2@db/certmq"]);
    let file = run(&["--config", config.to_str().unwrap()]);
    for (what, (ok, stderr)) in [("flag", flag), ("config file", file)] {
        assert!(!ok, "{what}: a mysql:// store was accepted");
        assert!(
            stderr.contains("postgres://") && stderr.contains("store"),
            "{what}: the refusal says what is expected: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "{what}: the password was shown: {stderr}"
        );
    }
}
