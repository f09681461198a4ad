// The web page's BIP-340 code (relay/web/schnorr.js) against BIP-340's own test vectors,
// run with `node --test` by tests/test_web.py; the relay checks it too (a browser test).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  bytesToHex,
  eventId,
  hexToBytes,
  publicKey,
  sign,
  signEvent,
  verify,
} from "../../../relay/web/schnorr.js";

// bip-0340/test-vectors.csv of the bitcoin/bips repository, as published.
const rows = readFileSync(new URL("bip340-vectors.csv", import.meta.url), "utf8")
  .trim()
  .split("\n")
  .slice(1)
  .map((line) => {
    const [index, secretKey, publicKeyHex, auxRand, message, signature, result, comment] =
      line.split(",");
    return { index, secretKey, publicKeyHex, auxRand, message, signature, result, comment };
  });

test("the vectors are all there", () => {
  assert.equal(rows.length, 15);
});

for (const row of rows.filter((r) => r.secretKey)) {
  test(`vector ${row.index}: public key and signature`, async () => {
    const secret = hexToBytes(row.secretKey);
    assert.equal(bytesToHex(publicKey(secret)).toUpperCase(), row.publicKeyHex);
    const signature = await sign(hexToBytes(row.message), secret, hexToBytes(row.auxRand));
    assert.equal(bytesToHex(signature).toUpperCase(), row.signature);
  });
}

for (const row of rows) {
  test(`vector ${row.index}: verifies ${row.result}${row.comment ? ` (${row.comment})` : ""}`, async () => {
    const valid = await verify(
      hexToBytes(row.signature),
      hexToBytes(row.message),
      hexToBytes(row.publicKeyHex),
    );
    assert.equal(valid, row.result === "TRUE");
  });
}

test("a signed note verifies, and not once its content changes", async () => {
  const secret = hexToBytes(rows[1].secretKey);
  const event = await signEvent(secret, {
    kind: 1,
    created_at: 1700000000,
    tags: [["t", "nostr"]],
    content: 'quote " backslash \\ newline \n tab \t bell \u0007 é 🎉',
  });
  assert.equal(event.id, await eventId(event));
  const pubkey = hexToBytes(event.pubkey);
  assert.ok(await verify(hexToBytes(event.sig), hexToBytes(event.id), pubkey));
  const changed = { ...event, content: event.content.replace("quote", "Quote") };
  assert.notEqual(await eventId(changed), event.id);
  assert.ok(!(await verify(hexToBytes(event.sig), hexToBytes(await eventId(changed)), pubkey)));
});
