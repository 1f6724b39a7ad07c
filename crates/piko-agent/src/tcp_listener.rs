//! A TCP listener: every connection the server opens is relayed to a local TCP service (spec
//! §11.3), each direction ending on its own (a client's half-close reaches the service).

use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Settings of one TCP listener.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// The local service, `host:port`.
    pub addr: String,
    /// Bounds each dial of the local service.
    pub timeout: Duration,
    /// Whether connections are logged at info (`proxy.tcp.access`); at debug otherwise.
    pub access_log: bool,
}

/// The `addr` forms of a TCP listener: a port (`6379` → `localhost:6379`) or `host:port`.
///
/// # Errors
/// Neither form (`invalid addr`).
pub fn tcp_addr(addr: &str) -> Result<String, crate::InvalidAddr> {
    if let Ok(port) = addr.parse::<u16>() {
        return Ok(format!("localhost:{port}"));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(addr.to_owned())
        }
        _ => Err(crate::InvalidAddr::new(addr)),
    }
}

/// Serves `listener` until `stop` is cancelled; then the server is told to send nothing new
/// (GoAway) and the connections in flight are closed at once, as Piko's agent does.
///
/// # Errors
/// The listener failed for good (for example the server refused a reconnect with 401).
pub async fn serve_tcp(
    mut listener: piko::Listener,
    config: TcpConfig,
    stop: CancellationToken,
) -> Result<(), piko::Error> {
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    let endpoint = listener.endpoint_id().to_owned();
    tracing::info!(subsystem = "proxy.tcp", endpoint_id = %endpoint, addr = %config.addr, "starting tcp proxy");
    let result = loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(piko::Error::Closed) => break Ok(()),
                Err(err) => break Err(err),
            },
        };
        let (config, cut, endpoint) = (config.clone(), cut.clone(), endpoint.clone());
        connections.spawn(async move {
            log(config.access_log, &endpoint, "connection opened");
            tokio::select! {
                forwarded = piko::forward_connection(stream, &config.addr, Some(config.timeout)) => {
                    match forwarded {
                        Ok(_) => {}
                        Err(piko::ForwardError::Dial { source, .. }) => {
                            tracing::warn!(subsystem = "proxy.tcp", endpoint_id = %endpoint, addr = %config.addr, error = %source, "failed to dial upstream");
                        }
                        Err(err) => {
                            tracing::debug!(subsystem = "proxy.tcp", endpoint_id = %endpoint, error = %err, "connection ended with an error");
                        }
                    }
                }
                () = cut.cancelled() => {}
            }
            log(config.access_log, &endpoint, "connection closed");
        });
    };
    listener.close();
    cut.cancel();
    connections.close();
    connections.wait().await;
    listener.finish().await;
    result
}

fn log(access_log: bool, endpoint: &str, msg: &'static str) {
    if access_log {
        tracing::info!(subsystem = "proxy.tcp.access", endpoint_id = %endpoint, "{msg}");
    } else {
        tracing::debug!(subsystem = "proxy.tcp.access", endpoint_id = %endpoint, "{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_forms_are_piko_s() {
        assert_eq!(tcp_addr("6379").unwrap(), "localhost:6379");
        assert_eq!(tcp_addr("10.0.0.5:5432").unwrap(), "10.0.0.5:5432");
        assert_eq!(tcp_addr("[::1]:22").unwrap(), "[::1]:22");
        for bad in ["", "db", ":80", "db:port", "http://db:80/x"] {
            assert!(tcp_addr(bad).is_err(), "{bad}");
        }
    }
}
