//! Types shared by the dns-xdp kernel programs and the loader.
//!
//! Every map key and value is `#[repr(C)]` and derives bytemuck's `Pod`, whose derive
//! refuses to compile a type with padding: both sides see exactly the same bytes.
//! The functions here are plain Rust so that host unit tests can reach them.
#![no_std]

pub mod class;
pub mod config;
pub mod cookies;
pub mod counters;
pub mod dns;
pub mod keys;
pub mod limits;
pub mod maps;
pub mod ports;
pub mod proven;
pub mod samples;
pub mod table;
pub mod tcp;

pub use class::*;
pub use config::*;
pub use cookies::*;
pub use counters::*;
pub use dns::*;
pub use keys::*;
pub use limits::*;
pub use ports::*;
pub use proven::*;
pub use table::*;

#[cfg(feature = "user")]
mod user {
    /// Marks map types as `aya::Pod` for the loader.
    macro_rules! pod {
        ($($type:ty),+) => {$(
            // SAFETY: a `bytemuck::Pod` type (its derive refuses padding): plain old data.
            unsafe impl aya::Pod for $type {}
        )+};
    }

    pod!(
        super::Config,
        super::Level,
        super::Counters,
        super::EgressCounters,
        super::SourceKey,
        super::SourceState,
        super::SourceLine,
        super::SourceHash,
        super::ListEntry,
        super::AwaitedKey,
        super::AwaitedState,
        super::FragmentKey,
        super::ProvenLine,
        super::samples::QuerySample,
        super::samples::SampledTypes
    );
}

#[cfg(test)]
extern crate std;
