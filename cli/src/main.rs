//! `freshet`, the operator's command-line tool: provision the topology, publish and generate
//! events, inspect models and the system's state, and ask for predictions. This file only defines
//! the command line and dispatches; each command lives in `commands/`.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use freshet_cli::commands::{
    self, GlobalArgs, demo, generate, models, predict, provision, publish, replay, status, tail,
    view,
};

/// Operate freshet, which keeps ML models fresh on NATS JetStream.
///
/// Every setting comes from a flag or a FRESHET_* environment variable. Exit codes: 0 ok,
/// 1 operational error, 2 usage error, 3 not found.
#[derive(Debug, Parser)]
#[command(name = "freshet", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the streams and KV buckets that are missing; check the ones that exist
    Provision,
    /// Publish CloudEvents read as JSON Lines from a file or stdin
    Publish(publish::PublishArgs),
    /// Replay CloudEvents from a JSON Lines file (or stdin) at a target rate, with progress
    Replay(replay::ReplayArgs),
    /// List models, or show one model's manifest and pointer history
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Ask a model's predictors for a score
    Predict(predict::PredictArgs),
    /// Ask a model's predictors for a user's top items
    Recommend(predict::RecommendArgs),
    /// Show streams, consumer lag, live models, label health and dead letters
    Status(status::StatusArgs),
    /// Print the newest messages of a stream (dead letters, CONTROL, ...), and with --follow
    /// every new one
    Tail(tail::TailArgs),
    /// Serve a live web page of event rate, freshness, versions, accuracy and drift
    View(view::ViewArgs),
    /// Write a deterministic synthetic bookstore event stream to stdout as JSON Lines
    Generate(generate::GenerateArgs),
    /// Run the bookstore story end to end on a private local stack, then stop it
    Demo(demo::DemoArgs),
}

/// Parses the command line. The shared settings are defined in the library without `global`;
/// marking them global here lets them follow the subcommand (`freshet status --nats-url ..`),
/// and their own heading keeps each subcommand's help led by its own options.
fn parse() -> Cli {
    let command = Cli::command().mut_args(|arg| arg.global(true).help_heading("Global options"));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

async fn dispatch(cli: &Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match &cli.command {
        Command::Provision => provision::run(global).await,
        Command::Publish(args) => publish::run(global, args).await,
        Command::Replay(args) => replay::run(global, args).await,
        Command::Models(command) => models::run(global, command).await,
        Command::Predict(args) => predict::run(global, args).await,
        Command::Recommend(args) => predict::recommend(global, args).await,
        Command::Status(args) => status::run(global, args).await,
        Command::Tail(args) => tail::run(global, args).await,
        Command::View(args) => view::run(global, args).await,
        Command::Generate(args) => generate::run(args),
        Command::Demo(args) => demo::run(args).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse();
    freshet::runtime::init_tracing(&cli.global.log, "text");
    match dispatch(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", commands::error_message(&err));
            commands::exit_code(&err)
        }
    }
}
