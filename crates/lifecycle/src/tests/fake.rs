//! `FakeFactory` / `FakeBackend`: a stand-in runtime for the lifecycle's state machine, because
//! a real one cannot be made to stall a load, stall a request or fail on command. A model
//! "file" holds a number (its generation); every instance answers requests with it, so a test
//! sees which load served it. Loads and requests can be held at a gate (each wait bounded), a
//! load can be told to fail, and the instances alive are counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tern_backend::{
    Backend, BackendError, BackendFactory, LoadTarget, ModelBytes, PlacedInstance, Placement, VersionLoader,
};
use tern_core::{DataType, ModelSignature, Tensor, TensorSpec};
use tern_proto::inference::ModelConfig;

/// Longest a held load or request waits for its gate to open (so a broken test ends).
const GATE_LIMIT: Duration = Duration::from_secs(10);

/// Closed: callers wait (at most [`GATE_LIMIT`]) until it opens.
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    /// Callers waiting now.
    pub waiting: AtomicUsize,
}

impl Gate {
    pub fn close(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    pub fn open(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.opened.notify_all();
    }

    fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        let _open = self.opened.wait_timeout_while(closed, GATE_LIMIT, |closed| *closed);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the fake runtime did and is told to do; shared by the factory and its instances.
#[derive(Default)]
pub struct FakeRuntime {
    /// Version loads begun.
    pub loads: AtomicUsize,
    /// Instances alive now.
    pub alive: AtomicUsize,
    /// Requests the instances have started.
    pub requests: AtomicUsize,
    /// `release_freed_memory` calls.
    pub releases: AtomicUsize,
    /// Loads wait here once their first instance is open (or failed to open).
    pub load_gate: Gate,
    /// Requests wait here.
    pub request_gate: Gate,
    /// When set, opening an instance fails with this message.
    pub fail: Mutex<Option<String>>,
}

/// The fake runtime's factory; clones share one [`FakeRuntime`].
#[derive(Clone, Default)]
pub struct FakeFactory {
    pub runtime: Arc<FakeRuntime>,
}

impl BackendFactory for FakeFactory {
    fn begin(&self, _: &LoadTarget, _: &ModelConfig) -> Result<Box<dyn VersionLoader>, BackendError> {
        self.runtime.loads.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeLoader { runtime: self.runtime.clone(), generation: 0.0 }))
    }

    fn release_freed_memory(&self) {
        self.runtime.releases.fetch_add(1, Ordering::SeqCst);
    }
}

struct FakeLoader {
    runtime: Arc<FakeRuntime>,
    generation: f32,
}

/// One input `x` and one output `y`, both FP32 `[2]`.
pub fn signature() -> ModelSignature {
    let spec =
        |name: &str| TensorSpec { name: name.into(), datatype: DataType::Fp32, dims: vec![2], utf8: false };
    ModelSignature { inputs: vec![spec("x")], outputs: vec![spec("y")] }
}

impl VersionLoader for FakeLoader {
    fn signature(&mut self, model: ModelBytes<'_>) -> Result<ModelSignature, BackendError> {
        let text = match model {
            ModelBytes::File(path) => {
                std::fs::read_to_string(path).map_err(|e| BackendError::Load(e.to_string()))?
            }
            ModelBytes::Memory(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        };
        self.generation =
            text.trim().parse().map_err(|_| BackendError::Load(format!("fake model holds {text:?}")))?;
        Ok(signature())
    }

    fn plan(&mut self, config: &ModelConfig) -> Result<Placement, BackendError> {
        let count: i32 = config.instance_group.iter().map(|g| g.count.max(1)).sum();
        let instances =
            (0..count.max(1)).map(|_| PlacedInstance { label: "FAKE".into(), fallback: false }).collect();
        Ok(Placement { instance_groups: config.instance_group.clone(), instances })
    }

    fn instance(&mut self, index: usize, _: ModelBytes<'_>) -> Result<Box<dyn Backend>, BackendError> {
        let fail = self.runtime.fail.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let result: Result<Box<dyn Backend>, BackendError> = match fail {
            Some(reason) => Err(BackendError::Load(reason)),
            None => {
                self.runtime.alive.fetch_add(1, Ordering::SeqCst);
                Ok(Box::new(FakeBackend { runtime: self.runtime.clone(), generation: self.generation }))
            }
        };
        // A held load waits here with its first instance open (or failed).
        if index == 0 {
            self.runtime.load_gate.pass();
        }
        result
    }
}

/// One fake instance: answers `y = [generation, generation]`.
pub struct FakeBackend {
    runtime: Arc<FakeRuntime>,
    generation: f32,
}

impl Backend for FakeBackend {
    fn infer(&mut self, _: Vec<Tensor>, _: &[String]) -> Result<Vec<Tensor>, BackendError> {
        self.runtime.requests.fetch_add(1, Ordering::SeqCst);
        self.runtime.request_gate.pass();
        let data: Vec<u8> = [self.generation; 2].iter().flat_map(|g| g.to_le_bytes()).collect();
        Ok(vec![Tensor { name: "y".into(), datatype: DataType::Fp32, shape: vec![2], data: data.into() }])
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.runtime.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `FakeGenerativeFactory`: stands in for the generation engine (which needs a real language
/// model and ONNX Runtime) so that the lifecycle's handling of generative versions can be
/// driven and observed: a version's `genai_config.json` holds its generation, the engines alive
/// are counted, a load can be told to fail, and each load's settings are kept.
#[derive(Clone, Default)]
pub struct FakeGenerativeFactory {
    pub alive: Arc<AtomicUsize>,
    pub fail: Arc<Mutex<Option<String>>>,
    pub loads: Arc<Mutex<Vec<tern_backend::GenerativeLoad>>>,
}

/// One fake engine: its generation, counted alive until dropped.
pub struct FakeEngine {
    pub generation: String,
    alive: Arc<AtomicUsize>,
}

impl tern_backend::GenerativeFactory for FakeGenerativeFactory {
    fn load(
        &self,
        load: &tern_backend::GenerativeLoad,
    ) -> Result<Arc<dyn tern_backend::GenerativeModel>, BackendError> {
        self.loads.lock().unwrap_or_else(PoisonError::into_inner).push(load.clone());
        if let Some(reason) = self.fail.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Err(BackendError::Load(reason));
        }
        let generation = std::fs::read_to_string(load.dir.join("genai_config.json"))
            .map_err(|e| BackendError::Load(e.to_string()))?;
        self.alive.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(FakeEngine { generation: generation.trim().to_owned(), alive: self.alive.clone() }))
    }
}

impl tern_backend::GenerativeModel for FakeEngine {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn memory_bytes(&self) -> u64 {
        1 << 20
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}
