//! Compiles the service protocol with a vendored `protoc`, so no system install is needed.
//! The signed summary messages are compiled by `huren-core` and reused here through
//! `extern_path`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .extern_path(".huren.summary.v1", "::huren_core::pb")
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::HurenCodec")
        .file_descriptor_set_path(out.join("huren_descriptor.bin"))
        // The descriptor set includes imports, so reflection also describes the summary messages.
        .compile_protos(&["huren/hub/v1/hub.proto"], &["."])?;
    // The agents' repository service, compiled apart so that the hub's descriptor set (and so
    // its reflection service) does not describe a service the hub does not serve.
    tonic_prost_build::configure().compile_protos(&["huren/agent/v1/repository.proto"], &["."])?;
    println!("cargo:rerun-if-changed=huren");
    Ok(())
}
