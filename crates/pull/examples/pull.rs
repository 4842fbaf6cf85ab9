//! `cargo run --release -p kiln-pull --example pull -- [NAME]`: pull a known model (default
//! gemma3-270m) into the models folder (`$KILN_MODELS`, else `$KILN_HOME/models`, default
//! `~/.cache/kiln/models`) and print its path.

fn main() {
    let name = std::env::args().nth(1);
    let name = name.as_deref().unwrap_or(kiln_pull::DEFAULT_MODEL);
    let Some(spec) = kiln_pull::find(name) else {
        let known: Vec<&str> = kiln_pull::known_models().iter().map(|m| m.name).collect();
        eprintln!("unknown model '{name}' (known: {})", known.join(", "));
        std::process::exit(2);
    };
    match kiln_pull::pull(spec, &mut |p| eprintln!("pull: {p}")) {
        Ok(path) => println!("{}", path.display()),
        Err(e) => {
            eprintln!("pull: error: {e}");
            std::process::exit(1);
        }
    }
}
