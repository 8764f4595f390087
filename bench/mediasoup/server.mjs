// The mediasoup side of the load benchmark: one mediasoup worker and a small signaling
// server for `aviary load-test --mediasoup`. mediasoup has no signaling of its own; this
// speaks SDP to the load tester's str0m peers, one WebSocket (JSON) per peer:
//
//   publisher:  -> {"type":"publish","room":R}          <- {"type":"ready"}
//               -> {"type":"offer","sdp":S}             <- {"type":"answer","sdp":S}
//   subscriber: -> {"type":"subscribe","room":R}        <- {"type":"offer","sdp":S}
//               -> {"type":"answer","sdp":S}            (consumers resume)
//   either:     -> {"type":"ping"}                      <- {"type":"pong"}
//
// Each peer has one WebRtcTransport on --ip (ICE-lite, UDP); a subscriber consumes every
// producer of its room that exists when it subscribes (the load tester publishes first).
//
// usage: MEDIASOUP_DIR=<where build.sh installed mediasoup> node server.mjs --port P --ip IP
// Prints "mediasoup ready <pid of the worker>" once listening.

import { createRequire } from "node:module";
import path from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const dir = process.env.MEDIASOUP_DIR;
if (!dir) {
  console.error("MEDIASOUP_DIR is not set: point it at the directory bench/mediasoup/build.sh installed into");
  process.exit(2);
}
// mediasoup reads where its worker is when it is loaded.
process.env.MEDIASOUP_WORKER_BIN ??= path.join(
  path.resolve(dir),
  "node_modules/mediasoup/worker/out/Release/build/mediasoup-worker",
);
const require = createRequire(path.join(path.resolve(dir), "package.json"));
const mediasoup = require("mediasoup");
const { WebSocketServer } = require("ws");

const port = Number(args.port ?? 4443);
const ip = args.ip ?? "127.0.0.2";

const MEDIA_CODECS = [
  { kind: "audio", mimeType: "audio/opus", clockRate: 48000, channels: 2 },
  { kind: "video", mimeType: "video/VP8", clockRate: 90000 },
];
// What mediasoup understands of the offer's header extensions.
const KNOWN_EXTENSIONS = new Set([
  "urn:ietf:params:rtp-hdrext:sdes:mid",
  "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
  "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
  "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
  "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
  "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
]);

const worker = await mediasoup.createWorker({ logLevel: "warn", rtcMinPort: 40000, rtcMaxPort: 49999 });
worker.on("died", () => {
  console.error("mediasoup worker died");
  process.exit(1);
});
const rooms = new Map(); // name -> { router, producers: [] }

async function room(name) {
  let r = rooms.get(name);
  if (!r) {
    r = { router: await worker.createRouter({ mediaCodecs: MEDIA_CODECS }), producers: [] };
    rooms.set(name, r);
  }
  return r;
}

// --- SDP, the little of it the load tester's peers need

function sections(sdp) {
  const lines = sdp.split(/\r?\n/).filter((l) => l.length > 0);
  const all = [[]];
  for (const l of lines) {
    if (l.startsWith("m=")) all.push([]);
    all[all.length - 1].push(l);
  }
  return all;
}

function attrs(lines, name) {
  const prefix = `a=${name}:`;
  return lines.filter((l) => l.startsWith(prefix)).map((l) => l.slice(prefix.length));
}

function fingerprint(sdp) {
  const [session, ...media] = sections(sdp);
  const fp = attrs(session, "fingerprint")[0] ?? attrs(media[0] ?? [], "fingerprint")[0];
  if (!fp) throw new Error("no a=fingerprint in the SDP");
  const [algorithm, value] = fp.split(" ");
  return { algorithm: algorithm.toLowerCase(), value };
}

// The remote's DTLS role, from its a=setup (an answer's active/passive; an offer's actpass
// leaves us to answer passive, so it is the client).
function remoteDtlsRole(sdp) {
  const setup = sections(sdp).flatMap((s) => attrs(s, "setup"))[0] ?? "actpass";
  return setup === "passive" ? "server" : "client";
}

// A publisher's offer, one m-line: what mediasoup's produce() takes.
function producerParameters(offer) {
  const m = sections(offer).slice(1)[0];
  if (!m) throw new Error("the offer has no m-line");
  const kind = m[0].slice(2).split(" ")[0];
  const mid = attrs(m, "mid")[0];
  const rtpmap = new Map(attrs(m, "rtpmap").map((v) => v.split(" ")));
  const fmtp = new Map(attrs(m, "fmtp").map((v) => [v.split(" ")[0], v.slice(v.indexOf(" ") + 1)]));
  const want = kind === "audio" ? "opus" : "vp8";
  const pt = [...rtpmap].find(([, c]) => c.split("/")[0].toLowerCase() === want)?.[0];
  if (!pt) throw new Error(`the offer has no ${want}`);
  const rtxPt = [...rtpmap].find(([p, c]) => c.split("/")[0].toLowerCase() === "rtx" && fmtp.get(p) === `apt=${pt}`)?.[0];
  const feedback = attrs(m, "rtcp-fb")
    .filter((v) => v.startsWith(`${pt} `))
    .map((v) => {
      const [, type, parameter] = v.split(" ");
      return parameter ? { type, parameter } : { type };
    });
  const codecs = [
    {
      mimeType: kind === "audio" ? "audio/opus" : "video/VP8",
      payloadType: Number(pt),
      clockRate: kind === "audio" ? 48000 : 90000,
      ...(kind === "audio" ? { channels: 2 } : {}),
      parameters: {},
      rtcpFeedback: feedback,
    },
  ];
  if (rtxPt) {
    codecs.push({ mimeType: `${kind}/rtx`, payloadType: Number(rtxPt), clockRate: codecs[0].clockRate, parameters: { apt: Number(pt) } });
  }
  const ssrcs = [...new Set(attrs(m, "ssrc").map((v) => Number(v.split(" ")[0])))];
  const fid = attrs(m, "ssrc-group").find((v) => v.startsWith("FID "))?.split(" ").slice(1).map(Number);
  const ssrc = fid ? fid[0] : ssrcs[0];
  const cname = attrs(m, "ssrc").find((v) => v.includes(" cname:"))?.split("cname:")[1] ?? "load";
  // Simulcast by rid: the layers as a=simulcast lists them (the load tester lists them low
  // to high, the order mediasoup's encodings take).
  const simulcast = attrs(m, "simulcast")[0]?.match(/send ([^ ]+)/)?.[1];
  const rids = simulcast ? simulcast.split(";").map((r) => r.split(",")[0].replace(/^~/, "")) : [];
  const headerExtensions = attrs(m, "extmap")
    .map((v) => v.split(" "))
    .filter(([, uri]) => KNOWN_EXTENSIONS.has(uri))
    .map(([id, uri]) => ({ uri, id: Number(id.split("/")[0]) }));
  return {
    kind,
    mid,
    rtpParameters: {
      mid,
      codecs,
      headerExtensions,
      encodings: rids.length
        ? rids.map((rid) => ({ rid }))
        : [fid && rtxPt ? { ssrc, rtx: { ssrc: fid[1] } } : { ssrc }],
      rtcp: { cname, reducedSize: true },
    },
    extmaps: attrs(m, "extmap"),
    rids,
  };
}

function transportLines(transport, setup) {
  const { usernameFragment, password } = transport.iceParameters;
  const fp = transport.dtlsParameters.fingerprints.find((f) => f.algorithm === "sha-256");
  return [
    "c=IN IP4 0.0.0.0",
    `a=ice-ufrag:${usernameFragment}`,
    `a=ice-pwd:${password}`,
    `a=fingerprint:sha-256 ${fp.value}`,
    `a=setup:${setup}`,
    "a=rtcp-mux",
    ...transport.iceCandidates.map(
      (c) => `a=candidate:${c.foundation} 1 ${c.protocol} ${c.priority} ${c.address ?? c.ip} ${c.port} typ ${c.type}`,
    ),
    "a=end-of-candidates",
  ];
}

function codecLines(codecs) {
  const out = [];
  for (const c of codecs) {
    const name = c.mimeType.split("/")[1];
    out.push(`a=rtpmap:${c.payloadType} ${name}/${c.clockRate}${c.channels > 1 ? `/${c.channels}` : ""}`);
    for (const fb of c.rtcpFeedback ?? []) {
      out.push(`a=rtcp-fb:${c.payloadType} ${fb.type}${fb.parameter ? ` ${fb.parameter}` : ""}`);
    }
    const params = Object.entries(c.parameters ?? {}).map(([k, v]) => `${k}=${v}`);
    if (params.length) out.push(`a=fmtp:${c.payloadType} ${params.join(";")}`);
  }
  return out;
}

function session(mids, lines) {
  return [
    "v=0",
    `o=- ${Date.now()} 2 IN IP4 127.0.0.1`,
    "s=-",
    "t=0 0",
    "a=ice-lite",
    `a=group:BUNDLE ${mids.join(" ")}`,
    "a=msid-semantic: WMS *",
    ...lines,
    "",
  ].join("\r\n");
}

function answerFor(transport, p, producer) {
  const codecs = producer.rtpParameters.codecs;
  const m = [
    `m=${p.kind} 9 UDP/TLS/RTP/SAVPF ${codecs.map((c) => c.payloadType).join(" ")}`,
    ...transportLines(transport, "passive"),
    `a=mid:${p.mid}`,
    "a=recvonly",
    ...p.extmaps.filter((v) => KNOWN_EXTENSIONS.has(v.split(" ")[1])).map((v) => `a=extmap:${v}`),
    ...codecLines(codecs),
    ...p.rids.map((rid) => `a=rid:${rid} recv`),
    ...(p.rids.length ? [`a=simulcast:recv ${p.rids.join(";")}`] : []),
  ];
  return session([p.mid], m);
}

function offerFor(transport, consumers) {
  const lines = [];
  consumers.forEach((c, i) => {
    const rp = c.rtpParameters;
    const enc = rp.encodings[0];
    lines.push(
      `m=${c.kind} 9 UDP/TLS/RTP/SAVPF ${rp.codecs.map((x) => x.payloadType).join(" ")}`,
      ...transportLines(transport, "actpass"),
      `a=mid:${i}`,
      "a=sendonly",
      `a=msid:${c.producerId} ${c.id}`,
      ...rp.headerExtensions.map((h) => `a=extmap:${h.id} ${h.uri}`),
      ...codecLines(rp.codecs),
      ...(enc.rtx ? [`a=ssrc-group:FID ${enc.ssrc} ${enc.rtx.ssrc}`] : []),
      `a=ssrc:${enc.ssrc} cname:${rp.rtcp.cname}`,
      ...(enc.rtx ? [`a=ssrc:${enc.rtx.ssrc} cname:${rp.rtcp.cname}`] : []),
    );
  });
  return session(
    consumers.map((_, i) => String(i)),
    lines,
  );
}

// --- one WebSocket per peer

async function newTransport(router) {
  return router.createWebRtcTransport({
    listenInfos: [{ protocol: "udp", ip }],
    enableUdp: true,
    enableTcp: false,
  });
}

function serve(ws) {
  let transport = null;
  let consumers = [];
  let r = null;
  const send = (msg) => ws.readyState === ws.OPEN && ws.send(JSON.stringify(msg));
  ws.on("message", async (data) => {
    try {
      const msg = JSON.parse(data);
      switch (msg.type) {
        case "ping":
          send({ type: "pong" });
          break;
        case "publish":
          r = await room(String(msg.room));
          transport = await newTransport(r.router);
          send({ type: "ready" });
          break;
        case "offer": {
          const p = producerParameters(msg.sdp);
          await transport.connect({ dtlsParameters: { role: remoteDtlsRole(msg.sdp), fingerprints: [fingerprint(msg.sdp)] } });
          const producer = await transport.produce({ kind: p.kind, rtpParameters: p.rtpParameters });
          r.producers.push(producer);
          producer.on("transportclose", () => {
            r.producers = r.producers.filter((x) => x !== producer);
          });
          send({ type: "answer", sdp: answerFor(transport, p, producer) });
          break;
        }
        case "subscribe": {
          r = await room(String(msg.room));
          transport = await newTransport(r.router);
          consumers = [];
          for (const producer of r.producers) {
            consumers.push(
              await transport.consume({ producerId: producer.id, rtpCapabilities: r.router.rtpCapabilities, paused: true }),
            );
          }
          send({ type: "offer", sdp: offerFor(transport, consumers) });
          break;
        }
        case "answer":
          await transport.connect({ dtlsParameters: { role: remoteDtlsRole(msg.sdp), fingerprints: [fingerprint(msg.sdp)] } });
          for (const c of consumers) await c.resume();
          break;
        default:
          throw new Error(`unknown message type ${JSON.stringify(msg.type)}`);
      }
    } catch (e) {
      send({ type: "error", message: String(e?.message ?? e) });
    }
  });
  ws.on("close", () => transport?.close());
}

const wss = new WebSocketServer({ host: "127.0.0.1", port });
wss.on("connection", serve);
wss.on("listening", () => console.log(`mediasoup ready ${worker.pid}`));
