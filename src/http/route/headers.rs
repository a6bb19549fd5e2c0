//! Header mutations of one level (route, virtual host or route configuration).

use http::HeaderMap;

use crate::config::route::{AppendAction, HeaderMutations};

impl HeaderMutations {
    /// Removes, then adds, with Envoy's semantics: every addition is decided against the headers
    /// as they were before this level added anything, and overwrites land before appends.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        if self.add.is_empty() {
            return;
        }
        // Only conditional actions need the decisions up front; the common case allocates nothing.
        let decided: Option<Vec<bool>> = self.conditional.then(|| {
            self.add
                .iter()
                .map(|a| match a.action {
                    AppendAction::AddIfAbsent => !headers.contains_key(&a.name),
                    AppendAction::OverwriteIfExists => headers.contains_key(&a.name),
                    AppendAction::AppendIfExistsOrAdd | AppendAction::OverwriteIfExistsOrAdd => true,
                })
                .collect()
        });
        let wanted = |i: usize| decided.as_ref().is_none_or(|d| d.get(i).copied().unwrap_or(false));
        for (i, add) in self.add.iter().enumerate() {
            let overwrite =
                matches!(add.action, AppendAction::OverwriteIfExistsOrAdd | AppendAction::OverwriteIfExists);
            if overwrite && wanted(i) {
                headers.insert(&add.name, add.value.clone());
            }
        }
        for (i, add) in self.add.iter().enumerate() {
            let append = matches!(add.action, AppendAction::AppendIfExistsOrAdd | AppendAction::AddIfAbsent);
            if append && wanted(i) {
                headers.append(&add.name, add.value.clone());
            }
        }
    }
}
