//! Translation and validation tests: every error names its field path.

use std::time::Duration;

use http::StatusCode;

use super::*;
use crate::config::ErrorKind;
use crate::config::schema::{Format, parse};

fn build(yaml: &str) -> Result<RouteTable> {
    let proto = parse::<RouteConfigurationProto>(yaml, Format::Yaml).expect("test YAML matches the schema");
    RouteTable::from_proto(&proto, HostPortMatch::Keep)
}

fn table(yaml: &str) -> RouteTable {
    build(yaml).unwrap_or_else(|e| panic!("config should be valid: {e}"))
}

fn error(yaml: &str) -> ConfigError {
    match build(yaml) {
        Ok(_) => panic!("config should be rejected"),
        Err(e) => e,
    }
}

/// A one-route config: `route` is the YAML of the route's body, indented by 6.
fn one_route(route: &str) -> String {
    format!(
        "
name: local
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: {{ prefix: / }}
{route}"
    )
}

fn only_action(table: &RouteTable) -> &RouteAction {
    &table.virtual_hosts[0].routes[0].action
}

fn forward(table: &RouteTable) -> &ForwardAction {
    match only_action(table) {
        RouteAction::Forward(f) => f,
        other => panic!("expected a forward action, got {other:?}"),
    }
}

#[test]
fn bad_regex_names_the_regex_field() {
    let e = error(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: /a }
        route: { cluster: a }
      - match: { path: /b }
        route: { cluster: b }
      - match: { safe_regex: { regex: '/(unclosed' } }
        route: { cluster: c }
",
    );
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.path, "virtual_hosts[0].routes[2].match.safe_regex.regex");
    assert!(e.message.contains("/(unclosed"), "{}", e.message);
    assert!(!e.message.contains('\n'), "one line: {}", e.message);
}

#[test]
fn duplicate_domains_are_rejected_case_insensitively() {
    let e = error(
        "
name: rc
virtual_hosts:
  - { name: a, domains: ['example.com'], routes: [] }
  - { name: b, domains: ['other.com', 'Example.COM'], routes: [] }
",
    );
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.path, "virtual_hosts[1].domains[1]");
    assert!(e.message.contains("Only unique values for domains are permitted"), "{}", e.message);
    assert!(e.message.contains("Example.COM"), "{}", e.message);

    for dup in ["'*'", "'*.foo.com'", "'foo.*'"] {
        let e = error(&format!(
            "
virtual_hosts:
  - {{ name: a, domains: [{dup}], routes: [] }}
  - {{ name: b, domains: [{dup}], routes: [] }}
"
        ));
        assert_eq!(e.path, "virtual_hosts[1].domains[0]", "{dup}");
    }
}

#[test]
fn route_without_action_or_match_is_invalid() {
    let e = error(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: / }
",
    );
    assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Invalid, "virtual_hosts[0].routes[0]"));

    let e = error(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - route: { cluster: a }
",
    );
    assert_eq!(e.path, "virtual_hosts[0].routes[0].match");

    let e = error(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { headers: [{ name: x }] }
        route: { cluster: a }
",
    );
    assert_eq!(e.path, "virtual_hosts[0].routes[0].match");
}

#[test]
fn unimplemented_fields_are_unsupported_with_their_path() {
    let cases = [
        (
            one_route("        route: { cluster: a, retry_policy: { retry_on: 5xx, per_try_idle_timeout: 1s } }"),
            "virtual_hosts[0].routes[0].route.retry_policy.per_try_idle_timeout",
        ),
        (
            one_route("        route: { cluster: a, hash_policy: [{ filter_state: { key: x } }] }"),
            "virtual_hosts[0].routes[0].route.hash_policy[0].filter_state",
        ),
        (
            one_route("        route: { cluster: a, request_mirror_policies: [{ cluster: m }] }"),
            "virtual_hosts[0].routes[0].route.request_mirror_policies",
        ),
        (
            one_route("        route: { cluster: a, upgrade_configs: [{ upgrade_type: websocket }] }"),
            "virtual_hosts[0].routes[0].route.upgrade_configs",
        ),
        (
            one_route(
                "        route: { cluster: a }
        typed_per_filter_config:
          envoy.filters.http.router:
            '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            ),
            "virtual_hosts[0].routes[0].typed_per_filter_config",
        ),
        (
            "
virtual_hosts:
  - name: vh
    domains: ['*']
    rate_limits: [{ actions: [{ remote_address: {} }] }]
"
            .to_owned(),
            "virtual_hosts[0].rate_limits",
        ),
        (
            "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: /, runtime_fraction: { default_value: { numerator: 50 } } }
        route: { cluster: a }
"
            .to_owned(),
            "virtual_hosts[0].routes[0].match.runtime_fraction",
        ),
        (
            "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: /, headers: [{ name: x, string_match: { custom: { name: c } } }] }
        route: { cluster: a }
"
            .to_owned(),
            "virtual_hosts[0].routes[0].match.headers[0].string_match.custom",
        ),
        ("internal_only_headers: [x-internal]".to_owned(), "internal_only_headers"),
        (
            one_route(
                "        route: { weighted_clusters: { clusters: [{ name: a, weight: 1 }], runtime_key_prefix: rt } }",
            ),
            "virtual_hosts[0].routes[0].route.weighted_clusters.runtime_key_prefix",
        ),
        (
            one_route("        direct_response: { status: 200, body_format: { text_format: x } }"),
            "virtual_hosts[0].routes[0].direct_response.body_format",
        ),
    ];
    for (yaml, path) in cases {
        let e = error(&yaml);
        assert_eq!(e.kind, ErrorKind::Unsupported, "{path}: {e}");
        assert_eq!(e.path, path);
    }
}

#[test]
fn metadata_fields_are_accepted() {
    table(
        "
name: rc
metadata: { filter_metadata: { a: { k: v } } }
virtual_hosts:
  - name: vh
    domains: ['*']
    metadata: { filter_metadata: { a: { k: v } } }
    routes:
      - name: r
        stat_prefix: sp
        decorator: { operation: op }
        metadata: { filter_metadata: { a: { k: v } } }
        match: { prefix: / }
        route: { cluster: a }
",
    );
}

#[test]
fn header_mutation_names_and_values_are_validated() {
    let cases = [
        ("request_headers_to_add: [{ header: { key: ':path', value: /x } }]", "request_headers_to_add[0].header.key"),
        ("request_headers_to_add: [{ header: { key: Host, value: x } }]", "request_headers_to_add[0].header.key"),
        ("response_headers_to_remove: [ok, ':status']", "response_headers_to_remove[1]"),
        ("request_headers_to_remove: [host]", "request_headers_to_remove[0]"),
        ("request_headers_to_add: [{ header: { key: 'bad name', value: x } }]", "request_headers_to_add[0].header.key"),
        ("request_headers_to_add: [{ header: { key: x, value: '100%' } }]", "request_headers_to_add[0].header.value"),
        (
            "request_headers_to_add: [{ header: { key: x, value: a }, append: false, append_action: ADD_IF_ABSENT }]",
            "request_headers_to_add[0]",
        ),
    ];
    for (yaml, path) in cases {
        let e = error(yaml);
        assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Invalid, path), "{yaml}: {e}");
    }
    let e = error("response_headers_to_add: [{ header: { key: x, value: '%REQ(x-a)%' } }]");
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.path, "response_headers_to_add[0].header.value");

    let t = table(
        "
request_headers_to_add:
  - { header: { key: X-Percent, value: '100%%' } }
  - { header: { key: x-empty, value: '' } }
  - { header: { key: x-kept, value: '' }, keep_empty_value: true }
",
    );
    let adds: Vec<_> = t.request_headers.add.iter().map(|a| (a.name.as_str(), a.value.to_str().unwrap())).collect();
    assert_eq!(adds, [("x-percent", "100%"), ("x-kept", "")]);
}

#[test]
fn path_errors_inside_virtual_hosts_are_prefixed() {
    let e = error(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: / }
        route: { cluster: a }
        response_headers_to_add: [{ header: { key: ':authority', value: x } }]
",
    );
    assert_eq!(e.path, "virtual_hosts[0].routes[0].response_headers_to_add[0].header.key");
}

#[test]
fn virtual_host_needs_a_name_and_domains() {
    let e = error("virtual_hosts: [{ name: vh, domains: [] }]");
    assert_eq!(e.path, "virtual_hosts[0].domains");
    let e = error("virtual_hosts: [{ domains: ['*'] }]");
    assert_eq!(e.path, "virtual_hosts[0].name");
}

#[test]
fn weighted_clusters_are_validated() {
    let e = error(&one_route("        route: { weighted_clusters: { clusters: [{ name: a, weight: 0 }] } }"));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].route.weighted_clusters.clusters");
    let e = error(&one_route("        route: { weighted_clusters: { clusters: [{ weight: 1 }] } }"));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0]");
    let e = error(&one_route(
        "        route: { weighted_clusters: { clusters: [{ name: a, cluster_header: x, weight: 1 }] } }",
    ));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0]");
    let e = error(&one_route(
        "        route: { weighted_clusters: { clusters: [{ name: a, weight: 4294967295 }, { name: b, weight: 1 }] } }",
    ));
    assert!(e.message.contains("must not exceed"), "{e}");
    // total_weight is deprecated: the sum of the weights is used even when they disagree.
    table(&one_route(
        "        route: { weighted_clusters: { total_weight: 100, clusters: [{ name: a, weight: 3 }] } }",
    ));
}

#[test]
fn referenced_clusters_lists_static_names_once() {
    let t = table(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: /a }
        route: { cluster: zeta }
      - match: { prefix: /b }
        route: { cluster_header: x-cluster }
      - match: { prefix: /c }
        route:
          weighted_clusters:
            clusters: [{ name: alpha, weight: 1 }, { name: zeta, weight: 1 }, { cluster_header: x-c, weight: 1 }]
      - match: { prefix: /d }
        direct_response: { status: 204 }
",
    );
    assert_eq!(t.referenced_clusters().collect::<Vec<_>>(), ["alpha", "zeta"]);
    assert!(t.validate_clusters());
    assert_eq!(t.validate_clusters_setting(), None);
    let t = table("validate_clusters: false");
    assert!(!t.validate_clusters());
}

#[test]
fn timeouts_default_and_zero() {
    let t = table(&one_route("        route: { cluster: a }"));
    assert_eq!(forward(&t).timeout(), Some(Duration::from_secs(15)));
    assert_eq!(forward(&t).idle_timeout(), IdleTimeout::Inherit);
    let t = table(&one_route("        route: { cluster: a, timeout: 0s, idle_timeout: 0s }"));
    assert_eq!(forward(&t).timeout(), None);
    assert_eq!(forward(&t).idle_timeout(), IdleTimeout::Disabled);
    let t = table(&one_route("        route: { cluster: a, timeout: 2.5s, idle_timeout: 30s }"));
    assert_eq!(forward(&t).timeout(), Some(Duration::from_millis(2500)));
    assert_eq!(forward(&t).idle_timeout(), IdleTimeout::After(Duration::from_secs(30)));
    assert_eq!(forward(&t).cluster_not_found_status(), StatusCode::SERVICE_UNAVAILABLE);
    let t = table(&one_route("        route: { cluster: a, cluster_not_found_response_code: NOT_FOUND }"));
    assert_eq!(forward(&t).cluster_not_found_status(), StatusCode::NOT_FOUND);
    let t = table(&one_route("        route: { cluster: a, auto_host_rewrite: true }"));
    assert!(forward(&t).auto_host_rewrite());
}

#[test]
fn rewrites_are_validated() {
    let e = error(&one_route(
        "        route: { cluster: a, prefix_rewrite: /x, regex_rewrite: { pattern: { regex: a }, substitution: b } }",
    ));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].route.regex_rewrite");
    let e = error(&one_route(
        "        route: { cluster: a, regex_rewrite: { pattern: { regex: '^/(a)$' }, substitution: '\\2' } }",
    ));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].route.regex_rewrite.substitution");
    let e = error(&one_route("        redirect: { regex_rewrite: { pattern: { regex: '(' }, substitution: x } }"));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].redirect.regex_rewrite.pattern.regex");
    let e = error(&one_route("        redirect: { port_redirect: 70000 }"));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].redirect.port_redirect");
    let e = error(&one_route("        route: { cluster: a, path_rewrite: /x }"));
    assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Unsupported, "virtual_hosts[0].routes[0].route.path_rewrite"));
}

#[test]
fn substitution_syntax_is_re2s() {
    use Substitution::{Group, Literal};
    assert_eq!(
        parse_substitution(r"\2/instance/\1\\", 3).unwrap(),
        [Group(2), Literal("/instance/".into()), Group(1), Literal("\\".into())]
    );
    assert!(parse_substitution(r"\x", 3).is_err());
    assert!(parse_substitution(r"\3", 3).is_err());
}

#[test]
fn path_separated_prefix_must_not_end_in_slash() {
    let e = error(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { path_separated_prefix: /api/ }
        route: { cluster: a }
",
    );
    assert_eq!(e.path, "virtual_hosts[0].routes[0].match.path_separated_prefix");
}

#[test]
fn direct_response_status_and_body_are_validated() {
    let e = error(&one_route("        direct_response: { status: 600 }"));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].direct_response.status");
    let big = "x".repeat(4097);
    let e = error(&one_route(&format!("        direct_response: {{ status: 200, body: {{ inline_string: {big} }} }}")));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].direct_response.body");
    let e =
        error(&one_route("        direct_response: { status: 200, body: { filename: /nonexistent/legate/body.txt } }"));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].direct_response.body.filename");

    let file = std::env::temp_dir().join(format!("legate-route-body-{}.txt", std::process::id()));
    std::fs::write(&file, b"from a file").unwrap();
    let t = table(&one_route(&format!(
        "        direct_response: {{ status: 503, body: {{ filename: '{}' }} }}",
        file.display()
    )));
    std::fs::remove_file(&file).unwrap();
    match only_action(&t) {
        RouteAction::DirectResponse { status, body } => {
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(body.as_deref(), Some(&b"from a file"[..]));
        }
        other => panic!("expected a direct response, got {other:?}"),
    }

    let t = table(&format!(
        "max_direct_response_body_size_bytes: 5000\n{}",
        one_route(&format!("        direct_response: {{ status: 200, body: {{ inline_string: {big} }} }}"))
    ));
    assert!(matches!(only_action(&t), RouteAction::DirectResponse { body: Some(b), .. } if b.len() == 4097));
}

#[test]
fn literal_format_escapes_percent() {
    assert_eq!(literal_format(b"a%%b%%", "p").unwrap(), b"a%b%");
    assert_eq!(literal_format(b"%START_TIME%", "p").unwrap_err().kind, ErrorKind::Unsupported);
    assert_eq!(literal_format(b"50%", "p").unwrap_err().kind, ErrorKind::Invalid);
}

#[test]
fn unknown_pseudo_headers_in_matchers_are_unsupported() {
    let e = error(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: /, headers: [{ name: ':protocol', present_match: true }] }
        route: { cluster: a }
",
    );
    assert_eq!((e.kind, e.path.as_str()), (ErrorKind::Unsupported, "virtual_hosts[0].routes[0].match.headers[0].name"));
}

#[test]
fn retry_policy_defaults_and_istio_shape() {
    let t = table(&one_route(
        "        route:
          cluster: a
          retry_policy:
            retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
            num_retries: 2
            retry_host_predicate:
            - name: envoy.retry_host_predicates.previous_hosts
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
            host_selection_retry_max_attempts: '5'
            retriable_status_codes: [503]",
    ));
    let retry = forward(&t).retry_policy().expect("a retry policy");
    assert!(retry.on.any(RetryOn::CONNECT_FAILURE) && retry.on.any(RetryOn::GRPC_UNAVAILABLE));
    assert!(!retry.on.any(RetryOn::FIVE_XX));
    assert_eq!((retry.num_retries, retry.host_selection_max_attempts), (2, 5));
    assert!(retry.avoid_previous_hosts);
    assert_eq!(retry.retriable_status_codes, [503]);
    // Envoy's defaults: 25 ms base backoff, ten times that at most.
    assert_eq!((retry.base_interval, retry.max_interval), (Duration::from_millis(25), Duration::from_millis(250)));

    let t = table(&one_route("        route: { cluster: a, retry_policy: { retry_on: 5xx } }"));
    let retry = forward(&t).retry_policy().unwrap();
    assert_eq!((retry.num_retries, retry.host_selection_max_attempts, retry.avoid_previous_hosts), (1, 1, false));
}

#[test]
fn route_retry_policy_replaces_the_virtual_hosts() {
    let t = table(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    retry_policy: { retry_on: 5xx, num_retries: 4, per_try_timeout: 1s }
    routes:
      - match: { prefix: /own }
        route: { cluster: a, retry_policy: { retry_on: reset } }
      - match: { prefix: /short }
        route: { cluster: a, timeout: 0.5s }
      - match: { prefix: / }
        route: { cluster: a }
",
    );
    let policy = |i: usize| match &t.virtual_hosts[0].routes[i].action {
        RouteAction::Forward(f) => f.retry_policy().unwrap().clone(),
        other => panic!("expected a forward action, got {other:?}"),
    };
    let own = policy(0);
    assert!(own.on.any(RetryOn::RESET) && !own.on.any(RetryOn::FIVE_XX));
    assert_eq!((own.num_retries, own.per_try_timeout), (1, None));
    // Kept here even where it is not shorter than the route timeout: a gRPC request's own
    // timeout may replace the route's, so the proxy compares them per request.
    assert_eq!((policy(1).num_retries, policy(1).per_try_timeout), (4, Some(Duration::from_secs(1))));
    assert_eq!(policy(2).per_try_timeout, Some(Duration::from_secs(1)));
}

#[test]
fn bad_retry_policies_name_their_field() {
    let cases = [
        ("retry_back_off: { max_interval: 1s }", "retry_back_off.base_interval", ErrorKind::Invalid),
        ("retry_back_off: { base_interval: 0s }", "retry_back_off.base_interval", ErrorKind::Invalid),
        ("retry_back_off: { base_interval: 2s, max_interval: 1s }", "retry_back_off.max_interval", ErrorKind::Invalid),
        ("retry_host_predicate: [{ name: '' }]", "retry_host_predicate[0].name", ErrorKind::Invalid),
        (
            "retry_host_predicate: [{ name: envoy.retry_host_predicates.omit_canary_hosts }]",
            "retry_host_predicate[0]",
            ErrorKind::Unsupported,
        ),
        ("per_try_idle_timeout: 1s", "per_try_idle_timeout", ErrorKind::Unsupported),
        ("retriable_status_codes: [70000]", "retriable_status_codes[0]", ErrorKind::Invalid),
    ];
    for (policy, field, kind) in cases {
        let e =
            error(&one_route(&format!("        route: {{ cluster: a, retry_policy: {{ retry_on: 5xx, {policy} }} }}")));
        assert_eq!(e.path, format!("virtual_hosts[0].routes[0].route.retry_policy.{field}"), "{policy}");
        assert_eq!(e.kind, kind, "{policy}");
    }
}
