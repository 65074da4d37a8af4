//! The hand-off between the stages that produce drafts (the WAL reader, the snapshots) and
//! the publisher: a bounded channel of batches. Both sides import it from here, so neither
//! knows the other's type (the reader does not depend on the sink). Bounded twice over
//! (`MAX_BATCH` items a batch, `QUEUED_BATCHES` batches), so backpressure from unacked
//! publishes reaches the WAL reader, which simply stops reading (G5).

use tokio::sync::mpsc;

use crate::event::Draft;
use crate::lsn::Lsn;

/// What the WAL reader hands the publisher, in WAL order.
#[derive(Debug)]
pub enum Item {
    Event(Draft),
    /// The server has sent everything before this LSN and no transaction is open.
    Position(Lsn),
}

/// Items per batch at most.
pub const MAX_BATCH: usize = 64;
/// Batches waiting in the channel at most: with `MAX_BATCH`, the drafts between the WAL
/// reader and the publisher stay bounded (G5).
pub const QUEUED_BATCHES: usize = 64;

/// Items on their way to the publisher, sent in batches: the reader flushes whenever it would
/// wait for the socket, so the publisher sees every item as soon as it would have one by one,
/// with one channel operation and at most one wake-up per socket read instead of per event.
pub struct Batcher {
    tx: mpsc::Sender<Vec<Item>>,
    items: Vec<Item>,
}

/// The publisher has stopped; it says why.
#[derive(Debug)]
pub struct PublisherGone;

impl Batcher {
    pub fn new(tx: mpsc::Sender<Vec<Item>>) -> Batcher {
        Batcher {
            tx,
            items: Vec::with_capacity(MAX_BATCH),
        }
    }

    pub async fn push(&mut self, item: Item) -> Result<(), PublisherGone> {
        self.items.push(item);
        if self.items.len() >= MAX_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Takes all of `drafts`, in order, as events.
    pub async fn push_events(&mut self, drafts: &mut Vec<Draft>) -> Result<(), PublisherGone> {
        for draft in drafts.drain(..) {
            self.push(Item::Event(draft)).await?;
        }
        Ok(())
    }

    /// Hands over what is batched (waiting while the channel is full).
    pub async fn flush(&mut self) -> Result<(), PublisherGone> {
        if self.items.is_empty() {
            return Ok(());
        }
        // The next batch is allocated at this one's size: full batches while catching up, a
        // few items at a time when live (not MAX_BATCH slots for every commit).
        let next = Vec::with_capacity(self.items.len());
        let items = std::mem::replace(&mut self.items, next);
        self.tx.send(items).await.map_err(|_| PublisherGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_batcher_hands_over_full_batches_and_on_flush_in_order() {
        let (tx, mut rx) = mpsc::channel(QUEUED_BATCHES);
        let mut batcher = Batcher::new(tx);
        for i in 0..(MAX_BATCH as u64 + 3) {
            batcher.push(Item::Position(Lsn(i))).await.unwrap();
        }
        let full = rx.try_recv().expect("a full batch goes at once");
        assert_eq!(full.len(), MAX_BATCH);
        assert!(rx.try_recv().is_err(), "the rest waits for a flush");
        batcher.flush().await.unwrap();
        batcher.flush().await.unwrap();
        let rest = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err(), "an empty flush sends nothing");
        let lsns: Vec<u64> = full
            .iter()
            .chain(&rest)
            .map(|item| match item {
                Item::Position(lsn) => lsn.0,
                Item::Event(_) => unreachable!(),
            })
            .collect();
        assert_eq!(lsns, (0..MAX_BATCH as u64 + 3).collect::<Vec<_>>());
        drop(rx);
        batcher.push(Item::Position(Lsn(0))).await.unwrap();
        assert!(batcher.flush().await.is_err(), "a stopped publisher is reported");
    }
}
