//! `walguard archive`: the stream copied into segment files that outlive NATS (SPEC section 7).
//!
//! A segment is `{stream}-{first:020}-{last:020}.jsonl`, the `export` lines (DSSE envelopes)
//! of sequences `first..=last`, ending at a signed event, at most `archive.segment_events`
//! long. Every message is verified (signature, chain, continuity with the previous segment:
//! `Verifier::check_chain`, what SPEC asks of the archive; the events' content is checked by
//! `verify --archive`, by the re-verification of sealed segments on start and by `restore`)
//! before the segment holding it is written; a segment is written to
//! `{stream}-{first:020}.partial`, fsynced, renamed, and the folder fsynced, so a sealed name
//! always holds a whole verified segment. On start the archive re-verifies every sealed
//! segment and resumes after the newest one; a `.partial` file (an interrupted write) is named
//! and removed, never built on; a sealed segment that fails verification, a gap between two
//! segments, or a file whose lines do not match its name stops the archive, naming it.
//!
//! Reading and verifying overlap: the runtime (one thread) takes the messages from NATS and
//! hands them in bounded batches to a blocking thread that verifies and writes them.

use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::FutureExt;
use tokio::sync::watch;

use crate::audit::{parse_dsse_line, push_dsse_line, Stored};
use crate::event::borrowed::EventRef;
use crate::event::Keyring;
use crate::sink::reader::{StreamReader, Until};
use crate::verify::{Problem, Summary, Verified, Verifier};

/// `archive.*` as the archiver uses it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub segment_events: u64,
    pub segment_seconds: Duration,
}

/// Why the archive cannot go on; each names the file or sequence at fault.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("archive {}: sequences {from} to {to} are missing (no segment holds them)", dir.display())]
    Missing { dir: PathBuf, from: u64, to: u64 },
    #[error("{}: partial segment: {reason}", path.display())]
    Partial { path: PathBuf, reason: String },
    #[error("{}: altered segment: {problem}", path.display())]
    Altered { path: PathBuf, problem: Problem },
    #[error("stream {stream}: {problem}; nothing from sequence {} on is archived", problem.sequence)]
    Unverifiable { stream: String, problem: Problem },
    #[error(transparent)]
    Stream(#[from] crate::sink::reader::ReadError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |e| ArchiveError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// The file name of the segment holding `first..=last`.
pub fn segment_name(stream: &str, first: u64, last: u64) -> String {
    format!("{stream}-{first:020}-{last:020}.jsonl")
}

fn partial_name(stream: &str, first: u64) -> String {
    format!("{stream}-{first:020}.partial")
}

/// `(first, last)` when `name` is a sealed segment of `stream`.
pub fn parse_segment_name(stream: &str, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(stream)?.strip_prefix('-')?.strip_suffix(".jsonl")?;
    let (first, last) = rest.split_once('-')?;
    if first.len() != 20 || last.len() != 20 {
        return None;
    }
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((first, last))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    pub last: u64,
    pub path: PathBuf,
}

/// The sealed segments of `stream` in `dir` in order, and the `.partial` files found.
fn list(dir: &Path, stream: &str) -> Result<(Vec<Segment>, Vec<PathBuf>), ArchiveError> {
    let mut segments = Vec::new();
    let mut partial = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((first, last)) = parse_segment_name(stream, &name) {
            segments.push(Segment {
                first,
                last,
                path: entry.path(),
            });
        } else if name.starts_with(&format!("{stream}-")) && name.ends_with(".partial") {
            partial.push(entry.path());
        }
    }
    segments.sort_by_key(|s| s.first);
    Ok((segments, partial))
}

/// The stream name the segments in `dir` belong to (for `verify --archive` without `-c`).
pub fn stream_of(dir: &Path) -> Result<String, ArchiveError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name().to_string_lossy().into_owned();
        let stream = name.strip_suffix(".jsonl").and_then(|stem| stem.rsplitn(3, '-').nth(2));
        if let Some(stream) = stream.filter(|s| parse_segment_name(s, &name).is_some()) {
            names.push(stream.to_owned());
        }
    }
    names.sort();
    names.dedup();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ArchiveError::Io {
            path: dir.to_owned(),
            reason: "no archive segments here (files named {stream}-{first}-{last}.jsonl)".into(),
        }),
        many => Err(ArchiveError::Io {
            path: dir.to_owned(),
            reason: format!(
                "segments of several streams ({}); pass -c FILE to pick one",
                many.join(", ")
            ),
        }),
    }
}

/// Reads an archive's segments in order, one verified message at a time: each line is fed
/// to the verifier before it is returned, and a segment's name is checked against its lines
/// (the sequences it promises, continuity with the previous one, a signed last event).
pub struct ArchiveReader<'k> {
    dir: PathBuf,
    segments: std::vec::IntoIter<Segment>,
    open: Option<OpenSegment>,
    /// The first sequence the next segment must hold.
    next: u64,
    pub verifier: Verifier<'k>,
    /// The sealed segments, in order.
    pub listed: Vec<Segment>,
}

struct OpenSegment {
    segment: Segment,
    reader: std::io::BufReader<File>,
    /// The byte offsets of the next line and of the line last returned.
    offset: u64,
    line_start: u64,
    line: usize,
    expected: u64,
    last_signed: bool,
}

impl<'k> ArchiveReader<'k> {
    pub fn open(dir: &Path, stream: &str, keyring: &'k Keyring) -> Result<ArchiveReader<'k>, ArchiveError> {
        let (segments, _) = list(dir, stream)?;
        let verifier = match segments.first() {
            Some(s) if s.first > 1 => Verifier::partial(keyring),
            _ => Verifier::new(keyring),
        };
        Ok(ArchiveReader {
            dir: dir.to_owned(),
            next: segments.first().map_or(1, |s| s.first),
            listed: segments.clone(),
            segments: segments.into_iter(),
            open: None,
            verifier,
        })
    }

    /// The next verified message and its event, `None` at the end of the newest segment.
    pub fn next_message(&mut self) -> Result<Option<Verified>, ArchiveError> {
        let Some(m) = self.next_placed()? else {
            return Ok(None);
        };
        let event = self.verifier.check(&m).map_err(|problem| self.altered(problem))?;
        Ok(Some(Verified { stored: m, event }))
    }

    /// The next message, in its place in its segment (its sequence the next one, within the
    /// segment's name) but not yet verified: `verify_ref` does that. `None` at the end of the
    /// newest segment.
    pub fn next_placed(&mut self) -> Result<Option<Stored>, ArchiveError> {
        loop {
            if self.open.is_none() {
                let Some(segment) = self.segments.next() else {
                    return Ok(None);
                };
                self.open = Some(self.start(segment)?);
            }
            let open = self.open.as_mut().expect("opened above");
            let mut line = String::new();
            let read = open.reader.read_line(&mut line).map_err(io(&open.segment.path))?;
            if read > 0 {
                open.line_start = open.offset;
                open.offset += read as u64;
                let line = line.strip_suffix('\n').unwrap_or(&line);
                let line = line.strip_suffix('\r').unwrap_or(line);
                return self.place(line).map(Some);
            }
            let open = self.open.take().expect("open");
            finish_segment(&open)?;
            self.next = open.segment.last + 1;
        }
    }

    /// Verifies `m`, the message `next_placed` gave, its event read borrowed.
    pub fn verify_ref<'p>(&mut self, m: &'p Stored) -> Result<EventRef<'p>, ArchiveError> {
        self.verifier.check_ref(m).map_err(|problem| self.altered(problem))
    }

    fn altered(&self, problem: Problem) -> ArchiveError {
        let path = self.open.as_ref().map(|o| o.segment.path.clone()).unwrap_or_default();
        ArchiveError::Altered { path, problem }
    }

    /// The same reader, holding its own copy of the keys (to move to another thread).
    pub fn into_owned(self) -> ArchiveReader<'static> {
        ArchiveReader {
            dir: self.dir,
            segments: self.segments,
            open: self.open,
            next: self.next,
            verifier: self.verifier.into_owned(),
            listed: self.listed,
        }
    }

    /// The segment and byte offset of the line of the message last returned (the console
    /// reads one event again from there, without holding it).
    pub fn position(&self) -> Option<(&Segment, u64)> {
        self.open.as_ref().map(|o| (&o.segment, o.line_start))
    }

    fn start(&self, segment: Segment) -> Result<OpenSegment, ArchiveError> {
        if segment.first != self.next {
            return Err(if segment.first > self.next {
                ArchiveError::Missing {
                    dir: self.dir.clone(),
                    from: self.next,
                    to: segment.first - 1,
                }
            } else {
                ArchiveError::Partial {
                    path: segment.path.clone(),
                    reason: format!(
                        "overlaps the previous segment (starts at {}, expected {})",
                        segment.first, self.next
                    ),
                }
            });
        }
        let file = File::open(&segment.path).map_err(io(&segment.path))?;
        Ok(OpenSegment {
            expected: segment.first,
            segment,
            reader: std::io::BufReader::new(file),
            offset: 0,
            line_start: 0,
            line: 0,
            last_signed: false,
        })
    }

    fn place(&mut self, line: &str) -> Result<Stored, ArchiveError> {
        let open = self.open.as_mut().expect("a segment is open");
        open.line += 1;
        let (n, expected, path) = (open.line, open.expected, &open.segment.path);
        let partial = |reason: String| ArchiveError::Partial {
            path: path.clone(),
            reason,
        };
        let mut m = parse_dsse_line(line).map_err(|e| partial(format!("line {n}: {e}")))?;
        if m.sequence == 0 {
            // A payload without a readable sequence: the verifier names what is wrong with it.
            m.sequence = expected;
        }
        if m.sequence != expected {
            return Err(partial(format!(
                "line {n} holds sequence {}, expected {expected}",
                m.sequence
            )));
        }
        if m.sequence > open.segment.last {
            return Err(partial(format!(
                "line {n} holds sequence {} beyond the name's {}",
                m.sequence, open.segment.last
            )));
        }
        open.last_signed = m.signature.is_some();
        open.expected += 1;
        Ok(m)
    }
}

/// A segment read to its end: it held every sequence its name promises and ends signed.
fn finish_segment(open: &OpenSegment) -> Result<(), ArchiveError> {
    let segment = &open.segment;
    let partial = |reason: String| ArchiveError::Partial {
        path: segment.path.clone(),
        reason,
    };
    if open.expected != segment.last + 1 {
        return Err(partial(format!(
            "ends at sequence {}, its name says {}",
            open.expected.saturating_sub(1),
            segment.last
        )));
    }
    if !open.last_signed {
        return Err(partial(format!(
            "its last event (sequence {}) is not signed",
            segment.last
        )));
    }
    Ok(())
}

/// Verifies every segment of `stream` in `dir` in order, continuity included.
pub fn verify_dir<'k>(
    dir: &Path,
    stream: &str,
    keyring: &'k Keyring,
) -> Result<(Vec<Segment>, Verifier<'k>), ArchiveError> {
    let mut reader = ArchiveReader::open(dir, stream, keyring)?;
    while reader.next_message()?.is_some() {}
    Ok((reader.listed, reader.verifier))
}

/// `verify --archive DIR`: the whole archive, as `verify` reports a stream.
pub fn verify_archive(
    dir: &Path,
    stream: &str,
    keyring: &Keyring,
    options: &crate::verify::VerifyOptions,
) -> Result<(Summary, Vec<Problem>), ArchiveError> {
    let mut reader = ArchiveReader::open(dir, stream, keyring)?;
    reader.verifier = options.apply(reader.verifier);
    while reader.next_message()?.is_some() {}
    Ok(reader.verifier.finish())
}

/// The segment being written: the verified lines up to the newest signed event in the
/// `.partial` file, the ones after it (at most `MAX_UNSIGNED_RUN`) held until a signature
/// covers them.
struct Writer {
    dir: PathBuf,
    stream: String,
    first: u64,
    written: u64,
    file: Option<BufWriter<File>>,
    /// The held lines, each ending in a newline, and how many they are.
    held: Vec<u8>,
    held_lines: u64,
    opened: Instant,
}

impl Writer {
    fn new(dir: &Path, stream: &str, first: u64) -> Writer {
        Writer {
            dir: dir.to_owned(),
            stream: stream.to_owned(),
            first,
            written: 0,
            file: None,
            held: Vec::with_capacity(1 << 16),
            held_lines: 0,
            opened: Instant::now(),
        }
    }

    fn partial_path(&self) -> PathBuf {
        self.dir.join(partial_name(&self.stream, self.first))
    }

    /// Adds a verified message; a signed one releases what was held into the file.
    fn push(&mut self, m: &Stored, limits: Limits) -> Result<Option<Segment>, ArchiveError> {
        push_dsse_line(m, &mut self.held);
        self.held.push(b'\n');
        self.held_lines += 1;
        if m.signature.is_none() {
            return Ok(None);
        }
        let mut sealed = None;
        if self.written > 0 && self.written + self.held_lines > limits.segment_events {
            sealed = self.seal()?;
        }
        let path = self.partial_path();
        if self.file.is_none() {
            let file = File::create(&path).map_err(io(&path))?;
            self.file = Some(BufWriter::new(file));
            self.opened = Instant::now();
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(&self.held).map_err(io(&path))?;
        self.written += self.held_lines;
        self.held.clear();
        self.held_lines = 0;
        if self.written >= limits.segment_events {
            sealed = sealed.or(self.seal()?);
        }
        Ok(sealed)
    }

    /// Seals what is written (up to the newest signed event): fsync, rename, fsync the folder.
    fn seal(&mut self) -> Result<Option<Segment>, ArchiveError> {
        let Some(file) = self.file.take() else { return Ok(None) };
        let partial = self.partial_path();
        let file = file.into_inner().map_err(|e| io(&partial)(e.into_error()))?;
        file.sync_all().map_err(io(&partial))?;
        drop(file);
        let last = self.first + self.written - 1;
        let path = self.dir.join(segment_name(&self.stream, self.first, last));
        std::fs::rename(&partial, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        tracing::info!(segment = %path.display(), events = self.written, "archive segment sealed");
        let segment = Segment {
            first: self.first,
            last,
            path,
        };
        self.first = last + 1;
        self.written = 0;
        Ok(Some(segment))
    }

    fn due(&self, limits: Limits) -> bool {
        self.file.is_some() && self.opened.elapsed() >= limits.segment_seconds
    }
}

/// What one archive run did.
#[derive(Debug, Default)]
pub struct Copied {
    pub sealed: Vec<Segment>,
    /// The newest archived sequence (0 for an empty archive).
    pub last: u64,
}

/// Copies `stream` into `dir` from after its newest sealed segment: up to the stream's
/// last sequence at start, or, with `follow`, until `shutdown`.
pub async fn run(
    js: &jetstream::Context,
    stream: &str,
    dir: &Path,
    keyring: &Keyring,
    limits: Limits,
    follow: bool,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Copied, ArchiveError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (_, partial) = list(dir, stream)?;
    for p in partial {
        tracing::warn!(file = %p.display(), "removing a partial archive segment (an interrupted write); it is copied again");
        std::fs::remove_file(&p).map_err(io(&p))?;
    }
    let (segments, mut verifier) = verify_dir(dir, stream, keyring)?;
    let next = segments.last().map_or(1, |s| s.last + 1);
    let mut copied = Copied {
        sealed: Vec::new(),
        last: next - 1,
    };
    let until = if follow { Until::Follow } else { Until::Last };
    let mut reader = StreamReader::open(js, stream, next, until).await?;
    let state = reader.state().clone();
    if segments.is_empty() && state.first_sequence > 1 {
        verifier = Verifier::partial(keyring);
    }
    let start = next.max(state.first_sequence);
    if !follow && (state.messages == 0 || start > state.last_sequence) {
        return Ok(copied);
    }
    let writer = Writer::new(dir, stream, start);
    // Reading and verifying overlap: this task takes the messages from NATS (on the one
    // runtime thread, with the client's I/O), a thread of its own verifies and writes them.
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(QUEUE);
    let verifier = verifier.into_owned();
    let name = stream.to_owned();
    let worker = tokio::task::spawn_blocking(move || verify_and_write(rx, verifier, writer, limits, &name));
    let mut tick = tokio::time::interval(Duration::from_millis(500).min(limits.segment_seconds));
    let read: Result<(), ArchiveError> = loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            _ = tick.tick() => {
                if tx.send(Item::Tick).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            m = reader.next() => m,
        };
        let first = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        // What else has arrived goes along in the same hand-off.
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(first);
        let mut ended = None;
        while batch.len() < BATCH {
            match reader.next().now_or_never() {
                None => break,
                Some(Ok(Some(m))) => batch.push(m),
                Some(Ok(None)) => {
                    ended = Some(Ok(()));
                    break;
                }
                Some(Err(e)) => {
                    ended = Some(Err(e.into()));
                    break;
                }
            }
        }
        if tx.send(Item::Messages(batch)).await.is_err() {
            // The worker stopped: its result says why.
            break Ok(());
        }
        if let Some(end) = ended {
            break end;
        }
    };
    if read.is_err() {
        // What was read is verified, but not sealed (as when reading fails between two
        // messages): the next run copies it again.
        let _ = tx.send(Item::Abort).await;
    }
    drop(tx);
    let sealed = match worker.await {
        Ok(result) => result?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    read?;
    copied.sealed = sealed;
    if let Some(s) = copied.sealed.last() {
        copied.last = s.last;
    }
    Ok(copied)
}

/// What the reading side hands the verifying side.
enum Item {
    Messages(Vec<Stored>),
    /// Half a second passed: a segment that is due is sealed.
    Tick,
    /// Reading failed: stop without sealing.
    Abort,
}

/// At most this many messages per hand-off, and this many hand-offs queued: a few MiB in
/// flight at most.
const BATCH: usize = 256;
const QUEUE: usize = 16;

/// The verifying side: every message is verified before the writer takes it; the first that
/// does not verify seals what came before it and stops the archive. When the reading side is
/// done, what is written is sealed.
fn verify_and_write(
    mut rx: tokio::sync::mpsc::Receiver<Item>,
    mut verifier: Verifier<'static>,
    mut writer: Writer,
    limits: Limits,
    stream: &str,
) -> Result<Vec<Segment>, ArchiveError> {
    let mut sealed = Vec::new();
    while let Some(item) = rx.blocking_recv() {
        match item {
            Item::Tick => {
                if writer.due(limits) {
                    sealed.extend(writer.seal()?);
                }
            }
            Item::Abort => return Ok(sealed),
            Item::Messages(batch) => {
                for stored in batch {
                    if let Err(problem) = verifier.check_chain(&stored) {
                        // What was verified before it is kept: sealed, so the archive holds it.
                        writer.seal()?;
                        return Err(ArchiveError::Unverifiable {
                            stream: stream.to_owned(),
                            problem,
                        });
                    }
                    sealed.extend(writer.push(&stored, limits)?);
                }
            }
        }
    }
    sealed.extend(writer.seal()?);
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_sequence_and_read_back() {
        let name = segment_name("WALGUARD", 1, 100000);
        assert_eq!(name, "WALGUARD-00000000000000000001-00000000000000100000.jsonl");
        assert_eq!(parse_segment_name("WALGUARD", &name), Some((1, 100000)));
        assert_eq!(parse_segment_name("WAL", &name), None);
        assert_eq!(
            parse_segment_name("WALGUARD", "WALGUARD-00000000000000000001.partial"),
            None
        );
        assert_eq!(parse_segment_name("WALGUARD", "WALGUARD-1-2.jsonl"), None);
        assert_eq!(
            parse_segment_name("WALGUARD", "WALGUARD-00000000000000000009-00000000000000000002.jsonl"),
            None
        );
        let a = segment_name("S", 9, 99);
        let b = segment_name("S", 100, 120);
        assert!(a < b, "names sort in sequence order");
    }

    #[test]
    fn the_stream_is_read_from_the_names() {
        let dir = tempfile::tempdir().unwrap();
        assert!(stream_of(dir.path()).is_err());
        std::fs::write(dir.path().join(segment_name("MY-STREAM", 1, 2)), "").unwrap();
        assert_eq!(stream_of(dir.path()).unwrap(), "MY-STREAM");
        std::fs::write(dir.path().join(segment_name("OTHER", 1, 2)), "").unwrap();
        assert!(stream_of(dir.path())
            .unwrap_err()
            .to_string()
            .contains("several streams"));
    }
}
