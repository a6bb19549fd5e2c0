//! http (in progress).

pub mod access_log;
pub mod flags;
