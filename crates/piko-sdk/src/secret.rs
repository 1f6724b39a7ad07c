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

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `url` without the `user:password@` of its authority, for error messages.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://<redacted>@{host}{}", &rest[authority_end..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "<redacted>");
        assert_eq!(
            redact_userinfo("http://alice:s3cret@proxy:3128/x"),
            "http://<redacted>@proxy:3128/x"
        );
        assert_eq!(
            redact_userinfo("socks5://proxy:1080"),
            "socks5://proxy:1080"
        );
    }
}
