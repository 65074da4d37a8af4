//! Which of `postgres.url`'s hosts a connection goes to, as libpq picks it (SPEC section 7,
//! "Failover"; <https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-MULTIPLE-HOSTS>).
//!
//! The hosts are tried in the order written. A host that cannot be reached, or refuses the
//! connection, is passed over; a host that answers is asked what it is (`pg_is_in_recovery()`
//! and `transaction_read_only`, which both connections can ask: the replication connection
//! runs SQL in a `replication=database` session) and kept when it is what
//! `target_session_attrs` asks for:
//!
//! | `target_session_attrs` | kept |
//! |---|---|
//! | `any` (default) | the first host that answers |
//! | `read-write` | `transaction_read_only` is off |
//! | `read-only` | `transaction_read_only` is on |
//! | `primary` | not in recovery |
//! | `standby` | in recovery |
//! | `prefer-standby` | in recovery; when no host is, a second pass as `any` |
//!
//! tokio-postgres parses the host list, but knows only `any` and `read-write`, so walguard
//! takes `target_session_attrs` out of the URL (`source::tls`) and selects here, for both
//! connections; each attempt is a one-host configuration (`PgConfig::candidates`) with its
//! own `connect_timeout`.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use crate::source::tls::PgConfig;

/// libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    #[default]
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl FromStr for SessionAttrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            other => {
                return Err(format!(
                    "target_session_attrs {other:?}: expected any, read-write, read-only, primary, standby or prefer-standby"
                ))
            }
        })
    }
}

impl fmt::Display for SessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        })
    }
}

/// What a server that answered says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    /// `pg_is_in_recovery()`: a standby (hot standby, or a server still recovering).
    pub in_recovery: bool,
    /// `transaction_read_only` of a new session.
    pub read_only: bool,
}

impl ServerState {
    /// The query both connections ask a server with; its one row reads with `from_text`.
    pub const QUERY: &'static str = "SELECT pg_is_in_recovery()::text, current_setting('transaction_read_only')";

    /// The row of `QUERY` as text (`true`/`false`, `on`/`off`).
    pub fn from_text(in_recovery: Option<&str>, read_only: Option<&str>) -> Option<ServerState> {
        let in_recovery = match in_recovery? {
            "true" | "t" => true,
            "false" | "f" => false,
            _ => return None,
        };
        let read_only = match read_only? {
            "on" => true,
            "off" => false,
            _ => return None,
        };
        Some(ServerState { in_recovery, read_only })
    }

    fn describe(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "is a standby (in recovery)",
            (false, true) => "is a primary in read-only mode (default_transaction_read_only)",
            (false, false) => "is a read-write primary",
        }
    }
}

impl SessionAttrs {
    /// The passes over the host list: `prefer-standby` looks for a standby first, then takes
    /// any host.
    fn passes(self) -> &'static [SessionAttrs] {
        match self {
            SessionAttrs::PreferStandby => &[SessionAttrs::Standby, SessionAttrs::Any],
            SessionAttrs::Any => &[SessionAttrs::Any],
            SessionAttrs::ReadWrite => &[SessionAttrs::ReadWrite],
            SessionAttrs::ReadOnly => &[SessionAttrs::ReadOnly],
            SessionAttrs::Primary => &[SessionAttrs::Primary],
            SessionAttrs::Standby => &[SessionAttrs::Standby],
        }
    }

    /// Whether a server in `state` is what these attributes ask for (in one pass).
    pub fn accepts(self, state: ServerState) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !state.read_only,
            SessionAttrs::ReadOnly => state.read_only,
            SessionAttrs::Primary => !state.in_recovery,
            SessionAttrs::Standby | SessionAttrs::PreferStandby => state.in_recovery,
        }
    }
}

/// What one host answered to a connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It could not be reached or refused the connection (the error, as text).
    Failed(String),
    Up(ServerState),
}

/// Which host `attrs` chooses, given what every host answers (in the order written): the
/// rule `connect` follows, as a pure function.
pub fn choose(attrs: SessionAttrs, answers: &[Answer]) -> Option<usize> {
    attrs.passes().iter().find_map(|pass| {
        answers
            .iter()
            .position(|a| matches!(a, Answer::Up(state) if pass.accepts(*state)))
    })
}

/// Why no host was chosen.
#[derive(Debug)]
pub enum NoHost<E> {
    /// The URL names one host and connecting to it failed: its own error, unchanged.
    Single(E),
    /// No host was what `target_session_attrs` asks for, or none could be reached:
    /// `message` names every host and what it answered. `transient`: some host answered, or
    /// failed in a way that can pass (a standby promoted, a server back), so trying again
    /// later can succeed.
    Listed { message: String, transient: bool },
}

/// Connects to the first host of `pg` that is what its `target_session_attrs` asks for.
/// `attempt` opens one connection to a one-host configuration and asks its state;
/// `transient` tells an attempt's error that may pass from one that needs a person.
/// Returns the connection and the one-host configuration it was made with.
pub async fn connect<C, E, F, Fut>(
    pg: &PgConfig,
    mut attempt: F,
    transient: impl Fn(&E) -> bool,
) -> Result<(C, PgConfig), NoHost<E>>
where
    E: fmt::Display,
    F: FnMut(PgConfig) -> Fut,
    Fut: Future<Output = Result<(C, ServerState), E>>,
{
    let attrs = pg.session_attrs;
    let candidates = pg.candidates();
    let mut answers: Vec<(String, Answer)> = Vec::new();
    let mut any_transient = false;
    let mut last_error = None;
    for pass in attrs.passes() {
        for candidate in &candidates {
            let label = candidate.host_label();
            match attempt(candidate.clone()).await {
                Ok((conn, state)) if pass.accepts(state) => return Ok((conn, candidate.clone())),
                Ok((_, state)) => {
                    any_transient = true;
                    answers.retain(|(l, _)| *l != label);
                    answers.push((label, Answer::Up(state)));
                }
                Err(e) => {
                    any_transient |= transient(&e);
                    answers.retain(|(l, _)| *l != label);
                    answers.push((label, Answer::Failed(e.to_string())));
                    last_error = Some(e);
                }
            }
        }
    }
    if let (1, Some(e)) = (candidates.len(), last_error) {
        return Err(NoHost::Single(e));
    }
    Err(NoHost::Listed {
        message: describe_answers(attrs, &answers),
        transient: any_transient,
    })
}

/// "no host of postgres.url (h1:5432, h2:5433) is read-write: h1:5432: connection refused;
/// h2:5433 is a standby (in recovery)".
pub fn describe_answers(attrs: SessionAttrs, answers: &[(String, Answer)]) -> String {
    let hosts: Vec<&str> = answers.iter().map(|(l, _)| l.as_str()).collect();
    let each: Vec<String> = answers
        .iter()
        .map(|(label, answer)| match answer {
            Answer::Failed(e) => format!("{label}: {e}"),
            Answer::Up(state) => format!("{label} {}", state.describe()),
        })
        .collect();
    let wanted = match attrs {
        SessionAttrs::Any | SessionAttrs::PreferStandby => "reachable".to_owned(),
        other => format!("{other} (target_session_attrs={other})"),
    };
    format!(
        "no host of postgres.url ({}) is {wanted}: {}",
        hosts.join(", "),
        each.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: ServerState = ServerState {
        in_recovery: false,
        read_only: false,
    };
    const STANDBY: ServerState = ServerState {
        in_recovery: true,
        read_only: true,
    };
    const READ_ONLY_PRIMARY: ServerState = ServerState {
        in_recovery: false,
        read_only: true,
    };

    fn down() -> Answer {
        Answer::Failed("connection refused".into())
    }

    #[test]
    fn every_attribute_chooses_as_libpq_does() {
        use Answer::Up;
        let dead_standby_primary = [down(), Up(STANDBY), Up(PRIMARY)];
        let cases = [
            (SessionAttrs::Any, Some(1)),
            (SessionAttrs::ReadWrite, Some(2)),
            (SessionAttrs::Primary, Some(2)),
            (SessionAttrs::ReadOnly, Some(1)),
            (SessionAttrs::Standby, Some(1)),
            (SessionAttrs::PreferStandby, Some(1)),
        ];
        for (attrs, chosen) in cases {
            assert_eq!(choose(attrs, &dead_standby_primary), chosen, "{attrs}");
        }
        // A read-only primary is read-only for read-write but a primary for primary.
        let ro = [Up(READ_ONLY_PRIMARY), Up(STANDBY)];
        assert_eq!(choose(SessionAttrs::ReadWrite, &ro), None);
        assert_eq!(choose(SessionAttrs::Primary, &ro), Some(0));
        assert_eq!(choose(SessionAttrs::ReadOnly, &ro), Some(0));
        assert_eq!(choose(SessionAttrs::Standby, &ro), Some(1));
        // prefer-standby without a standby: any host, the first that answers.
        let no_standby = [down(), Up(PRIMARY), Up(READ_ONLY_PRIMARY)];
        assert_eq!(choose(SessionAttrs::PreferStandby, &no_standby), Some(1));
        assert_eq!(choose(SessionAttrs::Standby, &no_standby), None);
        // Nothing reachable: nothing chosen, whatever is asked.
        for attrs in [SessionAttrs::Any, SessionAttrs::PreferStandby] {
            assert_eq!(choose(attrs, &[down(), down()]), None);
        }
        // After a promotion the old primary is down and the new one is first to be a primary.
        assert_eq!(choose(SessionAttrs::ReadWrite, &[down(), Up(PRIMARY)]), Some(1));
    }

    #[test]
    fn attributes_parse_as_libpq_spells_them() {
        for name in ["any", "read-write", "read-only", "primary", "standby", "prefer-standby"] {
            assert_eq!(name.parse::<SessionAttrs>().unwrap().to_string(), name);
        }
        let err = "readwrite".parse::<SessionAttrs>().unwrap_err();
        assert!(
            err.contains("target_session_attrs") && err.contains("prefer-standby"),
            "{err}"
        );
    }

    #[test]
    fn server_state_reads_the_query_row() {
        assert_eq!(ServerState::from_text(Some("true"), Some("on")), Some(STANDBY));
        assert_eq!(ServerState::from_text(Some("false"), Some("off")), Some(PRIMARY));
        assert_eq!(ServerState::from_text(Some("yes"), Some("off")), None);
        assert_eq!(ServerState::from_text(None, Some("off")), None);
    }

    /// The connection loop over fake hosts: each answer is given by the host's port.
    async fn connect_with(url: &str, answer: impl Fn(u16) -> Result<ServerState, String>) -> Result<u16, String> {
        let pg = PgConfig::parse(url).unwrap();
        let mut tried = Vec::new();
        let result = connect(
            &pg,
            |one: PgConfig| {
                let port = one.get_ports()[0];
                tried.push(port);
                let a = answer(port).map(|s| (port, s));
                async move { a }
            },
            |_| true,
        )
        .await;
        match result {
            Ok((port, one)) => {
                assert_eq!(one.get_ports(), [port]);
                assert_eq!(one.get_hosts().len(), 1);
                Ok(port)
            }
            Err(NoHost::Single(e)) => Err(format!("single: {e}")),
            Err(NoHost::Listed { message, .. }) => Err(message),
        }
    }

    #[tokio::test]
    async fn connect_tries_the_hosts_in_order_and_says_what_each_answered() {
        let answer = |port: u16| match port {
            5001 => Err("connection refused".to_owned()),
            5002 => Ok(STANDBY),
            _ => Ok(PRIMARY),
        };
        let url = "postgres://u@h1:5001,h2:5002,h3:5003/db?target_session_attrs=read-write";
        assert_eq!(connect_with(url, answer).await, Ok(5003));
        let kv = "host=h1,h2,h3 port=5001,5002,5003 target_session_attrs=prefer-standby";
        assert_eq!(connect_with(kv, answer).await, Ok(5002));
        let only_two = "postgres://u@h1:5001,h2:5002/db?target_session_attrs=primary";
        let err = connect_with(only_two, answer).await.unwrap_err();
        assert!(
            err.contains("(h1:5001, h2:5002)") && err.contains("is primary"),
            "{err}"
        );
        assert!(
            err.contains("h1:5001: connection refused") && err.contains("h2:5002 is a standby"),
            "{err}"
        );
        // One host: its own error, unchanged.
        let one = "postgres://u@h1:5001/db";
        assert_eq!(
            connect_with(one, answer).await,
            Err("single: connection refused".into())
        );
    }
}
