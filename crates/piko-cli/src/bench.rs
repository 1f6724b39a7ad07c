//! `piko bench http`: a load generator (spec §1.7). It registers echo upstreams on a server, sends
//! requests with random bodies through the server's proxy port, checks every echo, and reports
//! throughput, latency percentiles and how many requests failed.
//!
//! # Layout
//! - `echo_upstreams`: the SDK listeners and their echo service.
//! - `load`: the concurrent HTTP clients and what each request's outcome was.
//! - `latency`: the bounded latency histogram the clients record into.

mod echo_upstreams;
mod latency;
mod load;

use std::{fmt::Write as _, time::Duration};

use hyper::Uri;
use serde::Deserialize;

use crate::{
    common_flags::{ConfigFlags, LogFlags},
    config_file::{self, GoDuration},
    duration,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Benchmark HTTP requests: echo upstreams on the server, concurrent clients through its
    /// proxy port.
    Http(HttpArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct HttpArgs {
    #[command(flatten)]
    config: ConfigFlags,
    #[command(flatten)]
    flags: Flags,
    #[command(flatten)]
    log: LogFlags,
}

/// The benchmark's own flags. A flag given overrides the config file, which overrides the
/// default.
#[derive(Debug, clap::Args)]
struct Flags {
    /// Number of requests to send [default: 100000].
    #[arg(long = "requests")]
    requests: Option<u64>,
    /// Number of concurrent clients; the requests are split evenly between them [default: 100].
    #[arg(long = "clients")]
    clients: Option<u64>,
    /// Number of endpoints to register; each request goes to a random one [default: 100].
    #[arg(long = "endpoints")]
    endpoints: Option<u64>,
    /// Number of upstream listeners to register, spread over the endpoints [default: 100].
    #[arg(long = "upstreams")]
    upstreams: Option<u64>,
    /// Request body size, in bytes [default: 1024].
    #[arg(long = "size")]
    size: Option<u64>,
    /// The server's proxy-port URL, where requests are sent [default: http://localhost:8000].
    #[arg(long = "connect.proxy-url")]
    proxy_url: Option<String>,
    /// The server's upstream-port URL, where the echo upstreams register
    /// [default: http://localhost:8001].
    #[arg(long = "connect.upstream-url")]
    upstream_url: Option<String>,
    /// Deadline for each upstream's connection, and for each request [default: 5s].
    #[arg(long = "connect.timeout", value_parser = duration::parse)]
    timeout: Option<Duration>,
}

/// `piko bench`'s file. Its `server:` section is what the flags call `--connect.*`, as in Piko.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BenchFile {
    requests: Option<u64>,
    clients: Option<u64>,
    endpoints: Option<u64>,
    upstreams: Option<u64>,
    size: Option<u64>,
    server: BenchServer,
    log: config_file::Log,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BenchServer {
    proxy_url: Option<String>,
    upstream_url: Option<String>,
    timeout: Option<GoDuration>,
}

/// A validated benchmark.
#[derive(Debug)]
struct Settings {
    requests: u64,
    clients: u64,
    endpoints: u64,
    upstreams: u64,
    size: usize,
    proxy_url: Uri,
    upstream_url: String,
    timeout: Duration,
}

impl Flags {
    /// Flags over the file over Piko's defaults, checked in Piko's order so the same mistake
    /// gets the same message.
    fn settings(self, file: &BenchFile) -> anyhow::Result<Settings> {
        let count = |flag: Option<u64>, file: Option<u64>, default: u64, name: &str| match flag
            .or(file)
            .unwrap_or(default)
        {
            0 => Err(anyhow::anyhow!("config: missing {name}")),
            n => Ok(n),
        };
        let requests = count(self.requests, file.requests, 100_000, "requests")?;
        let clients = count(self.clients, file.clients, 100, "clients")?;
        let endpoints = count(self.endpoints, file.endpoints, 100, "endpoints")?;
        let upstreams = count(self.upstreams, file.upstreams, 100, "upstreams")?;
        let size = count(self.size, file.size, 1024, "size")?;
        let size = usize::try_from(size).map_err(|_| anyhow::anyhow!("config: size too large"))?;
        let server = &file.server;
        let proxy_url = self
            .proxy_url
            .or_else(|| server.proxy_url.clone())
            .unwrap_or_else(|| "http://localhost:8000".into());
        let proxy_url = http_url(&proxy_url, "proxy url")?;
        let upstream_url = self
            .upstream_url
            .or_else(|| server.upstream_url.clone())
            .unwrap_or_else(|| "http://localhost:8001".into());
        http_url(&upstream_url, "upstream url")?;
        let timeout = self
            .timeout
            .or(server.timeout.map(|d| d.0))
            .unwrap_or(Duration::from_secs(5));
        if timeout.is_zero() {
            anyhow::bail!("config: server: missing timeout");
        }
        Ok(Settings {
            requests,
            clients,
            endpoints,
            upstreams,
            size,
            proxy_url,
            upstream_url,
            timeout,
        })
    }
}

/// An `http` or `https` URL with a host. Piko accepts anything Go's URL parser does and fails on
/// every request instead; a typo is better reported once, before anything starts.
fn http_url(url: &str, name: &str) -> anyhow::Result<Uri> {
    if url.is_empty() {
        anyhow::bail!("config: server: missing {name}");
    }
    let invalid = |reason: &dyn std::fmt::Display| {
        anyhow::anyhow!("config: server: invalid {name}: {reason}")
    };
    let uri: Uri = url.parse().map_err(|err| invalid(&err))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid(&"scheme must be http or https"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(&"missing host"));
    }
    Ok(uri)
}

pub(crate) async fn run(command: Command) -> anyhow::Result<()> {
    let Command::Http(args) = command;
    let file: BenchFile = args.config.load()?;
    let settings = args.flags.settings(&file)?;
    args.log.init(&file.log)?;
    crate::open_files::raise_limit();
    tracing::info!(version = crate::VERSION, "starting http benchmark");

    let upstreams = echo_upstreams::EchoUpstreams::start(
        &settings.upstream_url,
        settings.upstreams,
        settings.endpoints,
        settings.timeout,
    )
    .await?;
    let target = load::Target::new(&settings)?;
    target.wait_until_routable().await;
    let outcome = load::run(&target, settings.requests, settings.clients).await?;
    crate::stdout::write(report(settings.requests, &outcome).as_bytes())
        .map_err(|err| anyhow::anyhow!("write report: {err}"))?;
    upstreams.stop(settings.timeout).await;
    Ok(())
}

/// What the run printed: Piko's throughput line (requests sent over the run's duration, failed
/// ones included, as Piko counts them), then the outcome and the latency of the successes.
fn report(requests: u64, outcome: &load::Outcome) -> String {
    let mut text = format!(
        "Throughput: {:.1} requests/sec\n",
        requests as f64 / outcome.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        text,
        "Requests: {} succeeded, {} failed",
        outcome.succeeded, outcome.failed
    );
    let latency = &outcome.latency;
    if latency.is_empty() {
        text.push_str("Latency: no successful requests\n");
        return text;
    }
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    for (name, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        let _ = writeln!(
            text,
            "Latency {name}: {:.2}ms",
            millis(latency.quantile(quantile))
        );
    }
    let _ = writeln!(text, "Latency max: {:.2}ms", millis(latency.max()));
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        flags: Flags,
    }

    fn settings(args: &[&str], yaml: &str) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        let file: BenchFile = serde_saphyr::from_str(yaml)?;
        cli.flags.settings(&file)
    }

    #[test]
    fn defaults_are_piko_s() {
        let s = settings(&[], "").unwrap();
        assert_eq!(
            (s.requests, s.clients, s.endpoints, s.upstreams, s.size),
            (100_000, 100, 100, 100, 1024)
        );
        assert_eq!(s.proxy_url, "http://localhost:8000/");
        assert_eq!(s.upstream_url, "http://localhost:8001");
        assert_eq!(s.timeout, Duration::from_secs(5));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let yaml = "requests: 7\nclients: 3\nserver:\n  proxy_url: http://p:1\n  timeout: 2s\n";
        let s = settings(&["--clients", "9", "--connect.timeout", "300ms"], yaml).unwrap();
        assert_eq!((s.requests, s.clients), (7, 9));
        assert_eq!(s.proxy_url, "http://p:1/");
        assert_eq!(s.timeout, Duration::from_millis(300));
    }

    #[test]
    fn zero_and_bad_values_name_the_setting() {
        let err = |args: &[&str], yaml: &str| settings(args, yaml).unwrap_err().to_string();
        assert_eq!(err(&["--clients", "0"], ""), "config: missing clients");
        assert_eq!(err(&[], "size: 0"), "config: missing size");
        assert_eq!(
            err(&["--connect.timeout", "0"], ""),
            "config: server: missing timeout"
        );
        assert_eq!(
            err(&["--connect.proxy-url", ""], ""),
            "config: server: missing proxy url"
        );
        assert!(
            err(&["--connect.upstream-url", "ftp://x"], "")
                .starts_with("config: server: invalid upstream url:")
        );
        assert!(settings(&[], "server:\n  proxy-url: x\n").is_err());
        assert!(settings(&[], "requests: -1\n").is_err());
    }

    #[test]
    fn report_prints_throughput_as_piko_then_latency() {
        let mut latency = latency::Histogram::default();
        for micros in 1..=1000 {
            latency.record(Duration::from_micros(micros));
        }
        let outcome = load::Outcome {
            succeeded: 1000,
            failed: 0,
            latency,
            elapsed: Duration::from_millis(400),
        };
        let text = report(1000, &outcome);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "Throughput: 2500.0 requests/sec");
        assert_eq!(lines[1], "Requests: 1000 succeeded, 0 failed");
        assert_eq!(lines[2], "Latency p50: 0.50ms");
        assert_eq!(lines[6], "Latency max: 1.00ms");
        let none = load::Outcome {
            succeeded: 0,
            failed: 3,
            ..Default::default()
        };
        assert!(report(3, &none).ends_with("Latency: no successful requests\n"));
    }
}
