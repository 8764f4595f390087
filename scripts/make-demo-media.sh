#!/bin/sh
# Makes the media `aviary join --publish-demo` publishes (embedded in the binary):
# a moving test pattern (VP8, 320x240, 15 fps, a keyframe every second) and a
# 440 Hz tone (Opus), each a 4 s loop that joins up without a jump (the tone
# has a whole number of cycles). Needs ffmpeg with libvpx and libopus.
set -eu
out="$(dirname "$0")/../crates/aviary-client/assets"
ffmpeg -loglevel error -y -f lavfi -i "testsrc2=size=320x240:rate=15" -t 4 \
    -c:v libvpx -b:v 300k -g 15 -keyint_min 15 -auto-alt-ref 0 -deadline good \
    "$out/demo-pattern.ivf"
ffmpeg -loglevel error -y -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 4 \
    -af "volume=0.5" -ac 1 -c:a libopus -b:a 32k -frame_duration 20 \
    "$out/demo-tone.ogg"
ls -l "$out"
