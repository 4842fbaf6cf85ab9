//! A bounded fuzzing harness run as ordinary tests: seeded mutations of the repository's
//! fixtures (GGUF, safetensors, PyTorch .pth zip/pickle, tokenizer.json) and of chat templates,
//! fed to the readers. Every input must give a result (never a panic), within 5 s, and no
//! single allocation may exceed 1 GiB (every input here is under 1 MiB); a counting global
//! allocator in this test binary watches the last.
//!
//! `KILN_FUZZ_CASES` sets the cases per target (default 150, a few seconds each in release);
//! `KILN_FUZZ_SEED` the seed. A failing input is written to `target/fuzz-failures/` and named
//! in the failure; keep it as a regression case in `tests/data/fuzz/` (see `regressions`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use kiln_formats::gguf::GgufFile;
use kiln_formats::pytorch::{pickle, PthFile};
use kiln_formats::TokenizerSource;
use kiln_kernels::Storage;
use kiln_tokenizer::{render_chat_template, ChatMessage, Tokenizer};

const MAX_ALLOCATION: usize = 1 << 30;
const TIME_LIMIT: Duration = Duration::from_secs(5);

/// The system allocator, recording the largest single request.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Panics seen, including ones the library contains (kiln turns a `tokenizers` panic into an
/// error, but each is a validation gap worth closing).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            default(info);
        }));
    });
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> Vec<u8> {
    let p = repo().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that break readers more often than random bytes: sizes at type limits.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7F,
    0xFF,
    0xFFFF,
    0xFFFF_FFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    u64::MAX,
    1 << 40,
];

/// Mutates `input` a few times: byte flips, interesting integers written over fields,
/// truncation, duplicated or deleted spans.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(b.len());
        match rng.below(6) {
            0 => b[at] = rng.next() as u8,
            1 => b[at] ^= 1 << rng.below(8),
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1, 2, 4, 8][rng.below(4)];
                for (i, byte) in v.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *byte;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let len = rng.below(64).min(b.len() - at);
                let span: Vec<u8> = b[at..at + len].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, span);
            }
            _ => {
                let len = rng.below(64).min(b.len() - at);
                b.drain(at..at + len);
            }
        }
    }
    b
}

fn pick_and_mutate(r: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let i = r.below(seeds.len());
    mutate(r, &seeds[i])
}

/// Runs `check` on every case from `gen`, each on its own thread with the time limit,
/// catching panics and watching allocations. Writes a failing input out and panics naming it.
fn fuzz(
    target: &str,
    default_cases: u64,
    gen: impl Fn(&mut Rng) -> Vec<u8>,
    check: fn(&[u8]) -> bool,
) {
    let cases = env_u64("KILN_FUZZ_CASES", default_cases);
    // Each target its own stream: the seed mixed with an FNV-1a hash of the target's name.
    let name_hash = target.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    });
    let seed = env_u64("KILN_FUZZ_SEED", 0x0005_EED0_C1A7) ^ name_hash;
    let mut rng = Rng(seed | 1);
    let mut accepted = 0;
    count_panics();
    for case in 0..cases {
        let panics_before = PANICS.load(Ordering::Relaxed);
        let input = gen(&mut rng);
        assert!(
            input.len() < 1 << 20,
            "{target}: inputs must stay under 1 MiB"
        );
        let (tx, rx) = mpsc::channel();
        let data = input.clone();
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let r = std::panic::catch_unwind(|| check(&data));
                let _ = tx.send(r);
            })
            .unwrap();
        let failure = match rx.recv_timeout(TIME_LIMIT) {
            Ok(Ok(ok)) => {
                accepted += usize::from(ok);
                None
            }
            Ok(Err(_)) => Some("panicked"),
            Err(_) => Some("took over 5 s"),
        };
        let contained = PANICS.load(Ordering::Relaxed) != panics_before;
        let failure = failure.or(contained.then_some("panicked inside the library (contained)"));
        let largest = LARGEST.load(Ordering::Relaxed);
        let failure = failure.or((largest > MAX_ALLOCATION).then_some("allocated over 1 GiB"));
        if let Some(why) = failure {
            let dir = repo().join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{target}-{seed:x}-{case}.bin"));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "{target} case {case} (seed {seed:#x}) {why} (largest allocation {largest} bytes); input saved to {}",
                path.display()
            );
        }
    }
    // How many mutants got all the way through (the rest were refused with an error).
    eprintln!("{target}: {cases} cases, {accepted} accepted in full");
}

// --- targets -----------------------------------------------------------------------------

fn check_gguf(bytes: &[u8]) -> bool {
    let Ok(file) = GgufFile::parse(Storage::from_vec(bytes.to_vec())) else {
        return false;
    };
    let _ = file.tensor_map();
    let Ok(model) = kiln_formats::gguf::load_file(file) else {
        return false;
    };
    if let Ok(t) = Tokenizer::from_source(&model.tokenizer) {
        exercise_tokenizer(&t);
    }
    if let Some(template) = &model.chat_template {
        let _ = render_chat_template(template, &messages(), true, "<s>", "</s>");
    }
    kiln_formats::validate_tensors(&model.config, &model.tensors).is_ok()
}

fn check_safetensors(bytes: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo().join("tests/data/fixtures/llama-mha");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    let Ok(model) = kiln_formats::load(dir.path()) else {
        return false;
    };
    for t in model.tensors.values() {
        let _ = t.to_f32_vec();
    }
    true
}

fn check_pth(bytes: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("consolidated.00.pth");
    std::fs::write(&p, bytes).unwrap();
    let Ok(f) = PthFile::open(&p) else {
        return false;
    };
    let mut all = true;
    for name in f.tensors().keys() {
        all &= f.tensor(name).is_ok();
    }
    all
}

fn check_pickle(bytes: &[u8]) -> bool {
    pickle::unpickle(bytes).is_ok()
}

fn check_tokenizer_json(bytes: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, bytes).unwrap();
    let Ok(t) = Tokenizer::from_source(&TokenizerSource::HfJson(p)) else {
        return false;
    };
    exercise_tokenizer(&t);
    true
}

fn exercise_tokenizer(t: &Tokenizer) {
    for text in [
        "Hello world",
        "",
        " \n\t",
        "héllo wörld 你好 🙂",
        "<s>a</s>",
        "123456789",
    ] {
        if let Ok(ids) = t.encode(text, true) {
            let _ = t.decode(&ids, false);
            let _ = t.decode(&ids, true);
        }
    }
    let _ = t.decode(&[0, 1, 2, u32::MAX], false);
}

fn messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi {{ there }} {% raw %}"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ]
}

fn check_template(bytes: &[u8]) -> bool {
    let template = String::from_utf8_lossy(bytes);
    render_chat_template(&template, &messages(), true, "<s>", "</s>").is_ok()
}

// --- inputs ------------------------------------------------------------------------------

/// Jinja fragments spliced into templates: loops, growth, recursion, filters, methods.
const TEMPLATE_PIECES: [&str; 20] = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% set ns = namespace(s='ab') %}",
    "{% set ns.s = ns.s ~ ns.s ~ ns.s %}",
    "{{ ns.s|length }}",
    "{% macro f(x) %}{{ f(x ~ x) }}{% endmacro %}{{ f('a') }}",
    "{{ 'a' * 100000 }}",
    "{{ messages|tojson(indent=4) }}",
    "{{ messages[0]['content'].replace('', 'xx') }}",
    "{{ (messages * 1000)|join('ab') }}",
    "{% set x = 'ab' %}{% set x %}{{ x }}{{ x }}{% endset %}",
    "{{ raise_exception('no') }}",
    "{{ strftime_now('%Y') }}",
    "{% if messages|length > 2 %}{{ messages[2].role }}{% endif %}",
    "{{ [1, 2]|batch(3, 0)|list }}",
    "{{ 'x'|indent(8) }}",
    "{% for m in [[1, [2]]] recursive %}{{ loop(m) if m is iterable }}{% endfor %}",
    "{{ '%s %d'|format('a', 1) }}",
    "{{ ''.join(messages|map(attribute='role')) }}",
    "{% for m in messages %}{{ loop.cycle('a', 'b') }}{% endfor %}",
];

fn template_seeds() -> Vec<Vec<u8>> {
    let dir = repo().join("crates/tokenizer/tests/data");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-chat-template.jinja"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.sort();
    seeds.push(kiln_tokenizer::CHATML.as_bytes().to_vec());
    seeds
}

fn gen_template(seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut t = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(3) {
        let piece = TEMPLATE_PIECES[rng.below(TEMPLATE_PIECES.len())].as_bytes();
        // Between tags, where a fragment keeps the template parseable.
        let bounds: Vec<usize> = (0..=t.len())
            .filter(|&i| i == 0 || t[..i].ends_with(b"%}") || t[..i].ends_with(b"}}"))
            .collect();
        let at = bounds[rng.below(bounds.len())];
        t.splice(at..at, piece.iter().copied());
    }
    if rng.below(4) == 0 {
        t = mutate(rng, &t);
    }
    t
}

#[test]
fn fuzz_gguf() {
    // gguf-py's small file, and the llama-mha fixture written as GGUF by kiln's writer.
    let m = kiln_formats::load(&repo().join("tests/data/fixtures/llama-mha")).unwrap();
    let (cfg, tensors) = kiln_formats::gguf::gguf_tensors(&m.config, &m.tensors).unwrap();
    let meta = kiln_formats::gguf::metadata_from_config(&cfg).unwrap();
    let model = kiln_formats::gguf::to_bytes(
        meta.iter().map(|(k, v)| (k.as_str(), v)),
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
    )
    .unwrap();
    let seeds = [read("crates/formats/tests/data/small.gguf"), model];
    fuzz("gguf", 300, |r| pick_and_mutate(r, &seeds), check_gguf);
}

#[test]
fn fuzz_safetensors() {
    let seed = read("tests/data/fixtures/llama-mha/model.safetensors");
    // Mutations concentrate on the JSON header, where the sizes and offsets are.
    fuzz(
        "safetensors",
        100,
        |r| {
            let mut head = seed[..4096].to_vec();
            head = mutate(r, &head);
            let mut b = head;
            b.extend_from_slice(&seed[4096..]);
            if r.below(8) == 0 {
                b = mutate(r, &b);
            }
            b
        },
        check_safetensors,
    );
}

#[test]
fn fuzz_pth() {
    let dir = repo().join("crates/formats/tests/data/pth");
    let mut seeds: Vec<Vec<u8>> = [
        "dtypes.pth",
        "dtypes_deflated.pth",
        "dtypes_zip64.pth",
        "dtypes_proto4.pth",
    ]
    .iter()
    .map(|n| std::fs::read(dir.join(n)).unwrap())
    .collect();
    seeds.push(read(
        "tests/data/fixtures/llama-mha/meta/consolidated.00.pth",
    ));
    fuzz("pth", 300, |r| pick_and_mutate(r, &seeds), check_pth);
}

#[test]
fn fuzz_pickle() {
    // data.pkl of the fixtures, taken out of their archives.
    let dir = repo().join("crates/formats/tests/data/pth");
    let mut seeds = Vec::new();
    for n in ["dtypes.pth", "dtypes_proto4.pth", "hostile_os_system.pth"] {
        let bytes = std::fs::read(dir.join(n)).unwrap();
        let mut z = zip_member_containing(&bytes, "data.pkl");
        seeds.append(&mut z);
    }
    assert!(!seeds.is_empty());
    fuzz("pickle", 600, |r| pick_and_mutate(r, &seeds), check_pickle);
}

/// Stored members of a zip whose names end with `suffix` (the fixtures store, never deflate).
fn zip_member_containing(zip: &[u8], suffix: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 30 <= zip.len() && zip[at..at + 4] == [0x50, 0x4b, 3, 4] {
        let u16_at = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as usize;
        let u32_at = |i: usize| u32::from_le_bytes(zip[i..i + 4].try_into().unwrap()) as usize;
        let (method, csize) = (u16_at(at + 8), u32_at(at + 18));
        let (name_len, extra_len) = (u16_at(at + 26), u16_at(at + 28));
        let name = String::from_utf8_lossy(&zip[at + 30..at + 30 + name_len]).to_string();
        let data = at + 30 + name_len + extra_len;
        if csize == 0xFFFF_FFFF || data + csize > zip.len() {
            break;
        }
        if method == 0 && name.ends_with(suffix) {
            out.push(zip[data..data + csize].to_vec());
        }
        at = data + csize;
    }
    out
}

#[test]
fn fuzz_tokenizer_json() {
    let seeds = [
        read("tests/data/fixtures/llama-mha/tokenizer.json"),
        read("tests/data/fixtures/qwen2-tiny/tokenizer.json"),
    ];
    // Byte mutations mostly break the JSON; structural ones change one value to another
    // JSON value, which is what reaches the tokenizers crate's own code.
    fuzz(
        "tokenizer-json",
        150,
        |r| {
            let seed = &seeds[r.below(seeds.len())];
            if r.below(3) == 0 {
                return mutate(r, seed);
            }
            let mut v: serde_json::Value = serde_json::from_slice(seed).unwrap();
            for _ in 0..1 + r.below(3) {
                mutate_json(r, &mut v, 0);
            }
            serde_json::to_vec(&v).unwrap()
        },
        check_tokenizer_json,
    );
}

/// Replaces one value somewhere in `v` (outside the big vocab and merges tables mostly).
fn mutate_json(r: &mut Rng, v: &mut serde_json::Value, depth: usize) {
    use serde_json::{json, Value};
    let replacement = |r: &mut Rng| match r.below(10) {
        0 => json!(""),
        1 => json!(0),
        2 => json!(-1),
        3 => json!(4_294_967_296u64),
        4 => Value::Null,
        5 => json!([]),
        6 => json!({}),
        7 => json!("<unk>"),
        8 => json!({"String": ""}),
        _ => json!(true),
    };
    let descend = depth < 6 && r.below(4) != 0;
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[r.below(keys.len())];
            let child = m.get_mut(k).unwrap();
            if descend && (child.is_object() || child.is_array()) {
                mutate_json(r, child, depth + 1);
            } else {
                *child = replacement(r);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = r.below(a.len().min(64));
            if descend && (a[i].is_object() || a[i].is_array()) {
                mutate_json(r, &mut a[i], depth + 1);
            } else if r.below(4) == 0 {
                a.remove(i);
            } else {
                a[i] = replacement(r);
            }
        }
        _ => *v = replacement(r),
    }
}

#[test]
fn fuzz_chat_templates() {
    let seeds = template_seeds();
    fuzz(
        "chat-template",
        200,
        |r| gen_template(&seeds, r),
        check_template,
    );
}

/// Inputs that once failed, kept by name: each must now give a result.
#[test]
fn regressions() {
    let dir = repo().join("tests/data/fuzz");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&p).unwrap();
        let check: fn(&[u8]) -> bool = match name.split('-').next().unwrap() {
            "gguf" => check_gguf,
            "safetensors" => check_safetensors,
            "pth" => check_pth,
            "pickle" => check_pickle,
            "tokenizer" => check_tokenizer_json,
            "chat" => check_template,
            _ => continue,
        };
        count_panics();
        let before = PANICS.load(Ordering::Relaxed);
        let r = std::panic::catch_unwind(|| check(&bytes));
        assert!(r.is_ok(), "regression {name} panics again");
        assert_eq!(
            PANICS.load(Ordering::Relaxed),
            before,
            "regression {name} panics again inside the library"
        );
        checked += 1;
    }
    assert!(checked > 0, "no regression cases in {}", dir.display());
}
