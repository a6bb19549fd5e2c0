//! Access log config: built by the access-log helper.
