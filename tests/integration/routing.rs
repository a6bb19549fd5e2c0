//! Routing through the proxy: which upstream gets each request, with what path, host and
//! headers, and what the client gets back.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;

use crate::support::{Client, Legate, Upstream, bootstrap, fill, get, send, static_cluster};

async fn upstreams(names: &[&str]) -> (Vec<Upstream>, String) {
    let mut ups = Vec::new();
    let mut clusters = String::new();
    for name in names {
        let upstream = Upstream::start(name).await;
        clusters.push_str(&static_cluster(name, &[(upstream.address, 1)], ""));
        ups.push(upstream);
    }
    (ups, clusters)
}

fn request(path: &str, host: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(path).header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

const MATRIX: &str = r#"            name: matrix
            request_headers_to_add: [{ header: { key: x-global, value: g } }]
            response_headers_to_add: [{ header: { key: x-resp-global, value: g } }]
            virtual_hosts:
            - name: exact
              domains: ["api.example.com"]
              request_headers_to_add: [{ header: { key: x-vhost, value: exact } }]
              response_headers_to_remove: [x-upstream]
              routes:
              - match: { prefix: "/" }
                route: { cluster: exact }
            - name: suffix
              domains: ["*.example.com"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: suffix }
            - name: prefix
              domains: ["www.*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: prefixed }
            - name: with-port
              domains: ["ported.test:8080"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: ported }
            - name: fallback
              domains: ["*"]
              routes:
              - match: { path: "/exact" }
                route: { cluster: exact }
              - match: { safe_regex: { regex: "/re/[0-9]+" } }
                route: { cluster: regex }
              - match: { path_separated_prefix: "/sep" }
                route: { cluster: suffix }
              - match: { prefix: "/CASE", case_sensitive: false }
                route: { cluster: prefixed }
              - match:
                  prefix: "/hdr"
                  headers: [{ name: x-tier, string_match: { exact: gold } }]
                route: { cluster: regex }
              - match:
                  prefix: "/hdr"
                route: { cluster: ported }
              - match:
                  prefix: "/query"
                  query_parameters: [{ name: debug, string_match: { exact: "1" } }]
                route: { cluster: exact }
              - match: { prefix: "/rewrite/" }
                route: { cluster: exact, prefix_rewrite: "/new/" }
              - match: { prefix: "/regex-rewrite" }
                route:
                  cluster: exact
                  regex_rewrite: { pattern: { regex: "^/regex-rewrite/(\\w+)$" }, substitution: "/r/\\1" }
              - match: { prefix: "/host" }
                route: { cluster: exact, host_rewrite_literal: rewritten.internal }
              - match: { prefix: "/headers" }
                request_headers_to_add:
                - header: { key: x-added, value: route }
                - header: { key: x-replaced, value: new }
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                request_headers_to_remove: [x-drop]
                response_headers_to_add: [{ header: { key: x-resp-route, value: r } }]
                route: { cluster: exact }
              - match: { prefix: "/weighted" }
                route:
                  weighted_clusters:
                    clusters: [{ name: exact, weight: 80 }, { name: suffix, weight: 20 }]
              - match: { prefix: "/by-header" }
                route: { cluster_header: x-target }
              - match: { prefix: "/direct" }
                direct_response: { status: 418, body: { inline_string: "teapot" } }
              - match: { prefix: "/redirect" }
                redirect: { host_redirect: other.example.com, path_redirect: "/moved", response_code: FOUND }
              - match: { prefix: "/" }
                route: { cluster: fallback }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_matrix_picks_the_right_upstream_over_both_protocols() {
    let (ups, clusters) = upstreams(&["exact", "suffix", "prefixed", "ported", "regex", "fallback"]).await;
    let legate = Legate::start(&bootstrap("", MATRIX, &clusters));
    let address = legate.listener("main");
    // (path, host, extra headers, expected upstream)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("/", "api.example.com", &[], "exact"),
        ("/", "API.Example.COM", &[], "exact"),
        ("/", "a.b.example.com", &[], "suffix"),
        ("/", "www.anything.org", &[], "prefixed"),
        ("/", "ported.test:8080", &[], "ported"),
        ("/", "ported.test", &[], "fallback"),
        ("/", "api.example.com:9999", &[], "fallback"),
        ("/exact", "other", &[], "exact"),
        ("/exact/more", "other", &[], "fallback"),
        ("/re/123", "other", &[], "regex"),
        ("/re/12x", "other", &[], "fallback"),
        ("/sep/x", "other", &[], "suffix"),
        ("/separate", "other", &[], "fallback"),
        ("/case/x", "other", &[], "prefixed"),
        ("/hdr", "other", &[("x-tier", "gold")], "regex"),
        ("/hdr", "other", &[("x-tier", "silver")], "ported"),
        ("/query?debug=1", "other", &[], "exact"),
        ("/query?debug=0", "other", &[], "fallback"),
        ("/by-header", "other", &[("x-target", "regex")], "regex"),
    ];
    for version in [Version::HTTP_11, Version::HTTP_2] {
        for (path, host, headers, expected) in cases {
            let answer = send(address, version, request(path, host, headers)).await;
            assert_eq!(answer.status, 200, "{path} host {host} over {version:?}");
            assert_eq!(answer.text(), *expected, "{path} host {host} over {version:?}");
        }
    }
    drop(ups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_and_header_mutations_reach_upstream_and_client() {
    let (ups, clusters) = upstreams(&["exact", "suffix", "prefixed", "ported", "regex", "fallback"]).await;
    let exact = &ups[0];
    let legate = Legate::start(&bootstrap("", MATRIX, &clusters));
    let address = legate.listener("main");
    for version in [Version::HTTP_11, Version::HTTP_2] {
        send(address, version, request("/rewrite/a/b?x=1", "other", &[])).await;
        let seen = exact.last();
        assert_eq!(seen.path, "/new/a/b?x=1");
        assert_eq!(seen.headers["x-envoy-original-path"], "/rewrite/a/b?x=1");

        send(address, version, request("/regex-rewrite/abc", "other", &[])).await;
        assert_eq!(exact.last().path, "/r/abc");

        send(address, version, request("/host", "other", &[])).await;
        assert_eq!(exact.last().authority, "rewritten.internal");

        let answer =
            send(address, version, request("/headers", "other", &[("x-drop", "1"), ("x-replaced", "old")])).await;
        let seen = exact.last();
        assert_eq!(seen.headers["x-added"], "route");
        assert_eq!(seen.headers["x-replaced"], "new");
        assert_eq!(seen.headers["x-global"], "g");
        assert!(!seen.headers.contains_key("x-drop"));
        assert_eq!(answer.header("x-resp-route"), "r");
        assert_eq!(answer.header("x-resp-global"), "g");
        assert_eq!(answer.header("x-upstream"), "exact");

        let answer = send(address, version, request("/", "api.example.com", &[])).await;
        assert_eq!(exact.last().headers["x-vhost"], "exact");
        assert_eq!(answer.header("x-upstream"), "", "the virtual host removes x-upstream from responses");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses_redirects_and_weighted_clusters() {
    let (_ups, clusters) = upstreams(&["exact", "suffix", "prefixed", "ported", "regex", "fallback"]).await;
    let legate = Legate::start(&bootstrap("", MATRIX, &clusters));
    let address = legate.listener("main");
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let answer = send(address, version, get("/direct")).await;
        assert_eq!(answer.status, 418);
        assert_eq!(answer.text(), "teapot");
        assert_eq!(answer.header("x-resp-global"), "g");

        let answer = send(address, version, get("/redirect?q=1")).await;
        assert_eq!(answer.status, 302);
        assert_eq!(answer.header("location"), "http://other.example.com/moved?q=1");
    }
    let mut client = Client::connect(address, Version::HTTP_2).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        *counts.entry(client.send(get("/weighted")).await.text()).or_default() += 1;
    }
    let exact = counts.get("exact").copied().unwrap_or(0);
    assert!((720..=880).contains(&exact), "80/20 split came out {counts:?}");
    assert_eq!(exact + counts.get("suffix").copied().unwrap_or(0), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_any_host_port_ignores_the_port_in_domain_matching_and_removes_it() {
    let (ups, clusters) = upstreams(&["exact", "fallback"]).await;
    let route = fill(
        "            virtual_hosts:\n            - name: a\n              domains: [\"api.example.com\"]\n              routes: [{ match: { prefix: \"/\" }, route: { cluster: exact } }]\n            - name: b\n              domains: [\"*\"]\n              routes: [{ match: { prefix: \"/\" }, route: { cluster: {fb} } }]\n",
        &[("fb", "fallback".into())],
    );
    let legate = Legate::start(&bootstrap("          strip_any_host_port: true\n", &route, &clusters));
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let answer = send(legate.listener("main"), version, request("/", "api.example.com:1234", &[])).await;
        assert_eq!(answer.text(), "exact");
        // Envoy strips the port from the request itself: the upstream sees the bare host.
        assert_eq!(ups[0].last().authority, "api.example.com", "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_host_rewrite_uses_the_endpoint_hostname_and_keeps_the_original_host() {
    let upstream = Upstream::start("named").await;
    let clusters = format!(
        "  - name: named\n    type: STATIC\n    load_assignment:\n      cluster_name: named\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            hostname: backend.svc.local\n            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}\n",
        upstream.address.port()
    );
    let route = crate::support::routes(
        "              - match: { prefix: \"/\" }\n                route: { cluster: named, auto_host_rewrite: true }\n",
    );
    let legate = Legate::start(&bootstrap("", &route, &clusters));
    for version in [Version::HTTP_11, Version::HTTP_2] {
        assert_eq!(send(legate.listener("main"), version, get("/x")).await.status, 200);
        let seen = upstream.last();
        assert_eq!(seen.authority, "backend.svc.local", "{version:?}");
        assert_eq!(seen.headers["x-envoy-original-host"], "example.com", "{version:?}");
    }
}
