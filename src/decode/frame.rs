//! The CopyData payloads of a logical replication stream (PostgreSQL docs, "Streaming
//! Replication Protocol"): XLogData (`w`) carries one pgoutput message, the primary keepalive
//! (`k`) carries the walsender's position and whether it wants a reply now. Standby status
//! updates (`r`) go the other way and are encoded here too.

use bytes::{BufMut, Bytes, BytesMut};

use super::cursor::Cursor;
use super::DecodeError;
use crate::lsn::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01T00:00:00Z.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, PartialEq, Eq)]
pub enum ServerFrame {
    XLogData {
        /// Zero for messages that are not the last write of a decoding callback.
        start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    Keepalive {
        /// The walsender's `sentPtr`: everything before it has been decoded and sent.
        wal_end: Lsn,
        reply_requested: bool,
    },
    /// A tag this version does not know (PostgreSQL 19 adds `s`); ignored, never answered.
    Other(u8),
}

impl ServerFrame {
    pub fn parse(payload: Bytes) -> Result<ServerFrame, DecodeError> {
        let mut c = Cursor::new(payload);
        match c.u8("copy data tag")? {
            b'w' => {
                let start = Lsn(c.u64("xlogdata start")?);
                let wal_end = Lsn(c.u64("xlogdata wal end")?);
                let _send_time = c.i64("xlogdata send time")?;
                Ok(ServerFrame::XLogData {
                    start,
                    wal_end,
                    data: c.rest(),
                })
            }
            b'k' => {
                let wal_end = Lsn(c.u64("keepalive wal end")?);
                let _send_time = c.i64("keepalive send time")?;
                let reply = c.u8("keepalive reply flag")?;
                Ok(ServerFrame::Keepalive {
                    wal_end,
                    reply_requested: reply != 0,
                })
            }
            tag => Ok(ServerFrame::Other(tag)),
        }
    }
}

/// The payload of a standby status update (`r`, 34 bytes). `flush` is what advances the slot;
/// `apply` is reported equal to it.
pub fn standby_status_update(write: Lsn, flush: Lsn, now_unix_micros: i64, reply: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(write.0);
    b.put_u64(flush.0);
    b.put_u64(flush.0);
    b.put_i64(now_unix_micros - PG_EPOCH_UNIX_MICROS);
    b.put_u8(u8::from(reply));
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x16B_3748u64.to_be_bytes());
        w.extend_from_slice(&0x16B_3748u64.to_be_bytes());
        w.extend_from_slice(&0x0002_B51D_639A_0F40u64.to_be_bytes());
        w.extend_from_slice(b"I...");
        match ServerFrame::parse(Bytes::from(w)).unwrap() {
            ServerFrame::XLogData { start, wal_end, data } => {
                assert_eq!(start, Lsn(0x16B_3748));
                assert_eq!(wal_end, Lsn(0x16B_3748));
                assert_eq!(&data[..], b"I...");
            }
            other => panic!("{other:?}"),
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&7u64.to_be_bytes());
        k.extend_from_slice(&0u64.to_be_bytes());
        k.push(1);
        assert_eq!(
            ServerFrame::parse(Bytes::from(k)).unwrap(),
            ServerFrame::Keepalive {
                wal_end: Lsn(7),
                reply_requested: true
            }
        );
        assert_eq!(
            ServerFrame::parse(Bytes::from_static(b"s")).unwrap(),
            ServerFrame::Other(b's')
        );
    }

    #[test]
    fn truncated_frames_are_errors() {
        assert!(ServerFrame::parse(Bytes::new()).is_err());
        assert!(ServerFrame::parse(Bytes::from_static(b"w\0\0")).is_err());
        assert!(ServerFrame::parse(Bytes::from_static(b"k\0\0\0\0\0\0\0\0")).is_err());
    }

    #[test]
    fn status_update_layout() {
        let b = standby_status_update(Lsn(0x16B_37D8), Lsn(0x16B_37A0), PG_EPOCH_UNIX_MICROS + 5, true);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &0x16B_37D8u64.to_be_bytes());
        assert_eq!(&b[9..17], &0x16B_37A0u64.to_be_bytes());
        assert_eq!(&b[17..25], &0x16B_37A0u64.to_be_bytes());
        assert_eq!(&b[25..33], &5i64.to_be_bytes());
        assert_eq!(b[33], 1);
    }
}
