//! Route tables: built by the route helper.
