//! Where an HTTP listener sends its requests: the `addr` forms Piko accepts (spec §1.5.2).

use std::borrow::Cow;

use http::{HeaderValue, Uri};

/// A local service's base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    uri: Uri,
}

/// An `addr` that is none of the accepted forms.
#[derive(Debug, thiserror::Error)]
#[error("invalid addr: {0}")]
pub struct InvalidAddr(String);

impl InvalidAddr {
    pub(crate) fn new(addr: &str) -> Self {
        Self(addr.to_owned())
    }
}

impl Target {
    /// Parses an HTTP listener address: a port (`3000` → `http://localhost:3000`), a URL with a
    /// scheme and host (kept as is, path prefix included), or `host:port`.
    ///
    /// # Errors
    /// None of those forms.
    pub fn parse(addr: &str) -> Result<Self, InvalidAddr> {
        let invalid = || InvalidAddr(addr.to_owned());
        // Piko's strict `< 0xffff` rejects port 65535 in this form; a real port is a real port.
        if let Ok(port) = addr.parse::<u16>() {
            return Ok(Self {
                uri: format!("http://localhost:{port}")
                    .parse()
                    .map_err(|_| invalid())?,
            });
        }
        if let Ok(uri) = addr.parse::<Uri>()
            && uri.scheme().is_some()
            && uri.host().is_some_and(|h| !h.is_empty())
        {
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(invalid());
            }
            return Ok(Self { uri });
        }
        let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid());
        }
        Ok(Self {
            uri: format!("http://{addr}").parse().map_err(|_| invalid())?,
        })
    }

    /// The URL a request for `path_and_query` goes to: the target's path joined with the
    /// request's (one slash between), the target's query and then the request's.
    pub fn url_for(&self, path_and_query: &str) -> Uri {
        let (path, query) = path_and_query
            .split_once('?')
            .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        let base_path = self.uri.path().trim_end_matches('/');
        let path = format!("{base_path}/{}", path.trim_start_matches('/'));
        let query = match (
            self.uri.query().filter(|q| !q.is_empty()),
            query.filter(|q| !q.is_empty()),
        ) {
            (Some(a), Some(b)) => format!("?{a}&{b}"),
            (Some(q), None) | (None, Some(q)) => format!("?{q}"),
            (None, None) => String::new(),
        };
        let scheme = self.uri.scheme_str().unwrap_or("http");
        let authority = self.uri.authority().map_or("", |a| a.as_str());
        format!("{scheme}://{authority}{path}{query}")
            .parse()
            .unwrap_or_else(|_| self.uri.clone())
    }
}

impl Target {
    /// Whether the service is reached over plain TCP (`http`), not TLS.
    pub(crate) fn is_plain(&self) -> bool {
        self.uri.scheme_str() != Some("https")
    }

    /// The target (origin form) of a request for `path_and_query`: [`url_for`](Self::url_for)'s
    /// path and query, without building a URL when the target adds neither.
    pub(crate) fn origin_form<'a>(&self, path_and_query: &'a str) -> Cow<'a, str> {
        let adds_nothing = matches!(self.uri.path(), "" | "/") && self.uri.query().is_none();
        if adds_nothing && path_and_query.starts_with('/') && !path_and_query.starts_with("//") {
            return Cow::Borrowed(path_and_query);
        }
        let url = self.url_for(path_and_query);
        Cow::Owned(url.path_and_query().map_or("/", |p| p.as_str()).to_owned())
    }

    /// The `host[:port]` of the service, for a request that names none.
    pub(crate) fn authority(&self) -> Option<HeaderValue> {
        let authority = self.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    }

    /// The host and port to dial (port 80 or 443 when the address names none).
    pub(crate) fn host_and_port(&self) -> (String, u16) {
        let host = self.uri.host().unwrap_or_default();
        // An IPv6 literal is dialed without its brackets.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let default = if self.is_plain() { 80 } else { 443 };
        (host, self.uri.port_u16().unwrap_or(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        assert_eq!(
            Target::parse("3000").unwrap().url_for("/"),
            "http://localhost:3000/"
        );
        assert_eq!(
            Target::parse("10.0.0.5:8080").unwrap().url_for("/a"),
            "http://10.0.0.5:8080/a"
        );
        let https = Target::parse("https://svc.internal:8443/api").unwrap();
        assert_eq!(
            https.url_for("/users?id=1"),
            "https://svc.internal:8443/api/users?id=1"
        );
        let with_query = Target::parse("http://svc/base/?k=v").unwrap();
        assert_eq!(with_query.url_for("/x?y=z"), "http://svc/base/x?k=v&y=z");
        assert_eq!(with_query.url_for("/x"), "http://svc/base/x?k=v");
        for (addr, path, origin) in [
            ("3000", "/a?b", "/a?b"),
            ("3000", "//a", "/a"),
            ("http://svc/base?k=v", "/x?y", "/base/x?k=v&y"),
        ] {
            let target = Target::parse(addr).unwrap();
            assert_eq!(target.origin_form(path), origin, "{addr} {path}");
            assert_eq!(
                target.url_for(path).path_and_query().unwrap().as_str(),
                origin
            );
        }
        assert_eq!(
            Target::parse("http://[::1]:81").unwrap().host_and_port(),
            ("::1".to_owned(), 81)
        );
        assert_eq!(
            Target::parse("http://svc").unwrap().host_and_port(),
            ("svc".to_owned(), 80)
        );
        for bad in [
            "",
            "not an addr",
            "ftp://x",
            ":80",
            "host:notaport",
            "99999",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }
}
