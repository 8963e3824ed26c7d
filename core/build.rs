//! Compiles the signed summary messages (messages only: no gRPC code in the core) with a
//! vendored `protoc`, so no system install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(&["../proto/huren/summary/v1/summary.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/huren/summary");
    Ok(())
}
