//! `certmq demo`: a self-contained tour. Starts the broker and admin API on free ports
//! in a temp dir, sets up an org through the real HTTP API, shows a refusal, runs a
//! small simulated fleet and an application over real mTLS, and prints a summary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use device_sim::certs::{ClientCertOptions, TestCa};
use device_sim::client::BrokerTarget;
use device_sim::fleet::{run_fleet, FleetConfig};
use device_sim::AdminClient;

use crate::app;

const DOMAIN: &str = "messaging.localhost";
const ORG: &str = "acme";

pub(crate) async fn run(devices: usize, events: usize, keep_running: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let running = app::start(&app::Options {
        data_dir: dir.path().to_path_buf(),
        mqtt: any,
        admin: any,
        mqtt_plain: None,
        domain: DOMAIN.into(),
        ..app::Options::default()
    })
    .await?;
    println!("certmq demo");
    println!(
        "  broker    mqtts://{ORG}.{DOMAIN}:{}  (TLS, client certificates required)",
        running.mqtt_addr.port()
    );
    println!("  admin API http://{}/api/v1", running.admin_addr);
    println!(
        "  console   http://{}/console  (sign in with token {})",
        running.admin_addr, running.admin_token
    );
    if keep_running {
        println!("  data dir  {} (deleted at exit)", dir.path().display());
    } else {
        println!(
            "  data dir  {} (deleted at exit; the broker and console stop with the demo: \
             `certmq demo --keep-running` keeps them up)",
            dir.path().display()
        );
    }

    let api = AdminClient::new(
        &format!("http://{}", running.admin_addr),
        &running.admin_token,
    );
    println!("\n1. set up org {ORG:?} through the admin API");
    api.create_org(ORG, "Acme Corp").await?;
    println!("   POST /orgs                                   -> 201 org {ORG}");
    let ca = TestCa::new("Acme Devices Root CA")?;
    let ca_view = api
        .upload_ca(ORG, &ca.pem(), Some("demo fleet CA"))
        .await?
        .view;
    let fingerprint = ca_view["fingerprint_sha256"].as_str().unwrap_or("");
    println!(
        "   POST /orgs/{ORG}/ca-certs                     -> 201 CA {} (sha256 {}…)",
        ca_view["subject"].as_str().unwrap_or("?"),
        fingerprint.get(..16).unwrap_or(fingerprint)
    );
    let srv = api.self_signed_server_cert(ORG).await?;
    println!(
        "   POST /orgs/{ORG}/server-certs/self-signed     -> 201 server cert for {}",
        srv.view["dns_names"][0].as_str().unwrap_or("?")
    );
    let server_pem = srv.pem.clone();
    let target = BrokerTarget {
        host: "127.0.0.1".into(),
        port: running.mqtt_addr.port(),
        sni: format!("{ORG}.{DOMAIN}"),
        server_ca_pem: srv.pem,
    };

    println!("\n2. the broker refuses what it must");
    let cert = ca.issue_client("d:sensor:dev1", ClientCertOptions::default())?;
    let refused = refused_connect(&target, "d:acme:sensor:someone-else", &cert).await;
    println!("   cert d:sensor:dev1 with client id d:acme:sensor:someone-else -> {refused}");
    let stranger =
        TestCa::new("Unknown CA")?.issue_client("d:sensor:dev1", ClientCertOptions::default())?;
    let refused = refused_connect(&target, "d:acme:sensor:dev1", &stranger).await;
    println!("   cert from a CA acme never uploaded                         -> {refused}");

    println!("\n3. bridge {ORG}'s events over mutual TLS to a partner");
    let partner = Partner::set_up(&api, &running).await?;
    let bridge = partner.bridge(&api).await?;

    println!("\n4. run {devices} devices x {events} events and an application (QoS 1)");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    let printer = tokio::spawn(async move {
        let mut shown = 0usize;
        let mut hidden = 0usize;
        while let Some(line) = rx.recv().await {
            if shown < 24 {
                println!("   {line}");
                shown += 1;
            } else {
                hidden += 1;
            }
        }
        if hidden > 0 {
            println!("   … {hidden} more lines");
        }
    });
    let mut cfg = FleetConfig::new(target, ORG);
    cfg.devices = devices;
    cfg.events_per_device = events;
    cfg.interval = Duration::from_millis(100);
    cfg.timeout = Duration::from_secs(60);
    cfg.log = Some(tx);
    let report = run_fleet(cfg, &ca).await?;
    let _ = printer.await;
    let bridged = partner.wait_for(&api, &bridge, report.events_sent).await;

    println!("\n5. summary");
    for line in report.to_string().lines() {
        println!("   {line}");
    }
    println!(
        "   bridge: {} events forwarded to the partner, {} received by its application",
        bridged.0, bridged.1
    );
    println!(
        "   total demo time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if keep_running {
        let files = write_client_files(dir.path(), &ca, &server_pem)?;
        println!(
            "\nstill serving: console http://{}/console (token {}); Ctrl-C to stop",
            running.admin_addr, running.admin_token
        );
        let port = running.mqtt_addr.port();
        let d = files.display();
        println!("\nconnect with mosquitto (certificates written to {d}):");
        println!(
            "  mosquitto_sub -h {ORG}.{DOMAIN} -p {port} --cafile {d}/server.pem \\\n      \
             --cert {d}/app.pem --key {d}/app.key -i a:{ORG}:demo-sub \\\n      \
             -t 'iot-2/type/+/id/+/evt/+/fmt/+' -v"
        );
        println!(
            "  mosquitto_pub -h {ORG}.{DOMAIN} -p {port} --cafile {d}/server.pem \\\n      \
             --cert {d}/dev1.pem --key {d}/dev1.key -i d:{ORG}:sensor:dev1 \\\n      \
             -t iot-2/evt/temp/fmt/json -m '{{\"t\":21}}'"
        );
        println!(
            "  ({ORG}.{DOMAIN} must resolve to 127.0.0.1: libnss-myhostname, or an /etc/hosts line)"
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    running.stop().await;
    if !report.is_complete() {
        bail!("the demo fleet did not complete: {:?}", report.errors);
    }
    if bridged.1 < report.events_sent {
        bail!(
            "the bridge delivered {} of {} events to the partner",
            bridged.1,
            report.events_sent
        );
    }
    println!(
        "\nok: every event reached the application and, over the bridge, the partner; every \
         command reached its device."
    );
    Ok(())
}

/// The other side of the demo's bridge: org `partner` on the same broker stands in for
/// a partner's own MQTT broker (with its own CA and server certificate), and an
/// application of it counts what arrives.
struct Partner {
    target: BrokerTarget,
    ca: TestCa,
    server_pem: String,
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const PARTNER: &str = "partner";

impl Partner {
    async fn set_up(api: &AdminClient, running: &app::Running) -> anyhow::Result<Partner> {
        api.create_org(PARTNER, "Partner Ltd").await?;
        let ca = TestCa::new("Partner Root CA")?;
        api.upload_ca(PARTNER, &ca.pem(), Some("partner CA"))
            .await?;
        let srv = api.self_signed_server_cert(PARTNER).await?;
        println!(
            "   POST /orgs (+ CA, server cert)               -> 201 org {PARTNER}, standing in for the partner's broker"
        );
        let target = BrokerTarget {
            host: "127.0.0.1".into(),
            port: running.mqtt_addr.port(),
            sni: format!("{PARTNER}.{DOMAIN}"),
            server_ca_pem: srv.pem.clone(),
        };
        // The partner's application counts what the bridge brings.
        let app_cert = ca.issue_client("a:ingest", ClientCertOptions::default())?;
        let opts = device_sim::client::mqtt_options(
            &target,
            &format!("a:{PARTNER}:ingest"),
            Some(&app_cert),
        )?;
        let (client, mut eventloop) = device_sim::client::async_client(opts, 100);
        client
            .subscribe("iot-2/type/+/id/+/evt/+/fmt/+", rumqttc::QoS::AtLeastOnce)
            .await?;
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = received.clone();
        tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Ok(Partner {
            target,
            ca,
            server_pem: srv.pem,
            received,
        })
    }

    /// The bridge of `acme` into the partner: acme's client certificate is a gateway
    /// identity the partner's CA issued, so acme's events arrive there as the events
    /// of a gateway's devices. Waits until it is connected; returns its path.
    async fn bridge(&self, api: &AdminClient) -> anyhow::Result<String> {
        let identity = self
            .ca
            .issue_client("g:bridge:acme", ClientCertOptions::default())?;
        let cert = api
            .post(
                &format!("/orgs/{ORG}/client-certs"),
                serde_json::json!({"certificate": identity.chain_pem, "private_key": identity.key_pem}),
            )
            .await?;
        println!(
            "   POST /orgs/{ORG}/client-certs                 -> 201 client cert {} (issued by the partner's CA)",
            cert["subject"].as_str().unwrap_or("?")
        );
        let bridge = api
            .post(
                &format!("/orgs/{ORG}/bridges"),
                serde_json::json!({
                    "name": "partner",
                    "url": format!("mqtts://{}:{}", self.target.host, self.target.port),
                    "server_name": self.target.sni,
                    "client_cert": cert["id"],
                    "ca_certificates": self.server_pem,
                    "client_id": format!("g:{PARTNER}:bridge:acme"),
                    "forward": [{"filter": "iot-2/type/+/id/+/evt/+/fmt/+",
                                 "topic": "iot-2/type/{type}/id/{id}/evt/{event}/fmt/{format}",
                                 "qos": 1}]
                }),
            )
            .await?;
        let path = format!(
            "/orgs/{ORG}/bridges/{}",
            bridge["id"].as_str().unwrap_or("")
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let state = loop {
            let b = api.get(&path).await?;
            if b["state"] == "connected" || Instant::now() > deadline {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "   POST /orgs/{ORG}/bridges                      -> 201 bridge to {} as {}: {}{}",
            self.target.sni,
            state["client_id"].as_str().unwrap_or("?"),
            state["state"].as_str().unwrap_or("?"),
            state["last_error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        if state["state"] != "connected" {
            bail!("the bridge did not connect");
        }
        Ok(path)
    }

    /// Waits (at most 15 s) until the bridge has forwarded `expected` events and the
    /// partner's application has them; returns (forwarded, received).
    async fn wait_for(&self, api: &AdminClient, path: &str, expected: usize) -> (u64, usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.received.load(std::sync::atomic::Ordering::Relaxed);
            let forwarded = match api.get(path).await {
                Ok(b) => b["forwarded"].as_u64().unwrap_or(0),
                Err(_) => 0,
            };
            let done = got >= expected && forwarded >= expected as u64;
            if done || Instant::now() > deadline {
                return (forwarded, got);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes what a client needs to try the running demo by hand: the chain the org
/// presents (`server.pem`), a device certificate (`dev1.pem`, `dev1.key`, identity
/// `d:sensor:dev1`) and an application certificate (`app.pem`, `app.key`, `a:demo-sub`),
/// keys readable by the owner only. Returns the directory.
fn write_client_files(
    dir: &std::path::Path,
    ca: &TestCa,
    server_pem: &str,
) -> anyhow::Result<std::path::PathBuf> {
    use registry::seal::write_private_file;
    let out = dir.join("clients");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("server.pem"), server_pem)?;
    for (name, identity) in [("dev1", "d:sensor:dev1"), ("app", "a:demo-sub")] {
        let c = ca.issue_client(identity, ClientCertOptions::default())?;
        std::fs::write(out.join(format!("{name}.pem")), &c.chain_pem)?;
        write_private_file(&out.join(format!("{name}.key")), c.key_pem.as_bytes())?;
    }
    Ok(out)
}

/// Tries to connect and describes how the broker refused (or says it did not).
async fn refused_connect(
    target: &BrokerTarget,
    client_id: &str,
    cert: &device_sim::certs::ClientCert,
) -> String {
    let opts = match device_sim::client::mqtt_options(target, client_id, Some(cert)) {
        Ok(o) => o,
        Err(e) => return format!("client setup failed: {e}"),
    };
    let (_client, mut eventloop) = device_sim::client::async_client(opts, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                    return if a.code == rumqttc::ConnectReturnCode::Success {
                        "ADMITTED (unexpected)".to_string()
                    } else {
                        format!("refused: CONNACK {:?}", a.code)
                    };
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    return format!("refused: CONNACK {code:?}")
                }
                Err(e) => return format!("refused: {}", short(&e.to_string())),
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|_| "no answer within 5 s".into())
}

/// The TLS alert name out of rumqttc's nested error text, or the text itself.
fn short(s: &str) -> String {
    match s.split_once("received fatal alert: ") {
        Some((_, alert)) => format!("TLS alert {}", alert.trim()),
        None => s.chars().take(100).collect(),
    }
}
