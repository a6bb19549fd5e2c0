//! http (in progress).

pub mod route;
