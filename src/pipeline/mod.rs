//! The stages that run on a started stream and the decisions a session makes before it
//! starts one. `start`: where to start, from the slot and the stream's tail (pure).

pub mod start;
