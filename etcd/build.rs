//! Compiles proto/etcd.proto (the part of etcd's v3 API Strata uses) with protox, so the build
//! needs no protoc on the machine; client stubs only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/etcd.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
