//! The whole cluster as `dist/cluster/cluster.sh` starts it: three certmq nodes on one
//! PostgreSQL registry and one NATS JetStream, behind HAProxy (PROXY v2). Every client
//! goes through HAProxy, as in production; the per-node frontends of the script pick a
//! node.
//!
//! Needs postgresql, nats-server and haproxy (CI installs them); skips when one is
//! missing unless `CERTMQ_REQUIRE_INTEROP=1`.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use device_sim::certs::TestCa;
use device_sim::client::BrokerTarget;
use device_sim::AdminClient;
use reqwest::Method;
use rumqttc::QoS;
use serde_json::Value;
use support::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/cluster/cluster.sh")
}

fn have_everything() -> bool {
    let postgres = Path::new("/usr/lib/postgresql").exists();
    if !postgres {
        assert!(
            !interop_required(),
            "CERTMQ_REQUIRE_INTEROP=1 but postgresql is missing"
        );
        eprintln!("skipping: postgresql not found");
    }
    postgres && have_program("nats-server", &["--version"]) && have_program("haproxy", &["-v"])
}

/// A cluster started by the script in a temp dir, stopped by it when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL runs as its own user inside: it must be able to traverse this.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path().join("c"))
            .env("CERTMQ_BIN", env!("CARGO_BIN_EXE_certmq"))
            .env("CERTMQ_CLUSTER_PORTS", "auto")
            .output()
            .expect("run cluster.sh");
        let mut c = Cluster {
            env: HashMap::new(),
            dir,
        };
        assert!(
            out.status.success(),
            "cluster.sh start failed:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            c.logs()
        );
        let text = std::fs::read_to_string(c.path().join("cluster.env")).unwrap();
        c.env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        c
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|i| {
                let log = std::fs::read_to_string(self.path().join(format!("node{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- node{i}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} not in cluster.env"))
    }

    fn admin(&self, node: u8) -> AdminClient {
        let addr = self.get(&format!("NODE{node}_ADMIN"));
        AdminClient::new(&format!("http://{addr}"), self.get("ADMIN_TOKEN"))
    }

    /// Through HAProxy to `node`'s frontend, or to any node with `None`.
    fn target(&self, node: Option<u8>, org: &str, server_pem: &str) -> BrokerTarget {
        let addr = match node {
            Some(n) => self.get(&format!("NODE{n}_LB")).to_owned(),
            None => self.get("LB_MQTT").to_owned(),
        };
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap();
        BrokerTarget {
            host: "127.0.0.1".into(),
            port,
            sni: format!("{org}.{DOMAIN}"),
            server_ca_pem: server_pem.into(),
        }
    }

    /// Waits until `node` has written a persistent session to the cluster's bucket.
    async fn wait_held(&self, node: u8) {
        let label = format!("node=\"node{node}\"");
        for _ in 0..100 {
            let text = self.admin(node).metrics().await.unwrap_or_default();
            if metric(&text, "certmq_cluster_sessions_held", &[&label]).is_some_and(|n| n >= 1.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {node} never wrote its persistent session to the cluster");
    }

    fn kill_node(&self, node: u8) {
        let pid =
            std::fs::read_to_string(self.path().join(format!("pids/node{node}.pid"))).unwrap();
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.path())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_haproxy_act_as_one_broker() {
    if !have_everything() {
        return;
    }
    let cluster = Cluster::start();

    // One org, set up once through node 2: the registry is shared.
    let api2 = cluster.admin(2);
    api2.create_org("acme", "acme").await.unwrap();
    let ca = TestCa::new("acme root CA").unwrap();
    let ca_id = api2.upload_ca("acme", &ca.pem(), None).await.unwrap().id;
    let server_pem = api2.self_signed_server_cert("acme").await.unwrap().pem;
    let cert = |id: &str| {
        ca.issue_client(id, device_sim::certs::ClientCertOptions::default())
            .unwrap()
    };

    // A device on node 1, an application on node 3: one broker.
    let mut app = connect_with(
        &cluster.target(Some(3), "acme", &server_pem),
        "a:acme:app",
        &cert("a:app"),
    )
    .await
    .unwrap_or_else(|e| panic!("application on node 3: {e}\n{}", cluster.logs()));
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+").await;
    let dev_cert = cert("d:sensor:dev1");
    let mut dev = connect_with(
        &cluster.target(Some(1), "acme", &server_pem),
        "d:acme:sensor:dev1",
        &dev_cert,
    )
    .await
    .unwrap_or_else(|e| panic!("device on node 1: {e}\n{}", cluster.logs()));
    // Interest travels to the other nodes asynchronously: publish until one arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        dev.client
            .publish(
                "iot-2/evt/t/fmt/json",
                QoS::AtLeastOnce,
                false,
                b"1".to_vec(),
            )
            .await
            .unwrap();
        if let Some((topic, _)) = app.next_publish(Duration::from_millis(300)).await {
            assert_eq!(topic, "iot-2/type/sensor/id/dev1/evt/t/fmt/json");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing crossed from node 1 to node 3"
        );
    }
    while app.next_publish(Duration::from_millis(300)).await.is_some() {}
    for i in 0..20u8 {
        dev.client
            .publish("iot-2/evt/t/fmt/json", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let (_, payload) = app
            .next_publish(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{} of 20 crossed nodes", got.len()));
        got.push(payload[0]);
    }
    assert_eq!(got, (0..20).collect::<Vec<u8>>(), "in order, once each");

    // The connections listing of any node shows every node's sessions.
    let listed = cluster
        .admin(2)
        .get("/orgs/acme/connections")
        .await
        .unwrap();
    let node_of = |client: &str| -> Option<String> {
        listed.as_array().and_then(|a| {
            a.iter()
                .find(|c| c["client_id"] == client)
                .and_then(|c| c["node"].as_str().map(str::to_owned))
        })
    };
    assert_eq!(
        node_of("d:acme:sensor:dev1").as_deref(),
        Some("node1"),
        "{listed}"
    );
    assert_eq!(node_of("a:acme:app").as_deref(), Some("node3"), "{listed}");

    // Takeover across nodes: the same client id on node 2 closes node 1's session.
    let mut dev_again = connect_with(
        &cluster.target(Some(2), "acme", &server_pem),
        "d:acme:sensor:dev1",
        &dev_cert,
    )
    .await
    .unwrap();
    dev.wait_closed(Duration::from_secs(2))
        .await
        .expect("node 1's session taken over by node 2");

    // A CA deactivated through node 2 closes the session on node 1 within a second,
    // and every node refuses the next handshake.
    let other = connect_with(
        &cluster.target(Some(1), "acme", &server_pem),
        "d:acme:sensor:dev2",
        &cert("d:sensor:dev2"),
    )
    .await
    .unwrap();
    let mut other = other;
    let started = Instant::now();
    api2.set_ca_active("acme", &ca_id, false).await.unwrap();
    other
        .wait_closed(Duration::from_secs(1))
        .await
        .expect("node 1's session closed within 1 s of the change on node 2");
    dev_again
        .wait_closed(Duration::from_secs(1))
        .await
        .expect("node 2's session closed too");
    let closed_after = started.elapsed();
    for node in 1..=3 {
        let r = connect_with(
            &cluster.target(Some(node), "acme", &server_pem),
            "d:acme:sensor:dev3",
            &cert("d:sensor:dev3"),
        )
        .await;
        assert!(
            r.is_err(),
            "node {node} admitted a device of a deactivated CA"
        );
    }
    eprintln!("CA deactivated on node 2 → session on node 1 closed after {closed_after:?}");
    api2.set_ca_active("acme", &ca_id, true).await.unwrap();

    // A persistent session held by node 1, offline, with commands queued for it.
    let commander = connect_with(
        &cluster.target(Some(3), "acme", &server_pem),
        "a:acme:commander",
        &cert("a:commander"),
    )
    .await
    .unwrap();
    let dev5 = cert("d:sensor:dev5");
    let (present, _) = visit(
        &cluster.target(Some(1), "acme", &server_pem),
        "d:acme:sensor:dev5",
        &dev5,
        false,
        Some("iot-2/cmd/+/fmt/+"),
        &[],
    )
    .await;
    assert!(!present);
    cluster.wait_held(1).await;
    let mut owed = commands(&commander, "dev5", 0, 10).await;

    // A node killed with SIGKILL: its devices reconnect through HAProxy to the others.
    let via_lb = cluster.target(None, "acme", &server_pem);
    let mut on_1 = connect_with(
        &cluster.target(Some(1), "acme", &server_pem),
        "d:acme:sensor:dev4",
        &cert("d:sensor:dev4"),
    )
    .await
    .unwrap();
    cluster.kill_node(1);
    on_1.wait_closed(Duration::from_secs(2))
        .await
        .expect("the killed node's connection ended");
    let deadline = Instant::now() + Duration::from_secs(15);
    let back = loop {
        // HAProxy marks node 1 down after two failed checks (1 s apart); until then a
        // connection may still be sent to it and fail.
        match connect_with(&via_lb, "d:acme:sensor:dev4", &cert("d:sensor:dev4")).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no node took the device: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let listed = cluster
        .admin(3)
        .get("/orgs/acme/connections")
        .await
        .unwrap();
    let node = listed
        .as_array()
        .and_then(|a| a.iter().find(|c| c["client_id"] == "d:acme:sensor:dev4"))
        .map(|c| c["node"].clone())
        .unwrap_or(Value::Null);
    assert!(
        node == "node2" || node == "node3",
        "the device reconnected to a live node: {listed}"
    );
    drop(back);

    // The persistent session resumes on a surviving node with every QoS 1 command
    // acknowledged to the commander: those queued on node 1 before it died and those
    // published since.
    owed.extend(commands(&commander, "dev5", 10, 10).await);
    let (present, got) = visit(&via_lb, "d:acme:sensor:dev5", &dev5, false, None, &owed).await;
    assert!(present, "the session resumed on another node");
    let missing: Vec<&String> = owed.iter().filter(|m| !got.contains(m)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}\n{}", cluster.logs());
    eprintln!(
        "node 1 killed: {} commands owed, {} delivered ({} again)",
        owed.len(),
        got.len(),
        got.len() - owed.len()
    );

    let (s, _) = Api(cluster.admin(3))
        .call(Method::GET, "/orgs/acme", None)
        .await;
    assert_eq!(s, 200, "the surviving nodes serve the admin API");
}
