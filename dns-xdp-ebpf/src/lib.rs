//! Marker library: lets dns-xdp/build.rs depend on this crate so cargo tracks its sources.
#![no_std]
