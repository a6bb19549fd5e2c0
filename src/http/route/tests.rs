//! Request-path tests: selection, cluster choice, rewrites, redirects and header mutations.

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};

use super::*;
use crate::config::route::RouteConfigurationProto;
use crate::config::schema::{Format, parse};

fn table_with(yaml: &str, host_port: HostPortMatch) -> RouteTable {
    let proto = parse::<RouteConfigurationProto>(yaml, Format::Yaml).expect("test YAML matches the schema");
    RouteTable::from_proto(&proto, host_port).unwrap_or_else(|e| panic!("config should be valid: {e}"))
}

fn table(yaml: &str) -> RouteTable {
    table_with(yaml, HostPortMatch::Keep)
}

/// An HTTP/1-style request: origin-form URI plus a Host header (unless given in `headers`).
fn req(method: &str, uri: &str, host: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    if !host.is_empty() {
        builder = builder.header("host", host);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn get(uri: &str) -> Parts {
    req("GET", uri, "example.com", &[])
}

/// The name of the route `parts` selects, or `None`.
fn route_name(t: &RouteTable, parts: &Parts) -> Option<String> {
    t.select(parts).map(|s| s.route.name().to_owned())
}

fn vhost_name(t: &RouteTable, host: &str) -> Option<String> {
    t.select(&req("GET", "/", host, &[])).map(|s| s.virtual_host.name().to_owned())
}

fn forward<'a>(s: Selected<'a>) -> &'a ForwardAction {
    match s.route.action() {
        RouteAction::Forward(f) => f,
        other => panic!("expected a forward action, got {other:?}"),
    }
}

fn redirect<'a>(s: Selected<'a>) -> &'a RedirectAction {
    match s.route.action() {
        RouteAction::Redirect(r) => r,
        other => panic!("expected a redirect, got {other:?}"),
    }
}

fn values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
}

const DOMAINS: &str = "
virtual_hosts:
  - { name: exact, domains: ['www.foo.com', 'ported.com:8080'], routes: [{ match: { prefix: / }, route: { cluster: a } }] }
  - { name: short-suffix, domains: ['*.foo.com'], routes: [{ match: { prefix: / }, route: { cluster: a } }] }
  - { name: long-suffix, domains: ['*.api.foo.com', '*-bar.foo.com'], routes: [{ match: { prefix: / }, route: { cluster: a } }] }
  - { name: prefix, domains: ['foo.*', 'foo.bar.*'], routes: [{ match: { prefix: / }, route: { cluster: a } }] }
  - { name: long-prefix, domains: ['foo.bar.baz.*'], routes: [{ match: { prefix: / }, route: { cluster: a } }] }
  - { name: Plain, domains: ['Example.COM'], routes: [{ match: { prefix: / }, route: { cluster: a } }] }
  - { name: v6, domains: ['[::1]'], routes: [{ match: { prefix: / }, route: { cluster: a } }] }
";

#[test]
fn domain_precedence() {
    let t = table(&format!(
        "{DOMAINS}  - {{ name: any, domains: ['*'], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: a }} }}] }}\n"
    ));
    let cases = [
        ("www.foo.com", "exact"),
        ("WWW.Foo.COM", "exact"),
        ("x.foo.com", "short-suffix"),
        ("x.api.foo.com", "long-suffix"),
        ("baz-bar.foo.com", "long-suffix"),
        // A wildcard does not match the empty string.
        ("-bar.foo.com", "short-suffix"),
        (".foo.com", "any"),
        ("foo.com", "prefix"),
        ("foo.bar.x", "prefix"),
        ("foo.bar.baz.x", "long-prefix"),
        // Suffix wildcards beat prefix wildcards.
        ("foo.api.foo.com", "long-suffix"),
        ("example.com", "Plain"),
        ("unknown.org", "any"),
        ("", "any"),
    ];
    for (host, want) in cases {
        assert_eq!(vhost_name(&t, host).as_deref(), Some(want), "host {host:?}");
    }
}

#[test]
fn no_matching_domain_selects_nothing() {
    let t = table(DOMAINS);
    assert_eq!(vhost_name(&t, "unknown.org"), None);
    assert_eq!(vhost_name(&t, "www.foo.com.evil.org"), None);
}

#[test]
fn host_port_takes_part_unless_stripped() {
    let t = table(DOMAINS);
    assert_eq!(vhost_name(&t, "www.foo.com:8080"), None);
    assert_eq!(vhost_name(&t, "ported.com:8080").as_deref(), Some("exact"));
    assert_eq!(vhost_name(&t, "ported.com"), None);
    // A suffix wildcard sees the port as part of the host.
    assert_eq!(vhost_name(&t, "x.foo.com:80"), None);

    let any = table_with(DOMAINS, HostPortMatch::StripAny);
    assert_eq!(vhost_name(&any, "www.foo.com:8080").as_deref(), Some("exact"));
    assert_eq!(vhost_name(&any, "x.foo.com:1").as_deref(), Some("short-suffix"));
    assert_eq!(vhost_name(&any, "[::1]:443").as_deref(), Some("v6"));

    let matching = table_with(DOMAINS, HostPortMatch::StripMatching(8080));
    assert_eq!(vhost_name(&matching, "www.foo.com:8080").as_deref(), Some("exact"));
    assert_eq!(vhost_name(&matching, "www.foo.com:9090"), None);

    let ignore = table_with(&format!("ignore_port_in_host_matching: true\n{DOMAINS}"), HostPortMatch::Keep);
    assert_eq!(vhost_name(&ignore, "www.foo.com:9090").as_deref(), Some("exact"));
}

#[test]
fn authority_comes_from_the_uri_when_present() {
    let t = table(DOMAINS);
    // HTTP/2 (and absolute-form HTTP/1): the URI's authority is the host.
    let parts = req("GET", "https://www.foo.com/x", "", &[]);
    assert_eq!(t.select(&parts).map(|s| s.virtual_host.name()), Some("exact"));
    let parts = req("GET", "https://www.foo.com/x", "example.com", &[]);
    assert_eq!(t.select(&parts).map(|s| s.virtual_host.name()), Some("exact"));
}

#[test]
fn vhost_header_replaces_the_host() {
    let t = table(&format!("vhost_header: x-vhost\n{DOMAINS}"));
    let parts = req("GET", "/", "example.com", &[("x-vhost", "www.foo.com")]);
    assert_eq!(t.select(&parts).map(|s| s.virtual_host.name()), Some("exact"));
}

const MATCHES: &str = "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - { name: exact, match: { path: /exact }, route: { cluster: a } }
      - { name: exact-ci, match: { path: /CI/Exact, case_sensitive: false }, route: { cluster: a } }
      - { name: regex, match: { safe_regex: { regex: '/re/[0-9]+' } }, route: { cluster: a } }
      - { name: regex-ci-ignored, match: { safe_regex: { regex: '/RX' }, case_sensitive: false }, route: { cluster: a } }
      - { name: separated, match: { path_separated_prefix: /api/dev }, route: { cluster: a } }
      - { name: prefix-ci, match: { prefix: /Upper/, case_sensitive: false }, route: { cluster: a } }
      - { name: prefix, match: { prefix: /p }, route: { cluster: a } }
      - { name: shadowed, match: { prefix: /prefix }, route: { cluster: a } }
";

#[test]
fn path_matchers() {
    let t = table(MATCHES);
    let cases = [
        ("/exact", Some("exact")),
        ("/exact?q=1", Some("exact")),
        ("/exact/", None),
        ("/EXACT", None),
        ("/ci/exact", Some("exact-ci")),
        ("/CI/EXACT?x", Some("exact-ci")),
        ("/re/123", Some("regex")),
        ("/re/123?a=b", Some("regex")),
        // The regex must match the whole path.
        ("/re/123/x", None),
        ("/x/re/1", None),
        ("/RX", Some("regex-ci-ignored")),
        ("/rx", None),
        ("/api/dev", Some("separated")),
        ("/api/dev/", Some("separated")),
        ("/api/dev/v1?x=1", Some("separated")),
        ("/api/developer", None),
        ("/upper/x", Some("prefix-ci")),
        ("/UPPER/x", Some("prefix-ci")),
        // First match wins: `/p` shadows `/prefix`.
        ("/prefix", Some("prefix")),
        ("/", None),
    ];
    for (uri, want) in cases {
        assert_eq!(route_name(&t, &get(uri)).as_deref(), want, "uri {uri}");
    }
}

#[test]
fn header_matchers() {
    let t = table(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match:
          prefix: /exact
          headers: [{ name: x-a, string_match: { exact: Yes, ignore_case: true } }]
        name: exact
        route: { cluster: a }
      - match:
          prefix: /kinds
          headers:
            - { name: x-p, string_match: { prefix: ab } }
            - { name: x-s, string_match: { suffix: yz } }
            - { name: x-c, string_match: { contains: mid } }
            - { name: x-r, string_match: { safe_regex: { regex: '[0-9]{3}' } } }
        name: kinds
        route: { cluster: a }
      - match: { prefix: /deprecated, headers: [{ name: x-a, exact_match: v }] }
        name: deprecated
        route: { cluster: a }
      - match: { prefix: /present, headers: [{ name: x-a }] }
        name: present
        route: { cluster: a }
      - match: { prefix: /absent, headers: [{ name: x-a, present_match: false }] }
        name: absent
        route: { cluster: a }
      - match: { prefix: /invert, headers: [{ name: x-r, invert_match: true, string_match: { safe_regex: { regex: '[0-9]{3}' } } }] }
        name: invert
        route: { cluster: a }
      - match:
          prefix: /empty
          headers: [{ name: x-e, treat_missing_header_as_empty: true, string_match: { safe_regex: { regex: '^$' } } }]
        name: empty
        route: { cluster: a }
      - match: { prefix: /range, headers: [{ name: x-n, range_match: { start: -10, end: 0 } }] }
        name: range
        route: { cluster: a }
      - match: { prefix: /method, headers: [{ name: ':method', string_match: { exact: POST } }] }
        name: method
        route: { cluster: a }
      - match: { prefix: /joined, headers: [{ name: x-m, string_match: { exact: 'a,b' } }] }
        name: joined
        route: { cluster: a }
      - match: { prefix: /host, headers: [{ name: host, present_match: true }] }
        name: host
        route: { cluster: a }
      - match: { prefix: /authority, headers: [{ name: ':authority', string_match: { exact: example.com } }] }
        name: authority
        route: { cluster: a }
",
    );
    let check = |method: &str, uri: &str, headers: &[(&str, &str)], want: Option<&str>| {
        let parts = req(method, uri, "example.com", headers);
        assert_eq!(route_name(&t, &parts).as_deref(), want, "{method} {uri} {headers:?}");
    };
    check("GET", "/exact", &[("x-a", "YES")], Some("exact"));
    check("GET", "/exact", &[("x-a", "no")], None);
    check("GET", "/exact", &[], None);
    let kinds = [("x-p", "abc"), ("x-s", "xyz"), ("x-c", "amidb"), ("x-r", "123")];
    check("GET", "/kinds", &kinds, Some("kinds"));
    for i in 0..kinds.len() {
        let mut bad = kinds;
        bad[i].1 = "zzzz";
        check("GET", "/kinds", &bad, None);
    }
    check("GET", "/kinds", &[("x-p", "ABc"), ("x-s", "xyz"), ("x-c", "amidb"), ("x-r", "123")], None);
    check("GET", "/deprecated", &[("x-a", "v")], Some("deprecated"));
    check("GET", "/present", &[("x-a", "")], Some("present"));
    check("GET", "/present", &[], None);
    check("GET", "/absent", &[], Some("absent"));
    check("GET", "/absent", &[("x-a", "1")], None);
    check("GET", "/invert", &[("x-r", "1234")], Some("invert"));
    check("GET", "/invert", &[("x-r", "123")], None);
    // A missing header never matches, inverted or not.
    check("GET", "/invert", &[], None);
    check("GET", "/empty", &[], Some("empty"));
    check("GET", "/empty", &[("x-e", "x")], None);
    check("GET", "/range", &[("x-n", "-1")], Some("range"));
    check("GET", "/range", &[("x-n", "0")], None);
    check("GET", "/range", &[("x-n", "-1x")], None);
    check("POST", "/method", &[], Some("method"));
    check("GET", "/method", &[], None);
    check("GET", "/joined", &[("x-m", "a"), ("x-m", "b")], Some("joined"));
    // Envoy keeps Host as `:authority`, so a `host` matcher sees nothing.
    check("GET", "/host", &[], None);
    check("GET", "/authority", &[], Some("authority"));
}

#[test]
fn query_and_cookie_matchers() {
    let t = table(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: /q, query_parameters: [{ name: a, string_match: { exact: '1' } }, { name: b }] }
        name: query
        route: { cluster: a }
      - match: { prefix: /absent, query_parameters: [{ name: debug, present_match: false }] }
        name: absent
        route: { cluster: a }
      - match: { prefix: /c, cookies: [{ name: session, string_match: { prefix: abc } }] }
        name: cookie
        route: { cluster: a }
      - match: { prefix: /inv, cookies: [{ name: beta, string_match: { exact: 'on' }, invert_match: true }] }
        name: inverted
        route: { cluster: a }
      - match: { prefix: /grpc, grpc: {} }
        name: grpc
        route: { cluster: a }
",
    );
    let name = |uri: &str, headers: &[(&str, &str)]| route_name(&t, &req("GET", uri, "x", headers));
    assert_eq!(name("/q?a=1&b", &[]).as_deref(), Some("query"));
    assert_eq!(name("/q?b=&a=1", &[]).as_deref(), Some("query"));
    // Only the first value of a repeated key counts.
    assert_eq!(name("/q?a=2&a=1&b", &[]), None);
    assert_eq!(name("/q?a=1", &[]), None);
    assert_eq!(name("/q", &[]), None);
    assert_eq!(name("/absent?x=1", &[]).as_deref(), Some("absent"));
    assert_eq!(name("/absent?debug", &[]), None);
    assert_eq!(name("/c", &[("cookie", "a=b; session=\"abcdef\"")]).as_deref(), Some("cookie"));
    assert_eq!(name("/c", &[("cookie", "a=b"), ("cookie", "session=abc")]).as_deref(), Some("cookie"));
    assert_eq!(name("/c", &[("cookie", "session=xyz")]), None);
    assert_eq!(name("/c", &[]), None);
    assert_eq!(name("/inv", &[]).as_deref(), Some("inverted"));
    assert_eq!(name("/inv", &[("cookie", "beta=on")]), None);
    assert_eq!(name("/grpc", &[("content-type", "application/grpc+proto")]).as_deref(), Some("grpc"));
    assert_eq!(name("/grpc", &[("content-type", "application/json")]), None);
}

#[test]
fn connect_requests_match_only_the_connect_matcher() {
    let t = table(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - { name: all, match: { prefix: / }, route: { cluster: a } }
      - { name: connect, match: { connect_matcher: {} }, route: { cluster: a } }
",
    );
    let connect = req("CONNECT", "example.com:443", "example.com:443", &[]);
    assert_eq!(route_name(&t, &connect).as_deref(), Some("connect"));
    assert_eq!(route_name(&t, &get("/x")).as_deref(), Some("all"));
}

const CLUSTERS: &str = "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: /weighted }
        route:
          weighted_clusters:
            clusters: [{ name: one, weight: 10 }, { name: never, weight: 0 }, { name: three, weight: 30 }]
      - match: { prefix: /header }
        route: { cluster_header: x-cluster }
      - match: { prefix: /mixed }
        route:
          weighted_clusters:
            clusters: [{ cluster_header: x-cluster, weight: 1 }]
      - match: { prefix: / }
        route: { cluster: static }
";

#[test]
fn weighted_clusters_spread_by_weight() {
    let t = table(CLUSTERS);
    let parts = get("/weighted");
    let selected = t.select(&parts).unwrap();
    let action = forward(selected);
    let (mut one, mut three) = (0, 0);
    for _ in 0..1000 {
        match action.cluster(&parts.headers) {
            Some("one") => one += 1,
            Some("three") => three += 1,
            other => panic!("unexpected cluster {other:?}"),
        }
    }
    // Expected 250 / 750; the bounds are loose enough never to flake.
    assert!((150..350).contains(&one), "one={one} three={three}");
    assert_eq!(one + three, 1000);
}

#[test]
fn cluster_from_header_or_name() {
    let t = table(CLUSTERS);
    let parts = req("GET", "/header", "x", &[("x-cluster", "from-header")]);
    assert_eq!(forward(t.select(&parts).unwrap()).cluster(&parts.headers), Some("from-header"));
    let parts = get("/header");
    assert_eq!(forward(t.select(&parts).unwrap()).cluster(&parts.headers), None);
    let parts = req("GET", "/mixed", "x", &[("x-cluster", "w")]);
    assert_eq!(forward(t.select(&parts).unwrap()).cluster(&parts.headers), Some("w"));
    let parts = get("/other");
    assert_eq!(forward(t.select(&parts).unwrap()).cluster(&parts.headers), Some("static"));
}

const REWRITES: &str = "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: /api/, case_sensitive: false }
        route: { cluster: a, prefix_rewrite: /v2/ }
      - match: { path: /whole }
        route: { cluster: a, prefix_rewrite: /replaced }
      - match: { prefix: /service/ }
        route:
          cluster: a
          regex_rewrite: { pattern: { regex: '^/service/([^/]+)(/.*)$' }, substitution: '\\2/instance/\\1' }
      - match: { prefix: /host }
        route: { cluster: a, host_rewrite_literal: upstream.internal:8443, append_x_forwarded_host: true }
      - match: { prefix: /from-header }
        route: { cluster: a, host_rewrite_header: x-host }
      - match: { prefix: /h/ }
        route:
          cluster: a
          host_rewrite_path_regex: { pattern: { regex: '^/h/([^/]+)/.*$' }, substitution: '\\1' }
      - match: { prefix: /plain }
        route: { cluster: a }
";

fn rewritten(t: &RouteTable, mut parts: Parts) -> Parts {
    let selected = t.select(&parts).expect("a route");
    forward(selected).rewrite_request(&mut parts);
    parts
}

#[test]
fn prefix_rewrite_keeps_the_query_and_records_the_original() {
    let t = table(REWRITES);
    let parts = rewritten(&t, get("/API/users?id=7&x"));
    assert_eq!(parts.uri.path_and_query().unwrap().as_str(), "/v2/users?id=7&x");
    assert_eq!(values(&parts.headers, "x-envoy-original-path"), ["/API/users?id=7&x"]);

    let parts = rewritten(&t, get("/whole?q"));
    assert_eq!(parts.uri.to_string(), "/replaced?q");

    let parts = rewritten(&t, get("/plain?q"));
    assert_eq!(parts.uri.to_string(), "/plain?q");
    assert!(parts.headers.get("x-envoy-original-path").is_none());

    let mut parts = get("/api/x");
    forward(t.select(&parts).unwrap()).rewrite_request_with(&mut parts, false);
    assert_eq!(parts.uri.to_string(), "/v2/x");
    assert!(parts.headers.get("x-envoy-original-path").is_none());
}

#[test]
fn regex_rewrite_substitutes_groups_on_the_path_only() {
    let t = table(REWRITES);
    let parts = rewritten(&t, get("/service/foo/v1/api?service=bar"));
    assert_eq!(parts.uri.to_string(), "/v1/api/instance/foo?service=bar");
    assert_eq!(values(&parts.headers, "x-envoy-original-path"), ["/service/foo/v1/api?service=bar"]);
}

#[test]
fn host_rewrites() {
    let t = table(REWRITES);
    let parts = rewritten(&t, req("GET", "/host", "example.com", &[("x-forwarded-host", "edge")]));
    assert_eq!(values(&parts.headers, "host"), ["upstream.internal:8443"]);
    assert_eq!(values(&parts.headers, "x-envoy-original-host"), ["example.com"]);
    assert_eq!(values(&parts.headers, "x-forwarded-host"), ["edge,example.com"]);

    // With the authority in the URI (HTTP/2), the URI changes too.
    let parts = rewritten(&t, req("GET", "http://example.com/host?x", "", &[]));
    assert_eq!(parts.uri.to_string(), "http://upstream.internal:8443/host?x");
    assert_eq!(values(&parts.headers, "host"), ["upstream.internal:8443"]);

    let parts = rewritten(&t, req("GET", "/from-header", "example.com", &[("x-host", "other")]));
    assert_eq!(values(&parts.headers, "host"), ["other"]);
    let parts = rewritten(&t, req("GET", "/from-header", "example.com", &[]));
    assert_eq!(values(&parts.headers, "host"), ["example.com"]);
    assert!(parts.headers.get("x-envoy-original-host").is_none());

    let parts = rewritten(&t, req("GET", "/h/envoyproxy.io/some/path", "example.com", &[]));
    assert_eq!(values(&parts.headers, "host"), ["envoyproxy.io"]);
}

const REDIRECTS: &str = "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - { match: { prefix: /https }, redirect: { https_redirect: true } }
      - { match: { prefix: /scheme }, redirect: { scheme_redirect: HTTP, response_code: FOUND } }
      - { match: { prefix: /host }, redirect: { host_redirect: new.example.org, response_code: SEE_OTHER } }
      - { match: { prefix: /port }, redirect: { port_redirect: 8443, response_code: TEMPORARY_REDIRECT } }
      - { match: { prefix: /both }, redirect: { host_redirect: 'h.org:1', port_redirect: 2 } }
      - { match: { prefix: /path }, redirect: { path_redirect: /new, response_code: PERMANENT_REDIRECT } }
      - { match: { prefix: /pq }, redirect: { path_redirect: '/new?foo=1', strip_query: true } }
      - { match: { prefix: /strip }, redirect: { path_redirect: /s, strip_query: true } }
      - { match: { prefix: /old/ }, redirect: { prefix_rewrite: /new/ } }
      - match: { prefix: /re/ }
        redirect: { regex_rewrite: { pattern: { regex: '^/re/(\\w+)$' }, substitution: '/x/\\1' }, strip_query: true }
";

fn location(t: &RouteTable, uri: &str, host: &str, scheme: &str) -> (StatusCode, String) {
    let parts = req("GET", uri, host, &[]);
    let selected = t.select(&parts).expect("a route");
    let (status, value) = redirect(selected).location(&parts, scheme);
    (status, value.to_str().unwrap().to_owned())
}

#[test]
fn redirect_locations() {
    let t = table(REDIRECTS);
    let moved = StatusCode::MOVED_PERMANENTLY;
    let cases = [
        ("/https?a=1", "example.com", "http", moved, "https://example.com/https?a=1"),
        // The source scheme's default port goes away when the scheme changes.
        ("/https", "example.com:80", "http", moved, "https://example.com/https"),
        ("/https", "example.com:8080", "http", moved, "https://example.com:8080/https"),
        ("/https", "example.com:443", "https", moved, "https://example.com:443/https"),
        ("/scheme", "example.com:443", "https", StatusCode::FOUND, "http://example.com/scheme"),
        ("/host/x?q", "example.com:8080", "http", StatusCode::SEE_OTHER, "http://new.example.org/host/x?q"),
        ("/port", "example.com:8080", "https", StatusCode::TEMPORARY_REDIRECT, "https://example.com:8443/port"),
        ("/port", "[::1]:80", "http", StatusCode::TEMPORARY_REDIRECT, "http://[::1]:8443/port"),
        ("/both", "example.com", "http", moved, "http://h.org:2/both"),
        ("/path?bar=1", "example.com", "http", StatusCode::PERMANENT_REDIRECT, "http://example.com/new?bar=1"),
        ("/pq?bar=1", "example.com", "http", moved, "http://example.com/new?foo=1"),
        ("/strip?bar=1", "example.com", "http", moved, "http://example.com/s"),
        ("/old/a/b?k=v", "example.com", "http", moved, "http://example.com/new/a/b?k=v"),
        ("/re/abc?k=v", "example.com", "http", moved, "http://example.com/x/abc"),
    ];
    for (uri, host, scheme, status, want) in cases {
        assert_eq!(location(&t, uri, host, scheme), (status, want.to_owned()), "{uri} {host}");
    }
}

#[test]
fn direct_response() {
    let t = table(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - { name: body, match: { path: /body }, direct_response: { status: 418, body: { inline_string: teapot } } }
      - { name: bytes, match: { path: /bytes }, direct_response: { status: 200, body: { inline_bytes: aGk= } } }
      - { name: empty, match: { path: /empty }, direct_response: { status: 204 } }
",
    );
    let action = |uri: &str| match t.select(&get(uri)).unwrap().route.action() {
        RouteAction::DirectResponse { status, body } => (*status, body.clone()),
        other => panic!("expected a direct response, got {other:?}"),
    };
    assert_eq!(action("/body"), (StatusCode::IM_A_TEAPOT, Some("teapot".into())));
    assert_eq!(action("/bytes"), (StatusCode::OK, Some("hi".into())));
    assert_eq!(action("/empty"), (StatusCode::NO_CONTENT, None));
}

const MUTATIONS: &str = "
request_headers_to_add:
  - { header: { key: x-level, value: config }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
  - { header: { key: x-list, value: config } }
request_headers_to_remove: [x-drop-config]
response_headers_to_add:
  - { header: { key: x-resp, value: config }, append: false }
response_headers_to_remove: [server]
virtual_hosts:
  - name: vh
    domains: ['*']
    request_headers_to_add:
      - { header: { key: x-level, value: vhost }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
      - { header: { key: x-list, value: vhost } }
      # Removed by the route level, so this adds it back.
      - { header: { key: x-route-removes, value: vhost }, append_action: ADD_IF_ABSENT }
    response_headers_to_add:
      - { header: { key: x-resp, value: vhost } }
    routes:
      - match: { prefix: / }
        route: { cluster: a }
        request_headers_to_remove: [x-route-removes]
        request_headers_to_add:
          - { header: { key: x-level, value: route }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
          - { header: { key: x-list, value: route } }
          - { header: { key: x-drop-config, value: route } }
          - { header: { key: x-if-absent, value: route }, append_action: ADD_IF_ABSENT }
          - { header: { key: x-if-exists, value: route }, append_action: OVERWRITE_IF_EXISTS }
          - { header: { key: x-missing, value: route }, append_action: OVERWRITE_IF_EXISTS }
          - { header: { key: x-empty, value: '' } }
          - { header: { key: x-empty-kept, value: '' }, keep_empty_value: true }
        response_headers_to_add:
          - { header: { key: x-resp, value: route } }
";

#[test]
fn request_header_mutations_in_envoy_order() {
    let t = table(MUTATIONS);
    let parts = req(
        "GET",
        "/",
        "x",
        &[
            ("x-level", "client"),
            ("x-list", "client"),
            ("x-if-absent", "client"),
            ("x-if-exists", "client"),
            ("x-route-removes", "client"),
        ],
    );
    let selected = t.select(&parts).unwrap();
    let mut headers = parts.headers.clone();
    selected.apply_request_headers(&mut headers);
    // Route, then virtual host, then route config: the last overwrite wins.
    assert_eq!(values(&headers, "x-level"), ["config"]);
    assert_eq!(values(&headers, "x-list"), ["client", "route", "vhost", "config"]);
    assert_eq!(values(&headers, "x-if-absent"), ["client"]);
    assert_eq!(values(&headers, "x-if-exists"), ["route"]);
    assert!(headers.get("x-missing").is_none());
    assert!(headers.get("x-empty").is_none());
    assert_eq!(values(&headers, "x-empty-kept"), [""]);
    assert_eq!(values(&headers, "x-route-removes"), ["vhost"]);
    // The config level removes what the route level added, since it runs later.
    assert!(headers.get("x-drop-config").is_none());
}

#[test]
fn most_specific_header_mutations_wins_reverses_the_order() {
    let t = table(&format!("most_specific_header_mutations_wins: true\n{MUTATIONS}"));
    let parts = req("GET", "/", "x", &[]);
    let selected = t.select(&parts).unwrap();
    let mut headers = HeaderMap::new();
    selected.apply_request_headers(&mut headers);
    assert_eq!(values(&headers, "x-level"), ["route"]);
    assert_eq!(values(&headers, "x-list"), ["config", "vhost", "route"]);
    assert_eq!(values(&headers, "x-drop-config"), ["route"]);
}

#[test]
fn response_header_mutations() {
    let t = table(MUTATIONS);
    let parts = req("GET", "/", "x", &[]);
    let selected = t.select(&parts).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("server", HeaderValue::from_static("upstream"));
    headers.insert("x-resp", HeaderValue::from_static("upstream"));
    selected.apply_response_headers(&mut headers);
    assert!(headers.get("server").is_none());
    // `append: false` overwrites everything before it.
    assert_eq!(values(&headers, "x-resp"), ["config"]);
}

#[test]
fn overwrites_land_before_appends_within_a_level() {
    let t = table(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - match: { prefix: / }
        route: { cluster: a }
        request_headers_to_add:
          - { header: { key: x-a, value: appended } }
          - { header: { key: x-a, value: set }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
          - { header: { key: x-b, value: first }, append_action: ADD_IF_ABSENT }
          - { header: { key: x-b, value: second }, append_action: ADD_IF_ABSENT }
",
    );
    let parts = req("GET", "/", "x", &[("x-a", "client")]);
    let mut headers = parts.headers.clone();
    t.select(&parts).unwrap().apply_request_headers(&mut headers);
    assert_eq!(values(&headers, "x-a"), ["set", "appended"]);
    // Both were decided before either was added.
    assert_eq!(values(&headers, "x-b"), ["first", "second"]);
}

#[test]
fn selection_reads_method_and_first_match() {
    let t = table(
        "
virtual_hosts:
  - name: vh
    domains: ['*']
    routes:
      - { name: post, match: { prefix: /, headers: [{ name: ':method', string_match: { exact: POST } }] }, route: { cluster: a } }
      - { name: rest, match: { prefix: / }, route: { cluster: b } }
      - { name: never, match: { prefix: /x }, route: { cluster: c } }
",
    );
    let post = req(Method::POST.as_str(), "/x", "h", &[]);
    assert_eq!(route_name(&t, &post).as_deref(), Some("post"));
    assert_eq!(route_name(&t, &get("/x")).as_deref(), Some("rest"));
}
