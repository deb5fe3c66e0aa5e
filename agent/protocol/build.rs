//! Generates the protobuf messages and both ttrpc flavours (sync for the agent,
//! async for the host) from proto/agent.proto at build time.

use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn generate(dir: &str, async_all: bool) {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join(dir);
    std::fs::create_dir_all(&out).expect("create out dir");
    Codegen::new()
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generate agent protocol");
    // The generated files carry inner attributes, which `include!` does not accept.
    for entry in std::fs::read_dir(&out).expect("read out dir") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("write generated file");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    generate("sync", false);
    generate("async", true);
}
