//! certmq nodes in a cluster through NATS with JetStream (`--cluster`,
//! docs/cluster-messages.md): each test starts its own `nats-server -js` on a free port
//! (ended by its PID) and real `certmq` nodes with their own data dirs; the registry is
//! not shared yet, so the same org, CA and a server certificate are created on every
//! node through its admin API. Real rumqttc clients over mTLS.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use device_sim::certs::TestCa;
use device_sim::client::BrokerTarget;
use reqwest::Method;
use rumqttc::QoS;
use support::*;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(800);
const EVENTS: &str = "iot-2/type/+/id/+/evt/+/fmt/+";

/// A `nats-server -js` of the test's own.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut n = Nats {
            child: None,
            port: free_port(),
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
        };
        n.spawn();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and store dir.
    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-sd"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-a", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        self.child = Some(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start on {addr}");
    }

    /// Stops the server (by its PID).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One node and the org's server certificate on it.
struct Node {
    server: Server,
    name: String,
}

/// The nodes of a cluster, every org created on each with the same CA.
struct Cluster {
    /// Before `nats`: the nodes stop first.
    nodes: Vec<Node>,
    nats: Nats,
    /// Per org: its CA and, per node, the node's server certificate.
    orgs: Vec<(String, TestCa, Vec<String>)>,
}

impl Cluster {
    async fn start(nodes: usize, orgs: &[&str]) -> Cluster {
        let nats = Nats::start();
        let url = nats.url();
        let nodes: Vec<Node> = (1..=nodes)
            .map(|i| {
                let name = format!("n{i}");
                let server = Server::start_with(&["--cluster", &url, "--node-id", &name]);
                Node { server, name }
            })
            .collect();
        let mut made = Vec::new();
        for id in orgs {
            let first = Org::create(&nodes[0].server, id).await;
            let mut pems = vec![first.server_pem.clone()];
            for n in &nodes[1..] {
                let api = n.server.api().0;
                api.create_org(id, id).await.expect("org");
                api.upload_ca(id, &first.ca.pem(), None).await.expect("CA");
                pems.push(api.self_signed_server_cert(id).await.expect("cert").pem);
            }
            made.push((id.to_string(), first.ca, pems));
        }
        let c = Cluster {
            nodes,
            nats,
            orgs: made,
        };
        for i in 0..c.nodes.len() {
            c.wait_connected(i, true).await;
        }
        c
    }

    fn target(&self, org: &str, node: usize) -> BrokerTarget {
        let (_, _, pems) = self.org(org);
        BrokerTarget {
            host: "127.0.0.1".into(),
            port: self.nodes[node].server.mqtt.port(),
            sni: format!("{org}.{DOMAIN}"),
            server_ca_pem: pems[node].clone(),
        }
    }

    fn org(&self, org: &str) -> &(String, TestCa, Vec<String>) {
        self.orgs.iter().find(|o| o.0 == org).expect("org")
    }

    /// Connects `client_id` (certificate for `identity` of `org`) to node `node`.
    async fn connect(&self, org: &str, node: usize, identity: &str, client_id: &str) -> Client {
        let cert = self
            .org(org)
            .1
            .issue_client(identity, Default::default())
            .expect("cert");
        connect_with(&self.target(org, node), client_id, &cert)
            .await
            .unwrap_or_else(|e| panic!("{client_id} on node {node}: {e}"))
    }

    /// Waits until node `i` reports its NATS connection up (or down).
    async fn wait_connected(&self, i: usize, up: bool) {
        let want = format!(
            "certmq_cluster_nats_connected{{node=\"{}\"}} {}",
            self.nodes[i].name,
            u8::from(up)
        );
        for _ in 0..200 {
            let text = self.nodes[i]
                .server
                .api()
                .0
                .metrics()
                .await
                .expect("metrics");
            if text.contains(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {i}: no {want}");
    }
}

/// Every PUBLISH payload received until nothing comes for [`QUIET`].
async fn drain(c: &mut Client) -> Vec<String> {
    let mut got = Vec::new();
    while let Some((_, p)) = c.next_publish(QUIET).await {
        got.push(String::from_utf8(p).expect("utf-8"));
    }
    got
}

#[tokio::test]
async fn a_device_on_one_node_reaches_an_app_on_another_and_orgs_stay_apart() {
    let c = Cluster::start(3, &["acme", "beta"]).await;
    let mut app = c.connect("acme", 2, "a:dash", "a:acme:dash").await;
    app.subscribe(EVENTS).await;
    // Another org's application on another node, same filter.
    let mut beta = c.connect("beta", 1, "a:dash", "a:beta:dash").await;
    beta.subscribe(EVENTS).await;
    let dev = c
        .connect("acme", 0, "d:sensor:dev1", "d:acme:sensor:dev1")
        .await;

    for (qos, body) in [(QoS::AtMostOnce, "q0"), (QoS::AtLeastOnce, "q1")] {
        dev.client
            .publish("iot-2/evt/temp/fmt/json", qos, false, body)
            .await
            .unwrap();
        let (topic, payload) = app.next_publish(WAIT).await.expect("event on node 3");
        assert_eq!(topic, "iot-2/type/sensor/id/dev1/evt/temp/fmt/json");
        assert_eq!(payload, body.as_bytes());
    }
    // A command back, from node 3 to the device on node 1 (QoS 2).
    let mut dev = dev;
    dev.subscribe("iot-2/cmd/+/fmt/+").await;
    app.client
        .publish(
            "iot-2/type/sensor/id/dev1/cmd/reboot/fmt/json",
            QoS::ExactlyOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    let (topic, _) = dev.next_publish(WAIT).await.expect("command on node 1");
    assert_eq!(topic, "iot-2/cmd/reboot/fmt/json");
    assert!(
        drain(&mut beta).await.is_empty(),
        "another org's subscriber got acme's messages"
    );

    // MQTT 5 on both ends: properties cross nodes.
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    let (_, ca, _) = c.org("acme");
    let v5 = |node: usize, identity: &str, id: &str| {
        let cert = ca.issue_client(identity, Default::default()).unwrap();
        let opts =
            device_sim::client::mqtt_options_v5(&c.target("acme", node), id, Some(&cert)).unwrap();
        rumqttc::v5::AsyncClient::new(opts, 10)
    };
    let (sub, mut sub_loop) = v5(1, "a:v5", "a:acme:v5");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = sub_loop.poll().await {
            if let rumqttc::v5::Event::Incoming(p) = ev {
                let _ = tx.send(p);
            }
        }
    });
    sub.subscribe(EVENTS, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(P5::SubAck(_))) => break,
            Ok(Some(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
    let (publ, mut pub_loop) = v5(0, "d:sensor:dev5", "d:acme:sensor:dev5");
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: vec![("k".into(), "v w".into())],
        ..Default::default()
    };
    publ.publish_with_properties(
        "iot-2/evt/v5/fmt/json",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "five",
        props,
    )
    .await
    .unwrap();
    let got = loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(P5::Publish(p))) => break p,
            Ok(Some(_)) => {}
            other => panic!("no v5 PUBLISH: {other:?}"),
        }
    };
    assert_eq!(&got.topic[..], b"iot-2/type/sensor/id/dev5/evt/v5/fmt/json");
    assert_eq!(&got.payload[..], b"five");
    let p = got.properties.expect("properties");
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.user_properties, vec![("k".to_owned(), "v w".to_owned())]);
}

#[tokio::test]
async fn three_nodes_with_subscribers_deliver_each_message_once_to_each() {
    let c = Cluster::start(3, &["acme"]).await;
    let mut apps = Vec::new();
    for node in 0..3 {
        let id = format!("a:acme:app{node}");
        let mut a = c.connect("acme", node, &format!("a:app{node}"), &id).await;
        a.subscribe(EVENTS).await;
        // An overlapping filter of the same session: still one copy per message.
        a.subscribe("iot-2/type/sensor/id/+/evt/#").await;
        apps.push(a);
    }
    // Publishers on two nodes.
    let d0 = c.connect("acme", 0, "d:sensor:a", "d:acme:sensor:a").await;
    let d2 = c.connect("acme", 2, "d:sensor:b", "d:acme:sensor:b").await;
    for i in 0..10 {
        for d in [&d0, &d2] {
            d.client
                .publish(
                    "iot-2/evt/n/fmt/txt",
                    QoS::AtLeastOnce,
                    false,
                    format!("{i}"),
                )
                .await
                .unwrap();
        }
    }
    for (node, a) in apps.iter_mut().enumerate() {
        let got = drain(a).await;
        assert_eq!(got.len(), 20, "node {node}: {got:?}");
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10, "node {node}: {got:?}");
    }
}

#[tokio::test]
async fn shared_groups_and_scalable_app_instances_share_the_load_across_nodes() {
    let c = Cluster::start(3, &["acme"]).await;
    let mut w1 = c.connect("acme", 0, "a:w1", "a:acme:w1").await;
    w1.subscribe(&format!("$share/workers/{EVENTS}")).await;
    let mut w2 = c.connect("acme", 1, "a:w2", "a:acme:w2").await;
    w2.subscribe(&format!("$share/workers/{EVENTS}")).await;
    let mut i1 = c.connect("acme", 0, "a:dash", "A:acme:dash:1").await;
    i1.subscribe(EVENTS).await;
    let mut i2 = c.connect("acme", 1, "a:dash", "A:acme:dash:2").await;
    i2.subscribe(EVENTS).await;

    let dev = c.connect("acme", 2, "d:sensor:s", "d:acme:sensor:s").await;
    const N: usize = 40;
    for i in 0..N {
        dev.client
            .publish(
                "iot-2/evt/job/fmt/txt",
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .unwrap();
    }
    for (pair, what) in [
        ((&mut w1, &mut w2), "$share group"),
        ((&mut i1, &mut i2), "A: instances"),
    ] {
        let (a, b) = (drain(pair.0).await, drain(pair.1).await);
        let mut all: Vec<usize> = a.iter().chain(&b).map(|s| s.parse().unwrap()).collect();
        all.sort();
        assert_eq!(
            all,
            (0..N).collect::<Vec<_>>(),
            "{what}: each message to exactly one"
        );
        assert!(
            !a.is_empty() && !b.is_empty(),
            "{what}: both nodes' members got some ({} and {})",
            a.len(),
            b.len()
        );
    }
}

/// A visit of device `d:sensor:p` of acme to node `node`; see [`visit`].
async fn persistent_visit(
    c: &Cluster,
    node: usize,
    clean: bool,
    subscribe: bool,
    want: &[String],
) -> (bool, Vec<String>) {
    let cert = c
        .org("acme")
        .1
        .issue_client("d:sensor:p", Default::default())
        .unwrap();
    let filter = subscribe.then_some("iot-2/cmd/+/fmt/+");
    visit(
        &c.target("acme", node),
        "d:acme:sensor:p",
        &cert,
        clean,
        filter,
        want,
    )
    .await
}

/// Waits until node `i` has written `n` persistent sessions to the cluster's bucket.
async fn wait_held(c: &Cluster, i: usize, n: f64) {
    let label = format!("node=\"{}\"", c.nodes[i].name);
    for _ in 0..200 {
        let text = c.nodes[i].server.api().0.metrics().await.expect("metrics");
        if metric(&text, "certmq_cluster_sessions_held", &[&label]) == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node {i} never held {n} sessions in the cluster");
}

#[tokio::test]
async fn a_persistent_session_moves_between_nodes_with_its_queue() {
    let c = Cluster::start(2, &["acme"]).await;
    let app = c.connect("acme", 0, "a:cmd", "a:acme:cmd").await;
    let (present, _) = persistent_visit(&c, 0, false, true, &[]).await;
    assert!(!present);
    wait_held(&c, 0, 1.0).await;

    // Offline, held by node 1: commands queue there (and in the cluster's stream).
    let first = commands(&app, "p", 0, 5).await;
    tokio::time::sleep(QUIET).await;
    // On node 2: the session, its subscription and every queued command.
    let (present, got) = persistent_visit(&c, 1, false, false, &first).await;
    assert!(present, "node 2 took the session over");
    assert!(first.iter().all(|m| got.contains(m)), "{got:?}");
    wait_held(&c, 1, 1.0).await;
    wait_held(&c, 0, 0.0).await;

    // Offline again, now held by node 2: the subscription travelled with it.
    let second = commands(&app, "p", 5, 5).await;
    tokio::time::sleep(QUIET).await;
    let (present, got) = persistent_visit(&c, 0, false, false, &second).await;
    assert!(present, "node 1 took it back");
    assert!(second.iter().all(|m| got.contains(m)), "{got:?}");
    // Acknowledged on node 2 a moment ago: node 1 knows it from the bucket.
    assert!(
        !got.iter().any(|m| first.contains(m)),
        "commands acknowledged on node 2 came again: {got:?}"
    );

    // A clean session on node 2 ends the session everywhere.
    persistent_visit(&c, 1, true, false, &[]).await;
    tokio::time::sleep(QUIET).await;
    let (present, _) = persistent_visit(&c, 0, false, false, &[]).await;
    assert!(!present, "a clean session on node 2 left node 1's in place");
}

#[tokio::test]
async fn a_node_killed_and_restarted_owes_its_sessions_what_came_while_it_was_down() {
    let mut c = Cluster::start(2, &["acme"]).await;
    let app = c.connect("acme", 1, "a:cmd", "a:acme:cmd").await;
    persistent_visit(&c, 0, false, true, &[]).await;
    wait_held(&c, 0, 1.0).await;
    let mut owed = commands(&app, "p", 0, 5).await;
    tokio::time::sleep(QUIET).await;

    c.nodes[0].server.kill_hard();
    owed.extend(commands(&app, "p", 5, 5).await);
    let node = c.nodes.remove(0);
    c.nodes.insert(
        0,
        Node {
            server: node.server.restart_hard(),
            name: node.name,
        },
    );
    c.wait_connected(0, true).await;

    let (present, got) = persistent_visit(&c, 0, false, false, &owed).await;
    assert!(present);
    let missing: Vec<&String> = owed.iter().filter(|m| !got.contains(m)).collect();
    assert!(missing.is_empty(), "lost: {missing:?} (got {got:?})");
}

#[tokio::test]
async fn takeover_kick_and_listing_across_nodes() {
    let c = Cluster::start(2, &["acme"]).await;
    let _app = c.connect("acme", 0, "a:dash", "a:acme:dash").await;
    let mut first = c
        .connect("acme", 0, "d:sensor:dev1", "d:acme:sensor:dev1")
        .await;
    let mut second = c
        .connect("acme", 1, "d:sensor:dev1", "d:acme:sensor:dev1")
        .await;
    assert!(
        first.wait_closed(WAIT).await.is_some(),
        "the session on node 1 was taken over by node 2's"
    );

    // Listed from node 1: node 2's session, with its node.
    let api = c.nodes[0].server.api();
    let (status, list) = api.call(Method::GET, "/orgs/acme/connections", None).await;
    assert_eq!(status, 200, "{list}");
    let entries: Vec<(String, String)> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["client_id"].as_str().unwrap().to_owned(),
                e["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("a:acme:dash".to_owned(), "n1".to_owned()),
            ("d:acme:sensor:dev1".to_owned(), "n2".to_owned())
        ]
    );
    // The schema documents `node`.
    assert!(api
        .documented_properties("Session")
        .await
        .contains(&"node".to_owned()));

    // An administrator's kick on node 1 closes the session on node 2.
    let (status, body) = api
        .call(
            Method::DELETE,
            "/orgs/acme/connections/d:acme:sensor:dev1",
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(second.wait_closed(WAIT).await.is_some(), "kicked on node 2");
    let (status, _) = api
        .call(
            Method::DELETE,
            "/orgs/acme/connections/d:acme:sensor:nobody",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn nats_restarted_delivery_resumes_and_outage_messages_arrive() {
    let mut c = Cluster::start(2, &["acme"]).await;
    let mut app = c.connect("acme", 1, "a:dash", "a:acme:dash").await;
    app.subscribe(EVENTS).await;
    let mut dev = c
        .connect("acme", 0, "d:sensor:dev1", "d:acme:sensor:dev1")
        .await;
    dev.client
        .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, "before")
        .await
        .unwrap();
    assert_eq!(app.next_publish(WAIT).await.expect("before").1, b"before");

    c.nats.stop();
    c.wait_connected(0, false).await;
    c.wait_connected(1, false).await;
    // QoS 1 during the outage: their PUBACKs wait (up to the ack timeout, 10 s).
    for i in 0..5 {
        dev.client
            .publish(
                "iot-2/evt/e/fmt/txt",
                QoS::AtLeastOnce,
                false,
                format!("during {i}"),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.nats.spawn();
    c.wait_connected(0, true).await;
    c.wait_connected(1, true).await;

    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.len() < 5 && tokio::time::Instant::now() < deadline {
        if let Some((_, p)) = app.next_publish(Duration::from_secs(1)).await {
            got.push(String::from_utf8(p).unwrap());
        }
    }
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        (0..5).map(|i| format!("during {i}")).collect::<Vec<_>>(),
        "published during the outage, delivered after it"
    );
    // The publisher has its acknowledgements (the one before the outage, and five).
    let mut acks = 0;
    let start = tokio::time::Instant::now();
    while acks < 6 {
        match tokio::time::timeout(Duration::from_secs(12), dev.rx.recv()).await {
            Ok(Some(rumqttc::Packet::PubAck(_))) => acks += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    eprintln!("PUBACKs after {:?}", start.elapsed());
    assert_eq!(acks, 6, "PUBACKs");

    dev.client
        .publish("iot-2/evt/e/fmt/txt", QoS::AtMostOnce, false, "after")
        .await
        .unwrap();
    let mut after = None;
    while let Some((_, p)) = app.next_publish(WAIT).await {
        if p == b"after" {
            after = Some(p);
            break;
        }
    }
    assert!(after.is_some(), "live delivery resumed");
}

/// Not a check (no timed assertions): prints the latency of QoS 1 messages from a
/// device to an application on the same node and on another node.
/// `cargo test --release --test cluster_nats -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_cross_node_latency() {
    let c = Cluster::start(2, &["acme"]).await;
    const N: usize = 3000;
    let base = std::time::Instant::now();
    for (label, node) in [("same node", 0), ("cross node", 1), ("same node", 0)] {
        let mut app = c.connect("acme", node, "a:lat", "a:acme:lat").await;
        app.subscribe("iot-2/type/+/id/+/evt/lat/fmt/+").await;
        let dev = c
            .connect("acme", 0, "d:sensor:lat", "d:acme:sensor:lat")
            .await;
        let start = std::time::Instant::now();
        let sender = tokio::spawn(async move {
            for _ in 0..N {
                let at = base.elapsed().as_micros().to_string();
                dev.client
                    .publish("iot-2/evt/lat/fmt/txt", QoS::AtLeastOnce, false, at)
                    .await
                    .unwrap();
            }
            dev
        });
        let mut lat = Vec::with_capacity(N);
        while lat.len() < N {
            let Some((_, p)) = app.next_publish(WAIT).await else {
                break;
            };
            let sent: u128 = String::from_utf8(p).unwrap().parse().unwrap();
            lat.push(base.elapsed().as_micros() - sent);
        }
        let elapsed = start.elapsed();
        let dev = sender.await.unwrap();
        // One at a time: the latency of an idle path.
        let mut one = Vec::new();
        for _ in 0..300 {
            let t = std::time::Instant::now();
            dev.client
                .publish("iot-2/evt/lat/fmt/txt", QoS::AtLeastOnce, false, "0")
                .await
                .unwrap();
            if app.next_publish(WAIT).await.is_none() {
                break;
            }
            one.push(t.elapsed().as_micros());
        }
        one.sort();
        eprintln!(
            "{label}, one at a time: {} messages, latency ms p50 {:.2} p99 {:.2}",
            one.len(),
            one[one.len() / 2] as f64 / 1000.0,
            one[one.len() * 99 / 100] as f64 / 1000.0
        );
        dev.client.disconnect().await.ok();
        app.client.disconnect().await.ok();
        lat.sort();
        let pct =
            |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
        eprintln!(
            "{label}: {} of {N} QoS 1 messages in {:.2} s ({:.0}/s); latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            lat.len(),
            elapsed.as_secs_f64(),
            lat.len() as f64 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn retained_messages_are_the_same_on_every_node() {
    let c = Cluster::start(3, &["acme"]).await;
    let dev = c
        .connect("acme", 0, "d:sensor:dev1", "d:acme:sensor:dev1")
        .await;
    dev.client
        .publish("iot-2/evt/state/fmt/txt", QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    // A new subscriber on another node gets it from that node's retained store.
    let retained_on = |node: usize, n: usize| {
        let c = &c;
        async move {
            let mut app = c
                .connect(
                    "acme",
                    node,
                    &format!("a:r{node}x{n}"),
                    &format!("a:acme:r{node}x{n}"),
                )
                .await;
            app.subscribe("iot-2/type/+/id/+/evt/state/fmt/+").await;
            let got = app.next_publish(Duration::from_millis(500)).await;
            app.client.disconnect().await.ok();
            got.map(|(_, p)| String::from_utf8(p).unwrap())
        }
    };
    for node in [1, 2] {
        let mut got = None;
        for n in 0..10 {
            got = retained_on(node, n).await;
            if got.is_some() {
                break;
            }
        }
        assert_eq!(got.as_deref(), Some("on"), "retained on node {}", node + 1);
    }
    // Listed by the admin API of another node.
    let (status, list) = c.nodes[2]
        .server
        .api()
        .call(Method::GET, "/orgs/acme/retained", None)
        .await;
    assert_eq!(status, 200, "{list}");
    assert!(list.to_string().contains("evt/state"), "{list}");

    // Cleared on node 1 (empty retained message): gone on every node.
    dev.client
        .publish("iot-2/evt/state/fmt/txt", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    for node in [1, 2] {
        let mut got = Some(String::new());
        for n in 10..20 {
            got = retained_on(node, n).await;
            if got.is_none() {
                break;
            }
        }
        assert_eq!(got, None, "cleared on node {}", node + 1);
    }

    // Set again, then removed through the admin API of node 3: gone on node 2 too.
    dev.client
        .publish("iot-2/evt/state/fmt/txt", QoS::AtLeastOnce, true, "again")
        .await
        .unwrap();
    let api = c.nodes[2].server.api();
    let path = "/orgs/acme/retained?topic=iot-2/type/sensor/id/dev1/evt/state/fmt/txt";
    let mut status = 0;
    for _ in 0..50 {
        status = api.call(Method::DELETE, path, None).await.0;
        if status == 204 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 204);
    let mut got = Some(String::new());
    for n in 20..30 {
        got = retained_on(1, n).await;
        if got.is_none() {
            break;
        }
    }
    assert_eq!(got, None, "removed on node 2 by node 3's admin API");
}

#[tokio::test]
async fn a_node_whose_nats_is_unreachable_works_alone() {
    // Nothing listens on this port: the node starts anyway and retries in the background.
    let url = format!("nats://127.0.0.1:{}", free_port());
    let server = Server::start_with(&["--cluster", &url, "--node-id", "alone"]);
    let acme = Org::create(&server, "acme").await;
    let text = server.api().0.metrics().await.unwrap();
    assert!(
        text.contains("certmq_cluster_nats_connected{node=\"alone\"} 0"),
        "{text}"
    );
    let started = tokio::time::Instant::now();
    let mut app = acme.connect("a:dash", "a:acme:dash").await;
    app.subscribe(EVENTS).await;
    let mut w = acme.connect("a:w", "a:acme:w").await;
    w.subscribe(&format!("$share/g/{EVENTS}")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "SUBACKs do not wait for NATS"
    );
    let mut dev = acme.connect("d:sensor:dev1", "d:acme:sensor:dev1").await;
    dev.client
        .publish("iot-2/evt/e/fmt/txt", QoS::AtLeastOnce, false, "local")
        .await
        .unwrap();
    // Delivered at once on this node, to plain and shared subscribers alike.
    assert_eq!(app.next_publish(WAIT).await.expect("plain").1, b"local");
    assert_eq!(w.next_publish(WAIT).await.expect("shared").1, b"local");
    // The PUBACK waits for the stream at most the ack timeout (10 s), then comes.
    let acked = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(rumqttc::Packet::PubAck(_)) = dev.rx.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "no PUBACK without NATS");
    // Counted as a forward failure (once its last retry is over).
    let mut text = String::new();
    for _ in 0..40 {
        text = server.api().0.metrics().await.unwrap();
        if text.contains("certmq_cluster_forward_failures_total{node=\"alone\"}") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no forward failure counted: {text}");
}

/// Not a check (no timed assertions): how long a persistent session with `N` QoS 1
/// commands queued takes to resume on the node that holds it and on another node
/// (CONNACK, then every command), and how many came twice.
/// `cargo test --release --test cluster_nats -- --ignored --nocapture measure_session`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_session_takeover() {
    let c = Cluster::start(2, &["acme"]).await;
    // The default queue limit per session (docs/limits.md).
    const N: usize = 1_000;
    let app = c.connect("acme", 0, "a:cmd", "a:acme:cmd").await;
    persistent_visit(&c, 0, false, true, &[]).await;
    wait_held(&c, 0, 1.0).await;
    let mut next = 0;
    for (label, node) in [("same node", 0), ("other node", 1), ("back", 0)] {
        // Unpaced, as a command service would; then the queue is complete.
        let owed = commands(&app, "p", next, N).await;
        next += N;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cert = c
            .org("acme")
            .1
            .issue_client("d:sensor:p", Default::default())
            .unwrap();
        let mut opts = device_sim::client::mqtt_options(
            &c.target("acme", node),
            "d:acme:sensor:p",
            Some(&cert),
        )
        .unwrap();
        opts.set_clean_session(false);
        let start = std::time::Instant::now();
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
        let mut connack = None;
        let mut got = std::collections::HashSet::new();
        let mut total = 0usize;
        while got.len() < owed.len() {
            match tokio::time::timeout(WAIT, el.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                    connack = Some(start.elapsed());
                }
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                    total += 1;
                    got.insert(p.payload.to_vec());
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        let all = start.elapsed();
        client.disconnect().await.ok();
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), el.poll()).await {}
        eprintln!(
            "{label}: {} of {N} queued commands; CONNACK after {:.1} ms, all after {:.1} ms; {} came twice",
            got.len(),
            connack.unwrap_or_default().as_secs_f64() * 1000.0,
            all.as_secs_f64() * 1000.0,
            total - got.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A device on node 1 publishing QoS 1 messages `0..n` as fast as its in-flight window
/// (100) allows, and an application on node 2 subscribed to them whose event loop is
/// not polled (nothing read, nothing acknowledged) while `pause` is set. Paused from the
/// start.
struct SlowPath {
    pause: tokio::sync::watch::Sender<bool>,
    acked: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    payloads: Arc<Mutex<HashSet<usize>>>,
}

async fn slow_path(c: &Cluster, n: usize) -> SlowPath {
    use rumqttc::{Event, Packet};
    let (_, ca, _) = c.org("acme");
    let cert = ca.issue_client("a:slow", Default::default()).unwrap();
    let opts =
        device_sim::client::mqtt_options(&c.target("acme", 1), "a:acme:slow", Some(&cert)).unwrap();
    let (app, mut app_loop) = device_sim::client::async_client(opts, 10);
    let (pause, mut paused) = tokio::sync::watch::channel(false);
    let (suback_tx, suback) = tokio::sync::oneshot::channel();
    let received = Arc::new(AtomicUsize::new(0));
    let payloads = Arc::new(Mutex::new(HashSet::new()));
    let (r, p) = (received.clone(), payloads.clone());
    tokio::spawn(async move {
        let mut suback_tx = Some(suback_tx);
        loop {
            while *paused.borrow_and_update() {
                if paused.changed().await.is_err() {
                    return;
                }
            }
            match app_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(m))) => {
                    let n: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                    p.lock().unwrap().insert(n);
                    r.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = suback_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                // Closed (the end of the test): what it got is counted.
                Err(_) => return,
            }
        }
    });
    app.subscribe(EVENTS, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(WAIT, suback).await.unwrap().unwrap();
    pause.send(true).unwrap();

    let cert = ca
        .issue_client("d:sensor:fast", Default::default())
        .unwrap();
    let opts =
        device_sim::client::mqtt_options(&c.target("acme", 0), "d:acme:sensor:fast", Some(&cert))
            .unwrap();
    let (dev, mut dev_loop) = device_sim::client::async_client(opts, 100);
    let acked = Arc::new(AtomicUsize::new(0));
    let a = acked.clone();
    tokio::spawn(async move {
        loop {
            match dev_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::spawn(async move {
        for i in 0..n {
            if dev
                .publish(
                    "iot-2/evt/n/fmt/txt",
                    QoS::AtLeastOnce,
                    false,
                    i.to_string(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    SlowPath {
        pause,
        acked,
        received,
        payloads,
    }
}

/// Waits until `count` stops growing (nothing for `quiet`) or reaches `n` (at most 60 s);
/// its value then.
async fn until_stalled(count: &AtomicUsize, n: usize, quiet: Duration) -> usize {
    let mut last = (0, tokio::time::Instant::now());
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = count.load(Ordering::SeqCst);
        if now == n {
            break;
        }
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        } else if last.1.elapsed() > quiet {
            break;
        }
    }
    count.load(Ordering::SeqCst)
}

/// Cross-node flow control (docs/cluster-messages.md, *Flow control across nodes*): an
/// application on node 2 that stops reading holds a device's QoS 1 publishes on node 1
/// — the device's acknowledged count stays within a bound of what the application has
/// received — and once it reads again, every acknowledged message arrives. Bounds on
/// counts only: a loaded machine makes it slower, not different.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_on_another_node_slows_the_publishers() {
    const N: usize = 10_000;
    // Far below N; above the subscriber's window (1,000) plus what the publisher gets
    // acknowledged while the pressure travels to its node. Without flow control across
    // nodes the publisher is acknowledged all N while nothing is read, and the
    // subscriber's queue (4,096 while connected) drops the oldest.
    const BOUND: usize = 4_000;
    let c = Cluster::start(2, &["acme"]).await;
    let p = slow_path(&c, N).await;
    // The largest lead of the acknowledgements over the deliveries, sampled throughout.
    let lead = Arc::new(AtomicUsize::new(0));
    let (a, r, l) = (p.acked.clone(), p.received.clone(), lead.clone());
    let sampler = tokio::spawn(async move {
        loop {
            // Deliveries first: a delivery is never counted before its acknowledgement.
            let got = r.load(Ordering::SeqCst);
            let ack = a.load(Ordering::SeqCst);
            l.fetch_max(ack.saturating_sub(got), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    // Paused: the acknowledgements stop growing, or reach N. (The poll under way when
    // it paused may have read one.)
    let held = until_stalled(&p.acked, N, Duration::from_millis(1500)).await;
    let read = p.received.load(Ordering::SeqCst);
    assert!(
        held > 0 && held <= read + BOUND,
        "{held} of {N} acknowledged while the subscriber on another node read {read}"
    );

    // Reading again: every message arrives, and every one is acknowledged.
    p.pause.send(false).unwrap();
    let all = tokio::time::Instant::now() + Duration::from_secs(120);
    while (p.received.load(Ordering::SeqCst) < N || p.acked.load(Ordering::SeqCst) < N)
        && tokio::time::Instant::now() < all
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampler.abort();
    let got = p.payloads.lock().unwrap().clone();
    let missing: Vec<usize> = (0..N).filter(|i| !got.contains(i)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {N} acknowledged messages never arrived (first: {missing:?}); {} deliveries",
        N - got.len(),
        p.received.load(Ordering::SeqCst)
    );
    assert_eq!(p.acked.load(Ordering::SeqCst), N);
    let lead = lead.load(Ordering::SeqCst);
    assert!(lead <= BOUND, "acknowledged {lead} ahead of the deliveries");
    eprintln!("held at {held} acknowledged; largest lead {lead}");

    // Node 1 counted holding its publishers for node 2.
    let text = c.nodes[0].server.api().0.metrics().await.unwrap();
    let throttled = metric(&text, "certmq_cluster_throttled_total", &["node=\"n1\""]);
    assert!(throttled.unwrap_or(0.0) >= 1.0, "{text}");
}

/// Sends a signal to a process (SIGSTOP/SIGCONT to freeze a node).
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// A node frozen with SIGSTOP, thawed when dropped (a failed assertion included).
struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// A node behind that stops reporting (frozen: it neither routes nor says anything) does
/// not hold the other nodes' publishers for longer than the hold's 2 s: the publisher
/// held for it goes on and has every message acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_held_for_a_node_that_stops_reporting_go_on() {
    const N: usize = 6_000;
    let c = Cluster::start(2, &["acme"]).await;
    let p = slow_path(&c, N).await;
    let held = until_stalled(&p.acked, N, Duration::from_millis(1500)).await;
    assert!(held < N, "not held: {held} of {N} acknowledged");
    let frozen = Frozen(c.nodes[1].server.pid());
    signal(frozen.0, "-STOP");
    // Longer than the hold lasts after the last report (2 s).
    let acked = until_stalled(&p.acked, N, Duration::from_secs(6)).await;
    assert_eq!(acked, N, "still held with node 2 silent");
    // (Thawed, node 2 is still behind, and says so: the hold comes back.)
    let text = c.nodes[0].server.api().0.metrics().await.unwrap();
    drop(frozen);
    assert_eq!(
        metric(&text, "certmq_cluster_holds", &["node=\"n1\""]),
        Some(0.0),
        "{text}"
    );
}

/// Flow control across nodes counts each copy of a message for the subscribers it is
/// routed to: a node with a plain subscriber and a shared group's member on the same
/// topics gets two copies (one per NATS subscription), each delivered once. Counting a
/// copy for both would leave the plain subscriber's window full for good, and stop
/// the routing on that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_shared_subscribers_on_one_node_get_everything() {
    const N: usize = 3_000;
    let c = Cluster::start(2, &["acme"]).await;
    let mut plain = c.connect("acme", 1, "a:plain", "a:acme:plain").await;
    plain.subscribe(EVENTS).await;
    let mut member = c.connect("acme", 1, "a:member", "a:acme:member").await;
    member.subscribe(&format!("$share/g/{EVENTS}")).await;
    let dev = c.connect("acme", 0, "d:sensor:d", "d:acme:sensor:d").await;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            dev.client
                .publish(
                    "iot-2/evt/n/fmt/txt",
                    QoS::AtLeastOnce,
                    false,
                    i.to_string(),
                )
                .await
                .unwrap();
        }
        dev
    });
    for (name, sub) in [("plain", &mut plain), ("shared", &mut member)] {
        let mut got = HashSet::new();
        while got.len() < N {
            let Some((_, p)) = sub.next_publish(Duration::from_secs(20)).await else {
                break;
            };
            got.insert(String::from_utf8(p).unwrap());
        }
        assert_eq!(got.len(), N, "{name} subscriber");
    }
    drop(publisher.await.unwrap());
}
