#!/usr/bin/env node
// Drives one livekit-client page in Debian's Chromium for the interop tests.
//
//   node tests/browser/driver.mjs
//
// 1. serves page/ and livekit-client's UMD build from 127.0.0.1 (a free port);
// 2. starts Chromium headless through playwright-core with exactly the flags in
//    CHROMIUM_FLAGS below (playwright's own defaults are not used) and a fresh
//    profile directory, and opens the page;
// 3. answers requests on stdin, one JSON object a line:
//        {"id": 1, "fn": "connect", "args": ["ws://...", "token"], "timeout_ms": 40000}
//    by calling window.aviary[fn](...args) in the page, and writes one line on
//    stdout for each:
//        {"id": 1, "ok": true, "value": ...}   or   {"id": 1, "ok": false, "error": "..."}
//    The first line on stdout is {"ready": true, ...} once the page has loaded
//    (or {"ready": false, "error": "..."}).
// 4. exits when stdin closes (or on SIGTERM/SIGINT), closing Chromium first.
//
// Everything else goes to stderr, one event a line: the page's console (the
// SDK's debug log, ICE candidates and states), every signaling message on the
// page's WebSockets decoded from protobuf, HTTP requests that fail or answer
// >= 400, and page errors.
//
// Environment:
//   AVIARY_CHROMIUM             Chromium binary (default /usr/bin/chromium)
//   AVIARY_CHROMIUM_EXTRA_FLAGS more flags, space-separated (for experiments)
//   AVIARY_CHROMIUM_NO_MDNS_FLAG=1  leave out --disable-features=WebRtcHideLocalIpsWithMdns
//   AVIARY_BROWSER_FULL_SDP=1   log SDPs whole in the signaling trace (default: first lines)

import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { SignalRequest, SignalResponse } from '@livekit/protocol';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const LAUNCH_TIMEOUT_MS = 30000;
const DEFAULT_CALL_TIMEOUT_MS = 60000;

// -------------------------------------------------------------------------
// logging

const T0 = Date.now();
// Tokens and the v1 path's join_request (a long base64 blob) are cut out of
// URLs and messages in the log.
function redact(text) {
  return String(text)
    .replace(/access_token=[^&\s'"]+/g, 'access_token=…')
    .replace(/join_request=[^&\s'"]{24}[^&\s'"]*/g, (m) => `${m.slice(0, 37)}…`);
}

function log(...parts) {
  const t = ((Date.now() - T0) / 1000).toFixed(3).padStart(8);
  process.stderr.write(`${t} ${redact(parts.join(' '))}\n`);
}

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// -------------------------------------------------------------------------
// static files

const FILES = {
  '/': [join(HERE, 'page', 'index.html'), 'text/html; charset=utf-8'],
  '/observe.js': [join(HERE, 'page', 'observe.js'), 'text/javascript; charset=utf-8'],
  '/client.js': [join(HERE, 'page', 'client.js'), 'text/javascript; charset=utf-8'],
  '/livekit-client.umd.js': [
    join(HERE, 'node_modules', 'livekit-client', 'dist', 'livekit-client.umd.js'),
    'text/javascript; charset=utf-8',
  ],
};

function serveStatic() {
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const entry = FILES[path];
    if (path === '/favicon.ico') {
      res.writeHead(204);
      res.end();
      return;
    }
    if (!entry) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    let body;
    try {
      body = readFileSync(entry[0]);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(e));
      return;
    }
    res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' });
    res.end(body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// -------------------------------------------------------------------------
// Chromium

// Playwright's default switches are switched off (ignoreDefaultArgs: true) so
// that this list is the whole command line, apart from the pipe Playwright
// talks over.
function chromiumFlags(userDataDir) {
  const flags = [
    '--headless',
    '--no-sandbox', // as root
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-extensions',
    '--disable-dev-shm-usage',
    '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding',
    '--mute-audio',
    // getUserMedia gets the fake camera (a test pattern) and microphone (a beep)
    // without asking.
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
    `--user-data-dir=${userDataDir}`,
    '--remote-debugging-pipe',
    '--no-startup-window',
  ];
  // The microphone plays this WAV (looping) instead of the fake device's beep, so that a
  // subscriber can check it hears the page's tone.
  if (process.env.AVIARY_FAKE_AUDIO) {
    flags.push(`--use-file-for-fake-audio-capture=${process.env.AVIARY_FAKE_AUDIO}`);
  }
  if (process.env.AVIARY_CHROMIUM_NO_MDNS_FLAG !== '1') {
    // Chromium hides the host candidates of a page without camera/microphone
    // permission behind random "<uuid>.local" mDNS names. The server cannot
    // resolve them; switch that off so candidates carry 127.0.0.2.
    flags.push('--disable-features=WebRtcHideLocalIpsWithMdns');
  }
  const extra = (process.env.AVIARY_CHROMIUM_EXTRA_FLAGS || '').split(/\s+/).filter(Boolean);
  return flags.concat(extra);
}

// -------------------------------------------------------------------------
// signaling trace

function shortenSdp(sdp) {
  if (process.env.AVIARY_BROWSER_FULL_SDP === '1') return sdp;
  const lines = sdp.split(/\r?\n/).filter(Boolean);
  const keep = lines.filter((l) =>
    /^(m=|a=mid|a=group|a=ice-lite|a=setup|a=candidate|a=sendonly|a=recvonly|a=sendrecv|a=inactive|a=rtpmap|a=simulcast|a=rid|a=msid:|a=extmap-allow-mixed)/.test(l));
  return `[${lines.length} lines] ` + keep.join(' | ');
}

function compact(value) {
  return JSON.stringify(value, (k, v) => {
    if (k === 'sdp' && typeof v === 'string') return shortenSdp(v);
    if (typeof v === 'bigint') return v.toString();
    return v;
  });
}

function describeFrame(direction, payload) {
  try {
    if (typeof payload === 'string') {
      return `${direction} text ${payload.slice(0, 500)}`;
    }
    const bytes = new Uint8Array(payload);
    const msg = direction === 'send' ? SignalRequest.fromBinary(bytes) : SignalResponse.fromBinary(bytes);
    const kind = msg.message.case || '(empty)';
    if (kind === 'ping' || kind === 'pingReq' || kind === 'pong' || kind === 'pongResp') {
      return `${direction} ${kind}`;
    }
    let body = compact(msg.message.value === undefined ? null : msg.toJson({ emitDefaultValues: false }));
    if (body.length > 4000) body = body.slice(0, 4000) + '…';
    return `${direction} ${kind} ${body}`;
  } catch (e) {
    return `${direction} ${payload.length} bytes, not decodable: ${e}`;
  }
}

function traceWebSockets(page) {
  page.on('websocket', (ws) => {
    const url = redact(ws.url());
    log(`ws open ${url}`);
    ws.on('framesent', (f) => log(`ws ${describeFrame('send', f.payload)}`));
    ws.on('framereceived', (f) => log(`ws ${describeFrame('recv', f.payload)}`));
    ws.on('socketerror', (e) => log(`ws error ${e}`));
    ws.on('close', () => log(`ws closed ${url.split('?')[0]}`));
  });
}

// -------------------------------------------------------------------------
// main

async function main() {
  const executablePath = process.env.AVIARY_CHROMIUM || '/usr/bin/chromium';
  const userDataDir = mkdtempSync(join(tmpdir(), 'aviary-chromium-'));
  let browser = null;
  let httpServer = null;
  let closing = null;

  const close = (code) => {
    if (closing) return closing;
    closing = (async () => {
      try {
        if (browser) await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5000))]);
      } catch (e) {
        log(`closing chromium: ${e}`);
      }
      if (httpServer) httpServer.close();
      try {
        rmSync(userDataDir, { recursive: true, force: true });
      } catch (e) {
        // a Chromium child may still be writing; the OS's tmp cleaning has it
      }
      log(`driver exits (${code})`);
      process.exit(code);
    })();
    return closing;
  };
  process.on('SIGTERM', () => close(143));
  process.on('SIGINT', () => close(130));

  let page;
  try {
    httpServer = await serveStatic();
    const pageUrl = `http://127.0.0.1:${httpServer.address().port}/`;
    const args = chromiumFlags(userDataDir);
    log(`chromium ${executablePath} ${args.join(' ')}`);
    browser = await chromium.launch({
      executablePath,
      ignoreDefaultArgs: true,
      args,
      timeout: LAUNCH_TIMEOUT_MS,
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    });
    log(`chromium ${browser.version()} started`);
    const context = await browser.newContext();
    page = await context.newPage();
    // The page's own trace (observe.js, client.js and the SDK's log through
    // setLogExtension) comes through this binding, in order.
    await page.exposeFunction('aviarySink', (line) => log(`page ${line}`));
    // The SDK also prints its log on the console; that copy is left out but
    // for warnings and errors, which are also where Chromium reports failed
    // requests, CORS refusals and the like.
    page.on('console', (m) => {
      const type = m.type();
      if (type === 'error' || type === 'warning' || type === 'assert') log(`console ${type}: ${redact(m.text())}`);
    });
    page.on('pageerror', (e) => log(`page exception: ${e && e.stack ? e.stack : e}`));
    page.on('crash', () => log('page crashed'));
    page.on('requestfailed', (r) =>
      log(`http ${r.method()} ${redact(r.url())} failed: ${r.failure() && r.failure().errorText}`));
    page.on('response', (r) => {
      if (r.status() >= 400 || /\/rtc/.test(r.url())) {
        log(`http ${r.request().method()} ${redact(r.url())} -> ${r.status()}`);
      }
    });
    traceWebSockets(page);
    // AVIARY_PAGE_URL: another page (the server's own /dev try page) instead of ours. It
    // loads livekit-client from its CDN, which is answered from node_modules here (no
    // traffic leaves the machine); observe.js still wraps RTCPeerConnection first.
    const external = process.env.AVIARY_PAGE_URL;
    if (external) {
      await page.addInitScript({ path: FILES['/observe.js'][0] });
      await page.route('https://cdn.jsdelivr.net/npm/livekit-client@*/dist/livekit-client.umd.js',
        (route) => route.fulfill({ path: FILES['/livekit-client.umd.js'][0], contentType: 'text/javascript' }));
      await page.route((url) => !/^(http|ws)s?:\/\/127\./.test(url.href) && !url.href.startsWith('https://cdn.jsdelivr.net/npm/livekit-client@'),
        (route) => { log(`blocked a request off this machine: ${route.request().url()}`); return route.abort(); });
      await page.goto(external, { timeout: LAUNCH_TIMEOUT_MS });
      reply({ ready: true, chromium: browser.version(), page: external });
    } else {
      await page.goto(pageUrl, { timeout: LAUNCH_TIMEOUT_MS });
      await page.waitForFunction(() => window.aviary !== undefined, null, { timeout: 10000 });
      const version = await page.evaluate(() => window.aviary.version());
      reply({ ready: true, chromium: browser.version(), page: pageUrl, ...version });
    }
  } catch (e) {
    log(`startup failed: ${e && e.stack ? e.stack : e}`);
    reply({ ready: false, error: String(e && e.message ? e.message : e) });
    await close(1);
    return;
  }

  // Requests run one after another, in the order they came.
  let queue = Promise.resolve();
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    let req;
    try {
      req = JSON.parse(line);
    } catch (e) {
      reply({ id: null, ok: false, error: `bad request line: ${e}` });
      return;
    }
    queue = queue.then(() => call(page, req));
  });
  rl.on('close', () => {
    queue.then(() => close(0));
  });
}

async function call(page, req) {
  const { id, fn, args = [] } = req;
  const timeoutMs = req.timeout_ms || DEFAULT_CALL_TIMEOUT_MS;
  const t = Date.now();
  log(`call ${id} ${fn}(${compact(args).replace(/"ey[A-Za-z0-9_.-]{40,}"/g, '"<token>"').slice(0, 300)})`);
  let timer;
  try {
    const value = await Promise.race([
      page.evaluate(
        ([name, a]) => {
          // `evaluate`: an expression for pages that are not ours (AVIARY_PAGE_URL).
          if (name === 'evaluate') return (0, eval)(a[0]);
          const f = window.aviary && window.aviary[name];
          if (typeof f !== 'function') throw new Error(`no such page function: ${name}`);
          return f(...a);
        },
        [fn, args],
      ),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${fn} did not return within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    log(`call ${id} ${fn} ok in ${Date.now() - t} ms: ${compact(value === undefined ? null : value).slice(0, 2000)}`);
    reply({ id, ok: true, value: value === undefined ? null : value });
  } catch (e) {
    const msg = String(e && e.message ? e.message : e);
    log(`call ${id} ${fn} failed in ${Date.now() - t} ms: ${msg}`);
    reply({ id, ok: false, error: msg });
  } finally {
    clearTimeout(timer);
  }
}

main().catch((e) => {
  log(`driver failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
