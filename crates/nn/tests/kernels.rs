//! Every kernel family equals the plain scalar reference (f64 accumulation) within a stated
//! tolerance, for awkward shapes: widths that are not multiples of the vector length, single
//! rows, scattered input rows, and batches larger than one update call takes.
use kiln_nn::kernels::{avx2_available, reference};
use kiln_nn::{Float, KernelKind, Rng};

fn kinds() -> Vec<KernelKind> {
    let mut k = vec![KernelKind::Portable];
    if avx2_available() {
        k.push(KernelKind::Avx2);
    }
    k
}

fn rand<T: Float>(rng: &mut Rng, len: usize) -> Vec<T> {
    (0..len).map(|_| T::from_f64(rng.normal())).collect()
}

fn close<T: Float>(a: &[T], b: &[T], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (x.to_f64(), y.to_f64());
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

fn parity<T: Float>(tol: f64) {
    let mut rng = Rng::new(11);
    let shapes = [
        (1, 1, 1),
        (3, 8, 3),
        (7, 37, 5),
        (30, 784, 10),
        (10, 30, 10),
        (4, 300, 13),
        (5, 129, 2),
        (31, 100, 1),
        (6, 20, 70),
    ];
    for kind in kinds() {
        for &(n, k, m) in &shapes {
            let rows = m * 3 + 2;
            let x: Vec<T> = rand(&mut rng, rows * k + 5);
            // scattered, unordered, repeated rows, one at an offset not a multiple of k
            let offs: Vec<usize> = (0..m)
                .map(|i| ((i * 7 + 3) % rows) * k + if i == 1 { 5 } else { 0 })
                .collect();
            let w: Vec<T> = rand(&mut rng, n * k);
            let b: Vec<T> = rand(&mut rng, n);
            let mut got = vec![T::zero(); m * n];
            let mut want = vec![T::zero(); m * n];
            T::forward_product(kind, &w, n, k, &b, &x, &offs, &mut got);
            reference::forward_product(&w, n, k, &b, &x, &offs, &mut want);
            let scale = (k as f64).sqrt();
            close(
                &got,
                &want,
                tol * scale,
                &format!("forward {kind:?} {n}x{k}x{m}"),
            );

            let coef: Vec<T> = rand(&mut rng, n * m);
            for decay in [1.0, 0.999] {
                let decay = T::from_f64(decay);
                let mut w1 = w.clone();
                let mut w2 = w.clone();
                T::update_product(kind, &mut w1, n, k, decay, &coef, &x, &offs);
                reference::update_product(&mut w2, n, k, decay, &coef, &x, &offs);
                close(
                    &w1,
                    &w2,
                    tol * (m as f64).sqrt(),
                    &format!("update {kind:?} {n}x{k}x{m}"),
                );
            }
        }
    }
}

#[test]
fn f32_kernels_match_reference() {
    parity::<f32>(2e-6);
}

#[test]
fn f64_kernels_match_reference() {
    parity::<f64>(1e-14);
}
