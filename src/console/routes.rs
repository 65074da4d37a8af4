//! The console's routes. Every request is logged with its method, path (never the query or
//! body, which may carry a key) and status. Without the token (or a client certificate, which
//! TLS checked before the request was read) every page but the login form and the stylesheet
//! answers 401 with the login form and no data.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};

use super::{render, timeline, Console};
use crate::event::stored::{Data, StoredEvent};

/// No script at all, styles from the console itself, no framing, forms to itself only.
pub const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The largest form body read (a token or a key).
const FORM_LIMIT: usize = 16 * 1024;

type Answer = Response<Full<Bytes>>;

pub async fn handle(console: Arc<Console>, req: Request<Incoming>) -> Result<Answer, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let answer = route(&console, req).await;
    tracing::info!(method = %method, path = %path, status = answer.status().as_u16(), "console request");
    Ok(answer)
}

fn page(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn html(status: StatusCode, body: String) -> Answer {
    page(status, "text/html; charset=utf-8", body)
}

fn redirect(to: &str) -> Answer {
    let mut r = page(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn not_found(what: &str) -> Answer {
    html(StatusCode::NOT_FOUND, render::not_found(what))
}

fn authorized(console: &Console, req: &Request<Incoming>) -> bool {
    let Some(token) = &console.token else {
        // No token configured: loopback only, or TLS that checked a client certificate.
        return true;
    };
    let header = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    header(hyper::header::AUTHORIZATION).is_some_and(|h| token.bearer_ok(h))
        || header(hyper::header::COOKIE).is_some_and(|h| token.cookie_ok(h))
}

async fn route(console: &Console, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["static", "console.css"]) => page(StatusCode::OK, "text/css; charset=utf-8", render::CSS),
        (&Method::GET, ["login"]) => html(StatusCode::OK, render::login(false)),
        (&Method::POST, ["login"]) => login(console, req).await,
        _ if !authorized(console, &req) => html(StatusCode::UNAUTHORIZED, render::login(false)),
        (&Method::GET, [""]) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let index = console.index.read().unwrap_or_else(|p| p.into_inner());
            html(StatusCode::OK, render::overview(&index, now))
        }
        (&Method::GET, ["tables", t]) => table(console, t, query_page(req.uri().query()), false),
        (&Method::POST, ["tables", t, "search"]) => search(console, t, req).await,
        (&Method::GET, ["tables", t, "schemas", s]) => schema(console, t, s).await,
        (&Method::GET, ["tables", t, "entities", e]) => entity(console, t, e, Format::Html).await,
        (&Method::GET, ["tables", t, "entities", e, "timeline.json"]) => entity(console, t, e, Format::Json).await,
        (&Method::GET, ["tables", t, "entities", e, "timeline.csv"]) => entity(console, t, e, Format::Csv).await,
        (&Method::GET, ["tables", t, "entities", e, "events", seq, what @ ("proof" | "event")]) => {
            proof(console, t, e, seq, *what == "proof").await
        }
        (&Method::GET, _) => not_found("no such page"),
        _ => page(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "read-only console\n",
        ),
    }
}

async fn login(console: &Console, req: Request<Incoming>) -> Answer {
    let form = read_form(req).await;
    let token = form_field(&form, "token");
    match (&console.token, token) {
        (Some(t), Some(given)) if t.is(&given) => {
            let mut r = redirect("/");
            if let Ok(v) = HeaderValue::from_str(&t.set_cookie(console.tls)) {
                r.headers_mut().insert(SET_COOKIE, v);
            }
            r
        }
        (None, _) => redirect("/"),
        _ => html(StatusCode::UNAUTHORIZED, render::login(true)),
    }
}

fn query_page(query: Option<&str>) -> usize {
    query
        .and_then(|q| form_field(q, "page"))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn table(console: &Console, t: &str, page_no: usize, missed: bool) -> Answer {
    let index = console.index.read().unwrap_or_else(|p| p.into_inner());
    let Some((id, table)) = t.parse().ok().and_then(|id| Some((id, index.table(id)?))) else {
        return not_found("no such table");
    };
    let status = if missed { StatusCode::NOT_FOUND } else { StatusCode::OK };
    html(status, render::table(id, table, page_no, missed))
}

/// A key searched by POST, so that it is in no URL: found, a redirect to the entity's id.
async fn search(console: &Console, t: &str, req: Request<Incoming>) -> Answer {
    let form = read_form(req).await;
    let key = form_field(&form, "key").unwrap_or_default();
    let found = {
        let index = console.index.read().unwrap_or_else(|p| p.into_inner());
        let id: Option<usize> = t.parse().ok();
        id.and_then(|id| Some((id, index.table(id)?.find(key.trim())?)))
    };
    match found {
        Some((id, e)) => redirect(&format!("/tables/{id}/entities/{e}")),
        None => table(console, t, 0, true),
    }
}

async fn schema(console: &Console, t: &str, s: &str) -> Answer {
    let found = {
        let index = console.index.read().unwrap_or_else(|p| p.into_inner());
        let (id, seq): (Option<usize>, Option<u64>) = (t.parse().ok(), s.parse().ok());
        id.zip(seq).and_then(|(id, seq)| {
            let table = index.table(id)?;
            table.schemas.contains(&seq).then(|| (id, table.name.clone(), seq))
        })
    };
    let Some((id, name, seq)) = found else {
        return not_found("no such schema event");
    };
    let fetched = console.fetch(seq).await;
    match fetched.map(|m| StoredEvent::parse(&m.payload).map(|e| e.data)) {
        Ok(Ok(Data::Schema(s))) => html(StatusCode::OK, render::schema(id, &name, seq, &s)),
        Ok(_) => not_found("that message is not a readable schema event"),
        Err(e) => unavailable(&e),
    }
}

fn unavailable(e: &str) -> Answer {
    tracing::warn!(error = %e, "console: reading an event failed");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        render::not_found("the stream could not be read; try again"),
    )
}

#[derive(Clone, Copy)]
enum Format {
    Html,
    Json,
    Csv,
}

async fn entity(console: &Console, t: &str, e: &str, format: Format) -> Answer {
    let found = {
        let index = console.index.read().unwrap_or_else(|p| p.into_inner());
        let (tid, eid): (Option<usize>, Option<usize>) = (t.parse().ok(), e.parse().ok());
        tid.zip(eid).and_then(|(tid, eid)| {
            let table = index.table(tid)?;
            let entity = table.entities.get(eid)?;
            Some((
                tid,
                eid,
                table.name.clone(),
                entity,
                index.problems.clone(),
                index.checkpoint.as_ref().map(|c| c.size),
            ))
        })
    };
    let Some((tid, eid, name, entity, problems, checkpoint_size)) = found else {
        return not_found("no such entity");
    };
    let mut messages = Vec::with_capacity(entity.sequences.len());
    for seq in &entity.sequences {
        match console.fetch(*seq).await {
            Ok(m) => messages.push(m),
            Err(e) => return unavailable(&e),
        }
    }
    let entries = timeline::build(&messages, &problems);
    match format {
        Format::Html => html(
            StatusCode::OK,
            render::entity(tid, &name, eid, &entity.key, &entries, checkpoint_size),
        ),
        Format::Json => download(
            "application/json",
            "timeline.json",
            timeline::to_json(&name, &entity.key, &entries),
        ),
        Format::Csv => download("text/csv; charset=utf-8", "timeline.csv", timeline::to_csv(&entries)),
    }
}

/// One event's inclusion proof against the newest checkpoint (`proof`, a C2SP tlog-proof) or
/// the event as its export line (`event`): the two files `walguard verify --proof FILE
/// --event FILE` checks offline, made by `walguard prove`'s code.
async fn proof(console: &Console, t: &str, e: &str, seq: &str, proof: bool) -> Answer {
    let found = {
        let index = console.index.read().unwrap_or_else(|p| p.into_inner());
        let (tid, eid, seq): (Option<usize>, Option<usize>, Option<u64>) =
            (t.parse().ok(), e.parse().ok(), seq.parse().ok());
        tid.zip(eid).zip(seq).and_then(|((tid, eid), seq)| {
            let sequences = index.table(tid)?.entities.sequences(eid)?;
            sequences.binary_search(&seq).is_ok().then_some(seq)
        })
    };
    let Some(seq) = found else {
        return not_found("no such event of this entity");
    };
    match console.prove(seq).await {
        Ok(p) if proof => download_named(
            "text/plain; charset=utf-8",
            &format!("sequence-{seq}.tlog-proof"),
            p.proof.to_bytes(),
        ),
        Ok(p) => download_named(
            "application/x-ndjson",
            &format!("sequence-{seq}.tlog-proof.event"),
            format!("{}\n", p.event_line).into_bytes(),
        ),
        Err(e) => {
            tracing::info!(error = %e, "console: no inclusion proof");
            html(StatusCode::NOT_FOUND, render::not_found(&e))
        }
    }
}

fn download_named(content_type: &'static str, name: &str, body: Vec<u8>) -> Answer {
    let mut r = page(StatusCode::OK, content_type, body);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    r
}

fn download(content_type: &'static str, name: &'static str, body: String) -> Answer {
    let mut r = page(StatusCode::OK, content_type, body);
    let disposition = format!("attachment; filename=\"{name}\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        r.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    r
}

async fn read_form(req: Request<Incoming>) -> String {
    let limited = http_body_util::Limited::new(req.into_body(), FORM_LIMIT);
    match limited.collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    }
}

/// The value of `name` in an `application/x-www-form-urlencoded` text.
pub fn form_field(form: &str, name: &str) -> Option<String> {
    form.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => match s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                Some(Ok(b)) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        assert_eq!(form_field("token=a%2Bb+c&key=x", "token").as_deref(), Some("a+b c"));
        assert_eq!(
            form_field("token=a&key=%3Cscript%3E", "key").as_deref(),
            Some("<script>")
        );
        assert_eq!(form_field("key=100%", "key").as_deref(), Some("100%"));
        assert_eq!(form_field("key=%zz", "key").as_deref(), Some("%zz"));
        assert_eq!(form_field("key=%C3%A9", "key").as_deref(), Some("é"));
        assert_eq!(form_field("other=1", "key"), None);
        assert_eq!(query_page(Some("page=3")), 3);
        assert_eq!(query_page(Some("page=x")), 0);
    }

    #[test]
    fn csp_forbids_scripts_and_inline_styles() {
        assert!(CSP.contains("default-src 'none'"));
        assert!(CSP.contains("style-src 'self'"));
        assert!(!CSP.contains("unsafe-inline"));
    }
}
