//! Every validation rule of the server, agent and forward configurations (spec §1.3.2, §1.5.2,
//! §1.6): a bad setting, given as a flag or in a file, stops the process before it binds
//! anything, with one `config: ...` line on stdout and exit code 1.

mod common;

use common::TempFile;
use tokio::process::Command;

/// Runs `piko` with `args` (and `file` as `--config.path` when given); returns exit code and
/// stdout.
async fn run(args: &[&str], file: Option<&str>) -> (Option<i32>, String) {
    let file = file.map(|text| TempFile::new("config.yaml", text));
    let mut command = Command::new(env!("CARGO_BIN_EXE_piko"));
    command.args(args);
    if let Some(file) = &file {
        command.args(["--config.path", file.path()]);
    }
    let output = tokio::time::timeout(common::PATIENCE, command.output())
        .await
        .expect("a bad config must fail at once")
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

async fn assert_refused(args: &[&str], file: Option<&str>, expected: &str) {
    let (code, stdout) = run(args, file).await;
    assert_eq!(
        (code, stdout.as_str()),
        (Some(1), expected),
        "piko {args:?} with file {file:?}"
    );
}

#[tokio::test]
async fn server_rules() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (
            &["--cluster.join-timeout", "0"],
            None,
            "config: cluster: missing join timeout",
        ),
        (
            &[],
            Some("cluster:\n  join_timeout: 0s\n"),
            "config: cluster: missing join timeout",
        ),
        (
            &["--cluster.gossip.bind-addr", ""],
            None,
            "config: cluster: gossip: missing bind addr",
        ),
        (
            &["--cluster.gossip.interval", "0"],
            None,
            "config: cluster: gossip: missing interval",
        ),
        (
            &["--cluster.gossip.max-packet-size", "0"],
            None,
            "config: cluster: gossip: missing max packet size",
        ),
        (
            &["--proxy.bind-addr", ""],
            None,
            "config: proxy: missing bind addr",
        ),
        (
            &["--proxy.access-log.level", "verbose"],
            None,
            "config: proxy: access log: unsupported level: verbose",
        ),
        (
            &[
                "--proxy.access-log.request-headers.allow-list",
                "a",
                "--proxy.access-log.request-headers.block-list",
                "b",
            ],
            None,
            "config: proxy: access log: request headers: cannot define both allow list and block list",
        ),
        (
            &[],
            Some(
                "proxy:\n  access_log:\n    response_headers:\n      allow_list: [a]\n      block_list: [b]\n",
            ),
            "config: proxy: access log: response headers: cannot define both allow list and block list",
        ),
        (
            &["--proxy.max-requests-per-endpoint", "-1"],
            None,
            "config: proxy: max requests per endpoint cannot be negative",
        ),
        (
            &[],
            Some("proxy:\n  max_requests_per_endpoint: -5\n"),
            "config: proxy: max requests per endpoint cannot be negative",
        ),
        (
            &["--upstream.bind-addr", ""],
            None,
            "config: upstream: missing bind addr",
        ),
        (
            &["--upstream.rebalance.threshold", "-1"],
            None,
            "config: upstream: rebalance: threshold cannot be negative",
        ),
        (
            &["--upstream.rebalance.shed-rate", "-0.5"],
            None,
            "config: upstream: rebalance: shed-rate cannot be negative",
        ),
        (
            &[],
            Some("upstream:\n  rebalance:\n    shed_rate: 1.5\n"),
            "config: upstream: rebalance: shed-rate cannot exceed 1",
        ),
        (
            &["--admin.bind-addr", ""],
            None,
            "config: admin: missing bind addr",
        ),
        (&["--log.level", ""], None, "config: log: missing level"),
        (
            &["--log.level", "verbose"],
            None,
            "config: log: unsupported log level: verbose",
        ),
        (
            &["--grace-period", "0"],
            None,
            "config: missing grace period",
        ),
        (
            &["--proxy.auth.rsa-public-key", "not a key"],
            None,
            "config: proxy: auth: rsa public key: no PEM block",
        ),
        (
            &[],
            Some(
                "admin:\n  auth:\n    ecdsa_public_key: |\n      -----BEGIN PRIVATE KEY-----\n      AAAA\n      -----END PRIVATE KEY-----\n",
            ),
            "config: admin: auth: ecdsa public key: a PRIVATE KEY is not a public key",
        ),
        (
            &["--upstream.auth.jwks.endpoint", "ftp://idp/jwks.json"],
            None,
            "config: upstream: auth: jwks: unsupported scheme: ftp",
        ),
        (
            &[
                "--admin.auth.jwks.endpoint",
                "https://idp/jwks.json",
                "--admin.auth.hmac-secret-key",
                "s",
            ],
            None,
            "config: admin: auth: no other verification key can be set when jwks.endpoint is set",
        ),
        (
            &["--admin.tls.cert", "/missing/cert.pem"],
            None,
            "config: admin: tls: missing key",
        ),
        (
            &[],
            Some("upstream:\n  tls:\n    key: /missing/key.pem\n"),
            "config: upstream: tls: missing cert",
        ),
        (
            &[
                "--proxy.tls.cert",
                "/missing/cert.pem",
                "--proxy.tls.key",
                "/missing/key.pem",
            ],
            None,
            "config: proxy: tls: /missing/cert.pem: I/O error: No such file or directory (os error 2)",
        ),
        (
            &[],
            Some("proxy:\n  tls:\n    client_cas: /missing/ca.pem\n"),
            "config: proxy: tls: client_cas needs a cert and key",
        ),
        (
            &[],
            Some("upstream:\n  tenants:\n    - auth: {hmac_secret_key: k}\n"),
            "config: upstream: tenant: missing tenant id",
        ),
        (
            &[],
            Some("upstream:\n  tenants:\n    - id: t\n"),
            "config: upstream: tenant: tenant auth disabled",
        ),
        (
            &[],
            Some("upstream:\n  tenants:\n    - id: a/b\n      auth: {hmac_secret_key: k}\n"),
            "config: upstream: tenant: a/b: invalid tenant id: '/' is not allowed",
        ),
    ];
    for (args, file, expected) in cases {
        let args: Vec<&str> = ["server"].iter().chain(args.iter()).copied().collect();
        assert_refused(&args, *file, expected).await;
    }
}

/// With two mistakes, the one Piko checks first is reported (spec §1.3.2's order).
#[tokio::test]
async fn server_rules_are_checked_in_piko_s_order() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--proxy.bind-addr", "", "--cluster.gossip.interval", "0"],
            "config: cluster: gossip: missing interval",
        ),
        (
            &["--upstream.bind-addr", "", "--proxy.bind-addr", ""],
            "config: proxy: missing bind addr",
        ),
        (
            &[
                "--admin.bind-addr",
                "",
                "--upstream.rebalance.shed-rate",
                "2",
            ],
            "config: upstream: rebalance: shed-rate cannot exceed 1",
        ),
        (
            &["--log.level", "loud", "--admin.bind-addr", ""],
            "config: admin: missing bind addr",
        ),
        (
            &["--grace-period", "0", "--log.level", "loud"],
            "config: log: unsupported log level: loud",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = ["server"].iter().chain(args.iter()).copied().collect();
        assert_refused(&args, None, expected).await;
    }
}

#[tokio::test]
async fn agent_rules() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (&["--connect.url", ""], None, "config: connect: missing url"),
        (
            &["--connect.url", "ftp://piko"],
            None,
            "config: connect: invalid url: scheme must be http or https",
        ),
        (
            &["--connect.timeout", "0"],
            None,
            "config: connect: missing timeout",
        ),
        (
            &["--connect.token", "t", "--connect.token-file", "/run/token"],
            None,
            "config: connect: token and token file are exclusive",
        ),
        (
            &["--grace-period", "0"],
            None,
            "config: missing grace period",
        ),
        (
            &["--server.enabled", "--server.bind-addr", ""],
            None,
            "config: server: missing bind addr",
        ),
        (
            &["--log.level", "loud"],
            None,
            "config: log: unsupported log level: loud",
        ),
    ];
    for (args, file, expected) in cases {
        let args: Vec<&str> = ["agent", "http", "e", "3000"]
            .iter()
            .chain(args.iter())
            .copied()
            .collect();
        assert_refused(&args, *file, expected).await;
    }

    let listener = |body: &str| format!("listeners:\n  - {body}\n");
    let cases = [
        (
            listener("addr: \"3000\"\n    timeout: 1s"),
            "config: listener: : missing endpoint id",
        ),
        (
            listener("endpoint_id: e\n    timeout: 1s"),
            "config: listener: e: missing addr",
        ),
        (
            listener("endpoint_id: e\n    addr: \"not an addr\"\n    timeout: 1s"),
            "config: listener: e: invalid addr: not an addr",
        ),
        (
            listener("endpoint_id: e\n    addr: \"3000\"\n    protocol: udp\n    timeout: 1s"),
            "config: listener: e: unsupported protocol",
        ),
        (
            listener("endpoint_id: e\n    addr: \"3000\""),
            "config: listener: e: missing timeout",
        ),
        (
            listener(
                "endpoint_id: e\n    addr: \"3000\"\n    timeout: 1s\n    access_log: {level: loud}",
            ),
            "config: listener: e: access log: unsupported level: loud",
        ),
        (
            listener(
                "endpoint_id: e\n    addr: \"3000\"\n    timeout: 1s\n    tls: {cert: /missing/c.pem}",
            ),
            "config: listener: e: tls: missing key",
        ),
        ("listeners: []\n".to_owned(), "no listeners configured"),
    ];
    for (file, expected) in cases {
        assert_refused(&["agent", "start"], Some(&file), expected).await;
    }
}

#[tokio::test]
async fn forward_rules() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (
            &["tcp", "3000", "e", "--connect.url", ""],
            None,
            "config: connect: missing url",
        ),
        (
            &["tcp", "3000", "e", "--connect.url", "ws://piko"],
            None,
            "config: connect: invalid url: scheme must be http or https",
        ),
        (
            &["tcp", "3000", "e", "--connect.timeout", "0"],
            None,
            "config: connect: missing timeout",
        ),
        (
            &["start"],
            Some("ports:\n  - endpoint_id: e\n"),
            "config: port: e: missing addr",
        ),
        (
            &["start"],
            Some("ports:\n  - addr: \"3000\"\n"),
            "config: port: : missing endpoint id",
        ),
        (
            &["start"],
            Some("ports:\n  - addr: \"no port\"\n    endpoint_id: e\n"),
            "config: port: e: invalid addr",
        ),
        (&["start"], Some("ports: []\n"), "no ports configured"),
        (
            &[
                "tcp",
                "3000",
                "e",
                "--connect.token",
                "t",
                "--connect.token-file",
                "/run/token",
            ],
            None,
            "config: connect: token and token file are exclusive",
        ),
    ];
    for (args, file, expected) in cases {
        let args: Vec<&str> = ["forward"].iter().chain(args.iter()).copied().collect();
        assert_refused(&args, *file, expected).await;
    }
}

#[tokio::test]
async fn unknown_flags_and_commands_exit_2_with_usage() {
    for args in [
        &["server", "--no-such-flag"][..],
        &["server", "status", "nodes"],
        &["agent", "udp", "e", "3000"],
        &["nonsense"],
        &["forward", "tcp", "3000", "e", "--connect.tenant-id", "t"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_piko"))
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("Usage:"), "{args:?}: {stderr}");
    }
}
