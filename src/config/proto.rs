//! Small helpers over envoy-types' well-known types: durations, `Any` unpacking, and
//! messages kept encoded.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::google::protobuf::{Any, Duration as DurationProto};
use prost::{Message, Name};

use super::error::{ConfigError, Result, join_path};
use super::schema;

/// A message kept in its wire encoding, for config that is held long and read rarely (a
/// cluster's proto, kept for `/config_dump`): a decoded `Cluster` is about 3.3 KB inline,
/// its encoding about 100 B, and 10 000 clusters hold one each.
pub struct Encoded<M> {
    bytes: Arc<[u8]>,
    message: PhantomData<fn() -> M>,
}

impl<M: Message + Default + PartialEq> Encoded<M> {
    /// Encodes `message`.
    pub fn new(message: &M) -> Encoded<M> {
        Encoded { bytes: message.encode_to_vec().into(), message: PhantomData }
    }

    /// Keeps `bytes`, which the caller has just decoded as an `M` (so `decode` gives it
    /// back), without encoding again.
    pub fn from_decoded(bytes: &[u8]) -> Encoded<M> {
        Encoded { bytes: bytes.into(), message: PhantomData }
    }

    /// The message. The bytes were checked when kept, so this cannot fail; were it to,
    /// an empty message is shown rather than a crash.
    pub fn decode(&self) -> M {
        M::decode(&*self.bytes).unwrap_or_default()
    }

    /// Whether both hold the same message. Equal bytes decide at once; otherwise the
    /// decoded messages are compared, since map fields may be encoded in any order.
    pub fn same_message(&self, other: &Encoded<M>) -> bool {
        self.bytes == other.bytes || self.decode() == other.decode()
    }
}

impl<M> Clone for Encoded<M> {
    fn clone(&self) -> Encoded<M> {
        Encoded { bytes: self.bytes.clone(), message: PhantomData }
    }
}

impl<M> fmt::Debug for Encoded<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encoded({} bytes)", self.bytes.len())
    }
}

/// Converts a proto duration; negative durations are invalid in Envoy.
pub fn duration(d: &DurationProto, path: &str) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::invalid(path, "value must be a non-negative duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A backoff's base and maximum intervals (`RetryBackOff`, `RefreshRate`) at `path`: the base
/// is required, the maximum is ten times the base unless given and may not be below it;
/// `check` validates (and may adjust) each against the message's own minimum, given its path.
pub fn backoff_intervals(
    base: Option<&DurationProto>,
    max: Option<&DurationProto>,
    path: &str,
    check: impl Fn(Duration, &str) -> Result<Duration>,
) -> Result<(Duration, Duration)> {
    let interval = |d: &DurationProto, field: &str| {
        let field = join_path(path, field);
        check(duration(d, &field)?, &field)
    };
    let Some(base) = base else {
        return Err(ConfigError::invalid(join_path(path, "base_interval"), "value is required"));
    };
    let base = interval(base, "base_interval")?;
    let max = match max {
        Some(max) => interval(max, "max_interval")?,
        None => base * 10,
    };
    if max < base {
        return Err(ConfigError::invalid(
            join_path(path, "max_interval"),
            "must be greater than or equal to the base_interval",
        ));
    }
    Ok((base, max))
}

/// The message name in a type URL (`type.googleapis.com/envoy.x.v3.Y` → `envoy.x.v3.Y`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// Unpacks an `Any` that must hold an `M`.
pub fn unpack<M: Message + Name + Default>(any: &Any, path: &str) -> Result<M> {
    if type_name(&any.type_url) != M::full_name() {
        return Err(unexpected_type(any, path));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| ConfigError::invalid(format!("{path}.typed_config"), format!("decoding {}: {e}", M::full_name())))
}

/// The error for an `Any` whose type legate does not take at this place: a known Envoy
/// type is "not supported", anything else is invalid.
pub fn unexpected_type(any: &Any, path: &str) -> ConfigError {
    let name = type_name(&any.type_url);
    if schema::knows_type(&any.type_url) {
        ConfigError::unsupported(format!("{path}.typed_config"), format!("@type {name}"))
    } else {
        ConfigError::invalid(format!("{path}.typed_config"), format!("unknown @type '{name}'"))
    }
}

/// Rejects every field set in `message` that is not in `supported`, so a config that
/// relies on behaviour legate lacks fails loudly instead of being silently ignored.
/// Runs at config time only (it re-decodes the message through the schema).
pub fn ensure_only<M: Message + Name>(message: &M, supported: &[&str], path: &str) -> Result<()> {
    let Some(desc) = schema::pool().get_message_by_name(&M::full_name()) else {
        return Ok(());
    };
    let dynamic = prost_reflect::DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .map_err(|e| ConfigError::invalid(path, format!("re-decoding {}: {e}", M::full_name())))?;
    for (field, _) in dynamic.fields() {
        if !supported.contains(&field.name()) {
            return Err(ConfigError::unsupported(join_path(path, field.name()), ""));
        }
    }
    Ok(())
}

/// Reads a `DataSource` (`what` names it in errors, `max` bounds its size); files and
/// environment variables are read once, here. `None` when it has no specifier.
pub fn data_source(source: &DataSource, path: &str, what: &str, max: Option<u32>) -> Result<Option<Bytes>> {
    let DataSource { watched_directory, specifier } = source;
    if watched_directory.is_some() {
        return Err(ConfigError::unsupported(join_path(path, "watched_directory"), ""));
    }
    let too_big = |len: u64| max.filter(|&max| len > u64::from(max));
    let body = match specifier {
        None => return Ok(None),
        Some(data_source::Specifier::InlineBytes(b)) => Bytes::copy_from_slice(b),
        Some(data_source::Specifier::InlineString(s)) => Bytes::copy_from_slice(s.as_bytes()),
        Some(data_source::Specifier::Filename(f)) => {
            let field = join_path(path, "filename");
            let meta =
                std::fs::metadata(f).map_err(|e| ConfigError::invalid(&field, format!("{what} file {f}: {e}")))?;
            if let Some(max) = too_big(meta.len()) {
                return Err(ConfigError::invalid(
                    field,
                    format!("{what} file {f} size is {} bytes; maximum is {max}", meta.len()),
                ));
            }
            Bytes::from(std::fs::read(f).map_err(|e| ConfigError::invalid(&field, format!("{what} file {f}: {e}")))?)
        }
        Some(data_source::Specifier::EnvironmentVariable(v)) => {
            let value = std::env::var_os(v).ok_or_else(|| {
                ConfigError::invalid(
                    join_path(path, "environment_variable"),
                    format!("environment variable {v} is not set"),
                )
            })?;
            Bytes::from(value.into_encoded_bytes())
        }
    };
    if let Some(max) = too_big(body.len() as u64) {
        return Err(ConfigError::invalid(path, format!("{what} size is {} bytes; maximum is {max}", body.len())));
    }
    Ok(Some(body))
}
