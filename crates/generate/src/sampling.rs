//! Choosing the next token from a row of logits: repetition penalty, then greedy or
//! temperature / top-k / top-p sampling with a per-sequence seeded generator (the same seed
//! gives the same tokens whether the sequence ran alone or in a batch).

use crate::{GenError, SamplingParams};

/// xoshiro256++ seeded through SplitMix64: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    /// A seed from the clock and a counter, for requests that give none.
    pub fn unseeded() -> Rng {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::seeded(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Checks a request's parameters (the numbers a client controls).
pub fn validate(p: &SamplingParams) -> Result<(), GenError> {
    let bad = |m: String| Err(GenError::InvalidArgument(m));
    if !p.temperature.is_finite() || p.temperature < 0.0 || p.temperature > 100.0 {
        return bad(format!("temperature must be between 0 and 100, got {}", p.temperature));
    }
    if !p.top_p.is_finite() || p.top_p <= 0.0 || p.top_p > 1.0 {
        return bad(format!("top_p must be in (0, 1], got {}", p.top_p));
    }
    if !p.repetition_penalty.is_finite() || p.repetition_penalty <= 0.0 || p.repetition_penalty > 100.0 {
        return bad(format!("repetition_penalty must be in (0, 100], got {}", p.repetition_penalty));
    }
    Ok(())
}

/// Per-sequence sampling state.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Tokens seen (prompt and generated), for the repetition penalty; empty when it is off.
    seen: Vec<bool>,
    /// Scratch for sampling, reused across steps.
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams, vocab: usize, prompt: &[u32]) -> Sampler {
        let rng = match params.seed {
            Some(seed) => Rng::seeded(seed),
            None => Rng::unseeded(),
        };
        let mut seen = Vec::new();
        if params.repetition_penalty != 1.0 {
            seen = vec![false; vocab];
            for &t in prompt {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
        }
        Sampler { params, rng, seen, scratch: Vec::new() }
    }

    /// Records a generated token (for the repetition penalty).
    pub fn observe(&mut self, token: u32) {
        if let Some(s) = self.seen.get_mut(token as usize) {
            *s = true;
        }
    }

    /// The next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let penalty = self.params.repetition_penalty;
        // CTRL / Hugging Face form: a seen token's positive logit is divided by the penalty,
        // a negative one multiplied.
        let adjusted = |i: usize, l: f32| -> f32 {
            if penalty != 1.0 && self.seen.get(i).copied().unwrap_or(false) {
                if l > 0.0 { l / penalty } else { l * penalty }
            } else {
                l
            }
        };
        if self.params.temperature == 0.0 || self.params.top_k == 1 {
            let mut best = 0usize;
            let mut best_l = f32::NEG_INFINITY;
            for (i, &l) in logits.iter().enumerate() {
                let l = adjusted(i, l);
                // NaN never wins; ties go to the lowest id.
                if l > best_l {
                    best = i;
                    best_l = l;
                }
            }
            return best as u32;
        }

        let t = self.params.temperature;
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (adjusted(i, l) / t, i as u32)),
        );
        if scratch.is_empty() {
            return 0;
        }
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k as usize;
        if k > 0 && k < scratch.len() {
            scratch.select_nth_unstable_by(k - 1, by_logit_desc);
            scratch.truncate(k);
        }
        scratch.sort_unstable_by(by_logit_desc);
        let max = scratch[0].0;
        let mut total = 0.0f64;
        for e in scratch.iter_mut() {
            e.0 = (e.0 - max).exp();
            total += e.0 as f64;
        }
        let mut keep = scratch.len();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0f64;
            for (i, e) in scratch.iter().enumerate() {
                cumulative += e.0 as f64 / total;
                if cumulative >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            total = scratch[..keep].iter().map(|e| e.0 as f64).sum();
        }
        let mut target = self.rng.next_f64() * total;
        for e in &scratch[..keep] {
            target -= e.0 as f64;
            if target < 0.0 {
                return e.1;
            }
        }
        scratch[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: u32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, seed: Some(seed), repetition_penalty: 1.0 }
    }

    #[test]
    fn greedy_takes_the_largest() {
        let mut s = Sampler::new(SamplingParams::default(), 4, &[]);
        assert_eq!(s.sample(&[0.1, 3.0, f32::NAN, 2.0]), 1);
    }

    #[test]
    fn repetition_penalty_moves_greedy_off_a_seen_token() {
        let p = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::default() };
        let mut s = Sampler::new(p, 3, &[1]);
        assert_eq!(s.sample(&[0.0, 3.0, 2.0]), 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [1.0, 0.5, 4.0, 3.9];
        for seed in 0..20 {
            assert_eq!(Sampler::new(params(1.0, 1, 1.0, seed), 4, &[]).sample(&logits), 2);
            assert_eq!(Sampler::new(params(1.0, 0, 1e-6, seed), 4, &[]).sample(&logits), 2);
        }
    }

    #[test]
    fn top_k_limits_the_choice_and_seed_repeats() {
        let logits = [1.0, 0.5, 4.0, 3.9];
        let draw = |seed| {
            let mut s = Sampler::new(params(5.0, 2, 1.0, seed), 4, &[]);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert!(a.iter().all(|&t| t == 2 || t == 3), "{a:?}");
        assert!(a.contains(&2) && a.contains(&3), "{a:?}");
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
    }
}
