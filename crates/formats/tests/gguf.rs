//! GGUF reader and writer against a file written by gguf-py (tests/data/gen_gguf_refs.py), and
//! hostile inputs: every one must give an error, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_formats::gguf::{self, GgufFile};
use kiln_formats::{Arch, FormatError, MetaValue};
use kiln_kernels::ops::RopeStyle;
use kiln_kernels::{DType, Storage, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn small_bytes() -> Vec<u8> {
    std::fs::read(data_dir().join("small.gguf")).unwrap()
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data_dir().join("small.expected.json")).unwrap())
        .unwrap()
}

fn parse(bytes: &[u8]) -> kiln_formats::Result<GgufFile> {
    GgufFile::parse(Storage::from_vec(bytes.to_vec()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// gguf-py writes Python ints in arrays as INT32, strings as STRING, lists as nested arrays.
fn json_array_to_meta(v: &Value) -> MetaValue {
    match v {
        Value::Array(a) => MetaValue::Array(a.iter().map(json_array_to_meta).collect()),
        Value::String(s) => MetaValue::String(s.clone()),
        Value::Number(n) => MetaValue::I32(n.as_i64().unwrap() as i32),
        other => panic!("unexpected {other}"),
    }
}

fn json_to_meta(ty: &str, v: &Value) -> MetaValue {
    match ty {
        "u8" => MetaValue::U8(v.as_u64().unwrap() as u8),
        "i8" => MetaValue::I8(v.as_i64().unwrap() as i8),
        "u16" => MetaValue::U16(v.as_u64().unwrap() as u16),
        "i16" => MetaValue::I16(v.as_i64().unwrap() as i16),
        "u32" => MetaValue::U32(v.as_u64().unwrap() as u32),
        "i32" => MetaValue::I32(v.as_i64().unwrap() as i32),
        "u64" => MetaValue::U64(v.as_u64().unwrap()),
        "i64" => MetaValue::I64(v.as_i64().unwrap()),
        "f32" => MetaValue::F32(v.as_f64().unwrap() as f32),
        "f64" => MetaValue::F64(v.as_f64().unwrap()),
        "bool" => MetaValue::Bool(v.as_bool().unwrap()),
        "string" => MetaValue::String(v.as_str().unwrap().to_string()),
        "array" => json_array_to_meta(v),
        other => panic!("type {other}"),
    }
}

#[test]
fn reads_every_metadata_type_as_gguf_py_wrote_it() {
    let f = parse(&small_bytes()).unwrap();
    let exp = expected();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    let meta = exp["metadata"].as_array().unwrap();
    assert_eq!(f.metadata.len(), meta.len());
    for ((k, v), e) in f.metadata.iter().zip(meta) {
        assert_eq!(k, e[0].as_str().unwrap());
        assert_eq!(v, &json_to_meta(e[1].as_str().unwrap(), &e[2]), "key {k}");
    }
    // Spot checks of the nested array and of the extremes.
    assert_eq!(
        f.get("test.nested"),
        Some(&MetaValue::Array(vec![
            MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]),
            MetaValue::Array(vec![MetaValue::I32(3)]),
            MetaValue::Array(vec![
                MetaValue::I32(4),
                MetaValue::I32(5),
                MetaValue::I32(6)
            ]),
        ]))
    );
    assert_eq!(f.get("test.u64"), Some(&MetaValue::U64((1 << 63) + 5)));
    assert_eq!(
        f.get("general.name").and_then(MetaValue::as_str),
        Some("kiln small test ✓")
    );
}

#[test]
fn tensor_infos_and_data_match_gguf_py() {
    let bytes = small_bytes();
    let f = parse(&bytes).unwrap();
    let exp = expected();
    let tens = exp["tensors"].as_array().unwrap();
    assert_eq!(f.tensors.len(), tens.len());
    assert_eq!(bytes.len() as u64, exp["file_size"].as_u64().unwrap());
    for (t, e) in f.tensors.iter().zip(tens) {
        assert_eq!(t.name, e["name"].as_str().unwrap());
        assert_eq!(t.dtype.name(), e["type"].as_str().unwrap());
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{}", t.name);
        assert_eq!(t.n_bytes as u64, e["nbytes"].as_u64().unwrap());
        assert_eq!(
            f.data_offset as u64 + t.offset,
            e["data_offset"].as_u64().unwrap(),
            "{}",
            t.name
        );
        let tensor = f.tensor(t).unwrap();
        assert_eq!(
            hex(&Sha256::digest(tensor.data.bytes())),
            e["sha256"].as_str().unwrap(),
            "{}",
            t.name
        );
    }
    // Values read back through the kernels' F32 path.
    let map = f.tensor_map().unwrap();
    let norm = map["blk.0.attn_norm.weight"].to_f32_vec();
    assert_eq!(norm, (0..64).map(|i| i as f32).collect::<Vec<_>>());
}

#[test]
fn writer_reproduces_gguf_py_byte_for_byte() {
    let bytes = small_bytes();
    let f = parse(&bytes).unwrap();
    let tensors = f.tensor_map().unwrap();
    let out = gguf::to_bytes(
        f.metadata.iter().map(|(k, v)| (k.as_str(), v)),
        f.tensors
            .iter()
            .map(|t| (t.name.as_str(), &tensors[&t.name])),
    )
    .unwrap();
    assert_eq!(out.len(), bytes.len());
    assert!(out == bytes, "writer output differs from gguf-py's file");

    // And through a real file (temp file + rename).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.gguf");
    gguf::write(
        &p,
        f.metadata.iter().map(|(k, v)| (k.as_str(), v)),
        f.tensors
            .iter()
            .map(|t| (t.name.as_str(), &tensors[&t.name])),
    )
    .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temporary file left behind"
    );
}

#[test]
fn writer_honours_custom_alignment_and_rejects_bad_input() {
    let meta = [
        ("general.alignment", MetaValue::U32(64)),
        ("x", MetaValue::Array(vec![])),
    ];
    let t1 = Tensor::from_f32(vec![3], &[1.0, 2.0, 3.0]).unwrap();
    let t2 = Tensor::from_f32(vec![2, 2], &[4.0, 5.0, 6.0, 7.0]).unwrap();
    let bytes =
        gguf::to_bytes(meta.iter().map(|(k, v)| (*k, v)), [("a", &t1), ("b", &t2)]).unwrap();
    let f = parse(&bytes).unwrap();
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    assert_eq!(f.tensors[1].offset, 64);
    assert_eq!(f.get("x"), Some(&MetaValue::Array(vec![])));
    let m = f.tensor_map().unwrap();
    assert_eq!(m["b"].to_f32_vec(), vec![4.0, 5.0, 6.0, 7.0]);
    assert_eq!(m["b"].shape, vec![2, 2]);

    let mixed = MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]);
    assert!(gguf::to_bytes([("m", &mixed)], []).is_err());
    assert!(gguf::to_bytes([], [("a", &t1), ("a", &t1)]).is_err());
    let five = Tensor::from_f32(vec![1, 1, 1, 1, 1], &[1.0]).unwrap();
    assert!(gguf::to_bytes([], [("five", &five)]).is_err());
    let bad_align = MetaValue::U32(48);
    assert!(gguf::to_bytes([("general.alignment", &bad_align)], []).is_err());
}

#[test]
fn config_from_small_file() {
    let f = parse(&small_bytes()).unwrap();
    let tensors = f.tensor_map().unwrap();
    let c = gguf::config_from_gguf(&f, &tensors).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert_eq!(c.vocab_size, 8); // token_embd rows
    assert_eq!(c.hidden_size, 64);
    assert_eq!(c.intermediate_size, 96);
    assert_eq!(c.n_layers, 1);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 2, 16));
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.max_position_embeddings, 128);
    assert_eq!(c.bos_token_id, Some(1));
    // eos from the metadata, then <|eot_id|> recognised by its text.
    assert_eq!(c.eos_token_ids, vec![2, 7]);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.sliding_window, None);
    // The file lacks most block tensors: validation must say which.
    let err = kiln_formats::validate_tensors(&c, &tensors)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing tensor blk.0.attn_v.weight"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs

/// Raw GGUF pieces, for headers no honest writer produces.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, to: usize) -> &mut Raw {
        while !self.0.len().is_multiple_of(to) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Raw {
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
}

fn err_of(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("hostile input accepted"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "error is not one line: {s}");
            s
        }
    }
}

#[test]
fn a_valid_raw_file_parses() {
    // The builder itself makes valid files, so the hostile variants below differ in one thing.
    let mut r = Raw::header(3, 1, 1);
    r.str("k")
        .u32(4)
        .u32(7)
        .tensor("t", &[4, 2], 0, 0)
        .pad(32)
        .zeros(32);
    let f = parse(&r.0).unwrap();
    assert_eq!(f.tensors[0].shape, vec![2, 4]);
    assert_eq!(f.get("k"), Some(&MetaValue::U32(7)));
    // v2 has the same layout.
    let mut r2 = Raw::header(2, 0, 0);
    r2.zeros(0);
    assert!(parse(&r2.0).is_ok());
}

#[test]
fn every_prefix_of_a_valid_file_is_rejected_cleanly() {
    let bytes = small_bytes();
    let f = parse(&bytes).unwrap();
    let end = f
        .tensors
        .iter()
        .map(|t| f.data_offset + t.offset as usize + t.n_bytes)
        .max()
        .unwrap();
    for len in 0..bytes.len() {
        let r = parse(&bytes[..len]);
        if len < end {
            let e = r
                .err()
                .unwrap_or_else(|| panic!("prefix of {len} bytes accepted"));
            assert!(matches!(e, FormatError::Invalid(_)), "{len}: {e}");
        } else {
            // Only the padding after the last tensor is missing: all data is there.
            assert!(r.is_ok(), "prefix {len}");
        }
    }
}

#[test]
fn wrong_magic_and_versions() {
    let mut b = small_bytes();
    b[0] = b'X';
    assert!(err_of(&b).contains("not a GGUF file"));
    let mut b = small_bytes();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(err_of(&b).contains("version 1"));
    let mut b = small_bytes();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(err_of(&b).contains("big-endian"));
    let mut b = small_bytes();
    b[4..8].copy_from_slice(&77u32.to_le_bytes());
    assert!(err_of(&b).contains("unknown GGUF version 77"));
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let e = err_of(&Raw::header(3, 1 << 60, 0).zeros(64).0);
    assert!(e.contains("1152921504606846976 tensors"), "{e}");
    let e = err_of(&Raw::header(3, 0, 1 << 60).zeros(64).0);
    assert!(e.contains("metadata entries"), "{e}");
    // Key string of length 2^62.
    let e = err_of(&Raw::header(3, 0, 1).u64(1 << 62).zeros(64).0);
    assert!(e.contains("string length 4611686018427387904"), "{e}");
    // String value of length u64::MAX.
    let e = err_of(
        &Raw::header(3, 0, 1)
            .str("k")
            .u32(8)
            .u64(u64::MAX)
            .zeros(16)
            .0,
    );
    assert!(e.contains("string length"), "{e}");
    // Array of 2^61 u32.
    let e = err_of(
        &Raw::header(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(4)
            .u64(1 << 61)
            .zeros(64)
            .0,
    );
    assert!(e.contains("claims 2305843009213693952 elements"), "{e}");
    // Array of 2^40 strings (minimum 8 bytes each).
    let e = err_of(
        &Raw::header(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(8)
            .u64(1 << 40)
            .zeros(64)
            .0,
    );
    assert!(e.contains("elements"), "{e}");
    // Arrays nested past the limit.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9);
    for _ in 0..20 {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(0);
    assert!(err_of(&r.0).contains("nested deeper"));
}

#[test]
fn bad_metadata_values() {
    let e = err_of(&Raw::header(3, 0, 1).str("k").u32(13).zeros(8).0);
    assert!(e.contains("unknown value type 13"), "{e}");
    let e = err_of(
        &Raw::header(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(99)
            .u64(1)
            .zeros(8)
            .0,
    );
    assert!(e.contains("unknown array element type 99"), "{e}");
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(7).0.push(2);
    assert!(err_of(&r.0).contains("neither 0 nor 1"));
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(2).0.extend_from_slice(&[0xff, 0xfe]);
    assert!(err_of(&r.0).contains("UTF-8"));
    let e = err_of(
        &Raw::header(3, 0, 2)
            .str("k")
            .u32(4)
            .u32(1)
            .str("k")
            .u32(4)
            .u32(2)
            .0,
    );
    assert!(e.contains("duplicate metadata key"), "{e}");
    for bad in [0u32, 3, 48] {
        let e = err_of(
            &Raw::header(3, 0, 1)
                .str("general.alignment")
                .u32(4)
                .u32(bad)
                .0,
        );
        assert!(e.contains("general.alignment"), "{e}");
    }
    let e = err_of(
        &Raw::header(3, 0, 1)
            .str("general.alignment")
            .u32(8)
            .str("32")
            .0,
    );
    assert!(e.contains("general.alignment"), "{e}");
}

#[test]
fn bad_tensor_infos() {
    let one = |dims: &[u64], ty: u32, offset: u64, data: usize| {
        let mut r = Raw::header(3, 1, 0);
        r.tensor("w", dims, ty, offset).pad(32).zeros(data);
        r.0
    };
    // Offset past the end of the file.
    let e = err_of(&one(&[8], 0, 64, 32));
    assert!(e.contains("runs past the end"), "{e}");
    let e = err_of(&one(&[8], 0, u64::MAX - 31, 32));
    assert!(e.contains("\"w\""), "{e}");
    // Data one byte short.
    let e = err_of(&one(&[8], 0, 0, 31));
    assert!(e.contains("runs past the end"), "{e}");
    // Misaligned offset.
    let e = err_of(&one(&[8], 0, 4, 64));
    assert!(e.contains("not a multiple of the alignment"), "{e}");
    // Too many dimensions.
    let e = err_of(&one(&[1, 1, 1, 1, 1], 0, 0, 32));
    assert!(e.contains("5 dimensions"), "{e}");
    // Element count overflow, and a dimension beyond i64.
    let e = err_of(&one(&[1 << 32, 1 << 32, 1 << 32], 0, 0, 32));
    assert!(e.contains("overflows"), "{e}");
    let e = err_of(&one(&[1 << 63], 0, 0, 32));
    assert!(e.contains("absurd dimension"), "{e}");
    // Byte size overflow (count fits, bytes do not).
    let e = err_of(&one(&[1 << 62, 1], 0, 0, 32));
    assert!(e.contains("overflows"), "{e}");
    // Unknown and unsupported types, named.
    let e = err_of(&one(&[256], 16, 0, 256));
    assert!(e.contains("ggml type 16 (IQ2_XXS)"), "{e}");
    let e = err_of(&one(&[256], 1234, 0, 256));
    assert!(e.contains("unknown ggml type 1234"), "{e}");
    // Row length not a multiple of the block.
    let e = err_of(&one(&[100, 2], DType::Q4_K.ggml_id(), 0, 1024));
    assert!(
        e.contains("row length 100 is not a multiple of the Q4_K block size 256"),
        "{e}"
    );
    // Duplicate names.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("w", &[8], 0, 0)
        .tensor("w", &[8], 0, 32)
        .pad(32)
        .zeros(64);
    assert!(err_of(&r.0).contains("duplicate tensor name"));
    // Overlapping tensors are allowed.
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[8], 0, 0)
        .tensor("b", &[8], 0, 0)
        .pad(32)
        .zeros(32);
    assert_eq!(parse(&r.0).unwrap().tensors.len(), 2);
}

/// xorshift64*, so the "fuzz" loop is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let bytes = small_bytes();
    let header_len = parse(&bytes).unwrap().data_offset;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for i in 0..4000 {
        let mut b = bytes.clone();
        let n = 1 + rng.next() % 4;
        for _ in 0..n {
            // Mostly the header, where a flip can matter; sometimes anywhere.
            let span = if i % 4 == 0 { b.len() } else { header_len };
            let pos = (rng.next() % span as u64) as usize;
            b[pos] ^= 1 << (rng.next() % 8);
            if rng.next().is_multiple_of(3) {
                b[pos] = rng.next() as u8;
            }
        }
        match parse(&b) {
            Ok(f) => {
                ok += 1;
                // Whatever parsed must be usable without panicking.
                if let Ok(t) = f.tensor_map() {
                    let _ = gguf::config_from_gguf(&f, &t);
                    for tensor in t.values() {
                        assert_eq!(
                            Some(tensor.data.len()),
                            tensor.dtype.bytes_for(tensor.n_elements())
                        );
                    }
                }
            }
            Err(_) => err += 1,
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn load_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    let mut b = small_bytes();
    b.truncate(100);
    std::fs::write(&p, &b).unwrap();
    let e = kiln_formats::load(&p).err().unwrap().to_string();
    assert!(
        e.starts_with(&p.display().to_string()) && e.contains("metadata entries"),
        "{e}"
    );
    let q = dir.path().join("not.gguf");
    std::fs::write(&q, b"hello world").unwrap();
    let e = kiln_formats::load(&q).err().unwrap().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    let missing = dir.path().join("missing.gguf");
    let e = kiln_formats::load(&missing).err().unwrap().to_string();
    assert!(e.contains("missing.gguf"), "{e}");
    // A small GGUF file with too few tensors for its configuration.
    let s = dir.path().join("small.gguf");
    std::fs::write(&s, small_bytes()).unwrap();
    let e = kiln_formats::load(&s).err().unwrap().to_string();
    assert!(
        e.contains("small.gguf") && e.contains("missing tensor"),
        "{e}"
    );
}

#[test]
fn metadata_map_is_sorted_copy() {
    let f = parse(&small_bytes()).unwrap();
    let m: BTreeMap<String, MetaValue> = f.metadata_map();
    assert_eq!(m.len(), f.metadata.len());
    assert_eq!(f.architecture(), Some("llama"));
}

#[test]
fn absurd_config_sizes_are_rejected() {
    use MetaValue as M;
    for (key, value, want) in [
        (
            "gemma3.block_count",
            u32::MAX,
            "gemma3.block_count = 4294967295 is absurdly large",
        ),
        (
            "gemma3.embedding_length",
            1 << 30,
            "gemma3.embedding_length = 1073741824 is absurdly large",
        ),
        (
            "gemma3.attention.key_length",
            1 << 30,
            "key_length = 1073741824 is absurdly large",
        ),
    ] {
        let mut meta = vec![
            ("general.architecture", M::String("gemma3".into())),
            ("gemma3.embedding_length", M::U32(64)),
            ("gemma3.block_count", M::U32(2)),
            ("gemma3.feed_forward_length", M::U32(128)),
            ("gemma3.attention.head_count", M::U32(4)),
            ("gemma3.attention.layer_norm_rms_epsilon", M::F32(1e-6)),
            ("gemma3.attention.sliding_window", M::U32(16)),
        ];
        meta.retain(|(k, _)| *k != key);
        meta.push((key, M::U32(value)));
        let embd = Tensor::from_f32(vec![4, 64], &[0.0; 256]).unwrap();
        let bytes = gguf::to_bytes(
            meta.iter().map(|(k, v)| (*k, v)),
            [("token_embd.weight", &embd)],
        )
        .unwrap();
        let f = parse(&bytes).unwrap();
        let e = gguf::config_from_gguf(&f, &f.tensor_map().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn split_gguf_is_refused_clearly() {
    let meta = [
        ("general.architecture", MetaValue::String("llama".into())),
        ("split.count", MetaValue::U16(3)),
    ];
    let bytes = gguf::to_bytes(meta.iter().map(|(k, v)| (*k, v)), []).unwrap();
    let e = gguf::load_file(parse(&bytes).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("split GGUF (split.count = 3)"), "{e}");
}

#[test]
fn split_gguf_parts_load_as_one_model() {
    let whole = parse(&tiny_gemma3()).unwrap();
    let tensors = whole.tensor_map().unwrap();
    let names: Vec<&String> = tensors.keys().collect();
    let dir = tempfile::tempdir().unwrap();
    let parts: Vec<&[&String]> = names.chunks(names.len() / 3 + 1).collect();
    assert_eq!(parts.len(), 3);
    let path = |i: usize| dir.path().join(format!("tiny-{i:05}-of-00003.gguf"));
    for (i, chunk) in parts.iter().enumerate() {
        let mut meta: Vec<(String, MetaValue)> = if i == 0 {
            whole.metadata.clone()
        } else {
            vec![]
        };
        meta.push(("split.no".into(), MetaValue::U16(i as u16)));
        meta.push(("split.count".into(), MetaValue::U16(3)));
        meta.push((
            "split.tensors.count".into(),
            MetaValue::I32(tensors.len() as i32),
        ));
        gguf::write(
            &path(i + 1),
            meta.iter().map(|(k, v)| (k.as_str(), v)),
            chunk.iter().map(|n| (n.as_str(), &tensors[*n])),
        )
        .unwrap();
    }
    let m = kiln_formats::load(&path(1)).unwrap();
    assert_eq!(m.tensors.len(), tensors.len());
    for (k, t) in &tensors {
        assert!(m.tensors[k].data.bytes() == t.data.bytes(), "{k}");
    }
    assert_eq!(m.config, gguf::config_from_gguf(&whole, &tensors).unwrap());
    // The second part is not a starting point; a missing part is named.
    let e = kiln_formats::load(&path(2)).err().unwrap().to_string();
    assert!(e.contains("give the first part"), "{e}");
    std::fs::remove_file(path(3)).unwrap();
    let e = kiln_formats::load(&path(1)).err().unwrap().to_string();
    assert!(
        e.contains("missing split part") && e.contains("tiny-00003-of-00003.gguf"),
        "{e}"
    );
}

/// A complete tiny Gemma 3 GGUF (every tensor the config needs), written by kiln's writer.
fn tiny_gemma3() -> Vec<u8> {
    use MetaValue as M;
    let (d, l, ff, h, kv, hd, vocab) = (32usize, 2usize, 64usize, 2usize, 1usize, 16usize, 8usize);
    let meta = vec![
        ("general.architecture", M::String("gemma3".into())),
        ("gemma3.context_length", M::U32(128)),
        ("gemma3.embedding_length", M::U32(d as u32)),
        ("gemma3.block_count", M::U32(l as u32)),
        ("gemma3.feed_forward_length", M::U32(ff as u32)),
        ("gemma3.attention.head_count", M::U32(h as u32)),
        ("gemma3.attention.head_count_kv", M::U32(kv as u32)),
        ("gemma3.attention.key_length", M::U32(hd as u32)),
        ("gemma3.attention.value_length", M::U32(hd as u32)),
        ("gemma3.attention.layer_norm_rms_epsilon", M::F32(1e-6)),
        ("gemma3.rope.freq_base", M::F32(1e6)),
        ("gemma3.attention.sliding_window", M::U32(4)),
        (
            "tokenizer.ggml.tokens",
            M::Array((0..vocab).map(|i| M::String(format!("<t{i}>"))).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", M::U32(2)),
        ("tokenizer.ggml.eos_token_id", M::U32(1)),
    ];
    let z = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape, &vec![0.5; n]).unwrap()
    };
    let mut t: Vec<(String, Tensor)> = vec![
        ("token_embd.weight".into(), z(vec![vocab, d])),
        ("output_norm.weight".into(), z(vec![d])),
    ];
    for i in 0..l {
        for (n, s) in [
            ("attn_norm", vec![d]),
            ("attn_q", vec![h * hd, d]),
            ("attn_k", vec![kv * hd, d]),
            ("attn_v", vec![kv * hd, d]),
            ("attn_output", vec![d, h * hd]),
            ("attn_q_norm", vec![hd]),
            ("attn_k_norm", vec![hd]),
            ("post_attention_norm", vec![d]),
            ("ffn_norm", vec![d]),
            ("ffn_gate", vec![ff, d]),
            ("ffn_up", vec![ff, d]),
            ("ffn_down", vec![d, ff]),
            ("post_ffw_norm", vec![d]),
        ] {
            t.push((format!("blk.{i}.{n}.weight"), z(s)));
        }
    }
    gguf::to_bytes(
        meta.iter().map(|(k, v)| (*k, v)),
        t.iter().map(|(k, v)| (k.as_str(), v)),
    )
    .unwrap()
}

#[test]
fn tiny_gemma3_loads_and_survives_byte_flips() {
    let bytes = tiny_gemma3();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let m = kiln_formats::load(&p).unwrap();
    assert_eq!(m.config.arch, Arch::Gemma3);
    assert_eq!(m.config.sliding_layers, vec![true, true]);
    assert_eq!(m.config.query_pre_attn_scalar, Some(16.0));
    assert!(m.config.tie_word_embeddings);
    let header_len = parse(&bytes).unwrap().data_offset;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut loaded = 0;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next() % 3 {
            let pos = (rng.next() % header_len as u64) as usize;
            b[pos] = rng.next() as u8;
        }
        if let Ok(f) = parse(&b) {
            // The whole load path: tensors, config, validation.
            if let Ok(m) = gguf::load_file(f) {
                if kiln_formats::validate_tensors(&m.config, &m.tensors).is_ok() {
                    loaded += 1;
                }
            }
        }
    }
    assert!(loaded > 0);
}

#[test]
fn gemma3_sliding_window_pattern_key() {
    let base = parse(&tiny_gemma3()).unwrap();
    let tensors = base.tensor_map().unwrap();
    for (value, want) in [
        (
            MetaValue::Array(vec![MetaValue::Bool(false), MetaValue::Bool(true)]),
            Ok(vec![false, true]),
        ),
        (MetaValue::U32(2), Ok(vec![true, false])),
        (
            MetaValue::Array(vec![MetaValue::Bool(true)]),
            Err("expected a period or 2 flags"),
        ),
        (MetaValue::U32(0), Err("expected a period")),
    ] {
        let mut meta = base.metadata.clone();
        meta.push(("gemma3.attention.sliding_window_pattern".into(), value));
        let bytes = gguf::to_bytes(
            meta.iter().map(|(k, v)| (k.as_str(), v)),
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
        )
        .unwrap();
        let f = parse(&bytes).unwrap();
        match (gguf::config_from_gguf(&f, &tensors), want) {
            (Ok(c), Ok(w)) => assert_eq!(c.sliding_layers, w),
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e}"),
            (got, w) => panic!("{got:?} vs {w:?}"),
        }
    }
}

/// Two Q5_0 matrices and a Q8_0 one, with pseudo-random block bytes.
fn q5_0_file() -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut x = 17u32;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect()
    };
    let data = vec![bytes(8 * 2 * 22), bytes(8 * 2 * 22), bytes(8 * 2 * 34)];
    let t =
        |dtype, d: &Vec<u8>| Tensor::new(dtype, vec![8, 64], Storage::from_vec(d.clone())).unwrap();
    let tensors = [
        t(DType::Q5_0, &data[0]),
        t(DType::Q5_0, &data[1]),
        t(DType::Q8_0, &data[2]),
    ];
    let file = gguf::to_bytes(
        std::iter::empty(),
        ["a", "b", "c"].into_iter().zip(tensors.iter()),
    )
    .unwrap();
    (file, data)
}

/// Loaded weights may be rearranged in place for the kernels; every view of them still reads
/// the file's values, and writing them out gives back the file.
#[test]
fn interleaved_tensors_read_and_write_as_the_file_holds_them() {
    let (file, data) = q5_0_file();
    let mut f = parse(&file).unwrap();
    let n = f.interleave();
    let wanted = |t: &Tensor| kiln_kernels::interleave::preferred(t.dtype, &t.shape);
    let map = f.tensor_map().unwrap();
    let expect = map
        .values()
        .filter(|t| wanted(t) != kiln_kernels::Layout::Plain)
        .count();
    assert_eq!(n, expect);
    for (name, d) in ["a", "b", "c"].iter().zip(&data) {
        let t = &map[*name];
        assert_eq!(&t.plain_bytes()[..], &d[..], "{name}");
        assert_eq!(t.layout, wanted(t), "{name}");
        assert_eq!(
            t.data.bytes() == &d[..],
            t.layout == kiln_kernels::Layout::Plain
        );
    }
    let out = gguf::to_bytes(
        f.metadata.iter().map(|(k, v)| (k.as_str(), v)),
        f.tensors.iter().map(|t| (t.name.as_str(), &map[&t.name])),
    )
    .unwrap();
    assert!(out == file, "a rewritten file differs from the original");
    // Once views are taken the bytes are shared and stay as they are.
    assert_eq!(f.interleave(), 0);
}

#[test]
fn read_only_or_overlapping_tensors_keep_the_file_layout() {
    let (file, _) = q5_0_file();
    // mapped-like, never writable
    let fixed = Storage::new(std::sync::Arc::new(file.clone()));
    assert_eq!(GgufFile::parse(fixed).unwrap().interleave(), 0);
    // point tensor "b" at tensor "a"'s bytes: neither may be rewritten
    let f = parse(&file).unwrap();
    let a_off = f.tensors.iter().find(|t| t.name == "a").unwrap().offset;
    let b_off = f.tensors.iter().find(|t| t.name == "b").unwrap().offset;
    let mut hostile = file.clone();
    let at = hostile
        .windows(8)
        .position(|w| w == b_off.to_le_bytes())
        .expect("offset of b in the header");
    hostile[at..at + 8].copy_from_slice(&a_off.to_le_bytes());
    let mut f = parse(&hostile).unwrap();
    f.interleave();
    let map = f.tensor_map().unwrap();
    assert_eq!(map["a"].layout, kiln_kernels::Layout::Plain);
    assert_eq!(map["b"].layout, kiln_kernels::Layout::Plain);
    assert_eq!(map["a"].data.bytes(), map["b"].data.bytes());
    assert_eq!(
        map["a"].data.bytes(),
        &file[f.data_offset + a_off as usize..][..352]
    );
}
