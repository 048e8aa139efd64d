//! Listings the daemon sends as named strings (`ListNetworks`, `ListSecrets`, `ListConfigs`):
//! reading a field, and finding a row the way the daemon resolves a name.

use std::collections::BTreeMap;

pub(crate) type Row = BTreeMap<String, String>;

/// A field of `r`; empty when absent.
pub(crate) fn get<'a>(r: &'a Row, k: &str) -> &'a str {
    r.get(k).map_or("", String::as_str)
}

/// The first row `exact` accepts, else the one row whose `Id` starts with `key` (none when
/// several do, or `key` is empty).
pub(crate) fn find<'a>(
    rows: &'a [Row],
    key: &str,
    exact: impl Fn(&Row) -> bool,
) -> Option<&'a Row> {
    rows.iter().find(|r| exact(r)).or_else(|| {
        let mut it = rows.iter().filter(|r| get(r, "Id").starts_with(key));
        match (it.next(), it.next()) {
            (Some(r), None) if !key.is_empty() => Some(r),
            _ => None,
        }
    })
}
