// The test page's side of the browser interop tests: one livekit-client Room,
// driven from the outside through `window.aviary.*` (driver.mjs calls these
// with page.evaluate). Every function is async, returns plain JSON, and has
// its own time bound; a failure throws an Error whose message says what was
// being waited for and what was seen instead.
'use strict';

(function () {
  const LK = window.LivekitClient;
  const log = window.aviaryLog;
  const status = (s) => { document.getElementById('status').textContent = s; };

  if (!LK) {
    status('livekit-client did not load');
    throw new Error('livekit-client did not load');
  }

  // The SDK's own logs go to the console (forwarded to the test's log by the
  // driver). 'debug' shows the signal lifecycle, offers/answers and candidates.
  LK.setLogLevel(LK.LogLevel.debug);
  LK.setLogExtension((level, msg, context) => {
    let ctx = '';
    // Every SDK line repeats the room and participant; leave those out.
    const rest = {};
    for (const [k, v] of Object.entries(context || {})) {
      if (!['room', 'roomID', 'participant', 'participantID'].includes(k)) rest[k] = v;
    }
    if (Object.keys(rest).length) {
      try {
        ctx = ' ' + JSON.stringify(rest, (k, v) => (typeof v === 'bigint' ? v.toString() : v));
      } catch (e) {
        ctx = ' (context not serialisable)';
      }
      if (ctx.length > 600) ctx = ctx.slice(0, 600) + '…';
    }
    log(`lk ${LK.LogLevel[level] || level}: ${msg}${ctx}`);
  });

  let room = null;
  const events = [];

  function record(name, detail) {
    events.push({ t: performance.now(), name, ...detail });
    log(`event ${name} ${JSON.stringify(detail)}`);
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  async function poll(what, timeoutMs, probe, describe) {
    const deadline = performance.now() + timeoutMs;
    let last;
    for (;;) {
      last = await probe();
      if (last && last.done) return last.value;
      if (performance.now() >= deadline) {
        const seen = describe ? await describe(last) : JSON.stringify(last);
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last seen: ${seen}`);
      }
      await sleep(200);
    }
  }

  function needRoom() {
    if (!room) throw new Error('not connected: call connect first');
    return room;
  }

  function participantInfo(p) {
    return {
      identity: p.identity,
      sid: p.sid,
      name: p.name,
      metadata: p.metadata,
      tracks: Array.from(p.trackPublications.values()).map((pub) => ({
        sid: pub.trackSid,
        kind: pub.kind,
        source: pub.source,
        name: pub.trackName,
        subscribed: pub.isSubscribed,
        muted: pub.isMuted,
        dimensions: pub.dimensions || null,
      })),
    };
  }

  function pcStates() {
    return window.aviaryPeerConnections.map((pc) => ({
      id: pc.aviaryId,
      connection: pc.connectionState,
      ice: pc.iceConnectionState,
      signaling: pc.signalingState,
      gathering: pc.iceGatheringState,
    }));
  }

  // Flatten an RTCStatsReport into the entries the tests care about.
  function summarizeStats(report) {
    const out = { inbound: [], outbound: [], pairs: [], local: [], remote: [], codecs: [] };
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    report.forEach((s) => {
      switch (s.type) {
        case 'inbound-rtp':
          out.inbound.push({
            kind: s.kind, ssrc: s.ssrc, packetsReceived: s.packetsReceived,
            bytesReceived: s.bytesReceived, packetsLost: s.packetsLost,
            framesReceived: s.framesReceived, framesDecoded: s.framesDecoded,
            keyFramesDecoded: s.keyFramesDecoded, framesDropped: s.framesDropped,
            frameWidth: s.frameWidth, frameHeight: s.frameHeight,
            nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount,
            totalSamplesReceived: s.totalSamplesReceived,
            codec: byId.get(s.codecId) ? byId.get(s.codecId).mimeType : null,
            decoder: s.decoderImplementation,
          });
          break;
        case 'outbound-rtp':
          out.outbound.push({
            kind: s.kind, ssrc: s.ssrc, rid: s.rid, packetsSent: s.packetsSent,
            bytesSent: s.bytesSent, framesEncoded: s.framesEncoded, framesSent: s.framesSent,
            frameWidth: s.frameWidth, frameHeight: s.frameHeight,
            nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount,
            active: s.active, qualityLimitationReason: s.qualityLimitationReason,
            codec: byId.get(s.codecId) ? byId.get(s.codecId).mimeType : null,
            encoder: s.encoderImplementation,
          });
          break;
        case 'candidate-pair':
          out.pairs.push({
            state: s.state, nominated: s.nominated, bytesSent: s.bytesSent,
            bytesReceived: s.bytesReceived, requestsSent: s.requestsSent,
            responsesReceived: s.responsesReceived, local: s.localCandidateId,
            remote: s.remoteCandidateId,
          });
          break;
        case 'local-candidate':
        case 'remote-candidate':
          (s.type === 'local-candidate' ? out.local : out.remote).push({
            id: s.id, type: s.candidateType, address: s.address, port: s.port,
            protocol: s.protocol,
          });
          break;
        default:
          break;
      }
    });
    return out;
  }

  async function pcStats() {
    const all = [];
    for (const pc of window.aviaryPeerConnections) {
      if (pc.connectionState === 'closed') continue;
      try {
        all.push({ id: pc.aviaryId, ...summarizeStats(await pc.getStats()) });
      } catch (e) {
        all.push({ id: pc.aviaryId, error: String(e) });
      }
    }
    return all;
  }

  function remoteTrack(identity, kind) {
    const p = needRoom().remoteParticipants.get(identity);
    if (!p) return null;
    for (const pub of p.trackPublications.values()) {
      if (pub.kind === kind && pub.isSubscribed && pub.track) return pub.track;
    }
    return null;
  }

  // Attach a subscribed track to an element, as an application would. Chromium
  // decodes without a sink too, but this keeps the page like a real one.
  function attach(track) {
    const el = track.attach();
    el.muted = true;
    el.autoplay = true;
    el.playsInline = true;
    document.getElementById('media').appendChild(el);
  }

  const api = {
    version() {
      return { sdk: LK.version, protocol: LK.protocolVersion, userAgent: navigator.userAgent };
    },

    // Connect to `url` with `token`. `options` go to the Room constructor
    // (adaptiveStream and dynacast are off unless given: the tests want every
    // frame, whatever the page's layout).
    async connect(url, token, options = {}, timeoutMs = 30000) {
      if (room) throw new Error('already connected');
      room = new LK.Room({ adaptiveStream: false, dynacast: false, ...options });
      const R = LK.RoomEvent;
      room
        .on(R.SignalConnected, () => record('signalConnected', {}))
        .on(R.Connected, () => record('connected', {}))
        .on(R.ConnectionStateChanged, (s) => record('connectionStateChanged', { state: s }))
        .on(R.Disconnected, (reason) => record('disconnected', { reason }))
        .on(R.Reconnecting, () => record('reconnecting', {}))
        .on(R.SignalReconnecting, () => record('signalReconnecting', {}))
        .on(R.Reconnected, () => record('reconnected', {}))
        .on(R.ParticipantConnected, (p) => record('participantConnected', { identity: p.identity }))
        .on(R.ParticipantDisconnected, (p) => record('participantDisconnected', { identity: p.identity }))
        .on(R.TrackPublished, (pub, p) =>
          record('trackPublished', { identity: p.identity, sid: pub.trackSid, kind: pub.kind, source: pub.source }))
        .on(R.TrackSubscribed, (track, pub, p) => {
          record('trackSubscribed', { identity: p.identity, sid: pub.trackSid, kind: track.kind });
          if (track.kind === 'video') attach(track);
        })
        .on(R.TrackSubscriptionFailed, (sid, p, reason) =>
          record('trackSubscriptionFailed', { identity: p && p.identity, sid, reason }))
        .on(R.TrackUnsubscribed, (track, pub, p) =>
          record('trackUnsubscribed', { identity: p.identity, sid: pub.trackSid }))
        .on(R.LocalTrackPublished, (pub) =>
          record('localTrackPublished', { sid: pub.trackSid, kind: pub.kind, source: pub.source }))
        .on(R.MediaDevicesError, (e) => record('mediaDevicesError', { error: String(e) }))
        .on(R.TrackStreamStateChanged, (pub, state, p) =>
          record('trackStreamStateChanged', { identity: p.identity, sid: pub.trackSid, state }))
        .on(R.ConnectionQualityChanged, (quality, p) =>
          record('connectionQualityChanged', { identity: p.identity, quality }))
        .on(R.DataReceived, (payload, p, kind, topic) =>
          record('dataReceived', {
            identity: p && p.identity, kind, topic, text: new TextDecoder().decode(payload),
          }));

      status('connecting');
      const t = performance.now();
      let timer;
      try {
        await Promise.race([
          room.connect(url, token, { autoSubscribe: true }),
          new Promise((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`room.connect did not finish within ${timeoutMs} ms`)),
              timeoutMs,
            );
          }),
        ]);
      } catch (e) {
        status('connect failed');
        const err = new Error(`connect failed: ${e && e.message ? e.message : e} ` +
          `(state=${room.state}, pcs=${JSON.stringify(pcStates())})`);
        throw err;
      } finally {
        clearTimeout(timer);
      }
      status('connected');
      return {
        ms: Math.round(performance.now() - t),
        state: room.state,
        roomName: room.name,
        roomSid: await room.getSid(),
        local: participantInfo(room.localParticipant),
        remote: Array.from(room.remoteParticipants.values()).map(participantInfo),
        serverInfo: room.serverInfo ? JSON.parse(JSON.stringify(room.serverInfo)) : null,
        pcs: pcStates(),
      };
    },

    state() {
      const r = needRoom();
      return {
        state: r.state,
        local: participantInfo(r.localParticipant),
        remote: Array.from(r.remoteParticipants.values()).map(participantInfo),
        pcs: pcStates(),
      };
    },

    events() {
      return events;
    },

    async waitForParticipant(identity, timeoutMs = 10000) {
      const r = needRoom();
      return poll(`participant '${identity}'`, timeoutMs,
        () => {
          const p = r.remoteParticipants.get(identity);
          return p ? { done: true, value: participantInfo(p) } : null;
        },
        () => JSON.stringify(Array.from(r.remoteParticipants.keys())));
    },

    // Publish the fake camera and/or microphone. The camera goes out as one
    // VP8 layer of width x height (no simulcast), so a subscriber knows the
    // exact size to expect.
    async publish({ camera = true, microphone = true, width = 640, height = 360,
                    frameRate = 24, codec = 'vp8', simulcast = false } = {}, timeoutMs = 20000) {
      const r = needRoom();
      const lp = r.localParticipant;
      const work = (async () => {
        if (camera) {
          await lp.setCameraEnabled(
            true,
            { resolution: { width, height, frameRate } },
            { simulcast, videoCodec: codec, videoEncoding: { maxBitrate: 800000, maxFramerate: frameRate } },
          );
        }
        if (microphone) {
          await lp.setMicrophoneEnabled(true);
        }
      })();
      let timer;
      try {
        await Promise.race([
          work,
          new Promise((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`publishing did not finish within ${timeoutMs} ms`)),
              timeoutMs,
            );
          }),
        ]);
      } catch (e) {
        throw new Error(`publish failed: ${e && e.message ? e.message : e} ` +
          `(local tracks: ${JSON.stringify(participantInfo(lp).tracks)}, pcs=${JSON.stringify(pcStates())})`);
      } finally {
        clearTimeout(timer);
      }
      return participantInfo(lp);
    },

    // What the local senders have sent so far.
    async publisherStats() {
      const r = needRoom();
      const out = [];
      for (const pub of r.localParticipant.trackPublications.values()) {
        const sender = pub.track && pub.track.sender;
        const s = sender ? summarizeStats(await sender.getStats()) : null;
        out.push({ sid: pub.trackSid, kind: pub.kind, source: pub.source, stats: s });
      }
      return out;
    },

    async waitForTrack(identity, kind = 'video', timeoutMs = 15000) {
      const r = needRoom();
      return poll(`a subscribed ${kind} track from '${identity}'`, timeoutMs,
        () => {
          const t = remoteTrack(identity, kind);
          return t ? { done: true, value: { sid: t.sid, kind: t.kind, mediaStreamTrackId: t.mediaStreamTrack.id } } : null;
        },
        () => {
          const p = r.remoteParticipants.get(identity);
          return JSON.stringify(p ? participantInfo(p) : `no participant '${identity}'`);
        });
    },

    // The receiver's inbound-rtp stats for the subscribed track.
    async receiverStats(identity, kind = 'video') {
      const t = remoteTrack(identity, kind);
      if (!t) return null;
      if (!t.receiver) return { error: 'track has no receiver' };
      const s = summarizeStats(await t.receiver.getStats());
      return { inbound: s.inbound.find((x) => x.kind === kind) || null, pairs: s.pairs };
    },

    // Wait until the subscribed video from `identity` has decoded `frames`
    // frames; return its last inbound-rtp stats.
    async waitForFramesDecoded(identity, frames = 20, timeoutMs = 20000) {
      return poll(`${frames} decoded video frames from '${identity}'`, timeoutMs,
        async () => {
          const s = await api.receiverStats(identity, 'video');
          const n = s && s.inbound ? s.inbound.framesDecoded || 0 : 0;
          return n >= frames ? { done: true, value: s.inbound } : { stats: s };
        },
        async (last) => JSON.stringify({ receiver: last && last.stats, pcs: await pcStats() }));
    },

    // A check of the test machinery alone, without the server: the fake camera
    // goes from one RTCPeerConnection to another in this page (host candidates
    // on 127.0.0.2) and the receiving side decodes `frames` frames. If this
    // fails, Chromium or the network namespace is at fault, not the server.
    async loopbackSelfTest({ width = 640, height = 360, frames = 20 } = {}, timeoutMs = 20000) {
      const stream = await navigator.mediaDevices.getUserMedia({
        video: { width, height, frameRate: 24 }, audio: false,
      });
      const a = new RTCPeerConnection();
      const b = new RTCPeerConnection();
      const candidates = [];
      a.onicecandidate = (e) => { if (e.candidate) { candidates.push(e.candidate.candidate); b.addIceCandidate(e.candidate); } };
      b.onicecandidate = (e) => { if (e.candidate) { candidates.push(e.candidate.candidate); a.addIceCandidate(e.candidate); } };
      stream.getTracks().forEach((t) => a.addTrack(t, stream));
      const received = new Promise((resolve) => { b.ontrack = (e) => resolve(e.receiver); });
      try {
        await a.setLocalDescription();
        await b.setRemoteDescription(a.localDescription);
        await b.setLocalDescription();
        await a.setRemoteDescription(b.localDescription);
        const receiver = await received;
        const stats = await poll(`${frames} frames decoded over loopback`, timeoutMs,
          async () => {
            const s = summarizeStats(await receiver.getStats());
            const v = s.inbound.find((x) => x.kind === 'video');
            return v && v.framesDecoded >= frames ? { done: true, value: v } : { v, pcs: [a.connectionState, b.connectionState] };
          });
        return { inbound: stats, candidates };
      } finally {
        stream.getTracks().forEach((t) => t.stop());
        a.close();
        b.close();
      }
    },

    // Subscribe to or unsubscribe from `identity`'s `kind` track, as an app
    // would (publication.setSubscribed); resolves once the SDK agrees.
    async setSubscribed(identity, kind, subscribed, timeoutMs = 15000) {
      const p = needRoom().remoteParticipants.get(identity);
      if (!p) throw new Error(`no participant '${identity}'`);
      const pub = Array.from(p.trackPublications.values()).find((x) => x.kind === kind);
      if (!pub) throw new Error(`'${identity}' has no ${kind} publication`);
      pub.setSubscribed(subscribed);
      const want = subscribed ? 'subscribed' : 'unsubscribed';
      return poll(`the ${kind} track from '${identity}' to be ${want}`, timeoutMs,
        () => (Boolean(pub.track) === subscribed
          ? { done: true, value: { sid: pub.trackSid } }
          : { isSubscribed: pub.isSubscribed, hasTrack: Boolean(pub.track) }));
    },

    // Enable or disable `identity`'s `kind` track as an app would
    // (publication.setEnabled: UpdateTrackSettings.disabled); it stays subscribed.
    setEnabled(identity, kind, enabled) {
      const p = needRoom().remoteParticipants.get(identity);
      if (!p) throw new Error(`no participant '${identity}'`);
      const pub = Array.from(p.trackPublications.values()).find((x) => x.kind === kind);
      if (!pub) throw new Error(`'${identity}' has no ${kind} publication`);
      pub.setEnabled(enabled);
      return { sid: pub.trackSid, enabled: pub.isEnabled, subscribed: pub.isSubscribed };
    },

    // The subscriber connection (the one the server offers on): how many
    // m-sections the server's last offer has, and how many transceivers and
    // receiving ones the browser keeps.
    subscriberSession() {
      return window.aviaryPeerConnections
        .filter((pc) => pc.connectionState !== 'closed' && pc.remoteDescription
          && pc.remoteDescription.type === 'offer')
        .map((pc) => ({
          id: pc.aviaryId,
          mediaSections: (pc.remoteDescription.sdp.match(/^m=/gm) || []).length,
          transceivers: pc.getTransceivers().length,
          receiving: pc.getTransceivers().filter((t) => t.currentDirection === 'recvonly').length,
        }));
    },

    async peerConnections() {
      return { states: pcStates(), stats: await pcStats() };
    },

    // The ICE ufrags each peer connection uses now, local and remote (an ICE
    // restart changes both), and which side offered.
    iceUfrags() {
      const ufrag = (desc) => {
        const m = desc && /a=ice-ufrag:(\S+)/.exec(desc.sdp);
        return m ? m[1] : null;
      };
      return window.aviaryPeerConnections
        .filter((pc) => pc.connectionState !== 'closed')
        .map((pc) => ({
          id: pc.aviaryId,
          local: ufrag(pc.currentLocalDescription || pc.localDescription),
          remote: ufrag(pc.currentRemoteDescription || pc.remoteDescription),
          remoteType: pc.remoteDescription ? pc.remoteDescription.type : null,
          connection: pc.connectionState,
        }));
    },

    // Publish `texts` as data packets, one each, on the reliable or the lossy channel.
    async publishData(texts, reliable = true, topic = 'page') {
      const enc = new TextEncoder();
      for (const t of texts) {
        await needRoom().localParticipant.publishData(enc.encode(t), { reliable, topic });
      }
      return { sent: texts.length };
    },

    // livekit-client's test hook (room.simulateScenario): 'signal-reconnect',
    // 'resume-reconnect', 'disconnect-signal-on-resume', 'speaker', ...
    async simulate(scenario, arg) {
      await needRoom().simulateScenario(scenario, arg);
      return { state: needRoom().state };
    },

    async disconnect() {
      if (!room) return;
      const r = room;
      room = null;
      await Promise.race([r.disconnect(), sleep(5000)]);
      status('disconnected');
    },
  };

  window.aviary = api;
  status('ready');
  log(`page ready: livekit-client ${LK.version} (protocol ${LK.protocolVersion}), ${navigator.userAgent}`);
})();
