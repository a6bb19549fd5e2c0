//! A cluster's `outlier_detection` → [`OutlierSpec`]: which failures eject a host, for how
//! long, and how much of the cluster may be ejected at once, with Envoy's defaults.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection as OutlierProto;
use envoy_types::pb::google::protobuf::{Duration as DurationProto, UInt32Value};

use crate::config::error::{ConfigError, Result, join_path};
use crate::config::proto;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_time`: ten default base ejection times (or the base
/// ejection time, when that is longer).
const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// A percentage from 0 to 100, checked when the config is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(u32);

impl Percent {
    /// The value, 0 to 100.
    pub fn get(self) -> u32 {
        self.0
    }

    /// True with this probability: Envoy's runtime `featureEnabled` with this default.
    pub fn roll(self) -> bool {
        fastrand::u32(..100) < self.0
    }
}

/// A detector of consecutive failures: `threshold` in a row (0 never) eject the host
/// with probability `enforcing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consecutive {
    pub threshold: u32,
    pub enforcing: Percent,
}

/// A detector run over each interval's request counts: it looks at hosts that took at least
/// `request_volume` requests, and only when at least `minimum_hosts` of them did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntervalDetector {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Success rate: a host below the mean minus `factor` standard deviations is an
    /// outlier (`success_rate_stdev_factor` / 1000). Failure percentage: one failing at
    /// least `factor` percent of its requests.
    pub factor: f64,
    /// How often an outlier is ejected, for the upstream's own failures and for local ones
    /// (`split_external_local_origin_errors`).
    pub enforcing: Percent,
    pub enforcing_local_origin: Percent,
}

/// A validated `outlier_detection`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSpec {
    /// How often ejected hosts are checked for return and the success rates computed.
    pub interval: Duration,
    /// An ejection lasts this times the host's ejection count (backed off), at most
    /// `max_ejection_time`, plus up to `max_ejection_jitter`.
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_jitter: Duration,
    /// The share of the cluster's hosts that may be ejected at once.
    pub max_ejection_percent: Percent,
    /// Eject one host even when that is above `max_ejection_percent`.
    pub always_eject_one_host: bool,
    /// Connect failures, resets and timeouts count apart from the upstream's answers.
    pub split_local_origin: bool,
    /// A passed active health check returns an ejected host
    /// (`successful_active_health_check_uneject_host`).
    pub uneject_on_health_check: bool,
    pub consecutive_5xx: Consecutive,
    pub consecutive_gateway_failure: Consecutive,
    /// Counted only with `split_local_origin`.
    pub consecutive_local_origin_failure: Consecutive,
    pub success_rate: IntervalDetector,
    pub failure_percentage: IntervalDetector,
}

/// Translates `outlier_detection` at `path`.
pub fn outlier_detection(proto: &OutlierProto, path: &str) -> Result<OutlierSpec> {
    let field = |name: &str| join_path(path, name);
    let positive = |d: &Option<DurationProto>, name: &str, default: Duration| -> Result<Duration> {
        let Some(d) = d else { return Ok(default) };
        let value = proto::duration(d, &field(name))?;
        if value.is_zero() {
            return Err(ConfigError::invalid(field(name), "value must be greater than 0s"));
        }
        Ok(value)
    };
    let count = |v: &Option<UInt32Value>, default: u32| v.map_or(default, |v| v.value);
    let percent = |v: &Option<UInt32Value>, name: &str, default: u32| -> Result<Percent> {
        let value = count(v, default);
        if value > 100 {
            return Err(ConfigError::invalid(field(name), "value must be less than or equal to 100"));
        }
        Ok(Percent(value))
    };
    if !proto.monitors.is_empty() {
        return Err(ConfigError::unsupported(field("monitors"), ""));
    }
    if proto.detect_degraded_hosts.is_some_and(|d| d.value) {
        return Err(ConfigError::unsupported(field("detect_degraded_hosts"), ""));
    }
    let interval = positive(&proto.interval, "interval", DEFAULT_INTERVAL)?;
    let base_ejection_time = positive(&proto.base_ejection_time, "base_ejection_time", DEFAULT_BASE_EJECTION_TIME)?;
    let max_ejection_time =
        positive(&proto.max_ejection_time, "max_ejection_time", DEFAULT_MAX_EJECTION_TIME.max(base_ejection_time))?;
    if max_ejection_time < base_ejection_time {
        // Envoy's own words for it.
        return Err(ConfigError::invalid(
            field("max_ejection_time"),
            "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
        ));
    }
    let max_ejection_jitter = match &proto.max_ejection_time_jitter {
        Some(d) => proto::duration(d, &field("max_ejection_time_jitter"))?,
        None => Duration::ZERO,
    };
    // A field of `proto` by its name, with Envoy's default.
    macro_rules! count {
        ($field:ident, $default:expr) => {
            count(&proto.$field, $default)
        };
    }
    macro_rules! percent {
        ($field:ident, $default:expr) => {
            percent(&proto.$field, stringify!($field), $default)?
        };
    }
    Ok(OutlierSpec {
        interval,
        base_ejection_time,
        max_ejection_time,
        max_ejection_jitter,
        max_ejection_percent: percent!(max_ejection_percent, 10),
        always_eject_one_host: proto.always_eject_one_host.is_some_and(|v| v.value),
        split_local_origin: proto.split_external_local_origin_errors,
        uneject_on_health_check: proto.successful_active_health_check_uneject_host.is_none_or(|v| v.value),
        consecutive_5xx: Consecutive {
            threshold: count!(consecutive_5xx, 5),
            enforcing: percent!(enforcing_consecutive_5xx, 100),
        },
        consecutive_gateway_failure: Consecutive {
            threshold: count!(consecutive_gateway_failure, 5),
            enforcing: percent!(enforcing_consecutive_gateway_failure, 0),
        },
        consecutive_local_origin_failure: Consecutive {
            threshold: count!(consecutive_local_origin_failure, 5),
            enforcing: percent!(enforcing_consecutive_local_origin_failure, 100),
        },
        success_rate: IntervalDetector {
            minimum_hosts: count!(success_rate_minimum_hosts, 5),
            request_volume: count!(success_rate_request_volume, 100),
            factor: f64::from(count!(success_rate_stdev_factor, 1900)) / 1000.0,
            enforcing: percent!(enforcing_success_rate, 100),
            enforcing_local_origin: percent!(enforcing_local_origin_success_rate, 100),
        },
        failure_percentage: IntervalDetector {
            minimum_hosts: count!(failure_percentage_minimum_hosts, 5),
            request_volume: count!(failure_percentage_request_volume, 50),
            factor: f64::from(percent!(failure_percentage_threshold, 85).0),
            enforcing: percent!(enforcing_failure_percentage, 0),
            enforcing_local_origin: percent!(enforcing_failure_percentage_local_origin, 0),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<OutlierSpec> {
        let text = json.to_string();
        let proto: OutlierProto = crate::config::schema::parse(&text, crate::config::schema::Format::Json).unwrap();
        outlier_detection(&proto, "clusters[0].outlier_detection")
    }

    #[test]
    fn defaults_are_envoys() {
        let spec = parse(serde_json::json!({})).unwrap();
        assert_eq!(spec.interval, Duration::from_secs(10));
        assert_eq!(spec.base_ejection_time, Duration::from_secs(30));
        assert_eq!(spec.max_ejection_time, Duration::from_secs(300));
        assert_eq!(spec.max_ejection_percent.get(), 10);
        assert_eq!(spec.consecutive_5xx, Consecutive { threshold: 5, enforcing: Percent(100) });
        assert_eq!(spec.consecutive_gateway_failure.enforcing.get(), 0);
        assert_eq!(spec.success_rate.factor, 1.9);
        assert_eq!(spec.failure_percentage.factor, 85.0);
        assert_eq!(spec.failure_percentage.enforcing.get(), 0);
    }

    #[test]
    fn max_ejection_time_defaults_to_at_least_the_base() {
        let spec = parse(serde_json::json!({ "base_ejection_time": "400s" })).unwrap();
        assert_eq!(spec.max_ejection_time, Duration::from_secs(400));
        let err = parse(serde_json::json!({ "base_ejection_time": "40s", "max_ejection_time": "20s" })).unwrap_err();
        assert!(err.to_string().contains("clusters[0].outlier_detection.max_ejection_time"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, field) in [
            (serde_json::json!({ "interval": "0s" }), "outlier_detection.interval"),
            (serde_json::json!({ "max_ejection_percent": 101 }), "outlier_detection.max_ejection_percent"),
            (serde_json::json!({ "enforcing_success_rate": 200 }), "outlier_detection.enforcing_success_rate"),
            (serde_json::json!({ "detect_degraded_hosts": true }), "outlier_detection.detect_degraded_hosts"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
