//! `freshet`, the operator's command-line tool: provision the topology, publish and generate
//! events, inspect models and the system's state, and ask for predictions. This file only defines
//! the command line and dispatches; each command lives in `commands/`.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use freshet_cli::commands::{
    self, GlobalArgs, demo, features, generate, models, predict, provision, publish, replay,
    status, tail, view,
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
    /// Work with feature specs: validate one offline
    #[command(subcommand)]
    Features(features::FeaturesCommand),
}

/// The global options `-h` lists: what most runs set. The others (credentials, TLS, topology,
/// timeouts, diagnostics) are listed by `--help` only, so a subcommand's `-h` is led by, and
/// mostly made of, its own options.
const SHORT_HELP_GLOBALS: [&str; 3] = ["nats-url", "object-store", "json"];

/// Where `-h` sends a reader for the global options it leaves out.
const MORE_OPTIONS: &str =
    "NATS credentials and TLS, subject prefix, topology, timeouts and logging: --help";

/// The command line. The shared settings are defined in the library without `global`; marking
/// them global here lets them follow the subcommand (`freshet status --nats-url ..`), and their
/// own headings keep each subcommand's help led by its own options.
fn command() -> clap::Command {
    Cli::command()
        .mut_args(|arg| {
            let long = arg.get_long().unwrap_or_default();
            let heading = if long.starts_with("nats-") || long == "connect-timeout" {
                "NATS connection"
            } else {
                "Global options"
            };
            let rarely_set = !SHORT_HELP_GLOBALS.contains(&long);
            arg.global(true)
                .help_heading(heading)
                .hide_short_help(rarely_set)
        })
        .mut_subcommands(with_more_options)
        .after_help(MORE_OPTIONS)
        .after_long_help("")
}

/// Adds the pointer to `--help` under a subcommand's `-h` (and its subcommands').
fn with_more_options(command: clap::Command) -> clap::Command {
    command
        .mut_subcommands(with_more_options)
        .after_help(MORE_OPTIONS)
        .after_long_help("")
}

/// Parses the command line.
fn parse() -> Cli {
    let matches = command().get_matches();
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
        Command::Features(command) => features::run(global, command).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `freshet ARGS` prints for a help flag.
    fn help(args: &[&str]) -> String {
        let argv = std::iter::once("freshet").chain(args.iter().copied());
        match command().try_get_matches_from(argv) {
            Err(err) if err.kind() == clap::error::ErrorKind::DisplayHelp => err.to_string(),
            other => panic!("{args:?} did not print help: {other:?}"),
        }
    }

    /// Every subcommand's path, nested ones included (`models diff`).
    fn subcommand_paths(command: &clap::Command, above: &[String]) -> Vec<Vec<String>> {
        command
            .get_subcommands()
            .flat_map(|sub| {
                let mut path = above.to_vec();
                path.push(sub.get_name().to_string());
                let mut paths = subcommand_paths(sub, &path);
                paths.push(path);
                paths
            })
            .collect()
    }

    #[test]
    fn short_help_is_led_by_the_command_and_lists_few_global_options() {
        let paths = subcommand_paths(&command(), &[]);
        assert!(paths.len() >= 15, "{paths:?}");
        for path in paths {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("-h");
            let short = help(&args);
            let globals = short
                .split_once("\nNATS connection:\n")
                .map_or("", |(_, rest)| rest);
            assert!(
                globals.lines().count() <= 14,
                "{args:?}: the global options take {} lines of -h:\n{short}",
                globals.lines().count()
            );
            for essential in ["--nats-url", "--json", "-h, --help", MORE_OPTIONS] {
                assert!(
                    short.contains(essential),
                    "{args:?}: {essential} missing in\n{short}"
                );
            }
            for rare in ["--nats-creds", "--nats-tls-key", "--topology", "--log"] {
                assert!(!short.contains(rare), "{args:?}: {rare} in -h:\n{short}");
            }
            args.pop();
            args.push("--help");
            let long = help(&args);
            for rare in ["--nats-creds", "--nats-tls-key", "--topology", "--log"] {
                assert!(long.contains(rare), "{args:?}: {rare} missing in --help");
            }
            assert!(
                !long.contains(MORE_OPTIONS),
                "{args:?}: --help points to itself"
            );
        }
        let publish = help(&["publish", "-h"]);
        assert!(
            publish.lines().count() <= 35,
            "publish -h is {} lines:\n{publish}",
            publish.lines().count()
        );
        assert!(publish.contains("--rate"), "{publish}");
    }
}
