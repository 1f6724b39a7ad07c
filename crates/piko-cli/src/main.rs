//! `piko`: a tunnel server node and its agent, compatible with Piko v0.9.0's command line.
#![allow(missing_docs, reason = "a binary; its documentation is its --help")]

mod access_log_config;
mod agent;
mod bench;
mod cluster_flags;
mod common_flags;
mod config_file;
#[cfg(test)]
mod docs_sync;
mod duration;
mod expand_env;
mod forward;
mod log_sink;
mod logging;
mod open_files;
mod security_flags;
mod server;
mod server_status;
mod signal;
mod status_output;
mod stdout;
mod test_cluster;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

/// Printed by `piko --version`, in Piko's form.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Parser)]
#[command(
    name = "piko",
    about = "An open-source alternative to Ngrok, designed to serve production traffic and be simple to host",
    disable_version_flag = true
)]
struct Cli {
    /// Print the version.
    #[arg(short = 'v', long = "version")]
    version: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing buys nothing"
)]
enum Command {
    /// Start a Piko server node.
    Server(server::Args),
    /// Register endpoints with a server and forward their traffic to local services.
    #[command(subcommand)]
    Agent(agent::Command),
    /// Forward local TCP ports to endpoints, through a server's proxy port.
    #[command(subcommand)]
    Forward(forward::Command),
    /// Benchmark a server.
    #[command(subcommand)]
    Bench(bench::Command),
    /// Try piko out locally.
    #[command(subcommand)]
    Test(test_cluster::Command),
    /// Print a shell completion script (for example `piko completion bash >
    /// /etc/bash_completion.d/piko`).
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("piko version {VERSION}");
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    if let Command::Completion { shell } = command {
        // Generated in memory: the generator panics when its writer fails (`| head`).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "piko", &mut script);
        return match stdout::write(&script) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("write completion script: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("failed to start runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Piko names what failed: `failed to run server|agent|forward|benchmark`.
    let what = match &command {
        Command::Server(_) => "server",
        Command::Agent(_) => "agent",
        Command::Forward(_) => "forward",
        Command::Bench(_) => "benchmark",
        Command::Test(_) => "test cluster",
        Command::Completion { .. } => "completion",
    };
    let result = runtime.block_on(async {
        match command {
            Command::Server(args) => server::run(args).await,
            Command::Agent(command) => agent::run(command).await,
            Command::Forward(command) => forward::run(command).await,
            Command::Bench(command) => bench::run(command).await,
            Command::Test(command) => test_cluster::run(command).await,
            Command::Completion { .. } => unreachable!("answered before the runtime starts"),
        }
    });
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Before logging is set up (bad flags or config) the message goes to stdout, as
            // Piko's does; after, it is a log line.
            if tracing::dispatcher::has_been_set() {
                tracing::error!(error = %format!("{err:#}"), "failed to run {what}");
            } else {
                println!("{err:#}");
            }
            ExitCode::FAILURE
        }
    };
    // Tasks the runtime still holds may log as it drops them; then every line is written out.
    drop(runtime);
    log_sink::flush();
    code
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn command_line_definition_is_consistent() {
        // clap checks duplicate names, conflicting settings and so on only when a command is
        // built; this builds every one.
        super::Cli::command().debug_assert();
    }
}
