//! Flow control, through real clients: publishers that keep many QoS 1 messages in
//! flight (as device SDKs do) against an application slower than them. Nothing
//! acknowledged is lost, and what the broker holds between a publisher's PUBACK and
//! the application stays bounded. (Rates are benchmarks' business, not tests'.)

mod harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::Harness;
use rumqttc::{Event, Packet, QoS};

const MESSAGES: u64 = 3000;
const PAYLOAD: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_application_slows_publishers_without_loss() {
    let h = Harness::start().await;
    let acme = h.org("acme");

    // The application: reads one message, then takes 300 µs to "process" it.
    let received = Arc::new(AtomicU64::new(0));
    let mut opts = acme.options("a:acme:slow", Some(&acme.cert("a:slow")));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (app, mut app_loop) = rumqttc::AsyncClient::new(opts, 100);
    app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    let count = received.clone();
    tokio::spawn(async move {
        loop {
            match app_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let seq = u64::from_be_bytes(p.payload[..8].try_into().unwrap());
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = got_tx.send(seq);
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = got_tx.send(u64::MAX);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    assert_eq!(got_rx.recv().await, Some(u64::MAX), "subscribed");

    // The device: QoS 1, 100 in flight, as fast as PUBACKs come back.
    let mut opts = acme.options("d:acme:sensor:fast", Some(&acme.cert("d:sensor:fast")));
    opts.set_inflight(100).set_max_packet_size(1 << 20, 1 << 20);
    let (dev, mut dev_loop) = rumqttc::AsyncClient::new(opts, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let max_held = Arc::new(AtomicU64::new(0));
    let (a, r, m) = (acked.clone(), received.clone(), max_held.clone());
    tokio::spawn(async move {
        loop {
            match dev_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let acked = a.fetch_add(1, Ordering::Relaxed) + 1;
                    let held = acked.saturating_sub(r.load(Ordering::Relaxed));
                    m.fetch_max(held, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::spawn(async move {
        for seq in 0..MESSAGES {
            let mut payload = vec![0u8; PAYLOAD];
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            if dev
                .publish("iot-2/evt/load/fmt/bin", QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });

    // Every message arrives, in order.
    for want in 0..MESSAGES {
        let got = tokio::time::timeout(Duration::from_secs(20), got_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("message {want} never arrived"));
        assert_eq!(got, Some(want), "lost or reordered");
    }
    assert_eq!(acked.load(Ordering::Relaxed), MESSAGES);
    // Without flow control the device would have all 3,000 (12 MB) acknowledged while
    // the application had a few hundred, and the engine's 10 MB log would have wrapped.
    // With it, the org's window (1,000 messages) and what the publisher had in flight.
    let held = max_held.load(Ordering::Relaxed);
    assert!(
        held < 1500,
        "the broker held {held} acknowledged messages the application did not have"
    );
}
