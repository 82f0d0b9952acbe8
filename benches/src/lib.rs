//! Sluice's benchmarks: criterion micro-benchmarks (`benches/`) and the `peer-bench` binary that
//! runs Sluice against nginx and HAProxy (`cargo xtask bench`).
