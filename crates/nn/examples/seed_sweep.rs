//! Accuracy spread over seeds for the small-data settings used by the MNIST test.
use kiln_nn::{mnist, Cost, Init, Network, SgdConfig};
fn main() -> Result<(), kiln_nn::NnError> {
    let d = mnist::load_nielsen::<f32>(&mnist::default_dir()?)?;
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let epochs: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let train = d.training.slice(0, n);
    for seed in 0..8 {
        let mut q =
            Network::<f32>::with_options(&[784, 30, 10], Init::Large, Cost::Quadratic, seed)?;
        let rq = q.sgd(&train, epochs, 10, 3.0, Some(&d.test))?;
        let mut c =
            Network::<f32>::with_options(&[784, 30, 10], Init::Scaled, Cost::CrossEntropy, seed)?;
        let mut cfg = SgdConfig::new(2, 10, 0.5);
        cfg.lambda = 0.5;
        let rc = c.train(&train, &cfg, Some(&d.validation), |_| {})?;
        println!(
            "seed {seed}: quadratic {:?}  xent {:?}",
            rq.epochs
                .iter()
                .map(|e| e.evaluation_accuracy.unwrap())
                .collect::<Vec<_>>(),
            rc.epochs
                .iter()
                .map(|e| e.evaluation_accuracy.unwrap())
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}
