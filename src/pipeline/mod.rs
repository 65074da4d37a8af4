//! The stages that run on a started stream and the decisions a session makes before it
//! starts one. `start`: where to start, from the slot and the stream's tail (pure);
//! `timeline`: after a promotion, whether the stream holds events beyond the switch point (pure).
//! `handoff`: the bounded channel of batches from the producers of drafts to the publisher.
//! `reader`: the WAL reader stage; `feedback`: the standby status updates; `slot_monitor`:
//! the slot's health while streaming. Each stage is a struct with one `run`; none knows the
//! others. `app::session` builds them, spawns them and closes them in order.

pub mod feedback;
pub mod handoff;
pub mod reader;
pub mod slot_monitor;
pub mod start;
pub mod timeline;
