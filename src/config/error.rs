//! The config error type: every error names the field path it is about.

use std::fmt;

/// What kind of problem a config has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The config is not valid Envoy config (Envoy rejects it too).
    Invalid,
    /// Valid Envoy config that legate does not implement; rejected, never ignored.
    Unsupported,
}

/// A config error with the dotted field path it is about (`static_resources.clusters[0].name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ErrorKind,
    pub path: String,
    pub message: String,
}

impl ConfigError {
    /// An invalid-config error at `path`.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Invalid, path: path.into(), message: message.into() }
    }

    /// A valid-but-unimplemented error: `what` is the field path or `@type`.
    pub fn unsupported(path: impl Into<String>, what: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Unsupported, path: path.into(), message: what.into() }
    }

    /// Prefixes the path with an outer field, as errors bubble up from nested specs.
    pub fn within(mut self, outer: &str) -> Self {
        self.path = join_path(outer, &self.path);
        self
    }
}

/// Joins two field-path pieces (`a` + `b` → `a.b`, `a` + `[0].b` → `a[0].b`).
pub fn join_path(outer: &str, inner: &str) -> String {
    match (outer.is_empty(), inner.is_empty()) {
        (true, _) => inner.to_owned(),
        (_, true) => outer.to_owned(),
        _ if inner.starts_with('[') => format!("{outer}{inner}"),
        _ => format!("{outer}.{inner}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Invalid if self.path.is_empty() => write!(f, "invalid config: {}", self.message),
            ErrorKind::Invalid => write!(f, "invalid config at `{}`: {}", self.path, self.message),
            ErrorKind::Unsupported if self.message.is_empty() => {
                write!(f, "not supported by legate: {}", self.path)
            }
            ErrorKind::Unsupported => {
                write!(f, "not supported by legate: {} (at `{}`)", self.message, self.path)
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Result alias for config translation.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The resources of an xDS update that were rejected, by name, with why. The valid ones in
/// the same update were applied (as Envoy does); these make the update a NACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejected(pub Vec<(String, String)>);

impl Rejected {
    /// Adds a rejected resource.
    pub fn push(&mut self, name: impl Into<String>, message: impl Into<String>) {
        self.0.push((name.into(), message.into()));
    }

    /// `Ok` when nothing was rejected.
    pub fn into_result(self) -> std::result::Result<(), Rejected> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Whether `name` was rejected.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
}

impl fmt::Display for Rejected {
    /// The NACK's `error_detail` message: every rejected resource and why.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (_, message)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(message)?;
        }
        Ok(())
    }
}
