//! Where an HTTP listener sends its requests: the `addr` forms Piko accepts (spec §1.5.2).

use http::Uri;

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
