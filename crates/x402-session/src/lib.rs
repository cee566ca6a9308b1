//! `x402-session`: see the workspace README.
