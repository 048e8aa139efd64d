//! A YAML document as a tree whose every node and key knows its file, line and column.
//!
//! Built from `saphyr-parser`'s events. Anchors and aliases are resolved (an alias is a copy of
//! the anchored node, positions included), and merge keys (`<<: *base`, `<<: [*a, *b]`) are
//! applied as Compose files use them: keys written in the mapping win over merged ones, and
//! earlier merged mappings win over later ones. Scalars keep their text; their type (null,
//! boolean, integer, ...) is decided where a value is used, after interpolation, as Compose does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A place in a Compose file. `line` and `column` are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pos {
    pub file: Arc<Path>,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `plain` is false for quoted and block scalars, which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a scalar that is not null.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// A plain scalar that reads as a boolean.
    pub fn boolean(&self) -> Option<bool> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A plain scalar that reads as an integer (decimal, `0x`, `0o`).
    pub fn integer(&self) -> Option<i64> {
        let Kind::Scalar { text, plain: true } = &self.kind else {
            return None;
        };
        let (neg, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let n = if let Some(hex) = digits.strip_prefix("0x") {
            i64::from_str_radix(hex, 16).ok()?
        } else if let Some(oct) = digits.strip_prefix("0o") {
            i64::from_str_radix(oct, 8).ok()?
        } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()?
        } else {
            return None;
        };
        Some(if neg { -n } else { n })
    }

    /// A plain scalar that reads as a number (integer or float).
    pub fn number(&self) -> Option<f64> {
        if let Some(n) = self.integer() {
            return Some(n as f64);
        }
        match &self.kind {
            Kind::Scalar { text, plain: true } => {
                let x: f64 = text.parse().ok()?;
                x.is_finite().then_some(x)
            }
            _ => None,
        }
    }

    pub fn map(&self) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn seq(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Seq(_) => "a sequence",
            Kind::Map(_) => "a mapping",
            Kind::Scalar { .. } if self.is_null() => "null",
            Kind::Scalar { .. } if self.boolean().is_some() => "a boolean",
            Kind::Scalar { .. } if self.number().is_some() => "a number",
            Kind::Scalar { .. } => "a string",
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.map()?.iter().find(|e| e.key == key)
    }
}

/// Parses one Compose file. `Ok(None)` is an empty file; errors are (place, message).
pub(crate) fn parse(file: &Arc<Path>, text: &str) -> Result<Option<Node>, Vec<(Pos, String)>> {
    let mut b = Builder {
        file: file.clone(),
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        errors: Vec::new(),
    };
    let doc = match b.document() {
        Ok(doc) => doc,
        Err(e) => return Err(vec![e]),
    };
    if b.errors.is_empty() {
        Ok(doc)
    } else {
        Err(b.errors)
    }
}

struct Builder<'i> {
    file: Arc<Path>,
    parser: Parser<'i, saphyr_parser::StrInput<'i>>,
    anchors: HashMap<usize, Node>,
    /// Problems that do not stop the parse (duplicate keys, bad merge keys, tags).
    errors: Vec<(Pos, String)>,
}

type Fatal = (Pos, String);

impl<'i> Builder<'i> {
    fn pos(&self, span: &Span) -> Pos {
        Pos {
            file: self.file.clone(),
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }

    fn next(&mut self) -> Result<(Event<'i>, Span), Fatal> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => {
                let m = e.marker();
                Err((
                    Pos {
                        file: self.file.clone(),
                        line: m.line(),
                        column: m.col() + 1,
                    },
                    format!("invalid YAML: {}", e.info()),
                ))
            }
            None => Err((
                Pos {
                    file: self.file.clone(),
                    line: 0,
                    column: 0,
                },
                "invalid YAML: unexpected end of input".to_string(),
            )),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, Fatal> {
        let mut doc = None;
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(doc),
                Event::DocumentStart(_) => {
                    if doc.is_some() {
                        return Err((
                            self.pos(&span),
                            "a Compose file holds one YAML document; this is a second one"
                                .to_string(),
                        ));
                    }
                    let (ev, span) = self.next()?;
                    doc = Some(self.node(ev, span)?);
                }
                other => {
                    let (ev, span) = (other, span);
                    doc = Some(self.node(ev, span)?);
                }
            }
        }
    }

    fn node(&mut self, ev: Event<'i>, span: Span) -> Result<Node, Fatal> {
        let pos = self.pos(&span);
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    if tag.handle == "!!" && tag.suffix == "str" {
                        plain = false;
                    } else {
                        self.errors.push((
                            pos.clone(),
                            format!("YAML tag {}{} is not supported", tag.handle, tag.suffix),
                        ));
                    }
                }
                (
                    Node {
                        kind: Kind::Scalar {
                            text: text.into_owned(),
                            plain,
                        },
                        pos,
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                return match self.anchors.get(&id) {
                    Some(n) => Ok(n.clone()),
                    None => Err((pos, "invalid YAML: unknown alias".to_string())),
                };
            }
            Event::SequenceStart(anchor, tag) => {
                self.refuse_tag(&pos, tag.as_deref());
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, span)?);
                }
                (
                    Node {
                        kind: Kind::Seq(items),
                        pos,
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, tag) => {
                self.refuse_tag(&pos, tag.as_deref());
                let mut entries: Vec<Entry> = Vec::new();
                let mut merged: Vec<Node> = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(ev, span)?;
                    let (ev, span) = self.next()?;
                    let value = self.node(ev, span)?;
                    let Kind::Scalar { text, plain } = key.kind else {
                        self.errors
                            .push((key.pos, "a mapping key must be a string".to_string()));
                        continue;
                    };
                    if plain && text == "<<" {
                        match value.kind {
                            Kind::Map(_) => merged.push(value),
                            Kind::Seq(items) => {
                                for item in items {
                                    if item.map().is_some() {
                                        merged.push(item);
                                    } else {
                                        self.errors.push((
                                            item.pos,
                                            "a merge key (<<) takes a mapping or a sequence of mappings".to_string(),
                                        ));
                                    }
                                }
                            }
                            _ => self.errors.push((
                                value.pos,
                                "a merge key (<<) takes a mapping or a sequence of mappings"
                                    .to_string(),
                            )),
                        }
                        continue;
                    }
                    if let Some(first) = entries.iter().find(|e| e.key == text) {
                        self.errors.push((
                            key.pos,
                            format!(
                                "duplicate key \"{text}\" (first at line {})",
                                first.key_pos.line
                            ),
                        ));
                        continue;
                    }
                    entries.push(Entry {
                        key: text,
                        key_pos: key.pos,
                        value,
                    });
                }
                for m in merged {
                    if let Kind::Map(extra) = m.kind {
                        for e in extra {
                            if !entries.iter().any(|x| x.key == e.key) {
                                entries.push(e);
                            }
                        }
                    }
                }
                (
                    Node {
                        kind: Kind::Map(entries),
                        pos,
                    },
                    anchor,
                )
            }
            _ => return Err((pos, "invalid YAML: unexpected event".to_string())),
        };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    fn refuse_tag(&mut self, pos: &Pos, tag: Option<&saphyr_parser::Tag>) {
        if let Some(tag) = tag {
            self.errors.push((
                pos.clone(),
                format!("YAML tag {}{} is not supported", tag.handle, tag.suffix),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Node {
        let file: Arc<Path> = Arc::from(Path::new("c.yml"));
        parse(&file, text).unwrap().unwrap()
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let d = doc("services:\n  web:\n    image: nginx\n");
        let web = d.get("services").unwrap().entry("web").unwrap();
        assert_eq!((web.key_pos.line, web.key_pos.column), (2, 3));
        let image = web.value.get("image").unwrap();
        assert_eq!((image.pos.line, image.pos.column), (3, 12));
        assert_eq!(image.scalar(), Some("nginx"));
    }

    #[test]
    fn merge_keys_fill_in_without_overriding() {
        let d = doc("x-base: &base\n  a: 1\n  b: 2\ns:\n  <<: *base\n  b: 3\n");
        let s = d.get("s").unwrap();
        assert_eq!(s.get("a").and_then(Node::integer), Some(1));
        assert_eq!(s.get("b").and_then(Node::integer), Some(3));
    }

    #[test]
    fn scalar_types_follow_style() {
        let d = doc("a: 1\nb: '1'\nc: true\nd: ~\ne: 0x10\n");
        assert_eq!(d.get("a").unwrap().integer(), Some(1));
        assert_eq!(d.get("b").unwrap().integer(), None);
        assert_eq!(d.get("c").unwrap().boolean(), Some(true));
        assert!(d.get("d").unwrap().is_null());
        assert_eq!(d.get("e").unwrap().integer(), Some(16));
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_have_positions() {
        let file: Arc<Path> = Arc::from(Path::new("c.yml"));
        let errs = parse(&file, "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(errs[0].0.line, 3);
        assert!(errs[0].1.contains("duplicate key \"a\" (first at line 1)"));
        let errs = parse(&file, "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(errs[0].1.starts_with("invalid YAML"), "{:?}", errs);
        assert!(errs[0].0.line >= 1);
    }
}
