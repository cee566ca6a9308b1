//! The atomicstream command-line tool.
fn main() {}
