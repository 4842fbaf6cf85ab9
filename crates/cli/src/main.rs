use clap::{Parser, Subcommand};

mod nn_cmd;

/// kiln: run Llama-family language models anywhere.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Nielsen's MNIST network: train, eval, predict
    Nn(nn_cmd::NnArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Nn(a) => nn_cmd::run(a),
    }
}
