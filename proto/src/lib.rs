//! Huren's gRPC protocol: the generated hub service, its messages, and the file descriptor set
//! the reflection service publishes. The signed summary messages (`huren.summary.v1`) come from
//! `huren_core::pb`; this crate only adds the service around them.
//!
//! Only the edges use these types: the hub's `grpc` module and the agent's `hub` module (and
//! its repository service, `repository`) convert them to domain types straight away, with the
//! conversions both sides need written once in [`convert`].

#![allow(clippy::all)]

pub mod codec;
pub mod convert;

/// `huren.hub.v1`: the hub service, its client and server stubs and request/response messages.
pub mod hub {
    tonic::include_proto!("huren.hub.v1");
}

/// `huren.agent.v1`: the repository service that member agents serve to each other (full
/// reports behind summaries).
pub mod agent {
    tonic::include_proto!("huren.agent.v1");
}

/// `huren.summary.v1`, re-exported from `huren_core`.
pub use huren_core::pb as summary;

/// Encoded `FileDescriptorSet` of both packages, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("huren_descriptor");
