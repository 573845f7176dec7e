//! `certmq-sim provision` against the real binary: it never replaces a CA without
//! `force`, and `server.pem` is the chain the org actually presents — a newcomer who set
//! the org up through the API walkthrough is not stranded with a certificate nobody
//! serves.

mod support;

use std::path::Path;

use device_sim::certs::ClientCert;
use device_sim::client::{self, BrokerTarget};
use device_sim::provision::{self, Options};
use support::{Org, Server, DOMAIN, TOKEN};

fn options(server: &Server, out: &Path) -> Options {
    Options {
        out: out.to_path_buf(),
        ca: None,
        ca_cn: "provision test CA".into(),
        device_type: "sensor".into(),
        devices: 2,
        app_id: "sim-app".into(),
        days: 30,
        org: Some("acme".into()),
        domain: DOMAIN.into(),
        server_cert: false,
        admin: Some((format!("http://{}", server.admin), TOKEN.into())),
        force: false,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_keeps_its_ca_and_writes_the_chain_the_org_presents() {
    let server = Server::start();
    // The API walkthrough already gave the org a CA and an active server certificate.
    let org = Org::create(&server, "acme").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&server, dir.path());

    let said = provision::run(&opts).await.expect("provision");
    assert!(
        said.iter().any(|l| l.contains("already presents")),
        "{said:?}"
    );
    assert_eq!(
        read(&dir.path().join("server.pem")),
        org.server_pem,
        "server.pem is the chain the org presents"
    );
    let (status, certs) = server
        .api()
        .call(reqwest::Method::GET, "/orgs/acme/server-certs", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        certs.as_array().map(Vec::len),
        Some(1),
        "no extra server cert"
    );

    // A provisioned device connects with what provision wrote, nothing else.
    let cert = ClientCert::from_pem(
        &read(&dir.path().join("devices/sensor-dev1.pem")),
        &read(&dir.path().join("devices/sensor-dev1.key.pem")),
    )
    .expect("device cert");
    let target = BrokerTarget {
        host: "127.0.0.1".into(),
        port: server.mqtt.port(),
        sni: format!("acme.{DOMAIN}"),
        server_ca_pem: read(&dir.path().join("server.pem")),
    };
    let opts_mqtt = client::mqtt_options(&target, "d:acme:sensor:dev1", Some(&cert)).unwrap();
    let (_c, mut el) = client::async_client(opts_mqtt, 10);
    match tokio::time::timeout(std::time::Duration::from_secs(10), el.poll()).await {
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
            assert_eq!(a.code, rumqttc::ConnectReturnCode::Success)
        }
        other => panic!("the provisioned device could not connect: {other:?}"),
    }

    // Again: the CA stays; with force it is replaced.
    let ca = read(&dir.path().join("ca.pem"));
    let key = read(&dir.path().join("ca-key.pem"));
    let said = provision::run(&opts).await.expect("provision again");
    assert!(said.iter().any(|l| l.contains("using the CA")), "{said:?}");
    assert_eq!(read(&dir.path().join("ca.pem")), ca);
    assert_eq!(read(&dir.path().join("ca-key.pem")), key);
    let forced = Options {
        force: true,
        ..opts.clone()
    };
    provision::run(&forced).await.expect("provision --force");
    assert_ne!(
        read(&dir.path().join("ca-key.pem")),
        key,
        "--force mints a new CA"
    );

    // Half a CA is never overwritten.
    std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
    let err = provision::run(&opts).await.expect_err("one file of two");
    assert!(err.to_string().contains("only one of"), "{err:#}");
    assert!(dir.path().join("ca-key.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_on_a_new_org_gives_it_an_active_server_certificate() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let said = provision::run(&options(&server, dir.path()))
        .await
        .expect("provision");
    assert!(said.iter().any(|l| l.contains("minted CA")), "{said:?}");
    assert!(
        said.iter().any(|l| l.contains("generated and activated")),
        "{said:?}"
    );
    let (_, certs) = server
        .api()
        .call(reqwest::Method::GET, "/orgs/acme/server-certs", None)
        .await;
    let active: Vec<_> = certs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["active"] == true)
        .collect();
    assert_eq!(active.len(), 1, "{certs}");
    assert_eq!(
        active[0]["pem"].as_str().map(str::trim),
        Some(read(&dir.path().join("server.pem")).trim())
    );
}
