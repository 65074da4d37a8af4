//! Reads a stream back and proves it intact (G4): every message is a walguard event in
//! sequence, each names the hash of its predecessor, signatures verify and cover every event
//! (no more than 255 unsigned in a row, no unsigned tail), transactions are complete
//! (`pgtxidx` 1..n, `pgtxcnt` = n on the last) and the order `(pglsn, pgtxidx)` only grows.
//!
//! It also recomputes the Merkle tree over every message (SPEC section 8): each checkpoint
//! event must give the root of the messages before it, be signed by the log's key for its
//! origin, and carry only cosignatures that verify by the witness keys it is given; with a
//! checkpoint kept elsewhere (`--checkpoint`), the stream must extend it.
//!
//! `Verifier` is pure and fed one message at a time, so it checks streams of any length in
//! constant memory (O(log n) for the tree); `verify_stream` feeds it from JetStream.

use async_nats::jetstream;

use crate::event::borrowed::{AttributesRef, DataRef, EventRef, RowRef};
use crate::event::chain::MAX_UNSIGNED_RUN;
use crate::event::draft::Op;
use crate::event::envelope::{sha256, Hash};
use crate::event::schema::TableSchema;
use crate::event::signing::SignatureError;
use crate::event::stored::{Data, Row, StoredEvent};
use crate::event::{Keyring, Position};
use crate::lsn::Lsn;
use crate::tlog::{log_vkeys, CheckpointData, Frontier, Vkey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub sequence: u64,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sequence {}: {}", self.sequence, self.reason)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub messages: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub events: u64,
    pub watermarks: u64,
    pub transactions: u64,
    pub signed: u64,
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Lsn,
    /// Checkpoint events whose root, signature and cosignatures were checked.
    pub checkpoints: u64,
    /// The newest checkpoint: its size and how many of the given witnesses cosigned it.
    pub last_checkpoint: Option<(u64, usize)>,
    /// Events per table and op.
    pub tables: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

struct OpenGroup {
    lsn: Lsn,
    xid: u64,
    next_idx: u32,
    first_sequence: u64,
}

pub struct Verifier<'k> {
    /// Borrowed where the verifier stays on the caller's thread; owned (`into_owned`) where it
    /// moves to a thread of its own (`archive`, `restore`: verifying beside the async I/O).
    keyring: std::borrow::Cow<'k, Keyring>,
    /// Checking a range that does not start at sequence 1 (an export of part of the
    /// stream): the first message's predecessor is unknown.
    partial: bool,
    prev: Option<(u64, Hash)>,
    position: Option<Position>,
    group: Option<OpenGroup>,
    unsigned_since: Option<u64>,
    unsigned_run: u32,
    /// The newest schema event per table so far.
    schemas: std::collections::HashMap<String, TableSchema>,
    /// The Merkle tree over the messages so far; `None` for a partial range.
    tree: Option<Frontier>,
    /// Witness keys whose cosignatures are checked.
    witnesses: Vec<Vkey>,
    /// A checkpoint kept elsewhere: the stream's tree at its size must have its root.
    expected: Option<(u64, crate::tlog::Hash)>,
    pub summary: Summary,
    pub problems: Vec<Problem>,
    /// The current event's table name (a buffer, kept so that naming it allocates nothing).
    table: String,
}

const MAX_PROBLEMS: usize = 100;

/// What the schema check reads of a row, however it was read.
trait RowNames {
    /// `schema.table`, appended to `out`.
    fn write_qualified(&self, out: &mut String);
    fn key_names(&self) -> impl Iterator<Item = &str>;
    /// The columns of `before` and `after`.
    fn column_names(&self) -> impl Iterator<Item = &str>;
}

/// `schema.table`, appended to `out`.
fn qualified_into(schema: &str, table: &str, out: &mut String) {
    out.push_str(schema);
    out.push('.');
    out.push_str(table);
}

impl RowNames for Row {
    fn write_qualified(&self, out: &mut String) {
        qualified_into(&self.schema, &self.table, out);
    }
    fn key_names(&self) -> impl Iterator<Item = &str> {
        self.key.names()
    }
    fn column_names(&self) -> impl Iterator<Item = &str> {
        [&self.before, &self.after]
            .into_iter()
            .flatten()
            .flat_map(|m| m.keys().map(String::as_str))
    }
}

impl RowNames for RowRef<'_> {
    fn write_qualified(&self, out: &mut String) {
        qualified_into(&self.schema, &self.table, out);
    }
    fn key_names(&self) -> impl Iterator<Item = &str> {
        self.key.names()
    }
    fn column_names(&self) -> impl Iterator<Item = &str> {
        [&self.before, &self.after]
            .into_iter()
            .flatten()
            .flat_map(|m| m.names())
    }
}

impl<'k> Verifier<'k> {
    pub fn new(keyring: &'k Keyring) -> Self {
        Verifier {
            keyring: std::borrow::Cow::Borrowed(keyring),
            partial: false,
            prev: None,
            position: None,
            group: None,
            unsigned_since: None,
            unsigned_run: 0,
            schemas: std::collections::HashMap::new(),
            tree: Some(Frontier::new()),
            witnesses: Vec::new(),
            expected: None,
            summary: Summary::default(),
            problems: Vec::new(),
            table: String::new(),
        }
    }

    /// A verifier for a range that starts after sequence 1.
    pub fn partial(keyring: &'k Keyring) -> Self {
        Verifier {
            partial: true,
            tree: None,
            ..Verifier::new(keyring)
        }
    }

    /// The same verifier, state and all, holding its own copy of the keys, so that it can
    /// move to another thread.
    pub fn into_owned(self) -> Verifier<'static> {
        Verifier {
            keyring: std::borrow::Cow::Owned(self.keyring.into_owned()),
            partial: self.partial,
            prev: self.prev,
            position: self.position,
            group: self.group,
            unsigned_since: self.unsigned_since,
            unsigned_run: self.unsigned_run,
            schemas: self.schemas,
            tree: self.tree,
            witnesses: self.witnesses,
            expected: self.expected,
            summary: self.summary,
            problems: self.problems,
            table: self.table,
        }
    }

    /// Checks the cosignatures by these witness keys (others are ignored).
    pub fn with_witnesses(mut self, witnesses: Vec<Vkey>) -> Self {
        self.witnesses = witnesses;
        self
    }

    /// The stream must extend this checkpoint (one kept elsewhere, already verified): at its
    /// size, the recomputed root must be its root.
    pub fn extending(mut self, size: u64, root: crate::tlog::Hash) -> Self {
        self.expected = Some((size, root));
        self
    }

    fn problem(&mut self, sequence: u64, reason: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                sequence,
                reason: reason.into(),
            });
        }
    }

    /// Feeds `m`; the first problem it shows, if any (for readers that stop at the first).
    pub fn check(&mut self, m: &crate::audit::Stored) -> Result<StoredEvent, Problem> {
        let before = self.problems.len();
        let sig = m.signature.as_ref().map(|(k, s)| (k.as_str(), s.as_str()));
        let event = self.message(m.sequence, sig, &m.payload);
        self.first_problem(before, m.sequence, event)
    }

    /// `check`, the event read borrowed from `m` (`event::borrowed`): for readers that keep
    /// nothing of most events, or only their raw values.
    pub fn check_ref<'p>(&mut self, m: &'p crate::audit::Stored) -> Result<EventRef<'p>, Problem> {
        let before = self.problems.len();
        let sig = m.signature.as_ref().map(|(k, s)| (k.as_str(), s.as_str()));
        let event = self.message_ref(m.sequence, sig, &m.payload);
        self.first_problem(before, m.sequence, event)
    }

    /// What `archive` checks of a message as it copies it (SPEC section 7): its signature
    /// and the unsigned run, the chain (`prevhash` is the previous message's digest) and
    /// continuity (it is stored at the sequence it claims, after the previous one). Its
    /// content is not read: `verify --archive` and `restore` check that.
    pub fn check_chain(&mut self, m: &crate::audit::Stored) -> Result<(), Problem> {
        let before = self.problems.len();
        let sig = m.signature.as_ref().map(|(k, s)| (k.as_str(), s.as_str()));
        let expected_prev = self.start(m.sequence, sig, &m.payload);
        match crate::event::stored::claimed_chain(&m.payload) {
            Some((text, prevhash)) => {
                let claimed = crate::event::stored::sequence_number(text);
                self.check_place(m.sequence, claimed, text, prevhash, expected_prev);
            }
            None => match EventRef::parse(&m.payload) {
                Ok(e) => {
                    let a = &e.attributes;
                    self.check_place(m.sequence, a.sequence_number(), &a.sequence, &a.prevhash, expected_prev);
                }
                Err(e) => self.problem(m.sequence, format!("not a walguard event: {e}")),
            },
        }
        self.first_problem(before, m.sequence, Some(()))
    }

    fn first_problem<E>(&self, before: usize, sequence: u64, event: Option<E>) -> Result<E, Problem> {
        match (self.problems.get(before), event) {
            (Some(problem), _) => Err(problem.clone()),
            (None, Some(event)) => Ok(event),
            // A payload that does not parse is always a problem; this is the same refusal.
            (None, None) => Err(Problem {
                sequence,
                reason: "not a walguard event".into(),
            }),
        }
    }

    /// Feeds the stored message at `sequence`, with its signature headers if any; the event
    /// it holds when it reads as one (parsed here once, for readers that go on with it).
    pub fn message(&mut self, sequence: u64, signature: Option<(&str, &str)>, payload: &[u8]) -> Option<StoredEvent> {
        let expected_prev = self.start(sequence, signature, payload);
        let parsed = StoredEvent::parse(payload);
        if let Ok(StoredEvent {
            data: Data::Checkpoint(c),
            ..
        }) = &parsed
        {
            self.check_checkpoint(sequence, c);
        }
        self.grow_tree(payload);
        let event = match parsed {
            Ok(event) => event,
            Err(e) => {
                self.problem(sequence, format!("not a walguard event: {e}"));
                return None;
            }
        };
        let (row, other) = match &event.data {
            Data::Row(_, row) => (Some(row), None),
            data => (None, Some(data)),
        };
        self.follow(sequence, &event.attributes.borrowed(), expected_prev, row, other);
        Some(event)
    }

    /// `message`, the event read borrowed from `payload`: the same checks.
    pub fn message_ref<'p>(
        &mut self,
        sequence: u64,
        signature: Option<(&str, &str)>,
        payload: &'p [u8],
    ) -> Option<EventRef<'p>> {
        let expected_prev = self.start(sequence, signature, payload);
        let parsed = EventRef::parse(payload);
        if let Ok(EventRef {
            data: DataRef::Other(Data::Checkpoint(c)),
            ..
        }) = &parsed
        {
            self.check_checkpoint(sequence, c);
        }
        self.grow_tree(payload);
        let event = match parsed {
            Ok(event) => event,
            Err(e) => {
                self.problem(sequence, format!("not a walguard event: {e}"));
                return None;
            }
        };
        let (row, other) = match &event.data {
            DataRef::Row(_, row) => (Some(row), None),
            DataRef::Other(data) => (None, Some(data)),
        };
        self.follow(sequence, &event.attributes, expected_prev, row, other);
        Some(event)
    }

    /// What is checked before the payload is read: the counts, the link to the previous
    /// message and the signature. Returns the `prevhash` the message must name.
    fn start(&mut self, sequence: u64, signature: Option<(&str, &str)>, payload: &[u8]) -> Option<Hash> {
        let s = &mut self.summary;
        if s.messages == 0 {
            s.first_sequence = sequence;
        }
        s.messages += 1;
        s.last_sequence = sequence;
        let expected_prev = self.check_link(sequence, sha256(payload));
        self.check_signature(sequence, signature, payload);
        expected_prev
    }

    /// The checks of a read event: its attributes, its place in the order and in its
    /// transaction, and a row's columns against its table's schema event.
    fn follow<R: RowNames>(
        &mut self,
        sequence: u64,
        attrs: &AttributesRef<'_>,
        expected_prev: Option<Hash>,
        row: Option<&R>,
        other: Option<&Data>,
    ) {
        self.check_attributes(sequence, attrs, expected_prev);
        self.check_order(sequence, attrs);
        // The table's name, written into a buffer kept for the next event.
        let mut table = std::mem::take(&mut self.table);
        table.clear();
        let named = match (row, other) {
            (Some(row), _) => {
                row.write_qualified(&mut table);
                true
            }
            (None, Some(data)) => data.table().map(|t| table.push_str(&t)).is_some(),
            (None, None) => false,
        };
        self.count(attrs, named.then_some(table.as_str()));
        if attrs.op == Op::Checkpoint {
            // A marker of its own after a group's end: not a transaction.
        } else if attrs.op == Op::Schema {
            // A marker inside a transaction or group: not one of its events.
            if let Some(Data::Schema(schema)) = other {
                self.schemas.insert(schema.qualified(), schema.clone());
            }
        } else {
            self.check_group(sequence, attrs);
            if let (Some(row), true) = (row, named) {
                self.check_schema(sequence, &table, row);
            }
        }
        self.table = table;
    }

    /// One more leaf; at the size of a checkpoint kept elsewhere, its root is compared.
    fn grow_tree(&mut self, payload: &[u8]) {
        let Some(tree) = self.tree.as_mut() else {
            return;
        };
        tree.append_payload(payload);
        if let Some((size, root)) = self.expected {
            if tree.size() == size && tree.root() != root {
                let found = tree.root();
                self.problem(
                    size,
                    format!("the stream does not extend the checkpoint of size {size}: its first {size} messages have root {found}, the checkpoint's is {root} (the stream was rewritten)"),
                );
            }
        }
    }

    /// A checkpoint event: it covers the messages before it, its root is theirs, the log's key
    /// signed it, and every cosignature by a given witness key verifies.
    fn check_checkpoint(&mut self, sequence: u64, c: &CheckpointData) {
        if let Some(tree) = &self.tree {
            if c.size + 1 != sequence {
                self.problem(
                    sequence,
                    format!(
                        "the checkpoint covers {} messages, not the {} before it",
                        c.size,
                        sequence - 1
                    ),
                );
            } else if c.root != tree.root() {
                self.problem(
                    sequence,
                    format!(
                        "the checkpoint of size {}: its root {} is not the root {} of the messages before it (the checkpoint was forged or messages before it were altered)",
                        c.size,
                        c.root,
                        tree.root()
                    ),
                );
            }
        }
        let signed = match c.signed() {
            Ok(s) => s,
            Err(e) => return self.problem(sequence, format!("the checkpoint's note does not parse: {e}")),
        };
        let logs = log_vkeys(&self.keyring, signed.checkpoint().origin());
        if let Err(e) = signed.verify_log(&logs) {
            return self.problem(sequence, format!("the checkpoint's signature: {e}"));
        }
        match signed.cosignatures(&self.witnesses) {
            Ok(cosignatures) => {
                self.summary.checkpoints += 1;
                self.summary.last_checkpoint = Some((c.size, cosignatures.len()));
            }
            Err(e) => self.problem(sequence, format!("the checkpoint's cosignatures: {e}")),
        }
    }

    /// A row event names only columns of its table's newest schema event, and its key is that
    /// schema's key (SPEC section 7): the log alone says what the row's columns are.
    fn check_schema<R: RowNames>(&mut self, sequence: u64, table: &str, row: &R) {
        let Some(schema) = self.schemas.get(table) else {
            // A range that starts mid-stream may begin after the table's schema event.
            if !self.partial {
                self.problem(
                    sequence,
                    format!("a row of {table} with no schema event for {table} before it"),
                );
            }
            return;
        };
        if !row.key_names().eq(schema.key.iter().map(String::as_str)) {
            let key: Vec<&str> = row.key_names().collect();
            let problem = format!(
                "the key {key:?} is not the key {:?} of {table}'s schema event",
                schema.key
            );
            self.problem(sequence, problem);
            return;
        }
        if let Some(column) = row.column_names().find(|c| schema.column(c).is_none()) {
            let problem = format!("column {column:?} is not in {table}'s schema event");
            self.problem(sequence, problem);
        }
    }

    /// Sequence continuity; returns the hash the message must name as `prevhash` (unknown for
    /// the first message of a partial range).
    fn check_link(&mut self, sequence: u64, hash: Hash) -> Option<Hash> {
        let expected_prev = match self.prev {
            None if sequence == 1 => Some([0u8; 32]),
            None if self.partial => None,
            None => {
                self.problem(
                    sequence,
                    format!("the stream starts at sequence {sequence}: messages before it were removed"),
                );
                None
            }
            Some((prev_seq, prev_hash)) => {
                if sequence <= prev_seq {
                    self.problem(
                        sequence,
                        format!("out of order: sequence {sequence} follows {prev_seq}"),
                    );
                } else if sequence != prev_seq + 1 {
                    self.problem(
                        sequence,
                        format!(
                            "sequence gap: messages {} to {} are missing",
                            prev_seq + 1,
                            sequence - 1
                        ),
                    );
                }
                Some(prev_hash)
            }
        };
        self.prev = Some((sequence, hash));
        expected_prev
    }

    /// The signature, when there is one, and the unsigned run (SPEC's group rule).
    fn check_signature(&mut self, sequence: u64, signature: Option<(&str, &str)>, payload: &[u8]) {
        match signature {
            Some((kid, sig)) => match self.keyring.verify(kid, sig, payload) {
                Ok(()) => {
                    self.summary.signed += 1;
                    self.unsigned_run = 0;
                    self.unsigned_since = None;
                }
                Err(SignatureError::UnknownKey(k)) => self.problem(sequence, format!("signed with unknown key id {k}")),
                Err(e) => self.problem(sequence, format!("bad signature: {e}")),
            },
            None => {
                self.unsigned_run += 1;
                self.unsigned_since.get_or_insert(sequence);
                if self.unsigned_run > MAX_UNSIGNED_RUN {
                    self.problem(
                        sequence,
                        format!("more than {MAX_UNSIGNED_RUN} unsigned events in a row"),
                    );
                    self.unsigned_run = 0;
                }
            }
        }
    }

    /// The spec version, the sequence the event names and its `prevhash`.
    fn check_attributes(&mut self, sequence: u64, attrs: &AttributesRef<'_>, expected_prev: Option<Hash>) {
        if attrs.specversion != "1.0" {
            self.problem(
                sequence,
                format!("specversion {:?}, expected \"1.0\"", attrs.specversion),
            );
        }
        self.check_place(
            sequence,
            attrs.sequence_number(),
            &attrs.sequence,
            &attrs.prevhash,
            expected_prev,
        );
    }

    /// The sequence an event claims (`claimed`, as written: `text`) is the one it is stored
    /// at, and its `prevhash` is the previous message's digest.
    fn check_place(
        &mut self,
        sequence: u64,
        claimed: Option<u64>,
        text: &str,
        prevhash: &str,
        expected_prev: Option<Hash>,
    ) {
        if claimed != Some(sequence) {
            self.problem(
                sequence,
                format!("event says sequence {text:?} but is stored at {sequence} (reordered or re-published)"),
            );
        }
        if let Some(expected) = expected_prev {
            use base64::Engine;
            let mut text = [0u8; 44];
            let named = base64::engine::general_purpose::STANDARD
                .encode_slice(expected, &mut text)
                .is_ok_and(|n| text[..n] == *prevhash.as_bytes());
            if !named {
                self.problem(sequence, "broken chain: prevhash does not match the previous message (a message was removed, inserted, reordered or altered)");
            }
        }
    }

    /// `(pglsn, pgtxidx)` only grows along the stream.
    fn check_order(&mut self, sequence: u64, attrs: &AttributesRef<'_>) {
        let position = attrs.position();
        // A schema or checkpoint event takes the place of the event before it
        // (ARCHITECTURE.md).
        let marker = matches!(attrs.op, Op::Schema | Op::Checkpoint);
        if let Some(prev) = self.position {
            if position < prev || (position == prev && !marker) {
                self.problem(
                    sequence,
                    format!(
                        "commit order violated: ({}, {}) does not follow ({}, {})",
                        position.lsn, position.idx, prev.lsn, prev.idx
                    ),
                );
            }
        }
        self.position = Some(self.position.map_or(position, |p| p.max(position)));
    }

    fn count(&mut self, attrs: &AttributesRef<'_>, table: Option<&str>) {
        let s = &mut self.summary;
        s.last_lsn = s.last_lsn.max(attrs.pglsn);
        s.first_lsn.get_or_insert(attrs.pglsn);
        if attrs.is_watermark() || matches!(attrs.op, Op::Schema | Op::Checkpoint) {
            s.watermarks += 1;
        } else {
            s.events += 1;
        }
        // walguard's own markers name no table.
        let table = table.unwrap_or("(walguard)");
        let ops = match s.tables.get_mut(table) {
            Some(ops) => ops,
            None => s.tables.entry(table.to_owned()).or_default(),
        };
        match ops.get_mut(attrs.op.as_str()) {
            Some(n) => *n += 1,
            None => {
                ops.insert(attrs.op.as_str().to_owned(), 1);
            }
        }
    }

    /// Transaction completeness: `pgtxidx` 1..n, `pgtxcnt` = n with `pgendlsn` on the last.
    fn check_group(&mut self, sequence: u64, attrs: &AttributesRef<'_>) {
        let continues = self
            .group
            .as_ref()
            .is_some_and(|g| g.lsn == attrs.pglsn && g.xid == attrs.pgxid && !attrs.is_watermark());
        if continues {
            let want = self.group.as_ref().map_or(0, |g| g.next_idx);
            if attrs.pgtxidx != want {
                self.problem(sequence, format!("pgtxidx {} where {want} was expected", attrs.pgtxidx));
            }
        } else {
            if let Some(g) = self.group.take() {
                let first = g.first_sequence;
                self.problem(
                    sequence,
                    format!("the transaction starting at sequence {first} ended without its last event (pgtxcnt)"),
                );
            }
            if attrs.pgtxidx != 1 {
                self.problem(sequence, format!("a transaction starts at pgtxidx {}", attrs.pgtxidx));
            }
        }
        let g = self.group.get_or_insert(OpenGroup {
            lsn: attrs.pglsn,
            xid: attrs.pgxid,
            next_idx: attrs.pgtxidx,
            first_sequence: sequence,
        });
        g.next_idx = attrs.pgtxidx + 1;
        match (attrs.pgtxcnt, attrs.pgendlsn) {
            (Some(cnt), Some(_)) => {
                if cnt != attrs.pgtxidx {
                    self.problem(
                        sequence,
                        format!("pgtxcnt {cnt} but this is event {} of its transaction", attrs.pgtxidx),
                    );
                }
                self.group = None;
                self.summary.transactions += 1;
            }
            (None, None) => {}
            _ => self.problem(sequence, "pgtxcnt and pgendlsn must appear together"),
        }
    }

    /// Ends the check: an open transaction, an unsigned tail or a stream shorter than a
    /// checkpoint kept elsewhere is a problem.
    pub fn finish(mut self) -> (Summary, Vec<Problem>) {
        if let (Some((size, _)), Some(tree)) = (self.expected, &self.tree) {
            if tree.size() < size {
                let have = tree.size();
                self.problem(
                    have + 1,
                    format!("the stream does not extend the checkpoint of size {size}: it holds only {have} messages (messages {} to {size} were removed)", have + 1),
                );
            }
        }
        if let Some(g) = self.group.take() {
            let seq = self.summary.last_sequence;
            self.problem(
                seq,
                format!(
                    "incomplete transaction: the one starting at sequence {} has no last event",
                    g.first_sequence
                ),
            );
        }
        if let Some(since) = self.unsigned_since {
            self.problem(
                since,
                format!(
                    "unsigned tail: messages {since} to {} are covered by no signature",
                    self.summary.last_sequence
                ),
            );
        }
        (self.summary, self.problems)
    }
}

/// What a verification checks beyond the chain (SPEC section 8).
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Witness keys whose cosignatures are checked.
    pub witnesses: Vec<Vkey>,
    /// A checkpoint kept elsewhere (size, root), its signature already checked.
    pub extending: Option<(u64, crate::tlog::Hash)>,
}

impl VerifyOptions {
    pub fn apply<'k>(&self, verifier: Verifier<'k>) -> Verifier<'k> {
        let v = verifier.with_witnesses(self.witnesses.clone());
        match self.extending {
            Some((size, root)) => v.extending(size, root),
            None => v,
        }
    }
}

/// A stored message that verified, with the event it holds: parsed once, by the verifier.
#[derive(Debug, Clone)]
pub struct Verified {
    pub stored: crate::audit::Stored,
    pub event: StoredEvent,
}

/// Reads every message of `stream` in order and checks it.
pub async fn verify_stream(
    js: &jetstream::Context,
    stream: &str,
    keyring: &Keyring,
    options: &VerifyOptions,
) -> Result<(Summary, Vec<Problem>), String> {
    let mut verifier = options.apply(Verifier::new(keyring));
    crate::audit::read_stream(js, stream, 1, None, |m| {
        let sig = m.signature.as_ref().map(|(k, s)| (k.as_str(), s.as_str()));
        verifier.message_ref(m.sequence, sig, &m.payload);
        true
    })
    .await?;
    Ok(verifier.finish())
}

/// Checks an export (`walguard export`): JSON lines of DSSE envelopes.
pub fn verify_file(
    path: &std::path::Path,
    keyring: &Keyring,
    options: &VerifyOptions,
) -> Result<(Summary, Vec<Problem>), String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut verifier: Option<Verifier<'_>> = None;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut m =
            crate::audit::parse_dsse_line(&line).map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        if m.sequence == 0 {
            // The payload does not say where it stands (it is damaged): take the next place,
            // and let the checks below say what is wrong with it.
            m.sequence = verifier.as_ref().map_or(1, |v| v.summary.last_sequence + 1);
        }
        let v = verifier.get_or_insert_with(|| {
            options.apply(if m.sequence > 1 {
                Verifier::partial(keyring)
            } else {
                Verifier::new(keyring)
            })
        });
        let sig = m.signature.as_ref().map(|(k, s)| (k.as_str(), s.as_str()));
        v.message_ref(m.sequence, sig, &m.payload);
    }
    Ok(verifier.unwrap_or_else(|| Verifier::new(keyring)).finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::draft::{Draft, Op};
    use crate::event::naming::Naming;
    use crate::event::{Envelope, Signer};
    use crate::tlog::SignedCheckpoint;
    use base64::Engine;

    type Stored = (u64, Option<(String, String)>, Vec<u8>);

    struct Fixture {
        signer: Signer,
        envelope: Envelope,
        prev: Hash,
        seq: u64,
        out: Vec<Stored>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                signer: Signer::new(ed25519_dalek::SigningKey::from_bytes(&[7; 32])),
                envelope: Envelope::new("1", "db", "s"),
                prev: [0; 32],
                seq: 0,
                out: Vec::new(),
            }
        }

        fn push(&mut self, lsn: u64, idx: u32, end: Option<u64>, sign: bool) {
            self.seq += 1;
            let draft = Draft {
                op: Op::Insert,
                nats_subject: "x".into(),
                id: uuid::Uuid::nil(),
                ce_type: "t".into(),
                ce_subject: "s".into(),
                time_micros: 0,
                pglsn: Lsn(lsn),
                pgxid: lsn as u32,
                pgtxidx: idx,
                end: end.map(Lsn),
                data: br#"{"op":"insert","schema":"public","table":"t","key":{"id":1},"before":null,"after":{"id":1},"unchanged":[],"actor":null}"#.to_vec(),
                table: "t".into(),
            };
            let mut buf = Vec::new();
            self.envelope.write(&draft, self.seq, &self.prev, &mut buf);
            self.prev = sha256(&buf);
            let sig = sign.then(|| (self.signer.key_id().to_owned(), self.signer.sign(&buf)));
            self.out.push((self.seq, sig, buf));
        }

        fn watermark(&mut self, lsn: u64) {
            let w = naming().watermark(Lsn(lsn), 0);
            self.marker(w);
        }

        /// The schema event of `public.t` (key `id`, columns `id`, `v`).
        fn schema(&mut self, lsn: u64, after_idx: u32, key: &str) {
            let schema = TableSchema::parse(
                format!(
                    r#"{{"op":"schema","schema":"public","table":"t","columns":[{{"name":"id","type":"bigint","not_null":true}},{{"name":"v","type":"text","not_null":false}}],"key":["{key}"],"primary_key":["{key}"],"replica_identity":"default","types":[]}}"#
                )
                .as_bytes(),
            )
            .unwrap();
            let s = naming().schema(Lsn(lsn), after_idx, false, 0, &schema);
            self.marker(s);
        }

        fn marker(&mut self, w: Draft) {
            self.seq += 1;
            let mut buf = Vec::new();
            self.envelope.write(&w, self.seq, &self.prev, &mut buf);
            self.prev = sha256(&buf);
            self.out.push((
                self.seq,
                Some((self.signer.key_id().to_owned(), self.signer.sign(&buf))),
                buf,
            ));
        }

        /// A checkpoint of every message so far, signed by the fixture's key, after the event
        /// at `(lsn, idx)` that ended its group at `end`; `root` overrides the true root.
        fn checkpoint(&mut self, lsn: u64, idx: u32, end: u64, root: Option<crate::tlog::Hash>) -> SignedCheckpoint {
            let tree = Frontier::from_leaf_hashes(self.out.iter().map(|(_, _, p)| crate::tlog::leaf_hash(p)));
            let body = crate::tlog::Checkpoint::new(ORIGIN, tree.size(), root.unwrap_or(tree.root())).unwrap();
            let signer = crate::tlog::CheckpointSigner::new(ORIGIN, &self.signer).unwrap();
            let signed = SignedCheckpoint::sign(body, &signer).unwrap();
            let data = CheckpointData::new(&signed).to_bytes();
            let at = Position { lsn: Lsn(lsn), idx };
            let draft = naming().checkpoint(at, Lsn(end), 0, tree.size(), data);
            self.marker(draft);
            signed
        }

        fn check(&self, msgs: &[Stored]) -> Vec<Problem> {
            self.check_with(msgs, &VerifyOptions::default())
        }

        /// What the archive's check (`check_chain`) finds; every problem it names is one
        /// the whole check names at the same sequence.
        fn check_chain(&self, msgs: &[Stored]) -> Vec<Problem> {
            let ring = self.keyring();
            let mut v = Verifier::new(&ring);
            for (seq, sig, payload) in msgs {
                let m = crate::audit::Stored {
                    sequence: *seq,
                    signature: sig.clone(),
                    payload: bytes::Bytes::from(payload.clone()),
                };
                let _ = v.check_chain(&m);
            }
            let chain = v.finish().1;
            let whole = self.check(msgs);
            for p in &chain {
                assert!(whole.iter().any(|w| w.sequence == p.sequence), "{p:?} not in {whole:?}");
            }
            chain
        }

        fn keyring(&self) -> Keyring {
            let mut ring = Keyring::default();
            ring.add(self.signer.verifying_key());
            ring
        }

        fn check_with(&self, msgs: &[Stored], options: &VerifyOptions) -> Vec<Problem> {
            let ring = self.keyring();
            let mut v = options.apply(Verifier::new(&ring));
            // Both ways of reading an event find the same problems.
            let mut borrowed = options.apply(Verifier::new(&ring));
            for (seq, sig, payload) in msgs {
                let sig = sig.as_ref().map(|(k, s)| (k.as_str(), s.as_str()));
                v.message(*seq, sig, payload);
                borrowed.message_ref(*seq, sig, payload);
            }
            let (summary, problems) = v.finish();
            let (borrowed_summary, borrowed_problems) = borrowed.finish();
            assert_eq!(problems, borrowed_problems);
            assert_eq!(format!("{summary:?}"), format!("{borrowed_summary:?}"));
            problems
        }
    }

    const ORIGIN: &str = "walguard/1/db/s";

    fn naming() -> Naming {
        Naming {
            system_identifier: "1".into(),
            slot: "s".into(),
            subject_prefix: "p".into(),
        }
    }

    /// Sequences: 1 schema, 2 watermark, 3-4 a transaction, 5 a transaction, 6 watermark.
    fn intact() -> Fixture {
        let mut f = Fixture::new();
        f.schema(0x5, 0, "id");
        f.watermark(0x10);
        f.push(0x100, 1, None, false);
        f.push(0x100, 2, Some(0x130), true);
        f.push(0x200, 1, Some(0x230), true);
        f.watermark(0x300);
        f
    }

    #[test]
    fn checkpoints_are_recomputed_and_a_wrong_root_or_a_forged_cosignature_is_named() {
        let mut f = intact();
        f.checkpoint(0x300, 0, 0x300, None);
        f.push(0x400, 1, Some(0x430), true);
        let signed = f.checkpoint(0x400, 1, 0x430, None);
        assert_eq!(f.check(&f.out), vec![]);
        assert_eq!(signed.checkpoint().size(), 8);

        // A root that is not the stream's.
        let mut g = intact();
        g.checkpoint(0x300, 0, 0x300, Some(crate::tlog::Hash([9; 32])));
        let p = g.check(&g.out);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].sequence, 7);
        assert!(p[0].reason.contains("is not the root"), "{p:?}");

        // A cosignature line by a configured witness key that does not verify.
        let witness = crate::tlog::Cosigner::new(
            "witness.example/w",
            Signer::new(ed25519_dalek::SigningKey::from_bytes(&[3; 32])),
        )
        .unwrap();
        let mut h = intact();
        let mut note = h.checkpoint(0x300, 0, 0x300, None);
        h.out.pop();
        h.seq -= 1;
        h.prev = sha256(&h.out.last().unwrap().2);
        // The witness's line with one bit of its signature changed: a forgery.
        let good = witness.cosign(note.text(), 1_700_000_000);
        let mut sig = base64::engine::general_purpose::STANDARD
            .decode(good.trim_end().rsplit(' ').next().unwrap())
            .unwrap();
        let last = sig.len() - 1;
        sig[last] ^= 1;
        let name_part = good.trim_end().rsplit_once(' ').unwrap().0;
        let bad_line = format!(
            "{name_part} {}\n",
            base64::engine::general_purpose::STANDARD.encode(&sig)
        );
        note.add_signature_lines(&bad_line).unwrap();
        let data = CheckpointData::new(&note).to_bytes();
        let draft = naming().checkpoint(
            Position {
                lsn: Lsn(0x300),
                idx: 0,
            },
            Lsn(0x300),
            0,
            6,
            data,
        );
        h.marker(draft);
        let options = VerifyOptions {
            witnesses: vec![witness.vkey().clone()],
            extending: None,
        };
        let p = h.check_with(&h.out, &options);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].reason.contains("cosignatures"), "{p:?}");
        // Without that witness's key the line is someone else's and ignored.
        assert_eq!(h.check(&h.out), vec![]);
    }

    #[test]
    fn a_stream_cut_short_or_rewritten_does_not_extend_a_checkpoint_kept_elsewhere() {
        let mut f = intact();
        let kept = f.checkpoint(0x300, 0, 0x300, None);
        let (size, root) = (kept.checkpoint().size(), kept.checkpoint().root());
        let options = VerifyOptions {
            witnesses: Vec::new(),
            extending: Some((size, root)),
        };
        f.push(0x400, 1, Some(0x430), true);
        assert_eq!(f.check_with(&f.out, &options), vec![]);
        // The newest messages removed: shorter than the checkpoint.
        let cut = &f.out[..4];
        let p = f.check_with(cut, &options);
        assert!(
            p.iter()
                .any(|p| p.sequence == 5 && p.reason.contains("holds only 4 messages")),
            "{p:?}"
        );
        // A different history of the same length, signed with the same key.
        let mut g = Fixture::new();
        g.schema(0x5, 0, "id");
        g.watermark(0x11);
        g.push(0x100, 1, None, false);
        g.push(0x100, 2, Some(0x130), true);
        g.push(0x200, 1, Some(0x230), true);
        g.watermark(0x300);
        let p = g.check_with(&g.out, &options);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].sequence, size);
        assert!(
            p[0].reason.contains("does not extend the checkpoint of size 6"),
            "{p:?}"
        );
    }

    #[test]
    fn intact_stream_passes() {
        let f = intact();
        assert_eq!(f.check(&f.out), vec![]);
    }

    #[test]
    fn removal_insertion_reorder_alteration_are_caught() {
        let f = intact();
        // Removed.
        let mut m = f.out.clone();
        m.remove(3);
        let p = f.check(&m);
        assert_eq!(p[0].sequence, 5, "{p:?}");
        // The archive's check (signatures, chain, continuity) names each of these too.
        assert_eq!(f.check_chain(&m)[0].sequence, 5);
        // Swapped.
        let mut m = f.out.clone();
        m.swap(2, 3);
        assert!(!f.check(&m).is_empty());
        assert!(!f.check_chain(&m).is_empty());
        // Altered: one byte of a signed payload.
        let mut m = f.out.clone();
        let pos = m[4].2.len() - 3;
        m[4].2[pos] ^= 1;
        let p = f.check(&m);
        assert_eq!(p[0].sequence, 5, "{p:?}");
        assert!(p[0].reason.contains("signature"), "{p:?}");
        assert!(f.check_chain(&m)[0].reason.contains("signature"));
        // Inserted: a foreign message after the head.
        let mut m = f.out.clone();
        m.push((7, None, b"{\"hello\":1}".to_vec()));
        let p = f.check(&m);
        assert_eq!(p[0].sequence, 7, "{p:?}");
        assert_eq!(f.check_chain(&m)[0].sequence, 7);
        // Intact: nothing.
        assert!(f.check_chain(&f.out).is_empty());
    }

    #[test]
    fn incomplete_transaction_and_unsigned_tail() {
        let mut f = Fixture::new();
        f.push(0x100, 1, None, false);
        let p = f.check(&f.out);
        assert!(p.iter().any(|p| p.reason.contains("incomplete")), "{p:?}");
        assert!(p.iter().any(|p| p.reason.contains("unsigned tail")), "{p:?}");
    }

    #[test]
    fn damaged_or_reordered_input_never_panics() {
        let f = intact();
        let mut m = f.out.clone();
        m[3].0 = 0;
        m[4].2 = b"not json".to_vec();
        m.reverse();
        let p = f.check(&m);
        assert!(!p.is_empty());
        assert!(p.iter().any(|p| p.reason.contains("out of order")), "{p:?}");
    }

    #[test]
    fn unknown_key_is_named() {
        let mut f = intact();
        let other = Signer::new(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
        let payload = f.out[3].2.clone();
        f.out[3].1 = Some((other.key_id().to_owned(), other.sign(&payload)));
        let p = f.check(&f.out);
        assert_eq!(p[0].sequence, 4);
        assert!(p[0].reason.contains("unknown key"), "{p:?}");
    }

    #[test]
    fn a_row_needs_a_schema_event_for_its_table_with_its_key_and_columns() {
        // No schema event before the row.
        let mut f = Fixture::new();
        f.push(0x100, 1, Some(0x130), true);
        let p = f.check(&f.out);
        assert_eq!(p[0].sequence, 1, "{p:?}");
        assert!(p[0].reason.contains("no schema event for public.t"), "{p:?}");
        // A schema event with another key.
        let mut f = Fixture::new();
        f.schema(0x5, 0, "v");
        f.push(0x100, 1, Some(0x130), true);
        let p = f.check(&f.out);
        assert_eq!(p[0].sequence, 2, "{p:?}");
        assert!(p[0].reason.contains("is not the key"), "{p:?}");
        // A schema event placed where the event before it stands, inside a transaction, is
        // not one of its events and breaks no order.
        let mut f = Fixture::new();
        f.schema(0x5, 0, "id");
        f.push(0x100, 1, None, false);
        f.schema(0x100, 1, "id");
        f.push(0x100, 2, Some(0x130), true);
        assert_eq!(f.check(&f.out), vec![]);
    }
}
