//! Credentials that must never reach a log line: debug-printed as `<redacted>`.

use std::fmt;

/// A token or password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret itself, for the one place that sends it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// The token in a file, read now (surrounding white space dropped); a read failure is a
/// transport error, retried like a failed connection.
pub(crate) fn read_token_file(path: &std::path::Path) -> Result<Secret, crate::ConnectError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        crate::ConnectError::Transport(std::io::Error::new(
            err.kind(),
            format!("token file {}: {err}", path.display()),
        ))
    })?;
    Ok(Secret::new(text.trim()))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `url` without anything before its last `@` (after the scheme, if any), for error messages
/// and logs: a password may hold any character, so the URL may not even parse.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let host = &rest[at + 1..];
    match scheme {
        Some(scheme) => format!("{scheme}://<redacted>@{host}"),
        None => format!("<redacted>@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "<redacted>");
        assert_eq!(
            redact_userinfo("http://alice:s3cret@proxy:3128"),
            "http://<redacted>@proxy:3128"
        );
        assert_eq!(
            redact_userinfo("socks5://proxy:1080"),
            "socks5://proxy:1080"
        );
    }
}
