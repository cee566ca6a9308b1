//! `atomicstream`: see the workspace README.
