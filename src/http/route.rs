//! Per-request routing over a [`RouteTable`]: picks the virtual host and the first matching
//! route, and applies the route's cluster choice, rewrites, redirects and header mutations.
//!
//! Translation and validation live in `crate::config::route`; this module only reads the
//! immutable table, so any number of workers may share it. Upstream selection, timeouts and
//! the local replies for "no route" or "unknown cluster" are the router's.

mod headers;
mod matching;
mod rewrite;
#[cfg(test)]
mod tests;

use http::HeaderMap;
use http::request::Parts;

pub(crate) use matching::{is_grpc, strip_port};

use crate::config::route::HeaderMutations;
pub use crate::config::route::{
    ClusterRef, ForwardAction, HostPortMatch, IdleTimeout, RedirectAction, Route, RouteAction, RouteTable, VirtualHost,
};

/// The virtual host and route a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The virtual host whose domains matched the request's host.
    pub virtual_host: &'a VirtualHost,
    /// The first route of that virtual host that matched the request.
    pub route: &'a Route,
    table: &'a RouteTable,
}

impl RouteTable {
    /// The matching virtual host and route for a request (`None` = no route → 404 NR).
    pub fn select(&self, req: &Parts) -> Option<Selected<'_>> {
        let virtual_host = self.virtual_hosts.get(self.find_virtual_host(req)?)?;
        // Envoy's rule: routes are tried in order and the first match wins.
        let route = virtual_host.routes.iter().find(|r| r.matcher.matches(req))?;
        Some(Selected { virtual_host, route, table: self })
    }
}

impl Selected<'_> {
    /// Applies the request header removals and additions of the route, virtual host and route
    /// configuration, in Envoy's order.
    pub fn apply_request_headers(&self, headers: &mut HeaderMap) {
        let levels =
            self.in_order(&self.route.request_headers, &self.virtual_host.request_headers, &self.table.request_headers);
        levels.into_iter().for_each(|level| level.apply(headers));
    }

    /// Applies the response header removals and additions of the route, virtual host and route
    /// configuration, in Envoy's order.
    pub fn apply_response_headers(&self, headers: &mut HeaderMap) {
        let levels = self.in_order(
            &self.route.response_headers,
            &self.virtual_host.response_headers,
            &self.table.response_headers,
        );
        levels.into_iter().for_each(|level| level.apply(headers));
    }

    /// Envoy applies the most specific level first, so the least specific one wins overwrites,
    /// unless `most_specific_header_mutations_wins` reverses the order.
    fn in_order<'m>(
        &self,
        route: &'m HeaderMutations,
        virtual_host: &'m HeaderMutations,
        table: &'m HeaderMutations,
    ) -> [&'m HeaderMutations; 3] {
        if self.table.most_specific_header_mutations_wins {
            [table, virtual_host, route]
        } else {
            [route, virtual_host, table]
        }
    }
}
