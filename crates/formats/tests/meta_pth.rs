//! The PyTorch checkpoint reader and its restricted unpickler: values, dtypes, views, the
//! zip variants, and hostile or damaged files (each a clear error, no side effect, no panic).
//! Fixtures: tests/data/pth, written by tests/data/gen_pth_fixtures.py (Python's own pickle
//! and zipfile, emulating torch.save).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

use kiln_formats::pytorch::pickle::{unpickle, PickleError, Value};
use kiln_formats::pytorch::{load_pth, PthFile};
use kiln_kernels::DType;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pth")
        .join(name)
}

fn test_data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(rel)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

fn open_err(path: &Path) -> String {
    match PthFile::open(path).and_then(|f| f.load_all()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_dtypes_views_parameters_in_every_variant() {
    let exp = expected();
    for file in [
        "dtypes.pth",
        "dtypes_proto4.pth",
        "dtypes_deflated.pth",
        "dtypes_zip64.pth",
    ] {
        let f = PthFile::open(&data(file)).unwrap();
        assert_eq!(f.other_keys(), ["step"], "{file}");
        for (name, e) in exp["tensors"]["dtypes"].as_object().unwrap() {
            let t = f
                .tensor(name)
                .unwrap_or_else(|e| panic!("{file} {name}: {e}"));
            let dtype = match e["dtype"].as_str().unwrap() {
                "F32" => DType::F32,
                "F16" => DType::F16,
                "BF16" => DType::BF16,
                d => panic!("{d}"),
            };
            assert_eq!(t.dtype, dtype, "{file} {name}");
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape, shape, "{file} {name}");
            assert_eq!(
                hex(t.data.bytes()),
                e["hex"].as_str().unwrap(),
                "{file} {name}"
            );
            // Stored members are sliced from the mapping; deflated ones are owned.
            assert_eq!(
                f.is_mapped(&t),
                file != "dtypes_deflated.pth",
                "{file} {name}"
            );
        }
        // int64 tensors are described but cannot be used.
        let err = f.tensor("ints").unwrap_err().to_string();
        assert!(err.contains("torch.LongStorage"), "{err}");
        assert!(f.load_all().is_err());
    }
}

#[test]
fn real_torch_save_file_is_zero_copy() {
    let f = PthFile::open(&test_data("fixtures/llama-mha/meta/consolidated.00.pth")).unwrap();
    assert_eq!(f.tensors().len(), 21);
    for name in f.tensors().keys() {
        let t = f.tensor(name).unwrap();
        assert_eq!(t.dtype, DType::F32);
        assert!(f.is_mapped(&t), "{name} was copied");
    }
    assert_eq!(f.tensor("tok_embeddings.weight").unwrap().shape, [512, 64]);
    assert_eq!(
        f.tensor("layers.1.feed_forward.w2.weight").unwrap().shape,
        [64, 176]
    );
}

#[test]
fn layout_errors_are_clear() {
    let e = open_err(&data("noncontiguous.pth"));
    assert!(e.contains("not contiguous") && e.contains("`t`"), "{e}");
    let e = open_err(&data("bad_storage_size.pth"));
    assert!(
        e.contains("should hold 10 elements") && e.contains("36 bytes"),
        "{e}"
    );
    let e = open_err(&data("view_out_of_range.pth"));
    assert!(e.contains("does not fit in its storage"), "{e}");
    let e = open_err(&data("missing_member.pth"));
    assert!(e.contains("no archive member"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("legacy.pth");
    std::fs::write(&p, b"\x80\x02}q\x00.").unwrap();
    assert!(open_err(&p).contains("legacy"));
    std::fs::write(&p, b"hello").unwrap();
    assert!(open_err(&p).contains("not a PyTorch zip checkpoint"));
}

#[test]
fn hostile_checkpoints_are_refused_without_side_effects() {
    let exp = expected();
    let hostile = exp["hostile"].as_object().unwrap();
    assert_eq!(hostile.len(), 4);
    for (file, h) in hostile {
        let marker = Path::new(h["marker"].as_str().unwrap());
        let _ = std::fs::remove_file(marker);
        let e = open_err(&data(file));
        let global = h["global"].as_str().unwrap();
        assert!(
            e.contains(&format!(
                "refusing to load: pickle references forbidden global `{global}`"
            )),
            "{file}: {e}"
        );
        assert!(!marker.exists(), "{file}: marker file created");
    }
}

/// A protocol-2 pickle calling `module.name(arg)`, optionally inside a dict after a tensor.
fn evil_pickle(module: &str, name: &str, arg: &str, stack_global: bool) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    let s = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    s(&mut p, "payload");
    if stack_global {
        s(&mut p, module);
        s(&mut p, name);
        p.push(0x93);
    } else {
        p.push(b'c');
        p.extend(format!("{module}\n{name}\n").as_bytes());
    }
    s(&mut p, arg);
    p.extend([0x85, b'R', b'u', b'.']);
    p
}

#[test]
fn forbidden_globals_are_named_and_never_called() {
    let cases = [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("__builtin__", "eval"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
        ("subprocess", "check_output"),
        ("torch.storage", "_load_from_bytes"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_from_type_v2"),
        ("collections", "defaultdict"),
        ("numpy.core.multiarray", "_reconstruct"),
    ];
    for (module, name) in cases {
        for stack_global in [false, true] {
            let marker = format!("/tmp/kiln-pwned-{:016x}", random_u64());
            let arg = format!("touch {marker}");
            let err = unpickle(&evil_pickle(module, name, &arg, stack_global)).unwrap_err();
            assert_eq!(err, PickleError::Forbidden(format!("{module}.{name}")));
            assert_eq!(
                err.to_string(),
                format!("refusing to load: pickle references forbidden global `{module}.{name}`")
            );
            assert!(!Path::new(&marker).exists());
        }
    }
    // The allowed globals unpickle to plain values.
    let ok = unpickle(b"\x80\x02ccollections\nOrderedDict\n)R.").unwrap();
    assert_eq!(ok, Value::Dict(vec![]));
}

#[test]
fn object_building_opcodes_and_misuse_are_refused() {
    let cases: &[(&[u8], &str)] = &[
        (b"\x80\x02(ccollections\nOrderedDict\no.", "OBJ"),
        (b"\x80\x02(ios\nsystem\n.", "INST"),
        (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "NEWOBJ"),
        (b"\x80\x02\x82\x01.", "EXT"),
        (
            b"\x80\x02ccollections\nOrderedDict\n(K\x01t\x85R.",
            "called with arguments",
        ),
        (b"\x80\x02ctorch\nFloatStorage\n)R.", "may not be called"),
        (b"\x80\x02K\x01)R.", "not callable"),
        (b"\x80\x02]K\x01K\x02s.", "SETITEM"),
        (b"\x80\x02}K\x01a.", "APPEND"),
        (b"\x80\x02K\x01Q.", "persistent id"),
        (b"\x80\x02h\x05.", "memo index 5"),
        (b"\x80\x02X\xff\xff\xff\xff", "truncated"),
        (b"\x80\x02]", "without a STOP"),
        (b"\x80\x02.", "underflow"),
        (b"\x80\x02(.", "MARK"),
        (b"\x80\x02K\x01K\x02b.", "BUILD"),
        (b"\x80\x09.", "protocol 9"),
        (
            b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
            "too large",
        ),
    ];
    for (bytes, want) in cases {
        let err = unpickle(bytes).unwrap_err().to_string();
        assert!(err.contains(want), "{bytes:?}: {err}");
    }
    // Integers of every width, floats, strings.
    let v = unpickle(b"\x80\x02(K\x07M\x00\x01J\xff\xff\xff\xff\x8a\x02\x00\xffG?\xf8\x00\x00\x00\x00\x00\x00\x8c\x02hi\x88Nt.").unwrap();
    assert_eq!(
        v,
        Value::Tuple(vec![
            Value::Int(7),
            Value::Int(256),
            Value::Int(-1),
            Value::Int(-256),
            Value::Float(1.5),
            Value::Str("hi".into()),
            Value::Bool(true),
            Value::None,
        ])
    );
}

#[test]
fn resource_bombs_fail_cleanly() {
    // A million nested one-tuples.
    let mut p = vec![0x80, 2, b')'];
    p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    p.push(b'.');
    assert!(unpickle(&p)
        .unwrap_err()
        .to_string()
        .contains("nest deeper"));
    // Nested MARKs.
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b'(', 100_000));
    assert!(unpickle(&p).unwrap_err().to_string().contains("MARK"));
    // A list doubled through the memo: 2^60 elements if copies were free.
    let mut p = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..60 {
        p.extend([b'(', b'h', 0, b'h', 0, b'l', b'q', 0, b'0']);
    }
    p.extend([b'h', 0, b'.']);
    let err = unpickle(&p).unwrap_err().to_string();
    assert!(
        err.contains("nest deeper") || err.contains("more than"),
        "{err}"
    );
    // Wide instead of deep: a 4096-element list copied over and over.
    let mut p = vec![0x80, 2, b']', b'('];
    p.extend(std::iter::repeat_n([b'K', 1], 4096).flatten());
    p.extend([b'e', b'q', 0]);
    p.extend(std::iter::repeat_n([b'h', 0, b'0'], 100_000).flatten());
    p.push(b'.');
    assert!(unpickle(&p).unwrap_err().to_string().contains("more than"));
}

#[test]
fn truncated_checkpoints_fail_cleanly() {
    let bytes = std::fs::read(data("dtypes.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.pth");
    for cut in (0..bytes.len()).step_by(13) {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = open_err(&p);
        assert!(
            e.contains("truncated") || e.contains("not a PyTorch") || e.contains("too short"),
            "cut at {cut}: {e}"
        );
    }
    // The real fixture, cut inside its last storage and inside its central directory.
    let real = std::fs::read(test_data("fixtures/llama-mha/meta/consolidated.00.pth")).unwrap();
    for cut in [real.len() / 2, real.len() - 100, real.len() - 1] {
        std::fs::write(&p, &real[..cut]).unwrap();
        assert!(open_err(&p).contains("truncated"), "cut at {cut}");
    }
}

#[test]
fn corrupted_checkpoints_never_panic() {
    let bytes = std::fs::read(data("dtypes.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.pth");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut loaded = 0;
    for _ in 0..800 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 3 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        std::fs::write(&p, &b).unwrap();
        // Any result is fine as long as it is a result.
        if let Ok(f) = PthFile::open(&p) {
            loaded += 1;
            for n in f.tensors().keys() {
                let _ = f.tensor(n);
            }
        }
    }
    assert!(loaded > 0);
    // load_pth is the one-call form.
    assert_eq!(
        load_pth(&test_data("fixtures/llama-mha/meta/consolidated.00.pth"))
            .unwrap()
            .len(),
        21
    );
}

#[test]
fn parameters_with_state_and_complex_storages_are_plain_data() {
    // _rebuild_parameter_with_state(_rebuild_tensor_v2(pid, 0, (2,), (1,), False, OrderedDict()),
    //                               True, OrderedDict(), {}) with a ComplexFloatStorage pid.
    let mut p = b"\x80\x02ctorch._utils\n_rebuild_parameter_with_state\n(".to_vec();
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nComplexFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQ");
    p.extend(b"K\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR");
    p.extend(b"\x88ccollections\nOrderedDict\n)R}tR.");
    let Value::Tensor(t) = unpickle(&p).unwrap() else {
        panic!()
    };
    assert_eq!(t.storage.kind, kiln_formats::pytorch::StorageKind::C64);
    assert_eq!(t.storage.kind.element_size(), 8);
    assert_eq!(
        (t.shape.as_slice(), t.stride.as_slice(), t.storage.numel),
        (&[2u64][..], &[1u64][..], 2)
    );
}
