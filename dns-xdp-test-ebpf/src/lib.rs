//! Marker library: lets the test kit's build script depend on this crate so cargo tracks
//! its sources.
#![no_std]
