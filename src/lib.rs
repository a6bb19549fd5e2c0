//! legate: an Envoy-compatible xDS data-plane proxy.
//!
//! Config flows one way: `config` turns Envoy protos into validated specs, `upstream`
//! and `listener` turn specs into live objects published as immutable snapshots, and
//! the workers in `http` read those snapshots without locking. See DESIGN.md.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod http;
pub mod listener;
pub mod logging;
pub mod server;
pub mod stats;
pub mod transport;
pub mod upstream;
pub mod worker;
pub mod xds;
