//! Runs the loaded XDP program on crafted frames with BPF_PROG_TEST_RUN.

use aya::programs::{TestRun, TestRunOptions};
use dns_xdp::{Programs, Settings, programs::XDP_PROGRAM};
use dns_xdp_common::{Counter, Counters, EgressCounters};

use crate::test_programs::{self, XDP_PASS_PROGRAM};

/// XDP verdicts, as the kernel numbers them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The programs, loaded but not attached.
pub struct Harness {
    programs: Programs,
    /// The test kit's `xdp_pass`, loaded on first use: the baseline of measurements.
    baseline: Option<aya::Ebpf>,
}

/// What one frame did: the verdict and the counters that moved.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: u32,
    pub delta: Counters,
}

impl Outcome {
    /// The counters that moved by one, other than `Packets`.
    pub fn bumped(&self) -> Vec<Counter> {
        Counter::ALL
            .iter()
            .copied()
            .filter(|&counter| counter != Counter::Packets && self.delta.get(counter) != 0)
            .collect()
    }
}

impl Harness {
    /// Loaded with these DNS ports and nothing else configured, sampling off too (its
    /// counters would move with the first packet of each decision).
    pub fn new(ports: &[u16]) -> anyhow::Result<Self> {
        Self::with(&Settings {
            ports: ports.to_vec(),
            sample: 0,
            ..Settings::default()
        })
    }

    pub fn with(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            programs: Programs::load(settings, None)?,
            baseline: None,
        })
    }

    pub fn programs(&mut self) -> &mut Programs {
        &mut self.programs
    }

    /// Runs `program` once on `frame`: the verdict and the time the kernel measured.
    pub fn run_program(
        &mut self,
        program: &str,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, std::time::Duration)> {
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.repeat = repeat;
        let result = self.programs.xdp(program)?.test_run(options)?;
        Ok((result.return_value, result.duration))
    }

    /// Runs the main program `repeat` times on each of `frames` at once, frame `i` from a
    /// thread pinned to CPU `i`: the time per run the kernel measured on each CPU. All
    /// share the maps, as CPUs do under traffic.
    pub fn run_concurrently(
        &mut self,
        frames: &[Vec<u8>],
        repeat: u32,
    ) -> anyhow::Result<Vec<std::time::Duration>> {
        let program: &aya::programs::Xdp = self.programs.xdp(XDP_PROGRAM)?;
        let start = std::sync::Barrier::new(frames.len());
        std::thread::scope(|scope| {
            let threads: Vec<_> = frames
                .iter()
                .enumerate()
                .map(|(cpu, frame)| {
                    let start = &start;
                    scope.spawn(move || {
                        crate::flood::pin_to_cpu(cpu);
                        let mut options = TestRunOptions::new();
                        options.data_in = Some(frame);
                        options.repeat = repeat;
                        start.wait();
                        program.test_run(options).map(|result| result.duration)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|thread| Ok(thread.join().expect("a test-run thread panicked")?))
                .collect()
        })
    }

    /// Runs the test kit's bare `XDP_PASS` program `repeat` times on `frame`: the verdict
    /// and the time the kernel measured, the cost of running any XDP program at all.
    pub fn run_baseline(
        &mut self,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, std::time::Duration)> {
        if self.baseline.is_none() {
            self.baseline = Some(test_programs::load(XDP_PASS_PROGRAM)?);
        }
        let ebpf = self.baseline.as_mut().expect("loaded above");
        let program: &mut aya::programs::Xdp = ebpf
            .program_mut(XDP_PASS_PROGRAM)
            .expect("loaded above")
            .try_into()?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.repeat = repeat;
        let result = program.test_run(options)?;
        Ok((result.return_value, result.duration))
    }

    /// Runs the main program once on `frame`: the verdict and the frame it left.
    pub fn run_and_read(&mut self, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.data_out = Some(&mut out);
        let result = self.programs.xdp(XDP_PROGRAM)?.test_run(options)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs the egress (TC) program once on `frame`; returns its egress counter deltas.
    pub fn run_egress(&mut self, frame: &[u8]) -> anyhow::Result<EgressCounters> {
        let before = self.programs.maps().egress_counters()?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        self.programs.egress()?.test_run(options)?;
        let after = self.programs.maps().egress_counters()?;
        let mut delta = EgressCounters::default();
        for (index, value) in delta.values.iter_mut().enumerate() {
            *value = after.values[index] - before.values[index];
        }
        Ok(delta)
    }

    /// Runs the main program once on `frame` and reports the verdict and counter deltas.
    pub fn run(&mut self, frame: &[u8]) -> anyhow::Result<Outcome> {
        let before = self.programs.maps().counters()?;
        let (verdict, _) = self.run_program(XDP_PROGRAM, frame, 1)?;
        let after = self.programs.maps().counters()?;
        let mut delta = Counters::default();
        for (index, value) in delta.values.iter_mut().enumerate() {
            *value = after.values[index] - before.values[index];
        }
        Ok(Outcome { verdict, delta })
    }
}

pub use dns_xdp::maps::monotonic_ns;
