//! Control-plane decisions: config.pbtxt parsing (`tern_repository::parse_config`, on every
//! scan and poll of a repository), and the router's pure placement planner
//! (`tern_router::placement::{choose_nodes, evictions}`) for 100 nodes and 1,000 models, the
//! scale of the `placement_at_scale` unit test.
//!
//! `cargo bench -p tern-benches --bench control`; see benches/README.md.

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tern_repository::parse_config;
use tern_router::placement::{NodeLoad, Resident, choose_nodes, evictions};

/// A config as a user writes one for an ONNX classifier: every section the node reads.
const RESNET_CONFIG: &str = r#"# ResNet-50, two CPU instances, dynamic batching with two priority levels.
name: "resnet50"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { latest: { num_versions: 2 } }
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "output"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  },
  {
    name: "features"
    data_type: TYPE_FP32
    dims: [ 2048 ]
    reshape: { shape: [ 2048, 1, 1 ] }
  }
]
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 5000
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 200000
    allow_timeout_override: true
    max_queue_size: 64
  }
}
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
"#;

fn config_parse(c: &mut Criterion) {
    let parsed = parse_config(RESNET_CONFIG).expect("the bench config parses");
    assert_eq!(parsed.output.len(), 2, "both outputs parsed");
    let mut group = c.benchmark_group("config_pbtxt");
    group.throughput(Throughput::Bytes(RESNET_CONFIG.len() as u64));
    group.bench_function("parse_resnet50", |b| {
        b.iter(|| parse_config(black_box(RESNET_CONFIG)).expect("parses"))
    });
    group.finish();
}

const MIB: u64 = 1 << 20;
const NODES: usize = 100;
const MODELS: usize = 1000;
const REPLICAS: usize = 2;

fn empty_cluster() -> Vec<NodeLoad> {
    (0..NODES)
        .map(|i| NodeLoad { key: format!("node-{i:03}"), budget: 8 << 30, used: 0, models: HashSet::new() })
        .collect()
}

fn placement(c: &mut Criterion) {
    // Same sizes as the unit test (seed 7, 1-100 MiB); names made once, outside the timing.
    let mut rng = fastrand::Rng::with_seed(7);
    let models: Vec<(String, u64)> =
        (0..MODELS).map(|m| (format!("model-{m}"), rng.u64(1..=100) * MIB)).collect();
    let none = HashSet::new();
    let place_all = |nodes: &mut [NodeLoad]| {
        for (name, size) in &models {
            let chosen = choose_nodes(nodes, name, *size, REPLICAS, &none);
            debug_assert_eq!(chosen.len(), REPLICAS);
        }
    };
    let mut full = empty_cluster();
    place_all(&mut full);

    let mut group = c.benchmark_group("placement/100_nodes");
    // The whole plan: 2,000 placements onto an empty cluster.
    group.bench_function("place_1000_models_x2", |b| {
        b.iter_batched_ref(empty_cluster, |nodes| place_all(nodes), BatchSize::SmallInput)
    });
    // One lazy load onto the full cluster (each node holds ~20 models). The two insertions are
    // undone inside the timing so the cluster stays the same; that costs two set removals.
    group.bench_function("choose_2_for_one_model", |b| {
        let size = 50 * MIB;
        b.iter(|| {
            let chosen = choose_nodes(&mut full, black_box("model-new"), size, REPLICAS, &none);
            for &i in &chosen {
                full[i].models.remove("model-new");
                full[i].used -= size;
            }
            chosen
        })
    });
    // One budget pass over every node after the budgets shrank to 3/4 of what is used: what
    // the controller's tick computes before it unloads anything.
    let now_ms = 10_000_000;
    let per_node: Vec<(u64, u64, Vec<Resident>)> = full
        .iter()
        .map(|n| {
            let residents: Vec<Resident> = n
                .models
                .iter()
                .map(|m| {
                    let bytes = models.iter().find(|(name, _)| name == m).map_or(MIB, |(_, s)| *s);
                    Resident {
                        model: m.clone(),
                        bytes,
                        last_used_ms: now_ms - rng.u64(0..3_600_000),
                        busy: rng.u8(0..10) == 0,
                        pinned: false,
                    }
                })
                .collect();
            (n.used / 4 * 3, n.used, residents)
        })
        .collect();
    group.bench_function("evictions_all_nodes", |b| {
        b.iter(|| {
            per_node
                .iter()
                .map(|(budget, used, residents)| evictions(*budget, *used, residents, now_ms, 2_000).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, config_parse, placement);
criterion_main!(benches);
