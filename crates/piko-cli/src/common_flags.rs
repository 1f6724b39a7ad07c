//! Flags every command has: where its config file is, and how it logs.

use std::{path::PathBuf, sync::Arc};

use serde::Deserialize;

use crate::{config_file, logging};

/// `--config.path` and `--config.expand-env`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConfigFlags {
    /// YAML config file (Piko's format).
    #[arg(long = "config.path")]
    config_path: Option<PathBuf>,
    /// Expand `$VAR`, `${VAR}` and `${VAR:default}` in the config file.
    #[arg(long = "config.expand-env", num_args = 0..=1, default_missing_value = "true")]
    config_expand_env: Option<bool>,
}

impl ConfigFlags {
    /// The config file's contents, or the empty file when none is given.
    pub(crate) fn load<T: Default + for<'de> Deserialize<'de>>(&self) -> anyhow::Result<T> {
        match &self.config_path {
            Some(path) => config_file::load(path, self.config_expand_env.unwrap_or(false)),
            None => Ok(T::default()),
        }
    }
}

/// `--log.level`, `--log.subsystems` and `--log.format`.
#[derive(Debug, clap::Args)]
pub(crate) struct LogFlags {
    /// Minimum level logged: debug, info, warn or error [default: info].
    #[arg(long = "log.level")]
    log_level: Option<String>,
    /// Subsystems logged at every level whatever `--log.level` says (exact names, such as
    /// `proxy.http`); comma-separated, repeatable.
    #[arg(long = "log.subsystems", value_delimiter = ',')]
    log_subsystems: Vec<String>,
    /// Log line format: Piko's JSON lines, or text for reading in a terminal.
    #[arg(long = "log.format", value_enum, default_value = "json")]
    log_format: logging::Format,
}

impl LogFlags {
    /// The level in effect: flag, else the file's, else `info`.
    fn level(&self, file: &config_file::Log) -> String {
        self.log_level
            .clone()
            .or_else(|| file.level.clone())
            .unwrap_or_else(|| "info".into())
    }

    /// Checks the settings without installing anything (validation comes before start-up).
    pub(crate) fn check(&self, file: &config_file::Log) -> anyhow::Result<()> {
        logging::parse_level(&self.level(file))
            .map(drop)
            .map_err(|err| anyhow::anyhow!("config: log: {err}"))
    }

    /// Installs the process's logger: flags over the file's `log:` section over defaults.
    pub(crate) fn init(self, file: &config_file::Log) -> anyhow::Result<()> {
        let level = self.level(file);
        let subsystems = if self.log_subsystems.is_empty() {
            file.subsystems.clone().unwrap_or_default()
        } else {
            self.log_subsystems
        };
        logging::init(&level, subsystems, self.log_format)
            .map_err(|err| anyhow::anyhow!("config: log: {err}"))
    }
}

/// `--connect.tls.*`: TLS towards the server, for `https` URLs.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectTlsFlags {
    /// Client certificate (PEM) for servers that ask for one.
    #[arg(long = "connect.tls.cert")]
    tls_cert: Option<String>,
    /// Private key (PEM) of the client certificate.
    #[arg(long = "connect.tls.key")]
    tls_key: Option<String>,
    /// CA bundle (PEM) to verify the server with, instead of the system's roots.
    #[arg(long = "connect.tls.root-cas")]
    tls_root_cas: Option<String>,
    /// Accept any server certificate (for testing only).
    #[arg(long = "connect.tls.insecure-skip-verify", num_args = 0..=1, default_missing_value = "true")]
    tls_insecure_skip_verify: Option<bool>,
}

impl ConnectTlsFlags {
    /// Flags over the file's `connect.tls`: the rustls configuration, or `None` for the
    /// system's roots.
    pub(crate) fn config(
        self,
        file: &config_file::ClientTls,
    ) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        let pick = |flag: Option<String>, file: &Option<String>| {
            flag.or_else(|| file.clone())
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let tls = piko::ClientTls {
            root_cas: pick(self.tls_root_cas, &file.root_cas),
            cert: pick(self.tls_cert, &file.cert),
            key: pick(self.tls_key, &file.key),
            insecure_skip_verify: self
                .tls_insecure_skip_verify
                .or(file.insecure_skip_verify)
                .unwrap_or(false),
        };
        tls.client_config()
            .map_err(|err| anyhow::anyhow!("config: connect: tls: {err}"))
    }
}
