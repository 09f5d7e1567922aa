//! The scheduler driving real instance threads. The backend here is a test double (it adds 1 to
//! FP32 rows and records the batch sizes it ran, optionally waiting on a gate) because these
//! tests are about queueing decisions; the node's tests run the same scheduler over ONNX Runtime.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tern_backend::{Backend, BackendError};
use tern_core::{DataType, FailureReason, RequestError, Tensor};
use tern_scheduler::policy::{OnTimeout, QueuePolicy};
use tern_scheduler::{InferJob, Scheduler, SchedulerConfig};

/// Blocks instance threads until the test lets executions through.
#[derive(Default)]
struct Gate {
    permits: Mutex<u32>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn add_permits(&self, n: u32) {
        if let Ok(mut p) = self.permits.lock() {
            *p += n;
            self.opened.notify_all();
        }
    }

    fn acquire(&self) -> Result<(), BackendError> {
        let mut p = self.permits.lock().map_err(|e| BackendError::Execution(e.to_string()))?;
        while *p == 0 {
            p = self.opened.wait(p).map_err(|e| BackendError::Execution(e.to_string()))?;
        }
        *p -= 1;
        Ok(())
    }
}

/// Adds 1 to every element; records the rows of each execution; waits for `gate` when set.
struct AddOne {
    seen: Arc<Mutex<Vec<i64>>>,
    gate: Option<Arc<Gate>>,
}

impl Backend for AddOne {
    fn infer(&mut self, inputs: Vec<Tensor>, _: &[String]) -> Result<Vec<Tensor>, BackendError> {
        if let Some(gate) = &self.gate {
            gate.acquire()?;
        }
        let x = inputs.into_iter().next().ok_or_else(|| BackendError::InvalidInput("no input".into()))?;
        self.seen.lock().map_err(|e| BackendError::Execution(e.to_string()))?.push(x.shape[0]);
        let data: Vec<u8> = x
            .data
            .chunks_exact(4)
            .flat_map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) + 1.0).to_le_bytes())
            .collect();
        Ok(vec![Tensor {
            name: "y".into(),
            datatype: DataType::Fp32,
            shape: x.shape,
            data: Bytes::from(data),
        }])
    }
}

fn config(max: u32, preferred: &[u32], delay: Duration) -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size: max,
        dynamic: true,
        preferred_batch_sizes: preferred.to_vec(),
        max_queue_delay: delay,
        auto_delay_budget: None,
        preserve_ordering: false,
        priority_levels: 1,
        default_priority: 1,
        policies: vec![QueuePolicy::default()],
        sequence: None,
    }
}

fn job(batch_size: u32, value: f32) -> InferJob {
    let data: Vec<u8> = (0..batch_size * 2).flat_map(|_| value.to_le_bytes()).collect();
    InferJob {
        inputs: vec![Tensor {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![i64::from(batch_size), 2],
            data: Bytes::from(data),
        }],
        batch_size,
        outputs: vec![],
        priority: 0,
        timeout: None,
        sequence: Default::default(),
    }
}

fn values(t: &[Tensor]) -> Vec<f32> {
    t[0].data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

struct Rig {
    scheduler: Arc<Scheduler>,
    seen: Arc<Mutex<Vec<i64>>>,
    gate: Arc<Gate>,
}

fn rig(cfg: SchedulerConfig, gated: bool) -> Rig {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Gate::default());
    let backend = AddOne { seen: seen.clone(), gate: gated.then(|| gate.clone()) };
    let scheduler = Scheduler::start(
        "m".into(),
        "test",
        cfg,
        vec![Box::new(backend)],
        &tokio::runtime::Handle::current(),
    )
    .expect("start");
    let scheduler = Arc::new(scheduler);
    Rig { scheduler, seen, gate }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_split_back_correctly() {
    let r = rig(config(8, &[4], Duration::from_secs(5)), false);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let s = r.scheduler.clone();
            tokio::spawn(async move { s.infer(job(1, i as f32)).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.expect("join").expect("infer");
        assert_eq!(values(&out), vec![i as f32 + 1.0; 2], "request {i} gets its own rows back");
    }
    assert_eq!(*r.seen.lock().expect("lock"), vec![4], "one execution at the preferred size");
    let s = r.scheduler.stats().snapshot();
    assert_eq!((s.inference_count, s.execution_count, s.success.count), (4, 1, 4));
    assert_eq!(
        s.batches.iter().map(|b| (b.batch_size, b.compute_infer.count)).collect::<Vec<_>>(),
        vec![(4, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_instance_is_busy_the_next_batch_keeps_filling() {
    let r = rig(config(8, &[], Duration::ZERO), true);
    let first = {
        let s = r.scheduler.clone();
        tokio::spawn(async move { s.infer(job(1, 0.0)).await })
    };
    // Let the first request reach the (blocked) instance, then queue three more.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest: Vec<_> = (0..3)
        .map(|_| {
            let s = r.scheduler.clone();
            tokio::spawn(async move { s.infer(job(2, 0.0)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    r.gate.add_permits(2);
    first.await.expect("join").expect("first");
    for t in rest {
        t.await.expect("join").expect("rest");
    }
    assert_eq!(*r.seen.lock().expect("lock"), vec![1, 6], "the three waiting requests ran as one batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_rejects_with_unavailable_and_counts_it() {
    let mut cfg = config(8, &[], Duration::ZERO);
    cfg.dynamic = false;
    cfg.policies = vec![QueuePolicy { max_queue_size: 1, ..QueuePolicy::default() }];
    let r = rig(cfg, true);
    let running = {
        let s = r.scheduler.clone();
        tokio::spawn(async move { s.infer(job(1, 0.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = {
        let s = r.scheduler.clone();
        tokio::spawn(async move { s.infer(job(1, 0.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rejected = r.scheduler.infer(job(1, 0.0)).await;
    assert!(
        matches!(&rejected, Err(RequestError::Unavailable(m)) if m.starts_with("Exceeds maximum queue size")),
        "{rejected:?}"
    );
    r.gate.add_permits(2);
    running.await.expect("join").expect("running");
    queued.await.expect("join").expect("queued");
    let s = r.scheduler.stats().snapshot();
    assert_eq!(s.failures.iter().find(|(r, _)| *r == FailureReason::Rejected).map(|(_, n)| *n), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_timed_out_requests_never_run() {
    let mut cfg = config(8, &[], Duration::ZERO);
    cfg.dynamic = false;
    cfg.policies = vec![QueuePolicy {
        allow_timeout_override: true,
        on_timeout: OnTimeout::Reject,
        ..QueuePolicy::default()
    }];
    let r = rig(cfg, true);
    let running = {
        let s = r.scheduler.clone();
        tokio::spawn(async move { s.infer(job(1, 0.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Cancelled: the caller gives up while it waits in the queue.
    let cancelled = {
        let s = r.scheduler.clone();
        tokio::spawn(async move { s.infer(job(3, 0.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancelled.abort();
    // It leaves the queue and is counted while the instance is still busy, not when it next looks.
    let count = |reason| {
        let s = r.scheduler.stats().snapshot();
        s.failures.iter().find(|(r, _)| *r == reason).map(|(_, n)| *n)
    };
    for _ in 0..200 {
        if count(FailureReason::Canceled) == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count(FailureReason::Canceled), Some(1), "the cancelled request left the queue at once");
    // Timed out: 10 ms allowed, the instance stays busy longer.
    let timed_out =
        r.scheduler.infer(InferJob { timeout: Some(Duration::from_millis(10)), ..job(5, 0.0) }).await;
    assert!(
        matches!(&timed_out, Err(RequestError::Unavailable(m)) if m.contains("timeout")),
        "{timed_out:?}"
    );
    r.gate.add_permits(8);
    running.await.expect("join").expect("running");
    let after = r.scheduler.infer(job(2, 0.0)).await.expect("still serving");
    assert_eq!(values(&after), vec![1.0; 4]);
    assert_eq!(
        *r.seen.lock().expect("lock"),
        vec![1, 2],
        "neither the cancelled (3) nor the timed-out (5) ran"
    );
    assert_eq!(count(FailureReason::Canceled), Some(1));
    assert_eq!(count(FailureReason::Rejected), Some(1));
    assert_eq!(r.scheduler.stats().snapshot().pending, 0, "nothing left queued");
}

/// Blocks only executions whose first element is 0.0; the others run at once.
struct GateOnZero {
    gate: Arc<Gate>,
}

impl Backend for GateOnZero {
    fn infer(&mut self, inputs: Vec<Tensor>, outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        let first = inputs
            .first()
            .and_then(|t| t.data.get(..4))
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if first == Some(0.0) {
            self.gate.acquire()?;
        }
        AddOne { seen: Arc::default(), gate: None }.infer(inputs, outputs)
    }
}

async fn ordering_run(preserve: bool) -> bool {
    let gate = Arc::new(Gate::default());
    let backends: Vec<Box<dyn Backend>> =
        vec![Box::new(GateOnZero { gate: gate.clone() }), Box::new(GateOnZero { gate: gate.clone() })];
    let mut cfg = config(8, &[], Duration::ZERO);
    cfg.dynamic = false;
    cfg.preserve_ordering = preserve;
    let scheduler =
        Scheduler::start("m".into(), "ordering", cfg, backends, &tokio::runtime::Handle::current())
            .expect("start");
    let scheduler = Arc::new(scheduler);
    let slow = {
        let s = scheduler.clone();
        tokio::spawn(async move { s.infer(job(1, 0.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = {
        let s = scheduler.clone();
        tokio::spawn(async move { s.infer(job(1, 5.0)).await })
    };
    // The fast request runs on the second instance while the first is blocked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fast_answered_first = fast.is_finished();
    gate.add_permits(1);
    assert_eq!(values(&slow.await.expect("join").expect("slow")), vec![1.0; 2]);
    assert_eq!(values(&fast.await.expect("join").expect("fast")), vec![6.0; 2]);
    fast_answered_first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_ordering_holds_later_responses_back() {
    assert!(ordering_run(false).await, "without preserve_ordering the fast request answers first");
    assert!(!ordering_run(true).await, "with preserve_ordering it waits for the earlier request");
}

/// A model with outputs "y" = x + 1 and "z" = 2x (batch-shaped) and "fixed", a [3] tensor with
/// no batch dimension that no config lists. Computes what it is asked for (all three when asked
/// for nothing, as ONNX Runtime does) and records each execution's output list.
struct ThreeOutputs {
    asked: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Backend for ThreeOutputs {
    fn infer(&mut self, inputs: Vec<Tensor>, outputs: &[String]) -> Result<Vec<Tensor>, BackendError> {
        self.asked.lock().map_err(|e| BackendError::Execution(e.to_string()))?.push(outputs.to_vec());
        let x = inputs.into_iter().next().ok_or_else(|| BackendError::InvalidInput("no input".into()))?;
        let map = |f: fn(f32) -> f32| -> Bytes {
            x.data
                .chunks_exact(4)
                .flat_map(|c| f(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
                .collect()
        };
        let tensor = |name: &str, shape: Vec<i64>, data: Bytes| Tensor {
            name: name.into(),
            datatype: DataType::Fp32,
            shape,
            data,
        };
        let all = ["y", "z", "fixed"].map(String::from);
        let wanted = if outputs.is_empty() { &all[..] } else { outputs };
        Ok(wanted
            .iter()
            .map(|name| match name.as_str() {
                "y" => tensor("y", x.shape.clone(), map(|v| v + 1.0)),
                "z" => tensor("z", x.shape.clone(), map(|v| v * 2.0)),
                _ => tensor("fixed", vec![3], Bytes::from(vec![0u8; 12])),
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_asking_for_different_outputs_share_a_batch_and_get_their_own() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let backend = ThreeOutputs { asked: asked.clone() };
    // One batch of 4 rows: the preferred size.
    let scheduler = Scheduler::start(
        "m".into(),
        "outputs",
        config(8, &[4], Duration::from_secs(5)),
        vec![Box::new(backend)],
        &tokio::runtime::Handle::current(),
    )
    .expect("start");
    let scheduler = Arc::new(scheduler);
    let ask = |batch_size: u32, value: f32, outputs: &[&str]| {
        let s = scheduler.clone();
        let job =
            InferJob { outputs: outputs.iter().map(|o| o.to_string()).collect(), ..job(batch_size, value) };
        tokio::spawn(async move { s.infer(job).await })
    };
    let a = ask(1, 1.0, &["y"]);
    let b = ask(2, 2.0, &["z"]);
    let c = ask(1, 3.0, &["z", "y"]);
    let (a, b, c) = (a.await.expect("join"), b.await.expect("join"), c.await.expect("join"));
    let named = |r: &Result<Vec<Tensor>, RequestError>| -> Vec<(String, Vec<i64>, Vec<f32>)> {
        r.as_ref()
            .map(|ts| {
                ts.iter()
                    .map(|t| (t.name.clone(), t.shape.clone(), values(std::slice::from_ref(t))))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(named(&a), vec![("y".into(), vec![1, 2], vec![2.0; 2])], "{a:?}");
    assert_eq!(named(&b), vec![("z".into(), vec![2, 2], vec![4.0; 4])], "{b:?}");
    assert_eq!(
        named(&c),
        vec![("z".into(), vec![1, 2], vec![6.0; 2]), ("y".into(), vec![1, 2], vec![4.0; 2])],
        "{c:?}"
    );
    // One execution, computing what the batch asked for: never "all outputs" of the model. The
    // union's order follows the requests' arrival, which the spawned tasks do not fix.
    let mut asked = asked.lock().expect("lock").clone();
    asked.iter_mut().for_each(|outputs| outputs.sort());
    assert_eq!(asked, vec![vec!["y".to_string(), "z".to_string()]]);
}

/// Triton's `allow_timeout_override` lets a request shorten its level's default timeout, never
/// lengthen it, and a 0 override is no override (core src/scheduler_utils.cc,
/// PolicyQueue::Enqueue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_override_may_shorten_the_default_but_not_lengthen_it() {
    let mut cfg = config(8, &[], Duration::ZERO);
    cfg.dynamic = false;
    cfg.policies = vec![QueuePolicy {
        allow_timeout_override: true,
        default_timeout: Some(Duration::from_millis(300)),
        on_timeout: OnTimeout::Reject,
        ..QueuePolicy::default()
    }];
    let r = rig(cfg, true);
    // Keeps the only instance busy until the end.
    let running = {
        let s = r.scheduler.clone();
        tokio::spawn(async move { s.infer(job(1, 0.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let timed = |timeout: Option<Duration>| {
        let s = r.scheduler.clone();
        async move {
            let started = std::time::Instant::now();
            let result =
                tokio::time::timeout(Duration::from_secs(10), s.infer(InferJob { timeout, ..job(1, 1.0) }))
                    .await;
            (result, started.elapsed())
        }
    };
    let (longer, zero, shorter) = tokio::join!(
        timed(Some(Duration::from_secs(60))),
        timed(Some(Duration::ZERO)),
        timed(Some(Duration::from_millis(20)))
    );
    for (what, (result, took), within) in [
        ("a 60 s override keeps the 300 ms default", longer, Duration::from_secs(5)),
        ("a 0 override is none: the default", zero, Duration::from_secs(5)),
        ("a 20 ms override shortens it", shorter, Duration::from_millis(250)),
    ] {
        assert!(
            matches!(&result, Ok(Err(RequestError::Unavailable(m))) if m.contains("timeout")),
            "{what}: {result:?}"
        );
        assert!(took < within, "{what}: rejected after {took:?}");
    }
    r.gate.add_permits(8);
    running.await.expect("join").expect("running");
}

/// A client's `timeout` parameter of u64::MAX microseconds (allowed by the policy), or a
/// max queue delay no Instant can hold, once panicked adding it to an Instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_delays_too_large_for_an_instant_do_not_panic() {
    let mut cfg = config(2, &[], Duration::ZERO);
    cfg.policies = vec![QueuePolicy { allow_timeout_override: true, ..QueuePolicy::default() }];
    let r = rig(cfg, false);
    let out = r
        .scheduler
        .infer(InferJob { timeout: Some(Duration::from_micros(u64::MAX)), ..job(1, 1.0) })
        .await
        .expect("a timeout too large to reach is no timeout");
    assert_eq!(values(&out), vec![2.0; 2]);

    let r = rig(config(2, &[], Duration::MAX), false);
    // Not full: waits for the (unreachable) delay; the caller gives up, nothing panics.
    let waiting = tokio::time::timeout(Duration::from_millis(200), r.scheduler.infer(job(1, 0.0))).await;
    assert!(waiting.is_err(), "a one-row batch waits for more rows");
    // A full batch runs at once (the instance did not die on the delay's arithmetic).
    let out = tokio::time::timeout(Duration::from_secs(10), r.scheduler.infer(job(2, 3.0)))
        .await
        .expect("the instance still runs batches")
        .expect("a full batch runs");
    assert_eq!(values(&out), vec![4.0; 4]);
}

fn sequence_job(id: u64, start: bool, end: bool, value: f32) -> InferJob {
    InferJob {
        sequence: tern_core::SequenceParams { id: tern_core::CorrelationId::Uint(id), start, end },
        ..job(1, value)
    }
}

/// The sequence batcher's backlog as Triton's sequence_batch_scheduler.cc keeps it: a request's
/// timeout bounds its sequence's wait there (the reaper refuses the queue), and a cancelled
/// request cancels its whole sequence when a slot would go to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_sequence_times_out_and_a_cancelled_one_is_cancelled_whole() {
    use tern_scheduler::sequence::SequenceConfig;
    use tern_scheduler::sequence::config::Strategy;
    let mut cfg = config(1, &[], Duration::ZERO);
    cfg.dynamic = false;
    cfg.sequence = Some(SequenceConfig {
        strategy: Strategy::Direct { max_queue_delay: Duration::ZERO, min_ready: 0 },
        slots_per_instance: 1,
        max_sequence_idle: Duration::from_secs(60),
        controls: vec![],
        states: vec![],
    });
    let r = rig(cfg, false);
    let spawn = |job: InferJob| {
        let s = r.scheduler.clone();
        tokio::spawn(async move { s.infer(job).await })
    };
    // Sequence 1 holds the only slot.
    r.scheduler.infer(sequence_job(1, true, false, 0.0)).await.expect("start 1");
    let timed_out = r
        .scheduler
        .infer(InferJob { timeout: Some(Duration::from_millis(20)), ..sequence_job(2, true, false, 0.0) })
        .await;
    assert_eq!(
        timed_out,
        Err(RequestError::Unavailable("timeout of the corresponding sequence has been expired".into()))
    );
    // Sequence 3's START is cancelled in the backlog; its next request joins it there.
    let cancelled = spawn(sequence_job(3, true, false, 0.0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancelled.abort();
    let follower = spawn(sequence_job(3, false, false, 0.0));
    let next = spawn(sequence_job(4, true, false, 5.0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.scheduler.infer(sequence_job(1, false, true, 0.0)).await.expect("end 1");
    let follower = follower.await.expect("join");
    assert!(matches!(&follower, Err(RequestError::Cancelled(m)) if m.contains("sequence 3")), "{follower:?}");
    assert_eq!(values(&next.await.expect("join").expect("sequence 4 got the slot")), vec![6.0, 6.0]);
    let restart = r.scheduler.infer(sequence_job(3, false, false, 0.0)).await;
    assert!(
        matches!(&restart, Err(RequestError::InvalidArgument(m)) if m.contains("START flag")),
        "{restart:?}"
    );
    let s = r.scheduler.stats().snapshot();
    let count = |reason| s.failures.iter().find(|(r, _)| *r == reason).map(|(_, n)| *n);
    assert_eq!((count(FailureReason::Canceled), count(FailureReason::Rejected)), (Some(2), Some(1)));
    assert_eq!(r.seen.lock().expect("lock").len(), 3, "1's START and END, 4's START: nothing of 2 or 3 ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_queue_delay_batches_correctly_and_reports_the_delay_it_chose() {
    let cfg = SchedulerConfig {
        auto_delay_budget: Some(Duration::from_millis(2)),
        ..config(8, &[], Duration::ZERO)
    };
    let r = rig(cfg, false);
    assert_eq!(r.scheduler.stats().snapshot().queue_delay, None, "nothing chosen before the first batch");
    // A lone request runs without waiting for others (no estimate says any will come).
    let out = r.scheduler.infer(job(1, 7.0)).await.expect("infer");
    assert_eq!(values(&out), vec![8.0; 2]);
    // Concurrent requests of varied sizes: each gets exactly its own rows back, whatever batches
    // the controller forms; the chosen delay stays within the budget.
    for round in 0..20 {
        let tasks: Vec<_> = (0..12u32)
            .map(|i| {
                let s = r.scheduler.clone();
                let rows = 1 + i % 3;
                let value = (round * 100 + i) as f32;
                tokio::spawn(async move { (rows, value, s.infer(job(rows, value)).await) })
            })
            .collect();
        for t in tasks {
            let (rows, value, out) = t.await.expect("join");
            let out = out.expect("infer");
            assert_eq!(values(&out), vec![value + 1.0; 2 * rows as usize], "{rows} rows of {value}");
        }
    }
    let s = r.scheduler.stats().snapshot();
    assert_eq!(s.inference_count, 1 + 20 * (4 * (1 + 2 + 3)));
    assert_eq!(s.success.count, 1 + 20 * 12);
    let seen = r.seen.lock().expect("lock").clone();
    assert!(seen.iter().all(|&rows| (1..=8).contains(&rows)), "never past max_batch_size: {seen:?}");
    let delay = s.queue_delay.expect("auto reports its delay");
    assert!(delay <= Duration::from_millis(2), "{delay:?} within the budget");
}
