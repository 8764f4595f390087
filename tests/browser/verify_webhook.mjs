// Checks webhook requests with the Node server SDK's WebhookReceiver, as a Node
// application receiving Aviary's webhooks would.
//
// Usage: node verify_webhook.mjs API_KEY API_SECRET < requests.jsonl
// Each input line is {"body": "...", "authorization": "..."}; each output line
// is {"ok": true, "event": "<name>", "id": "<EV_...>"} or {"ok": false, "error": "..."}.
import { createInterface } from 'node:readline';
import { WebhookReceiver } from 'livekit-server-sdk';

const [apiKey, apiSecret] = process.argv.slice(2);
if (!apiKey || !apiSecret) {
  console.error('usage: node verify_webhook.mjs API_KEY API_SECRET < requests.jsonl');
  process.exit(2);
}
const receiver = new WebhookReceiver(apiKey, apiSecret);
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { body, authorization } = JSON.parse(line);
  try {
    const event = await receiver.receive(body, authorization);
    console.log(JSON.stringify({ ok: true, event: event.event, id: event.id }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e && e.message ? e.message : e) }));
  }
}
