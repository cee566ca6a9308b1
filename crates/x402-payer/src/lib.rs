//! `x402-payer`: see the workspace README.
