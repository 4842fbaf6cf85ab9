//! Minimum-of-repeats timing of training on 5 000 MNIST images (robust on a busy machine):
//! prints the estimated seconds for a 50 000-image epoch of [784, 30, 10], batch 10.
use kiln_nn::{mnist, Float, KernelKind, Network, SgdConfig};

fn bench<T: Float>(kind: KernelKind, reps: usize) -> Result<(), kiln_nn::NnError> {
    let data = mnist::load_nielsen::<T>(&mnist::default_dir()?)?;
    let part = data.training.slice(0, 5000);
    let mut net = Network::<T>::new(&[784, 30, 10])?;
    net.set_kernel(kind);
    let mut best = f64::MAX;
    let mut best_eval = f64::MAX;
    for _ in 0..reps {
        let r = net.train(&part, &SgdConfig::new(1, 10, 3.0), Some(&data.test), |_| {})?;
        best = best.min(r.epochs[0].train_seconds);
        best_eval = best_eval.min(r.epochs[0].eval_seconds);
    }
    println!(
        "{} {}: epoch (50k) ~ {:.4} s, eval 10k {:.4} s",
        kind.name(),
        T::NAME,
        best * 10.0,
        best_eval
    );
    Ok(())
}

fn main() -> Result<(), kiln_nn::NnError> {
    let reps = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    bench::<f32>(KernelKind::detect(), reps)?;
    if std::env::args().any(|a| a == "all") {
        bench::<f32>(KernelKind::Portable, reps)?;
        bench::<f64>(KernelKind::detect(), reps)?;
        bench::<f64>(KernelKind::Portable, reps)?;
    }
    Ok(())
}
