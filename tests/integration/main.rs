//! Integration tests over loopback: legate in-process (or as the real binary for CLI,
//! validation and signals), real hyper upstreams, real HTTP/1.1 and h2c clients.

mod admin;
mod circuit_breakers;
mod cli;
mod control_plane;
mod dns;
mod downstream_http1;
mod downstream_http2;
mod filter_chains;
mod health_check;
mod local_replies;
mod outlier;
mod proxying;
mod retries;
mod routing;
mod support;
mod tcp_proxy;
mod timeouts;
mod tls;
mod upstream_http1;
mod xds;
mod xds_envoy;
