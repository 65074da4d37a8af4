//! What walguard makes of a PostgreSQL error code (SQLSTATE), in one place for both
//! connections: the replication connection (`conn`, which reads the code from the
//! ErrorResponse itself) and the catalog connection (`catalog`, through tokio-postgres).
//!
//! A transient error is one that retrying later can get past without anyone changing
//! anything: the session ends and the next one starts from the stream's tail. Everything else
//! is permanent: walguard stops and says why. The codes are named by tokio-postgres's
//! `SqlState` constants; the table of meanings is PostgreSQL's appendix A
//! (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).

use tokio_postgres::error::SqlState;

/// Classes in which every code is transient: the connection broke (08: the server went away,
/// a network cut), or the server lacks a resource for now (53: too many connections, out of
/// memory, disk full, every replication slot or WAL sender taken), which frees up without
/// walguard doing anything differently.
const TRANSIENT_CLASSES: [SqlState; 2] = [SqlState::CONNECTION_EXCEPTION, SqlState::INSUFFICIENT_RESOURCES];

/// Single transient codes outside those classes.
const TRANSIENT_CODES: [SqlState; 7] = [
    // 57P01: an administrator or a fast shutdown ended the backend (also pg_terminate_backend).
    SqlState::ADMIN_SHUTDOWN,
    // 57P02: another backend crashed and the server is restarting.
    SqlState::CRASH_SHUTDOWN,
    // 57P03: the server is starting up or in recovery and takes no connections yet.
    SqlState::CANNOT_CONNECT_NOW,
    // 57P05: idle_session_timeout closed the session.
    SqlState::IDLE_SESSION_TIMEOUT,
    // 40001: a serialization failure; on a hot standby also "canceling statement due to
    // conflict with recovery", which a new session gets past.
    SqlState::T_R_SERIALIZATION_FAILURE,
    // 40P01: a deadlock (or a recovery conflict on a buffer pin) cancelled our statement.
    SqlState::T_R_DEADLOCK_DETECTED,
    // 55006: the slot is active for another process: another walguard streams from it. It
    // frees when that one stops, which is how a standby takes over (`is_slot_taken`).
    SqlState::OBJECT_IN_USE,
];

// Deliberately not transient: 57P04 (database_dropped: the database is gone), 57014
// (query_canceled: statement_timeout would cancel the retry too), 55000
// (object_not_in_prerequisite_state: wal_level, an invalidated slot), 28xxx (authentication),
// 42xxx (a missing or duplicate object, a privilege).

/// Whether an error with this code can succeed when simply retried later. A code that is not
/// five characters long is no SQLSTATE, and nothing to retry on.
pub fn is_transient(code: &str) -> bool {
    let in_class = |c: &SqlState| class(code).is_some() && class(c.code()) == class(code);
    TRANSIENT_CLASSES.iter().any(in_class) || TRANSIENT_CODES.iter().any(|c| c.code() == code)
}

/// The class of a SQLSTATE: its first two characters.
fn class(code: &str) -> Option<&str> {
    code.get(..2).filter(|_| code.len() == 5)
}

/// Whether the server refused the slot because another process holds it: START_REPLICATION on
/// a slot active for another PID (55006), or CREATE_REPLICATION_SLOT losing the race to
/// another walguard (42710, duplicate_object). Either way this walguard is a standby.
pub fn is_slot_taken(code: &str) -> bool {
    code == SqlState::OBJECT_IN_USE.code() || code == SqlState::DUPLICATE_OBJECT.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_resource_classes_are_transient() {
        for code in [
            "08000", "08006", "08001", "08P01", "53000", "53100", "53200", "53300", "53400",
        ] {
            assert!(is_transient(code), "{code}");
        }
    }

    #[test]
    fn shutdowns_conflicts_and_a_taken_slot_are_transient() {
        for code in ["57P01", "57P02", "57P03", "57P05", "40001", "40P01", "55006"] {
            assert!(is_transient(code), "{code}");
        }
    }

    #[test]
    fn what_needs_a_person_is_permanent() {
        for code in [
            "57P04", // database dropped
            "57014", // statement timeout
            "55000", // wal_level, an invalidated slot
            "28P01", // wrong password
            "28000", // no pg_hba.conf entry
            "42501", // insufficient privilege
            "42704", // undefined object (a slot that does not exist)
            "42710", // duplicate object: only the slot race makes it a standby, not a retry
            "25006", // read-only transaction (a standby asked to create the publication)
            "XX000", // internal error
        ] {
            assert!(!is_transient(code), "{code}");
        }
    }

    #[test]
    fn malformed_codes_are_permanent() {
        for code in ["", "0", "08", "5300", "080000", "é", "0é000"] {
            assert!(!is_transient(code), "{code:?}");
        }
    }

    #[test]
    fn a_taken_slot_is_55006_or_the_creation_race() {
        assert!(is_slot_taken("55006"));
        assert!(is_slot_taken("42710"));
        assert!(!is_slot_taken("55000"));
        assert!(!is_slot_taken("42704"));
        assert!(!is_slot_taken(""));
    }
}
