//! `cargo run -p kiln-formats --example inspect -- PATH`: prints the summary of a model.
fn main() {
    for a in std::env::args().skip(1) {
        match kiln_formats::load(std::path::Path::new(&a)) {
            Ok(m) => print!("{}", kiln_formats::summary(&m)),
            Err(e) => eprintln!("error: {e}"),
        }
    }
}
