use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The Rust table must agree with the reference shell script the project's CI uses
/// (`shared/scripts/fetch-models.sh`): its `spec` and `part` functions are evaluated by bash.
#[test]
fn spec_table_matches_fetch_models_script() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/scripts/fetch-models.sh");
    let text = fs::read_to_string(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let funcs = |name: &str| -> String {
        let start = text
            .find(&format!("\n{name}() {{"))
            .expect("function in script");
        let end = start + text[start..].find("\n}").unwrap() + 2;
        text[start..end].to_string()
    };
    let mut prog = funcs("spec") + &funcs("part");
    for m in known_models() {
        prog += &format!(
            "\nspec {n}; echo \"S {n} $file $sha $parts\"\nfor ((i = 1; i <= parts; i++)); do part {n} $i; echo \"P {n} $i $pkg $ver $member\"; done",
            n = m.name
        );
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&prog)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = String::new();
    for m in known_models() {
        want += &format!("S {} {} {} {}\n", m.name, m.file, m.sha256, m.parts.len());
        for (i, p) in m.parts.iter().enumerate() {
            want += &format!(
                "P {} {} {} {} {}\n",
                m.name,
                i + 1,
                p.package,
                p.version,
                p.member
            );
        }
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
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

/// CI fetches the default model before running tests (and this machine has it): the
/// library must find it where `fetch-models.sh` puts it, and it must verify.
#[test]
fn finds_and_verifies_the_fetched_default_model() {
    let spec = find("gemma3-270m").unwrap();
    let path = cached_path(spec).unwrap_or_else(|| {
        panic!(
            "{} missing; run shared/scripts/fetch-models.sh",
            models_dir().join(spec.file).display()
        )
    });
    assert_eq!(path.file_name().unwrap(), "gemma-3-270m-q4_k_m.gguf");
    assert_eq!(resolve_model(None, false, &mut |_| {}).unwrap(), path);
    assert_eq!(
        resolve_model(Some("gemma3-270m"), false, &mut |_| {}).unwrap(),
        path
    );
    verify(spec, &path).unwrap();
}
