// Loaded before livekit-client: keeps every RTCPeerConnection the SDK makes so
// the tests can read their states and stats, and logs what ICE does (local
// candidates as Chromium gathers them, the remote ones the SDK adds, and the
// state changes). Only observes: nothing is changed on the way through.
'use strict';

(function () {
  const t0 = performance.now();
  const stamp = () => ((performance.now() - t0) / 1000).toFixed(3);
  // The driver exposes window.aviarySink (page.exposeFunction): lines sent
  // there reach the test log in order, apart from the console, which carries
  // only the SDK's own default output (the driver keeps its warnings/errors).
  const log = (...parts) => {
    const line = `[${stamp()}] ${parts.join(' ')}`;
    if (typeof window.aviarySink === 'function') window.aviarySink(line);
    else console.log(line);
  };
  window.aviaryLog = log;

  const Native = window.RTCPeerConnection;
  const pcs = [];
  window.aviaryPeerConnections = pcs;

  function describeCandidate(c) {
    if (!c) return 'end-of-candidates';
    const s = typeof c === 'string' ? c : c.candidate;
    return s === '' ? 'end-of-candidates' : s;
  }

  class ObservedPeerConnection extends Native {
    constructor(config, ...rest) {
      super(config, ...rest);
      const id = pcs.length;
      this.aviaryId = id;
      pcs.push(this);
      const servers = (config && config.iceServers) || [];
      log(`pc${id}: created (iceServers=${JSON.stringify(servers)}, ` +
          `iceTransportPolicy=${config && config.iceTransportPolicy})`);
      this.addEventListener('icecandidate', (e) =>
        log(`pc${id}: local candidate ${describeCandidate(e.candidate)}`));
      this.addEventListener('icecandidateerror', (e) =>
        log(`pc${id}: candidate error ${e.errorCode} ${e.errorText} (${e.url || ''})`));
      this.addEventListener('icegatheringstatechange', () =>
        log(`pc${id}: gathering ${this.iceGatheringState}`));
      this.addEventListener('iceconnectionstatechange', () =>
        log(`pc${id}: ice ${this.iceConnectionState}`));
      this.addEventListener('connectionstatechange', () =>
        log(`pc${id}: connection ${this.connectionState}`));
      this.addEventListener('signalingstatechange', () =>
        log(`pc${id}: signaling ${this.signalingState}`));
      this.addEventListener('track', (e) =>
        log(`pc${id}: remote track kind=${e.track.kind} mid=${e.transceiver && e.transceiver.mid} ` +
            `streams=${e.streams.map((s) => s.id).join(',')}`));
      this.addEventListener('datachannel', (e) =>
        log(`pc${id}: remote data channel ${e.channel.label}`));
    }

    addIceCandidate(candidate, ...rest) {
      log(`pc${this.aviaryId}: remote candidate ${describeCandidate(candidate)}`);
      return super.addIceCandidate(candidate, ...rest);
    }

    setRemoteDescription(desc, ...rest) {
      log(`pc${this.aviaryId}: setRemoteDescription ${desc && desc.type}`);
      return super.setRemoteDescription(desc, ...rest).catch((e) => {
        log(`pc${this.aviaryId}: setRemoteDescription failed: ${e}`);
        throw e;
      });
    }

    setLocalDescription(...args) {
      return super.setLocalDescription(...args).catch((e) => {
        log(`pc${this.aviaryId}: setLocalDescription failed: ${e}`);
        throw e;
      });
    }
  }

  window.RTCPeerConnection = ObservedPeerConnection;
})();
