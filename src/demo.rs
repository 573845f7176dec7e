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

    println!("\n3. run {devices} devices x {events} events and an application (QoS 1)");
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

    println!("\n4. summary");
    for line in report.to_string().lines() {
        println!("   {line}");
    }
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
    println!("\nok: every event reached the application and every command its device.");
    Ok(())
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
