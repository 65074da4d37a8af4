//! The JSON `data` attribute of a row event (SPEC section 2), written straight into the
//! event's buffer: `op`, the relation's head (from its `Shape`), `key`, `before`, `after`,
//! `unchanged` and `actor`, plus `cascade` and `restart_identity` for a TRUNCATE. The entity
//! key is written once for both `data.key` and the CloudEvents subject.
//!
//! The TOAST rule lives here: an unchanged TOASTed value the server did not send is taken from
//! the old row when the change carries one (REPLICA IDENTITY FULL), else left out of `after`
//! and named in `unchanged`.

use super::draft::{BuildError, Op};
use super::json::{write_str, write_str_array};
use super::shape::{Column, Shape};
use crate::decode::pgoutput::{Datum, OldKind, Tuple};

/// The `data` of one row change of `shape` (`old`, `new` or both, as the op carries them) and
/// its CloudEvents subject `{schema}.{table}/{key}`. `capacity` is what `data` is allocated
/// with, so that it is allocated once.
pub(super) fn row(
    shape: &Shape,
    op: Op,
    old: Option<&(OldKind, Tuple)>,
    new: Option<&Tuple>,
    actor: Option<&[u8]>,
    capacity: usize,
) -> Result<(String, Vec<u8>), BuildError> {
    let width = shape.columns.len();
    for t in old.map(|(_, t)| t).into_iter().chain(new) {
        if t.len() != width {
            return Err(BuildError::Protocol(format!(
                "table {}: tuple has {} columns, Relation has {width}",
                shape.qualified,
                t.len()
            )));
        }
    }
    let mut data = Vec::with_capacity(capacity);
    data.extend_from_slice(b"{\"op\":\"");
    data.extend_from_slice(op.as_str().as_bytes());
    data.push(b'"');
    data.extend_from_slice(&shape.data_head);
    data.extend_from_slice(b"\"key\":{");
    let ce_subject = write_key(shape, op, old, new, &mut data)?;
    data.extend_from_slice(b"},\"before\":");
    write_before(shape, op, old, new, &mut data)?;
    data.extend_from_slice(b",\"after\":");
    let unchanged = write_after(shape, old, new, &mut data)?;
    data.extend_from_slice(b",\"unchanged\":");
    write_str_array(unchanged.iter().map(|&i| shape.columns[i].name.as_str()), &mut data);
    data.extend_from_slice(b",\"actor\":");
    write_actor(actor, &mut data);
    data.push(b'}');
    Ok((ce_subject, data))
}

/// The `data` of a TRUNCATE of `shape`'s table.
pub(super) fn truncate(shape: &Shape, cascade: bool, restart_identity: bool, actor: Option<&[u8]>) -> Vec<u8> {
    let mut data = b"{\"op\":\"truncate\"".to_vec();
    data.extend_from_slice(&shape.data_head);
    data.extend_from_slice(b"\"key\":null,\"before\":null,\"after\":null,\"unchanged\":[],\"actor\":");
    write_actor(actor, &mut data);
    data.extend_from_slice(format!(",\"cascade\":{cascade},\"restart_identity\":{restart_identity}}}").as_bytes());
    data
}

/// The transaction's `walguard.actor` claim, already JSON, or `null`.
fn write_actor(actor: Option<&[u8]>, out: &mut Vec<u8>) {
    match actor {
        Some(actor) => out.extend_from_slice(actor),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes the entity key's columns into `data.key`, from the new row, else the old one, and
/// returns the CloudEvents subject `{schema}.{table}/{key values joined by ,}`.
fn write_key(
    shape: &Shape,
    op: Op,
    old: Option<&(OldKind, Tuple)>,
    new: Option<&Tuple>,
    data: &mut Vec<u8>,
) -> Result<String, BuildError> {
    let text = |t: &Tuple, i: usize| match &t[i] {
        Datum::Text(b) => Some(b.clone()),
        _ => None,
    };
    let mut ce_subject = String::with_capacity(shape.qualified.len() + 24);
    ce_subject.push_str(&shape.qualified);
    ce_subject.push('/');
    for (n, &i) in shape.key.iter().enumerate() {
        let value = new
            .and_then(|t| text(t, i))
            .or_else(|| old.and_then(|(_, t)| text(t, i)));
        let Some(value) = value else {
            if new.is_some_and(|t| t[i] == Datum::Null) {
                // A NULL key value in a new row: legal for a configured key.
                data.extend_from_slice(if n == 0 { b"" } else { b"," });
                write_str(&shape.columns[i].name, data);
                data.extend_from_slice(b":null");
                if n > 0 {
                    ce_subject.push(',');
                }
                continue;
            }
            return Err(BuildError::KeyUnavailable {
                table: shape.qualified.clone(),
                op: op.as_str(),
                column: shape.columns[i].name.clone(),
                identity: shape.identity,
            });
        };
        if n > 0 {
            data.push(b',');
            ce_subject.push(',');
        }
        write_str(&shape.columns[i].name, data);
        data.push(b':');
        write_value(shape, i, &value, data)?;
        ce_subject.push_str(&String::from_utf8_lossy(&value));
    }
    Ok(ce_subject)
}

/// `before`: the old row as the change carries it (all columns under FULL, the replica
/// identity's under a key tuple), else `null`.
fn write_before(
    shape: &Shape,
    op: Op,
    old: Option<&(OldKind, Tuple)>,
    new: Option<&Tuple>,
    out: &mut Vec<u8>,
) -> Result<(), BuildError> {
    match (old, new) {
        (Some((OldKind::Full, t)), _) => write_row(shape, t, |_| true, None, out, &mut Vec::new()),
        (Some((OldKind::Key, t)), _) => write_row(shape, t, |c| c.identity, None, out, &mut Vec::new()),
        // UPDATE under DEFAULT/INDEX with the key unchanged: the old key is the new key.
        (None, Some(t)) if op == Op::Update => write_row(shape, t, |c| c.identity, None, out, &mut Vec::new()),
        _ => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// `after`: the new row, unchanged TOAST values filled from the old row; returns the columns
/// it had to leave out, for `unchanged`.
fn write_after(
    shape: &Shape,
    old: Option<&(OldKind, Tuple)>,
    new: Option<&Tuple>,
    out: &mut Vec<u8>,
) -> Result<Vec<usize>, BuildError> {
    let mut unchanged = Vec::new();
    match new {
        Some(t) => {
            let fill = old.map(|(_, o)| o);
            write_row(shape, t, |_| true, fill, out, &mut unchanged)?;
        }
        None => out.extend_from_slice(b"null"),
    }
    Ok(unchanged)
}

fn write_value(shape: &Shape, i: usize, value: &[u8], out: &mut Vec<u8>) -> Result<(), BuildError> {
    if shape.columns[i].hashed {
        let hasher = shape.hasher.as_ref().ok_or_else(|| {
            BuildError::Protocol(format!(
                "table {}: column {} is to be hashed but no hashing.salt_file is loaded",
                shape.qualified, shape.columns[i].name
            ))
        })?;
        write_str(&hasher.hash(value), out);
        return Ok(());
    }
    shape.columns[i]
        .kind
        .write_json(value, out)
        .map_err(|source| BuildError::Value {
            table: shape.qualified.clone(),
            column: shape.columns[i].name.clone(),
            source,
        })
}

/// Writes the columns of `tuple` selected by `include` as a JSON object. An unchanged TOAST
/// value is taken from `fill` (the old row) when it has it, else left out and its index added
/// to `unchanged`.
fn write_row(
    shape: &Shape,
    tuple: &Tuple,
    include: impl Fn(&Column) -> bool,
    fill: Option<&Tuple>,
    out: &mut Vec<u8>,
    unchanged: &mut Vec<usize>,
) -> Result<(), BuildError> {
    out.push(b'{');
    let mut first = true;
    for (i, column) in shape.columns.iter().enumerate() {
        if !include(column) {
            continue;
        }
        let datum = match &tuple[i] {
            Datum::UnchangedToast => match fill.map(|t| &t[i]) {
                Some(d @ Datum::Text(_)) => d,
                _ => {
                    unchanged.push(i);
                    continue;
                }
            },
            d => d,
        };
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(&column.name, out);
        out.push(b':');
        match datum {
            Datum::Null => out.extend_from_slice(b"null"),
            Datum::Text(b) => write_value(shape, i, b, out)?,
            Datum::Binary(_) => {
                return Err(BuildError::Binary {
                    table: shape.qualified.clone(),
                    column: column.name.clone(),
                })
            }
            Datum::UnchangedToast => unreachable!("resolved above"),
        }
    }
    out.push(b'}');
    Ok(())
}
