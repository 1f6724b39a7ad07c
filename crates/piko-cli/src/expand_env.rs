//! `--config.expand-env`: environment references in a config file, expanded over the raw text
//! before parsing, exactly as Piko does (Go's `os.Expand` with Piko's mapping).
//!
//! - `$NAME` and `${NAME}` become the variable's value, or nothing if it is unset.
//! - `${NAME:default}` becomes the value, or `default` if the variable is unset or empty (only
//!   the first `:` splits).
//! - A `$` not followed by a name stays; `${}` and an unclosed `${` are dropped (Go's "bad
//!   syntax" handling); `$$`, `$1` and other shell specials are looked up like names.

/// Expands `text`, looking variables up with `lookup`.
pub(crate) fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mapping = |key: &str| match key.split_once(':') {
        Some((name, default)) => match lookup(name) {
            Some(value) if !value.is_empty() => value,
            _ => default.to_owned(),
        },
        None => lookup(key).unwrap_or_default(),
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' || i + 1 >= bytes.len() {
            i += 1;
            continue;
        }
        out.push_str(&text[copied..i]);
        let (name, width) = shell_name(&text[i + 1..]);
        match (name, width) {
            (None, 0) => out.push('$'),
            (None, _) => {}
            (Some(name), _) => out.push_str(&mapping(name)),
        }
        i += 1 + width;
        copied = i;
    }
    out.push_str(&text[copied..]);
    out
}

fn is_special(byte: u8) -> bool {
    matches!(byte, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-') || byte.is_ascii_digit()
}

fn is_name_byte(byte: u8) -> bool {
    byte == b'_' || byte.is_ascii_alphanumeric()
}

/// The name after a `$` and how many bytes it spans; `(None, n > 0)` is bad syntax to drop,
/// `(None, 0)` means no name (the `$` stays).
fn shell_name(rest: &str) -> (Option<&str>, usize) {
    let bytes = rest.as_bytes();
    if bytes[0] == b'{' {
        if bytes.len() > 2 && is_special(bytes[1]) && bytes[2] == b'}' {
            return (Some(&rest[1..2]), 3);
        }
        return match rest[1..].find('}') {
            Some(0) => (None, 2),
            Some(end) => (Some(&rest[1..=end]), end + 2),
            None => (None, 1),
        };
    }
    if is_special(bytes[0]) {
        return (Some(&rest[..1]), 1);
    }
    let len = bytes.iter().take_while(|&&b| is_name_byte(b)).count();
    if len == 0 {
        (None, 0)
    } else {
        (Some(&rest[..len]), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            "URL" => Some("http://a:1".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_like_piko() {
        assert_eq!(expand("token: $TOKEN", env), "token: s3cret");
        assert_eq!(expand("token: ${TOKEN}!", env), "token: s3cret!");
        assert_eq!(expand("x: ${MISSING}", env), "x: ");
        assert_eq!(expand("x: ${MISSING:fallback}", env), "x: fallback");
        assert_eq!(expand("x: ${EMPTY:fallback}", env), "x: fallback");
        assert_eq!(expand("x: ${TOKEN:fallback}", env), "x: s3cret");
        assert_eq!(expand("x: ${MISSING:http://b:2}", env), "x: http://b:2");
        assert_eq!(expand("price: 5$ each", env), "price: 5$ each");
        assert_eq!(expand("trailing $", env), "trailing $");
        assert_eq!(expand("bad ${} syntax", env), "bad  syntax");
        assert_eq!(expand("unclosed ${TOKEN", env), "unclosed TOKEN");
        assert_eq!(expand("pid $$", env), "pid ");
        assert_eq!(expand("no vars, just text", env), "no vars, just text");
        assert_eq!(expand("ünïcode ${URL} ok", env), "ünïcode http://a:1 ok");
    }
}
