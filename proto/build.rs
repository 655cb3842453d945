//! Generates the tonic/prost code from `nodewatch/v1/*.proto` with `protox`,
//! a pure-Rust protobuf compiler, so `cargo build` needs no `protoc`.

fn main() -> anyhow::Result<()> {
    let protos = ["nodewatch/v1/nodewatch.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
