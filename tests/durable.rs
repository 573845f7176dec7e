//! Message state across restarts, with the real binary killed by SIGKILL: retained
//! messages and the queues of persistent sessions survive; deleting an org purges them.

mod support;

use std::time::Duration;

use device_sim::client;
use reqwest::Method;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use support::{Org, Server};

const CMD: &str = "iot-2/type/lock/id/door1/cmd/unlock/fmt/json";

/// A client whose CONNACK said `session_present`, with its event loop running.
struct Session {
    client: AsyncClient,
    session_present: bool,
    rx: tokio::sync::mpsc::UnboundedReceiver<Packet>,
}

/// Connects `client_id` (with a certificate for `identity`), clean or persistent.
async fn connect(org: &Org, identity: &str, client_id: &str, clean: bool) -> Session {
    let cert = org.cert(identity);
    let mut opts = client::mqtt_options(&org.target(), client_id, Some(&cert)).expect("options");
    opts.set_clean_session(clean);
    let (client, mut eventloop): (AsyncClient, EventLoop) = client::async_client(opts, 200);
    let session_present = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                    return ack.session_present;
                }
                Ok(_) => {}
                Err(e) => panic!("{client_id} could not connect: {e:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(p) = event {
                let _ = tx.send(p);
            }
        }
    });
    Session {
        client,
        session_present,
        rx,
    }
}

impl Session {
    /// Waits for the next packet matching `f`.
    async fn next<T>(
        &mut self,
        wait: Duration,
        mut f: impl FnMut(Packet) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) => {
                    if let Some(t) = f(p) {
                        return Some(t);
                    }
                }
                _ => return None,
            }
        }
    }

    async fn publish(&mut self, wait: Duration) -> Option<rumqttc::Publish> {
        self.next(wait, |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.next(Duration::from_secs(5), |p| {
            matches!(p, Packet::SubAck(_)).then_some(())
        })
        .await
        .expect("SUBACK");
    }

    /// Publishes QoS 1 messages and waits for every PUBACK.
    async fn publish_acked(&mut self, topic: &str, payloads: &[Vec<u8>], retain: bool) {
        for p in payloads {
            self.client
                .publish(topic, QoS::AtLeastOnce, retain, p.clone())
                .await
                .expect("publish");
        }
        let mut acked = 0;
        while acked < payloads.len() {
            self.next(Duration::from_secs(10), |p| {
                matches!(p, Packet::PubAck(_)).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("only {acked} of {} PUBACKs", payloads.len()));
            acked += 1;
        }
    }

    async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_commands_survive_sigkill_right_after_the_last_puback() {
    let server = Server::start();
    let org = Org::create(&server, "acme").await;

    // The device subscribes with a persistent session, then goes offline.
    let mut door = connect(&org, "d:lock:door1", "d:acme:lock:door1", false).await;
    assert!(!door.session_present);
    door.subscribe("iot-2/cmd/+/fmt/+", QoS::AtLeastOnce).await;
    door.disconnect().await;

    // The application sends 100 commands; the broker dies right after the last PUBACK.
    let mut app = connect(&org, "a:ops", "a:acme:ops", true).await;
    let commands: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("{{\"n\":{i}}}").into_bytes())
        .collect();
    app.publish_acked(CMD, &commands, false).await;
    let server = server.restart_hard();

    let org = Org {
        mqtt: server.mqtt,
        ..org
    };
    let mut door = connect(&org, "d:lock:door1", "d:acme:lock:door1", false).await;
    assert!(door.session_present, "the session survived the restart");
    for (i, want) in commands.iter().enumerate() {
        let p = door
            .publish(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("command {i} of 100 lost"));
        assert_eq!(p.topic, "iot-2/cmd/unlock/fmt/json");
        assert_eq!(&p.payload[..], &want[..], "in order");
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    assert!(
        door.publish(Duration::from_millis(500)).await.is_none(),
        "each exactly once"
    );
    // Acknowledged deliveries are gone: a reconnect gets nothing again.
    door.disconnect().await;
    let mut door = connect(&org, "d:lock:door1", "d:acme:lock:door1", false).await;
    assert!(door.session_present);
    assert!(door.publish(Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retained_messages_survive_sigkill_and_can_be_listed_and_removed() {
    let server = Server::start();
    let org = Org::create(&server, "acme").await;
    let mut dev = connect(&org, "d:sensor:s1", "d:acme:sensor:s1", true).await;
    dev.publish_acked(
        "iot-2/evt/state/fmt/json",
        &[b"{\"on\":true}".to_vec()],
        true,
    )
    .await;
    let server = server.restart_hard();
    let org = Org {
        mqtt: server.mqtt,
        ..org
    };

    // A clean subscriber gets it from the engine, a persistent one from the state.
    for clean in [true, false] {
        let mut app = connect(&org, "a:dash", "a:acme:dash", clean).await;
        app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtLeastOnce)
            .await;
        let p = app
            .publish(Duration::from_secs(5))
            .await
            .expect("retained message after the restart");
        assert_eq!(p.topic, "iot-2/type/sensor/id/s1/evt/state/fmt/json");
        assert_eq!(&p.payload[..], b"{\"on\":true}");
        assert!(p.retain);
        app.disconnect().await;
    }

    let api = server.api();
    let (status, list) = api.call(Method::GET, "/orgs/acme/retained", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        list[0]["topic"],
        "iot-2/type/sensor/id/s1/evt/state/fmt/json"
    );
    assert_eq!(list[0]["bytes"], 11);
    let (status, _) = api
        .call(
            Method::DELETE,
            "/orgs/acme/retained?topic=iot-2/type/%2B/id/s1",
            None,
        )
        .await;
    assert_eq!(status, 400, "a filter is not a topic");
    let path = "/orgs/acme/retained?topic=iot-2/type/sensor/id/s1/evt/state/fmt/json";
    let (status, body) = api.call(Method::DELETE, path, None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = api.call(Method::DELETE, path, None).await;
    assert_eq!(status, 404);
    let mut app = connect(&org, "a:dash", "a:acme:dash", true).await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtLeastOnce)
        .await;
    assert!(
        app.publish(Duration::from_millis(500)).await.is_none(),
        "removed"
    );
    // And it stays removed across another restart.
    let server = server.restart_hard();
    let (_, list) = server
        .api()
        .call(Method::GET, "/orgs/acme/retained", None)
        .await;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_org_created_again_with_the_same_id_starts_empty() {
    let server = Server::start();
    let org = Org::create(&server, "acme").await;
    let mut door = connect(&org, "d:lock:door1", "d:acme:lock:door1", false).await;
    door.subscribe("iot-2/cmd/+/fmt/+", QoS::AtLeastOnce).await;
    door.disconnect().await;
    let mut app = connect(&org, "a:ops", "a:acme:ops", true).await;
    app.publish_acked(CMD, &[b"secret".to_vec()], false).await;
    app.disconnect().await;
    let mut other = connect(&org, "d:lock:door2", "d:acme:lock:door2", true).await;
    other
        .publish_acked("iot-2/evt/code/fmt/txt", &[b"1234".to_vec()], true)
        .await;
    other.disconnect().await;

    let api = server.api();
    let (status, body) = api.call(Method::DELETE, "/orgs/acme", None).await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let org = Org::create(&server, "acme").await;
    let mut door = connect(&org, "d:lock:door1", "d:acme:lock:door1", false).await;
    assert!(!door.session_present, "the old tenant's session is gone");
    door.subscribe("iot-2/cmd/+/fmt/+", QoS::AtLeastOnce).await;
    assert!(
        door.publish(Duration::from_millis(500)).await.is_none(),
        "no old command"
    );
    let mut app = connect(&org, "a:ops", "a:acme:ops", true).await;
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtLeastOnce)
        .await;
    assert!(
        app.publish(Duration::from_millis(500)).await.is_none(),
        "no old retained"
    );
    let (_, list) = api.call(Method::GET, "/orgs/acme/retained", None).await;
    assert_eq!(list, serde_json::json!([]));
    // Nor after a restart (nothing of the old org is left on disk).
    let server = server.restart_hard();
    let org = Org {
        mqtt: server.mqtt,
        ..org
    };
    let door = connect(&org, "d:lock:door1", "d:acme:lock:door1", false).await;
    assert!(
        door.session_present,
        "the new tenant's own session survives"
    );
    let (_, list) = server
        .api()
        .call(Method::GET, "/orgs/acme/retained", None)
        .await;
    assert_eq!(list, serde_json::json!([]));
}

/// A raw MQTT 3.1.1 connection over mTLS, for exchanges a client library does not let
/// a test stop halfway (a QoS 2 publish between PUBREC and PUBREL).
struct Raw(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl Raw {
    async fn connect(org: &Org, identity: &str, client_id: &str, clean: bool) -> (Raw, bool) {
        use tokio::io::AsyncWriteExt;
        let cert = org.cert(identity);
        let target = org.target();
        let config = client::tls_config(&target, Some(&cert)).expect("tls config");
        let tcp = tokio::net::TcpStream::connect(org.mqtt).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from(target.sni.clone()).expect("sni");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("tls");
        let mut raw = Raw(tls);
        let mut body = vec![
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            if clean { 2 } else { 0 },
            0,
            60,
        ];
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        raw.send(0x10, &body).await;
        let (header, ack) = raw.read().await;
        assert_eq!(header, 0x20, "CONNACK");
        assert_eq!(ack[1], 0, "accepted");
        raw.0.flush().await.expect("flush");
        (raw, ack[0] & 1 == 1)
    }

    async fn send(&mut self, header: u8, body: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut packet = vec![header];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            packet.push(b);
            if len == 0 {
                break;
            }
        }
        packet.extend_from_slice(body);
        self.0.write_all(&packet).await.expect("write");
    }

    /// The next packet: fixed-header byte and body.
    async fn read(&mut self) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let read = async {
            let header = self.0.read_u8().await?;
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let b = self.0.read_u8().await?;
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0; len];
            self.0.read_exact(&mut body).await?;
            std::io::Result::Ok((header, body))
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a packet in time")
            .expect("read")
    }

    async fn publish_qos2(&mut self, topic: &str, pkid: u16, payload: &[u8], dup: bool) {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(payload);
        self.send(if dup { 0x3c } else { 0x34 }, &body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_qos2_message_in_flight_across_sigkill_is_delivered_exactly_once() {
    let server = Server::start();
    let org = Org::create(&server, "acme").await;
    let mut door = connect(&org, "d:lock:door1", "d:acme:lock:door1", false).await;
    door.subscribe("iot-2/cmd/+/fmt/+", QoS::ExactlyOnce).await;
    door.disconnect().await;

    // PUBLISH QoS 2 → PUBREC, then the broker dies before the PUBREL.
    let (mut app, _) = Raw::connect(&org, "a:ops", "a:acme:ops", false).await;
    app.publish_qos2(CMD, 7, b"once", false).await;
    assert_eq!(app.read().await, (0x50, vec![0, 7]), "PUBREC");
    let server = server.restart_hard();
    let org = Org {
        mqtt: server.mqtt,
        ..org
    };

    let (mut app, present) = Raw::connect(&org, "a:ops", "a:acme:ops", false).await;
    assert!(present, "the publisher's session survived");
    // A resend of the PUBLISH is recognised as the same message...
    app.publish_qos2(CMD, 7, b"once", true).await;
    assert_eq!(app.read().await, (0x50, vec![0, 7]), "PUBREC again");
    // ...and the PUBREL completes the exchange the broker had before it died.
    app.send(0x62, &[0, 7]).await;
    assert_eq!(app.read().await, (0x70, vec![0, 7]), "PUBCOMP");

    let mut door = connect(&org, "d:lock:door1", "d:acme:lock:door1", false).await;
    assert!(door.session_present);
    let p = door
        .publish(Duration::from_secs(5))
        .await
        .expect("the command");
    assert_eq!(&p.payload[..], b"once");
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert!(
        door.publish(Duration::from_secs(1)).await.is_none(),
        "exactly once"
    );
}

/// The broker's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_bounded_when_clients_try_to_exceed_the_limits() {
    let server = Server::start();
    let org = Org::create(&server, "acme").await;
    let before = rss_kib(server.pid());

    // 200 × 1 MB retained, twice: the 64 MiB default takes 67, refuses the rest.
    let payload = vec![b'x'; 1_000_000];
    let dev = connect(&org, "d:sensor:s1", "d:acme:sensor:s1", true).await;
    let flood = |dev: Session, round: usize| {
        let payload = payload.clone();
        let org = &org;
        async move {
            let mut dev = dev;
            let (mut stored, mut refused) = (0, 0);
            for i in 0..200 {
                dev.client
                    .publish(
                        format!("iot-2/evt/r{round}e{i}/fmt/bin"),
                        QoS::AtLeastOnce,
                        true,
                        payload.clone(),
                    )
                    .await
                    .expect("publish");
                let acked = dev
                    .next(Duration::from_secs(5), |p| match p {
                        Packet::PubAck(_) => Some(true),
                        Packet::Disconnect => Some(false),
                        _ => None,
                    })
                    .await
                    .unwrap_or(false);
                if acked {
                    stored += 1;
                } else {
                    refused += 1;
                    dev = connect(org, "d:sensor:s1", "d:acme:sensor:s1", true).await;
                }
            }
            (dev, stored, refused)
        }
    };
    let (d, stored, refused) = flood(dev, 0).await;
    assert_eq!((stored, refused), (67, 133));
    let after_first = rss_kib(server.pid());
    let (_d, stored, refused) = flood(d, 1).await;
    assert_eq!((stored, refused), (0, 200), "the org is at its limit");
    let after_retained = rss_kib(server.pid());

    // 20,000 distinct subscriptions made and dropped, 50 at a time.
    let mut app = connect(&org, "a:churn", "a:acme:churn", true).await;
    for round in 0..400 {
        let filters: Vec<String> = (0..50)
            .map(|i| format!("iot-2/type/t/id/d{}/evt/+/fmt/+", round * 50 + i))
            .collect();
        app.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
            )
            .await
            .expect("subscribe");
        app.next(Duration::from_secs(5), |p| {
            matches!(p, Packet::SubAck(_)).then_some(())
        })
        .await
        .expect("SUBACK");
        for f in &filters {
            app.client.unsubscribe(f).await.expect("unsubscribe");
        }
        for _ in &filters {
            app.next(Duration::from_secs(5), |p| {
                matches!(p, Packet::UnsubAck(_)).then_some(())
            })
            .await
            .expect("UNSUBACK");
        }
    }
    let after_churn = rss_kib(server.pid());
    eprintln!(
        "RSS: {before} KiB at start, {after_first} KiB after a 200 MB retained flood, \
         {after_retained} KiB after a second one, {after_churn} KiB after 20,000 \
         subscriptions churned"
    );
    // 67 MB of retained payloads are held (and cached by the store): bounded by the
    // limit, not by what the client sent — a second 200 MB flood adds nothing.
    assert!(
        after_retained.saturating_sub(after_first) < 32 * 1024,
        "a refused flood grew RSS by {} KiB",
        after_retained - after_first
    );
    // Churned subscriptions leave nothing behind (rumqttd kept ~6.5 KiB per filter).
    assert!(
        after_churn.saturating_sub(after_retained) < 16 * 1024,
        "20,000 churned subscriptions grew RSS by {} KiB",
        after_churn - after_retained
    );
}
