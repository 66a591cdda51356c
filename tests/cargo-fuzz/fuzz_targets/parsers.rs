//! Every in-memory parser of untrusted input under libFuzzer: the input's first byte picks the
//! parser, the rest is its input (`tests/parsers/mod.rs` `any`, which `tests/fuzz.rs` also runs).
//! A panic, or a broken rule of the parser's output, is a crash libFuzzer saves and minimises.
#![no_main]

#[path = "../../parsers/mod.rs"]
mod parsers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = parsers::any(data) {
        panic!("{broken}");
    }
});
