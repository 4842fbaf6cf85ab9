//! A test double for the model and tokenizer, and helpers to run the server on 127.0.0.1:0.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use kiln_engine::scheduler::{SchedulerConfig, Vocab};
use kiln_engine::Engine;
use kiln_formats::{Arch, ModelConfig};
use kiln_kernels::ops::RopeStyle;
use kiln_models::{CausalLM, Logits, ModelError, SeqInput};
use kiln_server::{AppState, ServerOptions};
use kiln_tokenizer::CHATML;
use serde_json::Value;

pub const VOCAB: usize = 40;
pub const EOS: u32 = 39;

/// Logits at a position are a hash of every token up to it, read back from the KV cache, so
/// wrong positions, reused prefixes or batch mix-ups change them.
pub struct HashModel {
    cfg: ModelConfig,
    pub gate: Arc<(Mutex<bool>, Condvar)>,
    /// Pause per forward pass, so a long generation is still running when a test acts on it.
    pub pace: std::time::Duration,
}

pub fn hash_logits(history: &[u32]) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in history {
        h = (h ^ (t as u64 + 1)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..VOCAB as u64)
        .map(|v| {
            let x = (h ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let logit = (x >> 40) as f32 / (1u64 << 24) as f32 * 6.0;
            if v as u32 == EOS {
                logit - 4.0
            } else {
                logit
            }
        })
        .collect()
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy generation by full recomputation (no cache), stopping at EOS (kept).
pub fn reference_greedy(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut hist = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_tokens {
        let t = argmax(&hash_logits(&hist));
        out.push(t);
        hist.push(t);
        if t == EOS {
            break;
        }
    }
    out
}

impl CausalLM for HashModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn forward(&self, batch: &mut [SeqInput<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        {
            let (m, cv) = &*self.gate;
            let mut closed = m.lock().unwrap();
            while *closed {
                closed = cv.wait(closed).unwrap();
            }
        }
        if !self.pace.is_zero() {
            std::thread::sleep(self.pace);
        }
        kiln_models::layers::prepare_batch(batch, VOCAB, self.cfg.max_position_embeddings)?;
        for s in batch.iter_mut() {
            let start = s.cache.len();
            for (j, &t) in s.tokens.iter().enumerate() {
                s.cache.store(0, 0, start + j, &[t as f32], &[0.0]);
            }
            let n = s.tokens.len();
            let rows: Vec<usize> = match s.logits {
                Logits::None => vec![],
                Logits::Last => vec![n - 1],
                Logits::All => (0..n).collect(),
            };
            for j in rows {
                let (k, _) = s.cache.head(0, 0, start + j + 1);
                let hist: Vec<u32> = k.iter().map(|&x| x as u32).collect();
                logits.extend(hash_logits(&hist));
            }
            s.cache.advance(n);
        }
        Ok(())
    }
    /// The "hidden state" of a row is the first of its hash logits (`hidden_size` is 1).
    fn forward_hidden(
        &self,
        batch: &mut [SeqInput<'_>],
        hidden: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let mut logits = Vec::new();
        self.forward(batch, &mut logits)?;
        hidden.extend(logits.chunks_exact(VOCAB).map(|row| row[0]));
        Ok(())
    }
    fn n_threads(&self) -> usize {
        1
    }
}

/// Token v < 26 is the letter `a + v`, 26..36 the digits, then ' ', '.', '\n'; EOS has no text.
pub struct Letters;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 .\n";

impl Vocab for Letters {
    /// Characters outside the alphabet are dropped (upper case is folded).
    fn encode(&self, text: &str, _add_special: bool) -> Result<Vec<u32>, String> {
        Ok(text
            .bytes()
            .filter_map(|b| {
                ALPHABET
                    .iter()
                    .position(|&a| a == b.to_ascii_lowercase())
                    .map(|p| p as u32)
            })
            .collect())
    }
    fn decode(&self, ids: &[u32], _skip: bool) -> String {
        ids.iter()
            .flat_map(|&t| self.token_bytes(t))
            .map(char::from)
            .collect()
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        ALPHABET
            .get(id as usize)
            .filter(|_| id != EOS)
            .map(|&b| vec![b])
            .unwrap_or_default()
    }
    fn eos_ids(&self) -> Vec<u32> {
        vec![EOS]
    }
    fn bos_id(&self) -> Option<u32> {
        None
    }
}

pub fn config(max_pos: usize) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: VOCAB,
        hidden_size: 1,
        intermediate_size: 1,
        n_layers: 1,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 1,
        rms_norm_eps: 1e-5,
        rope_theta: 1e4,
        rope_local_theta: None,
        rope_scaling: None,
        rope_style: RopeStyle::Half,
        max_position_embeddings: max_pos,
        sliding_window: None,
        sliding_layers: Vec::new(),
        tie_word_embeddings: false,
        query_pre_attn_scalar: None,
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
        moe: None,
    }
}

/// A running server and what a test needs to reach and steer it.
pub struct TestServer {
    pub base: String,
    pub state: Arc<AppState>,
    pub gate: Arc<(Mutex<bool>, Condvar)>,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn set_gate(&self, closed: bool) {
        *self.gate.0.lock().unwrap() = closed;
        self.gate.1.notify_all();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// Starts the server over the hash model on 127.0.0.1:0, with ChatML as its chat template
/// (as `kiln serve --chat-template chatml`).
pub async fn start_fake(
    cfg: SchedulerConfig,
    opts: ServerOptions,
    pace: std::time::Duration,
) -> TestServer {
    start_fake_full(cfg, opts, pace, Arc::new(Letters), Some(CHATML.into())).await
}

/// [`start_fake`] with another vocabulary over the same `VOCAB` ids.
pub async fn start_fake_vocab(
    cfg: SchedulerConfig,
    opts: ServerOptions,
    pace: std::time::Duration,
    vocab: Arc<dyn Vocab>,
) -> TestServer {
    start_fake_full(cfg, opts, pace, vocab, Some(CHATML.into())).await
}

/// [`start_fake`] with another chat template (`None`: none, so chat requests are refused).
pub async fn start_fake_with_template(
    cfg: SchedulerConfig,
    opts: ServerOptions,
    pace: std::time::Duration,
    chat_template: Option<String>,
) -> TestServer {
    start_fake_full(cfg, opts, pace, Arc::new(Letters), chat_template).await
}

async fn start_fake_full(
    cfg: SchedulerConfig,
    opts: ServerOptions,
    pace: std::time::Duration,
    vocab: Arc<dyn Vocab>,
    chat_template: Option<String>,
) -> TestServer {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let model = HashModel {
        cfg: config(cfg.context.max(64)),
        gate: gate.clone(),
        pace,
    };
    let state = AppState::start(Box::new(model), None, vocab, chat_template, cfg, opts).unwrap();
    start_state(state, gate).await
}

/// The options the hash-model tests run with: the model id `hash-model`, 64 KiB bodies.
pub fn fake_opts() -> ServerOptions {
    ServerOptions {
        model_id: "hash-model".into(),
        max_body_bytes: 64 * 1024,
        ..ServerOptions::default()
    }
}

/// `tests/data/fixtures/<name>` of the repository.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures")
        .join(name)
}

/// transformers' golden outputs for the llama-mha fixture (`golden/llama-mha.json`).
pub fn llama_mha_golden() -> Value {
    let text = std::fs::read_to_string(fixture("golden/llama-mha.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Starts the real server over a loaded engine (its model, draft, tokenizer and chat
/// template), as `kiln serve` does, on 127.0.0.1:0.
pub async fn start_engine(engine: Engine, cfg: SchedulerConfig, opts: ServerOptions) -> TestServer {
    let Engine {
        model,
        tokenizer,
        chat_template,
        draft,
        ..
    } = engine;
    let state = AppState::start(model, draft, Arc::new(tokenizer), chat_template, cfg, opts)
        .expect("starting the scheduler");
    start_state(state, Arc::new((Mutex::new(false), Condvar::new()))).await
}

pub async fn start_state(state: Arc<AppState>, gate: Arc<(Mutex<bool>, Condvar)>) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(kiln_server::serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    TestServer {
        base: format!("http://{addr}"),
        state,
        gate,
        shutdown: Some(tx),
        task,
    }
}

/// POSTs `body` as JSON: the status and the response body, which must be JSON.
pub async fn post_json(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, v)
}

/// Reads a whole SSE body into its `data:` payloads.
pub fn sse_payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {e:?}"))
                .to_string()
        })
        .collect()
}
