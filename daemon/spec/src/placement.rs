//! Placement: the one parser and validator of constraints, spread preferences, the per-node cap
//! and the replica count, shared by stack files, CLI flags and the D-Bus API.
//!
//! Constraints, as Swarm's plus `in`: `node.id`, `node.hostname`, `node.role` and
//! `node.labels.KEY`, with `==`, `!=` or `in (a, b, ...)`; all must hold. Preferences:
//! `spread=node.labels.KEY` (the CLI's `--placement-pref`) or just `node.labels.KEY` (a stack
//! file's `spread = "..."`). `max_replicas_per_node = 0` means no limit, as Swarm's.

use model::{
    Constraint, ConstraintKey, ConstraintOp, MAX_REPLICAS, Placement, PlacementPreference,
};

/// Parse one constraint: `node.labels.zone == a`, `node.role != manager`,
/// `node.labels.zone in (a, b)`.
pub fn parse_constraint(s: &str) -> Result<Constraint, String> {
    let text = s.trim();
    let (key, op, rest) = if let Some((k, v)) = text.split_once("==") {
        (k, ConstraintOp::Eq, v)
    } else if let Some((k, v)) = text.split_once("!=") {
        (k, ConstraintOp::Ne, v)
    } else if let Some((k, v)) = split_in(text) {
        (k, ConstraintOp::In, v)
    } else {
        return Err(format!(
            "constraint \"{s}\" has no operator; write KEY == VALUE, KEY != VALUE or KEY in (A, B)"
        ));
    };
    let key = parse_key(key.trim(), s)?;
    let rest = rest.trim();
    let values: Vec<String> = match op {
        ConstraintOp::In => {
            let Some(inner) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) else {
                return Err(format!(
                    "constraint \"{s}\": the values of `in` go in parentheses: {key} in (a, b)"
                ));
            };
            inner.split(',').map(|v| v.trim().to_string()).collect()
        }
        _ => vec![rest.to_string()],
    };
    for v in &values {
        if v.is_empty() {
            return Err(format!("constraint \"{s}\" has an empty value"));
        }
        if v.contains(['=', '!', '(', ')', ',']) || v.chars().any(char::is_whitespace) {
            return Err(format!(
                "constraint \"{s}\": value \"{v}\" may not contain spaces or any of = ! ( ) ,"
            ));
        }
    }
    if key == ConstraintKey::NodeRole
        && let Some(v) = values
            .iter()
            .find(|v| !v.eq_ignore_ascii_case("manager") && !v.eq_ignore_ascii_case("worker"))
    {
        return Err(format!(
            "constraint \"{s}\": node.role is manager or worker, not \"{v}\""
        ));
    }
    Ok(Constraint { key, op, values })
}

/// `KEY in (...)`: the word `in` surrounded by whitespace before the parenthesis.
fn split_in(text: &str) -> Option<(&str, &str)> {
    let i = text.find(" in ").or_else(|| text.find(" in("))?;
    Some((&text[..i], &text[i + 3..]))
}

fn parse_key(key: &str, whole: &str) -> Result<ConstraintKey, String> {
    match key {
        "node.id" => Ok(ConstraintKey::NodeId),
        "node.hostname" => Ok(ConstraintKey::NodeHostname),
        "node.role" => Ok(ConstraintKey::NodeRole),
        _ => match key.strip_prefix("node.labels.") {
            Some(label) if valid_label(label) => Ok(ConstraintKey::NodeLabel(label.to_string())),
            Some(label) => Err(format!(
                "constraint \"{whole}\": \"{label}\" is not a valid label name"
            )),
            None => Err(format!(
                "constraint \"{whole}\": unknown key \"{key}\"; use node.id, node.hostname, node.role or node.labels.KEY"
            )),
        },
    }
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
}

/// Parse a spread preference: `spread=node.labels.zone` or `node.labels.zone`.
pub fn parse_preference(s: &str) -> Result<PlacementPreference, String> {
    let text = s.trim();
    let target = match text.split_once('=') {
        Some((strategy, target)) if strategy.trim() == "spread" => target.trim(),
        Some((strategy, _)) => {
            return Err(format!(
                "placement preference \"{s}\": unknown strategy \"{}\"; only spread exists",
                strategy.trim()
            ));
        }
        None => text,
    };
    match target.strip_prefix("node.labels.") {
        Some(label) if valid_label(label) => Ok(PlacementPreference::Spread {
            label: label.to_string(),
        }),
        _ => Err(format!(
            "placement preference \"{s}\": spread over node.labels.KEY, e.g. spread=node.labels.zone"
        )),
    }
}

/// Check a replica count (`replicas`, `--replicas`, `service scale`, D-Bus `Replicas`).
pub fn check_replicas(n: u64) -> Result<u64, String> {
    if n > MAX_REPLICAS {
        return Err(format!(
            "{n} replicas is more than the limit of {MAX_REPLICAS}"
        ));
    }
    Ok(n)
}

/// `max_replicas_per_node` / `--replicas-max-per-node`: 0 is no limit.
pub fn parse_max_replicas_per_node(n: u64) -> Result<Option<u64>, String> {
    if n == 0 {
        return Ok(None);
    }
    check_replicas(n).map(Some)
}

/// Build a whole [`Placement`] from its text forms, reporting every problem at once (for the
/// CLI's `--constraint`, `--placement-pref`, `--replicas-max-per-node` and D-Bus properties).
pub fn parse_placement(
    constraints: &[String],
    preferences: &[String],
    max_replicas_per_node: u64,
) -> Result<Placement, Vec<String>> {
    let mut errors = Vec::new();
    let mut p = Placement::default();
    for c in constraints {
        match parse_constraint(c) {
            Ok(c) => p.constraints.push(c),
            Err(e) => errors.push(e),
        }
    }
    for s in preferences {
        match parse_preference(s) {
            Ok(x) => p.preferences.push(x),
            Err(e) => errors.push(e),
        }
    }
    match parse_max_replicas_per_node(max_replicas_per_node) {
        Ok(m) => p.max_replicas_per_node = m,
        Err(e) => errors.push(format!("max replicas per node: {e}")),
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_and_print_back() {
        for s in [
            "node.labels.zone == a",
            "node.role != manager",
            "node.hostname == n1",
            "node.id == abc",
            "node.labels.zone in (a, b)",
        ] {
            let c = parse_constraint(s).unwrap();
            assert_eq!(c.to_string(), s);
        }
        let c = parse_constraint("node.labels.zone in(a,b ,c)").unwrap();
        assert_eq!(c.values, vec!["a", "b", "c"]);
        assert_eq!(c.op, ConstraintOp::In);
        assert_eq!(
            parse_constraint("node.labels.disk==ssd").unwrap().values,
            vec!["ssd"]
        );
    }

    #[test]
    fn bad_constraints_say_what_to_write() {
        for (s, want) in [
            ("node.labels.zone", "no operator"),
            ("node.ip == 1.2.3.4", "unknown key"),
            ("node.labels. == a", "not a valid label"),
            ("node.labels.zone in a, b", "parentheses"),
            ("node.labels.zone == ", "empty value"),
            ("node.labels.zone in (a, )", "empty value"),
            ("node.role == boss", "manager or worker"),
            ("node.labels.zone == a b", "may not contain"),
        ] {
            let e = parse_constraint(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn preferences_and_bounds() {
        let want = PlacementPreference::Spread {
            label: "zone".into(),
        };
        assert_eq!(parse_preference("spread=node.labels.zone").unwrap(), want);
        assert_eq!(parse_preference("node.labels.zone").unwrap(), want);
        assert!(parse_preference("binpack=node.labels.zone").is_err());
        assert!(parse_preference("spread=node.role").is_err());
        assert!(check_replicas(30_000_000_000).is_err());
        assert_eq!(check_replicas(MAX_REPLICAS), Ok(MAX_REPLICAS));
        assert_eq!(parse_max_replicas_per_node(0), Ok(None));
        let errs = parse_placement(
            &["node.x == 1".into(), "node.role == worker".into()],
            &["nope".into()],
            u64::MAX,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3);
    }
}
