//! Variable interpolation as Compose does it, and `.env` files.
//!
//! `$VAR` and `${VAR}` take the variable's value (empty, with a warning, when it is unset);
//! `${VAR:-default}` / `${VAR-default}` use the default when the variable is unset or empty /
//! unset; `${VAR:?message}` / `${VAR?message}` fail with the message; `${VAR:+other}` /
//! `${VAR+other}` give `other` when the variable is set and not empty / set; `$$` is a literal
//! `$`. Defaults and messages may hold interpolations themselves.

use std::collections::BTreeMap;

/// Where variables come from: the caller's environment, which wins over the `.env` file.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    pub env: BTreeMap<String, String>,
    pub dotenv: BTreeMap<String, String>,
}

impl Variables {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .or_else(|| self.dotenv.get(name))
            .map(String::as_str)
    }
}

/// The result of interpolating one string: the text, plus the names of unset variables that
/// became empty strings.
#[derive(Debug)]
pub(crate) struct Interpolated {
    pub text: String,
    pub unset: Vec<String>,
}

/// Interpolates `s`; the error is a message without position.
pub(crate) fn interpolate(s: &str, vars: &Variables) -> Result<Interpolated, String> {
    let mut out = Interpolated {
        text: String::with_capacity(s.len()),
        unset: Vec::new(),
    };
    expand(s, vars, &mut out)?;
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn expand(s: &str, vars: &Variables, out: &mut Interpolated) -> Result<(), String> {
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.text.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_and_rest = &after[1..];
                let end = closing_brace(body_and_rest).ok_or_else(|| {
                    format!("invalid interpolation \"${{{body_and_rest}\": missing closing brace")
                })?;
                braced(&body_and_rest[..end], vars, out)?;
                rest = &body_and_rest[end + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = after
                    .find(|c: char| !is_name_char(c))
                    .unwrap_or(after.len());
                let name = &after[..len];
                lookup(name, vars, out);
                rest = &after[len..];
            }
            _ => {
                let shown: String = rest[i..].chars().take(12).collect();
                return Err(format!(
                    "invalid interpolation at \"{shown}\": write $$ for a literal $, or ${{NAME}}"
                ));
            }
        }
    }
    out.text.push_str(rest);
    Ok(())
}

/// The index of the `}` that closes a `${`, counting nested `${...}`.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn lookup(name: &str, vars: &Variables, out: &mut Interpolated) {
    match vars.get(name) {
        Some(v) => out.text.push_str(v),
        None => out.unset.push(name.to_string()),
    }
}

fn braced(body: &str, vars: &Variables, out: &mut Interpolated) -> Result<(), String> {
    let len = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..len];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(format!(
            "invalid interpolation \"${{{body}}}\": a variable name starts with a letter or '_'"
        ));
    }
    let op = &body[len..];
    if op.is_empty() {
        lookup(name, vars, out);
        return Ok(());
    }
    let value = vars.get(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, op),
    };
    // With a colon, an empty value counts as unset.
    let set = match value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    let Some(kind) = op.chars().next() else {
        return Err(format!(
            "invalid interpolation \"${{{body}}}\": expected -, ?, or + after ':'"
        ));
    };
    let arg = &op[kind.len_utf8()..];
    match kind {
        '-' => {
            if set {
                out.text.push_str(value.unwrap_or_default());
            } else {
                expand(arg, vars, out)?;
            }
        }
        '+' => {
            if set {
                expand(arg, vars, out)?;
            }
        }
        '?' => {
            if set {
                out.text.push_str(value.unwrap_or_default());
            } else {
                let mut msg = Interpolated {
                    text: String::new(),
                    unset: Vec::new(),
                };
                expand(arg, vars, &mut msg)?;
                let why = if msg.text.is_empty() {
                    if colon {
                        "is unset or empty".to_string()
                    } else {
                        "is unset".to_string()
                    }
                } else {
                    msg.text
                };
                return Err(format!(
                    "required variable {name} is missing a value: {why}"
                ));
            }
        }
        _ => {
            return Err(format!(
                "invalid interpolation \"${{{body}}}\": unknown operator after the name {name}"
            ));
        }
    }
    Ok(())
}

/// Parses a `.env` file: `KEY=VALUE` lines, `#` comments, blank lines, an optional `export `,
/// values in single quotes (literal) or double quotes (with `\n`, `\"`, `\\`), and unquoted
/// values with an optional ` #` comment. Errors are (1-based line, message).
pub fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>, Vec<(usize, String)>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            // A bare name: Compose takes it from the environment; here it is simply not set.
            if line.chars().all(is_name_char) {
                continue;
            }
            errors.push((i + 1, format!("expected KEY=VALUE, found \"{line}\"")));
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.starts_with(is_name_start) || !key.chars().all(is_name_char) {
            errors.push((i + 1, format!("invalid variable name \"{key}\"")));
            continue;
        }
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('\'') {
            match inner.find('\'') {
                Some(end) => inner[..end].to_string(),
                None => {
                    errors.push((i + 1, "missing closing ' quote".to_string()));
                    continue;
                }
            }
        } else if let Some(inner) = value.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = inner.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(other) => s.push(other),
                        None => {}
                    },
                    c => s.push(c),
                }
            }
            if !closed {
                errors.push((i + 1, "missing closing \" quote".to_string()));
                continue;
            }
            s
        } else {
            match value.find(" #") {
                Some(j) => value[..j].trim_end().to_string(),
                None => value.to_string(),
            }
        };
        out.insert(key.to_string(), value);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        let mut v = Variables::default();
        v.env.insert("TAG".into(), "1.27".into());
        v.env.insert("EMPTY".into(), String::new());
        v.dotenv.insert("TAG".into(), "from-dotenv".into());
        v.dotenv.insert("PORT".into(), "8080".into());
        v
    }

    fn ok(s: &str) -> String {
        interpolate(s, &vars()).unwrap().text
    }

    #[test]
    fn forms_of_compose_interpolation() {
        assert_eq!(ok("nginx:${TAG}"), "nginx:1.27");
        assert_eq!(ok("nginx:$TAG-x"), "nginx:1.27-x");
        assert_eq!(ok("${PORT}:80"), "8080:80");
        assert_eq!(ok("${NOPE:-d}|${EMPTY:-d}|${EMPTY-d}|${NOPE-d}"), "d|d||d");
        assert_eq!(ok("${TAG:+set}|${EMPTY:+set}|${EMPTY+set}"), "set||set");
        assert_eq!(ok("cost $$5 and $${TAG}"), "cost $5 and ${TAG}");
        assert_eq!(ok("${NOPE:-${TAG}}"), "1.27");
    }

    #[test]
    fn unset_variables_become_empty_and_are_named() {
        let r = interpolate("a${NOPE}b$ALSO", &vars()).unwrap();
        assert_eq!(r.text, "ab");
        assert_eq!(r.unset, vec!["NOPE".to_string(), "ALSO".to_string()]);
    }

    #[test]
    fn errors() {
        let e = interpolate("${NOPE:?set NOPE first}", &vars()).unwrap_err();
        assert_eq!(
            e,
            "required variable NOPE is missing a value: set NOPE first"
        );
        assert!(interpolate("${EMPTY?x}", &vars()).is_ok());
        assert!(
            interpolate("${EMPTY:?}", &vars())
                .unwrap_err()
                .contains("unset or empty")
        );
        assert!(
            interpolate("${TAG", &vars())
                .unwrap_err()
                .contains("closing brace")
        );
        assert!(interpolate("a $ b", &vars()).unwrap_err().contains("$$"));
        assert!(
            interpolate("${1A}", &vars())
                .unwrap_err()
                .contains("variable name")
        );
        assert!(
            interpolate("${TAG/x/y}", &vars())
                .unwrap_err()
                .contains("operator")
        );
    }

    #[test]
    fn dotenv_files() {
        let env = parse_dotenv(
            "# comment\n\nA=1\nexport B = two words \nC='lit $X'\nD=\"l1\\nl2\"\nE=v # note\n",
        )
        .unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "lit $X");
        assert_eq!(env["D"], "l1\nl2");
        assert_eq!(env["E"], "v");
        let errs = parse_dotenv("OK=1\nnot valid\n1X=2\n").unwrap_err();
        assert_eq!(errs.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 3]);
    }
}
