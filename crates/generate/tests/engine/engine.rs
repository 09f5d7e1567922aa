//! The engine on the example language model (`tiny_llm`, built by examples/build_tiny_llm.py):
//! real ONNX Runtime sessions, real tokenizer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Outcome, collect, collect_from, engine, next_event, options, prompt};
use tern_generate::{
    EngineOptions, FinishReason, GenError, GenEvent, GenerateRequest, Prompt, SamplingParams,
};

fn greedy(tokens: Vec<u32>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Tokens(tokens),
        max_tokens: Some(max_tokens),
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        deadline: None,
    }
}

fn sampled(tokens: Vec<u32>, max_tokens: u32, seed: u64) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.95,
            seed: Some(seed),
            repetition_penalty: 1.1,
        },
        ..greedy(tokens, max_tokens)
    }
}

/// Sixteen sequences of different prompt lengths and lengths of output.
fn sixteen() -> Vec<GenerateRequest> {
    (0..16u32).map(|i| greedy(prompt(3 + (i as usize * 7) % 40, i), 6 + (i * 5) % 30)).collect()
}

/// Runs each request alone, one after another, on an engine with batching off.
async fn alone(requests: &[GenerateRequest]) -> Vec<Outcome> {
    let e = engine(options(1));
    let mut out = Vec::new();
    for r in requests {
        out.push(collect(e.submit(r.clone()).expect("admitted")).await);
    }
    out
}

/// Submits the requests in groups of four to one batching engine, each group once the earlier
/// ones have produced tokens, so sequences join a running batch at different moments.
/// Also returns the most sequences the engine reported running at once.
async fn batched(requests: &[GenerateRequest]) -> (Vec<Outcome>, usize) {
    let e = engine(options(16));
    let mut most_running = 0;
    let tokens_seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            let want = i * 2;
            let start = Instant::now();
            while tokens_seen.load(Ordering::Relaxed) < want && start.elapsed() < crate::common::PATIENCE {
                most_running = most_running.max(e.stats().running);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let mut generation = e.submit(r.clone()).expect("admitted");
        let seen = tokens_seen.clone();
        tasks.push(tokio::spawn(async move {
            // Count the first tokens as they come (the next group waits for them), then read on.
            let mut head =
                Outcome { ids: Vec::new(), texts: Vec::new(), end: Err(GenError::Internal("no end".into())) };
            while head.ids.len() < 2 {
                match next_event(&mut generation).await {
                    Some(GenEvent::Token { id, text }) => {
                        seen.fetch_add(1, Ordering::Relaxed);
                        head.ids.push(id);
                        head.texts.push(text);
                    }
                    Some(GenEvent::Finished { reason, prompt_tokens, generated_tokens }) => {
                        head.end = Ok((reason, prompt_tokens, generated_tokens));
                        return head;
                    }
                    Some(GenEvent::Failed(e)) => {
                        head.end = Err(e);
                        return head;
                    }
                    None => panic!("the channel closed without Finished or Failed"),
                }
            }
            collect_from(generation, head).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        most_running = most_running.max(e.stats().running);
        out.push(t.await.expect("collector task"));
    }
    (out, most_running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_batched_equals_unbatched() {
    let requests = sixteen();
    let reference = alone(&requests).await;
    let (together, most_running) = batched(&requests).await;
    assert!(most_running >= 4, "the sequences never ran together (at most {most_running} at once)");
    let e = engine(options(1));
    for (i, (a, b)) in reference.iter().zip(&together).enumerate() {
        assert!(!a.ids.is_empty(), "sequence {i} generated nothing");
        assert_eq!(a.ids, b.ids, "sequence {i}: batched token ids differ from the sequence alone");
        assert_eq!(a.text(), b.text(), "sequence {i}: text differs");
        assert_eq!(a.end, b.end, "sequence {i}: end differs");
        if a.reason() == FinishReason::Length {
            // Nothing held back or lost: the pieces add up to the decoded ids.
            assert_eq!(a.text(), e.decode(&a.ids), "sequence {i}: streamed text != decoded ids");
        }
    }
    // Different prompts give different outputs (the comparison above is not vacuous).
    assert_ne!(reference[0].ids, reference[1].ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_reproducible_alone_and_batched() {
    let target = sampled(prompt(11, 3), 40, 42);
    let e1 = engine(options(1));
    let first = collect(e1.submit(target.clone()).expect("admitted")).await;
    let again = collect(e1.submit(target.clone()).expect("admitted")).await;
    assert_eq!(first.ids, again.ids, "same seed, same engine, different tokens");
    let other_seed = collect(e1.submit(sampled(prompt(11, 3), 40, 43)).expect("admitted")).await;
    assert_ne!(first.ids, other_seed.ids, "a different seed gave the same 40 sampled tokens");

    let e = engine(options(8));
    let mut neighbours = Vec::new();
    for i in 0..5u32 {
        neighbours.push(
            e.submit(sampled(prompt(5 + i as usize * 9, 50 + i), 50, 1000 + i as u64)).expect("admitted"),
        );
    }
    let in_batch = e.submit(target).expect("admitted");
    let in_batch = collect(in_batch).await;
    for n in neighbours {
        collect(n).await.reason();
    }
    assert_eq!(first.ids, in_batch.ids, "same seed, batched with others: different tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_drop_free_the_slot() {
    let e = engine(EngineOptions { max_batch: 1, ..options(1) });
    let long = || GenerateRequest { ignore_eos: true, max_tokens: None, ..greedy(prompt(8, 1), 1) };

    // cancel(): the running sequence ends Cancelled, the queued one then runs.
    let mut running = e.submit(long()).expect("admitted");
    assert!(matches!(next_event(&mut running).await, Some(GenEvent::Token { .. })));
    let short = || GenerateRequest { ignore_eos: true, ..greedy(prompt(6, 2), 5) };
    let queued = e.submit(short()).expect("admitted");
    running.cancel();
    let mut reason = None;
    let mut tokens = 1;
    while let Some(event) = next_event(&mut running).await {
        match event {
            GenEvent::Token { .. } => tokens += 1,
            GenEvent::Finished { reason: r, .. } => reason = Some(r),
            GenEvent::Failed(e) => panic!("failed: {e}"),
        }
    }
    assert_eq!(reason, Some(FinishReason::Cancelled));
    assert!(tokens < 500, "cancel did not stop the sequence ({tokens} tokens)");
    let after = collect(queued).await;
    assert_eq!(after.reason(), FinishReason::Length);
    assert_eq!(after.ids.len(), 5);

    // Dropping the Generation (a client that went away) does the same.
    let mut running = e.submit(long()).expect("admitted");
    assert!(matches!(next_event(&mut running).await, Some(GenEvent::Token { .. })));
    let queued = e.submit(short()).expect("admitted");
    drop(running);
    let again = collect(queued).await;
    assert_eq!(again.ids, after.ids);
    // The engine publishes its stats after the step that ended the sequence.
    let start = Instant::now();
    while (e.stats().running, e.stats().waiting, e.stats().kv_bytes_in_use) != (0, 0, 0) {
        assert!(start.elapsed() < crate::common::PATIENCE, "the slot was not freed: {:?}", e.stats());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_stops_generation() {
    let e = engine(options(4));
    // Running: the whole context would take hundreds of steps; the deadline comes first.
    let request = GenerateRequest {
        ignore_eos: true,
        max_tokens: None,
        deadline: Some(Instant::now() + Duration::from_millis(30)),
        ..greedy(prompt(8, 4), 1)
    };
    let out = collect(e.submit(request).expect("admitted")).await;
    assert_eq!(out.reason(), FinishReason::Deadline);
    assert!(out.ids.len() < 500, "{} tokens", out.ids.len());
    // Already past when it reaches the engine: ends before any token.
    let request = GenerateRequest { deadline: Some(Instant::now()), ..greedy(prompt(8, 4), 10) };
    let out = collect(e.submit(request).expect("admitted")).await;
    assert_eq!(out.reason(), FinishReason::Deadline);
    assert!(out.ids.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_string_across_token_boundary_cuts_the_text() {
    let e = engine(options(4));
    let base = greedy(prompt(12, 9), 40);
    let full = collect(e.submit(base.clone()).expect("admitted")).await;
    let text = full.text();
    assert!(!text.is_empty());
    // A stop string made of the end of one token's text and the start of the next one's, whose
    // first occurrence in the output is exactly there.
    let mut offset = 0;
    let mut chosen = None;
    for i in 0..full.texts.len().saturating_sub(1) {
        let (a, b) = (&full.texts[i], &full.texts[i + 1]);
        offset += a.len();
        let (Some(a_last), Some(b_first)) = (a.chars().last(), b.chars().next()) else { continue };
        let stop = format!("{a_last}{b_first}");
        let at = offset - a_last.len_utf8();
        if text.find(&stop) == Some(at) {
            chosen = Some((stop, at, i + 1));
            break;
        }
    }
    let (stop, at, last_token) = chosen.expect("no pair of adjacent tokens gave a usable stop string");
    let request = GenerateRequest { stop: vec![stop.clone()], ..base };
    let cut = collect(e.submit(request).expect("admitted")).await;
    assert_eq!(cut.reason(), FinishReason::Stop, "stop {stop:?}");
    assert_eq!(cut.text(), text[..at], "output must end right before {stop:?}");
    assert_eq!(cut.ids, full.ids[..=last_token], "generation stops at the token completing {stop:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_token_ids_and_eos_end_with_stop() {
    let e = engine(options(4));
    let full = collect(e.submit(greedy(prompt(10, 5), 20)).expect("admitted")).await;
    let target = full.ids[5];
    let first = full.ids.iter().position(|&t| t == target).expect("present");
    let request = GenerateRequest { stop_token_ids: vec![target], ..greedy(prompt(10, 5), 20) };
    let out = collect(e.submit(request).expect("admitted")).await;
    assert_eq!(out.reason(), FinishReason::Stop);
    assert_eq!(out.ids, full.ids[..=first]);
    // The stop token's own text is not part of the output.
    assert_eq!(out.text(), e.decode(&full.ids[..first]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_longer_than_context_is_invalid() {
    let e = engine(options(4));
    let context = e.info().context_length;
    let err = e.submit(greedy(prompt(context + 5, 1), 4)).err().expect("refused");
    let GenError::InvalidArgument(message) = &err else { panic!("{err:?}") };
    assert!(
        message.contains(&(context + 5).to_string()) && message.contains(&context.to_string()),
        "{message}"
    );
    // max_tokens beyond the context is clamped, not refused.
    let out = collect(
        e.submit(GenerateRequest { ignore_eos: true, ..greedy(prompt(context - 3, 1), 100) })
            .expect("admitted"),
    )
    .await;
    assert_eq!(out.reason(), FinishReason::Length);
    assert_eq!(out.ids.len(), 3);
    // Other bad parameters are named.
    let bad = GenerateRequest {
        sampling: SamplingParams { top_p: 0.0, ..SamplingParams::default() },
        ..greedy(prompt(4, 1), 4)
    };
    assert!(matches!(e.submit(bad), Err(GenError::InvalidArgument(m)) if m.contains("top_p")));
    assert!(matches!(e.submit(greedy(vec![], 4)), Err(GenError::InvalidArgument(m)) if m.contains("empty")));
    assert!(
        matches!(e.submit(greedy(vec![5000], 4)), Err(GenError::InvalidArgument(m)) if m.contains("5000"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_budget_queues_then_refuses() {
    let probe = engine(options(1));
    let per_token = probe.info().kv_bytes_per_token;
    drop(probe);
    // Room for two sequences of 10 + 30 tokens at once, not three.
    let budget = 2 * 40 * per_token + per_token;
    let e = engine(EngineOptions { kv_budget_bytes: budget, max_queue: 6, ..options(16) });
    let request = |i: u32| GenerateRequest { ignore_eos: true, ..greedy(prompt(10, i), 30) };

    let generations: Vec<_> = (0..6).map(|i| e.submit(request(i)).expect("admitted")).collect();
    let waiter = tokio::spawn(async move {
        let mut out = Vec::new();
        for g in generations {
            out.push(collect(g).await);
        }
        out
    });
    let mut most_running = 0;
    let mut saw_waiting = false;
    while !waiter.is_finished() {
        let s = e.stats();
        assert!(s.kv_bytes_in_use <= s.kv_budget_bytes, "{s:?}");
        assert_eq!(s.kv_budget_bytes, budget);
        most_running = most_running.max(s.running);
        saw_waiting |= s.waiting > 0;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    for out in waiter.await.expect("collector") {
        assert_eq!(out.reason(), FinishReason::Length);
        assert_eq!(out.ids.len(), 30);
    }
    assert!(most_running <= 2, "{most_running} sequences ran at once within a budget for two");
    assert!(saw_waiting, "six requests within a budget for two never waited");

    // Never fits: refused at once, with the numbers.
    let err = e.submit(greedy(prompt(10, 1), 200)).err().expect("refused");
    let GenError::ResourceExhausted(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("budget") && message.contains(&budget.to_string()), "{message}");

    // The queue is bounded: with two running and six waiting, the next is refused.
    let long = |i: u32| GenerateRequest { ignore_eos: true, ..greedy(prompt(10, i), 30) };
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..10 {
        match e.submit(long(i)) {
            Ok(g) => held.push(g),
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    let Some(GenError::ResourceExhausted(message)) = refused else {
        panic!("the queue took {} requests", held.len())
    };
    assert!(message.contains("queue is full"), "{message}");
    assert!(held.len() <= 2 + 6, "{}", held.len());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_engine_lets_admitted_sequences_finish() {
    let e = engine(options(2));
    let generations: Vec<_> = (0..4).map(|i| e.submit(greedy(prompt(9, i), 12)).expect("admitted")).collect();
    drop(e);
    for g in generations {
        let out = collect(g).await;
        assert!(matches!(out.reason(), FinishReason::Length | FinishReason::Stop), "{:?}", out.end);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_prompts_use_the_tokenizer_with_bos() {
    let e = engine(options(2));
    let ids = e.encode("Hello world, this is a test.").expect("encodes");
    assert_eq!(ids.first(), Some(&0), "tokenizer_config.json add_bos_token puts <s> first: {ids:?}");
    let request =
        GenerateRequest { prompt: Prompt::Text("Hello world, this is a test.".into()), ..greedy(vec![], 8) };
    let from_text = collect(e.submit(request).expect("admitted")).await;
    let from_ids = collect(e.submit(greedy(ids.clone(), 8)).expect("admitted")).await;
    assert_eq!(from_text.ids, from_ids.ids);
    assert_eq!(from_text.end.as_ref().map(|(_, p, _)| *p), Ok(ids.len() as u32));
    let info = e.info();
    assert_eq!(info.model_type, "llama");
    assert_eq!(info.bos_token.as_deref(), Some("<s>"));
    assert!(info.chat_template.as_deref().is_some_and(|t| t.contains("im_start")));
    assert!(info.eos_token_ids.contains(&1));
}

#[test]
fn engine_handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<tern_generate::Engine>();
    send::<tern_generate::Generation>();
}
