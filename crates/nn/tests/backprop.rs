//! Backpropagation against finite differences, and the batched trainer against network.py's
//! one-example-at-a-time update.
#![allow(clippy::needless_range_loop)]
use kiln_nn::{Cost, Dataset, Init, Network, Rng};

/// Σ over the examples of the cost, straight from `feedforward` (no backprop involved).
fn batch_cost(net: &Network<f64>, xs: &[Vec<f64>], ys: &[Vec<f64>]) -> f64 {
    xs.iter()
        .zip(ys)
        .map(|(x, y)| net.cost().value(&net.feedforward(x).unwrap(), y))
        .sum()
}

fn gradient_check(cost: Cost, sizes: &[usize]) {
    let mut net = Network::<f64>::with_options(sizes, Init::Scaled, cost, 5).unwrap();
    let mut rng = Rng::new(9);
    let xs: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..sizes[0]).map(|_| rng.next_f64()).collect())
        .collect();
    let last = *sizes.last().unwrap();
    // soft targets in (0, 1): both terms of the cross-entropy matter
    let ys: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..last).map(|_| 0.05 + 0.9 * rng.next_f64()).collect())
        .collect();
    let layers = sizes.len() - 1;
    let mut gb: Vec<Vec<f64>> = sizes[1..].iter().map(|&n| vec![0.0; n]).collect();
    let mut gw: Vec<Vec<f64>> = sizes.windows(2).map(|p| vec![0.0; p[0] * p[1]]).collect();
    for (x, y) in xs.iter().zip(&ys) {
        let (nb, nw) = net.backprop(x, y).unwrap();
        for l in 0..layers {
            gb[l].iter_mut().zip(&nb[l]).for_each(|(a, b)| *a += b);
            gw[l].iter_mut().zip(&nw[l]).for_each(|(a, b)| *a += b);
        }
    }
    let eps = 1e-5;
    let mut checked = 0;
    for l in 0..layers {
        for idx in 0..net.weights()[l].len() {
            let orig = net.weights()[l][idx];
            net.weights_mut()[l][idx] = orig + eps;
            let plus = batch_cost(&net, &xs, &ys);
            net.weights_mut()[l][idx] = orig - eps;
            let minus = batch_cost(&net, &xs, &ys);
            net.weights_mut()[l][idx] = orig;
            let fd = (plus - minus) / (2.0 * eps);
            let an = gw[l][idx];
            assert!(
                (fd - an).abs() <= 1e-7 + 1e-5 * fd.abs(),
                "{cost:?} w[{l}][{idx}]: finite difference {fd} vs backprop {an}"
            );
            checked += 1;
        }
        for j in 0..net.biases()[l].len() {
            let orig = net.biases()[l][j];
            net.biases_mut()[l][j] = orig + eps;
            let plus = batch_cost(&net, &xs, &ys);
            net.biases_mut()[l][j] = orig - eps;
            let minus = batch_cost(&net, &xs, &ys);
            net.biases_mut()[l][j] = orig;
            let fd = (plus - minus) / (2.0 * eps);
            let an = gb[l][j];
            assert!(
                (fd - an).abs() <= 1e-7 + 1e-5 * fd.abs(),
                "{cost:?} b[{l}][{j}]: finite difference {fd} vs backprop {an}"
            );
            checked += 1;
        }
    }
    // the gradient is not trivially zero
    assert!(gw.iter().flatten().any(|g| g.abs() > 1e-3));
    assert!(checked > 20);
}

#[test]
fn backprop_matches_finite_differences_quadratic() {
    gradient_check(Cost::Quadratic, &[6, 5, 3]);
    gradient_check(Cost::Quadratic, &[7, 5, 4, 3]);
}

#[test]
fn backprop_matches_finite_differences_cross_entropy() {
    gradient_check(Cost::CrossEntropy, &[6, 5, 3]);
    gradient_check(Cost::CrossEntropy, &[7, 5, 4, 3]);
}

/// A small random labelled data set.
fn toy_data(n: usize, dim: usize, classes: usize, seed: u64) -> Dataset<f64> {
    let mut rng = Rng::new(seed);
    let x: Vec<f64> = (0..n * dim).map(|_| rng.next_f64()).collect();
    let y: Vec<u8> = (0..n).map(|_| rng.below(classes as u64) as u8).collect();
    Dataset::new(dim, x, y).unwrap()
}

/// network.py's update_mini_batch written out with per-example backprop:
/// `w ← (1 − ηλ/n) w − (η/m) Σ ∇w`, `b ← b − (η/m) Σ ∇b`.
fn reference_step(
    net: &mut Network<f64>,
    data: &Dataset<f64>,
    idx: &[usize],
    eta: f64,
    lambda: f64,
    n: usize,
) {
    let classes = *net.sizes().last().unwrap();
    let layers = net.sizes().len() - 1;
    let mut gb: Vec<Vec<f64>> = net.biases().iter().map(|b| vec![0.0; b.len()]).collect();
    let mut gw: Vec<Vec<f64>> = net.weights().iter().map(|w| vec![0.0; w.len()]).collect();
    for &i in idx {
        let mut y = vec![0.0; classes];
        y[data.labels()[i] as usize] = 1.0;
        let (nb, nw) = net.backprop(data.input(i), &y).unwrap();
        for l in 0..layers {
            gb[l].iter_mut().zip(&nb[l]).for_each(|(a, b)| *a += b);
            gw[l].iter_mut().zip(&nw[l]).for_each(|(a, b)| *a += b);
        }
    }
    let m = idx.len() as f64;
    let decay = 1.0 - eta * lambda / n as f64;
    for l in 0..layers {
        for (w, g) in net.weights_mut()[l].iter_mut().zip(&gw[l]) {
            *w = decay * *w - eta / m * g;
        }
        for (b, g) in net.biases_mut()[l].iter_mut().zip(&gb[l]) {
            *b -= eta / m * g;
        }
    }
}

#[test]
fn batched_update_equals_per_example_update() {
    for cost in [Cost::Quadratic, Cost::CrossEntropy] {
        for lambda in [0.0, 5.0] {
            let data = toy_data(40, 19, 4, 3);
            let sizes = [19, 9, 6, 4];
            let mut fast = Network::<f64>::with_options(&sizes, Init::Large, cost, 1).unwrap();
            let mut slow = fast.clone();
            let batches: [&[usize]; 3] = [&[3, 17, 5, 0, 39, 22, 8], &[1], &[9, 9, 12]];
            for idx in batches {
                fast.update_mini_batch(&data, idx, 0.7, lambda, 40).unwrap();
                reference_step(&mut slow, &data, idx, 0.7, lambda, 40);
            }
            for l in 0..3 {
                for (a, b) in fast.weights()[l].iter().zip(&slow.weights()[l]) {
                    assert!((a - b).abs() < 1e-12, "{cost:?} λ={lambda}: w {a} vs {b}");
                }
                for (a, b) in fast.biases()[l].iter().zip(&slow.biases()[l]) {
                    assert!((a - b).abs() < 1e-12, "{cost:?} λ={lambda}: b {a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn l2_decays_weights_not_biases() {
    // with eta*lambda/n = 0.5 and a zero gradient... use a zero learning signal instead:
    // compare two runs differing only in lambda; biases move identically on the first step.
    let data = toy_data(10, 5, 3, 4);
    let a0 = Network::<f64>::with_options(&[5, 4, 3], Init::Large, Cost::CrossEntropy, 2).unwrap();
    let (mut a, mut b) = (a0.clone(), a0.clone());
    a.update_mini_batch(&data, &[0, 1, 2], 0.5, 0.0, 10)
        .unwrap();
    b.update_mini_batch(&data, &[0, 1, 2], 0.5, 4.0, 10)
        .unwrap();
    assert_eq!(a.biases(), b.biases());
    // w_b = w_a - (eta*lambda/n) * w0
    for l in 0..2 {
        for ((wa, wb), w0) in a.weights()[l]
            .iter()
            .zip(&b.weights()[l])
            .zip(&a0.weights()[l])
        {
            assert!((wb - (wa - 0.2 * w0)).abs() < 1e-12);
        }
    }
}

#[test]
fn same_seed_same_network_and_training() {
    let data = toy_data(57, 12, 3, 8);
    let run = |seed| {
        let mut net =
            Network::<f32>::with_options(&[12, 8, 3], Init::Scaled, Cost::Quadratic, seed).unwrap();
        let d32 = Dataset::new(
            12,
            data.inputs().iter().map(|&v| v as f32).collect(),
            data.labels().to_vec(),
        )
        .unwrap();
        let r = net.sgd(&d32, 3, 10, 1.0, Some(&d32)).unwrap();
        (net.weights().to_vec(), r.epochs.len())
    };
    let (w1, e1) = run(42);
    let (w2, _) = run(42);
    let (w3, _) = run(43);
    assert_eq!(e1, 3);
    assert_eq!(w1, w2);
    assert_ne!(w1, w3);
}

#[test]
fn init_distributions() {
    let big =
        Network::<f64>::with_options(&[400, 300, 2], Init::Large, Cost::Quadratic, 1).unwrap();
    let small =
        Network::<f64>::with_options(&[400, 300, 2], Init::Scaled, Cost::Quadratic, 1).unwrap();
    let var = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
    assert!((var(&big.weights()[0]) - 1.0).abs() < 0.02);
    assert!((var(&small.weights()[0]) * 400.0 - 1.0).abs() < 0.02);
    assert!((var(&small.biases()[0]) - 1.0).abs() < 0.25);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert!(Network::<f32>::new(&[784]).is_err());
    assert!(Network::<f32>::new(&[784, 0, 10]).is_err());
    assert!(Network::<f32>::new(&[1 << 30, 1 << 30]).is_err());
    let mut net = Network::<f64>::new(&[5, 3, 2]).unwrap();
    let data = toy_data(10, 5, 3, 1); // label 2 is out of range for 2 outputs
    assert!(net.sgd(&data, 1, 10, 3.0, None).is_err());
    let wrong_dim = toy_data(10, 4, 2, 1);
    assert!(net.sgd(&wrong_dim, 1, 10, 3.0, None).is_err());
    let ok = toy_data(10, 5, 2, 1);
    assert!(net.sgd(&ok, 1, 0, 3.0, None).is_err());
    assert!(net.sgd(&ok, 1, 3, f64::NAN, None).is_err());
    assert!(net.feedforward(&[0.0; 4]).is_err());
    assert!(net.update_mini_batch(&ok, &[10], 1.0, 0.0, 10).is_err());
    assert!(Dataset::new(5, vec![0.0f32; 9], vec![0, 1]).is_err());
}

#[test]
fn early_stopping_stops_when_accuracy_stalls() {
    // eta = 0: nothing is learned, the accuracy never improves after the first epoch.
    let data = toy_data(30, 5, 3, 2);
    let mut net =
        Network::<f64>::with_options(&[5, 4, 3], Init::Large, Cost::CrossEntropy, 3).unwrap();
    let mut cfg = kiln_nn::SgdConfig::new(50, 10, 0.0);
    cfg.early_stopping_n = 3;
    let r = net.train(&data, &cfg, Some(&data), |_| {}).unwrap();
    assert_eq!(r.epochs.len(), 4);
    assert!(r.stopped_early);
}

#[test]
fn train_until_stops_when_the_observer_breaks() {
    use std::ops::ControlFlow;
    // 300 mini-batches an epoch: progress is reported every batch here (fewer than 200 a tick).
    let data = toy_data(300, 5, 3, 4);
    let mut net =
        Network::<f64>::with_options(&[5, 4, 3], Init::Large, Cost::CrossEntropy, 5).unwrap();
    let cfg = kiln_nn::SgdConfig::new(1000, 1, 0.5);
    let mut progress = 0;
    let r = net.train_until(&data, &cfg, Some(&data), |e| {
        if let kiln_nn::Event::Progress { .. } = e {
            progress += 1;
        }
        if progress == 7 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(r, Err(kiln_nn::NnError::Cancelled)), "{r:?}");
    assert_eq!(progress, 7, "no event after the break");
    // Breaking at an epoch's report stops before the next epoch.
    let mut epochs = 0;
    let r = net.train_until(&data, &cfg, None, |e| match e {
        kiln_nn::Event::Epoch(_) => {
            epochs += 1;
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    assert!(matches!(r, Err(kiln_nn::NnError::Cancelled)));
    assert_eq!(epochs, 1);
}

#[test]
fn byte_inputs_train_exactly_like_float_inputs() {
    let mut rng = Rng::new(12);
    let (n, dim) = (95, 33);
    let bytes: Vec<u8> = (0..n * dim).map(|_| rng.below(256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|_| rng.below(4) as u8).collect();
    let with_bytes = Dataset::<f32>::from_bytes(dim, bytes.clone(), labels.clone()).unwrap();
    let floats: Vec<f32> = bytes.iter().map(|&b| b as f32 / 256.0).collect();
    assert_eq!(with_bytes.inputs(), &floats[..]);
    let plain = Dataset::new(dim, floats, labels).unwrap();
    assert!(plain.bytes().is_none() && with_bytes.bytes().is_some());
    let mut a =
        Network::<f32>::with_options(&[dim, 7, 4], Init::Scaled, Cost::CrossEntropy, 6).unwrap();
    let mut b = a.clone();
    a.sgd(&with_bytes, 2, 10, 0.5, None).unwrap();
    b.sgd(&plain, 2, 10, 0.5, None).unwrap();
    assert_eq!(a.weights(), b.weights());
    assert_eq!(a.biases(), b.biases());
    assert_eq!(
        with_bytes.slice(10, 20).bytes().unwrap(),
        &bytes[10 * dim..20 * dim]
    );
}

#[test]
fn sgd_epoch_equals_its_mini_batch_updates() {
    // sgd (fused update + next forward, double buffers, prefetch) against update_mini_batch
    // called on the same shuffled order: the generator is reproduced from the seed.
    let data = toy_data(53, 21, 5, 7);
    let sizes = [21, 8, 6, 5];
    for cost in [Cost::Quadratic, Cost::CrossEntropy] {
        let seed = 77;
        let mut fast = Network::<f64>::with_options(&sizes, Init::Scaled, cost, seed).unwrap();
        let mut slow = fast.clone();
        let mut cfg = kiln_nn::SgdConfig::new(2, 10, 0.9);
        cfg.lambda = 2.0;
        fast.train(&data, &cfg, None, |_| {}).unwrap();
        let mut rng = Rng::new(seed);
        let draws: usize = sizes.windows(2).map(|p| p[0] * p[1] + p[1]).sum();
        (0..draws).for_each(|_| {
            rng.normal();
        });
        let mut order: Vec<usize> = (0..53).collect();
        for _ in 0..2 {
            rng.shuffle(&mut order);
            for batch in order.chunks(10) {
                slow.update_mini_batch(&data, batch, 0.9, 2.0, 53).unwrap();
            }
        }
        for l in 0..3 {
            for (a, b) in fast.weights()[l].iter().zip(&slow.weights()[l]) {
                assert!((a - b).abs() < 1e-12, "{cost:?}: w {a} vs {b}");
            }
            for (a, b) in fast.biases()[l].iter().zip(&slow.biases()[l]) {
                assert!((a - b).abs() < 1e-12, "{cost:?}: b {a} vs {b}");
            }
        }
    }
}
