//! `Dataset::with_bytes_if_exact`: float inputs that are exactly `byte / 256` (MNIST pixels
//! converted to floats, as the Python package receives them) are kept as bytes, others not,
//! and the trainer computes the same network from either.

use kiln_nn::{Dataset, Network};

#[test]
fn exact_byte_inputs_are_kept_as_bytes_and_train_the_same() {
    let bytes: Vec<u8> = (0..40u32).map(|i| (i * 37 % 256) as u8).collect();
    let labels = vec![0u8, 1, 2, 1, 0, 2, 1, 0, 2, 1];
    let floats: Vec<f32> = bytes.iter().map(|&b| b as f32 / 256.0).collect();
    let from_floats = Dataset::new(4, floats.clone(), labels.clone())
        .unwrap()
        .with_bytes_if_exact();
    assert_eq!(from_floats.bytes(), Some(&bytes[..]));
    let from_bytes = Dataset::<f32>::from_bytes(4, bytes, labels.clone()).unwrap();
    assert_eq!(from_floats, from_bytes);

    let mut a = Network::<f32>::new(&[4, 5, 3]).unwrap();
    let mut b = a.clone();
    a.sgd(&from_floats, 2, 3, 0.5, None).unwrap();
    b.sgd(&Dataset::new(4, floats, labels).unwrap(), 2, 3, 0.5, None)
        .unwrap();
    assert_eq!(a.weights(), b.weights());
    assert_eq!(a.biases(), b.biases());
}

#[test]
fn other_inputs_stay_floats() {
    for bad in [0.3f32, -1.0 / 256.0, 1.0, f32::NAN] {
        let d = Dataset::new(2, vec![0.5, bad], vec![0])
            .unwrap()
            .with_bytes_if_exact();
        assert!(d.bytes().is_none(), "{bad}");
    }
}
