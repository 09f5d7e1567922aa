//! The checked-in dashboard and alert rules use only metric names this crate exports, so a
//! renamed family cannot silently empty a panel or disarm an alert.

use std::path::PathBuf;

use tern_telemetry::names;

fn deploy(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `nv_...` / `tern_...` identifier in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !ident(bytes[i - 1]))
            && (text[i..].starts_with("nv_") || text[i..].starts_with("tern_"));
        if starts {
            let end = (i..bytes.len()).find(|&j| !ident(bytes[j])).unwrap_or(bytes.len());
            // A bare prefix ("the tern_* ones") names no metric.
            if !text[i..end].ends_with('_') {
                out.push(text[i..end].to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The families tern-router registers (crates/router/src/metrics.rs names them as string
/// literals; this crate cannot depend on the router), with a histogram's series suffixes.
fn router_series() -> Vec<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../router/src/metrics.rs");
    let source = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let families: Vec<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| literal.starts_with("tern_router_") && !literal.contains(' '))
        .map(str::to_string)
        .collect();
    assert!(families.len() >= 9, "router metric names not found in {}: {families:?}", p.display());
    let mut series = Vec::new();
    for family in families {
        if family.ends_with("_seconds") {
            for suffix in ["_bucket", "_sum", "_count"] {
                series.push(format!("{family}{suffix}"));
            }
        }
        series.push(family);
    }
    series
}

fn assert_known(file: &str, text: &str) -> usize {
    let found = metric_names(text);
    let router = router_series();
    for name in &found {
        assert!(
            names::family_of(name).is_some() || router.contains(name),
            "{file} uses {name}, which neither tern-telemetry nor tern-router exports"
        );
    }
    found.len()
}

#[test]
fn dashboard_is_valid_json_using_exported_metrics() {
    let text = deploy("grafana/tern-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON parses");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().expect("panel id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("every target has an expr"))
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let uses = assert_known("tern-dashboard.json", &exprs.join("\n"));
    // The panels the issue asks for: throughput, latency, queue, batch, failures, pending, CPU,
    // memory, GPU.
    for needed in [
        "nv_inference_request_success",
        "tern_inference_request_latency_us_bucket",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "tern_inference_batch_size_bucket",
        "nv_inference_request_failure",
        "nv_inference_pending_request_count",
        "nv_cpu_utilization",
        "nv_cpu_memory_used_bytes",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        // Routers: requests and errors by model and code, upstream latency, retries, node
        // health, placements and evictions.
        "tern_router_requests_total",
        "tern_router_upstream_latency_seconds_bucket",
        "tern_router_retries_total",
        "tern_router_node_healthy",
        "tern_router_placements_total",
        "tern_router_evictions_total",
    ] {
        assert!(exprs.iter().any(|e| e.contains(needed)), "no panel shows {needed}");
    }
    assert!(uses > 40);
}

#[test]
fn alert_rules_use_exported_metrics() {
    let rules = deploy("prometheus/tern-alerts.yml");
    assert!(assert_known("tern-alerts.yml", &rules) >= 10);
    assert_known("tern-alerts.test.yml", &deploy("prometheus/tern-alerts.test.yml"));
}
