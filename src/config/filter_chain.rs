//! A filter chain's `filter_chain_match` → `ChainMatch`, and Envoy's choice of a listener's
//! chain for a connection: field by field in Envoy's order (destination port, destination
//! IP, server name, transport protocol, application protocols, source IP, source port), the
//! most specific value that matches wins at each field and the choice never goes back up, so
//! a connection that matches a specific value but nothing under it gets the default chain.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::CidrRange as CidrRangeProto;
use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch as FilterChainMatchProto;
use envoy_types::pb::envoy::config::listener::v3::filter_chain_match::ConnectionSourceType;

use super::error::{ConfigError, Result, join_path};
use super::proto::ensure_only;

/// An address range (`address_prefix` / `prefix_len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

impl Cidr {
    fn from_proto(proto: &CidrRangeProto, path: &str) -> Result<Cidr> {
        let address: IpAddr = proto.address_prefix.parse().map_err(|_| {
            ConfigError::invalid(
                join_path(path, "address_prefix"),
                format!("malformed IP address: {}", proto.address_prefix),
            )
        })?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = proto.prefix_len.map_or(0, |l| l.value);
        if len > max {
            return Err(ConfigError::invalid(
                join_path(path, "prefix_len"),
                format!("value must be less than or equal to {max}"),
            ));
        }
        let len = len as u8;
        Ok(Cidr { network: mask(address, len), len })
    }

    fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.len) == self.network
    }
}

/// `address` with all but its first `len` bits cleared.
fn mask(address: IpAddr, len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

/// A validated `filter_chain_match`. Empty lists and unset values match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    destination_port: Option<u16>,
    prefix_ranges: Vec<Cidr>,
    /// Lowercased; a wildcard `*.example.com` is kept as `.example.com`.
    server_names: Vec<String>,
    transport_protocol: String,
    application_protocols: Vec<String>,
    source_prefix_ranges: Vec<Cidr>,
    source_ports: Vec<u16>,
}

/// What a connection tells about itself when its chain is chosen.
#[derive(Debug, Clone)]
pub struct ConnectionFacts<'a> {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The TLS ClientHello's server name, lowercased; empty without one.
    pub server_name: &'a str,
    /// `tls`, or `raw_buffer` when no listener filter found TLS.
    pub transport_protocol: &'a str,
    /// The ClientHello's ALPN protocols, in the client's order.
    pub application_protocols: &'a [String],
}

impl ChainMatch {
    /// Validates a chain's `filter_chain_match` at `path`; `listener` (its address) goes into
    /// Envoy's messages.
    pub fn from_proto(proto: Option<&FilterChainMatchProto>, path: &str, listener: &str) -> Result<ChainMatch> {
        let Some(proto) = proto else { return Ok(ChainMatch::default()) };
        ensure_only(
            proto,
            &[
                "destination_port",
                "prefix_ranges",
                "server_names",
                "transport_protocol",
                "application_protocols",
                "source_type",
                "source_prefix_ranges",
                "source_ports",
            ],
            path,
        )?;
        if ConnectionSourceType::try_from(proto.source_type) != Ok(ConnectionSourceType::Any) {
            return Err(ConfigError::unsupported(join_path(path, "source_type"), "a source type other than ANY"));
        }
        let port = |value: u32, field: &str| -> Result<u16> {
            u16::try_from(value)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ConfigError::invalid(join_path(path, field), "value must be inside range [1, 65535]"))
        };
        let cidrs = |ranges: &[CidrRangeProto], field: &str| -> Result<Vec<Cidr>> {
            ranges.iter().enumerate().map(|(i, r)| Cidr::from_proto(r, &format!("{path}.{field}[{i}]"))).collect()
        };
        let mut server_names = Vec::with_capacity(proto.server_names.len());
        for name in &proto.server_names {
            let name = name.to_ascii_lowercase();
            server_names.push(match name.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') && !suffix.contains('*') => suffix.to_owned(),
                _ if name.contains('*') => {
                    return Err(ConfigError::invalid(
                        join_path(path, "server_names"),
                        format!("error adding listener '{listener}': partial wildcards are not supported in \"server_names\""),
                    ));
                }
                _ => name,
            });
        }
        Ok(ChainMatch {
            destination_port: proto.destination_port.map(|p| port(p.value, "destination_port")).transpose()?,
            prefix_ranges: cidrs(&proto.prefix_ranges, "prefix_ranges")?,
            server_names,
            transport_protocol: proto.transport_protocol.clone(),
            application_protocols: proto.application_protocols.clone(),
            source_prefix_ranges: cidrs(&proto.source_prefix_ranges, "source_prefix_ranges")?,
            source_ports: proto.source_ports.iter().map(|p| port(*p, "source_ports")).collect::<Result<_>>()?,
        })
    }

    /// Whether a connection needs its ClientHello read before this chain can be told from
    /// others: it matches on TLS, a server name or an application protocol.
    pub fn inspects_tls(&self) -> bool {
        !self.server_names.is_empty() || !self.transport_protocol.is_empty() || !self.application_protocols.is_empty()
    }

    /// Every combination of single values this matcher matches (an empty list standing for
    /// "any"): two chains that share one match the same connections alike.
    fn leaves(&self) -> Vec<String> {
        fn any<T: ToString>(values: &[T]) -> Vec<String> {
            if values.is_empty() { vec!["*".to_owned()] } else { values.iter().map(T::to_string).collect() }
        }
        let cidr = |c: &Cidr| format!("{}/{}", c.network, c.len);
        let mut leaves = vec![format!("{:?}|{}", self.destination_port, self.transport_protocol)];
        for field in [
            any(&self.prefix_ranges.iter().map(cidr).collect::<Vec<_>>()),
            any(&self.server_names),
            any(&self.application_protocols),
            any(&self.source_prefix_ranges.iter().map(cidr).collect::<Vec<_>>()),
            any(&self.source_ports),
        ] {
            leaves = leaves.iter().flat_map(|leaf| field.iter().map(move |value| format!("{leaf}|{value}"))).collect();
        }
        leaves
    }
}

/// Refuses two chains that would match some connection alike, as Envoy does.
pub fn ensure_distinct(matches: &[ChainMatch], path: &str, listener: &str) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (i, chain) in matches.iter().enumerate() {
        for leaf in chain.leaves() {
            if let Some(first) = seen.insert(leaf, i)
                && first != i
            {
                return Err(ConfigError::invalid(
                    format!("{path}[{i}].filter_chain_match"),
                    format!(
                        "error adding listener '{listener}': multiple filter chains with overlapping matching rules are defined (filter_chains[{first}] and filter_chains[{i}])"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The chain (an index into `matches`) Envoy gives the connection; `None`: the default
/// chain, if there is one.
pub fn select(matches: &[ChainMatch], facts: &ConnectionFacts<'_>) -> Option<usize> {
    // Most listeners: one chain that matches anything, chosen without the steps below.
    if let [only] = matches
        && *only == ChainMatch::default()
    {
        return Some(0);
    }
    let all: Vec<usize> = (0..matches.len()).collect();
    let port = facts.local.port();
    let chosen = narrow(&all, |i| match matches[i].destination_port {
        Some(p) if p == port => Some(1),
        Some(_) => None,
        None => Some(0),
    });
    let chosen = narrow(&chosen, |i| longest_prefix(&matches[i].prefix_ranges, facts.local.ip()));
    let chosen = narrow(&chosen, |i| server_name_rank(&matches[i].server_names, facts.server_name));
    let chosen = narrow(&chosen, |i| match matches[i].transport_protocol.as_str() {
        "" => Some(0),
        p if p == facts.transport_protocol => Some(1),
        _ => None,
    });
    let chosen = narrow(&chosen, |i| {
        let protocols = &matches[i].application_protocols;
        if protocols.is_empty() {
            return Some(0);
        }
        // The client's first protocol that any chain names wins.
        let offered = facts.application_protocols;
        offered.iter().position(|p| protocols.contains(p)).map(|at| u32::MAX - at as u32)
    });
    let chosen = narrow(&chosen, |i| longest_prefix(&matches[i].source_prefix_ranges, facts.remote.ip()));
    let chosen = narrow(&chosen, |i| match matches[i].source_ports.as_slice() {
        [] => Some(0),
        ports if ports.contains(&facts.remote.port()) => Some(1),
        _ => None,
    });
    chosen.first().copied()
}

/// The candidates whose rank (`None`: no match) is the highest: Envoy takes the most
/// specific value that matches at each field and looks no further.
fn narrow(candidates: &[usize], rank: impl Fn(usize) -> Option<u32>) -> Vec<usize> {
    let ranked: Vec<(usize, u32)> = candidates.iter().filter_map(|&i| rank(i).map(|r| (i, r))).collect();
    let Some(best) = ranked.iter().map(|(_, r)| *r).max() else { return Vec::new() };
    ranked.into_iter().filter(|(_, r)| *r == best).map(|(i, _)| i).collect()
}

/// How specific a match of `address` in `ranges` is: one more than the longest range that
/// holds it; 0 for no ranges (any address).
fn longest_prefix(ranges: &[Cidr], address: IpAddr) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges.iter().filter(|r| r.contains(address)).map(|r| u32::from(r.len) + 1).max()
}

/// How specific a match of `server_name` in `names` is: exact above any wildcard, a longer
/// wildcard suffix above a shorter one, no names (any) lowest.
fn server_name_rank(names: &[String], server_name: &str) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    if names.iter().any(|n| n == server_name) {
        return Some(u32::MAX);
    }
    // `.example.com` and `.com` for `www.example.com`, never the whole name.
    let suffixes = server_name.char_indices().skip(1).filter(|(_, c)| *c == '.').map(|(at, _)| &server_name[at..]);
    suffixes.filter(|suffix| suffix.len() > 1).filter(|s| names.iter().any(|n| n == s)).map(|s| s.len() as u32).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{self, Format};

    fn chain(yaml: &str) -> ChainMatch {
        let proto: FilterChainMatchProto = schema::parse(yaml, Format::Yaml).expect("a FilterChainMatch");
        ChainMatch::from_proto(Some(&proto), "m", "l").expect("valid")
    }

    fn facts<'a>(server_name: &'a str, transport: &'a str, alpn: &'a [String]) -> ConnectionFacts<'a> {
        ConnectionFacts {
            local: "127.0.0.1:443".parse().unwrap(),
            remote: "10.1.2.3:5555".parse().unwrap(),
            server_name,
            transport_protocol: transport,
            application_protocols: alpn,
        }
    }

    #[test]
    fn the_most_specific_server_name_wins_and_the_choice_does_not_go_back() {
        let chains = [
            chain("server_names: [\"*.example.com\"]"),
            chain("server_names: [api.example.com]\ntransport_protocol: tls"),
            chain("server_names: [\"*.com\"]"),
            chain("{}"),
        ];
        let tls = |name| select(&chains, &facts(name, "tls", &[]));
        assert_eq!(tls("api.example.com"), Some(1));
        assert_eq!(tls("www.example.com"), Some(0));
        assert_eq!(tls("a.b.example.com"), Some(0));
        assert_eq!(tls("other.com"), Some(2));
        assert_eq!(tls("example.com"), Some(2), "*.example.com does not match example.com");
        assert_eq!(tls(""), Some(3));
        // Exact name found, but its chain wants TLS: no chain, not the wildcard's.
        assert_eq!(select(&chains, &facts("api.example.com", "raw_buffer", &[])), None);
    }

    #[test]
    fn ports_prefixes_protocols_and_sources_narrow_in_envoys_order() {
        let chains = [
            chain("destination_port: 443\napplication_protocols: [h2]"),
            chain("destination_port: 443"),
            chain("prefix_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]"),
            chain("source_prefix_ranges: [{address_prefix: 10.1.0.0, prefix_len: 16}]\nsource_ports: [5555]"),
        ];
        let h2 = ["http/1.1".to_owned(), "h2".to_owned()];
        assert_eq!(select(&chains, &facts("", "tls", &h2)), Some(0));
        assert_eq!(select(&chains, &facts("", "tls", &[])), Some(1));
        let mut other_port = facts("", "raw_buffer", &[]);
        other_port.local = "127.0.0.1:80".parse().unwrap();
        assert_eq!(select(&chains, &other_port), Some(2), "127.0.0.0/8 is above the catch-all");
        other_port.local = "192.168.0.1:80".parse().unwrap();
        assert_eq!(select(&chains, &other_port), Some(3));
        other_port.remote = "10.1.2.3:6666".parse().unwrap();
        assert_eq!(select(&chains, &other_port), None);
    }

    #[test]
    fn overlapping_chains_and_partial_wildcards_are_refused() {
        let overlapping = [chain("server_names: [a.com, b.com]"), chain("server_names: [b.com]")];
        let e = ensure_distinct(&overlapping, "filter_chains", "l").expect_err("b.com twice");
        assert_eq!(e.path, "filter_chains[1].filter_chain_match");
        assert!(ensure_distinct(&[chain("server_names: [a.com]"), chain("{}")], "f", "l").is_ok());
        let proto: FilterChainMatchProto = schema::parse("server_names: [\"a*.com\"]", Format::Yaml).unwrap();
        let e = ChainMatch::from_proto(Some(&proto), "m", "l").expect_err("partial wildcard");
        assert_eq!(e.path, "m.server_names");
    }
}
