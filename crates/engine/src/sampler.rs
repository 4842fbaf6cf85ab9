//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, and a
//! seeded random draw. Also the log-probabilities reported to the user.

use std::collections::HashMap;

/// How the next token is chosen. `temperature == 0` is greedy (argmax).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability sums to at least `top_p` (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` × the most likely one (0 = off).
    pub min_p: f32,
    /// llama.cpp-style: logits of tokens already seen are divided (if > 0) or multiplied by this (1 = off).
    pub repeat_penalty: f32,
    /// OpenAI-style: `logit -= presence_penalty` once a token has appeared.
    pub presence_penalty: f32,
    /// OpenAI-style: `logit -= frequency_penalty × count`.
    pub frequency_penalty: f32,
    /// Added to the logits of the given tokens before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!(
                "repeat_penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return Err("penalties must be finite numbers".into());
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and identical on every platform,
/// so a seed reproduces a sample anywhere.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `log_softmax(logits)[i]` for every i, computed in f64 for stable small values.
pub fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    out.clear();
    out.extend(logits.iter().map(|&v| (v as f64 - lse) as f32));
}

/// The `n` largest entries as `(index, value)`, largest first (ties by lower index).
pub fn top_n(values: &[f32], n: usize) -> Vec<(u32, f32)> {
    let n = n.min(values.len());
    if n == 0 {
        return Vec::new();
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &v) in values.iter().enumerate() {
        if best.len() == n && v <= best[n - 1].1 {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (i as u32, v));
        best.truncate(n);
    }
    best
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Sets the logits of the tokens not in `allowed` (see [`Sampler::sample_masked`]) to -inf.
/// Returns whether any token is allowed.
fn apply_mask(w: &mut [f32], allowed: &[u32]) -> bool {
    let mut any = false;
    for (i, chunk) in w.chunks_mut(32).enumerate() {
        let bits = allowed.get(i).copied().unwrap_or(0);
        if bits == u32::MAX && chunk.len() == 32 {
            any = true;
            continue;
        }
        for (j, v) in chunk.iter_mut().enumerate() {
            if bits & (1 << j) == 0 {
                *v = f32::NEG_INFINITY;
            } else {
                any = true;
            }
        }
    }
    any
}

/// Per-sequence sampling state: its parameters, its random stream and the token counts the
/// penalties look at.
#[derive(Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    counts: HashMap<u32, u32>,
    work: Vec<f32>,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            rng: Rng::new(params.seed),
            params,
            counts: HashMap::new(),
            work: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// Records a token for the penalties (prompt tokens count for repeat_penalty, as in llama.cpp).
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Chooses the next token from raw logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.sample_masked(logits, None)
    }

    /// Chooses the next token from raw logits among the tokens `allowed` (a bit set: token `i`
    /// is bit `i % 32` of word `i / 32`; tokens past its end are not allowed) when given. The
    /// others get a logit of -inf before anything else, so the penalties, temperature and
    /// truncations apply to the allowed tokens only, and greedy picks the most likely allowed
    /// token. With no allowed token at all, the most likely token is returned.
    pub fn sample_masked(&mut self, logits: &[f32], allowed: Option<&[u32]>) -> u32 {
        if let Some(tok) = self.prepare(logits, allowed) {
            return tok;
        }
        let c = &self.candidates;
        let total: f64 = c.iter().map(|e| e.1 as f64).sum();
        let mut r = self.rng.next_f64() * total;
        for e in c.iter() {
            r -= e.1 as f64;
            if r < 0.0 {
                return e.0;
            }
        }
        c[c.len() - 1].0
    }

    /// The distribution [`Sampler::sample`] draws from, after every transform (bias,
    /// penalties, temperature, top-k, top-p, min-p): `(token, probability)`, most likely first,
    /// probabilities summing to 1. Greedy sampling is the one argmax token with probability 1.
    /// Also returns how likely the most likely token is at temperature 1 after the penalties
    /// (a draft's confidence; for sampling, the first probability).
    pub fn distribution(&mut self, logits: &[f32]) -> (Vec<(u32, f64)>, f64) {
        if let Some(tok) = self.prepare(logits, None) {
            let w = &self.work;
            let max = w[tok as usize];
            let sum: f64 = w.iter().map(|&v| ((v - max) as f64).exp()).sum();
            return (vec![(tok, 1.0)], 1.0 / sum);
        }
        let total: f64 = self.candidates.iter().map(|e| e.1 as f64).sum();
        let dist: Vec<(u32, f64)> = self
            .candidates
            .iter()
            .map(|e| (e.0, e.1 as f64 / total))
            .collect();
        let top = dist[0].1;
        (dist, top)
    }

    /// Speculative sampling's verification of one drafted token (Leviathan et al. 2023; Chen et
    /// al. 2023): `draft` was drawn from the proposal `q` (`(token, probability)`; a point mass
    /// for prompt lookup or a greedy draft). With `p` the distribution [`Sampler::sample`] draws
    /// from for `logits`, the draft is kept with probability `min(1, p(draft) / q(draft))`;
    /// otherwise a token is drawn from `max(0, p − q)`, normalised. The token returned follows
    /// `p` exactly, whatever `q` is. Greedy: the argmax, kept when it is the draft. Returns the
    /// token and whether it is the draft, kept.
    pub fn verify(&mut self, logits: &[f32], draft: u32, q: &[(u32, f64)]) -> (u32, bool) {
        if let Some(tok) = self.prepare(logits, None) {
            return (tok, tok == draft);
        }
        let total: f64 = self.candidates.iter().map(|e| e.1 as f64).sum();
        let prob_q = |t: u32| q.iter().find(|e| e.0 == t).map_or(0.0, |e| e.1);
        let pd = self
            .candidates
            .iter()
            .find(|e| e.0 == draft)
            .map_or(0.0, |e| e.1 as f64 / total);
        let qd = prob_q(draft);
        let u = self.rng.next_f64();
        if qd > 0.0 && u * qd < pd {
            return (draft, true);
        }
        // The residual max(0, p − q) over p's support (outside it p is 0).
        let residual: Vec<(u32, f64)> = self
            .candidates
            .iter()
            .map(|e| (e.0, (e.1 as f64 / total - prob_q(e.0)).max(0.0)))
            .collect();
        let sum: f64 = residual.iter().map(|e| e.1).sum();
        let tok = if sum > 0.0 {
            draw(&residual, sum, self.rng.next_f64())
        } else {
            // p ≤ q everywhere means p = q, where a rejection has probability 0; only rounding
            // gets here. Draw from p.
            let p: Vec<(u32, f64)> = self.candidates.iter().map(|e| (e.0, e.1 as f64)).collect();
            draw(&p, total, self.rng.next_f64())
        };
        (tok, false)
    }

    /// Draws from a distribution given as `(token, probability)`, with this sampler's stream.
    pub fn draw(&mut self, dist: &[(u32, f64)]) -> u32 {
        let total = dist.iter().map(|e| e.1).sum();
        draw(dist, total, self.rng.next_f64())
    }

    /// This sampler's penalty counts replaced by `other`'s (a draft follows its target).
    pub fn copy_counts(&mut self, other: &Sampler) {
        self.counts.clone_from(&other.counts);
    }

    /// Applies bias and penalties (into `work`); greedy returns the argmax, otherwise the
    /// candidates (unnormalised weights, most likely first) are left in `candidates`.
    fn prepare(&mut self, logits: &[f32], allowed: Option<&[u32]>) -> Option<u32> {
        let p = &self.params;
        self.work.clear();
        self.work.extend_from_slice(logits);
        let w = &mut self.work;
        if let Some(bits) = allowed {
            if !apply_mask(w, bits) {
                return Some(argmax(logits));
            }
        }
        for &(tok, bias) in &p.logit_bias {
            if let Some(v) = w.get_mut(tok as usize) {
                *v += bias;
            }
        }
        for (&tok, &count) in &self.counts {
            let Some(v) = w.get_mut(tok as usize) else {
                continue;
            };
            if p.repeat_penalty != 1.0 {
                *v = if *v > 0.0 {
                    *v / p.repeat_penalty
                } else {
                    *v * p.repeat_penalty
                };
            }
            *v -= p.presence_penalty + p.frequency_penalty * count as f32;
        }
        if p.temperature == 0.0 {
            return Some(argmax(w));
        }

        // Candidates sorted by logit; temperature, then top-k, top-p and min-p on the
        // tempered distribution (the order of Meta's reference sampler, extended).
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            w.iter()
                .enumerate()
                .map(|(i, &v)| (i as u32, v / p.temperature)),
        );
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = c[0].1;
        let mut sum = 0.0f64;
        for e in c.iter_mut() {
            e.1 = (e.1 - max).exp();
            sum += e.1 as f64;
        }
        let mut keep = c.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0f64;
            for (i, e) in c.iter().enumerate() {
                // Meta: drop a token when the mass before it already exceeds top_p.
                if cum > p.top_p as f64 * sum {
                    keep = i;
                    break;
                }
                cum += e.1 as f64;
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * c[0].1;
            keep = keep.min(c.iter().take_while(|e| e.1 >= floor).count());
        }
        c.truncate(keep.max(1));
        None
    }
}

/// The entry of `dist` (weights summing to `total`) that `u ∈ [0, 1)` falls on.
fn draw(dist: &[(u32, f64)], total: f64, u: f64) -> u32 {
    let mut r = u * total;
    for e in dist {
        r -= e.1;
        if r < 0.0 {
            return e.0;
        }
    }
    // Rounding: the last token with any weight.
    dist.iter().rev().find(|e| e.1 > 0.0).unwrap_or(&dist[0]).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), 1);
    }

    #[test]
    fn same_seed_same_draws_and_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = |seed| SamplingParams {
            temperature: 1.0,
            seed,
            ..Default::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(params(seed));
            (0..40).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, -1.0];
        for params in [
            SamplingParams {
                temperature: 1.5,
                top_k: 1,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.5,
                top_p: 1e-6,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.5,
                min_p: 0.999,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params);
            for _ in 0..20 {
                assert_eq!(s.sample(&logits), 1);
            }
        }
    }

    #[test]
    fn top_k_restricts_support() {
        let logits = [3.0, 2.9, 2.8, 2.7, 2.6];
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 2,
            seed: 3,
            ..Default::default()
        });
        for _ in 0..200 {
            assert!(s.sample(&logits) < 2);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([0, ln 3]) = [0.25, 0.75].
        let logits = [0.0, 3f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: 11,
            ..Default::default()
        });
        let ones = (0..20_000).filter(|_| s.sample(&logits) == 1).count() as f64 / 20_000.0;
        assert!((ones - 0.75).abs() < 0.02, "{ones}");
    }

    #[test]
    fn penalties_change_greedy_choice() {
        let logits = [2.0, 1.9];
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            ..Default::default()
        });
        s.observe(0);
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 1.1,
            ..Default::default()
        });
        s.observe(0);
        assert_eq!(s.sample(&logits), 1); // 2.0 / 1.1 < 1.9
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 0.04,
            ..Default::default()
        });
        s.observe(0);
        assert_eq!(s.sample(&logits), 0); // 2.0 - 0.04 > 1.9
        s.observe(0);
        s.observe(0);
        assert_eq!(s.sample(&logits), 1); // 2.0 - 0.12 < 1.9
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(1, 5.0)],
            ..Default::default()
        });
        assert_eq!(s.sample(&logits), 1);
    }

    #[test]
    fn a_mask_limits_greedy_and_sampled_choices() {
        // 40 tokens: the mask spans two words; the best logit (token 3) is masked out.
        let logits: Vec<f32> = (0..40)
            .map(|i| if i == 3 { 9.0 } else { (i as f32).sin() })
            .collect();
        let allowed = [(1u32 << 5) | (1 << 20), 1 << (33 - 32)];
        let mut s = Sampler::new(SamplingParams::default());
        let best = [5usize, 20, 33]
            .into_iter()
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        assert_eq!(s.sample_masked(&logits, Some(&allowed)), best);
        assert_eq!(s.sample_masked(&logits, None), 3);
        let mut s = Sampler::new(SamplingParams {
            temperature: 2.0,
            seed: 5,
            ..Default::default()
        });
        for _ in 0..300 {
            assert!([5, 20, 33].contains(&s.sample_masked(&logits, Some(&allowed))));
        }
        // A mask that allows nothing falls back to the most likely token.
        assert_eq!(s.sample_masked(&logits, Some(&[0, 0])), 3);
    }

    #[test]
    fn log_softmax_and_top_n() {
        let mut out = Vec::new();
        log_softmax(&[1.0, 2.0, 3.0], &mut out);
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((out[2] as f64 - (3.0 - z)).abs() < 1e-6);
        assert_eq!(
            top_n(&[0.1, 0.5, 0.3, 0.5], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.3)]
        );
        assert_eq!(argmax(&[1.0, 4.0, 4.0]), 1);
    }
}
