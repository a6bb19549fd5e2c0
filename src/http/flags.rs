//! Envoy's response flags: the short codes (`UH`, `UF`, `NR`, ...) that explain why a
//! request ended the way it did. Owns the bitset and its text form only; the layers that
//! fail a request decide which flag to set, and the access log prints them.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// A set of Envoy response flags, cheap to copy and to merge.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// No flag set; prints as `-`.
    pub const NONE: Self = Self(0);
    /// `LH`: the local health check failed (this proxy is failing its own health check).
    pub const FAILED_LOCAL_HEALTH_CHECK: Self = Self(1 << 0);
    /// `UH`: no healthy upstream host in the cluster.
    pub const NO_HEALTHY_UPSTREAM: Self = Self(1 << 1);
    /// `UT`: the upstream request timed out.
    pub const UPSTREAM_REQUEST_TIMEOUT: Self = Self(1 << 2);
    /// `LR`: the stream was reset locally.
    pub const LOCAL_RESET: Self = Self(1 << 3);
    /// `UR`: the upstream reset the stream.
    pub const UPSTREAM_REMOTE_RESET: Self = Self(1 << 4);
    /// `UF`: the upstream connection could not be established.
    pub const UPSTREAM_CONNECTION_FAILURE: Self = Self(1 << 5);
    /// `UC`: the upstream connection was terminated mid-request.
    pub const UPSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 6);
    /// `UO`: a circuit breaker overflowed.
    pub const UPSTREAM_OVERFLOW: Self = Self(1 << 7);
    /// `NR`: no route matched the request.
    pub const NO_ROUTE_FOUND: Self = Self(1 << 8);
    /// `DI`: a fault filter delayed the request.
    pub const DELAY_INJECTED: Self = Self(1 << 9);
    /// `FI`: a fault filter aborted the request.
    pub const FAULT_INJECTED: Self = Self(1 << 10);
    /// `RL`: the request was rate limited locally.
    pub const RATE_LIMITED: Self = Self(1 << 11);
    /// `UAEX`: an external authorization service denied the request.
    pub const UNAUTHORIZED_EXTERNAL_SERVICE: Self = Self(1 << 12);
    /// `RLSE`: the rate limit service could not be reached.
    pub const RATE_LIMIT_SERVICE_ERROR: Self = Self(1 << 13);
    /// `DC`: the downstream connection terminated mid-request.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 14);
    /// `URX`: the retry limit (or connect-attempt limit) was exhausted.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: Self = Self(1 << 15);
    /// `SI`: the stream idle timeout fired.
    pub const STREAM_IDLE_TIMEOUT: Self = Self(1 << 16);
    /// `IH`: the request carried invalid `x-envoy-*` headers.
    pub const INVALID_ENVOY_REQUEST_HEADERS: Self = Self(1 << 17);
    /// `DPE`: the downstream request had an HTTP protocol error.
    pub const DOWNSTREAM_PROTOCOL_ERROR: Self = Self(1 << 18);
    /// `UMSDR`: the upstream request reached its max stream duration.
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: Self = Self(1 << 19);
    /// `RFCF`: the response came from a cache filter.
    pub const RESPONSE_FROM_CACHE_FILTER: Self = Self(1 << 20);
    /// `NFCF`: a filter config did not arrive before its warming deadline.
    pub const NO_FILTER_CONFIG_FOUND: Self = Self(1 << 21);
    /// `DT`: the request or connection exceeded its max duration.
    pub const DURATION_TIMEOUT: Self = Self(1 << 22);
    /// `UPE`: the upstream response had an HTTP protocol error.
    pub const UPSTREAM_PROTOCOL_ERROR: Self = Self(1 << 23);
    /// `NC`: the route's cluster does not exist.
    pub const NO_CLUSTER_FOUND: Self = Self(1 << 24);
    /// `OM`: the overload manager rejected the request.
    pub const OVERLOAD_MANAGER: Self = Self(1 << 25);
    /// `DF`: DNS resolution of the upstream host failed.
    pub const DNS_RESOLUTION_FAILED: Self = Self(1 << 26);
    /// `DO`: the request was dropped by the cluster's drop_overload policy.
    pub const DROP_OVERLOAD: Self = Self(1 << 27);
    /// `DR`: the downstream reset the stream.
    pub const DOWNSTREAM_REMOTE_RESET: Self = Self(1 << 28);
    /// `UDO`: the request was dropped by an unconditional drop_overload.
    pub const UNCONDITIONAL_DROP_OVERLOAD: Self = Self(1 << 29);

    /// Every flag with its short code, in the order Envoy prints them (its flag enum
    /// order, which is why `UH` comes after `LH` and `DC` after `RLSE`).
    const CODES: [(Self, &'static str); 30] = [
        (Self::FAILED_LOCAL_HEALTH_CHECK, "LH"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (Self::LOCAL_RESET, "LR"),
        (Self::UPSTREAM_REMOTE_RESET, "UR"),
        (Self::UPSTREAM_CONNECTION_FAILURE, "UF"),
        (Self::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::NO_ROUTE_FOUND, "NR"),
        (Self::DELAY_INJECTED, "DI"),
        (Self::FAULT_INJECTED, "FI"),
        (Self::RATE_LIMITED, "RL"),
        (Self::UNAUTHORIZED_EXTERNAL_SERVICE, "UAEX"),
        (Self::RATE_LIMIT_SERVICE_ERROR, "RLSE"),
        (Self::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Self::UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::STREAM_IDLE_TIMEOUT, "SI"),
        (Self::INVALID_ENVOY_REQUEST_HEADERS, "IH"),
        (Self::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
        (Self::UPSTREAM_MAX_STREAM_DURATION_REACHED, "UMSDR"),
        (Self::RESPONSE_FROM_CACHE_FILTER, "RFCF"),
        (Self::NO_FILTER_CONFIG_FOUND, "NFCF"),
        (Self::DURATION_TIMEOUT, "DT"),
        (Self::UPSTREAM_PROTOCOL_ERROR, "UPE"),
        (Self::NO_CLUSTER_FOUND, "NC"),
        (Self::OVERLOAD_MANAGER, "OM"),
        (Self::DNS_RESOLUTION_FAILED, "DF"),
        (Self::DROP_OVERLOAD, "DO"),
        (Self::DOWNSTREAM_REMOTE_RESET, "DR"),
        (Self::UNCONDITIONAL_DROP_OVERLOAD, "UDO"),
    ];

    /// Adds every flag in `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// This set plus every flag in `other`, usable in constants.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every flag in `other` is set (true for an empty `other`).
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag in `other` is set.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits, for stats and tests.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The flag with short code `code` (`"UH"`), as used by Envoy's response_flag_filter.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::CODES.iter().find(|(_, c)| *c == code).map(|(flag, _)| *flag)
    }

    /// The short codes of the set flags, in Envoy's order.
    pub fn codes(self) -> impl Iterator<Item = &'static str> {
        Self::CODES.into_iter().filter(move |(flag, _)| self.intersects(*flag)).map(|(_, code)| code)
    }
}

impl BitOr for ResponseFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        self.with(rhs)
    }
}

impl BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.insert(rhs);
    }
}

impl fmt::Display for ResponseFlags {
    /// Codes joined by `,` (`UF,URX`), or `-` when empty, as `%RESPONSE_FLAGS%` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, code) in self.codes().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(code)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prints_dash() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        assert!(ResponseFlags::default().is_empty());
    }

    #[test]
    fn codes_print_in_envoy_order_not_insertion_order() {
        let mut flags = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        flags.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        flags |= ResponseFlags::NO_HEALTHY_UPSTREAM;
        assert_eq!(flags.to_string(), "UH,UF,URX");
        let flags = ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION | ResponseFlags::RATE_LIMIT_SERVICE_ERROR;
        assert_eq!(flags.to_string(), "RLSE,DC");
    }

    #[test]
    fn every_flag_has_a_distinct_code_and_bit() {
        let all = ResponseFlags::CODES.iter().fold(ResponseFlags::NONE, |acc, (f, _)| acc | *f);
        assert_eq!(all.bits().count_ones() as usize, ResponseFlags::CODES.len());
        for (flag, code) in ResponseFlags::CODES {
            assert_eq!(flag.bits().count_ones(), 1, "{code}");
            assert_eq!(ResponseFlags::from_code(code), Some(flag));
            assert_eq!(flag.to_string(), code);
        }
        assert_eq!(ResponseFlags::from_code("XX"), None);
    }

    #[test]
    fn contains_and_intersects() {
        let flags = ResponseFlags::NO_ROUTE_FOUND.with(ResponseFlags::NO_CLUSTER_FOUND);
        assert!(flags.contains(ResponseFlags::NO_ROUTE_FOUND));
        assert!(!flags.contains(ResponseFlags::NO_ROUTE_FOUND | ResponseFlags::OVERLOAD_MANAGER));
        assert!(flags.intersects(ResponseFlags::NO_ROUTE_FOUND | ResponseFlags::OVERLOAD_MANAGER));
        assert!(!flags.is_empty());
    }
}
