//! Runs one ensemble request (`platform: "ensemble"`) as Triton's ensemble scheduler does
//! (core src/ensemble_scheduler/ensemble_scheduler.cc): the steps form a graph over named
//! tensors; a step starts as soon as all its inputs exist, so independent steps run at once;
//! each step is an ordinary request to that step's model, validated against it and queued on
//! its own scheduler (so its dynamic batcher batches it with other requests, ensemble or not);
//! tensors pass between steps as the same `bytes::Bytes` buffers, renamed, never copied.
//!
//! As in Triton: steps whose outputs the request does not need are pruned; the request's
//! priority and timeout go to every step (`InitStep`); the step models are looked up per
//! request (a step's reload switches the ensemble to the new version) and held until the step
//! is done (an unload waits for it); the first step to fail fails the request, its message
//! prefixed "in ensemble '<name>', " and naming the step's model, and the steps still running
//! are cancelled (their futures dropped, so a queued step leaves its queue). Dropping the
//! request's future (client gone, deadline passed) cancels every step the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tern_core::{FailureReason, RequestError, Tensor, validate_request};
use tern_lifecycle::{EnsembleGraph, EnsembleStep, LoadedModel, ModelManager};
use tern_proto::inference::{self as pb, model_infer_request as req};
use tern_scheduler::{CacheProbe, InferJob};

/// Nested ensembles (an ensemble step that is an ensemble) go this deep at most; the lifecycle
/// refuses cycles, this bounds the recursion whatever the table holds.
const MAX_DEPTH: usize = 8;

/// What every step of one ensemble request shares.
#[derive(Clone, Copy)]
pub(crate) struct Request<'a> {
    pub models: &'a ModelManager,
    pub priority: u64,
    pub timeout: Option<Duration>,
    /// The request's sequence parameters, passed to every step as Triton's ensemble scheduler
    /// passes the correlation ID and flags on (a stateful step keeps its sequence).
    pub sequence: &'a tern_core::SequenceParams,
}

/// Runs ensemble `ensemble` on `inputs` (validated against it) and returns the `wanted`
/// outputs (every output when empty), in that order. Records the ensemble's statistics.
pub(crate) async fn run(
    request: Request<'_>,
    ensemble: &LoadedModel,
    batch_size: u32,
    inputs: Vec<Tensor>,
    wanted: &[String],
) -> Result<Vec<Tensor>, RequestError> {
    let started = Instant::now();
    // With `response_cache { enable: true }` the top-level response is cached as Triton's
    // ensemble scheduler does (core src/ensemble_scheduler/ensemble_scheduler.cc: `CacheLookUp`
    // before any step runs, a hit counted on the ensemble alone; `CacheEnsembleTopLevelRequest`
    // inserts a success and counts the miss).
    let miss = match ensemble.scheduler.cache_probe(&inputs, wanted) {
        Some(CacheProbe::Hit(outputs)) => return Ok(outputs),
        Some(CacheProbe::Miss(miss)) => Some(miss),
        None => None,
    };
    // Dropped before the end (the client cancelled, its deadline passed): the ensemble request
    // failed as cancelled, as its steps did, instead of vanishing from its statistics.
    let mut unfinished = Unfinished { stats: ensemble.scheduler.stats(), started, finished: false };
    let result = run_graph(request, ensemble, inputs, wanted, 0).await;
    unfinished.finished = true;
    let stats = ensemble.scheduler.stats();
    match &result {
        Ok((outputs, steps)) => {
            stats.record_ensemble_request(batch_size, *steps, started.elapsed());
            if let Some(miss) = miss {
                ensemble.scheduler.cache_offer(miss, outputs);
            }
        }
        Err(_) => stats.record_failure(FailureReason::Other, started.elapsed()),
    }
    result.map(|(outputs, _)| outputs)
}

/// Records a cancelled ensemble request when dropped unfinished.
struct Unfinished<'a> {
    stats: &'a tern_scheduler::ModelStats,
    started: Instant,
    finished: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.stats.record_failure(FailureReason::Canceled, self.started.elapsed());
        }
    }
}

/// The steps that produce `wanted` (Triton prunes the others: "Prune ensemble first if not
/// all outputs are requested").
fn needed_steps(graph: &EnsembleGraph, wanted: &[String]) -> Vec<bool> {
    let mut needed_tensors: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    let mut needed = vec![false; graph.steps.len()];
    loop {
        let mut changed = false;
        for (index, step) in graph.steps.iter().enumerate() {
            if !needed[index] && step.outputs.iter().any(|(_, t)| needed_tensors.contains(t.as_str())) {
                needed[index] = true;
                needed_tensors.extend(step.inputs.iter().map(|(_, t)| t.as_str()));
                changed = true;
            }
        }
        if !changed {
            return needed;
        }
    }
}

type StepResult = (usize, Result<(Vec<Tensor>, Duration), RequestError>);

fn run_graph<'a>(
    request: Request<'a>,
    ensemble: &'a LoadedModel,
    inputs: Vec<Tensor>,
    wanted: &'a [String],
    depth: usize,
) -> BoxFuture<'a, Result<(Vec<Tensor>, Duration), RequestError>> {
    Box::pin(async move {
        let name = ensemble.name.as_str();
        let Some(graph) = ensemble.ensemble.as_deref() else {
            return Err(RequestError::Internal(format!("model '{name}' is not an ensemble")));
        };
        if depth >= MAX_DEPTH {
            return Err(RequestError::Internal(format!(
                "in ensemble '{name}', ensembles are nested more than {MAX_DEPTH} deep"
            )));
        }
        let wanted: Vec<String> = if wanted.is_empty() {
            ensemble.io.outputs.iter().map(|o| o.name.clone()).collect()
        } else {
            wanted.to_vec()
        };
        let needed = needed_steps(graph, &wanted);
        let mut tensors: HashMap<String, Tensor> = inputs.into_iter().map(|t| (t.name.clone(), t)).collect();
        let mut started = vec![false; graph.steps.len()];
        let mut running: FuturesUnordered<BoxFuture<'a, StepResult>> = FuturesUnordered::new();
        let mut steps_time = Duration::ZERO;
        loop {
            for (index, step) in graph.steps.iter().enumerate() {
                if started[index]
                    || !needed[index]
                    || !step.inputs.iter().all(|(_, t)| tensors.contains_key(t))
                {
                    continue;
                }
                started[index] = true;
                // The step's inputs: the ensemble tensors under the step model's input names,
                // sharing their buffers.
                let step_inputs: Vec<Tensor> = step
                    .inputs
                    .iter()
                    .map(|(input, tensor)| Tensor { name: input.clone(), ..tensors[tensor].clone() })
                    .collect();
                running.push(Box::pin(async move {
                    let began = Instant::now();
                    let result = run_step(request, name, index, step, step_inputs, depth).await;
                    (index, result.map(|outputs| (outputs, began.elapsed())))
                }));
            }
            let Some((index, result)) = running.next().await else { break };
            let (outputs, elapsed) = result?;
            steps_time += elapsed;
            let step = &graph.steps[index];
            for mut tensor in outputs {
                if let Some((_, target)) = step.outputs.iter().find(|(output, _)| *output == tensor.name) {
                    tensor.name.clone_from(target);
                    tensors.insert(target.clone(), tensor);
                }
            }
        }
        let mut outputs = Vec::with_capacity(wanted.len());
        for output in &wanted {
            let Some(tensor) = tensors.remove(output) else {
                // Triton's words for a graph that ends without an output (FinishEnsemble).
                return Err(RequestError::InvalidArgument(format!(
                    "in ensemble '{name}', unexpected deadlock, at least one output is not set while \
                     no more ensemble steps can be made"
                )));
            };
            outputs.push(tensor);
        }
        Ok((outputs, steps_time))
    })
}

/// One step: the step model's request, validated against it as a client's would be, then
/// queued on its scheduler (or run as an ensemble itself).
async fn run_step(
    request: Request<'_>,
    ensemble: &str,
    index: usize,
    step: &EnsembleStep,
    inputs: Vec<Tensor>,
    depth: usize,
) -> Result<Vec<Tensor>, RequestError> {
    let in_step = |e: RequestError| step_error(ensemble, index, step, e);
    let model: Arc<LoadedModel> = request.models.get(&step.model, &step.version_str()).map_err(in_step)?;
    let wanted: Vec<String> = step.outputs.iter().map(|(output, _)| output.clone()).collect();
    let started = Instant::now();
    let validated = validate_request(&model.io, step_request(&model, inputs, &wanted)).inspect_err(|_| {
        model.scheduler.stats().record_failure(FailureReason::Other, started.elapsed());
    });
    let validated = validated.map_err(in_step)?;
    let outputs = if model.ensemble.is_some() {
        // A nested ensemble is enqueued on its own scheduler in Triton, which looks its cache
        // up as for a top-level request.
        let miss = match model.scheduler.cache_probe(&validated.inputs, &wanted) {
            Some(CacheProbe::Hit(outputs)) => return Ok(outputs),
            Some(CacheProbe::Miss(miss)) => Some(miss),
            None => None,
        };
        let result = run_graph(request, &model, validated.inputs, &wanted, depth + 1).await;
        let stats = model.scheduler.stats();
        match &result {
            Ok((outputs, steps)) => {
                stats.record_ensemble_request(validated.batch_size, *steps, started.elapsed());
                if let Some(miss) = miss {
                    model.scheduler.cache_offer(miss, outputs);
                }
            }
            Err(_) => stats.record_failure(FailureReason::Other, started.elapsed()),
        }
        result.map(|(outputs, _)| outputs).map_err(in_step)?
    } else if model.generative.is_some() || model.decoupled() {
        return Err(in_step(RequestError::InvalidArgument(format!(
            "model '{}' is decoupled; ensembles run models with one response per request",
            model.name
        ))));
    } else {
        let job = InferJob {
            inputs: validated.inputs,
            batch_size: validated.batch_size,
            outputs: wanted,
            priority: request.priority,
            timeout: request.timeout,
            sequence: request.sequence.clone(),
        };
        let mut outputs = model.scheduler.infer(job).await.map_err(in_step)?;
        for tensor in &mut outputs {
            if let Some(spec) = model.io.outputs.iter().find(|s| s.name == tensor.name) {
                crate::service::restore_config_shape(
                    tensor,
                    &spec.dims,
                    spec.reshape.is_some(),
                    model.io.max_batch_size > 0,
                );
            }
        }
        outputs
    };
    Ok(outputs)
}

/// The step's request as a client would send it, its raw contents the ensemble's buffers.
fn step_request(model: &LoadedModel, inputs: Vec<Tensor>, wanted: &[String]) -> pb::ModelInferRequest {
    let mut raw_input_contents = Vec::with_capacity(inputs.len());
    let inputs = inputs
        .into_iter()
        .map(|t| {
            raw_input_contents.push(t.data);
            req::InferInputTensor {
                name: t.name,
                datatype: t.datatype.wire_name().to_owned(),
                shape: t.shape,
                parameters: Default::default(),
                contents: None,
            }
        })
        .collect();
    pb::ModelInferRequest {
        model_name: model.name.clone(),
        model_version: model.version_str.clone(),
        id: String::new(),
        parameters: Default::default(),
        inputs,
        outputs: wanted
            .iter()
            .map(|name| req::InferRequestedOutputTensor {
                name: name.clone(),
                parameters: Default::default(),
            })
            .collect(),
        raw_input_contents,
    }
}

/// A step's failure as the ensemble's: same status, Triton's prefix, the step named.
fn step_error(ensemble: &str, index: usize, step: &EnsembleStep, error: RequestError) -> RequestError {
    let prefix = format!("in ensemble '{ensemble}', step {index} (model '{}'): ", step.model);
    match error {
        RequestError::InvalidArgument(m) => RequestError::InvalidArgument(prefix + &m),
        RequestError::NotFound(m) => RequestError::NotFound(prefix + &m),
        RequestError::Unavailable(m) => RequestError::Unavailable(prefix + &m),
        RequestError::ResourceExhausted(m) => RequestError::ResourceExhausted(prefix + &m),
        RequestError::Unimplemented(m) => RequestError::Unimplemented(prefix + &m),
        RequestError::Internal(m) => RequestError::Internal(prefix + &m),
        RequestError::Cancelled(m) => RequestError::Cancelled(prefix + &m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(model: &str, inputs: &[&str], outputs: &[&str]) -> EnsembleStep {
        let pairs = |names: &[&str]| names.iter().map(|n| (format!("{n}_in"), (*n).to_owned())).collect();
        EnsembleStep { model: model.into(), version: -1, inputs: pairs(inputs), outputs: pairs(outputs) }
    }

    #[test]
    fn only_the_steps_an_asked_output_needs_run() {
        // x -> a -> p -> c -> y ; x -> b -> q -> d -> z
        let graph = EnsembleGraph {
            steps: vec![
                step("a", &["x"], &["p"]),
                step("b", &["x"], &["q"]),
                step("c", &["p"], &["y"]),
                step("d", &["q"], &["z"]),
            ],
        };
        assert_eq!(needed_steps(&graph, &["y".into()]), vec![true, false, true, false]);
        assert_eq!(needed_steps(&graph, &["y".into(), "z".into()]), vec![true; 4]);
    }
}
