//! Envoy's response flags: the short codes (`UH`, `UF`, `NR`, ...) that explain why a
//! request ended the way it did. Owns the set and its text form only; the layers that
//! fail a request decide which flag to set, and the access log prints them in the order
//! they were set, as Envoy 1.40 does.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// A set of Envoy response flags, cheap to copy and to merge, that remembers the order
/// its flags were set in.
#[derive(Clone, Copy, Default)]
pub struct ResponseFlags {
    bits: u32,
    /// The flags in the order they were set, as 5-bit entries (index in `CODES` + 1), the
    /// first in the low bits; room for 12, far more than a request collects.
    order: u64,
}

/// One flag: bit `index`, and itself as the order.
const fn flag(index: u32) -> ResponseFlags {
    ResponseFlags { bits: 1 << index, order: index as u64 + 1 }
}

const ORDER_ENTRY_BITS: u32 = 5;
const ORDER_ENTRIES: u32 = u64::BITS / ORDER_ENTRY_BITS;

impl ResponseFlags {
    /// No flag set; prints as `-`.
    pub const NONE: Self = Self { bits: 0, order: 0 };
    /// `LH`: the local health check failed (this proxy is failing its own health check).
    pub const FAILED_LOCAL_HEALTH_CHECK: Self = flag(0);
    /// `UH`: no healthy upstream host in the cluster.
    pub const NO_HEALTHY_UPSTREAM: Self = flag(1);
    /// `UT`: the upstream request timed out.
    pub const UPSTREAM_REQUEST_TIMEOUT: Self = flag(2);
    /// `LR`: the stream was reset locally.
    pub const LOCAL_RESET: Self = flag(3);
    /// `UR`: the upstream reset the stream.
    pub const UPSTREAM_REMOTE_RESET: Self = flag(4);
    /// `UF`: the upstream connection could not be established.
    pub const UPSTREAM_CONNECTION_FAILURE: Self = flag(5);
    /// `UC`: the upstream connection was terminated mid-request.
    pub const UPSTREAM_CONNECTION_TERMINATION: Self = flag(6);
    /// `UO`: a circuit breaker overflowed.
    pub const UPSTREAM_OVERFLOW: Self = flag(7);
    /// `NR`: no route matched the request.
    pub const NO_ROUTE_FOUND: Self = flag(8);
    /// `DI`: a fault filter delayed the request.
    pub const DELAY_INJECTED: Self = flag(9);
    /// `FI`: a fault filter aborted the request.
    pub const FAULT_INJECTED: Self = flag(10);
    /// `RL`: the request was rate limited locally.
    pub const RATE_LIMITED: Self = flag(11);
    /// `UAEX`: an external authorization service denied the request.
    pub const UNAUTHORIZED_EXTERNAL_SERVICE: Self = flag(12);
    /// `RLSE`: the rate limit service could not be reached.
    pub const RATE_LIMIT_SERVICE_ERROR: Self = flag(13);
    /// `DC`: the downstream connection terminated mid-request.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: Self = flag(14);
    /// `URX`: the retry limit (or connect-attempt limit) was exhausted.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: Self = flag(15);
    /// `SI`: the stream idle timeout fired.
    pub const STREAM_IDLE_TIMEOUT: Self = flag(16);
    /// `IH`: the request carried invalid `x-envoy-*` headers.
    pub const INVALID_ENVOY_REQUEST_HEADERS: Self = flag(17);
    /// `DPE`: the downstream request had an HTTP protocol error.
    pub const DOWNSTREAM_PROTOCOL_ERROR: Self = flag(18);
    /// `UMSDR`: the upstream request reached its max stream duration.
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: Self = flag(19);
    /// `RFCF`: the response came from a cache filter.
    pub const RESPONSE_FROM_CACHE_FILTER: Self = flag(20);
    /// `NFCF`: a filter config did not arrive before its warming deadline.
    pub const NO_FILTER_CONFIG_FOUND: Self = flag(21);
    /// `DT`: the request or connection exceeded its max duration.
    pub const DURATION_TIMEOUT: Self = flag(22);
    /// `UPE`: the upstream response had an HTTP protocol error.
    pub const UPSTREAM_PROTOCOL_ERROR: Self = flag(23);
    /// `NC`: the route's cluster does not exist.
    pub const NO_CLUSTER_FOUND: Self = flag(24);
    /// `OM`: the overload manager rejected the request.
    pub const OVERLOAD_MANAGER: Self = flag(25);
    /// `DF`: DNS resolution of the upstream host failed.
    pub const DNS_RESOLUTION_FAILED: Self = flag(26);
    /// `DO`: the request was dropped by the cluster's drop_overload policy.
    pub const DROP_OVERLOAD: Self = flag(27);
    /// `DR`: the downstream reset the stream.
    pub const DOWNSTREAM_REMOTE_RESET: Self = flag(28);
    /// `UDO`: the request was dropped by an unconditional drop_overload.
    pub const UNCONDITIONAL_DROP_OVERLOAD: Self = flag(29);

    /// Every flag with its short code, in bit order.
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

    /// Adds every flag in `other`, after the ones already set.
    pub fn insert(&mut self, other: Self) {
        *self = self.with(other);
    }

    /// This set plus every flag in `other` (in `other`'s order, after this set's), usable
    /// in constants.
    pub const fn with(self, other: Self) -> Self {
        let mut merged = self;
        let mut entries = other.order;
        while entries != 0 {
            let index = (entries & 0x1f) as u32 - 1;
            entries >>= ORDER_ENTRY_BITS;
            if merged.bits & (1 << index) == 0 {
                let count = merged.bits.count_ones();
                merged.bits |= 1 << index;
                if count < ORDER_ENTRIES {
                    merged.order |= (index as u64 + 1) << (count * ORDER_ENTRY_BITS);
                }
            }
        }
        merged
    }

    /// Whether every flag in `other` is set (true for an empty `other`).
    pub const fn contains(self, other: Self) -> bool {
        self.bits & other.bits == other.bits
    }

    /// Whether any flag in `other` is set.
    pub const fn intersects(self, other: Self) -> bool {
        self.bits & other.bits != 0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// The raw bits, for stats and tests.
    pub const fn bits(self) -> u32 {
        self.bits
    }

    /// The flag with short code `code` (`"UH"`), as used by Envoy's response_flag_filter.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::CODES.iter().find(|(_, c)| *c == code).map(|(flag, _)| *flag)
    }

    /// The short codes of the set flags, in the order they were set.
    pub fn codes(self) -> impl Iterator<Item = &'static str> {
        let mut entries = self.order;
        std::iter::from_fn(move || {
            let entry = entries & 0x1f;
            entries >>= ORDER_ENTRY_BITS;
            (entry != 0).then(|| Self::CODES[entry as usize - 1].1)
        })
    }
}

impl PartialEq for ResponseFlags {
    /// The same flags, whatever their order.
    fn eq(&self, other: &Self) -> bool {
        self.bits == other.bits
    }
}

impl Eq for ResponseFlags {}

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
    fn codes_print_in_insertion_order() {
        // Envoy 1.40 keeps its flags in a list in the order they were set (a retry gives
        // up, `URX`, before the failure is answered, `UF`).
        let mut flags = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
        flags.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        flags |= ResponseFlags::NO_HEALTHY_UPSTREAM;
        flags.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        assert_eq!(flags.to_string(), "URX,UF,UH");
        let flags = ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION | ResponseFlags::RATE_LIMIT_SERVICE_ERROR;
        assert_eq!(flags.to_string(), "DC,RLSE");
        assert_eq!(flags, ResponseFlags::RATE_LIMIT_SERVICE_ERROR | ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
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
