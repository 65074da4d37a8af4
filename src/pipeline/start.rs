//! Where a session starts streaming, decided from the slot's state and the stream's tail
//! (SPEC G7). Pure: the facts come in, a decision or a refusal naming the LSN range at stake
//! comes out, so every cell of the slot x tail matrix has a unit test, not only the cells an
//! end-to-end test can reach.
//!
//! | slot                         | stream empty                 | stream holds events               |
//! |------------------------------|------------------------------|-----------------------------------|
//! | missing                      | create it (its snapshot is the baseline) | refuse: changes after the stream's `pgendlsn` may be missing |
//! | not pgoutput / other database| refuse: choose another slot  | refuse: choose another slot       |
//! | `wal_status` lost            | refuse: WAL is gone          | refuse: WAL is gone               |
//! | confirmed at `S`             | start at `S` (genesis watermark) | `S` <= stream's `E`: resume at `E`; `S` > `E`: refuse, `E..S` may be missing |

use crate::error::{Error, Refusal};
use crate::lsn::Lsn;
use crate::source::catalog::{SlotInfo, WalStatus};

/// The names a refusal speaks of.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub slot: &'a str,
    pub stream: &'a str,
    pub database: &'a str,
}

/// What the session does before it streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Neither slot nor stream: create the slot; its consistent point opens the stream with a
    /// watermark and its exported snapshot is the baseline.
    CreateSlot,
    /// The slot exists and the stream is empty: events start at the slot's confirmed
    /// position, recorded by a watermark there (no baseline of what came before).
    NewStream { at: Lsn },
    /// The stream proves events up to `at` (its newest `pgendlsn`): replay from there.
    Resume { at: Lsn },
}

/// Decides where to start. `stream_confirmed` is the newest `pgendlsn` at or before the
/// verified head (`None` for an empty stream).
pub fn decide_start(
    slot: Option<&SlotInfo>,
    stream_empty: bool,
    stream_confirmed: Option<Lsn>,
    names: Names<'_>,
) -> Result<Start, Error> {
    let Names {
        slot: slot_name,
        stream,
        database,
    } = names;
    let stream_at = stream_confirmed.unwrap_or(Lsn::ZERO);
    let Some(info) = slot else {
        if stream_empty {
            return Ok(Start::CreateSlot);
        }
        return Err(Error::Refused(Refusal::LostSlot, format!(
            "replication slot {slot_name} does not exist, but stream {stream} holds events up to LSN {stream_at}: changes committed after {stream_at} may be missing from the stream. Investigate, then start over explicitly with `walguard resync`"
        )));
    };
    if info.plugin.as_deref() != Some("pgoutput") || info.database.as_deref() != Some(database) {
        return Err(Error::Refused(Refusal::ForeignSlot, format!(
            "replication slot {slot_name} is not a pgoutput slot of database {database} (plugin {:?}, database {:?}): choose another postgres.slot",
            info.plugin, info.database
        )));
    }
    if info.wal_status == Some(WalStatus::Lost) {
        return Err(Error::Refused(Refusal::LostSlot, format!(
            "replication slot {slot_name} has lost required WAL (wal_status lost): changes after {stream_at} are gone from the server; start over explicitly with `walguard resync`"
        )));
    }
    let slot_at = info.confirmed_flush.unwrap_or(Lsn::ZERO);
    if stream_empty {
        return Ok(Start::NewStream { at: slot_at });
    }
    if slot_at > stream_at {
        return Err(Error::Refused(Refusal::SlotAhead, format!(
            "replication slot {slot_name} has confirmed up to {slot_at}, but stream {stream} only proves events up to {stream_at}: changes committed between {stream_at} and {slot_at} may be missing. Investigate (was the stream replaced or another consumer using the slot?), then start over explicitly with `walguard resync`"
        )));
    }
    Ok(Start::Resume { at: stream_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: Names<'static> = Names {
        slot: "wg",
        stream: "WALGUARD",
        database: "app",
    };

    fn slot(plugin: &str, database: &str, confirmed: u64, wal_status: WalStatus) -> SlotInfo {
        SlotInfo {
            plugin: Some(plugin.into()),
            database: Some(database.into()),
            active_pid: None,
            confirmed_flush: Some(Lsn(confirmed)),
            wal_status: Some(wal_status),
            retained_bytes: None,
            safe_wal_size: None,
        }
    }

    /// `Ok(start)` or `Err((the refusal's kind, parts its message must name))`.
    type Want = Result<Start, (Refusal, &'static [&'static str])>;

    /// (case, slot, stream empty, stream's newest `pgendlsn`, want)
    type Case = (&'static str, Option<SlotInfo>, bool, Option<Lsn>, Want);

    /// Long but flat: the table of cases, one row per cell of G7's slot x tail matrix.
    #[test]
    fn every_cell_of_the_slot_by_tail_matrix() {
        let ok = slot("pgoutput", "app", 0x500, WalStatus::Reserved);
        let cases: Vec<Case> = vec![
            ("no slot, empty stream", None, true, None, Ok(Start::CreateSlot)),
            (
                "no slot, stream with events",
                None,
                false,
                Some(Lsn(0x400)),
                Err((
                    Refusal::LostSlot,
                    &["slot wg does not exist", "WALGUARD", "after 0/400", "walguard resync"],
                )),
            ),
            (
                "slot of another plugin",
                Some(slot("wal2json", "app", 0x500, WalStatus::Reserved)),
                true,
                None,
                Err((
                    Refusal::ForeignSlot,
                    &["not a pgoutput slot of database app", "wal2json", "postgres.slot"],
                )),
            ),
            (
                "slot of another database",
                Some(slot("pgoutput", "other", 0x500, WalStatus::Reserved)),
                false,
                Some(Lsn(0x500)),
                Err((Refusal::ForeignSlot, &["not a pgoutput slot of database app", "other"])),
            ),
            (
                "lost slot, empty stream",
                Some(slot("pgoutput", "app", 0x500, WalStatus::Lost)),
                true,
                None,
                Err((Refusal::LostSlot, &["lost required WAL", "walguard resync"])),
            ),
            (
                "lost slot, stream with events",
                Some(slot("pgoutput", "app", 0x500, WalStatus::Lost)),
                false,
                Some(Lsn(0x480)),
                Err((Refusal::LostSlot, &["lost required WAL", "after 0/480"])),
            ),
            (
                "slot, empty stream",
                Some(ok.clone()),
                true,
                None,
                Ok(Start::NewStream { at: Lsn(0x500) }),
            ),
            (
                "slot behind the stream",
                Some(slot("pgoutput", "app", 0x300, WalStatus::Extended)),
                false,
                Some(Lsn(0x500)),
                Ok(Start::Resume { at: Lsn(0x500) }),
            ),
            (
                "slot at the stream",
                Some(ok.clone()),
                false,
                Some(Lsn(0x500)),
                Ok(Start::Resume { at: Lsn(0x500) }),
            ),
            (
                "slot ahead of the stream",
                Some(slot("pgoutput", "app", 0x900, WalStatus::Reserved)),
                false,
                Some(Lsn(0x500)),
                Err((
                    Refusal::SlotAhead,
                    &[
                        "confirmed up to 0/900",
                        "only proves events up to 0/500",
                        "between 0/500 and 0/900",
                    ],
                )),
            ),
            (
                "slot ahead of a stream with no pgendlsn yet",
                Some(ok),
                false,
                None,
                Err((Refusal::SlotAhead, &["between 0/0 and 0/500"])),
            ),
        ];
        for (name, info, empty, confirmed, want) in cases {
            let got = decide_start(info.as_ref(), empty, confirmed, NAMES);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(e), Err((kind, parts))) => {
                    assert!(matches!(e, Error::Refused(k, _) if k == kind), "{name}: {e:?}");
                    let message = e.to_string();
                    for part in parts {
                        assert!(message.contains(part), "{name}: {part:?} missing from {message}");
                    }
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
