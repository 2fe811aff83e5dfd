//! Compiles the Cap'n Proto schemas. Needs the `capnp` schema compiler on PATH
//! (Debian package `capnproto`; `.ci/run` installs it).

fn main() {
    println!("cargo:rerun-if-changed=qpq.capnp");
    println!("cargo:rerun-if-changed=raft.capnp");
    if let Err(e) = capnpc::CompilerCommand::new()
        .file("qpq.capnp")
        .file("raft.capnp")
        .run()
    {
        panic!(
            "compiling qpq.capnp/raft.capnp failed (is the `capnp` compiler installed? apt-get install capnproto): {e}"
        );
    }
}
