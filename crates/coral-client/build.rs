//! Generates the gRPC code from `proto/` with a vendored `protoc`, so that a fresh
//! machine needs no protobuf compiler installed.

// Setting an environment variable is `unsafe` since Rust 2024; a build script runs on
// one thread, so nothing can read the environment concurrently.
#[allow(unsafe_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { std::env::set_var("PROTOC", protoc) };
    // Read at run time: `env!` would bake in the path of the checkout the script was
    // first compiled in, and a target directory shared by two checkouts would then
    // generate code from the other checkout's protos.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "coral/v1/common.proto",
        "coral/v1/agent.proto",
        "coral/v1/query.proto",
        "coral/v1/profile.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| root.join(f)).collect();
    tonic_prost_build::configure().compile_protos(&paths, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
