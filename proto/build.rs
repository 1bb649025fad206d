//! Compiles proto/strata/v1/*.proto with protox (a pure-Rust protobuf compiler), so the build
//! needs no protoc on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/strata/v1/common.proto",
        "proto/strata/v1/usage.proto",
        "proto/strata/v1/agent.proto",
        "proto/strata/v1/scheduler.proto",
        "proto/strata/v1/operator.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // AgentService has an rpc named Connect, which would clash with the generated
        // `Client::connect(endpoint)` constructor; clients are made with `Client::new(channel)`.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
