//! Test helpers: fixture paths and a minimal GGUF metadata reader (test-only; kiln-formats
//! owns the real loader).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use kiln_formats::MetaValue;

pub fn test_data() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data"))
}

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name)
}

/// The real GGUF model stored as `file`, pulled through kiln's own `pull` code (sha256-checked,
/// cached in `$KILN_HOME/models`) when it is not there yet; a failed pull fails the test.
pub fn model_path(file: &str) -> PathBuf {
    let spec = kiln_pull::known_models()
        .iter()
        .find(|m| m.file == file)
        .unwrap_or_else(|| panic!("{file} is not a model kiln can pull"));
    kiln_pull::resolve_model(Some(spec.name), true, &mut |p| {
        eprintln!("pulling {}: {p}", spec.name)
    })
    .unwrap_or_else(|e| panic!("pulling {}: {e}", spec.name))
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

struct R<T: Read>(T);

impl<T: Read> R<T> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.0.read_exact(&mut b).expect("GGUF truncated");
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        assert!(n < 1 << 24, "GGUF string too long");
        let mut b = vec![0u8; n];
        self.0.read_exact(&mut b).unwrap();
        String::from_utf8(b).expect("GGUF string not UTF-8")
    }
    fn value(&mut self, ty: u32) -> MetaValue {
        match ty {
            0 => MetaValue::U8(self.bytes::<1>()[0]),
            1 => MetaValue::I8(self.bytes::<1>()[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.bytes())),
            3 => MetaValue::I16(i16::from_le_bytes(self.bytes())),
            4 => MetaValue::U32(self.u32()),
            5 => MetaValue::I32(i32::from_le_bytes(self.bytes())),
            6 => MetaValue::F32(f32::from_le_bytes(self.bytes())),
            7 => MetaValue::Bool(self.bytes::<1>()[0] != 0),
            8 => MetaValue::String(self.string()),
            9 => {
                let et = self.u32();
                let n = self.u64() as usize;
                assert!(n < 1 << 26, "GGUF array too long");
                MetaValue::Array((0..n).map(|_| self.value(et)).collect())
            }
            10 => MetaValue::U64(self.u64()),
            11 => MetaValue::I64(i64::from_le_bytes(self.bytes())),
            12 => MetaValue::F64(f64::from_le_bytes(self.bytes())),
            t => panic!("GGUF: unknown metadata type {t}"),
        }
    }
}

/// All `tokenizer.*` metadata of a GGUF v2/v3 file.
pub fn gguf_tokenizer_meta(path: &std::path::Path) -> BTreeMap<String, MetaValue> {
    let f = std::fs::File::open(path).unwrap();
    let mut r = R(BufReader::with_capacity(1 << 20, f));
    assert_eq!(&r.bytes::<4>(), b"GGUF");
    let version = r.u32();
    assert!(version >= 2, "GGUF v{version}");
    let _tensors = r.u64();
    let n_kv = r.u64();
    let mut out = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string();
        let ty = r.u32();
        let v = r.value(ty);
        if key.starts_with("tokenizer.") {
            out.insert(key, v);
        }
    }
    out
}
