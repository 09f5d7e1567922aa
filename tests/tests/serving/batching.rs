//! Dynamic batching through a real node and ONNX Runtime: concurrent requests become one
//! execution, each client gets its own rows back, and the statistics add up.

use tern_proto::inference as pb;
use tern_tests::{TempRepo, TestNode, tiny_add_request};

const CONFIG: &str = r#"
name: "tiny_add"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
# Wait up to 30 s for a batch of 8: the 8 concurrent requests below must become one execution.
dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 30000000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_run_as_one_batch() -> anyhow::Result<()> {
    let repo =
        TempRepo::new()?.with_example("tiny_add")?.with_file("tiny_add/config.pbtxt", CONFIG.as_bytes())?;
    let node = TestNode::start(repo.path(), &[]).await?;
    let mut calls = Vec::new();
    for i in 0..8 {
        let mut c = node.client().await?;
        calls.push(tokio::spawn(async move {
            c.model_infer(tiny_add_request("tiny_add", i as f32, i as f32)).await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let resp = call.await??.into_inner();
        assert_eq!(resp.outputs[0].shape, vec![1, 16]);
        let raw = &resp.raw_output_contents[0];
        let got: Vec<f32> =
            raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(got, vec![2.0 * i as f32; 16], "request {i} got its own rows");
    }
    let mut c = node.client().await?;
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest { name: "tiny_add".into(), version: String::new() })
        .await?
        .into_inner();
    let s = &stats.model_stats[0];
    assert_eq!((s.inference_count, s.execution_count), (8, 1));
    let batches: Vec<(u64, u64)> =
        s.batch_stats.iter().map(|b| (b.batch_size, b.compute_infer.map_or(0, |d| d.count))).collect();
    assert_eq!(batches, vec![(8, 1)]);
    let inference = s.inference_stats.unwrap_or_default();
    assert_eq!(inference.success.map(|d| d.count), Some(8));
    assert_eq!(inference.queue.map(|d| d.count), Some(8));
    node.stop().await
}
