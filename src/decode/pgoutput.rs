//! pgoutput protocol version 1 messages (PostgreSQL docs, "Logical Replication Message
//! Formats"; byte writers in `src/backend/replication/logical/proto.c`).
//!
//! walguard requests proto_version 1 without streaming, so transactions arrive whole and in
//! commit order, and no message carries the leading streamed-xid field.

use bytes::Bytes;

use super::cursor::Cursor;
use super::DecodeError;
use crate::lsn::Lsn;

/// Upper bound for a column count; PostgreSQL allows at most 1600 columns per table.
const MAX_COLUMNS: i16 = 1664;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        /// `K` (old key columns) or `O` (the whole old row, replica identity FULL).
        old: Option<(OldKind, Tuple)>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        kind: OldKind,
        old: Tuple,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// Start of the commit record; equals `Commit::commit_lsn`.
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01T00:00:00Z.
    pub commit_time: i64,
    pub xid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is stored.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// Empty means `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    Default,
    Nothing,
    Full,
    Index,
}

impl ReplicaIdentity {
    /// From PostgreSQL's one-letter code, the same in the Relation message and in
    /// `pg_class.relreplident`: `d`efault, `n`othing, `f`ull, `i`ndex.
    pub fn from_code(code: u8) -> Option<ReplicaIdentity> {
        match code {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (every column under FULL).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    Key,
    Full,
}

pub type Tuple = Vec<Datum>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// An unchanged TOASTed value that the server did not send.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

impl Message {
    /// Long but flat: one arm per pgoutput message tag, each reading that message's fields
    /// in wire order (the layouts in PostgreSQL's protocol-logicalrep-message-formats).
    pub fn parse(data: Bytes) -> Result<Message, DecodeError> {
        let mut c = Cursor::new(data);
        let msg = match c.u8("pgoutput message tag")? {
            b'B' => Message::Begin(Begin {
                final_lsn: Lsn(c.u64("begin final lsn")?),
                commit_time: c.i64("begin commit time")?,
                xid: c.u32("begin xid")?,
            }),
            b'C' => {
                let _flags = c.u8("commit flags")?;
                Message::Commit(Commit {
                    commit_lsn: Lsn(c.u64("commit lsn")?),
                    end_lsn: Lsn(c.u64("commit end lsn")?),
                    commit_time: c.i64("commit time")?,
                })
            }
            b'O' => Message::Origin {
                lsn: Lsn(c.u64("origin lsn")?),
                name: c.cstr("origin name")?,
            },
            b'R' => Message::Relation(relation(&mut c)?),
            b'Y' => Message::Type {
                oid: c.u32("type oid")?,
                namespace: c.cstr("type namespace")?,
                name: c.cstr("type name")?,
            },
            b'I' => {
                let relation = c.u32("insert relation")?;
                match c.u8("insert tuple tag")? {
                    b'N' => Message::Insert {
                        relation,
                        new: tuple(&mut c)?,
                    },
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "insert tuple",
                            tag,
                        })
                    }
                }
            }
            b'U' => {
                let relation = c.u32("update relation")?;
                let mut old = None;
                let mut tag = c.u8("update tuple tag")?;
                if tag == b'K' || tag == b'O' {
                    old = Some((old_kind(tag), tuple(&mut c)?));
                    tag = c.u8("update new tuple tag")?;
                }
                if tag != b'N' {
                    return Err(DecodeError::UnknownTag {
                        what: "update tuple",
                        tag,
                    });
                }
                Message::Update {
                    relation,
                    old,
                    new: tuple(&mut c)?,
                }
            }
            b'D' => {
                let relation = c.u32("delete relation")?;
                let tag = c.u8("delete tuple tag")?;
                if tag != b'K' && tag != b'O' {
                    return Err(DecodeError::UnknownTag {
                        what: "delete tuple",
                        tag,
                    });
                }
                Message::Delete {
                    relation,
                    kind: old_kind(tag),
                    old: tuple(&mut c)?,
                }
            }
            b'T' => {
                let count = c.i32("truncate relation count")?;
                if count < 0 || count as usize > c.remaining() / 4 {
                    return Err(DecodeError::Length {
                        what: "truncate relation count",
                        len: count.into(),
                    });
                }
                let flags = c.u8("truncate flags")?;
                let relations = (0..count)
                    .map(|_| c.u32("truncate relation"))
                    .collect::<Result<_, _>>()?;
                Message::Truncate {
                    relations,
                    cascade: flags & 1 != 0,
                    restart_identity: flags & 2 != 0,
                }
            }
            b'M' => {
                let flags = c.u8("message flags")?;
                let lsn = Lsn(c.u64("message lsn")?);
                let prefix = c.cstr("message prefix")?;
                let len = c.i32("message length")?;
                if len < 0 {
                    return Err(DecodeError::Length {
                        what: "message content",
                        len: len.into(),
                    });
                }
                Message::Message {
                    transactional: flags & 1 != 0,
                    lsn,
                    prefix,
                    content: c.bytes(len as usize, "message content")?,
                }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "pgoutput message",
                    tag,
                })
            }
        };
        c.finish()?;
        Ok(msg)
    }
}

fn old_kind(tag: u8) -> OldKind {
    if tag == b'O' {
        OldKind::Full
    } else {
        OldKind::Key
    }
}

fn relation(c: &mut Cursor) -> Result<Relation, DecodeError> {
    let oid = c.u32("relation oid")?;
    let namespace = c.cstr("relation namespace")?;
    let name = c.cstr("relation name")?;
    let tag = c.u8("relation replica identity")?;
    let replica_identity = ReplicaIdentity::from_code(tag).ok_or(DecodeError::UnknownTag {
        what: "replica identity",
        tag,
    })?;
    let count = column_count(c, "relation column count")?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(Column {
            key: c.u8("column flags")? & 1 != 0,
            name: c.cstr("column name")?,
            type_oid: c.u32("column type")?,
            type_modifier: c.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn column_count(c: &mut Cursor, what: &'static str) -> Result<usize, DecodeError> {
    let n = c.i16(what)?;
    // Every column takes at least one byte, so a count beyond the bytes left is garbage.
    if !(0..=MAX_COLUMNS).contains(&n) || n as usize > c.remaining() {
        return Err(DecodeError::Length { what, len: n.into() });
    }
    Ok(n as usize)
}

fn tuple(c: &mut Cursor) -> Result<Tuple, DecodeError> {
    let count = column_count(c, "tuple column count")?;
    let mut datums = Vec::with_capacity(count);
    for _ in 0..count {
        datums.push(match c.u8("tuple column kind")? {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            kind @ (b't' | b'b') => {
                let len = c.i32("tuple value length")?;
                if len < 0 {
                    return Err(DecodeError::Length {
                        what: "tuple value",
                        len: len.into(),
                    });
                }
                let value = c.bytes(len as usize, "tuple value")?;
                if kind == b't' {
                    Datum::Text(value)
                } else {
                    Datum::Binary(value)
                }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "tuple column",
                    tag,
                })
            }
        });
    }
    Ok(datums)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builders for pgoutput byte fixtures, laid out as proto.c writes them.
    pub fn begin(final_lsn: u64, time: i64, xid: u32) -> Vec<u8> {
        let mut b = vec![b'B'];
        b.extend_from_slice(&final_lsn.to_be_bytes());
        b.extend_from_slice(&time.to_be_bytes());
        b.extend_from_slice(&xid.to_be_bytes());
        b
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64, time: i64) -> Vec<u8> {
        let mut b = vec![b'C', 0];
        b.extend_from_slice(&commit_lsn.to_be_bytes());
        b.extend_from_slice(&end_lsn.to_be_bytes());
        b.extend_from_slice(&time.to_be_bytes());
        b
    }

    pub fn relation(oid: u32, ns: &str, name: &str, ident: u8, cols: &[(bool, &str, u32)]) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend_from_slice(&oid.to_be_bytes());
        for s in [ns, name] {
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        }
        b.push(ident);
        b.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for (key, name, ty) in cols {
            b.push(u8::from(*key));
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
        }
        b
    }

    pub fn tuple_bytes(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.push(b'n'),
                Some("\u{1}toast") => b.push(b'u'),
                Some(s) => {
                    b.push(b't');
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
        b
    }

    pub fn insert(rel: u32, values: &[Option<&str>]) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend_from_slice(&rel.to_be_bytes());
        b.push(b'N');
        b.extend(tuple_bytes(values));
        b
    }

    #[test]
    fn decodes_worked_example_insert() {
        // Appendix C of the reference: INSERT INTO t(id, v) VALUES (1, 'a') on relation 16385.
        let raw = [
            0x49, 0x00, 0x00, 0x40, 0x01, 0x4E, 0x00, 0x02, 0x74, 0x00, 0x00, 0x00, 0x01, 0x31, 0x74, 0x00, 0x00, 0x00,
            0x01, 0x61,
        ];
        assert_eq!(
            Message::parse(Bytes::copy_from_slice(&raw)).unwrap(),
            Message::Insert {
                relation: 16385,
                new: vec![
                    Datum::Text(Bytes::from_static(b"1")),
                    Datum::Text(Bytes::from_static(b"a"))
                ],
            }
        );
    }

    #[test]
    fn decodes_begin_commit_relation() {
        let m = Message::parse(begin(0x16B_37A0, 42, 731).into()).unwrap();
        assert_eq!(
            m,
            Message::Begin(Begin {
                final_lsn: Lsn(0x16B_37A0),
                commit_time: 42,
                xid: 731
            })
        );
        let m = Message::parse(commit(0x16B_37A0, 0x16B_37D8, 42).into()).unwrap();
        assert_eq!(
            m,
            Message::Commit(Commit {
                commit_lsn: Lsn(0x16B_37A0),
                end_lsn: Lsn(0x16B_37D8),
                commit_time: 42
            })
        );
        let m = Message::parse(relation(7, "public", "t", b'f', &[(true, "id", 23), (true, "v", 25)]).into()).unwrap();
        let Message::Relation(r) = m else { panic!() };
        assert_eq!(r.replica_identity, ReplicaIdentity::Full);
        assert_eq!(r.columns.len(), 2);
        assert_eq!(r.columns[1].name, "v");
        assert_eq!(r.columns[1].type_oid, 25);
    }

    #[test]
    fn decodes_update_delete_truncate_message() {
        let mut u = vec![b'U'];
        u.extend_from_slice(&9u32.to_be_bytes());
        u.push(b'O');
        u.extend(tuple_bytes(&[Some("1"), Some("old")]));
        u.push(b'N');
        u.extend(tuple_bytes(&[Some("1"), Some("\u{1}toast")]));
        let Message::Update { old, new, .. } = Message::parse(u.into()).unwrap() else {
            panic!()
        };
        assert_eq!(old.unwrap().0, OldKind::Full);
        assert_eq!(new[1], Datum::UnchangedToast);

        let mut d = vec![b'D'];
        d.extend_from_slice(&9u32.to_be_bytes());
        d.push(b'K');
        d.extend(tuple_bytes(&[Some("1"), None]));
        let Message::Delete { kind, old, .. } = Message::parse(d.into()).unwrap() else {
            panic!()
        };
        assert_eq!(kind, OldKind::Key);
        assert_eq!(old[1], Datum::Null);

        let mut t = vec![b'T'];
        t.extend_from_slice(&2i32.to_be_bytes());
        t.push(3);
        t.extend_from_slice(&5u32.to_be_bytes());
        t.extend_from_slice(&6u32.to_be_bytes());
        assert_eq!(
            Message::parse(t.into()).unwrap(),
            Message::Truncate {
                relations: vec![5, 6],
                cascade: true,
                restart_identity: true
            }
        );

        let mut m = vec![b'M', 1];
        m.extend_from_slice(&77u64.to_be_bytes());
        m.extend_from_slice(b"walguard.actor\0");
        m.extend_from_slice(&2i32.to_be_bytes());
        m.extend_from_slice(b"{}");
        assert_eq!(
            Message::parse(m.into()).unwrap(),
            Message::Message {
                transactional: true,
                lsn: Lsn(77),
                prefix: "walguard.actor".into(),
                content: Bytes::from_static(b"{}")
            }
        );
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = [
            begin(1, 2, 3),
            commit(1, 2, 3),
            relation(7, "public", "t", b'd', &[(true, "id", 23)]),
            insert(7, &[Some("1"), None]),
        ];
        for msg in &good {
            for cut in 0..msg.len() {
                assert!(
                    Message::parse(Bytes::copy_from_slice(&msg[..cut])).is_err(),
                    "{msg:?} cut at {cut}"
                );
            }
            let mut long = msg.clone();
            long.push(0);
            assert_eq!(Message::parse(long.into()), Err(DecodeError::Trailing(1)));
        }
        assert!(matches!(
            Message::parse(Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownTag { .. })
        ));
        // A huge column count or value length must not allocate or panic.
        let mut i = vec![b'I', 0, 0, 0, 7, b'N', 0x7F, 0xFF];
        assert!(Message::parse(i.clone().into()).is_err());
        i.truncate(6);
        i.extend_from_slice(&[0, 1, b't', 0x7F, 0xFF, 0xFF, 0xFF]);
        assert!(Message::parse(i.into()).is_err());
        // Invalid UTF-8 in a name.
        let mut r = relation(7, "public", "t", b'd', &[]);
        r[5] = 0xFF;
        assert_eq!(Message::parse(r.into()), Err(DecodeError::Utf8("relation namespace")));
    }
}
