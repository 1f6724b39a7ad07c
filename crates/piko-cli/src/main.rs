//! `piko`: a tunnel server node and its agent, compatible with Piko v0.9.0's command line.
#![allow(missing_docs, reason = "a binary; its documentation is its --help")]

mod access_log_config;
mod agent;
mod common_flags;
mod config_file;
mod duration;
mod expand_env;
mod forward;
mod logging;
mod open_files;
mod server;
mod signal;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
enum Command {
    /// Start a Piko server node.
    Server(server::Args),
    /// Register endpoints with a server and forward their traffic to local services.
    #[command(subcommand)]
    Agent(agent::Command),
    /// Forward local TCP ports to endpoints, through a server's proxy port.
    #[command(subcommand)]
    Forward(forward::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("piko version {VERSION}");
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
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
    let result = runtime.block_on(async {
        match command {
            Command::Server(args) => server::run(args).await,
            Command::Agent(command) => agent::run(command).await,
            Command::Forward(command) => forward::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Before logging is set up (bad flags or config) the message goes to stdout, as
            // Piko's does; after, it is a log line.
            if tracing::dispatcher::has_been_set() {
                tracing::error!(error = %format!("{err:#}"), "failed to run");
            } else {
                println!("{err:#}");
            }
            ExitCode::FAILURE
        }
    }
}
