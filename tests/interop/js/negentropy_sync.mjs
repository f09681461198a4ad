// nostr-tools' NIP-77 `NegentropySync` against the relay over a real socket: run by
// tests/interop/test_nostr_tools.py.
//
// Usage: node negentropy_sync.mjs ws://127.0.0.1:PORT   (one JSON object on stdin)
//   stdin:  {"filter": {...}, "items": [[created_at, "hex id"], ...]}
//   stdout: {"have": [hex...], "need": [hex...], "closed": reason | null}
// Exits 2 on a crash or when the reconciliation does not end within the watchdog.

import WebSocket from 'ws'
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'
import { nip77 } from 'nostr-tools'

const WATCHDOG_MS = 30000

useWebSocketImplementation(WebSocket)
setTimeout(() => {
  console.error(`negentropy_sync.mjs: no end within ${WATCHDOG_MS} ms`)
  process.exit(2)
}, WATCHDOG_MS).unref()

let input = ''
for await (const chunk of process.stdin) input += chunk
const { filter, items } = JSON.parse(input)

const storage = new nip77.NegentropyStorageVector()
for (const [createdAt, id] of items) storage.insert(createdAt, id)
storage.seal()

const relay = await Relay.connect(process.argv[2])
const have = []
const need = []
const closed = await new Promise(resolve => {
  const sync = new nip77.NegentropySync(relay, storage, filter, {
    onhave: id => have.push(id),
    onneed: id => need.push(id),
    onclose: reason => resolve(reason ?? null),
  })
  sync.start()
})
relay.close()
process.stdout.write(JSON.stringify({ have, need, closed }) + '\n')
process.exit(0)
