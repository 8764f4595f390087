#![no_main]
// See aviary_server::fuzzing::access_token for what this drives.
libfuzzer_sys::fuzz_target!(|data: &[u8]| aviary_server::fuzzing::access_token(data));
