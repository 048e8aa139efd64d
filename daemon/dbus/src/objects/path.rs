//! Object paths of the things the API shows, with path elements escaped as systemd escapes them
//! (`sd_bus_path_encode`): every byte that is not an ASCII letter, and a digit in first place,
//! becomes `_` and two lowercase hex digits; the empty string is `_`.

use zbus::OwnedObjectPath;

use crate::OBJECT_PATH;

/// The kinds of objects under [`OBJECT_PATH`], named as their path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Service,
    Stack,
    Task,
}

impl Kind {
    /// The path segment under `/org/shoal/Shoal1`.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Stack => "stack",
            Kind::Task => "task",
        }
    }
}

/// Escape `s` into one path element, as `sd_bus_path_encode` does.
pub fn escape(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(b as char);
        } else {
            out.push('_');
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// The inverse of [`escape`]; `None` for an element `escape` cannot have produced.
pub fn unescape(e: &str) -> Option<String> {
    if e == "_" {
        return Some(String::new());
    }
    let b = e.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = e.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The object path of the thing of `kind` named `key` (a node or task id, a service or stack
/// name).
pub fn object_path(kind: Kind, key: &str) -> OwnedObjectPath {
    let path = format!("{OBJECT_PATH}/{}/{}", kind.segment(), escape(key));
    // Escaped elements hold only [A-Za-z0-9_], so the path is always valid.
    OwnedObjectPath::try_from(path).expect("escaped object paths are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        // Examples as `busctl tree org.freedesktop.systemd1` shows them.
        assert_eq!(escape("dbus.service"), "dbus_2eservice");
        assert_eq!(escape("dev-sda1.device"), "dev_2dsda1_2edevice");
        assert_eq!(escape("shop_web"), "shop_5fweb");
        assert_eq!(escape("1abc"), "_31abc");
        assert_eq!(escape("a1"), "a1");
        assert_eq!(escape(""), "_");
        assert_eq!(escape("é"), "_c3_a9");
    }

    #[test]
    fn unescape_reverses_escape() {
        for s in ["", "shop_web", "1abc", "x.y-z", "é", "_", "__"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s), "{s:?}");
        }
        assert_eq!(unescape("_z"), None);
        assert_eq!(unescape("_4"), None);
    }

    #[test]
    fn paths_live_under_the_root_object() {
        assert_eq!(
            object_path(Kind::Service, "shop_web").as_str(),
            "/org/shoal/Shoal1/service/shop_5fweb"
        );
        assert_eq!(
            object_path(Kind::Task, "9f2c").as_str(),
            "/org/shoal/Shoal1/task/_39f2c"
        );
    }
}
