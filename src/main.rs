//! The `tidings` server binary. Until the server lands (adapters issue), it only prints what it is.

fn main() {
    println!(
        "tidings {}: the server is not built yet; see core/examples/sse_std.rs for a runnable broker",
        env!("CARGO_PKG_VERSION")
    );
}
