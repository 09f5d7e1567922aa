//! The engine thread: admission from the queue, prefill, the padded batch and its cache, one
//! decode step for every running sequence, sampling and events.
//!
//! The batch's cache is `[batch, kv_heads, past_len, head_size]` per layer with LEFT padding:
//! a sequence's valid positions are the last `cache_len` columns, the attention mask is 0 on
//! the padding, and positions are counted per sequence. While the batch's members do not
//! change, each step's `present` outputs are fed back as the next `past` inputs as they are
//! (moved, not copied); when a sequence joins or leaves the batch is rebuilt once, with the
//! columns that are padding for every row trimmed.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use ort::value::{DynValue, Tensor};
use tokio::sync::mpsc::UnboundedSender;

use crate::model::{Cache, Decoder, StepInput, to_host};
use crate::sampling::Sampler;
use crate::text::{Detokenizer, StopGate, TextCodec};
use crate::{EngineStats, FinishReason, GenError, GenEvent, SamplingParams};

/// What the caller's thread and the engine thread share.
pub(crate) struct Shared {
    state: Mutex<QueueState>,
    wake: Condvar,
}

pub(crate) struct QueueState {
    pub waiting: VecDeque<Pending>,
    /// The last `Arc<Engine>` is gone: finish what was admitted, then stop.
    pub shutdown: bool,
    pub stats: EngineStats,
}

impl Shared {
    pub fn new(kv_budget_bytes: u64) -> Shared {
        Shared {
            state: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                shutdown: false,
                stats: EngineStats { kv_budget_bytes, ..EngineStats::default() },
            }),
            wake: Condvar::new(),
        }
    }

    /// A panic elsewhere cannot leave the queue inconsistent (every update is one push or
    /// pop), so a poisoned lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn notify(&self) {
        self.wake.notify_one();
    }
}

/// An admitted request waiting for a slot.
pub(crate) struct Pending {
    pub prompt: Vec<u32>,
    /// Most tokens it may generate (max_tokens clamped to the context).
    pub max_new: usize,
    /// KV-cache tokens reserved for it (prompt + max_new).
    pub reserve: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub deadline: Option<Instant>,
    pub tx: UnboundedSender<GenEvent>,
    pub cancel: Arc<AtomicBool>,
    /// The generation's span (a child of the caller's span at submit): the engine's events
    /// for this sequence (admitted, first token, each token at trace level, end) go in it.
    pub span: tracing::Span,
}

impl Pending {
    /// Why it should end now without running, if it should.
    fn expired(&self, now: Instant) -> Option<FinishReason> {
        if self.cancel.load(Ordering::Relaxed) || self.tx.is_closed() {
            Some(FinishReason::Cancelled)
        } else if self.deadline.is_some_and(|d| now >= d) {
            Some(FinishReason::Deadline)
        } else {
            None
        }
    }
}

/// What the engine thread needs besides the queue.
pub(crate) struct EngineParts {
    pub decoder: Decoder,
    pub codec: Arc<TextCodec>,
    pub max_batch: usize,
    pub kv_budget_bytes: u64,
    pub kv_bytes_per_token: u64,
}

/// One running sequence.
struct Seq {
    request: Pending,
    prompt_len: usize,
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    generated: usize,
    /// Valid cache positions (the last `cache_len` columns of its batch row).
    cache_len: usize,
    /// The token to feed at the next step.
    last: u32,
    sampler: Sampler,
    detok: Detokenizer,
    gate: StopGate,
    done: bool,
}

impl Seq {
    fn new(request: Pending, vocab: usize) -> Seq {
        let sampler = Sampler::new(request.sampling.clone(), vocab, &request.prompt);
        let gate = StopGate::new(request.stop.clone());
        Seq {
            prompt_len: request.prompt.len(),
            tokens: request.prompt.clone(),
            detok: Detokenizer::new(request.prompt.len()),
            generated: 0,
            cache_len: 0,
            last: 0,
            sampler,
            gate,
            done: false,
            request,
        }
    }

    fn send(&mut self, event: GenEvent) {
        if self.request.tx.send(event).is_err() {
            // The receiver is gone: the caller dropped its Generation.
            self.done = true;
        }
    }

    fn finish(&mut self, reason: FinishReason) {
        if !self.done {
            let span = &self.request.span;
            span.record("finish_reason", reason.as_str());
            span.record("generated_tokens", self.generated);
            tracing::debug!(parent: span, reason = reason.as_str(), generated = self.generated, "generation finished");
            let event = GenEvent::Finished {
                reason,
                prompt_tokens: self.prompt_len as u32,
                generated_tokens: self.generated as u32,
            };
            let _ = self.request.tx.send(event);
            self.done = true;
        }
    }

    fn fail(&mut self, error: GenError) {
        if !self.done {
            self.request.span.record("finish_reason", "failed");
            tracing::warn!(parent: &self.request.span, error = %error, "generation failed");
            let _ = self.request.tx.send(GenEvent::Failed(error));
            self.done = true;
        }
    }

    /// Takes a sampled token: its text (held back while it may begin a stop string) goes out
    /// as one `Token` event, then `Finished` if the sequence ends here.
    fn accept(&mut self, token: u32, codec: &TextCodec, eos: &[u32]) {
        self.generated += 1;
        self.sampler.observe(token);
        let is_stop_id =
            (!self.request.ignore_eos && eos.contains(&token)) || self.request.stop_ids.contains(&token);
        if is_stop_id {
            // The stop token's own text is not part of the output.
            let rest = self.detok.flush(codec, &self.tokens);
            let (mut text, stopped) = self.gate.push(&rest);
            if !stopped {
                text.push_str(&self.gate.flush());
            }
            self.tokens.push(token);
            self.send(GenEvent::Token { id: token, text });
            self.finish(FinishReason::Stop);
            return;
        }
        self.tokens.push(token);
        self.last = token;
        let chunk = self.detok.next(codec, &self.tokens);
        let (mut text, stopped) = self.gate.push(&chunk);
        if stopped {
            self.send(GenEvent::Token { id: token, text });
            self.finish(FinishReason::Stop);
            return;
        }
        if self.generated >= self.request.max_new {
            let rest = self.detok.flush(codec, &self.tokens);
            let (more, stopped) = self.gate.push(&rest);
            text.push_str(&more);
            if !stopped {
                text.push_str(&self.gate.flush());
            }
            self.send(GenEvent::Token { id: token, text });
            self.finish(if stopped { FinishReason::Stop } else { FinishReason::Length });
            return;
        }
        self.send(GenEvent::Token { id: token, text });
    }
}

/// The engine thread's own state.
struct Batch {
    /// In batch-row order; finished ones stay until the next rebuild.
    seqs: Vec<Seq>,
    /// One tensor per layer and kind (None while the batch is empty).
    cache: Option<Cache>,
    past_len: usize,
    /// Admitted this iteration, being prefilled (kept here so a panic can fail them too).
    joining: Vec<(Seq, Option<Cache>)>,
    prompt_tokens_total: u64,
    generated_tokens_total: u64,
}

/// The engine thread's body: runs until shutdown with nothing admitted left.
pub(crate) fn engine_task(shared: Arc<Shared>, mut parts: EngineParts, eos: Vec<u32>) {
    let mut batch = Batch {
        seqs: Vec::new(),
        cache: None,
        past_len: 0,
        joining: Vec::new(),
        prompt_tokens_total: 0,
        generated_tokens_total: 0,
    };
    loop {
        let Some(admitted) = next_work(&shared, &parts, &batch) else {
            break;
        };
        let step =
            std::panic::catch_unwind(AssertUnwindSafe(|| iteration(&mut parts, &mut batch, admitted, &eos)));
        if let Err(e) = step {
            let what = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            tracing::error!(error = %what, "generation step panicked; failing the batch");
            fail_all(&mut batch, GenError::Internal(format!("the generation step failed: {what}")));
        }
        publish(&shared, &parts, &batch);
    }
    publish(&shared, &parts, &batch);
    tracing::debug!("generation engine stopped");
}

/// Waits for work; ends queued requests that were cancelled or ran past their deadline;
/// takes the requests that may join now (FIFO, within max_batch and the KV budget). None:
/// shut down.
fn next_work(shared: &Shared, parts: &EngineParts, batch: &Batch) -> Option<Vec<Pending>> {
    let mut q = shared.lock();
    loop {
        let now = Instant::now();
        q.waiting.retain(|p| match p.expired(now) {
            Some(reason) => {
                p.span.record("finish_reason", reason.as_str());
                p.span.record("generated_tokens", 0);
                let _ = p.tx.send(GenEvent::Finished {
                    reason,
                    prompt_tokens: p.prompt.len() as u32,
                    generated_tokens: 0,
                });
                false
            }
            None => true,
        });
        if !batch.seqs.is_empty() || !q.waiting.is_empty() {
            break;
        }
        if q.shutdown {
            return None;
        }
        q.stats.waiting = 0;
        q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
    }
    let live = batch.seqs.iter().filter(|s| !s.done);
    let mut members = live.clone().count();
    let mut widest = live.map(|s| s.request.reserve).max().unwrap_or(0) as u64;
    let mut admitted = Vec::new();
    while members < parts.max_batch {
        let Some(front) = q.waiting.front() else { break };
        let wider = widest.max(front.reserve as u64);
        // Padding included: every row of the batch may grow as long as its longest member.
        if (members as u64 + 1) * wider * parts.kv_bytes_per_token > parts.kv_budget_bytes {
            break;
        }
        admitted.extend(q.waiting.pop_front());
        members += 1;
        widest = wider;
    }
    q.stats.waiting = q.waiting.len();
    Some(admitted)
}

fn publish(shared: &Shared, parts: &EngineParts, batch: &Batch) {
    let running = batch.seqs.iter().filter(|s| !s.done).count();
    let kv = if batch.cache.is_some() {
        (batch.seqs.len() * batch.past_len) as u64 * parts.kv_bytes_per_token
    } else {
        0
    };
    let mut q = shared.lock();
    q.stats.running = running;
    q.stats.waiting = q.waiting.len();
    q.stats.kv_bytes_in_use = kv;
    q.stats.prompt_tokens_total = batch.prompt_tokens_total;
    q.stats.generated_tokens_total = batch.generated_tokens_total;
}

fn fail_all(batch: &mut Batch, error: GenError) {
    for seq in batch.seqs.iter_mut() {
        seq.fail(error.clone());
    }
    for (seq, _) in batch.joining.iter_mut() {
        seq.fail(error.clone());
    }
    batch.seqs.clear();
    batch.joining.clear();
    batch.cache = None;
    batch.past_len = 0;
}

/// One turn: cancellations, prefill of the admitted, rebuild if the members changed, one
/// decode step.
fn iteration(parts: &mut EngineParts, batch: &mut Batch, admitted: Vec<Pending>, eos: &[u32]) {
    let now = Instant::now();
    for seq in batch.seqs.iter_mut().filter(|s| !s.done) {
        if let Some(reason) = seq.request.expired(now) {
            seq.finish(reason);
        }
    }

    for request in admitted {
        tracing::debug!(parent: &request.span, running = batch.seqs.len(), "admitted to the batch");
        let seq = Seq::new(request, parts.decoder.vocab);
        batch.joining.push((seq, None));
    }
    for i in 0..batch.joining.len() {
        let (seq, slot) = &mut batch.joining[i];
        if let Some(reason) = seq.request.expired(now) {
            seq.finish(reason);
            continue;
        }
        batch.prompt_tokens_total += seq.prompt_len as u64;
        match prefill(&mut parts.decoder, seq, &parts.codec, eos) {
            Ok(cache) => {
                batch.generated_tokens_total += 1;
                if !seq.done {
                    *slot = Some(cache);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "prefill failed");
                seq.fail(GenError::Internal(format!("ONNX Runtime failed in prefill: {e}")));
            }
        }
    }

    let changed = !batch.joining.is_empty() || batch.seqs.iter().any(|s| s.done);
    if changed && let Err(e) = rebuild(&parts.decoder, batch) {
        tracing::error!(error = %e, "rebuilding the batch failed");
        fail_all(batch, GenError::Internal(format!("rebuilding the batch cache failed: {e}")));
    }

    if !batch.seqs.is_empty()
        && let Err(e) = decode(parts, batch, eos)
    {
        tracing::error!(error = %e, "decode step failed");
        fail_all(batch, GenError::Internal(format!("ONNX Runtime failed in a decode step: {e}")));
    }
}

/// Runs a sequence's prompt alone and takes its first token. Returns its cache `[1, kv_heads,
/// prompt_len, head_size]`.
fn prefill(decoder: &mut Decoder, seq: &mut Seq, codec: &TextCodec, eos: &[u32]) -> Result<Cache, String> {
    let n = seq.prompt_len;
    let input = StepInput {
        batch: 1,
        seq: n,
        input_ids: seq.request.prompt.iter().map(|&t| t as i64).collect(),
        attention_mask: vec![1; n],
        position_ids: (0..n as i64).collect(),
    };
    let past = decoder.empty_cache(1)?;
    let mut first = 0;
    let cache = decoder.step(input, past, |_, logits| first = seq.sampler.sample(logits))?;
    seq.cache_len = n;
    tracing::debug!(parent: &seq.request.span, prompt_tokens = n, "prefill done, first token");
    seq.accept(first, codec, eos);
    Ok(cache)
}

/// Builds the batch cache for the members that go on plus the ones joining: each row's valid
/// columns copied to the right end of a row as long as the longest member.
fn rebuild(decoder: &Decoder, batch: &mut Batch) -> Result<(), String> {
    let old_cache =
        batch.cache.take().map(|c| c.into_iter().map(to_host).collect::<Result<Vec<_>, _>>()).transpose()?;
    let old_len = batch.past_len;
    let old_seqs = std::mem::take(&mut batch.seqs);
    let joining = std::mem::take(&mut batch.joining);

    let mut keep: Vec<(Seq, usize)> = Vec::new();
    for (row, seq) in old_seqs.into_iter().enumerate() {
        if !seq.done {
            keep.push((seq, row));
        }
    }
    let mut joined: Vec<(Seq, Cache)> = Vec::new();
    for (seq, cache) in joining {
        if let Some(cache) = cache.filter(|_| !seq.done) {
            joined.push((seq, cache));
        }
    }
    let joining = joined;

    // One sequence joining an empty batch: its prefill cache is the batch cache as it is.
    if keep.is_empty() && joining.len() == 1 {
        let Some((seq, cache)) = joining.into_iter().next() else { unreachable!() };
        batch.past_len = seq.cache_len;
        batch.seqs.push(seq);
        batch.cache = Some(cache);
        return Ok(());
    }
    let joining: Vec<(Seq, Cache)> = joining
        .into_iter()
        .map(|(s, c)| c.into_iter().map(to_host).collect::<Result<Vec<_>, _>>().map(|c| (s, c)))
        .collect::<Result<_, _>>()?;
    let rows = keep.len() + joining.len();
    if rows == 0 {
        batch.past_len = 0;
        return Ok(());
    }
    let new_len = keep
        .iter()
        .map(|(s, _)| s.cache_len)
        .chain(joining.iter().map(|(s, _)| s.cache_len))
        .max()
        .unwrap_or(0);
    let heads = decoder.kv_heads;
    let width = decoder.head_size;
    let mut cache = Vec::with_capacity(decoder.layers * 2);
    for t in 0..decoder.layers * 2 {
        let mut data = vec![0f32; rows * heads * new_len * width];
        let mut copy_row = |dst_row: usize, src: &[f32], src_row: usize, src_len: usize, valid: usize| {
            for h in 0..heads {
                let from = ((src_row * heads + h) * src_len + (src_len - valid)) * width;
                let to = ((dst_row * heads + h) * new_len + (new_len - valid)) * width;
                data[to..to + valid * width].copy_from_slice(&src[from..from + valid * width]);
            }
        };
        if !keep.is_empty() {
            let old = old_cache
                .as_ref()
                .and_then(|c| c.get(t))
                .ok_or("the batch cache is missing (this is a bug)")?;
            let src =
                cache_data(old, keep.iter().map(|(_, r)| r + 1).max().unwrap_or(0), heads, old_len, width)?;
            for (dst_row, (seq, src_row)) in keep.iter().enumerate() {
                copy_row(dst_row, src, *src_row, old_len, seq.cache_len);
            }
        }
        for (j, (seq, own)) in joining.iter().enumerate() {
            let src = cache_data(&own[t], 1, heads, seq.cache_len, width)?;
            copy_row(keep.len() + j, src, 0, seq.cache_len, seq.cache_len);
        }
        let tensor = Tensor::from_array(([rows, heads, new_len, width], data)).map_err(|e| e.to_string())?;
        cache.push(tensor.into_dyn());
    }
    drop(old_cache);
    batch.seqs = keep.into_iter().map(|(s, _)| s).chain(joining.into_iter().map(|(s, _)| s)).collect();
    batch.cache = Some(cache);
    batch.past_len = new_len;
    Ok(())
}

/// A cache tensor's floats, after checking it is `[>= min_rows, heads, len, width]`.
fn cache_data(
    value: &DynValue,
    min_rows: usize,
    heads: usize,
    len: usize,
    width: usize,
) -> Result<&[f32], String> {
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
    let dims: &[i64] = shape;
    let ok = dims.len() == 4
        && dims[0] as usize >= min_rows
        && dims[1] as usize == heads
        && dims[2] as usize == len
        && dims[3] as usize == width;
    if !ok {
        return Err(format!(
            "a present key/value output has shape {dims:?}, expected [batch, {heads}, {len}, {width}] \
             (the model must return past + new positions)"
        ));
    }
    Ok(data)
}

/// One decode step for every member: feed each one's last token, sample the next.
fn decode(parts: &mut EngineParts, batch: &mut Batch, eos: &[u32]) -> Result<(), String> {
    let rows = batch.seqs.len();
    let past = batch.past_len;
    let columns = past + 1;
    let mut attention_mask = vec![0i64; rows * columns];
    for (row, seq) in batch.seqs.iter().enumerate() {
        let valid = seq.cache_len + 1;
        attention_mask[row * columns + columns - valid..(row + 1) * columns].fill(1);
    }
    let input = StepInput {
        batch: rows,
        seq: 1,
        input_ids: batch.seqs.iter().map(|s| s.last as i64).collect(),
        attention_mask,
        position_ids: batch.seqs.iter().map(|s| s.cache_len as i64).collect(),
    };
    let cache = batch.cache.take().ok_or("a batch without a cache (this is a bug)")?;
    let mut next = vec![0u32; rows];
    let seqs = &mut batch.seqs;
    let cache =
        parts.decoder.step(input, cache, |row, logits| next[row] = seqs[row].sampler.sample(logits))?;
    batch.cache = Some(cache);
    batch.past_len = columns;
    for (seq, token) in batch.seqs.iter_mut().zip(next) {
        seq.cache_len += 1;
        batch.generated_tokens_total += 1;
        // `max_new` is already clamped to the context: `accept` ends the sequence there.
        tracing::trace!(parent: &seq.request.span, token, batch = rows, "token");
        seq.accept(token, &parts.codec, eos);
    }
    tracing::trace!(batch = rows, past, "decode step");
    Ok(())
}
