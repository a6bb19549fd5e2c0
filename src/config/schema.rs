//! Envoy's proto schema at run time: the descriptor set built by `build.rs`, used to
//! read YAML/JSON config through the proto3 JSON mapping and to render protos back to
//! Envoy's JSON for `/config_dump`.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde::Deserialize;

use super::error::{ConfigError, join_path};

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// The decoded pool while it is in use, and when it was last asked for. It is needed only to
/// read config (the bootstrap, xDS resources) and to render admin JSON, so it is decoded on
/// demand and released by `release_idle_pool` once unused for a while. (Decoded, it took
/// about 17 MiB until build.rs left out source locations and options; legate's peak RSS at
/// start-up went from 28.6 to 17.7 MiB.)
static POOL: Mutex<Option<(DescriptorPool, Instant)>> = Mutex::new(None);

/// The pool of every message legate reads or renders, decoded if it is not held now.
pub fn pool() -> DescriptorPool {
    let mut held = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let (pool, last_used) = held.get_or_insert_with(|| {
        (DescriptorPool::decode(DESCRIPTOR_SET).expect("build.rs wrote a valid descriptor set"), Instant::now())
    });
    *last_used = Instant::now();
    pool.clone()
}

/// Releases the pool if it has not been asked for in `idle`, and hands the freed memory back
/// to the system (glibc keeps freed heap pages otherwise). A caller still using a clone
/// keeps it alive until it is done.
pub fn release_idle_pool(idle: Duration) {
    let released = {
        let mut held = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if held.as_ref().is_some_and(|(_, last_used)| last_used.elapsed() >= idle) { held.take() } else { None }
    };
    if released.is_some() {
        drop(released);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The text formats Envoy reads config in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// Envoy picks the format by file extension; JSON is also valid YAML, so YAML is the
    /// fallback for other names.
    pub fn from_path(path: &str) -> Self {
        if path.ends_with(".json") { Format::Json } else { Format::Yaml }
    }
}

/// Parses `text` into the Envoy message `M`, rejecting unknown fields unless allowed
/// (`--allow-unknown-static-fields`), with errors that
/// name the field path (and, for YAML, the line and column).
pub fn parse<M: Message + Name + Default>(text: &str, format: Format) -> Result<M, ConfigError> {
    parse_with(text, format, false)
}

/// `parse`, optionally ignoring unknown fields as `--allow-unknown-static-fields` asks.
pub fn parse_with<M: Message + Name + Default>(
    text: &str,
    format: Format,
    allow_unknown_fields: bool,
) -> Result<M, ConfigError> {
    let desc = pool()
        .get_message_by_name(&M::full_name())
        .unwrap_or_else(|| panic!("{} is in the descriptor set", M::full_name()));
    let options = DeserializeOptions::new().deny_unknown_fields(!allow_unknown_fields);
    let mut track = serde_path_to_error::Track::new();
    let parsed = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let wrapped = serde_path_to_error::Deserializer::new(&mut de, &mut track);
            DynamicMessage::deserialize_with_options(desc.clone(), wrapped, &options)
                .and_then(|m| de.end().map(|()| m))
                .map_err(|e| e.to_string())
        }
        Format::Yaml => serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
            let wrapped = serde_path_to_error::Deserializer::new(de, &mut track);
            DynamicMessage::deserialize_with_options(desc.clone(), wrapped, &options)
        })
        .map_err(|e| e.to_string()),
    };
    // Envoy's reader (protobuf's JSON parser) takes a single value where a list is expected
    // as a list of one. Tried only when the strict parse fails on that, so that the errors of
    // every other config keep their YAML line and column.
    let parsed = match parsed {
        Err(message) if message.contains("expected a list") => {
            singletons_as_lists(text, format, &desc, &options).ok_or(message)
        }
        other => other,
    };
    match parsed {
        Ok(dynamic) => M::decode(dynamic.encode_to_vec().as_slice())
            .map_err(|e| ConfigError::invalid("", format!("proto decode: {e}"))),
        Err(message) => {
            let path = track.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = one_line(&message);
            // An `Any` whose type is Envoy's but outside legate's schema: valid Envoy config
            // that legate does not implement.
            let missing_type = message
                .split_once("message '")
                .and_then(|(_, rest)| rest.split_once("' not found"))
                .map(|(name, _)| name)
                .filter(|name| knows_type(name));
            if let Some(field) = newer_field(&path, &message) {
                return Err(ConfigError::unsupported(
                    join_path(&path, field),
                    "a field of a later Envoy schema than the one legate reads",
                ));
            }
            match missing_type {
                Some(name) => Err(ConfigError::unsupported(path, format!("@type {name}"))),
                None => Err(ConfigError::invalid(path, message)),
            }
        }
    }
}

/// Fields Envoy 1.40 reads that legate's schema (envoy-types' protos) predates, by the
/// repeated field holding their message and their name: valid Envoy config that legate
/// does not implement, rather than a typo.
const NEWER_FIELDS: &[(&str, &str)] = &[("health_checks", "name")];

/// The field of `NEWER_FIELDS` an unknown-field error at `path` is about.
fn newer_field(path: &str, message: &str) -> Option<&'static str> {
    let (_, unknown) = message.split_once("unrecognized field name '")?;
    let unknown = unknown.split_once('\'')?.0;
    let holder = path.rsplit('.').next()?.split('[').next()?;
    NEWER_FIELDS.iter().find(|(h, f)| *h == holder && *f == unknown).map(|(_, f)| *f)
}

fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 50_000_000;
    budget.max_events = 100_000_000;
    serde_saphyr::options! { budget: Some(budget) }
}

/// Parses `text` with every single value given for a repeated field read as a list of one.
fn singletons_as_lists(
    text: &str,
    format: Format,
    desc: &MessageDescriptor,
    options: &DeserializeOptions,
) -> Option<DynamicMessage> {
    let mut value: serde_json::Value = match format {
        Format::Json => serde_json::from_str(text).ok()?,
        Format::Yaml => serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
            serde_json::Value::deserialize(de)
        })
        .ok()?,
    };
    wrap_singletons(&mut value, desc);
    DynamicMessage::deserialize_with_options(desc.clone(), value, options).ok()
}

/// Wraps the non-list values of repeated fields in a list, through nested messages, map
/// values and `Any` (by its `@type`); well-known types with their own JSON form are left alone.
fn wrap_singletons(value: &mut serde_json::Value, desc: &MessageDescriptor) {
    let serde_json::Value::Object(map) = value else { return };
    let desc = if desc.full_name() == "google.protobuf.Any" {
        let inner =
            map.get("@type").and_then(|t| t.as_str()).and_then(|t| pool().get_message_by_name(t.rsplit('/').next()?));
        match inner {
            Some(inner) => inner,
            None => return,
        }
    } else {
        desc.clone()
    };
    if desc.full_name().starts_with("google.protobuf.") {
        return;
    }
    for (key, item) in map.iter_mut() {
        let Some(field) = desc.get_field_by_name(key).or_else(|| desc.get_field_by_json_name(key)) else { continue };
        if field.is_map() {
            if let (Kind::Message(entry), serde_json::Value::Object(entries)) = (field.kind(), &mut *item)
                && let Kind::Message(values) = entry.map_entry_value_field().kind()
            {
                entries.values_mut().for_each(|v| wrap_singletons(v, &values));
            }
            continue;
        }
        if field.is_list() && !item.is_array() && !item.is_null() {
            *item = serde_json::Value::Array(vec![item.take()]);
        }
        if let Kind::Message(message) = field.kind() {
            match item {
                serde_json::Value::Array(items) => items.iter_mut().for_each(|v| wrap_singletons(v, &message)),
                other => wrap_singletons(other, &message),
            }
        }
    }
}

/// Folds a multi-line parser message (YAML snippets) into one line.
fn one_line(message: &str) -> String {
    // serde-saphyr puts "line L column C: message" on the first line; the rest is a snippet.
    let first = message.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// Renders an Envoy message as Envoy's JSON (proto field names, `Any` with `@type`,
/// default values left out, as in `/config_dump`).
pub fn to_json<M: Message + Name>(message: &M) -> serde_json::Value {
    message_to_json(message, true)
}

/// Renders an Envoy message with every scalar field, defaults included, as Envoy prints
/// `/server_info`.
pub fn to_json_with_defaults<M: Message + Name>(message: &M) -> serde_json::Value {
    message_to_json(message, false)
}

fn message_to_json<M: Message + Name>(message: &M, skip_defaults: bool) -> serde_json::Value {
    let desc = pool()
        .get_message_by_name(&M::full_name())
        .unwrap_or_else(|| panic!("{} is in the descriptor set", M::full_name()));
    bytes_to_json(desc, &message.encode_to_vec(), skip_defaults)
}

/// Renders encoded message bytes of descriptor `desc` as Envoy's JSON.
fn bytes_to_json(desc: prost_reflect::MessageDescriptor, bytes: &[u8], skip_defaults: bool) -> serde_json::Value {
    let dynamic = match DynamicMessage::decode(desc, bytes) {
        Ok(d) => d,
        Err(e) => return serde_json::json!({ "error": e.to_string() }),
    };
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(skip_defaults);
    let mut json = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    integral_doubles(&mut json);
    redact_secrets(&mut json);
    json
}

/// Envoy's `sensitive` fields of a TLS certificate, which `/config_dump` prints redacted: each
/// string in them as `[redacted]` (inline bytes as its base64).
fn redact_secrets(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(certificates)) = map.get_mut("tls_certificates") {
                for certificate in certificates.iter_mut().filter_map(serde_json::Value::as_object_mut) {
                    for field in ["private_key", "password", "pkcs12"] {
                        if let Some(secret) = certificate.get_mut(field) {
                            redact_strings(secret);
                        }
                    }
                }
            }
            map.values_mut().for_each(redact_secrets);
        }
        _ => {}
    }
}

fn redact_strings(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => *text = "[redacted]".into(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_strings),
        serde_json::Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match item {
                    // base64 of `[redacted]`, as Envoy prints a redacted bytes field.
                    serde_json::Value::String(bytes) if key == "inline_bytes" => *bytes = "W3JlZGFjdGVkXQ==".into(),
                    _ => redact_strings(item),
                }
            }
        }
        _ => {}
    }
}

/// Prints whole doubles as protobuf's C++ JSON printer does (`7`, not `7.0`): the numbers of
/// `Struct` values (metadata, JSON log formats) and double fields.
fn integral_doubles(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0
            {
                *n = serde_json::Number::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_doubles),
        serde_json::Value::Object(map) => map.values_mut().for_each(integral_doubles),
        _ => {}
    }
}

/// Every message name in Envoy's API (sorted), including those outside the runtime pool.
static ENVOY_MESSAGE_NAMES: &str = include_str!(concat!(env!("OUT_DIR"), "/envoy_message_names.txt"));

/// Whether `@type` names a message in Envoy's API (so one legate lacks is "not supported"
/// rather than invalid).
pub fn knows_type(type_url: &str) -> bool {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    pool().get_message_by_name(name).is_some() || ENVOY_MESSAGE_NAMES.lines().any(|known| known == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_decoded_again_after_release() {
        use envoy_types::pb::envoy::config::core::v3::Node;
        let held = pool();
        release_idle_pool(Duration::ZERO);
        // A clone taken before the release keeps working, and the next use decodes anew.
        assert!(held.get_message_by_name("envoy.config.core.v3.Node").is_some());
        let node: Node = parse("id: a", Format::Yaml).expect("parses after release");
        assert_eq!(node.id, "a");
        // Not idle long enough: kept.
        release_idle_pool(Duration::from_secs(3600));
        assert!(POOL.lock().unwrap().is_some());
    }

    #[test]
    fn a_single_value_for_a_repeated_field_is_a_list_of_one() {
        use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
        let yaml = r#"
static_resources:
  listeners:
    name: main
    address: { socket_address: { address: 127.0.0.1, port_value: 1 } }
    filter_chains:
      filters:
        name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: p
          route_config: { virtual_hosts: { name: all, domains: "*" } }
"#;
        let bootstrap: Bootstrap = parse(yaml, Format::Yaml).expect("Envoy accepts singletons for lists");
        let listeners = &bootstrap.static_resources.unwrap().listeners;
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].filter_chains[0].filters.len(), 1);
        let json = r#"{"static_resources": {"clusters": {"name": "a", "connect_timeout": "1s"}}}"#;
        let bootstrap: Bootstrap = parse(json, Format::Json).expect("in JSON too");
        assert_eq!(bootstrap.static_resources.unwrap().clusters[0].name, "a");
        // A value of the wrong type inside the list is still an error naming the field.
        let bad = "static_resources: { clusters: [{ name: a, dns_resolvers: 5 }] }";
        let error = parse::<Bootstrap>(bad, Format::Yaml).unwrap_err();
        assert!(error.to_string().contains("dns_resolvers"), "{error}");
    }

    #[test]
    fn whole_doubles_print_without_a_fraction() {
        let mut json = serde_json::json!({ "a": 7.0, "b": [0.5, -2.0], "c": { "d": 3 }, "e": "7.0" });
        integral_doubles(&mut json);
        assert_eq!(json.to_string(), r#"{"a":7,"b":[0.5,-2],"c":{"d":3},"e":"7.0"}"#);
    }
}
