//! Compiles the `.proto` files shipped in the pinned envoy-types package into one
//! descriptor set, so that Envoy config (YAML/JSON) is read through Envoy's real
//! schema at run time (see DESIGN.md, "Reading Envoy config through the real schema").

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver};

/// Proto include roots inside envoy-types' `proto/` directory.
const INCLUDE_DIRS: &[&str] = &[
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec/proto",
    "client_model",
    "opentelemetry-proto",
    "ratelimit",
];

/// Files protox cannot compile on their own (a name-resolution difference from protoc).
const SKIPPED: &[&str] = &["envoy/extensions/clusters/dynamic_forward_proxy/v3/cluster.proto"];

/// The closure of these files is what legate reads config through and renders
/// `/config_dump` with. Keeping the runtime pool to this closure keeps it small (the full
/// Envoy schema costs ~50 MB of resident memory once decoded); every other Envoy message
/// name is still known, so a valid extension legate lacks is reported as unsupported.
const RUNTIME_ROOTS: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/retry/priority/previous_priorities/v3/previous_priorities_config.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/admin/v3/clusters.proto",
    "envoy/admin/v3/config_dump.proto",
    "envoy/admin/v3/listeners.proto",
    "envoy/admin/v3/server_info.proto",
];

fn main() {
    let proto_root = envoy_proto_dir();
    println!("cargo:rerun-if-env-changed=ENVOY_PROTO_DIR");
    println!("cargo:rerun-if-changed=build.rs");

    let api = proto_root.join("data-plane-api");
    let mut roots = Vec::new();
    collect_protos(&api.join("envoy"), &api, &mut roots);
    roots.retain(|name| !SKIPPED.contains(&name.as_str()) && !name.contains("/v2"));
    roots.sort();

    // protox resolves names against every package in its pool, unlike protoc, which only
    // looks at direct imports; so each root gets its own compiler, sharing compiled files
    // through a cache.
    let cache: Rc<RefCell<HashMap<String, Vec<u8>>>> = Rc::default();
    let compile = |root: &str| {
        let mut chain = ChainFileResolver::new();
        chain.add(CacheResolver(cache.clone()));
        for dir in INCLUDE_DIRS {
            chain.add(IncludeFileResolver::new(proto_root.join(dir)));
        }
        chain.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler.include_imports(true).include_source_info(false);
        if let Err(e) = compiler.open_file(root) {
            panic!("compiling {root}: {e}");
        }
        let pool = compiler.descriptor_pool();
        for file in pool.files() {
            cache.borrow_mut().entry(file.name().to_owned()).or_insert_with(|| file.encode_to_vec());
        }
        pool
    };

    let mut names = BTreeSet::new();
    for root in &roots {
        for file in compile(root).files() {
            for message in file.messages() {
                collect_message_names(&message, &mut names);
            }
        }
    }

    // The runtime set: the runtime roots' closure, dependencies first.
    let mut out = Vec::new();
    let mut written = HashSet::new();
    for root in RUNTIME_ROOTS {
        for file in compile(root).files() {
            if written.insert(file.name().to_owned()) {
                let bytes = &without_options(&cache.borrow()[file.name()]);
                // FileDescriptorSet.file (field 1, length-delimited).
                prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut out);
                prost::encoding::encode_varint(bytes.len() as u64, &mut out);
                out.extend_from_slice(bytes);
            }
        }
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("envoy_descriptor.bin"), out).unwrap();
    let names: Vec<String> = names.into_iter().collect();
    std::fs::write(out_dir.join("envoy_message_names.txt"), names.join("\n")).unwrap();
}

fn collect_message_names(message: &prost_reflect::MessageDescriptor, names: &mut BTreeSet<String>) {
    names.insert(message.full_name().to_owned());
    for child in message.child_messages() {
        collect_message_names(&child, names);
    }
}

/// A file descriptor without what legate never reads at run time: source locations (comments
/// and spans, which protox keeps for the files it resolved through the cache) and options
/// (validation rules, versioning annotations, package names), about half of the decoded pool,
/// which is held while config is read, at start-up above all. Kept: the options decoding
/// depends on (`map_entry`, `packed`, `allow_alias`).
fn without_options(bytes: &[u8]) -> Vec<u8> {
    use prost::Message;
    use prost_reflect::prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto};
    use prost_reflect::prost_types::{EnumOptions, FieldOptions, MessageOptions};

    fn field(field: &mut FieldDescriptorProto) {
        let packed = field.options.as_ref().and_then(|o| o.packed);
        field.options = packed.map(|packed| FieldOptions { packed: Some(packed), ..Default::default() });
    }
    fn enumeration(enumeration: &mut EnumDescriptorProto) {
        let allow_alias = enumeration.options.as_ref().and_then(|o| o.allow_alias);
        enumeration.options = allow_alias.map(|allow| EnumOptions { allow_alias: Some(allow), ..Default::default() });
        for value in &mut enumeration.value {
            value.options = None;
        }
    }
    fn message(descriptor: &mut DescriptorProto) {
        let map_entry = descriptor.options.as_ref().and_then(|o| o.map_entry);
        descriptor.options = map_entry.map(|entry| MessageOptions { map_entry: Some(entry), ..Default::default() });
        descriptor.field.iter_mut().chain(&mut descriptor.extension).for_each(field);
        descriptor.nested_type.iter_mut().for_each(message);
        descriptor.enum_type.iter_mut().for_each(enumeration);
        for oneof in &mut descriptor.oneof_decl {
            oneof.options = None;
        }
    }

    let mut file = FileDescriptorProto::decode(bytes).expect("cached descriptor decodes");
    file.options = None;
    file.source_code_info = None;
    file.message_type.iter_mut().for_each(message);
    file.enum_type.iter_mut().for_each(enumeration);
    file.extension.iter_mut().for_each(field);
    for service in &mut file.service {
        service.options = None;
        for method in &mut service.method {
            method.options = None;
        }
    }
    file.encode_to_vec()
}

struct CacheResolver(Rc<RefCell<HashMap<String, Vec<u8>>>>);

impl FileResolver for CacheResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.borrow().get(name) {
            Some(bytes) => Ok(File::decode_file_descriptor_proto(bytes.as_slice()).expect("cached descriptor decodes")),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

fn collect_protos(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_protos(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(base).unwrap();
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Finds envoy-types' `proto/` directory through `cargo metadata`, or `ENVOY_PROTO_DIR`.
fn envoy_proto_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ENVOY_PROTO_DIR") {
        return PathBuf::from(dir);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let target = std::env::var("TARGET").unwrap();
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform"])
        .arg(&target)
        .arg("--manifest-path")
        .arg(Path::new(&manifest_dir).join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    if let Some(root) = meta["workspace_root"].as_str() {
        println!("cargo:rerun-if-changed={root}/Cargo.lock");
    }
    let package = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types in cargo metadata");
    let manifest = Path::new(package["manifest_path"].as_str().unwrap());
    manifest.parent().unwrap().join("proto")
}
