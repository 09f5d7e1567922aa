//! The metrics endpoint over a real TCP connection: serve_metrics on 127.0.0.1:0, plain HTTP/1.1
//! requests, shutdown through the shutdown future.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tern_core::FailureReason;
use tern_telemetry::{Metrics, MetricsConfig, ModelSample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 GET; returns (status, headers, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Chunked transfer is possible for large bodies; de-chunk if needed.
fn body_text(headers: &str, body: &str) -> String {
    if !headers.contains("transfer-encoding: chunked") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn serves_metrics_health_and_404_then_shuts_down() {
    let cfg = MetricsConfig { metrics_interval_ms: 50, ..MetricsConfig::default() };
    let metrics = Arc::new(Metrics::new(&cfg).expect("metrics"));
    let successes = Arc::new(AtomicU64::new(0));
    let s = successes.clone();
    metrics.set_model_sampler(Arc::new(move || {
        let n = s.load(Ordering::Relaxed);
        vec![ModelSample {
            model: "tiny_add".into(),
            version: "1".into(),
            success_count: n,
            success_ns: n * 2_000_000,
            failures: vec![(FailureReason::Canceled, 1)],
            inference_count: n,
            execution_count: n,
            ..ModelSample::default()
        }]
    }));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let routes = tern_telemetry::router(metrics.clone());
    let server = tokio::spawn(tern_telemetry::serve_metrics(listener, metrics.clone(), routes, async {
        let _ = stop_rx.await;
    }));

    let (status, headers, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    let text = body_text(&headers, &body);
    assert_eq!(value_of(&text, r#"nv_inference_request_success{model="tiny_add",version="1"}"#), Some(0.0));
    assert_eq!(
        value_of(&text, r#"nv_inference_request_failure{model="tiny_add",reason="CANCELED",version="1"}"#),
        Some(1.0)
    );

    // Counters are read from the sampler on every scrape.
    successes.store(5, Ordering::Relaxed);
    metrics.observe_request("tiny_add", "1", Duration::from_millis(2));
    let (_, headers, body) = get(addr, "/metrics").await;
    let text = body_text(&headers, &body);
    assert_eq!(value_of(&text, r#"nv_inference_request_success{model="tiny_add",version="1"}"#), Some(5.0));
    assert_eq!(
        value_of(&text, r#"nv_inference_request_duration_us{model="tiny_add",version="1"}"#),
        Some(10_000.0)
    );
    assert_eq!(
        value_of(&text, r#"tern_inference_request_latency_us_count{model="tiny_add",version="1"}"#),
        Some(1.0)
    );

    // The resource poller runs beside the server (first reading at start).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, headers, body) = get(addr, "/metrics").await;
        let text = body_text(&headers, &body);
        if value_of(&text, "nv_cpu_memory_total_bytes").is_some_and(|v| v > 0.0)
            && value_of(&text, "tern_process_resident_memory_bytes").is_some_and(|v| v > 0.0)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "resource metrics never filled:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(get(addr, "/v2/health/live").await.0, 200);
    assert_eq!(get(addr, "/v2/health/ready").await.0, 404, "no readiness check set");
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    metrics.set_readiness(Arc::new(move || r.load(Ordering::Relaxed)));
    assert_eq!(get(addr, "/v2/health/ready").await.0, 503);
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get(addr, "/v2/health/ready").await.0, 200);

    stop_tx.send(()).expect("server alive");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops on shutdown")
        .expect("no panic")
        .expect("no io error");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
}
