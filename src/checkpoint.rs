//! Which LSN is safe to confirm to PostgreSQL (G2), owned here and nowhere else.
//!
//! The flush/apply position reported to the server is the `pgendlsn` of a group (the last
//! event of a transaction, or a watermark) only when
//! - that event and every earlier one has a JetStream PubAck (acks arrive in stream order,
//!   and `Nats-Expected-Last-Sequence` means a stored message implies its predecessors are
//!   stored),
//! - the ack is older than `nats.durability_delay`, and
//! - a signed event at or after it is acknowledged and as old: walguard never confirms past
//!   an unsigned tail, so after a crash every unsigned event in the stream is still in the
//!   slot's replay and can be re-derived and compared (see `sink::publisher`).
//!
//! The reported position never moves backwards.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lsn::Lsn;

#[derive(Debug)]
struct Acked {
    end: Option<Lsn>,
    signed: bool,
    at: Instant,
}

#[derive(Debug)]
struct Inner {
    pending: VecDeque<Acked>,
    /// The newest group end that is durable but still waits for a signed successor.
    awaiting_signature: Option<Lsn>,
    confirmed: Lsn,
    received: Lsn,
    /// With `audit.require_witness`: the newest group end a checkpoint cosigned by the
    /// witness quorum covers; nothing past it is confirmed.
    witnessed: Option<Lsn>,
}

#[derive(Debug)]
pub struct Checkpoint {
    delay: Duration,
    inner: Mutex<Inner>,
}

impl Checkpoint {
    /// `start`: the position the stream already proves (its newest verified `pgendlsn`).
    pub fn new(start: Lsn, delay: Duration) -> Self {
        Checkpoint {
            delay,
            inner: Mutex::new(Inner {
                pending: VecDeque::new(),
                awaiting_signature: None,
                confirmed: start,
                received: start,
                witnessed: None,
            }),
        }
    }

    /// Confirms only what checkpoints cosigned by the witness quorum cover, from now on
    /// (`audit.require_witness`); `start` stays confirmable.
    pub fn require_witness(self) -> Self {
        {
            let mut inner = self.lock();
            inner.witnessed = Some(inner.confirmed);
        }
        self
    }

    /// A checkpoint the quorum cosigned covers the groups up to `end`.
    pub fn witnessed(&self, end: Lsn) {
        let mut inner = self.lock();
        if let Some(w) = inner.witnessed.as_mut() {
            *w = (*w).max(end);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a PubAck (or a stored message proven equal). Calls come in stream order.
    pub fn acked(&self, end: Option<Lsn>, signed: bool, at: Instant) {
        if end.is_none() && !signed {
            return;
        }
        self.lock().pending.push_back(Acked { end, signed, at });
    }

    /// Records how far the server says it has sent WAL (the `write` position).
    pub fn received(&self, lsn: Lsn) {
        let mut inner = self.lock();
        inner.received = inner.received.max(lsn);
    }

    /// The position to report as flush/apply now.
    pub fn confirmable(&self, now: Instant) -> Lsn {
        let mut inner = self.lock();
        while let Some(front) = inner.pending.front() {
            if now.saturating_duration_since(front.at) < self.delay {
                break;
            }
            let e = inner.pending.pop_front().expect("front exists");
            if let Some(end) = e.end {
                inner.awaiting_signature = Some(inner.awaiting_signature.map_or(end, |a| a.max(end)));
            }
            if e.signed {
                if let Some(end) = inner.awaiting_signature.take() {
                    inner.confirmed = inner.confirmed.max(end);
                }
            }
        }
        match inner.witnessed {
            Some(w) => inner.confirmed.min(w),
            None => inner.confirmed,
        }
    }

    /// The `write` position: what was received, never behind what is confirmed.
    pub fn written(&self) -> Lsn {
        let inner = self.lock();
        let confirmed = inner.witnessed.map_or(inner.confirmed, |w| inner.confirmed.min(w));
        inner.received.max(confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_signed_and_durable_group_ends() {
        let t0 = Instant::now();
        let cp = Checkpoint::new(Lsn(10), Duration::ZERO);
        assert_eq!(cp.confirmable(t0), Lsn(10));
        // A group end that is acked but not yet covered by a signature.
        cp.acked(Some(Lsn(20)), false, t0);
        assert_eq!(cp.confirmable(t0), Lsn(10));
        cp.acked(None, false, t0);
        cp.acked(Some(Lsn(30)), false, t0);
        cp.acked(None, true, t0);
        assert_eq!(cp.confirmable(t0), Lsn(30));
        // A signed group end confirms itself.
        cp.acked(Some(Lsn(40)), true, t0);
        assert_eq!(cp.confirmable(t0), Lsn(40));
    }

    #[test]
    fn with_require_witness_confirms_only_what_a_cosigned_checkpoint_covers() {
        let t0 = Instant::now();
        let cp = Checkpoint::new(Lsn(10), Duration::ZERO).require_witness();
        cp.acked(Some(Lsn(20)), true, t0);
        cp.acked(Some(Lsn(30)), true, t0);
        assert_eq!(cp.confirmable(t0), Lsn(10), "nothing cosigned yet");
        cp.witnessed(Lsn(20));
        assert_eq!(cp.confirmable(t0), Lsn(20));
        cp.witnessed(Lsn(15));
        assert_eq!(cp.confirmable(t0), Lsn(20), "never back");
        cp.witnessed(Lsn(40));
        assert_eq!(cp.confirmable(t0), Lsn(30), "never past what is acked and signed");
    }

    #[test]
    fn waits_for_the_durability_delay_and_never_goes_back() {
        let t0 = Instant::now();
        let cp = Checkpoint::new(Lsn(50), Duration::from_secs(2));
        cp.acked(Some(Lsn(40)), true, t0);
        assert_eq!(cp.confirmable(t0 + Duration::from_secs(3)), Lsn(50));
        cp.acked(Some(Lsn(60)), true, t0 + Duration::from_secs(3));
        assert_eq!(cp.confirmable(t0 + Duration::from_secs(4)), Lsn(50));
        assert_eq!(cp.confirmable(t0 + Duration::from_secs(5)), Lsn(60));
        cp.received(Lsn(55));
        assert_eq!(cp.written(), Lsn(60));
        cp.received(Lsn(70));
        assert_eq!(cp.written(), Lsn(70));
    }
}
