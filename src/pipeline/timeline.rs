//! The timeline check (SPEC section 7, "Failover"): after a standby is promoted, its WAL
//! follows the old timeline only up to the switch point; what the old primary wrote after it
//! is not in the new primary's WAL, and the new timeline reuses those LSNs for other
//! transactions. Events in the stream beyond the switch point would then stand where the new
//! timeline's changes belong, and resuming would skip those as already published. Pure: the
//! history file and the positions come in, a decision or a refusal naming the range comes out.
//!
//! A timeline history file (`TIMELINE_HISTORY tli`, see
//! <https://www.postgresql.org/docs/current/protocol-replication.html>) has one line per
//! ancestor timeline: `parent_tli<TAB>switch_lsn<TAB>reason`, where `switch_lsn` is where the
//! parent timeline ended and its child began; `#` starts a comment.
//!
//! The stream's newest `pgendlsn` `E` may be beyond the switch point `S` of the server's
//! current timeline legitimately: walguard has streamed on the new timeline since. Then the
//! slot has confirmed beyond `S` too, as only what the stream holds is confirmed. So the
//! refusal is `S < E` while the slot's confirmed position `C <= S`: the stream holds events
//! after `S` that nothing on this timeline confirmed. (A walguard killed on the new timeline
//! after publishing beyond `S` and before its first confirmation there is refused too: it
//! cannot be told apart, and `reconcile` shows that nothing differs.)

use crate::lsn::Lsn;

/// One line of a timeline history file: timeline `parent` ended at `switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub parent: u32,
    pub switch: Lsn,
}

/// Reads a timeline history file. Errors name the line.
pub fn parse_history(content: &str) -> Result<Vec<Switch>, String> {
    let mut switches = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "timeline history line {}: expected a timeline and a switch point",
                i + 1
            ));
        };
        let parent = tli
            .parse()
            .map_err(|_| format!("timeline history line {}: {tli:?} is not a timeline", i + 1))?;
        let switch = lsn
            .parse()
            .map_err(|_| format!("timeline history line {}: {lsn:?} is not an LSN", i + 1))?;
        if let Some(last) = switches.last() {
            let last: &Switch = last;
            if parent <= last.parent || switch < last.switch {
                return Err(format!(
                    "timeline history line {}: timelines and switch points must increase",
                    i + 1
                ));
            }
        }
        switches.push(Switch { parent, switch });
    }
    Ok(switches)
}

/// The `bytea` column of TIMELINE_HISTORY as text: the file's bytes, or their `\x` hex form.
pub fn history_text(value: &str) -> String {
    let Some(hex) = value.strip_prefix("\\x") else {
        return value.to_owned();
    };
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect();
    match bytes {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => value.to_owned(),
    }
}

/// Events the new timeline may not have: the stream holds events from `from` (exclusive)
/// up to `to` (inclusive) that came from WAL after the switch point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    pub timeline: u32,
    pub from: Lsn,
    pub to: Lsn,
}

/// The check: on timeline `timeline` whose switch points are `history`, with the stream's
/// newest `pgendlsn` `stream_end` and the slot confirmed at `slot_confirmed`.
pub fn check(timeline: u32, history: &[Switch], stream_end: Lsn, slot_confirmed: Lsn) -> Option<Fork> {
    let switch = history.last()?.switch;
    (timeline > 1 && stream_end > switch && slot_confirmed <= switch).then_some(Fork {
        timeline,
        from: switch,
        to: stream_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    /// As PostgreSQL writes it: `00000003.history` after two promotions.
    const HISTORY: &str =
        "1\t0/3000158\tno recovery target specified\n\n# a comment\n2\t0/5000A28\tno recovery target specified\n";

    #[test]
    fn history_files_parse_as_postgres_writes_them() {
        assert_eq!(
            parse_history(HISTORY).unwrap(),
            [
                Switch {
                    parent: 1,
                    switch: lsn("0/3000158")
                },
                Switch {
                    parent: 2,
                    switch: lsn("0/5000A28")
                },
            ]
        );
        assert_eq!(parse_history("").unwrap(), []);
        for (bad, says) in [
            ("1\n", "line 1"),
            ("x\t0/1\treason", "not a timeline"),
            ("1\t0/1\tr\n1\tzz\tr", "line 2: \"zz\" is not an LSN"),
            ("2\t0/5\tr\n1\t0/6\tr", "must increase"),
            ("1\t0/6\tr\n2\t0/5\tr", "must increase"),
        ] {
            let err = parse_history(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_bytea_column_reads_in_both_forms() {
        assert_eq!(history_text("1\t0/3000158\tr\n"), "1\t0/3000158\tr\n");
        assert_eq!(history_text("\\x3109302f31"), "1\t0/1");
        assert_eq!(history_text("\\xzz"), "\\xzz");
    }

    #[test]
    fn only_events_beyond_the_switch_point_that_nothing_confirmed_are_a_fork() {
        let history = parse_history(HISTORY).unwrap();
        let switch = lsn("0/5000A28");
        // The standby had everything published: no fork.
        assert_eq!(check(3, &history, lsn("0/5000A00"), lsn("0/5000000")), None);
        assert_eq!(check(3, &history, switch, switch), None);
        // Published beyond the switch point, the slot behind it: the old primary's WAL.
        assert_eq!(
            check(3, &history, lsn("0/6000000"), lsn("0/5000000")),
            Some(Fork {
                timeline: 3,
                from: switch,
                to: lsn("0/6000000")
            })
        );
        assert!(check(3, &history, lsn("0/6000000"), switch).is_some());
        // Streamed on the new timeline since: the slot confirmed beyond the switch point.
        assert_eq!(check(3, &history, lsn("0/7000000"), lsn("0/6000000")), None);
        // Timeline 1 has no history.
        assert_eq!(check(1, &[], lsn("0/7000000"), Lsn::ZERO), None);
    }
}
