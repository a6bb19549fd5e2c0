//! DNS discovery for `STRICT_DNS` and `LOGICAL_DNS` clusters. The upstream thread
//! (`upstream::tasks`) resolves each such cluster's names on the cluster's schedule and
//! hands the hosts to the cluster manager, which publishes a rebuilt cluster when they
//! changed. Names are resolved
//! by hickory with the system's configuration (`/etc/resolv.conf`, `/etc/hosts`), as
//! Envoy's default resolver reads them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

use super::manager::ClusterManager;
use crate::config::cluster::{DnsDiscovery, HostSpec, LookupFamily};

/// Resolve `cluster`'s names now and then on its schedule, replacing any earlier schedule
/// for the name; the schedule ends when the manager no longer has this discovery.
pub struct Watch {
    pub cluster: String,
    pub discovery: Arc<DnsDiscovery>,
}

/// One resolver per lookup family in use (hickory's strategy is a resolver option).
#[derive(Default)]
pub(super) struct Resolvers(std::cell::RefCell<HashMap<LookupFamily, Rc<TokioResolver>>>);

impl Resolvers {
    /// The family's resolver, built on first use; an error (logged) when hickory cannot
    /// build one, which fails the round, as an unreachable name server would.
    fn get(&self, family: LookupFamily) -> Result<Rc<TokioResolver>, String> {
        let strategy = match family {
            LookupFamily::Auto => LookupIpStrategy::Ipv6thenIpv4,
            LookupFamily::V4Only => LookupIpStrategy::Ipv4Only,
            LookupFamily::V6Only => LookupIpStrategy::Ipv6Only,
            LookupFamily::V4Preferred => LookupIpStrategy::Ipv4thenIpv6,
            LookupFamily::All => LookupIpStrategy::Ipv4AndIpv6,
        };
        let mut resolvers = self.0.borrow_mut();
        if let Some(resolver) = resolvers.get(&family) {
            return Ok(resolver.clone());
        }
        let resolver = Rc::new(resolver(strategy)?);
        resolvers.insert(family, resolver.clone());
        Ok(resolver)
    }
}

/// A resolver from the system's configuration, or hickory's defaults when it cannot be read.
fn resolver(strategy: LookupIpStrategy) -> Result<TokioResolver, String> {
    let mut builder = TokioResolver::builder_tokio().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the system DNS configuration; using hickory's defaults");
        TokioResolver::builder_with_config(ResolverConfig::default(), TokioRuntimeProvider::default())
    });
    builder.options_mut().ip_strategy = strategy;
    builder.build().map_err(|e| {
        tracing::error!(error = %e, "cannot build a DNS resolver");
        format!("building a DNS resolver: {e}")
    })
}

/// Resolves a cluster's names and hands the hosts to the manager, until it has another
/// discovery for the cluster (changed or removed).
pub(super) async fn refresh(
    manager: Weak<ClusterManager>,
    resolvers: Rc<Resolvers>,
    cluster: String,
    discovery: Arc<DnsDiscovery>,
) {
    // Each target's last good addresses: a failed resolution keeps them, as Envoy does.
    let mut known: Vec<Option<Vec<IpAddr>>> = vec![None; discovery.targets.len()];
    let mut failures = 0u32;
    loop {
        let mut failed = false;
        let mut expires: Option<Instant> = None;
        let resolver = resolvers.get(discovery.family);
        for (target, known) in discovery.targets.iter().zip(&mut known) {
            match lookup(resolver.as_deref(), &target.name).await {
                Ok((addresses, valid_until)) => {
                    *known = Some(addresses);
                    expires = Some(expires.map_or(valid_until, |e| e.min(valid_until)));
                }
                Err(e) => {
                    tracing::debug!(cluster, name = target.name, error = %e, "DNS resolution failed");
                    failed = true;
                }
            }
        }
        let hosts = hosts(&discovery, &known);
        let Some(manager) = manager.upgrade() else { return };
        if !manager.apply_dns(&cluster, &discovery, hosts, !failed) {
            return;
        }
        drop(manager);
        let wait = if failed {
            failures += 1;
            failure_backoff(&discovery, failures)
        } else {
            failures = 0;
            match expires {
                // A TTL of 0 would have us resolve without pause.
                Some(at) if discovery.respect_ttl => (at - Instant::now()).max(Duration::from_secs(1)),
                _ => discovery.refresh_rate,
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The addresses of `name` (an IP literal is its own address) and until when they hold.
async fn lookup(resolver: Result<&TokioResolver, &String>, name: &str) -> Result<(Vec<IpAddr>, Instant), String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok((vec![ip], Instant::now() + Duration::from_secs(3600)));
    }
    let found = resolver.map_err(String::clone)?.lookup_ip(name).await.map_err(|e| e.to_string())?;
    let addresses: Vec<IpAddr> = found.iter().collect();
    if addresses.is_empty() {
        return Err(format!("no address for {name}"));
    }
    Ok((addresses, Instant::from_std(found.valid_until())))
}

/// The hosts of every target resolved so far: `STRICT_DNS` a host per address, `LOGICAL_DNS`
/// the first address only.
fn hosts(discovery: &DnsDiscovery, known: &[Option<Vec<IpAddr>>]) -> Vec<HostSpec> {
    let mut hosts = Vec::new();
    for (target, addresses) in discovery.targets.iter().zip(known) {
        let addresses = addresses.as_deref().unwrap_or_default();
        let take = if discovery.logical { 1 } else { addresses.len() };
        for ip in addresses.iter().take(take) {
            let address = SocketAddr::new(*ip, target.host.address.port());
            hosts.push(HostSpec { address, ..target.host.clone() });
        }
    }
    hosts
}

/// The wait after `failures` failed rounds in a row: `dns_failure_refresh_rate`'s jittered
/// exponential backoff, or the refresh rate without it.
fn failure_backoff(discovery: &DnsDiscovery, failures: u32) -> Duration {
    let Some((base, max)) = discovery.failure_refresh_rate else {
        return discovery.refresh_rate;
    };
    let ceiling = base.saturating_mul(1 << failures.min(16).saturating_sub(1)).min(max);
    Duration::from_millis(fastrand::u64(0..=ceiling.as_millis() as u64))
}
