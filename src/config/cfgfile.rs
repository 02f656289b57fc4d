//! Reads the two keys usersync needs from the gateway's `envelope.cfg` and `compose.cfg`.
//!
//! Lines look like `KEY=VALUE` or `KEY VALUE`, with optional spaces around `=`,
//! optional surrounding quotes and `#` comments. Everything else is ignored;
//! these files are never written.

/// The value of `key` in the text of a `.cfg` file; the last assignment wins.
#[must_use]
pub fn lookup(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_len = line.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
        let (name, rest) = line.split_at(name_len);
        if name != key {
            continue;
        }
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('=') {
            Some(r) => r.trim_start(),
            // `KEY VALUE` needs the separating space; `KEYX=…` is another key.
            None if name_len < line.len() && line.as_bytes()[name_len].is_ascii_whitespace() => rest,
            None => continue,
        };
        found = Some(unquote(rest));
    }
    found
}

/// Strips surrounding quotes, or an unquoted value's trailing ` # comment`.
fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q) {
            if let Some(end) = inner.find(q) {
                return inner[..end].to_owned();
            }
        }
    }
    let v = match v.find(" #").or_else(|| v.find("\t#")) {
        Some(i) => &v[..i],
        None => v,
    };
    v.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn every_accepted_shape() {
        let k = "ALLOWEDLDAPSENDERFILE";
        assert_eq!(lookup("ALLOWEDLDAPSENDERFILE=/a", k).as_deref(), Some("/a"));
        assert_eq!(lookup("ALLOWEDLDAPSENDERFILE = /a", k).as_deref(), Some("/a"));
        assert_eq!(lookup("ALLOWEDLDAPSENDERFILE /a", k).as_deref(), Some("/a"));
        assert_eq!(lookup("  ALLOWEDLDAPSENDERFILE=\"/a b\"  ", k).as_deref(), Some("/a b"));
        assert_eq!(lookup("ALLOWEDLDAPSENDERFILE='/a' # x", k).as_deref(), Some("/a"));
        assert_eq!(lookup("ALLOWEDLDAPSENDERFILE=/a # comment", k).as_deref(), Some("/a"));
        assert_eq!(lookup("# ALLOWEDLDAPSENDERFILE=/a", k), None);
        assert_eq!(lookup("ALLOWEDLDAPSENDERFILEX=/a", k), None);
        assert_eq!(lookup("X=1\nALLOWEDLDAPSENDERFILE=/a\nALLOWEDLDAPSENDERFILE=/b\n", k).as_deref(), Some("/b"));
        assert_eq!(lookup("ALLOWEDLDAPSENDERFILE=", k).as_deref(), Some(""));
    }
}
