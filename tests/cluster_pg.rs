//! The registry in PostgreSQL (`--store postgres://…`, docs/cluster.md): two nodes on
//! one database. Each test starts its own PostgreSQL in a temporary directory on a free
//! port (never the system's), and stops it by its own `pg_ctl`.
//!
//! Proves: a change made through one node's admin API reaches the other node's next
//! handshake and closes its live sessions within a second; with PostgreSQL gone, nodes
//! keep admitting and refuse changes with 503; when it is back, changes resume and a
//! node that missed notifications resynchronises; a restarted node (even on a fresh
//! data dir) has everything; two nodes migrate an empty database at once.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::*;

/// Every node of a cluster has the same master key (docs/cluster.md).
const MASTER_KEY: &str = "4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d4b1d";

/// A PostgreSQL server of the test's own, in a temporary directory.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// The newest installed PostgreSQL's programs (Debian: /usr/lib/postgresql/<v>/bin).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no initdb under /usr/lib/postgresql")
}

/// Runs `program args` as the postgres user (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("run runuser");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown of the PostgreSQL dir failed");
        let pg = Postgres {
            bin: pg_bin(),
            port: free_port(),
            dir,
        };
        let data = pg.data();
        as_postgres(
            &pg.bin.join("initdb"),
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pg.start_again();
        pg.sql("postgres", "CREATE DATABASE certmq");
        for role in ["node1", "node2"] {
            pg.sql("postgres", &format!("CREATE ROLE {role} LOGIN SUPERUSER"));
        }
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The URL a node connects with, as `role`.
    fn url(&self, role: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/certmq", self.port)
    }

    fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    fn stop(&self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Runs `sql` in `db` as the superuser; its output (unaligned, tuples only).
    fn sql(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let host = self.dir.path().display().to_string();
        let out = as_postgres(
            &self.bin.join("psql"),
            &[
                "-h", &host, "-p", &port, "-U", "postgres", "-d", db, "-Atqc", sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Our own server only, by its data directory; already stopped is fine.
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A certmq node on `pg` as `role`, in `dir`.
fn node(pg: &Postgres, role: &str, dir: &Path) -> Server {
    let url = pg.url(role);
    Server::start_in_with(
        dir,
        &["--store", &url, "--node-id", role],
        &[("CERTMQ_MASTER_KEY", MASTER_KEY)],
    )
}

/// Where `org`'s devices connect on `node`.
fn at(org: &Org, node: &Server) -> device_sim::client::BrokerTarget {
    let mut t = org.target();
    t.port = node.mqtt.port();
    t
}

fn client_id(org: &Org, identity: &str) -> String {
    format!("d:{}:{}", org.id, identity.trim_start_matches("d:"))
}

/// Connects `identity` to `node`, which must admit it.
async fn connect(org: &Org, node: &Server, identity: &str) -> Client {
    connect_with(
        &at(org, node),
        &client_id(org, identity),
        &org.cert(identity),
    )
    .await
    .unwrap_or_else(|e| panic!("{identity} refused by {}: {e}", node.mqtt))
}

/// Connects `identity` to `node`, retrying for up to `within` (a change made on
/// another node arrives by notification); the client and how long it took.
async fn admitted_within(
    org: &Org,
    node: &Server,
    identity: &str,
    within: Duration,
) -> (Client, Duration) {
    let start = Instant::now();
    loop {
        match connect_with(
            &at(org, node),
            &client_id(org, identity),
            &org.cert(identity),
        )
        .await
        {
            Ok(c) => return (c, start.elapsed()),
            Err(e) if start.elapsed() > within => {
                panic!("{identity} not admitted within {within:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `node` refuses `identity`; the error.
async fn refused(org: &Org, node: &Server, identity: &str) -> String {
    connect_with(
        &at(org, node),
        &client_id(org, identity),
        &org.cert(identity),
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("{identity} was admitted by {}", node.mqtt))
}

async fn closed_within(client: &mut Client, since: Instant, within: Duration) -> Duration {
    client
        .wait_closed(within)
        .await
        .unwrap_or_else(|| panic!("the live session was not closed within {within:?}"));
    since.elapsed()
}

/// `GET /readyz` of `node` (outside `/api/v1`, no token).
async fn readyz(node: &Server) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{}/readyz", node.admin))
        .await
        .expect("GET /readyz");
    let status = r.status().as_u16();
    (status, r.json().await.expect("readyz JSON"))
}

async fn block(api: &Api, org: &str, identity: &str) -> (u16, serde_json::Value) {
    api.call(
        Method::POST,
        &format!("/orgs/{org}/blocked-devices"),
        Some(json!({ "identity": identity, "reason": "test" })),
    )
    .await
}

#[tokio::test]
async fn a_change_on_one_node_closes_sessions_and_refuses_handshakes_on_the_other() {
    let pg = Postgres::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = node(&pg, "node1", d1.path());
    let n2 = node(&pg, "node2", d2.path());

    // Org, CA and server certificate made through node 2; devices on node 1.
    let acme = Org::create(&n2, "acme").await;
    let (mut dev1, took) = admitted_within(&acme, &n1, "d:sensor:1", Duration::from_secs(1)).await;
    eprintln!("org made on node 2 → admitted on node 1 after {took:?}");
    let mut dev2 = connect(&acme, &n1, "d:sensor:2").await;
    let mut dev3 = connect(&acme, &n2, "d:sensor:3").await;

    // A block through node 2 closes the session on node 1 and refuses it there.
    let sent = Instant::now();
    let (s, _) = block(&n2.api(), "acme", "d:sensor:1").await;
    assert_eq!(s, 201);
    let took = closed_within(&mut dev1, sent, Duration::from_secs(1)).await;
    eprintln!("blocked on node 2 → session closed on node 1 in {took:?}");
    let err = refused(&acme, &n1, "d:sensor:1").await;
    assert!(err.contains("NotAuthorized"), "{err}");
    assert!(dev2.wait_closed(Duration::from_millis(200)).await.is_none());

    // The CA deactivated through node 1's API: every session of it, on both nodes.
    let sent = Instant::now();
    n1.api()
        .0
        .set_ca_active("acme", &acme.ca_id, false)
        .await
        .unwrap();
    let took1 = closed_within(&mut dev2, sent, Duration::from_secs(1)).await;
    let took2 = closed_within(&mut dev3, sent, Duration::from_secs(1)).await;
    eprintln!("CA deactivated on node 1 → closed on node 1 in {took1:?}, on node 2 in {took2:?}");
    refused(&acme, &n1, "d:sensor:2").await;
    refused(&acme, &n2, "d:sensor:3").await;

    // A change too large to name key by key in a notification (an org with 300 blocked
    // identities deleted): the other node re-reads the prefixes it names instead.
    let big = Org::create(&n2, "big").await;
    let (mut live, _) = admitted_within(&big, &n1, "d:sensor:1", Duration::from_secs(1)).await;
    let started = Instant::now();
    for i in 0..300 {
        let (s, v) = block(&n2.api(), "big", &format!("d:sensor:blocked-{i:03}")).await;
        assert_eq!(s, 201, "{v}");
    }
    eprintln!("300 blocks through node 2 took {:?}", started.elapsed());
    let sent = Instant::now();
    let (s, _) = n2.api().call(Method::DELETE, "/orgs/big", None).await;
    assert_eq!(s, 204);
    let took = closed_within(&mut live, sent, Duration::from_secs(1)).await;
    eprintln!("org with 300 blocks deleted on node 2 → session closed on node 1 in {took:?}");
    let (s, _) = n1.api().call(Method::GET, "/orgs/big", None).await;
    assert_eq!(s, 404);

    // Two nodes asked at the same moment to create the same org: one wins, the other
    // is told it exists (the check and the write hold the cluster's write lock).
    let (api1, api2) = (n1.api(), n2.api());
    for i in 0..10 {
        let org = format!("dup{i}");
        let body = json!({ "id": org, "name": "Dup" });
        let (a, b) = tokio::join!(
            api1.call(Method::POST, "/orgs", Some(body.clone())),
            api2.call(Method::POST, "/orgs", Some(body.clone())),
        );
        let mut got = [a.0, b.0];
        got.sort();
        assert_eq!(got, [201, 409], "{org}: {a:?} {b:?}");
    }

    // Read-check-write across nodes: an org made on node 1 takes a CA through node 2 at
    // once (node 2 catches up before checking that the org exists).
    let ca = device_sim::certs::TestCa::new("beta CA").unwrap();
    let (a1, a2) = (n1.api().0, n2.api().0);
    for i in 0..5 {
        let org = format!("beta{i}");
        a1.create_org(&org, "Beta").await.unwrap();
        a2.upload_ca(&org, &ca.pem(), None)
            .await
            .unwrap_or_else(|e| panic!("node 2 did not see {org} just made on node 1: {e:#}"));
    }
}

#[tokio::test]
async fn losing_postgres_keeps_admitting_refuses_changes_and_resynchronises() {
    let pg = Postgres::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = node(&pg, "node1", d1.path());
    let n2 = node(&pg, "node2", d2.path());
    let acme = Org::create(&n1, "acme").await;
    admitted_within(&acme, &n2, "d:sensor:0", Duration::from_secs(1)).await;

    // PostgreSQL stopped: both nodes admit with what they had; changes answer 503.
    pg.stop();
    let mut live = connect(&acme, &n1, "d:sensor:1").await;
    connect(&acme, &n2, "d:sensor:2").await;
    for n in [&n1, &n2] {
        let (s, v) = block(&n.api(), "acme", "d:sensor:9").await;
        assert_eq!(s, 503, "{v}");
        assert_eq!(v["error"]["code"], "store_unavailable", "{v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains("registry database is unreachable")
                && m.contains("changes are refused until it is back"),
            "{m}"
        );
        // The readiness probe says so, and the node stays ready (it still admits).
        let (s, v) = readyz(n).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("ready")), "{v}");
        let db = v["registry_database"].as_str().unwrap_or_default();
        assert!(db != "ok" && !db.is_empty(), "{v}");
        // Reads still answer, from the node's copy.
        let (s, _) = n.api().call(Method::GET, "/orgs/acme/ca-certs", None).await;
        assert_eq!(s, 200);
    }

    // Back: changes are accepted again on both nodes (each reconnects within seconds).
    pg.start_again();
    let back = Instant::now();
    for (n, identity) in [(&n1, "d:sensor:8"), (&n2, "d:sensor:7")] {
        loop {
            let (s, v) = block(&n.api(), "acme", identity).await;
            if s == 201 {
                break;
            }
            assert_eq!(s, 503, "{v}");
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "changes refused 10 s after PostgreSQL came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "PostgreSQL back → changes accepted again after {:?}",
        back.elapsed()
    );
    let (_, v) = readyz(&n2).await;
    assert_eq!(
        (v["node"].as_str(), v["registry_database"].as_str()),
        (Some("node2"), Some("ok")),
        "{v}"
    );
    // And they propagate again: a block on node 2 closes the session on node 1.
    let sent = Instant::now();
    assert_eq!(block(&n2.api(), "acme", "d:sensor:1").await.0, 201);
    closed_within(&mut live, sent, Duration::from_secs(1)).await;

    // Node 1 alone cut off (its role may not log in, its connection ended): node 2
    // changes things node 1 cannot hear about, then node 1 comes back and resyncs.
    let mut live = connect(&acme, &n1, "d:sensor:3").await;
    pg.sql("certmq", "ALTER ROLE node1 NOLOGIN");
    pg.sql(
        "certmq",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'node1'",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while block(&n1.api(), "acme", "d:sensor:x").await.0 != 503 {
        assert!(
            Instant::now() < deadline,
            "node 1 did not notice it was cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(block(&n2.api(), "acme", "d:sensor:3").await.0, 201);
    // Node 1 missed it: the session stays, and the identity is still admitted there.
    assert!(live.wait_closed(Duration::from_millis(500)).await.is_none());
    let sent = Instant::now();
    pg.sql("certmq", "ALTER ROLE node1 LOGIN");
    let took = closed_within(&mut live, sent, Duration::from_secs(5)).await;
    eprintln!("node 1 allowed back → resynchronised and closed the blocked session after {took:?}");
    refused(&acme, &n1, "d:sensor:3").await;
}

#[tokio::test]
async fn two_nodes_migrate_together_and_a_restarted_node_keeps_everything() {
    let pg = Postgres::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Both start at once on the empty database: one migrates, the other waits for it.
    let (p1, p2) = (d1.path().to_path_buf(), d2.path().to_path_buf());
    // A password in the URL (the test server trusts every local connection, so any
    // password works) must never be shown: see the marker and the errors below.
    let url1 = pg.url("node1").replace("node1@", "node1:sekrit-pw@");
    let url2 = pg.url("node2");
    let start = |dir: PathBuf, url: String, id: &'static str| {
        std::thread::spawn(move || {
            Server::start_in_with(
                &dir,
                &["--store", &url, "--node-id", id],
                &[("CERTMQ_MASTER_KEY", MASTER_KEY)],
            )
        })
    };
    let (t1, t2) = (start(p1, url1, "node1"), start(p2, url2, "node2"));
    let (n1, n2) = (t1.join().unwrap(), t2.join().unwrap());
    assert_eq!(
        pg.sql("certmq", "SELECT count(*) FROM certmq_schema_version"),
        "1"
    );

    let acme = Org::create(&n1, "acme").await;
    connect(&acme, &n1, "d:sensor:1").await;
    // The device inventory is in PostgreSQL too: node 2 lists a device of node 1's
    // once node 1 has flushed its admissions (every 2 s).
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let (s, v) = n2
            .api()
            .call(Method::GET, "/orgs/acme/devices/d:sensor:1", None)
            .await;
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never listed node 1's device: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, _) = block(&n2.api(), "acme", "d:sensor:2").await;
    assert_eq!(s, 201);

    // Node 1 stopped and started again on a new, empty data dir: the registry is all
    // in PostgreSQL.
    let old_dir = d1.path().to_path_buf();
    n1.terminate();
    let d3 = tempfile::tempdir().unwrap();
    let n1 = node(&pg, "node1", d3.path());
    connect(&acme, &n1, "d:sensor:1").await;
    refused(&acme, &n1, "d:sensor:2").await;
    let (s, v) = n1
        .api()
        .call(Method::GET, "/orgs/acme/blocked-devices", None)
        .await;
    assert_eq!((s, v[0]["identity"].as_str()), (200, Some("d:sensor:2")));

    // The old data dir holds only message state: the embedded-store commands refuse it,
    // and so does a start without --store.
    let out = Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(["backup", "--data-dir"])
        .arg(&old_dir)
        .arg("--out")
        .arg(old_dir.join("b"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("registry is in PostgreSQL"),
        "{err}"
    );
    assert!(
        !err.contains(MASTER_KEY) && !err.contains("sekrit-pw"),
        "{err}"
    );
    let marker = std::fs::read_to_string(old_dir.join("registry-in-postgres")).unwrap();
    assert!(
        marker.contains("node1:***@") && !marker.contains("sekrit-pw"),
        "{marker}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(["serve", "--data-dir"])
        .arg(&old_dir)
        .args(["--mqtt", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("CERTMQ_MASTER_KEY", MASTER_KEY)
        .env("CERTMQ_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("kept its registry in PostgreSQL"),
        "{err}"
    );
    assert!(!err.contains("sekrit-pw"), "{err}");
    drop(n2);
}

#[test]
fn a_node_that_cannot_reach_postgres_at_start_says_so_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://certmq:sekrit-pw@127.0.0.1:{}/certmq",
        free_port()
    );
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--mqtt",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--store",
            &url,
        ])
        .env("CERTMQ_MASTER_KEY", MASTER_KEY)
        .env("CERTMQ_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot open the registry database postgres://certmq:***@127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("sekrit-pw"), "{err}");
    // It waited for the database (it may be starting beside us), but not for ever.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
}
