//! The stack document written out: as a TOML stack file (with a map from each written value
//! back to its place in the Compose file) and as a Nix attribute set for the NixOS module.

use super::map::{Out, OutEntry, OutKind};
use super::yaml::Pos;

/// Where each key and value of the TOML text came from: (byte offset in the TOML, place).
pub(crate) struct SourceMap {
    pub marks: Vec<(usize, Pos)>,
}

impl SourceMap {
    /// The place of the innermost key or value that starts at or before `offset`.
    pub fn find(&self, offset: usize) -> Option<&Pos> {
        let i = self.marks.partition_point(|(o, _)| *o <= offset);
        if i == 0 {
            self.marks.first().map(|(_, p)| p)
        } else {
            Some(&self.marks[i - 1].1)
        }
    }
}

fn bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn toml_key(k: &str) -> String {
    if bare_key(k) {
        k.to_string()
    } else {
        toml_string(k)
    }
}

fn toml_string(s: &str) -> String {
    quoted(s, false)
}

/// An array worth one item a line: several items, one of them a table, or many.
fn long_array(items: &[Out]) -> bool {
    items.len() > 1
        && (items.len() > 3 || items.iter().any(|i| matches!(i.kind, OutKind::Table(_))))
}

fn nix_string(s: &str) -> String {
    quoted(s, true)
}

/// A double-quoted string: TOML escapes other control characters as `\uXXXX`; Nix takes them
/// as they are, but needs `${` escaped.
fn quoted(s: &str, nix: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '$' if nix && chars.peek() == Some(&'{') => out.push_str("\\$"),
            c if !nix && c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn float_text(x: f64) -> String {
    let s = x.to_string();
    if s.contains(['.', 'e', 'E', 'n', 'i']) {
        s
    } else {
        format!("{s}.0")
    }
}

struct Toml {
    text: String,
    marks: Vec<(usize, Pos)>,
}

impl Toml {
    fn mark(&mut self, pos: &Pos) {
        self.marks.push((self.text.len(), pos.clone()));
    }

    fn inline(&mut self, v: &Out) {
        self.mark(&v.pos);
        match &v.kind {
            OutKind::Str(s) => self.text.push_str(&toml_string(s)),
            OutKind::Int(i) => self.text.push_str(&i.to_string()),
            OutKind::Float(x) => self.text.push_str(&float_text(*x)),
            OutKind::Bool(b) => self.text.push_str(if *b { "true" } else { "false" }),
            OutKind::Array(items) => self.separated("[", "]", items, Toml::inline),
            OutKind::Table(entries) if entries.is_empty() => self.text.push_str("{}"),
            OutKind::Table(entries) => self.separated("{ ", " }", entries, Toml::key_value),
        }
    }

    /// `open item, item, ... close`.
    fn separated<T>(&mut self, open: &str, close: &str, items: &[T], write: fn(&mut Self, &T)) {
        self.text.push_str(open);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            write(self, item);
        }
        self.text.push_str(close);
    }

    fn key_value(&mut self, e: &OutEntry) {
        self.mark(&e.key_pos);
        self.text.push_str(&toml_key(&e.key));
        self.text.push_str(" = ");
        self.inline(&e.value);
    }
}

/// The stack file: one `[services.NAME]` table per service, with `restart`, `update`,
/// `rollback`, `placement` and `resources` as sub-tables, everything else inline; then one
/// `[networks.NAME]` table per network, `[secrets.NAME]` per secret, `[configs.NAME]` per
/// config.
pub(crate) fn toml(doc: &Out, header: &str) -> (String, SourceMap) {
    let mut t = Toml {
        text: String::new(),
        marks: Vec::new(),
    };
    t.text.push_str(header);
    t.mark(&doc.pos);
    let services = match &doc.kind {
        OutKind::Table(entries) => entries.iter().find(|e| e.key == "services"),
        _ => None,
    };
    if let Some(services) = services {
        if let OutKind::Table(list) = &services.value.kind {
            if list.is_empty() {
                t.mark(&services.key_pos);
                t.text.push_str("services = {}\n");
            }
            for (i, s) in list.iter().enumerate() {
                if i > 0 {
                    t.text.push('\n');
                }
                t.mark(&s.key_pos);
                let name = format!("services.{}", toml_key(&s.key));
                t.text.push_str(&format!("[{name}]\n"));
                let OutKind::Table(keys) = &s.value.kind else {
                    continue;
                };
                let (sub, flat): (Vec<&OutEntry>, Vec<&OutEntry>) = keys.iter().partition(|e| {
                    matches!(e.value.kind, OutKind::Table(_))
                        && e.key != "env"
                        && !e.key.ends_with("labels")
                });
                for e in flat {
                    match &e.value.kind {
                        OutKind::Array(items) if long_array(items) => {
                            // One item a line, as a person writes a list of mounts.
                            t.mark(&e.key_pos);
                            t.text.push_str(&toml_key(&e.key));
                            t.text.push_str(" = [\n");
                            for item in items {
                                t.text.push_str("  ");
                                t.inline(item);
                                t.text.push_str(",\n");
                            }
                            t.text.push_str("]\n");
                        }
                        _ => {
                            t.key_value(e);
                            t.text.push('\n');
                        }
                    }
                }
                for e in sub {
                    t.mark(&e.key_pos);
                    t.text
                        .push_str(&format!("\n[{name}.{}]\n", toml_key(&e.key)));
                    if let OutKind::Table(inner) = &e.value.kind {
                        for x in inner {
                            t.key_value(x);
                            t.text.push('\n');
                        }
                    }
                }
            }
        } else {
            t.key_value(services);
            t.text.push('\n');
        }
    }
    for top in ["networks", "secrets", "configs"] {
        let section = match &doc.kind {
            OutKind::Table(entries) => entries.iter().find(|e| e.key == top),
            _ => None,
        };
        let Some(OutKind::Table(list)) = section.map(|n| &n.value.kind) else {
            continue;
        };
        for n in list {
            t.mark(&n.key_pos);
            t.text
                .push_str(&format!("\n[{top}.{}]\n", toml_key(&n.key)));
            if let OutKind::Table(keys) = &n.value.kind {
                for k in keys {
                    t.key_value(k);
                    t.text.push('\n');
                }
            }
        }
    }
    let marks = t.marks;
    (t.text, SourceMap { marks })
}

fn nix_key(k: &str) -> String {
    let ident = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '\'');
    let reserved = matches!(
        k,
        "if" | "then" | "else" | "assert" | "with" | "let" | "in" | "rec" | "inherit" | "or"
    );
    if ident && !reserved {
        k.to_string()
    } else {
        nix_string(k)
    }
}

fn nix_value(v: &Out, indent: usize, out: &mut String) {
    match &v.kind {
        OutKind::Str(s) => out.push_str(&nix_string(s)),
        OutKind::Int(i) if *i < 0 => out.push_str(&format!("({i})")),
        OutKind::Int(i) => out.push_str(&i.to_string()),
        OutKind::Float(x) => out.push_str(&float_text(*x)),
        OutKind::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        OutKind::Array(items) => nix_block(out, indent, ('[', ']'), items, |item, out| {
            nix_value(item, indent + 1, out);
        }),
        OutKind::Table(entries) => nix_block(out, indent, ('{', '}'), entries, |e, out| {
            out.push_str(&nix_key(&e.key));
            out.push_str(" = ");
            nix_value(&e.value, indent + 1, out);
            out.push(';');
        }),
    }
}

/// A list or an attribute set, one item a line.
fn nix_block<T>(
    out: &mut String,
    indent: usize,
    (open, close): (char, char),
    items: &[T],
    item: impl Fn(&T, &mut String),
) {
    out.push(open);
    if items.is_empty() {
        out.push(' ');
        out.push(close);
        return;
    }
    out.push('\n');
    for i in items {
        out.push_str(&"  ".repeat(indent + 1));
        item(i, out);
        out.push('\n');
    }
    out.push_str(&"  ".repeat(indent));
    out.push(close);
}

/// The document as a Nix attribute set, for `services.shoal.stacks.NAME.settings`.
pub(crate) fn nix(doc: &Out, header: &str) -> String {
    let mut out = String::from(header);
    nix_value(doc, 0, &mut out);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_for_toml_and_nix() {
        assert_eq!(toml_string("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(nix_string("${HOME} $x \"q\""), "\"\\${HOME} $x \\\"q\\\"\"");
        assert_eq!(nix_key("web"), "web");
        assert_eq!(nix_key("com.example"), "\"com.example\"");
        assert_eq!(nix_key("in"), "\"in\"");
        assert_eq!(toml_key("my-svc"), "my-svc");
        assert_eq!(toml_key("a.b"), "\"a.b\"");
        assert_eq!(float_text(1.0), "1.0");
        assert_eq!(float_text(0.5), "0.5");
    }
}
