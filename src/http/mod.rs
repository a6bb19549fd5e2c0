//! The HTTP data path: connection manager, routing, the router (proxying), local
//! replies, header policy and access logging.

pub mod access_log;
pub mod body;
pub mod flags;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod path;
pub mod proxy;
pub mod rds;
mod retry;
pub mod route;
