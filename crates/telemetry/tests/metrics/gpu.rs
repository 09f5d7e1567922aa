//! GPU families follow NVML: present (with sane values) when a driver answers, absent otherwise,
//! never an error. `TERN_EXPECT_GPU=1` makes a missing GPU a failure (for GPU machines).

use tern_telemetry::{Metrics, MetricsConfig};

fn values<'a>(text: &'a str, family: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(move |l| l.starts_with(&format!("{family}{{gpu_uuid=\"GPU-")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[test]
fn gpu_families_follow_nvml() {
    let metrics = Metrics::new(&MetricsConfig::default()).expect("metrics without NVML is no error");
    metrics.refresh_resources();
    let text = metrics.render();
    let expect_gpu = std::env::var_os("TERN_EXPECT_GPU").is_some();
    if metrics.gpu_count() == 0 {
        assert!(!expect_gpu, "TERN_EXPECT_GPU is set but NVML found no GPU");
        assert!(!text.contains("nv_gpu_") && !text.contains("nv_energy_"), "{text}");
        return;
    }
    let gpus = metrics.gpu_count();
    println!(
        "{}",
        text.lines().filter(|l| l.contains("gpu") || l.contains("energy")).collect::<Vec<_>>().join("\n")
    );
    let util: Vec<f64> = values(&text, "nv_gpu_utilization").collect();
    assert_eq!(util.len(), gpus, "{text}");
    assert!(util.iter().all(|u| (0.0..=1.0).contains(u)));
    let total: Vec<f64> = values(&text, "nv_gpu_memory_total_bytes").collect();
    let used: Vec<f64> = values(&text, "nv_gpu_memory_used_bytes").collect();
    assert_eq!(total.len(), gpus);
    assert!(total.iter().zip(&used).all(|(t, u)| *t > 1e9 && u <= t), "{total:?} {used:?}");
    assert!(values(&text, "nv_gpu_power_usage").all(|w| w > 0.0 && w < 5000.0));
    assert!(values(&text, "nv_gpu_power_limit").all(|w| w > 0.0 && w < 5000.0));
    // Energy since start: 0 at the first reading, growing after.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    metrics.refresh_resources();
    let text = metrics.render();
    let energy: Vec<f64> = values(&text, "nv_energy_consumption").collect();
    println!("energy after 1.5 s: {energy:?} J");
    assert!(energy.iter().all(|j| *j > 0.0), "{text}");
}
