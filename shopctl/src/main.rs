//! shopctl: placeholder, being written.
fn main() {}
