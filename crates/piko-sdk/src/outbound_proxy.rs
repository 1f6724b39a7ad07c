//! Reaching the server through an outbound proxy (Piko's `connect.proxy_url`, spec §8.4), for
//! agents behind a corporate proxy: `http://[user:password@]host:port` with HTTP `CONNECT`, or
//! `socks5://[user:password@]host:port` (RFC 1928, with RFC 1929 user/password). TLS to the
//! server, when its URL is `https`, then runs end to end through the tunnel.

use std::io;

use base64::Engine;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    error::ConnectError,
    secret::{Secret, redact_userinfo},
};

/// Largest `CONNECT` response head read before giving up on the proxy.
const MAX_CONNECT_RESPONSE: usize = 16 * 1024;

/// An outbound proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutboundProxy {
    kind: Kind,
    host: String,
    port: u16,
    credentials: Option<(String, Secret)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    HttpConnect,
    Socks5,
}

impl OutboundProxy {
    /// Parses `http://`, `https://`-less proxy URLs: `http://[user:password@]host:port` or
    /// `socks5://[user:password@]host:port`.
    pub(crate) fn parse(url: &str) -> Result<Self, ConnectError> {
        let invalid =
            |why: &str| ConnectError::Url(format!("proxy url {}: {why}", redact_userinfo(url)));
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let (kind, default_port) = match uri.scheme_str() {
            Some("http") => (Kind::HttpConnect, 80),
            Some("socks5" | "socks5h") => (Kind::Socks5, 1080),
            _ => return Err(invalid("scheme must be http or socks5")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        let credentials = match authority.as_str().rsplit_once('@') {
            Some((userinfo, _)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |text: &str| {
                    percent_encoding::percent_decode_str(text)
                        .decode_utf8()
                        .map(|decoded| decoded.into_owned())
                        .map_err(|_| invalid("credentials are not UTF-8"))
                };
                Some((decode(user)?, Secret::new(decode(password)?)))
            }
            None => None,
        };
        Ok(Self {
            kind,
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(default_port),
            credentials,
        })
    }

    /// A TCP connection to `host:port` through the proxy.
    pub(crate) async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        match self.kind {
            Kind::HttpConnect => self.http_connect(&mut tcp, host, port).await?,
            Kind::Socks5 => self.socks5_connect(&mut tcp, host, port).await?,
        }
        Ok(tcp)
    }

    async fn http_connect(&self, tcp: &mut TcpStream, host: &str, port: u16) -> io::Result<()> {
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((user, password)) = &self.credentials {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.expose()));
            request.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await?;
        // Byte by byte up to the head's end: nothing of the tunnel's own bytes may be consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_CONNECT_RESPONSE {
                return Err(proxy_error("CONNECT response too large"));
            }
            let byte = tcp.read_u8().await?;
            head.push(byte);
        }
        let status_line = String::from_utf8_lossy(&head);
        let status_line = status_line.lines().next().unwrap_or_default();
        match status_line.split_whitespace().nth(1) {
            Some(status) if status.starts_with('2') => Ok(()),
            _ => Err(proxy_error(&format!("CONNECT refused: {status_line}"))),
        }
    }

    async fn socks5_connect(&self, tcp: &mut TcpStream, host: &str, port: u16) -> io::Result<()> {
        const VERSION: u8 = 5;
        const NO_AUTH: u8 = 0;
        const USER_PASSWORD: u8 = 2;
        let greeting: &[u8] = match self.credentials {
            Some(_) => &[VERSION, 2, NO_AUTH, USER_PASSWORD],
            None => &[VERSION, 1, NO_AUTH],
        };
        tcp.write_all(greeting).await?;
        let mut choice = [0u8; 2];
        tcp.read_exact(&mut choice).await?;
        match (choice, &self.credentials) {
            ([VERSION, NO_AUTH], _) => {}
            ([VERSION, USER_PASSWORD], Some((user, password))) => {
                let (user, password) = (user.as_bytes(), password.expose().as_bytes());
                let (Ok(user_len), Ok(password_len)) =
                    (u8::try_from(user.len()), u8::try_from(password.len()))
                else {
                    return Err(proxy_error("SOCKS5 credentials longer than 255 bytes"));
                };
                let mut auth = vec![1, user_len];
                auth.extend_from_slice(user);
                auth.push(password_len);
                auth.extend_from_slice(password);
                tcp.write_all(&auth).await?;
                let mut status = [0u8; 2];
                tcp.read_exact(&mut status).await?;
                if status[1] != 0 {
                    return Err(proxy_error("SOCKS5 authentication failed"));
                }
            }
            _ => return Err(proxy_error("SOCKS5 proxy accepts none of our methods")),
        }
        let mut request = vec![VERSION, 1, 0];
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                request.push(1);
                request.extend_from_slice(&ip.octets());
            }
            Ok(std::net::IpAddr::V6(ip)) => {
                request.push(4);
                request.extend_from_slice(&ip.octets());
            }
            Err(_) => {
                let name = host.as_bytes();
                let len = u8::try_from(name.len())
                    .map_err(|_| proxy_error("host name longer than 255 bytes"))?;
                request.extend_from_slice(&[3, len]);
                request.extend_from_slice(name);
            }
        }
        request.extend_from_slice(&port.to_be_bytes());
        tcp.write_all(&request).await?;
        let mut reply = [0u8; 4];
        tcp.read_exact(&mut reply).await?;
        if reply[1] != 0 {
            return Err(proxy_error(&format!(
                "SOCKS5 connect refused (code {})",
                reply[1]
            )));
        }
        // The bound address that follows is of no use to us, but must be consumed.
        let address_len = match reply[3] {
            1 => 4,
            4 => 16,
            3 => usize::from(tcp.read_u8().await?),
            _ => return Err(proxy_error("SOCKS5 reply with an unknown address type")),
        };
        let mut rest = vec![0u8; address_len + 2];
        tcp.read_exact(&mut rest).await?;
        Ok(())
    }
}

fn proxy_error(message: &str) -> io::Error {
    io::Error::other(format!("proxy: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_as_piko_takes_them() {
        let proxy = OutboundProxy::parse("http://alice:s%40cret@proxy.corp:3128").unwrap();
        assert_eq!(proxy.kind, Kind::HttpConnect);
        assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.corp", 3128));
        assert_eq!(
            proxy.credentials,
            Some(("alice".to_owned(), Secret::new("s@cret")))
        );
        let socks = OutboundProxy::parse("socks5://[::1]").unwrap();
        assert_eq!(socks.kind, Kind::Socks5);
        assert_eq!((socks.host.as_str(), socks.port), ("::1", 1080));
        assert_eq!(socks.credentials, None);
        assert!(OutboundProxy::parse("ftp://proxy:21").is_err());
        assert!(OutboundProxy::parse("proxy:3128").is_err());
        let err = OutboundProxy::parse("ftp://bob:hunter2@proxy:21").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{proxy:?}").contains("s@cret"));
    }
}
