//! `walguard console --archive DIR`: the console over an archive's segments (SPEC section 7)
//! instead of the stream, for an audit of what NATS no longer holds. The index is built once
//! at start from every segment, each message verified on the way by
//! [`ArchiveReader`](crate::archive::ArchiveReader) (signature, chain, the segments' names
//! and continuity); verification stops at the first altered message, which the overview
//! names in red. A page's events are read again from their segment: the byte offset of every
//! [`EVERY`]th line is kept, so a read seeks and skips fewer than [`EVERY`] lines, and memory
//! grows by 8 bytes per [`EVERY`] messages beyond the index's own. The archive is read as it
//! was at start: restart the console to see segments sealed since.

use std::io::{BufRead, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::archive::{ArchiveError, ArchiveReader};
use crate::audit::{parse_dsse_line, Stored};
use crate::event::Keyring;
use crate::verify::Problem;

use super::index::Index;

/// A line offset is kept for every this many messages of a segment.
pub const EVERY: u64 = 64;

#[derive(Debug)]
struct Located {
    first: u64,
    last: u64,
    path: PathBuf,
    offsets: Vec<u64>,
}

/// Where each archived message's line is.
#[derive(Debug, Default)]
pub struct Lines {
    segments: Vec<Located>,
}

/// Reads and verifies the archive of `stream` in `dir` into `index` (whose witnesses are
/// set); returns where the lines are.
pub fn load(dir: &Path, stream: &str, keyring: &Keyring, index: &mut Index) -> Lines {
    let mut lines = Lines::default();
    let mut reader = match ArchiveReader::open(dir, stream, keyring) {
        Ok(r) => r,
        Err(e) => {
            index.read_error = Some(e.to_string());
            return lines;
        }
    };
    reader.verifier = std::mem::replace(&mut reader.verifier, crate::verify::Verifier::new(keyring))
        .with_witnesses(index.witnesses.clone());
    let mut altered = None;
    loop {
        match reader.next_message() {
            Ok(Some(verified)) => {
                let crate::verify::Verified { stored: m, event } = verified;
                if let Some((segment, offset)) = reader.position() {
                    if lines.segments.last().map(|s| s.first) != Some(segment.first) {
                        lines.segments.push(Located {
                            first: segment.first,
                            last: segment.last,
                            path: segment.path.clone(),
                            offsets: Vec::new(),
                        });
                    }
                    let located = lines.segments.last_mut().expect("pushed above");
                    if (m.sequence - located.first) % EVERY == 0 {
                        located.offsets.push(offset);
                    }
                }
                index.add(&m, Some(&event));
                index.verified_to = m.sequence;
            }
            Ok(None) => break,
            Err(ArchiveError::Altered { path, problem }) => {
                altered = Some((problem.sequence, path));
                break;
            }
            Err(e) => {
                index.read_error = Some(e.to_string());
                break;
            }
        }
    }
    // The verifier's problems; the one that stopped the reading names its segment too.
    index.problems = reader
        .verifier
        .problems
        .iter()
        .map(|p| match &altered {
            Some((sequence, path)) if *sequence == p.sequence => Problem {
                sequence: p.sequence,
                reason: format!("{} (in {})", p.reason, path.display()),
            },
            _ => p.clone(),
        })
        .collect();
    lines
}

impl Lines {
    /// The archived message at `sequence`, read from its segment.
    pub fn fetch(&self, sequence: u64) -> Result<Stored, String> {
        let at = self.segments.partition_point(|s| s.last < sequence);
        let located = self
            .segments
            .get(at)
            .filter(|s| s.first <= sequence)
            .ok_or_else(|| format!("sequence {sequence} is in no archived segment read at start"))?;
        let path = &located.path;
        let say = |e: String| format!("{}: {e}", path.display());
        let n = sequence - located.first;
        let offset = *located
            .offsets
            .get((n / EVERY) as usize)
            .ok_or_else(|| say(format!("no offset for sequence {sequence}")))?;
        let mut file = std::fs::File::open(path).map_err(|e| say(e.to_string()))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| say(e.to_string()))?;
        let mut reader = std::io::BufReader::new(file);
        let mut line = String::new();
        for _ in 0..=(n % EVERY) {
            line.clear();
            if reader.read_line(&mut line).map_err(|e| say(e.to_string()))? == 0 {
                return Err(say(format!(
                    "ends before sequence {sequence}: changed since it was read"
                )));
            }
        }
        let m = parse_dsse_line(line.trim_end()).map_err(|e| say(e.to_string()))?;
        if m.sequence != sequence {
            return Err(say(format!(
                "holds sequence {} where sequence {sequence} was: changed since it was read",
                m.sequence
            )));
        }
        Ok(m)
    }
}
