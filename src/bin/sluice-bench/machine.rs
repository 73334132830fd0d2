//! Facts about the machine a run happened on, printed at the top of the report.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    /// Logical CPUs online.
    pub cores: usize,
    pub kernel: String,
    pub ram_gib: f64,
    /// The soft limit of open files after raising it to the hard limit.
    pub open_files_limit: u64,
    /// Whether Sluice and the floor could be pinned to CPU 0 with `taskset`.
    pub pinned: bool,
}

impl Machine {
    pub fn probe(open_files_limit: u64, pinned: bool) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let cores = cores.max(
            cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
        );
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let ram_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        Machine {
            cpu_model,
            cores,
            kernel,
            ram_gib: ram_kib as f64 / (1024.0 * 1024.0),
            open_files_limit,
            pinned,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine: {} | {} cores | Linux {} | {:.1} GiB RAM | open files {} | server pinned to CPU 0: {}",
            self.cpu_model,
            self.cores,
            self.kernel,
            self.ram_gib,
            self.open_files_limit,
            if self.pinned { "yes (taskset)" } else { "no" },
        )
    }
}
