//! A model assembled by hand (not through `kiln_formats::load`) with a zero-size feed-forward
//! is refused by `build` with an error; it used to panic (`chunk size must be non-zero`).

use std::path::Path;

use kiln_formats::Tensor;

#[test]
fn zero_ffn_is_an_error_not_a_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/llama-mha");
    let mut model = kiln_formats::load(&dir).unwrap();
    let d = model.config.hidden_size;
    model.config.intermediate_size = 0;
    for (name, t) in model.tensors.iter_mut() {
        if name.contains("ffn_gate") || name.contains("ffn_up") {
            *t = Tensor::from_f32(vec![0, d], &[]).unwrap();
        } else if name.contains("ffn_down") {
            *t = Tensor::from_f32(vec![d, 0], &[]).unwrap();
        }
    }
    let e = match kiln_models::build(model, 1) {
        Ok(_) => panic!("a zero-ffn model was built"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("intermediate_size (feed_forward_length) is 0"),
        "{e}"
    );
}
