//! `kiln nn`: train Nielsen's network on MNIST, evaluate a saved model, classify a PNG digit.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use kiln_nn::{mnist, Cost, Event, Float, Init, Monitor, Network, SgdConfig, TrainReport};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct NnArgs {
    #[command(subcommand)]
    command: NnCommand,
}

#[derive(Subcommand, Debug)]
enum NnCommand {
    /// Train a network on MNIST (fetched into $KILN_HOME/mnist, default ~/.cache/kiln/mnist, on
    /// first use)
    Train(TrainArgs),
    /// Accuracy and cost of a saved model on MNIST
    Eval(EvalArgs),
    /// Classify a 28x28 PNG digit with a saved model
    Predict(PredictArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CostArg {
    Quadratic,
    CrossEntropy,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InitArg {
    /// N(0,1) weights (network.py)
    Large,
    /// N(0,1)/sqrt(n_in) weights (network2.py's default)
    Scaled,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Precision {
    F32,
    F64,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum SetArg {
    Training,
    Validation,
    Test,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Layer sizes, input first
    #[arg(long, default_value = "784,30,10", value_delimiter = ',')]
    layers: Vec<usize>,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// Learning rate
    #[arg(long, default_value_t = 3.0)]
    eta: f64,
    #[arg(long, value_enum, default_value_t = CostArg::Quadratic)]
    cost: CostArg,
    /// L2 regularisation parameter
    #[arg(long = "lambda", default_value_t = 0.0)]
    lambda: f64,
    #[arg(long, value_enum, default_value_t = InitArg::Large)]
    init: InitArg,
    /// Seed of the initial weights and the shuffles
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the validation accuracy has not improved for N epochs (evaluates on the
    /// validation set instead of the test set)
    #[arg(long, value_name = "N")]
    early_stop: Option<usize>,
    /// Data set measured after each epoch (default: test, as network.py; validation with --early-stop)
    #[arg(long, value_enum)]
    eval_on: Option<SetArg>,
    /// Also print the training cost and accuracy and the evaluation cost per epoch
    #[arg(long)]
    monitor: bool,
    /// Write the network as network2.py JSON
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Draw accuracy and cost per epoch into an SVG file
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// MNIST directory (default $KILN_HOME/mnist, else ~/.cache/kiln/mnist; fetched there if
    /// absent)
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Threads for evaluation (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Use the portable kernels even where AVX2 is available (for comparisons)
    #[arg(long, env = "KILN_NN_PORTABLE", value_parser = clap::builder::FalseyValueParser::new())]
    portable: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    #[arg(long, value_enum, default_value_t = SetArg::Test)]
    set: SetArg,
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum InvertArg {
    /// Invert when the background is light (MNIST digits are light on dark)
    Auto,
    Yes,
    No,
}

#[derive(Args, Debug)]
struct PredictArgs {
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// A 28x28 PNG image of one digit
    image: PathBuf,
    #[arg(long, value_enum, default_value_t = InvertArg::Auto)]
    invert: InvertArg,
}

pub fn run(args: NnArgs) -> Result<()> {
    match args.command {
        NnCommand::Train(a) => match a.precision {
            Precision::F32 => train::<f32>(&a),
            Precision::F64 => train::<f64>(&a),
        },
        NnCommand::Eval(a) => eval(&a),
        NnCommand::Predict(a) => predict(&a),
    }
}

fn data_dir(arg: &Option<PathBuf>) -> Result<PathBuf> {
    let dir = match arg {
        Some(d) => d.clone(),
        None => mnist::default_dir()?,
    };
    if !mnist::is_present(&dir) {
        eprintln!("MNIST not found in {}; fetching it once", dir.display());
        mnist::ensure(&dir)?;
    }
    Ok(dir)
}

fn pick<T>(d: &mnist::Mnist<T>, set: SetArg) -> &kiln_nn::Dataset<T> {
    match set {
        SetArg::Training => &d.training,
        SetArg::Validation => &d.validation,
        SetArg::Test => &d.test,
    }
}

fn train<T: Float>(a: &TrainArgs) -> Result<()> {
    let cost = match a.cost {
        CostArg::Quadratic => Cost::Quadratic,
        CostArg::CrossEntropy => Cost::CrossEntropy,
    };
    let init = match a.init {
        InitArg::Large => Init::Large,
        InitArg::Scaled => Init::Scaled,
    };
    if a.layers.first() != Some(&784) || a.layers.last() != Some(&10) {
        bail!(
            "--layers must start with 784 (pixels) and end with 10 (digits), got {:?}",
            a.layers
        );
    }
    let dir = data_dir(&a.data)?;
    let data = mnist::load_nielsen::<T>(&dir)?;
    let mut net = Network::<T>::with_options(&a.layers, init, cost, a.seed)?;
    if let Some(t) = a.threads {
        net.set_threads(t);
    }
    if a.portable {
        net.set_kernel(kiln_nn::KernelKind::Portable);
    }
    let eval_set = a.eval_on.unwrap_or(if a.early_stop.is_some() {
        SetArg::Validation
    } else {
        SetArg::Test
    });
    let eval_data = pick(&data, eval_set);
    let mut cfg = SgdConfig::new(a.epochs, a.batch_size, a.eta);
    cfg.lambda = a.lambda;
    cfg.early_stopping_n = a.early_stop.unwrap_or(0);
    let full = a.monitor || a.plot.is_some();
    cfg.monitor = Monitor {
        evaluation_cost: full,
        training_cost: full,
        training_accuracy: full,
    };
    eprintln!(
        "kiln nn: {:?} {} {:?} cost, {:?} init, eta {}, lambda {}, batch {}, seed {}, kernels {}; evaluating on {:?}",
        a.layers,
        T::NAME,
        cost,
        init,
        a.eta,
        a.lambda,
        a.batch_size,
        a.seed,
        net.kernel().name(),
        eval_set
    );
    let bar = indicatif::ProgressBar::new(data.training.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {prefix} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let report = net.train(&data.training, &cfg, Some(eval_data), |e| match e {
        Event::Progress { epoch, done, .. } => {
            bar.set_prefix(epoch.to_string());
            bar.set_position(done as u64);
        }
        Event::Epoch(r) => {
            bar.suspend(|| {
                let cpu = r
                    .train_cpu_seconds
                    .map(|c| format!(", cpu {c:.3} s"))
                    .unwrap_or_default();
                println!(
                    "Epoch {}: {} / {}  ({:.3} s{cpu})",
                    r.epoch,
                    r.evaluation_accuracy.unwrap_or(0),
                    r.n_evaluation,
                    r.train_seconds
                );
                if a.monitor {
                    println!(
                        "  training cost {:.5}, training accuracy {} / {}, evaluation cost {:.5}",
                        r.training_cost.unwrap_or(f64::NAN),
                        r.training_accuracy.unwrap_or(0),
                        r.n_training,
                        r.evaluation_cost.unwrap_or(f64::NAN)
                    );
                }
            });
            bar.reset();
        }
    })?;
    bar.finish_and_clear();
    summarize(&report, eval_data.len());
    if report.stopped_early {
        println!(
            "Stopped early after {} epochs; test accuracy {} / {}",
            report.epochs.len(),
            net.evaluate(&data.test)?,
            data.test.len()
        );
    }
    if let Some(p) = &a.save {
        kiln_nn::save_model(&net, p)?;
        println!("saved {}", p.display());
    }
    if let Some(p) = &a.plot {
        plot(&report, p)?;
        println!("plotted {}", p.display());
    }
    Ok(())
}

fn summarize(r: &TrainReport, n_eval: usize) {
    if r.epochs.is_empty() {
        return;
    }
    let secs: Vec<f64> = r.epochs.iter().map(|e| e.train_seconds).collect();
    let mean = secs.iter().sum::<f64>() / secs.len() as f64;
    let min = secs.iter().cloned().fold(f64::MAX, f64::min);
    let cpu: Vec<f64> = r
        .epochs
        .iter()
        .filter_map(|e| e.train_cpu_seconds)
        .collect();
    let cpu = if cpu.is_empty() {
        String::new()
    } else {
        format!(
            ", cpu {:.3} s/epoch",
            cpu.iter().sum::<f64>() / cpu.len() as f64
        )
    };
    let best = r.best_accuracy().unwrap_or(0);
    println!(
        "best {} / {} ({:.2}%), {:.3} s/epoch (fastest {:.3} s){cpu}",
        best,
        n_eval,
        100.0 * best as f64 / n_eval.max(1) as f64,
        mean,
        min
    );
}

fn eval(a: &EvalArgs) -> Result<()> {
    let net: Network<f32> = kiln_nn::load_model(&a.model)?;
    let dir = data_dir(&a.data)?;
    let data = mnist::load_nielsen::<f32>(&dir)?;
    let set = pick(&data, a.set);
    let correct = net.evaluate(set)?;
    let cost = net.total_cost(set, 0.0)?;
    println!(
        "{:?}: {} / {} ({:.2}%), mean {} {:.5}",
        a.set,
        correct,
        set.len(),
        100.0 * correct as f64 / set.len() as f64,
        net.cost().network2_name(),
        cost
    );
    Ok(())
}

/// A 28×28 PNG as network input: grey levels byte/256 like MNIST, light digit on dark;
/// returns the input and whether it was inverted.
fn png_input(path: &Path, invert: InvertArg) -> Result<(Vec<f32>, bool)> {
    let img = image::open(path)
        .with_context(|| format!("reading {}", path.display()))?
        .to_luma8();
    if img.width() != 28 || img.height() != 28 {
        bail!(
            "{} is {}x{}; kiln nn predict takes a 28x28 digit, like MNIST",
            path.display(),
            img.width(),
            img.height()
        );
    }
    let raw = img.into_raw();
    let mean = raw.iter().map(|&v| v as f64).sum::<f64>() / raw.len() as f64;
    let inv = match invert {
        InvertArg::Yes => true,
        InvertArg::No => false,
        InvertArg::Auto => mean > 127.5,
    };
    let px = raw
        .iter()
        .map(|&v| (if inv { 255 - v } else { v }) as f32 / 256.0)
        .collect();
    Ok((px, inv))
}

fn predict(a: &PredictArgs) -> Result<()> {
    let net: Network<f32> = kiln_nn::load_model(&a.model)?;
    if net.sizes()[0] != 784 {
        bail!("the model takes {} inputs, not 28x28 = 784", net.sizes()[0]);
    }
    let (x, inverted) = png_input(&a.image, a.invert)?;
    let out = net.feedforward(&x)?;
    let digit = kiln_nn::argmax(&out);
    println!("{digit}");
    let acts: Vec<String> = out.iter().map(|v| format!("{v:.3}")).collect();
    eprintln!(
        "outputs [{}]{}",
        acts.join(", "),
        if inverted {
            " (image inverted: light background)"
        } else {
            ""
        }
    );
    Ok(())
}

fn plot(r: &TrainReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let epochs = r.epochs.len().max(1) as f64;
    let pct = |c: Option<usize>, n: usize| c.map(|c| 100.0 * c as f64 / n.max(1) as f64);
    let series = |f: &dyn Fn(&kiln_nn::EpochReport) -> Option<f64>| -> Vec<(f64, f64)> {
        r.epochs
            .iter()
            .filter_map(|e| f(e).map(|v| (e.epoch as f64, v)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let eval_acc = series(&|e| pct(e.evaluation_accuracy, e.n_evaluation));
    let train_acc = series(&|e| pct(e.training_accuracy, e.n_training));
    let eval_cost = series(&|e| e.evaluation_cost);
    let train_cost = series(&|e| e.training_cost);
    let range = |v: &[&[(f64, f64)]]| {
        let vals: Vec<f64> = v.iter().flat_map(|s| s.iter().map(|p| p.1)).collect();
        let lo = vals.iter().cloned().fold(f64::MAX, f64::min);
        let hi = vals.iter().cloned().fold(f64::MIN, f64::max);
        if vals.is_empty() {
            (0.0, 1.0)
        } else {
            let pad = ((hi - lo) * 0.05).max(1e-6);
            (lo - pad, hi + pad)
        }
    };
    for (area, title, ylabel, sets) in [
        (
            &left,
            "Accuracy per epoch",
            "accuracy (%)",
            [("evaluation", &eval_acc), ("training", &train_acc)],
        ),
        (
            &right,
            "Cost per epoch",
            "cost",
            [("evaluation", &eval_cost), ("training", &train_cost)],
        ),
    ] {
        let (lo, hi) = range(&[sets[0].1, sets[1].1]);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..(epochs - 1.0).max(1.0), lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(ylabel)
            .draw()?;
        for ((name, s), color) in sets.iter().zip([BLUE, RED]) {
            if s.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(s.iter().cloned(), color))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-nn-cli-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn png_digits_read_like_mnist() {
        // a digit drawn as PNG: light on dark, and the same inverted (dark on light paper)
        let mut px = vec![0u8; 784];
        for (i, p) in px.iter_mut().enumerate() {
            *p = if (i / 28) % 7 == 3 {
                200
            } else {
                (i % 5) as u8
            };
        }
        let img = image::GrayImage::from_raw(28, 28, px.clone()).unwrap();
        let p = tmp("digit.png");
        img.save(&p).unwrap();
        let (x, inv) = png_input(&p, InvertArg::Auto).unwrap();
        assert!(!inv);
        for (a, &b) in x.iter().zip(&px) {
            assert_eq!(*a, b as f32 / 256.0);
        }
        let dark_on_light: Vec<u8> = px.iter().map(|&v| 255 - v).collect();
        let p2 = tmp("paper.png");
        image::GrayImage::from_raw(28, 28, dark_on_light)
            .unwrap()
            .save(&p2)
            .unwrap();
        let (x2, inv2) = png_input(&p2, InvertArg::Auto).unwrap();
        assert!(inv2);
        assert_eq!(x, x2);
        // wrong size is an error, not a panic
        let p3 = tmp("big.png");
        image::GrayImage::new(30, 28).save(&p3).unwrap();
        assert!(png_input(&p3, InvertArg::Auto).is_err());
        assert!(png_input(&tmp("missing.png"), InvertArg::Auto).is_err());
    }

    #[test]
    fn plot_writes_svg() {
        let mut r = TrainReport::default();
        for e in 0..4 {
            r.epochs.push(kiln_nn::EpochReport {
                epoch: e,
                n_evaluation: 100,
                n_training: 200,
                evaluation_accuracy: Some(80 + e),
                training_accuracy: Some(170 + e),
                evaluation_cost: Some(0.5 / (e + 1) as f64),
                training_cost: Some(0.4 / (e + 1) as f64),
                ..Default::default()
            });
        }
        let p = tmp("plot.svg");
        plot(&r, &p).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.starts_with("<svg"));
        assert!(s.contains("Accuracy per epoch") && s.contains("Cost per epoch"));
        assert!(s.contains("<polyline"));
    }
}
