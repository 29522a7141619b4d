#![no_std]
//! Library half of the guard crate: empty. It exists so the runtime can declare a
//! build-dependency on this package and cargo rebuilds the embedded program when it changes.
