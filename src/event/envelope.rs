//! The NATS message of an event (SPEC section 2): the subject and the CloudEvents 1.0 payload
//! in structured mode. Reading a stored payload back is `event::stored`'s job.
//!
//! The payload is written attribute by attribute into a reused buffer, in a fixed order, so
//! the same draft at the same place in the chain always yields the same bytes; verifiers hash
//! and check those exact bytes and never re-serialize.

use sha2::{Digest, Sha256};

use super::draft::Draft;
use super::json::{write_padded, write_rfc3339_micros, write_str, write_uint};
use super::naming::subject_token;
pub use super::stored::Attributes;

pub const CONTENT_TYPE: &str = "application/cloudevents+json";
pub const HEADER_KEY_ID: &str = "Walguard-Key-Id";
pub const HEADER_SIGNATURE: &str = "Walguard-Signature";

pub type Hash = [u8; 32];

pub fn sha256(payload: &[u8]) -> Hash {
    Sha256::digest(payload).into()
}

/// Writes CloudEvents payloads for one source.
#[derive(Debug, Clone)]
pub struct Envelope {
    source: String,
    /// `source` as a JSON string, escaped once rather than for every event.
    source_json: Vec<u8>,
}

impl Envelope {
    /// `source` names the cluster (system identifier), the database and the slot.
    pub fn new(system_identifier: &str, database: &str, slot: &str) -> Self {
        let source = format!(
            "/walguard/{}/{}/{}",
            subject_token(system_identifier),
            subject_token(database),
            subject_token(slot)
        );
        let mut source_json = Vec::new();
        write_str(&source, &mut source_json);
        Envelope { source, source_json }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Serializes `draft` at stream `sequence`, chained to the payload whose hash is `prev`.
    pub fn write(&self, draft: &Draft, sequence: u64, prev: &Hash, out: &mut Vec<u8>) {
        use base64::Engine;
        out.clear();
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":\"");
        out.extend_from_slice(
            draft
                .id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"source\":");
        out.extend_from_slice(&self.source_json);
        out.extend_from_slice(b",\"type\":");
        write_str(&draft.ce_type, out);
        out.extend_from_slice(b",\"subject\":");
        write_str(&draft.ce_subject, out);
        out.extend_from_slice(b",\"time\":\"");
        write_rfc3339_micros(draft.time_micros, out);
        out.extend_from_slice(b"\",\"datacontenttype\":\"application/json\",\"sequence\":\"");
        write_padded(sequence, 20, out);
        out.extend_from_slice(b"\",\"prevhash\":\"");
        let mut b64 = [0u8; 44];
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(prev, &mut b64)
            .expect("32 bytes encode to 44");
        out.extend_from_slice(&b64[..n]);
        out.extend_from_slice(b"\",\"pglsn\":\"");
        draft.pglsn.write_to(out);
        // A string: CloudEvents integers are 32-bit signed, transaction ids are not (SPEC 2).
        out.extend_from_slice(b"\",\"pgxid\":\"");
        write_uint(draft.pgxid.into(), out);
        out.extend_from_slice(b"\",\"pgtxidx\":");
        write_uint(draft.pgtxidx.into(), out);
        if let Some(end) = draft.end {
            out.extend_from_slice(b",\"pgtxcnt\":");
            write_uint(draft.pgtxidx.into(), out);
            out.extend_from_slice(b",\"pgendlsn\":\"");
            end.write_to(out);
            out.push(b'"');
        }
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&draft.data);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::draft::{Draft, Op};
    use crate::lsn::Lsn;

    #[test]
    fn payload_golden() {
        let env = Envelope::new("7441234567890123456", "app", "walguard");
        let draft = Draft {
            op: Op::Update,
            nats_subject: "walguard.public.customers.update".into(),
            id: uuid::Uuid::nil(),
            ce_type: "public.customers.updated".into(),
            ce_subject: "public.customers/42".into(),
            time_micros: 1_795_859_291_767_852,
            pglsn: Lsn(0x16_B374_D848),
            pgxid: 731,
            pgtxidx: 2,
            end: Some(Lsn(0x16_B374_D900)),
            data: br#"{"op":"update"}"#.to_vec(),
            table: "public.customers".into(),
        };
        let mut out = Vec::new();
        env.write(&draft, 7, &[0; 32], &mut out);
        let want = concat!(
            r#"{"specversion":"1.0","id":"00000000-0000-0000-0000-000000000000","#,
            r#""source":"/walguard/7441234567890123456/app/walguard","type":"public.customers.updated","#,
            r#""subject":"public.customers/42","time":"2026-11-28T09:48:11.767852Z","#,
            r#""datacontenttype":"application/json","sequence":"00000000000000000007","#,
            r#""prevhash":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","pglsn":"16/B374D848","#,
            r#""pgxid":"731","pgtxidx":2,"pgtxcnt":2,"pgendlsn":"16/B374D900","data":{"op":"update"}}"#
        );
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        let attrs = Attributes::parse(&out).unwrap();
        assert_eq!(attrs.pgendlsn, Some(Lsn(0x16_B374_D900)));
        assert_eq!(attrs.sequence_number(), Some(7));
        assert_eq!(attrs.pgxid, 731);
        assert_eq!(
            attrs.position(),
            crate::event::Position {
                lsn: Lsn(0x16_B374_D848),
                idx: 2
            }
        );
    }

    #[test]
    fn pgxid_is_a_string_past_the_signed_32_bit_range_and_old_numbers_still_read() {
        let env = Envelope::new("7441234567890123456", "app", "walguard");
        let draft = Draft {
            op: Op::Insert,
            nats_subject: "walguard.public.t.insert".into(),
            id: uuid::Uuid::nil(),
            ce_type: "public.t.created".into(),
            ce_subject: "public.t/1".into(),
            time_micros: 0,
            pglsn: Lsn(0x100),
            pgxid: u32::MAX,
            pgtxidx: 1,
            end: Some(Lsn(0x200)),
            data: br#"{"op":"insert"}"#.to_vec(),
            table: "public.t".into(),
        };
        let mut out = Vec::new();
        env.write(&draft, 1, &[0; 32], &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains(r#""pgxid":"4294967295","#), "{text}");
        assert_eq!(Attributes::parse(&out).unwrap().pgxid, u64::from(u32::MAX));
        // A stream written before pgxid became a string.
        let old = text.replace(r#""pgxid":"4294967295""#, r#""pgxid":731"#);
        assert_eq!(Attributes::parse(old.as_bytes()).unwrap().pgxid, 731);
        for bad in [
            r#""pgxid":"""#,
            r#""pgxid":"-1""#,
            r#""pgxid":"4294967296""#,
            r#""pgxid":"7e3""#,
            r#""pgxid":-1"#,
        ] {
            let payload = text.replace(r#""pgxid":"4294967295""#, bad);
            assert!(Attributes::parse(payload.as_bytes()).is_err(), "{bad} was accepted");
        }
    }
}
