//! CA limits per org end to end (docs/security.md): the real `certmq` binary refuses the
//! CA upload that would overflow the TLS CertificateRequest's list of acceptable CAs,
//! and an org at the limit still completes mutual-TLS handshakes.

mod support;

use device_sim::certs::{ClientCertOptions, TestCa};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_at_the_ca_limit_still_completes_handshakes() {
    let server = Server::start();
    let api = server.api();
    api.0.create_org("acme", "acme").await.unwrap();
    // 1 KiB subjects: 80 of them would overflow the 65535-byte list.
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..80 {
        let ca = TestCa::new(&format!("CA {i:03} {}", "x".repeat(1000))).unwrap();
        let (status, body) = api
            .post_raw(
                "/orgs/acme/ca-certs",
                Some("application/x-pem-file"),
                ca.pem(),
            )
            .await;
        match status {
            201 => accepted.push(ca),
            _ => {
                refusal = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refusal.expect("80 CAs with 1 KiB subjects were all accepted");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "too_many_cas", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("60000"),
        "{body}"
    );
    let (_, cas) = api
        .call(reqwest::Method::GET, "/orgs/acme/ca-certs", None)
        .await;
    assert_eq!(cas.as_array().unwrap().len(), accepted.len());

    // Devices of the first and of the last accepted CA still connect over mutual TLS.
    let server_pem = api.0.self_signed_server_cert("acme").await.unwrap().pem;
    let target = device_sim::client::BrokerTarget {
        host: "127.0.0.1".into(),
        port: server.mqtt.port(),
        sni: format!("acme.{DOMAIN}"),
        server_ca_pem: server_pem,
    };
    for (n, ca) in [accepted.first(), accepted.last()]
        .into_iter()
        .flatten()
        .enumerate()
    {
        let cert = ca
            .issue_client(&format!("d:sensor:dev{n}"), ClientCertOptions::default())
            .unwrap();
        connect_with(&target, &format!("d:acme:sensor:dev{n}"), &cert)
            .await
            .unwrap_or_else(|e| panic!("a device of CA {n} could not connect: {e}"));
    }
}
