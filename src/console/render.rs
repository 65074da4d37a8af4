//! The pages as server-rendered HTML. Every text that comes from the stream goes through
//! [`esc`]; links carry table and entity ids only, never a key or any row value (SPEC section
//! 9); forms post to the server; no inline script or style (the CSP forbids them), the look
//! is `/static/console.css`.

use std::fmt::Write;

use super::index::{Index, TableIndex, TimeSeries};
use super::timeline::{json_text, Entry};

/// The console's stylesheet, served as `/static/console.css`.
pub const CSS: &str = include_str!("console.css");

/// Entities on one page of a table.
pub const PAGE: usize = 50;

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · walguard console</title><link rel=\"stylesheet\" href=\"/static/console.css\"></head>\
         <body><header><a class=\"brand\" href=\"/\">walguard console</a></header><main>{body}</main></body></html>\n",
        esc(title)
    )
}

pub fn login(failed: bool) -> String {
    let note = if failed {
        "<p class=\"bad\" id=\"login-failed\">That token is not the console's token.</p>"
    } else {
        "<p>This console needs the token of <code>console.token_file</code>.</p>"
    };
    layout(
        "Log in",
        &format!(
            "<h1>Log in</h1>{note}<form method=\"post\" action=\"/login\">\
             <label for=\"token\">Token</label> <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\">\
             <button type=\"submit\" id=\"login\">Log in</button></form>"
        ),
    )
}

pub fn not_found(what: &str) -> String {
    layout("Not found", &format!("<h1>Not found</h1><p>{}</p>", esc(what)))
}

/// The overview; `now` in Unix seconds (for the watermark's age).
pub fn overview(index: &Index, now: u64) -> String {
    let mut b = String::new();
    let _ = write!(b, "<h1>Stream {}</h1>", esc(&index.stream));
    verification(&mut b, index);
    let span = |p: &Option<(u64, String)>| {
        p.as_ref()
            .map_or("none".to_owned(), |(s, t)| format!("sequence {s} at {}", esc(t)))
    };
    let _ = write!(
        b,
        "<h2>Stream</h2><table class=\"facts\"><tr><th>Messages</th><td id=\"messages\">{}</td></tr>\
         <tr><th>First</th><td>{}</td></tr><tr><th>Last</th><td>{}</td></tr>",
        index.messages,
        span(&index.first),
        span(&index.last)
    );
    let coverage = match &index.newest_watermark {
        None => "no watermark yet".to_owned(),
        Some(t) => match age(t, now) {
            Some(secs) => format!("newest watermark {} ({secs} s ago)", esc(t)),
            None => format!("newest watermark {}", esc(t)),
        },
    };
    let _ = write!(b, "<tr><th>Coverage</th><td id=\"coverage\">{coverage}</td></tr>");
    let _ = write!(
        b,
        "<tr><th>Checkpoints</th><td id=\"checkpoint\">{}</td></tr></table>",
        checkpoint(index)
    );
    tables(&mut b, index);
    layout(&format!("Stream {}", index.stream), &b)
}

/// The newest checkpoint and who cosigned it.
fn checkpoint(index: &Index) -> String {
    let Some(c) = &index.checkpoint else {
        return match index.newest_checkpoint {
            None => "none configured: no checkpoint in the stream".to_owned(),
            Some(s) => format!("newest checkpoint at sequence {s} (not readable by this walguard)"),
        };
    };
    let mut b = format!(
        "newest checkpoint at sequence {} ({}): the first {} messages, signed by the log {}",
        c.sequence,
        esc(&c.time),
        c.size,
        esc(&c.origin)
    );
    b.push_str("<ul id=\"cosignatures\">");
    if c.cosigned.is_empty() && index.witnesses.is_empty() {
        b.push_str("<li>no witness configured (<code>[[audit.witnesses]]</code>)</li>");
    } else if c.cosigned.is_empty() {
        b.push_str("<li class=\"bad\">cosigned by none of the configured witnesses</li>");
    }
    for (name, at) in &c.cosigned {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(*at);
        let _ = write!(
            b,
            "<li class=\"good\">cosigned by witness {} at {} (verified with its key)</li>",
            esc(name),
            humantime::format_rfc3339_seconds(at)
        );
    }
    for name in &c.unchecked {
        let _ = write!(
            b,
            "<li>a signature line by {} (no key configured here to check it)</li>",
            esc(name)
        );
    }
    b.push_str("</ul>");
    b
}

fn verification(b: &mut String, index: &Index) {
    if let Some(e) = &index.read_error {
        let _ = write!(
            b,
            "<p class=\"bad\" id=\"read-error\">Reading the stream failed: {}</p>",
            esc(e)
        );
    }
    if index.problems.is_empty() {
        let _ = write!(
            b,
            "<p class=\"good\" id=\"verification\">Verified: intact up to sequence {}</p>",
            index.verified_to
        );
        return;
    }
    let _ = write!(
        b,
        "<div class=\"bad\" id=\"verification\"><p>NOT intact: {} problem(s); verified up to sequence {}</p><ul>",
        index.problems.len(),
        index.verified_to
    );
    for p in &index.problems {
        let _ = write!(
            b,
            "<li class=\"problem\">sequence {}: {}</li>",
            p.sequence,
            esc(&p.reason)
        );
    }
    b.push_str("</ul></div>");
}

fn tables(b: &mut String, index: &Index) {
    b.push_str("<h2>Tables</h2><table class=\"list\" id=\"tables\"><tr><th>Table</th><th>Events</th><th>By op</th><th>Entities</th></tr>");
    for (id, t) in index.tables.iter().enumerate() {
        let ops: Vec<String> = t.ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        let _ = write!(
            b,
            "<tr><td><a href=\"/tables/{id}\">{}</a></td><td class=\"events\">{}</td><td class=\"ops\">{}</td><td>{}</td></tr>",
            esc(&t.name),
            t.events(),
            esc(&ops.join(", ")),
            t.entities.len()
        );
    }
    b.push_str("</table>");
    b.push_str(&bars(index));
}

/// Events per table as a small server-drawn SVG bar chart.
fn bars(index: &Index) -> String {
    let most = index.tables.iter().map(TableIndex::events).max().unwrap_or(0).max(1);
    let height = 22 * index.tables.len() + 4;
    let mut svg = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"events per table\" width=\"520\" height=\"{height}\" viewBox=\"0 0 520 {height}\">"
    );
    for (i, t) in index.tables.iter().enumerate() {
        let w = 300 * t.events() / most;
        let y = 22 * i + 2;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"200\" y=\"{y}\" width=\"{w}\" height=\"16\"/><text x=\"{}\" y=\"{}\">{}</text>",
            y + 13,
            esc(&t.name),
            205 + w,
            y + 13,
            t.events()
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Height of the tallest bar of [`over_time`].
const BAR_MAX: u64 = 100;

/// A table's events over time as an SVG bar chart: one bar per bucket, its height
/// proportional to its count (the tallest [`BAR_MAX`] pixels), the first and last bucket's
/// start written below.
pub fn over_time(table: &str, ts: &TimeSeries) -> String {
    if ts.counts.is_empty() {
        return "<p>No row event yet.</p>".to_owned();
    }
    let most = ts.counts.iter().copied().max().unwrap_or(0).max(1);
    let n = ts.counts.len() as u64;
    let bar = (500 / n).clamp(2, 40);
    let mut svg = format!(
        "<svg class=\"chart over-time\" role=\"img\" aria-label=\"events of {} over time\" width=\"520\" height=\"140\" viewBox=\"0 0 520 140\">",
        esc(table)
    );
    let when = |secs: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
    };
    for (i, count) in ts.counts.iter().enumerate() {
        let h = BAR_MAX * count / most;
        let x = 10 + i as u64 * bar;
        let from = ts.start + i as u64 * ts.width;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{h}\"><title>{count} event(s) in the {} s from {}</title></rect>",
            10 + BAR_MAX - h,
            bar.saturating_sub(1).max(1),
            ts.width,
            when(from)
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"10\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/><text x=\"10\" y=\"130\">{}</text>",
        10 + n * bar,
        when(ts.start),
        y = 10 + BAR_MAX,
    );
    if n > 1 {
        let last = ts.start + (n - 1) * ts.width;
        let _ = write!(
            svg,
            "<text x=\"510\" y=\"130\" text-anchor=\"end\">{}</text>",
            when(last)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Seconds from an RFC 3339 time to `now`.
fn age(time: &str, now: u64) -> Option<u64> {
    let t = humantime::parse_rfc3339(time).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(now.saturating_sub(secs))
}

/// A table's page: its entities (page `page`, from 0), a search form, its schema history.
pub fn table(id: usize, t: &TableIndex, page: usize, search_missed: bool) -> String {
    let mut b = format!("<h1>Table {}</h1>", esc(&t.name));
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/tables/{id}/search\" class=\"search\"><label for=\"key\">Entity key</label> \
         <input type=\"text\" id=\"key\" name=\"key\"> <button type=\"submit\" id=\"search\">Find</button></form>"
    );
    if search_missed {
        b.push_str("<p class=\"bad\" id=\"search-missed\">No entity of this table has that key.</p>");
    }
    let pages = t.entities.len().div_ceil(PAGE).max(1);
    let page = page.min(pages - 1);
    let _ = write!(
        b,
        "<h2>Entities ({})</h2><table class=\"list\" id=\"entities\"><tr><th>Key</th><th>Events</th></tr>",
        t.entities.len()
    );
    for n in (page * PAGE..t.entities.len()).take(PAGE) {
        let _ = write!(
            b,
            "<tr><td><a href=\"/tables/{id}/entities/{n}\">{}</a></td><td>{}</td></tr>",
            esc(t.entities.key(n).unwrap_or_default()),
            t.entities.count(n).unwrap_or_default()
        );
    }
    b.push_str("</table>");
    if t.unindexed > 0 {
        let _ = write!(
            b,
            "<p class=\"bad\" id=\"unindexed\">{} more row events are counted but listed under no entity: \
             the index is full (it holds 4 GiB of a table's keys and 4,294,967,294 of its row events).</p>",
            t.unindexed
        );
    }
    b.push_str("<p class=\"pages\">");
    if page > 0 {
        let _ = write!(b, "<a href=\"/tables/{id}?page={}\">previous</a> ", page - 1);
    }
    let _ = write!(b, "page {} of {pages}", page + 1);
    if page + 1 < pages {
        let _ = write!(b, " <a href=\"/tables/{id}?page={}\">next</a>", page + 1);
    }
    b.push_str("</p><h2>Events over time</h2>");
    b.push_str(&over_time(&t.name, &t.over_time));
    b.push_str("<h2>Schema history</h2>");
    if t.schemas.is_empty() {
        b.push_str("<p>No schema event for this table.</p>");
    } else {
        b.push_str("<ul id=\"schemas\">");
        for s in &t.schemas {
            let _ = write!(
                b,
                "<li><a href=\"/tables/{id}/schemas/{s}\">schema event at sequence {s}</a></li>"
            );
        }
        b.push_str("</ul>");
    }
    layout(&format!("Table {}", t.name), &b)
}

/// One schema event: its columns and key.
pub fn schema(id: usize, table: &str, sequence: u64, s: &crate::event::schema::TableSchema) -> String {
    let mut b = format!(
        "<h1>Schema of {} at sequence {sequence}</h1><p><a href=\"/tables/{id}\">back to the table</a></p>",
        esc(table)
    );
    let _ = write!(
        b,
        "<p>Key: {}</p><table class=\"list\"><tr><th>Column</th><th>Type</th></tr>",
        esc(&s.key.join(", "))
    );
    for c in &s.columns {
        let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", esc(&c.name), esc(&c.type_name));
    }
    b.push_str("</table>");
    layout(&format!("Schema of {table}"), &b)
}

/// An entity's timeline; `checkpoint_size` is the newest checkpoint's (the events it covers
/// have their inclusion proof to download).
pub fn entity(
    table_id: usize,
    table: &str,
    entity_id: usize,
    key: &str,
    entries: &[Entry],
    checkpoint_size: Option<u64>,
) -> String {
    let base = format!("/tables/{table_id}/entities/{entity_id}");
    let mut b = format!(
        "<h1>{} <span class=\"key\" id=\"entity-key\">{}</span></h1><p><a href=\"/tables/{table_id}\">back to the table</a> · \
         download <a id=\"download-json\" href=\"{base}/timeline.json\">JSON</a> · <a id=\"download-csv\" href=\"{base}/timeline.csv\">CSV</a></p>",
        esc(table),
        esc(key)
    );
    let proofs = match checkpoint_size {
        None => "none yet: no checkpoint in the stream".to_owned(),
        Some(size) => format!(
            "against the newest checkpoint (the first {size} messages): each covered event's proof and event file \
             check offline with <code>walguard verify --proof FILE --event FILE.event --public-key KEY</code>"
        ),
    };
    let _ = write!(b, "<p id=\"proofs\">Inclusion proofs: {proofs}</p>");
    b.push_str(&strip(entries));
    b.push_str("<ol class=\"timeline\" id=\"timeline\">");
    for e in entries {
        let class = if e.problem.is_some() { "event bad" } else { "event" };
        let _ = write!(
            b,
            "<li class=\"{class}\" id=\"seq-{}\"><p class=\"head\"><span class=\"op\">{}</span> at {} · sequence {} · actor {} · signature: {}</p>",
            e.sequence,
            esc(&e.op),
            esc(&e.time),
            e.sequence,
            esc(&json_text(&e.actor)),
            esc(&e.signature)
        );
        if let Some(p) = &e.problem {
            let _ = write!(b, "<p class=\"bad problem\">sequence {}: {}</p>", e.sequence, esc(p));
        }
        if checkpoint_size.is_some_and(|size| e.sequence <= size) {
            let _ = write!(
                b,
                "<p class=\"proof\">download <a class=\"proof\" href=\"{base}/events/{s}/proof\">inclusion proof</a> · \
                 <a class=\"event-file\" href=\"{base}/events/{s}/event\">event</a></p>",
                s = e.sequence
            );
        }
        if !e.changes.is_empty() {
            b.push_str("<table class=\"changes\"><tr><th>Column</th><th>Old</th><th>New</th></tr>");
            for c in &e.changes {
                let show = |v: &Option<serde_json::Value>| v.as_ref().map_or("—".to_owned(), |v| esc(&json_text(v)));
                let changed = if c.old != c.new { " class=\"changed\"" } else { "" };
                let _ = write!(
                    b,
                    "<tr{changed}><td>{}</td><td class=\"old\">{}</td><td class=\"new\">{}</td></tr>",
                    esc(&c.column),
                    show(&c.old),
                    show(&c.new)
                );
            }
            b.push_str("</table>");
        }
        b.push_str("</li>");
    }
    b.push_str("</ol>");
    layout(&format!("{table} entity"), &b)
}

/// The entity's events as marks on a line, in stream order (an SVG).
fn strip(entries: &[Entry]) -> String {
    let n = entries.len().max(1);
    let mut svg = String::from("<svg class=\"strip\" role=\"img\" aria-label=\"the entity's events\" width=\"520\" height=\"30\" viewBox=\"0 0 520 30\"><line x1=\"10\" y1=\"15\" x2=\"510\" y2=\"15\"/>");
    for (i, e) in entries.iter().enumerate() {
        let x = 10 + 500 * i / n.saturating_sub(1).max(1);
        let class = if e.problem.is_some() { "bad" } else { &e.op };
        let _ = write!(
            svg,
            "<circle class=\"{}\" cx=\"{x}\" cy=\"15\" r=\"6\"><title>{} {}</title></circle>",
            esc(class),
            esc(&e.op),
            e.sequence
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::index::tests::{add, message, row};
    use serde_json::{json, Value};

    const EVIL: &str = "<script>alert(1)</script>";

    fn index_with_evil_key() -> Index {
        let mut index = Index::new("WG<b>");
        let r = row("insert", 1, Value::Null, json!({"id": 1, "name": EVIL}));
        add(&mut index, &message(2, &format!("public.customers/{EVIL}"), r));
        index
    }

    #[test]
    fn escaping_covers_every_special_character() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn row_values_stay_text_and_never_reach_a_url() {
        let index = index_with_evil_key();
        let pages = [overview(&index, 0), table(0, &index.tables[0], 0, false)];
        for p in &pages {
            assert!(!p.contains("<script"), "{p}");
        }
        assert!(pages[1].contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(pages[1].contains("href=\"/tables/0/entities/0\""));
        let msgs = [message(
            2,
            "public.customers/1",
            row("insert", 1, Value::Null, json!({"id": 1, "name": EVIL})),
        )];
        let entries = super::super::timeline::build(&msgs, &[]);
        let page = entity(0, "public.customers", 0, EVIL, &entries, Some(2));
        assert!(page.contains("href=\"/tables/0/entities/0/events/2/proof\""), "{page}");
        assert!(!entity(0, "t", 0, "1", &entries, Some(1)).contains("/events/2/proof"));
        assert!(!page.contains("<script"), "{page}");
        assert!(
            page.contains("<td class=\"new\">&lt;script&gt;alert(1)&lt;/script&gt;</td>"),
            "{page}"
        );
        for p in pages.iter().chain([&page]) {
            for attr in p.split("href=\"").skip(1).chain(p.split("action=\"").skip(1)) {
                let url = attr.split('"').next().unwrap();
                assert!(!url.contains("script") && !url.contains("alert"), "{url}");
            }
        }
    }

    #[test]
    fn overview_shows_problems_in_red_and_counts() {
        let mut index = index_with_evil_key();
        index.verified_to = 2;
        let ok = overview(&index, 0);
        assert!(ok.contains("class=\"good\" id=\"verification\">Verified: intact up to sequence 2"));
        assert!(ok.contains("<td class=\"events\">1</td>"));
        assert!(ok.contains("none configured"));
        index.problems.push(crate::verify::Problem {
            sequence: 2,
            reason: "signature <forged>".into(),
        });
        let bad = overview(&index, 0);
        assert!(bad.contains("<div class=\"bad\" id=\"verification\">"));
        assert!(bad.contains("<li class=\"problem\">sequence 2: signature &lt;forged&gt;</li>"));
        assert!(bad.contains("Stream WG&lt;b&gt;"));
    }

    /// `(height, title)` of each bar of an [`over_time`] chart.
    fn bars_of(svg: &str) -> Vec<(u64, String)> {
        svg.split("<rect ")
            .skip(1)
            .map(|r| {
                let h = r.split("height=\"").nth(1).unwrap().split('"').next().unwrap();
                let title = r.split("<title>").nth(1).unwrap().split("</title>").next().unwrap();
                (h.parse().unwrap(), title.to_owned())
            })
            .collect()
    }

    #[test]
    fn events_over_time_bars_are_proportional_and_labels_escaped() {
        let ts = TimeSeries {
            start: 1_796_205_600,
            width: 60,
            counts: vec![4, 0, 2, 1],
        };
        let svg = over_time(EVIL, &ts);
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("aria-label=\"events of &lt;script&gt;alert(1)&lt;/script&gt; over time\""));
        let bars = bars_of(&svg);
        let heights: Vec<u64> = bars.iter().map(|b| b.0).collect();
        assert_eq!(heights, vec![BAR_MAX, 0, BAR_MAX / 2, BAR_MAX / 4]);
        assert_eq!(bars[2].1, "2 event(s) in the 60 s from 2026-12-02T10:02:00Z");
        assert!(svg.contains(">2026-12-02T10:00:00Z</text>") && svg.contains(">2026-12-02T10:03:00Z</text>"));
        // Bars stand on one baseline: y + height is the same for all.
        for r in svg.split("<rect ").skip(1) {
            let attr = |n: &str| -> u64 {
                r.split(&format!("{n}=\""))
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            assert_eq!(attr("y") + attr("height"), 10 + BAR_MAX);
        }
        assert_eq!(over_time("t", &TimeSeries::default()), "<p>No row event yet.</p>");
    }

    #[test]
    fn table_pages_and_coverage_age() {
        let mut index = Index::new("WG");
        for n in 0..(PAGE as i64 + 3) {
            let r = row("insert", n, Value::Null, json!({"id": n}));
            add(&mut index, &message(n as u64 + 1, &format!("public.customers/{n}"), r));
        }
        let first = table(0, &index.tables[0], 0, false);
        assert!(first.contains("page 1 of 2") && first.contains("href=\"/tables/0?page=1\">next"));
        let second = table(0, &index.tables[0], 1, true);
        assert!(second.contains("href=\"/tables/0/entities/52\""));
        assert!(second.contains("search-missed"));
        assert_eq!(age("2026-12-02T10:00:00.000000Z", 1_796_205_610), Some(10));
    }
}
