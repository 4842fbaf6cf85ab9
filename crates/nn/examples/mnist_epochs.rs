//! Trains network.py's [784, 30, 10] on MNIST and prints each epoch's accuracy and time.
//! usage: cargo run --release -p kiln-nn --example mnist_epochs -- [EPOCHS] [f32|f64] [SEED]
use kiln_nn::{mnist, Event, Float, Network, SgdConfig};

fn run<T: Float>(epochs: usize, seed: u64) -> Result<(), kiln_nn::NnError> {
    let mut data = mnist::load_nielsen::<T>(&mnist::default_dir()?)?;
    if std::env::var_os("FLOAT_ROWS").is_some() {
        // train from the float rows instead of the byte copy
        let t = &data.training;
        data.training = kiln_nn::Dataset::new(t.dim(), t.inputs().to_vec(), t.labels().to_vec())?;
    }
    let mut net = Network::<T>::with_options(
        &[784, 30, 10],
        kiln_nn::Init::Large,
        kiln_nn::Cost::Quadratic,
        seed,
    )?;
    println!("kernel {} {}", net.kernel().name(), T::NAME);
    net.train(
        &data.training,
        &SgdConfig::new(epochs, 10, 3.0),
        Some(&data.test),
        |e| {
            if let Event::Epoch(r) = e {
                println!(
                    "Epoch {}: {} / {}  train {:.3}s (cpu {:.3}s) eval {:.3}s",
                    r.epoch,
                    r.evaluation_accuracy.unwrap_or(0),
                    r.n_evaluation,
                    r.train_seconds,
                    r.train_cpu_seconds.unwrap_or(f64::NAN),
                    r.eval_seconds
                );
            }
        },
    )?;
    Ok(())
}

fn main() -> Result<(), kiln_nn::NnError> {
    let args: Vec<String> = std::env::args().collect();
    let epochs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
    match args.get(2).map(String::as_str) {
        Some("f64") => run::<f64>(epochs, seed),
        _ => run::<f32>(epochs, seed),
    }
}
