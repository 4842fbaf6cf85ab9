//! The `kiln` command: argument parsing and printing only; the work happens in the library crates.

mod bench;
mod chat;
mod chat_template;
mod complete;
mod constraint_arg;
mod embed;
mod model_arg;
mod nn_cmd;
mod prompt;
mod quantize;
mod seed;
mod serve;
mod tools;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// kiln: run Llama-family language models anywhere (GGUF, Hugging Face and Meta checkpoints).
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// llama.cpp's `-ngl N` is a multi-letter short flag, which clap cannot express (it reads
/// `-ngl` as `-n gl`); it is spelt `--gpu-layers` before clap sees it. Arguments after `--`
/// are left alone, as they are prompt text.
fn long_gpu_layers_flag(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut after_dashes = false;
    args.into_iter()
        .map(|a| {
            if after_dashes {
                return a;
            }
            if a == "--" {
                after_dashes = true;
                return a;
            }
            match a.to_str() {
                Some("-ngl") => "--gpu-layers".into(),
                Some(s) if s.starts_with("-ngl=") => format!("--gpu-layers={}", &s[5..]).into(),
                _ => a,
            }
        })
        .collect()
}

#[derive(Subcommand)]
enum Command {
    /// Complete one or more prompts (several prompts form one batch).
    Complete(complete::CompleteArgs),
    /// Chat with a model in the terminal (default: qwen2.5-coder-0.5b; /help for commands,
    /// Ctrl-C stops a reply, Ctrl-D or /bye ends).
    Chat(chat::ChatArgs),
    /// Embeddings of texts: the final hidden state, mean- or last-token-pooled, unit length.
    Embed(embed::EmbedArgs),
    /// Show a model's architecture, sizes, tensor types, tokenizer and memory estimate.
    Inspect(tools::InspectArgs),
    /// Print the token ids of a text.
    Tokenize(tools::TokenizeArgs),
    /// Prompt-processing and generation speed, in llama-bench's shape.
    Bench(bench::BenchArgs),
    /// Convert a model to GGUF or to a Hugging Face safetensors directory.
    Convert(tools::ConvertArgs),
    /// Quantize a model (GGUF, Hugging Face or Meta) into a GGUF file: kiln quantize IN OUT TYPE.
    Quantize(quantize::QuantizeArgs),
    /// Download a known model (default: gemma3-270m) into $KILN_HOME/models (default
    /// ~/.cache/kiln/models; KILN_MODELS overrides the folder).
    Pull(tools::PullArgs),
    /// Nielsen's MNIST network: train, eval, predict.
    Nn(nn_cmd::NnArgs),
    /// Perplexity of a text file, computed the way llama.cpp's llama-perplexity does.
    Perplexity(tools::PerplexityArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (continuous batching).
    Serve(serve::ServeArgs),
}

/// `kiln inspect X | head`: end quietly when stdout's reader goes away, as Unix tools do, instead
/// of panicking in `println!` (Rust ignores SIGPIPE by default). Not for `serve`, whose sockets
/// must not kill it.
fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default action of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The command line definition: the derived one, with `kiln chat`'s own `-m` default.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("chat", |c| c.mut_arg("model", |m| m.help(chat::MODEL_HELP)))
}

fn parse(args: Vec<std::ffi::OsString>) -> Cli {
    let matches = command().get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() {
    let cli = parse(long_gpu_layers_flag(std::env::args_os()));
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_broken_pipe();
    }
    let result = match cli.command {
        Command::Complete(a) => complete::run(a),
        Command::Inspect(a) => tools::inspect(a),
        Command::Chat(a) => chat::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Tokenize(a) => tools::tokenize(a),
        Command::Perplexity(a) => tools::perplexity(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Pull(a) => tools::pull(a),
        Command::Convert(a) => tools::convert(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Nn(a) => nn_cmd::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    /// clap checks its definitions (duplicate flags, bad defaults) only in debug builds, at
    /// parse time; this runs those checks for every subcommand in any build.
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::command().debug_assert();
    }

    /// `-ngl` becomes `--gpu-layers` (also `-ngl=N`), but not as prompt text after `--`, and
    /// `-n` stays `-n`.
    #[test]
    fn ngl_is_spelt_long_before_clap_reads_it() {
        let args = [
            "kiln", "complete", "-ngl", "9", "-ngl=9", "-n", "3", "--", "-ngl",
        ];
        let out = super::long_gpu_layers_flag(args.map(std::ffi::OsString::from));
        let out: Vec<&str> = out.iter().map(|a| a.to_str().unwrap()).collect();
        let want = [
            "kiln",
            "complete",
            "--gpu-layers",
            "9",
            "--gpu-layers=9",
            "-n",
            "3",
            "--",
            "-ngl",
        ];
        assert_eq!(out, want);
    }
}
