#![no_main]
// See aviary_server::fuzzing::config for what this drives.
libfuzzer_sys::fuzz_target!(|data: &[u8]| aviary_server::fuzzing::config(data));
