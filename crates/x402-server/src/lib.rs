//! `x402-server`: see the workspace README.
