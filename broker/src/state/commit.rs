//! Group commit: writes of message state are queued to one thread, which applies all
//! that are waiting as one batch and makes it durable with one flush (fsync). A
//! writer gets a ticket; [`Committer::committed`] says up to which ticket everything
//! is on disk, so a session holds back a PUBACK until its message's ticket is there
//! while its client keeps sending. Many messages then cost one fsync, not one each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use registry::store::{Op, Store};
use tokio::sync::watch;

/// A place in the commit order: durable once [`Committer::committed`] reaches it.
pub(crate) type Ticket = u64;

/// Most ops applied in one batch (bounds the batch's memory and latency).
const MAX_BATCH_OPS: usize = 16 * 1024;

/// Writes on their way to the writer thread, with their tickets.
type Queue = mpsc::Sender<(Ticket, Vec<Op>)>;

/// The group-commit writer. Cheap to share (`Arc`).
pub(crate) struct Committer {
    /// The last ticket handed out and the queue to the writer thread, under one lock
    /// so tickets reach the thread in order.
    queue: Mutex<(Ticket, Queue)>,
    committed: watch::Receiver<Ticket>,
    failing: Arc<AtomicBool>,
}

impl Committer {
    /// Starts the writer thread over `store`.
    pub(crate) fn start(store: Arc<dyn Store>) -> Committer {
        let (tx, rx) = mpsc::channel::<(Ticket, Vec<Op>)>();
        let (done, committed) = watch::channel(0);
        let failing = Arc::new(AtomicBool::new(false));
        let flag = failing.clone();
        let spawned = std::thread::Builder::new()
            .name("certmq-commit".into())
            .spawn(move || writer(store, rx, done, flag));
        if let Err(e) = spawned {
            tracing::error!(cause = %e, "cannot start the message-state writer thread");
        }
        Committer {
            queue: Mutex::new((0, tx)),
            committed,
            failing,
        }
    }

    /// Queues `ops`; they are durable once [`Committer::committed`] reaches the ticket.
    /// An empty batch gets the last ticket (nothing to wait for beyond earlier writes).
    pub(crate) fn submit(&self, ops: Vec<Op>) -> Ticket {
        let mut q = crate::lock(&self.queue);
        if ops.is_empty() {
            return q.0;
        }
        q.0 += 1;
        let ticket = q.0;
        if q.1.send((ticket, ops)).is_err() {
            tracing::error!("the message-state writer is gone: state is not being saved");
        }
        ticket
    }

    /// The last durable ticket, and changes to it.
    pub(crate) fn committed(&self) -> watch::Receiver<Ticket> {
        self.committed.clone()
    }

    /// Waits until `ticket` is durable.
    pub(crate) async fn wait(&self, ticket: Ticket) {
        let mut rx = self.committed.clone();
        let _ = rx.wait_for(|c| *c >= ticket).await;
    }

    /// Waits (blocking) until everything submitted so far is durable, at most `limit`.
    pub(crate) fn sync(&self, limit: Duration) {
        let ticket = crate::lock(&self.queue).0;
        let deadline = std::time::Instant::now() + limit;
        while *self.committed.borrow() < ticket && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the last write failed (the store is then retried until it works).
    pub(crate) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

fn writer(
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<(Ticket, Vec<Op>)>,
    done: watch::Sender<Ticket>,
    failing: Arc<AtomicBool>,
) {
    while let Ok((mut last, mut ops)) = rx.recv() {
        // Everything else already waiting joins this batch.
        while ops.len() < MAX_BATCH_OPS {
            match rx.try_recv() {
                Ok((t, more)) => {
                    last = t;
                    ops.extend(more);
                }
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match store.apply(ops.clone()) {
                Ok(()) => {
                    failing.store(false, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    // A PUBACK waiting for this batch stays held: acknowledging a
                    // message that is not on disk would break the guarantee.
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(cause = %e, "cannot save message state; retrying");
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        done.send_replace(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::store::SledStore;

    #[tokio::test]
    async fn tickets_become_durable_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let c = Committer::start(store.clone());
        assert_eq!(c.submit(Vec::new()), 0, "nothing to wait for");
        let tickets: Vec<Ticket> = (0..100)
            .map(|i| c.submit(vec![Op::Put(format!("k/{i:03}"), vec![i as u8])]))
            .collect();
        assert!(tickets.windows(2).all(|w| w[0] < w[1]));
        c.wait(*tickets.last().unwrap()).await;
        assert_eq!(store.scan("k/").unwrap().len(), 100);
        assert_eq!(c.submit(Vec::new()), 100);
    }
}
