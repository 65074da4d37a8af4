//! PostgreSQL I/O only: the replication connection (`conn`), the SQL catalog connection
//! (`catalog`), the connection settings and TLS (`tls`), which of several hosts a
//! connection goes to (`hosts`), and which server errors are
//! transient (`sqlstate`). The stages that run on a started stream live in `pipeline/`.

pub mod catalog;
pub mod conn;
pub mod hosts;
pub mod schema;
pub mod sqlstate;
pub mod tls;
