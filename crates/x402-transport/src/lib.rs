//! `x402-transport`: see the workspace README.
