//! Walking a spanned TOML tree while collecting every problem.
//!
//! Each helper reports into the [`Sink`] and returns `None` on a bad value, so a caller can go on
//! checking the rest of the file and report everything at once.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::diag::Sink;
use crate::units;

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// How to treat the keys of one table.
pub(crate) struct Keys<'a> {
    /// Keys that are understood.
    pub known: &'a [&'a str],
    /// Keys of the contract that are recognised but not implemented: (key, extra advice).
    pub unsupported: &'a [(&'a str, &'a str)],
    /// Keys from neighbouring formats with a dedicated message: (key, advice).
    pub hints: &'a [(&'a str, &'a str)],
}

/// Parses `text`, reporting syntax errors; `None` when the document has any.
pub(crate) fn parse_document<'i>(sink: &mut Sink<'_>, text: &'i str) -> Option<DeTable<'i>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(doc.into_inner());
    }
    for e in errors {
        let message = format!("invalid TOML: {}", e.message().trim_end_matches('.'));
        match e.span() {
            Some(span) => sink.error(span, message),
            None => sink.error(0..0, message),
        }
    }
    None
}

/// Entries of a table in source order.
pub(crate) fn entries<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(&'t Spanned<std::borrow::Cow<'i, str>>, &'t Value<'i>)> {
    let mut v: Vec<_> = table.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

/// Reports unknown and not-yet-supported keys of `table`. `place` names the table in messages,
/// e.g. `[services.web]`.
pub(crate) fn check_keys(sink: &mut Sink<'_>, table: &DeTable<'_>, place: &str, keys: &Keys<'_>) {
    for (key, _) in entries(table) {
        let name: &str = key.get_ref();
        if keys.known.contains(&name) {
            continue;
        }
        if let Some((_, advice)) = keys.unsupported.iter().find(|(k, _)| *k == name) {
            let mut msg = format!("\"{name}\" in {place} is not supported yet");
            if !advice.is_empty() {
                msg.push_str("; ");
                msg.push_str(advice);
            }
            sink.error(key.span(), msg);
            continue;
        }
        if let Some((_, advice)) = keys.hints.iter().find(|(k, _)| *k == name) {
            sink.error(
                key.span(),
                format!("unknown key \"{name}\" in {place}; {advice}"),
            );
            continue;
        }
        let mut msg = format!("unknown key \"{name}\" in {place}");
        if let Some(s) = units::suggest(name, keys.known) {
            msg.push_str(&format!("; did you mean \"{s}\"?"));
        } else {
            msg.push_str(&format!(
                "; expected one of: {}",
                keys.known
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        sink.error(key.span(), msg);
    }
}

/// The key's own span (for "missing"/"conflicting" errors pointing at the key).
pub(crate) fn key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    table.get_key_value(key).map(|(k, _)| k.span())
}

fn wrong_type(sink: &mut Sink<'_>, v: &Value<'_>, path: &str, expected: &str) {
    sink.error(
        v.span(),
        format!(
            "{path}: expected {expected}, found {}",
            v.get_ref().type_str()
        ),
    );
}

pub(crate) fn string<'v>(sink: &mut Sink<'_>, v: &'v Value<'_>, path: &str) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => {
            wrong_type(sink, v, path, "a string");
            None
        }
    }
}

pub(crate) fn boolean(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            wrong_type(sink, v, path, "true or false");
            None
        }
    }
}

pub(crate) fn integer(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<i64> {
    match v.get_ref() {
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                sink.error(v.span(), format!("{path}: integer {i} is too large"));
                None
            }
        },
        _ => {
            wrong_type(sink, v, path, "an integer");
            None
        }
    }
}

/// A non-negative integer.
pub(crate) fn uint(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<u64> {
    let n = integer(sink, v, path)?;
    if n < 0 {
        sink.error(v.span(), format!("{path}: must not be negative, found {n}"));
        return None;
    }
    Some(n as u64)
}

/// An integer or a float.
pub(crate) fn number(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<f64> {
    match v.get_ref() {
        DeValue::Integer(_) => integer(sink, v, path).map(|n| n as f64),
        DeValue::Float(f) => match f.as_str().parse::<f64>() {
            Ok(x) if x.is_finite() => Some(x),
            _ => {
                sink.error(v.span(), format!("{path}: {f} is not a finite number"));
                None
            }
        },
        _ => {
            wrong_type(sink, v, path, "a number");
            None
        }
    }
}

pub(crate) fn table<'v, 'i>(
    sink: &mut Sink<'_>,
    v: &'v Value<'i>,
    path: &str,
) -> Option<&'v DeTable<'i>> {
    match v.get_ref() {
        DeValue::Table(t) => Some(t),
        _ => {
            wrong_type(sink, v, path, "a table");
            None
        }
    }
}

pub(crate) fn array<'v, 'i>(
    sink: &mut Sink<'_>,
    v: &'v Value<'i>,
    path: &str,
) -> Option<&'v DeArray<'i>> {
    match v.get_ref() {
        DeValue::Array(a) => Some(a),
        _ => {
            wrong_type(sink, v, path, "an array");
            None
        }
    }
}

/// A duration string such as `"5s"`; the integer `0` is accepted too.
pub(crate) fn duration(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<u64> {
    match v.get_ref() {
        DeValue::String(s) => match units::parse_duration(s) {
            Ok(ms) => Some(ms),
            Err(e) => {
                sink.error(v.span(), format!("{path}: {e}"));
                None
            }
        },
        DeValue::Integer(i) if i.as_str() == "0" => Some(0),
        _ => {
            wrong_type(sink, v, path, "a duration string like \"10s\" or \"1m30s\"");
            None
        }
    }
}

/// An array of strings.
pub(crate) fn string_list(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<Vec<String>> {
    let items = array(sink, v, path)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match string(sink, item, &format!("{path}[{i}]")) {
            Some(s) => out.push(s.to_string()),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A command: an array of strings, or a string split like a shell splits words.
pub(crate) fn command(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<Vec<String>> {
    let words = match v.get_ref() {
        DeValue::String(s) => match units::split_command(s) {
            Ok(words) => words,
            Err(e) => {
                sink.error(v.span(), format!("{path}: {e}"));
                return None;
            }
        },
        DeValue::Array(_) => string_list(sink, v, path)?,
        _ => {
            wrong_type(sink, v, path, "an array of strings or a string");
            return None;
        }
    };
    if words.is_empty() {
        sink.error(
            v.span(),
            format!("{path}: must not be empty (leave it out to use the image's default)"),
        );
        return None;
    }
    Some(words)
}

/// A scalar rendered as text (strings as they are; integers, floats and booleans in TOML form).
fn scalar_text(v: &Value<'_>) -> Option<String> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n.to_string()),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A map of strings: a table (`{ K = "v" }`; integers and booleans are turned into text) or an
/// array of `"K=V"` strings. `what` names a key in messages (e.g. "variable", "label").
pub(crate) fn string_map(
    sink: &mut Sink<'_>,
    v: &Value<'_>,
    path: &str,
    what: &str,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut ok = true;
    match v.get_ref() {
        DeValue::Table(t) => {
            for (k, item) in entries(t) {
                let key: &str = k.get_ref();
                if let Err(e) = check_map_key(key, what) {
                    sink.error(k.span(), format!("{path}: {e}"));
                    ok = false;
                    continue;
                }
                match scalar_text(item) {
                    Some(s) => {
                        out.insert(key.to_string(), s);
                    }
                    None => {
                        wrong_type(sink, item, &format!("{path}.{key}"), "a string");
                        ok = false;
                    }
                }
            }
        }
        DeValue::Array(items) => {
            let mut seen: BTreeMap<String, ()> = BTreeMap::new();
            for (i, item) in items.iter().enumerate() {
                let Some(s) = string(sink, item, &format!("{path}[{i}]")) else {
                    ok = false;
                    continue;
                };
                let Some((key, value)) = s.split_once('=') else {
                    sink.error(
                        item.span(),
                        format!("{path}[{i}]: expected \"KEY=VALUE\", found \"{s}\""),
                    );
                    ok = false;
                    continue;
                };
                if let Err(e) = check_map_key(key, what) {
                    sink.error(item.span(), format!("{path}[{i}]: {e}"));
                    ok = false;
                    continue;
                }
                if seen.insert(key.to_string(), ()).is_some() {
                    sink.error(
                        item.span(),
                        format!("{path}[{i}]: {what} \"{key}\" is set twice"),
                    );
                    ok = false;
                    continue;
                }
                out.insert(key.to_string(), value.to_string());
            }
        }
        _ => {
            wrong_type(
                sink,
                v,
                path,
                "a table of strings or an array of \"KEY=VALUE\" strings",
            );
            return None;
        }
    }
    ok.then_some(out)
}

fn check_map_key(key: &str, what: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("{what} name must not be empty"));
    }
    if key.contains('=') || key.contains('\0') || key.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid {what} name \"{key}\": must not contain '=', whitespace or NUL"
        ));
    }
    Ok(())
}

/// One of a fixed set of strings.
pub(crate) fn choice<'c>(
    sink: &mut Sink<'_>,
    v: &Value<'_>,
    path: &str,
    choices: &[&'c str],
) -> Option<&'c str> {
    let s = string(sink, v, path)?;
    if let Some(c) = choices.iter().find(|c| **c == s) {
        return Some(c);
    }
    let list = choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut msg = format!("{path}: invalid value \"{s}\"; expected one of {list}");
    if let Some(sug) = units::suggest(s, choices) {
        msg.push_str(&format!(" (did you mean \"{sug}\"?)"));
    }
    sink.error(v.span(), msg);
    None
}
