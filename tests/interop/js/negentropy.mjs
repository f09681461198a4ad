// nostr-tools' own negentropy client (nip77 `Negentropy`) against our server, message by
// message: run by tests/interop/test_negentropy_core.py, which holds the server side.
//
// Usage: node negentropy.mjs    (JSON lines on stdin, one JSON line answered per line)
//   {"items": [[created_at, "hex id"], ...], "frameSizeLimit": n}  -> {"message": hex}
//   {"reply": hex}  -> {"message": hex | null, "have": [hex...], "need": [hex...]}
// A null message means nostr-tools considers the sets reconciled. Errors go to stderr
// and end the process with 1.

import { createInterface } from 'node:readline'
import { nip77 } from 'nostr-tools'

const { Negentropy, NegentropyStorageVector } = nip77

let client = null
const lines = createInterface({ input: process.stdin })

for await (const line of lines) {
  const request = JSON.parse(line)
  if (request.items) {
    const storage = new NegentropyStorageVector()
    for (const [createdAt, id] of request.items) storage.insert(createdAt, id)
    storage.seal()
    client = new Negentropy(storage, request.frameSizeLimit)
    console.log(JSON.stringify({ message: client.initiate() }))
  } else {
    const have = []
    const need = []
    const message = client.reconcile(request.reply, id => have.push(id), id => need.push(id))
    console.log(JSON.stringify({ message, have, need }))
  }
}
