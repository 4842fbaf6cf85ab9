//! `kiln quantize` and the Ctrl-C handling it shares with `kiln convert`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_engine::quantize::FileType;

#[derive(Args, Debug)]
#[command(
    after_help = "TYPE is one of Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K \
IQ4_NL IQ4_XS F16 BF16 F32, with llama-quantize's per-tensor choices without an importance \
matrix (the output matrix in Q6_K or Q8_0; attn_v and ffn_down in Q6_K in some layers for the \
_M mixes, in Q5_K for IQ4_NL/IQ4_XS; Q5_0/Q5_1/Q8_0/IQ4_NL where rows are not whole \
256-blocks). An already-quantized input is dequantized first (with a warning). The file \
is written under a temporary name and appears at OUTPUT only when complete."
)]
pub struct QuantizeArgs {
    /// The model to quantize: a GGUF file (any type), a Hugging Face directory or a Meta
    /// checkpoint directory.
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// The file type (llama-quantize's names, case-insensitive).
    #[arg(value_name = "TYPE")]
    pub ftype: String,
    /// Threads (default: one per core).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
}

static CANCELLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// From now on Ctrl-C asks the running conversion to stop at its next tensor (it then removes
/// its temporary output and exits with an error) instead of killing the process mid-write.
pub fn cancel_on_interrupt() {
    #[cfg(unix)]
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// Whether Ctrl-C was pressed since [`cancel_on_interrupt`].
pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let Some(ftype) = FileType::parse(&a.ftype) else {
        let names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
        bail!(
            "unknown quantization type {:?} (known: {})",
            a.ftype,
            names.join(" ")
        );
    };
    if a.output.is_dir() {
        bail!(
            "{} is a directory; give the GGUF file to write",
            a.output.display()
        );
    }
    cancel_on_interrupt();
    let bar = crate::model_arg::spinner(&format!("quantizing {} to {ftype}", a.input.display()));
    let r = kiln_engine::quantize::quantize(
        &a.input,
        &a.output,
        ftype,
        a.threads,
        &cancelled,
        &mut |i, n, name| bar.set_message(format!("quantizing to {ftype}: [{i}/{n}] {name}")),
    );
    bar.finish_and_clear();
    let report = r.with_context(|| {
        if cancelled() {
            format!("interrupted; nothing was written to {}", a.output.display())
        } else {
            format!("quantizing {}", a.input.display())
        }
    })?;
    if report.requantized > 0 {
        eprintln!(
            "warning: {} tensors were already quantized; they were dequantized and quantized \
             again, which loses more than quantizing the original weights",
            report.requantized
        );
    }
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for t in &report.tensors {
        *counts.entry(t.to.name().to_string()).or_default() += 1;
    }
    let mix: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    eprintln!(
        "{} tensors ({}), {:.1} MiB -> {:.1} MiB",
        report.tensors.len(),
        mix.join(", "),
        report.bytes_in as f64 / 1048576.0,
        report.bytes_out as f64 / 1048576.0
    );
    println!("{}", a.output.display());
    Ok(())
}
