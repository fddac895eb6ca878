use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);

    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let public = root.join("shoal/v1/shoal.proto");
    let internal = [
        root.join("shoal/internal/v1/raft.proto"),
        root.join("shoal/internal/v1/cluster.proto"),
        // The Open Inference Protocol: shoal-sidecar serves it, nodes call it.
        root.join("inference/grpc_predict_v2.proto"),
    ];
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Only the public API goes into the descriptor set that reflection serves.
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("shoal_descriptor.bin"))
        .compile_protos(std::slice::from_ref(&public), std::slice::from_ref(&root))?;
    tonic_prost_build::configure().compile_protos(&internal, std::slice::from_ref(&root))?;
    for proto in std::iter::once(&public).chain(&internal) {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    Ok(())
}
