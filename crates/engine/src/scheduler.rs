//! Continuous batching for the server: one engine thread owns the model and drives a
//! [`Batch`] (one batched forward pass per step); requests join and leave the running batch
//! between steps.
//!
//! Admission is bounded by `slots` (each with up to `context` positions); beyond it requests
//! wait in a queue, and beyond `max_queue` waiting requests [`Scheduler::submit`] refuses them.
//! Chunked prefill and the prefix cache are the [`Batch`]'s.
//!
//! Invariant: a request's result does not depend on its batch-mates or on when it was admitted:
//! it has its own KV cache, sampler and random stream, and the model computes rows
//! independently, so results equal [`crate::generate::generate`]'s (which runs the same step).
//!
//! No HTTP here: results go to a per-request callback ([`Request::sink`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_models::CausalLM;

pub use crate::batch::Event;
use crate::batch::{Batch, BatchConfig};
use crate::constraint::Grammars;
use crate::embed::{self, Pooling};
use crate::generate::GenerateParams;
use crate::sequence::validate_request;
pub use crate::sequence::Vocab;
use crate::EngineError;

/// How the engine loop batches.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences running at once (each owns a KV cache of up to `context` positions).
    pub slots: usize,
    /// Positions per sequence (prompt plus generated).
    pub context: usize,
    /// Requests allowed to wait for a slot; more are refused with [`SubmitError::QueueFull`].
    pub max_queue: usize,
    /// Prompt tokens prefilled per step, over all prefilling sequences.
    pub prefill_chunk: usize,
    /// Finished caches kept for prefix reuse (0 = off).
    pub prefix_cache: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            slots: 4,
            context: 4096,
            max_queue: 64,
            prefill_chunk: 256,
            prefix_cache: 4,
        }
    }
}

/// A tokenized prompt, what to generate, and where to send the events. The sink returns
/// `false` when nobody listens any more; the sequence is then cancelled.
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    pub sink: Box<dyn FnMut(Event) -> bool + Send>,
}

/// Returned by [`Scheduler::submit`]. Dropping it (or calling `cancel`) cancels the request;
/// its slot is freed before the next step.
pub struct Ticket {
    cancel: Arc<AtomicBool>,
}

impl Ticket {
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {queued} requests are already waiting")]
    QueueFull { queued: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Invalid(#[from] EngineError),
}

/// Buckets (seconds) of the time-to-first-token histogram.
pub const TTFT_BUCKETS: [f64; 11] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Counters the engine loop keeps; read with [`Scheduler::stats`].
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    draft_tokens: AtomicU64,
    draft_accepted: AtomicU64,
    steps: AtomicU64,
    busy_micros: AtomicU64,
    /// Requests submitted and not yet finished (queued + running).
    outstanding: AtomicUsize,
    /// Embedding jobs submitted and not yet answered.
    embeds_pending: AtomicUsize,
    running: AtomicUsize,
    ttft_micros_sum: AtomicU64,
    ttft_count: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    /// Generated tokens per second over the last window of about a second (f64 bits).
    recent_tps: AtomicU64,
}

/// A snapshot of the scheduler's counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub finished: u64,
    pub cancelled: u64,
    pub rejected: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Tokens drafted for speculative decoding and verified, and those the model kept.
    pub draft_tokens: u64,
    pub draft_accepted: u64,
    pub steps: u64,
    pub busy_seconds: f64,
    pub queued: usize,
    pub running: usize,
    pub slots: usize,
    pub ttft_sum_seconds: f64,
    pub ttft_count: u64,
    /// Cumulative counts per [`TTFT_BUCKETS`] entry.
    pub ttft_buckets: Vec<u64>,
    /// Generated tokens per second, recently (0 when idle).
    pub tokens_per_second: f64,
}

enum Msg {
    Submit(Box<Pending>),
    Embed(EmbedJob),
    Shutdown,
}

/// Where an embedding job's result goes.
pub type EmbedReply = Box<dyn FnOnce(Result<Vec<Vec<f32>>, EngineError>) + Send>;

/// Inputs to embed, run by the engine thread between steps (it owns the model).
struct EmbedJob {
    inputs: Vec<Vec<u32>>,
    pooling: Pooling,
    reply: EmbedReply,
    cancel: Arc<AtomicBool>,
}

struct Pending {
    req: Request,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

/// The handle to the engine loop. Shut it down with [`Scheduler::shutdown`], which lets every
/// submitted request finish first.
pub struct Scheduler {
    tx: Mutex<mpsc::Sender<Msg>>,
    counters: Arc<Counters>,
    closing: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    cfg: SchedulerConfig,
    vocab_size: usize,
    /// For compiling constraints in the submitting thread (shared with the batch).
    vocab: Arc<dyn Vocab>,
    grammars: Arc<Grammars>,
    eos: Vec<u32>,
}

impl Scheduler {
    /// Starts the engine loop on its own thread; it owns `model` from now on.
    pub fn start(
        model: Box<dyn CausalLM>,
        vocab: Arc<dyn Vocab>,
        cfg: SchedulerConfig,
    ) -> Scheduler {
        Scheduler::start_with_draft(model, None, vocab, cfg)
            .expect("no draft model, nothing to check")
    }

    /// [`Scheduler::start`] with a draft model for the requests that speculate (see
    /// [`crate::generate::Speculation`]); its vocabulary must be the model's
    /// ([`crate::check_draft_vocab`]; here only the vocabulary sizes are checked). The
    /// draft's logits may cover a prefix of the vocabulary ([`CausalLM::limit_logits`]).
    pub fn start_with_draft(
        model: Box<dyn CausalLM>,
        draft: Option<Arc<dyn CausalLM>>,
        vocab: Arc<dyn Vocab>,
        cfg: SchedulerConfig,
    ) -> Result<Scheduler, EngineError> {
        let cfg = SchedulerConfig {
            slots: cfg.slots.max(1),
            context: cfg
                .context
                .clamp(1, model.config().max_position_embeddings.max(1)),
            prefill_chunk: cfg.prefill_chunk.max(1),
            ..cfg
        };
        let vocab_size = model.config().vocab_size;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let mut batch = Batch::new(
            model.as_ref(),
            vocab.as_ref(),
            BatchConfig {
                context: cfg.context,
                prefill_chunk: cfg.prefill_chunk,
                prefix_cache: cfg.prefix_cache,
            },
        );
        batch.set_draft(model.as_ref(), draft)?;
        let grammars = batch.grammars().clone();
        let eos = batch.eos().to_vec();
        let mut engine = EngineLoop {
            model,
            vocab: vocab.clone(),
            slots: cfg.slots,
            counters: counters.clone(),
            rx,
            queue: VecDeque::new(),
            embeds: VecDeque::new(),
            context: cfg.context,
            prefill_chunk: cfg.prefill_chunk,
            batch,
            closing: false,
            window_start: Instant::now(),
            window_tokens: 0,
        };
        let thread = std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn(move || engine.run())
            .expect("spawning the engine thread");
        Ok(Scheduler {
            tx: Mutex::new(tx),
            counters,
            closing: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            cfg,
            vocab_size,
            vocab,
            grammars,
            eos,
        })
    }

    /// Compiles the request's constraint (see [`Batch::compile`]); [`Scheduler::submit`]
    /// compiles what is not compiled yet, in the calling thread. Compiling once before
    /// submitting `n` copies of a request compiles it once.
    pub fn compile(&self, params: &mut GenerateParams) -> Result<(), EngineError> {
        match params.constraint.as_mut() {
            Some(c) => self
                .grammars
                .compile(self.vocab.as_ref(), self.vocab_size, &self.eos, c),
            None => Ok(()),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Checks a request and queues it. Errors: the prompt is empty, too long for the context,
    /// has an id outside the vocabulary or bad sampling parameters (`Invalid`); the queue is
    /// full; the scheduler is shutting down.
    pub fn submit(&self, mut req: Request) -> Result<Ticket, SubmitError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        self.validate(&req)?;
        self.compile(&mut req.params)?;
        let limit = self.cfg.slots + self.cfg.max_queue;
        let before = self.counters.outstanding.fetch_add(1, Ordering::SeqCst);
        if before >= limit {
            self.counters.outstanding.fetch_sub(1, Ordering::SeqCst);
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull {
                queued: before.saturating_sub(self.counters.running.load(Ordering::Relaxed)),
            });
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        let pending = Pending {
            req,
            cancel: cancel.clone(),
            submitted: Instant::now(),
        };
        let sent = self
            .tx
            .lock()
            .map_err(|_| SubmitError::ShuttingDown)?
            .send(Msg::Submit(Box::new(pending)));
        if sent.is_err() {
            self.counters.outstanding.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(Ticket { cancel })
    }

    /// Queues inputs to embed ([`embed::embed`], each within the context); `reply` gets the
    /// vectors in input order, or the error. The engine thread runs a job whole between two
    /// steps of the running batch. Errors as [`Scheduler::submit`]'s; at most `max_queue` jobs
    /// wait. Dropping the ticket before the job starts skips it.
    pub fn embed(
        &self,
        inputs: Vec<Vec<u32>>,
        pooling: Pooling,
        reply: EmbedReply,
    ) -> Result<Ticket, SubmitError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if inputs.is_empty() {
            return Err(EngineError::Invalid("no inputs to embed".into()).into());
        }
        for t in &inputs {
            embed::validate_input(t, self.cfg.context, self.vocab_size)?;
        }
        let before = self.counters.embeds_pending.fetch_add(1, Ordering::SeqCst);
        if before >= self.cfg.max_queue.max(1) {
            self.counters.embeds_pending.fetch_sub(1, Ordering::SeqCst);
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull { queued: before });
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let job = EmbedJob {
            inputs,
            pooling,
            reply,
            cancel: cancel.clone(),
        };
        let sent = self
            .tx
            .lock()
            .map_err(|_| SubmitError::ShuttingDown)?
            .send(Msg::Embed(job));
        if sent.is_err() {
            self.counters.embeds_pending.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(Ticket { cancel })
    }

    fn validate(&self, req: &Request) -> Result<(), EngineError> {
        validate_request(&req.prompt, &req.params, self.cfg.context, self.vocab_size)
    }

    /// Requests queued or running.
    pub fn outstanding(&self) -> usize {
        self.counters.outstanding.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let running = c.running.load(Ordering::Relaxed);
        let outstanding = c.outstanding.load(Ordering::Relaxed);
        let tps = f64::from_bits(c.recent_tps.load(Ordering::Relaxed));
        Stats {
            requests: c.requests.load(Ordering::Relaxed),
            finished: c.finished.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            cached_prompt_tokens: c.cached_prompt_tokens.load(Ordering::Relaxed),
            generated_tokens: c.generated_tokens.load(Ordering::Relaxed),
            draft_tokens: c.draft_tokens.load(Ordering::Relaxed),
            draft_accepted: c.draft_accepted.load(Ordering::Relaxed),
            steps: c.steps.load(Ordering::Relaxed),
            busy_seconds: c.busy_micros.load(Ordering::Relaxed) as f64 / 1e6,
            queued: outstanding.saturating_sub(running),
            running,
            slots: self.cfg.slots,
            ttft_sum_seconds: c.ttft_micros_sum.load(Ordering::Relaxed) as f64 / 1e6,
            ttft_count: c.ttft_count.load(Ordering::Relaxed),
            ttft_buckets: c
                .ttft_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            tokens_per_second: if running == 0 { 0.0 } else { tps },
        }
    }

    /// Stops accepting requests, lets every submitted one finish, and waits for the engine
    /// thread to end. Idempotent.
    pub fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Msg::Shutdown);
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A running request, as the engine loop knows it (the [`Batch`] has the rest).
struct Client {
    sink: Box<dyn FnMut(Event) -> bool + Send>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
    first_token: bool,
}

impl Client {
    fn send(&mut self, e: Event) {
        if !(self.sink)(e) {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

struct EngineLoop {
    model: Box<dyn CausalLM>,
    vocab: Arc<dyn Vocab>,
    slots: usize,
    counters: Arc<Counters>,
    rx: mpsc::Receiver<Msg>,
    queue: VecDeque<Pending>,
    embeds: VecDeque<EmbedJob>,
    context: usize,
    prefill_chunk: usize,
    batch: Batch<Client>,
    closing: bool,
    window_start: Instant,
    window_tokens: u64,
}

impl EngineLoop {
    fn run(&mut self) {
        loop {
            // Take new messages; block only when there is nothing to do.
            let idle = self.batch.is_empty() && self.queue.is_empty() && self.embeds.is_empty();
            if idle && self.closing {
                break;
            }
            if idle {
                match self.rx.recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m);
            }
            self.drop_cancelled();
            self.admit();
            if let Some(job) = self.embeds.pop_front() {
                self.run_embed(job);
            }
            if self.batch.is_empty() {
                continue;
            }
            // A panic inside the model fails the sequences of that step, not the server.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            if let Err(panic) = stepped {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                self.fail_running(&format!("internal error in the engine: {what}"));
            }
        }
    }

    /// Ends every running sequence with an error (their caches are not kept).
    fn fail_running(&mut self, msg: &str) {
        for mut c in self.batch.clear() {
            self.finish_request(true);
            self.counters.running.fetch_sub(1, Ordering::Relaxed);
            c.send(Event::Error(msg.to_string()));
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Submit(p) => self.queue.push_back(*p),
            Msg::Embed(j) => self.embeds.push_back(j),
            Msg::Shutdown => self.closing = true,
        }
    }

    /// Runs one embedding job whole (a panic in the model fails the job, not the engine).
    fn run_embed(&mut self, job: EmbedJob) {
        self.counters.embeds_pending.fetch_sub(1, Ordering::SeqCst);
        if job.cancel.load(Ordering::Relaxed) {
            return;
        }
        let t0 = Instant::now();
        let (model, pooling) = (self.model.as_ref(), job.pooling);
        let (context, chunk) = (self.context, self.prefill_chunk);
        let inputs = &job.inputs;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inputs
                .iter()
                .map(|t| embed::embed(model, t, pooling, context, chunk))
                .collect::<Result<Vec<_>, _>>()
        }))
        .unwrap_or_else(|_| {
            Err(EngineError::Invalid(
                "internal error in the engine while embedding".into(),
            ))
        });
        self.counters
            .busy_micros
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        (job.reply)(result);
    }

    fn finish_request(&self, cancelled: bool) {
        self.counters.outstanding.fetch_sub(1, Ordering::SeqCst);
        let c = if cancelled {
            &self.counters.cancelled
        } else {
            &self.counters.finished
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn drop_cancelled(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|p| !p.cancel.load(Ordering::Relaxed));
        for _ in self.queue.len()..before {
            self.finish_request(true);
        }
        for _ in self.batch.remove_where(Client::cancelled) {
            self.finish_request(true);
            self.counters.running.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn admit(&mut self) {
        while self.batch.len() < self.slots {
            let Some(Pending {
                req,
                cancel,
                submitted,
            }) = self.queue.pop_front()
            else {
                break;
            };
            let mut client = Client {
                sink: req.sink,
                cancel,
                submitted,
                first_token: false,
            };
            // `submit` checked the request against the same limits; this only keeps a sink
            // from being dropped unanswered should they ever differ.
            if let Err(e) = self.batch.validate(&req.prompt, &req.params) {
                self.finish_request(false);
                client.send(Event::Error(e.to_string()));
                continue;
            }
            let n = req.prompt.len();
            let cached = self
                .batch
                .add(
                    self.model.as_ref(),
                    self.vocab.as_ref(),
                    req.prompt,
                    req.params,
                    client,
                )
                .expect("validated above");
            let c = &self.counters;
            c.running.fetch_add(1, Ordering::Relaxed);
            c.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
            c.cached_prompt_tokens
                .fetch_add(cached as u64, Ordering::Relaxed);
        }
    }

    fn step(&mut self) {
        let t0 = Instant::now();
        let counters = &self.counters;
        let result = self.batch.step(
            self.model.as_ref(),
            self.vocab.as_ref(),
            &mut |client, event| {
                if !client.first_token {
                    client.first_token = true;
                    record_ttft(counters, client.submitted.elapsed());
                }
                client.send(event);
            },
        );
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                // Nothing sensible can continue: fail every sequence of the batch.
                self.fail_running(&format!("model error: {e}"));
                return;
            }
        };
        // Counters first, so that a client who has its answer sees them updated.
        let c = &self.counters;
        c.draft_tokens
            .fetch_add(report.drafted as u64, Ordering::Relaxed);
        c.draft_accepted
            .fetch_add(report.accepted as u64, Ordering::Relaxed);
        for f in report.finished {
            self.finish_request(false);
            self.counters.running.fetch_sub(1, Ordering::Relaxed);
            let mut client = f.tag;
            client.send(Event::Done {
                completion: f.completion,
                cached_tokens: f.cached_tokens,
            });
        }

        let generated = report.generated as u64;
        let c = &self.counters;
        c.steps.fetch_add(1, Ordering::Relaxed);
        c.generated_tokens.fetch_add(generated, Ordering::Relaxed);
        c.busy_micros
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.window_tokens += generated;
        let w = self.window_start.elapsed();
        if w >= Duration::from_secs(1) {
            let tps = self.window_tokens as f64 / w.as_secs_f64();
            c.recent_tps.store(tps.to_bits(), Ordering::Relaxed);
            self.window_start = Instant::now();
            self.window_tokens = 0;
        }
    }
}

fn record_ttft(c: &Counters, ttft: Duration) {
    c.ttft_micros_sum
        .fetch_add(ttft.as_micros() as u64, Ordering::Relaxed);
    c.ttft_count.fetch_add(1, Ordering::Relaxed);
    let secs = ttft.as_secs_f64();
    for (b, &le) in c.ttft_buckets.iter().zip(TTFT_BUCKETS.iter()) {
        if secs <= le {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Completion, FinishReason};
    use crate::sampler::log_softmax;
    use kiln_formats::{Arch, ModelConfig};
    use kiln_kernels::ops::RopeStyle;
    use kiln_models::ModelError;
    use kiln_models::{Logits, SeqInput};
    use std::sync::Condvar;

    const VOCAB: usize = 24;
    const EOS: u32 = 23;

    /// A model whose logits at a position are a hash of every token up to it, read back from the
    /// KV cache: wrong positions, a wrong reused prefix or a mixed-up batch all change them.
    struct HashModel {
        cfg: ModelConfig,
        /// While true, `forward` waits (lets a test fill the queue deterministically).
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    fn config(max_pos: usize) -> ModelConfig {
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

    fn hash_logits(history: &[u32]) -> Vec<f32> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &t in history {
            h = (h ^ (t as u64 + 1)).wrapping_mul(0x0100_0000_01b3);
        }
        (0..VOCAB as u64)
            .map(|v| {
                let x =
                    (h ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let logit = (x >> 40) as f32 / (1u64 << 24) as f32 * 6.0;
                // EOS is unlikely, so sequences mostly run to their budget.
                if v as u32 == EOS {
                    logit - 4.0
                } else {
                    logit
                }
            })
            .collect()
    }

    impl CausalLM for HashModel {
        fn config(&self) -> &ModelConfig {
            &self.cfg
        }
        fn forward(
            &self,
            batch: &mut [SeqInput<'_>],
            logits: &mut Vec<f32>,
        ) -> Result<(), ModelError> {
            {
                let (m, cv) = &*self.gate;
                let mut closed = m.lock().unwrap();
                while *closed {
                    closed = cv.wait(closed).unwrap();
                }
            }
            kiln_models::layers::prepare_batch(batch, VOCAB, self.cfg.max_position_embeddings)?;
            if batch
                .iter()
                .any(|s| s.cache.is_empty() && s.tokens.starts_with(&[1, 22]))
            {
                panic!("poisoned token");
            }
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
        fn n_threads(&self) -> usize {
            1
        }
    }

    /// Token v is the letter `a + v`; EOS has no text.
    struct Letters;
    impl Vocab for Letters {
        fn encode(&self, text: &str, _add_special: bool) -> Result<Vec<u32>, String> {
            Ok(text.bytes().map(|b| (b - b'a') as u32).collect())
        }
        fn decode(&self, ids: &[u32], _skip: bool) -> String {
            ids.iter()
                .flat_map(|&t| self.token_bytes(t))
                .map(char::from)
                .collect()
        }
        fn token_bytes(&self, id: u32) -> Vec<u8> {
            if id == EOS {
                vec![]
            } else {
                vec![b'a' + id as u8]
            }
        }
        fn eos_ids(&self) -> Vec<u32> {
            vec![EOS]
        }
        fn bos_id(&self) -> Option<u32> {
            None
        }
    }

    fn start(cfg: SchedulerConfig) -> (Scheduler, Arc<(Mutex<bool>, Condvar)>) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let model = HashModel {
            cfg: config(64),
            gate: gate.clone(),
        };
        (
            Scheduler::start(Box::new(model), Arc::new(Letters), cfg),
            gate,
        )
    }

    fn set_gate(gate: &(Mutex<bool>, Condvar), closed: bool) {
        *gate.0.lock().unwrap() = closed;
        gate.1.notify_all();
    }

    /// Greedy generation by full recomputation, without any cache.
    fn reference_greedy(prompt: &[u32], max_tokens: usize, context: usize) -> Vec<u32> {
        let mut hist = prompt.to_vec();
        let mut out = Vec::new();
        while out.len() < max_tokens {
            let t = crate::sampler::argmax(&hash_logits(&hist));
            out.push(t);
            hist.push(t);
            if t == EOS || hist.len() >= context {
                break;
            }
        }
        out
    }

    type Outcome = mpsc::Receiver<Event>;

    fn submit(s: &Scheduler, prompt: Vec<u32>, params: GenerateParams) -> (Ticket, Outcome) {
        let (tx, rx) = mpsc::channel();
        let t = s
            .submit(Request {
                prompt,
                params,
                sink: Box::new(move |e| tx.send(e).is_ok()),
            })
            .expect("submit");
        (t, rx)
    }

    /// Waits for the end of a request; returns its streamed text and its completion.
    fn wait(rx: &Outcome) -> (String, Completion, usize) {
        let mut text = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)).expect("event") {
                Event::Token { text: t, .. } => text.push_str(&t),
                Event::Prompt { .. } => {}
                Event::Done {
                    completion,
                    cached_tokens,
                } => return (text, completion, cached_tokens),
                Event::Error(e) => panic!("{e}"),
            }
        }
    }

    fn prompt(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| (i * 7 + seed * 3) % 20).collect()
    }

    #[test]
    fn concurrent_greedy_equals_full_recompute() {
        let (s, _) = start(SchedulerConfig {
            slots: 3,
            context: 64,
            max_queue: 64,
            prefill_chunk: 5,
            prefix_cache: 2,
        });
        let params = GenerateParams {
            max_tokens: 12,
            ..Default::default()
        };
        let mut prompts: Vec<Vec<u32>> = (0..12)
            .map(|i| prompt(i, 1 + (i as usize * 5) % 37))
            .collect();
        // Shared prefixes, so the prefix cache is used.
        let mut shared = prompts[5].clone();
        shared.extend([1, 2, 3]);
        prompts.push(shared);
        prompts.push(prompts[5].clone());
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| submit(&s, p.clone(), params.clone()))
            .collect();
        for (p, (_t, rx)) in prompts.iter().zip(&handles) {
            let (text, c, _) = wait(rx);
            let expect = reference_greedy(p, 12, 64);
            assert_eq!(c.token_ids, expect, "prompt {p:?}");
            assert_eq!(c.prompt_token_ids, *p);
            assert_eq!(text, c.text);
        }
        s.shutdown();
        let st = s.stats();
        assert_eq!(st.finished, 14);
        assert_eq!(st.running + st.queued, 0);
    }

    #[test]
    fn prefix_cache_reuses_and_matches() {
        let (s, _) = start(SchedulerConfig {
            slots: 1,
            context: 64,
            prefill_chunk: 4,
            prefix_cache: 4,
            ..Default::default()
        });
        let params = GenerateParams {
            max_tokens: 5,
            ignore_eos: true,
            ..Default::default()
        };
        let a = prompt(1, 20);
        let (_t, rx) = submit(&s, a.clone(), params.clone());
        let (_, first, cached) = wait(&rx);
        assert_eq!(cached, 0);
        // The whole first prompt plus what it generated (but the last token) is cached.
        let mut c = a.clone();
        c.extend(&first.token_ids);
        let (_t, rx) = submit(&s, c.clone(), params.clone());
        let (_, second, cached) = wait(&rx);
        assert_eq!(cached, 20 + 4);
        assert_eq!(second.token_ids, reference_greedy(&c, 5, 64));
        // A prompt that shares only part of it.
        let mut b = a[..15].to_vec();
        b.extend([9, 9, 9]);
        let (_t, rx) = submit(&s, b.clone(), params.clone());
        let (_, third, cached) = wait(&rx);
        assert_eq!(cached, 15);
        assert_eq!(third.token_ids, reference_greedy(&b, 5, 64));
        assert_eq!(s.stats().cached_prompt_tokens, 15 + 24);
    }

    #[test]
    fn seeded_sampling_does_not_depend_on_batch_mates() {
        let params = GenerateParams {
            max_tokens: 16,
            ignore_eos: true,
            sampling: crate::SamplingParams {
                temperature: 1.0,
                seed: 42,
                ..Default::default()
            },
            ..Default::default()
        };
        let (s, _) = start(SchedulerConfig {
            slots: 4,
            context: 64,
            prefill_chunk: 3,
            ..Default::default()
        });
        let (_t, rx) = submit(&s, prompt(2, 9), params.clone());
        let alone = wait(&rx).1.token_ids;
        let others: Vec<_> = (0..3)
            .map(|i| {
                let mut p = params.clone();
                p.sampling.seed = i;
                submit(&s, prompt(i as u32, 4 + i as usize), p)
            })
            .collect();
        let (_t, rx) = submit(&s, prompt(2, 9), params.clone());
        let together = wait(&rx).1.token_ids;
        for (_t, rx) in &others {
            wait(rx);
        }
        assert_eq!(alone, together);
        let mut p = params.clone();
        p.sampling.seed = 43;
        let (_t, rx) = submit(&s, prompt(2, 9), p);
        assert_ne!(wait(&rx).1.token_ids, alone);
    }

    #[test]
    fn echo_logprobs_are_the_prompt_log_softmax() {
        let (s, _) = start(SchedulerConfig {
            slots: 2,
            context: 64,
            prefill_chunk: 4,
            ..Default::default()
        });
        let p = prompt(3, 11);
        let (_t, rx) = submit(
            &s,
            p.clone(),
            GenerateParams {
                max_tokens: 3,
                echo: true,
                logprobs: Some(2),
                ..Default::default()
            },
        );
        let (_, c, _) = wait(&rx);
        let plp = c.prompt_logprobs.expect("prompt logprobs");
        assert_eq!(plp.len(), p.len());
        assert_eq!(plp[0].logprob, None);
        assert_eq!(c.prompt_text, Letters.decode(&p, true));
        let mut lp = Vec::new();
        for i in 1..p.len() {
            log_softmax(&hash_logits(&p[..i]), &mut lp);
            assert_eq!(plp[i].id, p[i]);
            assert!((plp[i].logprob.unwrap() - lp[p[i] as usize]).abs() < 1e-6);
            assert_eq!(plp[i].top.len(), 2);
            assert_eq!(plp[i].text_offset, i);
        }
        let gen = c.logprobs.expect("logprobs");
        assert_eq!(gen.len(), c.token_ids.len());
        assert_eq!(gen[0].text_offset, p.len());
    }

    #[test]
    fn stop_string_cuts_text_and_ends() {
        let (s, _) = start(SchedulerConfig {
            context: 64,
            ..Default::default()
        });
        let p = prompt(4, 6);
        let full = reference_greedy(&p, 10, 64);
        let text = Letters.decode(&full, true);
        let stop = text[3..5].to_string();
        let cut = &text[..text.find(&stop).unwrap()];
        let (_t, rx) = submit(
            &s,
            p,
            GenerateParams {
                max_tokens: 10,
                stop: vec![stop],
                ..Default::default()
            },
        );
        let (streamed, c, _) = wait(&rx);
        assert_eq!(c.text, cut);
        assert_eq!(streamed, cut);
        assert_eq!(c.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn queue_limit_cancel_and_drain() {
        let (s, gate) = start(SchedulerConfig {
            slots: 1,
            context: 64,
            max_queue: 1,
            prefill_chunk: 8,
            prefix_cache: 0,
        });
        set_gate(&gate, true);
        let long = GenerateParams {
            max_tokens: 40,
            ignore_eos: true,
            ..Default::default()
        };
        let (a, rx_a) = submit(&s, prompt(1, 3), long.clone());
        let (_b, rx_b) = submit(&s, prompt(2, 3), long.clone());
        let refused = s.submit(Request {
            prompt: prompt(3, 3),
            params: long.clone(),
            sink: Box::new(|_| true),
        });
        assert!(matches!(refused, Err(SubmitError::QueueFull { .. })));
        // Cancel the first while the engine is held (running or still queued); the other
        // then gets the slot.
        drop(a);
        set_gate(&gate, false);
        let (_, c, _) = wait(&rx_b);
        assert_eq!(c.token_ids.len(), 40);
        // A's sink saw no Done.
        while let Ok(e) = rx_a.try_recv() {
            assert!(matches!(e, Event::Token { .. }), "{e:?}");
        }
        assert_eq!(s.stats().cancelled, 1);
        // A sink that stops listening cancels too.
        set_gate(&gate, true);
        let (_t, rx) = submit(&s, prompt(5, 3), long.clone());
        drop(rx);
        set_gate(&gate, false);
        while s.outstanding() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Shutdown drains what was submitted.
        let pending: Vec<_> = (0..2)
            .map(|i| submit(&s, prompt(i, 4), long.clone()))
            .collect();
        s.shutdown();
        for (_t, rx) in &pending {
            assert_eq!(wait(rx).1.token_ids.len(), 40);
        }
        assert!(matches!(
            s.submit(Request {
                prompt: vec![1],
                params: long,
                sink: Box::new(|_| true)
            }),
            Err(SubmitError::ShuttingDown)
        ));
        assert_eq!(s.stats().cancelled, 2);
    }

    #[test]
    fn a_panicking_model_fails_the_batch_not_the_engine() {
        let (s, _) = start(SchedulerConfig {
            context: 64,
            ..Default::default()
        });
        // A prompt starting with [1, 22] makes the hash model panic.
        let (_t, rx) = submit(&s, vec![1, 22, 3], GenerateParams::default());
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Event::Error(e) => assert!(e.contains("poisoned token"), "{e}"),
            e => panic!("{e:?}"),
        }
        let params = GenerateParams {
            max_tokens: 8,
            ..Default::default()
        };
        let (_t, rx) = submit(&s, vec![1, 2, 3], params);
        let (_, c, _) = wait(&rx);
        assert_eq!(c.token_ids, reference_greedy(&[1, 2, 3], 8, 64));
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn bad_requests_are_refused() {
        let (s, _) = start(SchedulerConfig {
            context: 16,
            ..Default::default()
        });
        let try_submit = |prompt: Vec<u32>| {
            s.submit(Request {
                prompt,
                params: GenerateParams::default(),
                sink: Box::new(|_| true),
            })
            .err()
            .map(|e| e.to_string())
        };
        assert!(try_submit(vec![]).unwrap().contains("empty"));
        let e = try_submit(vec![1; 17]).unwrap();
        assert!(e.contains("17") && e.contains("16"), "{e}");
        assert!(try_submit(vec![VOCAB as u32])
            .unwrap()
            .contains("vocabulary"));
        // A prompt filling the context ends at once with "length".
        let (_t, rx) = submit(&s, vec![1; 16], GenerateParams::default());
        let (_, c, _) = wait(&rx);
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert!(c.token_ids.is_empty());
    }
}
