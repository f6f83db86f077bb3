//! dns-xdp loader: loads the embedded eBPF programs, configures them, attaches them to an
//! interface and reads their counters. The `dns-xdp` binary is a thin CLI over this.

pub mod conntrack;
pub mod cookies;
pub mod maps;
pub mod metrics;
pub mod options;
pub mod patch;
pub mod pins;
pub mod programs;
pub mod report;
pub mod samples;
pub mod settings;
pub mod status;

pub use programs::{Attachment, Mode, Programs};
pub use settings::Settings;
