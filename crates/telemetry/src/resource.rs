//! Resource collectors polled every `--metrics-interval-ms`: host CPU and memory from `/proc`
//! (no shelling out), the process's resident memory, and GPUs through NVML.
//!
//! NVML is loaded at run time (`libnvidia-ml.so.1`); without an NVIDIA driver the GPU families
//! are simply not registered and one info line says so. Nothing here is an error a caller must
//! handle: a value that cannot be read keeps its last reading.

use std::sync::{Mutex, PoisonError};

use nvml_wrapper::Nvml;
use prometheus::{CounterVec, Gauge, GaugeVec, Opts, Registry};

use crate::names::{self, Family, LABEL_GPU_UUID};

// === /proc parsing (pure, unit-tested) ===

/// Aggregate CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Parses `cpu  user nice system idle iowait irq softirq steal guest guest_nice`. Idle time is
/// idle + iowait; guest time is already inside user and nice, so it is not added again.
pub(crate) fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    let idle = field(3) + field(4);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some(CpuTimes { busy, total: busy + idle })
}

/// Busy share of the CPU time between two readings, in [0, 1]; 0 when no time passed.
pub(crate) fn cpu_utilization(prev: CpuTimes, now: CpuTimes) -> f64 {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    (now.busy.saturating_sub(prev.busy) as f64 / total as f64).clamp(0.0, 1.0)
}

/// `(total, used)` bytes from `/proc/meminfo`: used = MemTotal - MemAvailable, as Triton.
pub(crate) fn parse_meminfo(meminfo: &str) -> Option<(u64, u64)> {
    let total = kib_field(meminfo, "MemTotal:")?;
    let available = kib_field(meminfo, "MemAvailable:").or_else(|| kib_field(meminfo, "MemFree:"))?;
    Some((total, total.saturating_sub(available)))
}

/// Resident set size in bytes from `/proc/self/status` (`VmRSS:   1234 kB`).
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    kib_field(status, "VmRSS:")
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's resident memory now, in bytes (None off Linux).
pub fn process_resident_memory_bytes() -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

// === ResourceMonitor ===

/// The gauges polled by [`ResourceMonitor::refresh`], registered at construction.
pub(crate) struct ResourceMonitor {
    rss: Gauge,
    cpu: Option<CpuGauges>,
    gpu: Option<GpuMonitor>,
}

struct CpuGauges {
    utilization: Gauge,
    memory_total: Gauge,
    memory_used: Gauge,
    prev: Mutex<Option<CpuTimes>>,
}

pub(crate) fn gauge(registry: &Registry, family: &Family) -> prometheus::Result<Gauge> {
    let g = Gauge::with_opts(Opts::new(family.name, family.help))?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(registry: &Registry, family: &Family) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(family.name, family.help), family.labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl ResourceMonitor {
    pub(crate) fn new(registry: &Registry, cpu: bool, gpu: bool) -> prometheus::Result<Self> {
        let rss = gauge(registry, &names::PROCESS_RESIDENT_MEMORY_BYTES)?;
        // Tern has no pinned pool: 0 as a Triton without one reports, so dashboards find them.
        gauge(registry, &names::PINNED_MEMORY_POOL_TOTAL_BYTES)?;
        gauge(registry, &names::PINNED_MEMORY_POOL_USED_BYTES)?;
        let cpu = if cpu {
            Some(CpuGauges {
                utilization: gauge(registry, &names::CPU_UTILIZATION)?,
                memory_total: gauge(registry, &names::CPU_MEMORY_TOTAL_BYTES)?,
                memory_used: gauge(registry, &names::CPU_MEMORY_USED_BYTES)?,
                prev: Mutex::new(None),
            })
        } else {
            None
        };
        let gpu = if gpu { GpuMonitor::open(registry)? } else { None };
        Ok(ResourceMonitor { rss, cpu, gpu })
    }

    /// Number of GPUs reported through NVML (0 without NVML or with GPU metrics off).
    pub(crate) fn gpu_count(&self) -> usize {
        self.gpu.as_ref().map_or(0, |g| g.devices.len())
    }

    /// Reads everything once. Blocking (file reads, NVML calls): run off the async workers.
    pub(crate) fn refresh(&self) {
        if let Some(rss) = process_resident_memory_bytes() {
            self.rss.set(rss as f64);
        }
        if let Some(cpu) = &self.cpu {
            cpu.refresh();
        }
        if let Some(gpu) = &self.gpu {
            gpu.refresh();
        }
    }
}

impl CpuGauges {
    fn refresh(&self) {
        if let Some((total, used)) =
            std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(parse_meminfo)
        {
            self.memory_total.set(total as f64);
            self.memory_used.set(used as f64);
        }
        if let Some(now) = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_cpu_times) {
            let mut prev = self.prev.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(prev) = *prev {
                self.utilization.set(cpu_utilization(prev, now));
            }
            *prev = Some(now);
        }
    }
}

// === GPUs through NVML ===

struct GpuMonitor {
    nvml: Nvml,
    devices: Vec<GpuDevice>,
    utilization: GaugeVec,
    memory_total: GaugeVec,
    memory_used: GaugeVec,
    power_usage: GaugeVec,
    power_limit: GaugeVec,
    energy: CounterVec,
}

struct GpuDevice {
    index: u32,
    uuid: String,
    /// Energy (mJ since driver load) at start and at the last reading; None if unsupported.
    energy_mj: Mutex<Option<(u64, u64)>>,
}

impl GpuMonitor {
    /// Loads NVML. None (and one info line) when there is no driver or no GPU.
    fn open(registry: &Registry) -> prometheus::Result<Option<Self>> {
        // The unversioned name exists only with the development package; the driver ships .so.1.
        let nvml = match Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
            .init()
            .or_else(|_| Nvml::init())
        {
            Ok(nvml) => nvml,
            Err(e) => {
                tracing::info!("GPU metrics disabled: NVML not available ({e})");
                return Ok(None);
            }
        };
        let count = nvml.device_count().unwrap_or(0);
        let devices: Vec<GpuDevice> = (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let uuid = device.uuid().ok()?;
                let energy = device.total_energy_consumption().ok().map(|e| (e, e));
                Some(GpuDevice { index, uuid, energy_mj: Mutex::new(energy) })
            })
            .collect();
        if devices.is_empty() {
            tracing::info!("GPU metrics disabled: NVML found no GPU");
            return Ok(None);
        }
        tracing::info!(gpus = devices.len(), "GPU metrics enabled through NVML");
        let energy = CounterVec::new(
            Opts::new(names::ENERGY_CONSUMPTION.name, names::ENERGY_CONSUMPTION.help),
            &[LABEL_GPU_UUID],
        )?;
        registry.register(Box::new(energy.clone()))?;
        let monitor = GpuMonitor {
            utilization: gauge_vec(registry, &names::GPU_UTILIZATION)?,
            memory_total: gauge_vec(registry, &names::GPU_MEMORY_TOTAL_BYTES)?,
            memory_used: gauge_vec(registry, &names::GPU_MEMORY_USED_BYTES)?,
            power_usage: gauge_vec(registry, &names::GPU_POWER_USAGE)?,
            power_limit: gauge_vec(registry, &names::GPU_POWER_LIMIT)?,
            energy,
            nvml,
            devices,
        };
        Ok(Some(monitor))
    }

    fn refresh(&self) {
        for d in &self.devices {
            let Ok(device) = self.nvml.device_by_index(d.index) else { continue };
            let uuid = [d.uuid.as_str()];
            if let Ok(u) = device.utilization_rates() {
                self.utilization.with_label_values(&uuid).set(f64::from(u.gpu) / 100.0);
            }
            if let Ok(m) = device.memory_info() {
                self.memory_total.with_label_values(&uuid).set(m.total as f64);
                self.memory_used.with_label_values(&uuid).set(m.used as f64);
            }
            if let Ok(mw) = device.power_usage() {
                self.power_usage.with_label_values(&uuid).set(f64::from(mw) / 1000.0);
            }
            if let Ok(mw) = device.enforced_power_limit() {
                self.power_limit.with_label_values(&uuid).set(f64::from(mw) / 1000.0);
            }
            let mut energy = d.energy_mj.lock().unwrap_or_else(PoisonError::into_inner);
            let counter = self.energy.with_label_values(&uuid);
            if let (Some((_, last)), Ok(now)) = (energy.as_mut(), device.total_energy_consumption()) {
                counter.inc_by(now.saturating_sub(*last) as f64 / 1000.0);
                *last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 20 30 800 50 5 5 10 7 0\ncpu0 50 10 15 400 25 2 2 5 3 0\nintr 1 2 3\n";

    #[test]
    fn cpu_times_count_iowait_as_idle_and_skip_guest() {
        let t = parse_cpu_times(STAT).expect("parses");
        assert_eq!(t, CpuTimes { busy: 100 + 20 + 30 + 5 + 5 + 10, total: 170 + 800 + 50 });
    }

    #[test]
    fn cpu_utilization_between_readings() {
        let a = CpuTimes { busy: 100, total: 1000 };
        let b = CpuTimes { busy: 150, total: 1200 };
        assert!((cpu_utilization(a, b) - 0.25).abs() < 1e-12);
        assert_eq!(cpu_utilization(a, a), 0.0);
        assert_eq!(parse_cpu_times("intr 1 2\n"), None);
    }

    #[test]
    fn meminfo_used_is_total_minus_available() {
        let m = "MemTotal:       24684092 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_meminfo(m), Some((24_684_092 * 1024, (24_684_092 - 20_000_000) * 1024)));
        let old_kernel = "MemTotal: 100 kB\nMemFree: 40 kB\n";
        assert_eq!(parse_meminfo(old_kernel), Some((100 * 1024, 60 * 1024)));
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn vm_rss_from_status() {
        let s = "Name:\ttern-node\nVmPeak:\t  999 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_vm_rss(s), Some(2048 * 1024));
        assert!(process_resident_memory_bytes().is_some_and(|b| b > 0));
    }
}
