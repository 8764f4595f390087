#![no_main]
// See aviary_server::fuzzing::signal_frame for what this drives.
libfuzzer_sys::fuzz_target!(|data: &[u8]| aviary_server::fuzzing::signal_frame(data));
