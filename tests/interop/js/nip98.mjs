// One NIP-86 call signed by nostr-tools' NIP-98 helper (run by tests/interop/test_nostr_tools.py).
// Usage: node nip98.mjs URL SECRET_HEX METHOD PARAMS_JSON; prints {"status", "body"}.
import { getToken } from "nostr-tools/nip98";
import { finalizeEvent } from "nostr-tools/pure";

const [url, secretHex, method, paramsJson] = process.argv.slice(2);
const secret = Uint8Array.from(secretHex.match(/../g).map((byte) => parseInt(byte, 16)));
const payload = { method, params: JSON.parse(paramsJson) };
const token = await getToken(url, "POST", (event) => finalizeEvent(event, secret), true, payload);
const response = await fetch(url, {
  method: "POST",
  headers: { "Content-Type": "application/nostr+json+rpc", Authorization: token },
  // The body hashes to the payload tag: nostr-tools hashes JSON.stringify(payload).
  body: JSON.stringify(payload),
});
console.log(JSON.stringify({ status: response.status, body: await response.json() }));
