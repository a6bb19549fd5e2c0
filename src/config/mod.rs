//! Envoy config → legate's validated model. Pure functions, no I/O beyond reading the
//! bootstrap file: every error names the field path.

pub mod access_log;
pub mod bootstrap;
pub mod cluster;
pub mod error;
pub mod filter_chain;
pub mod hcm;
pub mod listener;
pub mod proto;
pub mod route;
pub mod schema;
pub mod tcp_proxy;
pub mod tls;
pub mod xds;

pub use error::{ConfigError, ErrorKind, Rejected, Result};
