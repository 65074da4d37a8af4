#![recursion_limit = "256"]
//! End-to-end tests: real PostgreSQL, real nats-server, the real walguard binary. The oracle
//! is the SQL the test writes and the stream the test reads back with its own consumer.
//! Modules by behaviour; `harness` (shared with the benchmark) starts the servers.

mod archive;
mod audit;
mod console;
mod console_browser;
mod console_memory;
mod demo;
mod failover;
mod faults;
#[path = "../harness/mod.rs"]
mod harness;
mod ledger;
mod legacy_tables;
mod ops;
mod pipeline;
mod restore;
mod schema;
mod tls;
mod transparency;
mod witness;
