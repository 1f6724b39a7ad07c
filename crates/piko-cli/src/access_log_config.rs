//! An access log's settings from its flags, its file section and Piko's defaults, in that order
//! of precedence. The server's flags are `--proxy.access-log.*`, an agent listener's
//! `--access-log.*`; the rules are the same.

use piko_http::access_log;

use crate::config_file;

/// Access-log settings given as flags.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    pub(crate) level: Option<String>,
    pub(crate) disable: Option<bool>,
    pub(crate) request_allow: Vec<String>,
    pub(crate) request_block: Vec<String>,
    pub(crate) response_allow: Vec<String>,
    pub(crate) response_block: Vec<String>,
}

/// Builds and validates the settings; errors read `config: <context>: access log: ...`.
pub(crate) fn build(
    file: &config_file::AccessLog,
    flags: Overrides,
    subsystem: &'static str,
    context: &str,
) -> anyhow::Result<access_log::Config> {
    let pick = |flag: Vec<String>, file: &Option<Vec<String>>| {
        if flag.is_empty() {
            file.clone().unwrap_or_default()
        } else {
            flag
        }
    };
    let level = flags
        .level
        .or(file.level.clone())
        .unwrap_or_else(|| "info".into());
    let config = access_log::Config {
        subsystem,
        level: level
            .parse()
            .map_err(|err| anyhow::anyhow!("config: {context}: access log: {err}"))?,
        disable: flags.disable.or(file.disable).unwrap_or(false),
        request_headers: access_log::HeaderFilter {
            allow_list: pick(flags.request_allow, &file.request_headers.allow_list),
            block_list: pick(flags.request_block, &file.request_headers.block_list),
        },
        response_headers: access_log::HeaderFilter {
            allow_list: pick(flags.response_allow, &file.response_headers.allow_list),
            block_list: pick(flags.response_block, &file.response_headers.block_list),
        },
    };
    config
        .validate()
        .map_err(|err| anyhow::anyhow!("config: {context}: {err}"))?;
    Ok(config)
}
