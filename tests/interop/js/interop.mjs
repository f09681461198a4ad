// Interop checks of the relay against nostr-tools (https://github.com/nbd-wtf/nostr-tools).
//
// Usage: node interop.mjs ws://127.0.0.1:PORT
//
// Prints one JSON line per check on stdout:
//   {"check": "<name>", "ok": true|false, ...what was observed}
// and exits 0 only if every check passed (1 if one failed, 2 on a crash or the watchdog).
// The observations are printed whatever the outcome, so the pytest side can assert on them
// and show them when something differs. Diagnostics go to stderr.

import WebSocket from 'ws'
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'
import { finalizeEvent, generateSecretKey, getPublicKey } from 'nostr-tools/pure'

const url = process.argv[2]
if (!url) {
  console.error('usage: node interop.mjs ws://host:port')
  process.exit(2)
}

const STEP_MS = 5000 // bound on every single wait
const WATCHDOG_MS = 40000 // bound on the whole run

// Every frame on every connection, to show what the relay really sent when a check fails.
const frames = []
let connections = 0

class RecordingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args)
    this.label = `conn${++connections}`
    this.addEventListener('message', ev => {
      frames.push({ conn: this.label, dir: 'in', frame: String(ev.data) })
    })
  }

  send(data, ...rest) {
    frames.push({ conn: this.label, dir: 'out', frame: String(data) })
    return super.send(data, ...rest)
  }
}

useWebSocketImplementation(RecordingWebSocket)

let failures = 0

function report(check, ok, observed = {}) {
  const line = { check, ok, ...observed }
  if (!ok) {
    failures++
    line.frames = frames.slice(-40)
  }
  process.stdout.write(JSON.stringify(line) + '\n')
}

function withTimeout(promise, what, ms = STEP_MS) {
  let handle
  const timer = new Promise((_, reject) => {
    handle = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timer]).finally(() => clearTimeout(handle))
}

// Resolves with the reason of an OK true, or with {rejected: reason} of an OK false.
async function publishOutcome(relay, event) {
  try {
    const reason = await withTimeout(relay.publish(event), `OK for ${event.id}`)
    return { accepted: true, reason }
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err)
    if (reason.startsWith('timed out after') || reason === 'publish timed out') {
      return { accepted: null, reason }
    }
    return { accepted: false, reason }
  }
}

// An OK false whose reason has the NIP-01 `invalid:` prefix and mentions `word`.
function rejectedFor(outcome, word) {
  return (
    outcome.accepted === false &&
    outcome.reason.startsWith('invalid: ') &&
    outcome.reason.includes(word)
  )
}

function sameEvent(a, b) {
  const keys = ['id', 'pubkey', 'created_at', 'kind', 'tags', 'content', 'sig']
  return keys.every(k => JSON.stringify(a[k]) === JSON.stringify(b[k]))
}

function plain(event) {
  const { id, pubkey, created_at, kind, tags, content, sig } = event
  return { id, pubkey, created_at, kind, tags, content, sig }
}

function rawEventIds(subId) {
  const ids = []
  for (const { dir, frame } of frames) {
    if (dir !== 'in') continue
    const msg = JSON.parse(frame)
    if (msg[0] === 'EVENT' && msg[1] === subId) ids.push(msg[2].id)
  }
  return ids
}

const opened = []
async function connect(what) {
  const relay = await withTimeout(Relay.connect(url), `connect ${what}`)
  opened.push(relay)
  return relay
}

async function main() {
  const now = () => Math.floor(Date.now() / 1000)
  // A tag unique to this run, so the filters see only this run's events.
  const topic = `interop${Date.now()}${Math.floor(Math.random() * 1e6)}`
  const skA = generateSecretKey()
  const skB = generateSecretKey()

  const writer = await connect('writer')
  const reader = await connect('reader')
  const other = await connect('other writer')

  // 1. Publish an event: the relay accepts it (OK true).
  const stored = finalizeEvent(
    { kind: 1, created_at: now(), tags: [['t', topic]], content: `stored note ${topic}` },
    skA,
  )
  const published = await publishOutcome(writer, stored)
  report('publish', published.accepted === true, { event: plain(stored), ...published })

  // 2. Subscribe: the stored event, then EOSE. The library's own EOSE timeout is set far
  //    beyond ours, so oneose firing means the relay really sent EOSE.
  const before = []
  const after = []
  let eosed = false
  let closedReason = null
  const gotEose = new Promise(resolve => {
    let waiters = []
    const sub = reader.subscribe([{ kinds: [1], '#t': [topic] }], {
      id: 'interop-live',
      eoseTimeout: 10 * 60 * 1000,
      onevent(event) {
        ;(eosed ? after : before).push(plain(event))
        for (const w of waiters) w()
        waiters = []
      },
      oneose() {
        eosed = true
        resolve(sub)
      },
      onclose(reason) {
        closedReason = reason
      },
    })
    sub.waitForEvent = () => new Promise(r => waiters.push(r))
  })
  let sub = null
  try {
    sub = await withTimeout(gotEose, 'EOSE on the subscription')
  } catch (err) {
    report('stored_then_eose', false, { error: String(err), before, closed: closedReason })
  }
  if (sub) {
    report(
      'stored_then_eose',
      eosed && before.length === 1 && sameEvent(before[0], stored),
      { eose: eosed, before_eose: before, closed: closedReason },
    )

    // 3. A live event, published by another connection after EOSE, reaches the subscriber.
    const live = finalizeEvent(
      { kind: 1, created_at: now(), tags: [['t', topic]], content: `live note ${topic}` },
      skB,
    )
    sub.liveId = live.id
    const arrived = after.length > 0 ? Promise.resolve() : sub.waitForEvent()
    const livePublished = await publishOutcome(other, live)
    let liveError = null
    try {
      await withTimeout(arrived, 'live event on the subscription')
    } catch (err) {
      liveError = String(err)
    }
    report(
      'live_after_eose',
      livePublished.accepted === true && after.length === 1 && sameEvent(after[0], live),
      { event: plain(live), ...livePublished, after_eose: after, error: liveError },
    )
  }

  // 4. Rejections: the publish promise rejects with the relay's reason.
  const future = finalizeEvent(
    { kind: 1, created_at: now() + 3600, tags: [['t', topic]], content: `future note ${topic}` },
    skA,
  )
  const futureOutcome = await publishOutcome(writer, future)
  report('reject_future', rejectedFor(futureOutcome, 'future'), {
    event: plain(future),
    ...futureOutcome,
  })

  const signed = finalizeEvent(
    { kind: 1, created_at: now(), tags: [['t', topic]], content: `tampered sig ${topic}` },
    skA,
  )
  const last = signed.sig.at(-1)
  const badSig = { ...plain(signed), sig: signed.sig.slice(0, -1) + (last === '0' ? '1' : '0') }
  const badSigOutcome = await publishOutcome(writer, badSig)
  report('reject_bad_signature', rejectedFor(badSigOutcome, 'signature'), {
    event: badSig,
    ...badSigOutcome,
  })

  const original = finalizeEvent(
    { kind: 1, created_at: now(), tags: [['t', topic]], content: `original ${topic}` },
    skA,
  )
  const badId = { ...plain(original), content: `tampered content ${topic}` }
  const badIdOutcome = await publishOutcome(writer, badId)
  report('reject_bad_id', rejectedFor(badIdOutcome, 'id'), { event: badId, ...badIdOutcome })

  // 5. Nothing rejected was stored or broadcast: a fresh query by id finds nothing, and the
  //    live subscription saw only the live event.
  const rejectedIds = [future.id, badSig.id, badId.id]
  const found = []
  let queryError = null
  try {
    await withTimeout(
      new Promise(resolve => {
        const q = reader.subscribe([{ ids: rejectedIds }], {
          id: 'interop-rejected',
          eoseTimeout: 10 * 60 * 1000,
          onevent: event => found.push(plain(event)),
          oneose: () => {
            q.close()
            resolve()
          },
        })
      }),
      'EOSE on the query for rejected events',
    )
  } catch (err) {
    queryError = String(err)
  }
  const liveRaw = rawEventIds('interop-live')
  const expectedLive = sub ? [stored.id, sub.liveId] : [stored.id]
  report(
    'rejected_not_stored',
    queryError === null &&
      found.length === 0 &&
      JSON.stringify(liveRaw) === JSON.stringify(expectedLive),
    {
      queried_ids: rejectedIds,
      found,
      live_subscription_event_ids: liveRaw,
      error: queryError,
    },
  )

  // 6. NIP-45: COUNT of this run's kind-1 notes (the stored and the live one).
  let counted = null
  let countError = null
  try {
    counted = await withTimeout(reader.count([{ kinds: [1], '#t': [topic] }], {}), 'COUNT')
  } catch (err) {
    countError = String(err)
  }
  report('count', counted === (sub ? 2 : 1), { count: counted, error: countError })

  // 7. NIP-42: a DM to B is refused to an anonymous REQ with auth-required; once B's client
  //    answers the challenge (nostr-tools' onauth), the same REQ returns it.
  await checkDirectMessages(writer, skA, skB, topic)

  sub?.close()
  // Give the CLOSE frames a moment to leave before the sockets close.
  await new Promise(r => setTimeout(r, 50))
}

// The stored events a filter returns up to EOSE, or the CLOSED reason.
function query(relay, filters, id) {
  return withTimeout(
    new Promise(resolve => {
      const got = []
      const q = relay.subscribe(filters, {
        id,
        eoseTimeout: 10 * 60 * 1000,
        onevent: event => got.push(plain(event)),
        oneose: () => {
          resolve({ events: got, closed: null })
          q.close()
        },
        onclose: reason => {
          // nostr-tools 2.25 leaves its EOSE timer running when the relay sends CLOSED;
          // it would hold the process open for eoseTimeout.
          clearTimeout(q.eoseTimeoutHandle)
          resolve({ events: got, closed: reason })
        },
      })
    }),
    `EOSE or CLOSED on ${id}`,
  )
}

async function checkDirectMessages(writer, skA, skB, topic) {
  const dm = finalizeEvent(
    {
      kind: 4,
      created_at: Math.floor(Date.now() / 1000),
      tags: [['p', getPublicKey(skB)], ['t', topic]],
      content: 'ciphertext?iv=AAAA',
    },
    skA,
  )
  const published = await publishOutcome(writer, dm)
  const filters = [{ kinds: [4], '#t': [topic] }]
  const anonymous = await connect('anonymous reader')
  let before = null
  let after = null
  let authReason = null
  let error = null
  try {
    before = await query(anonymous, filters, 'dm-anonymous')
    const recipient = await connect('recipient')
    // The relay's challenge arrives just after the connection opens; auth() answers it
    // and resolves on the relay's OK.
    const sign = async template => finalizeEvent(template, skB)
    const authDone = (async () => {
      while (!recipient.challenge) await new Promise(r => setTimeout(r, 10))
      try {
        return { ok: true, reason: await recipient.auth(sign) }
      } catch (err) {
        return { ok: false, reason: String(err) }
      }
    })()
    authReason = await withTimeout(authDone, 'OK to AUTH')
    after = await query(recipient, filters, 'dm-recipient')
  } catch (err) {
    error = String(err)
  }
  report(
    'auth_dm',
    published.accepted === true &&
      before?.closed?.startsWith('auth-required: ') === true &&
      before.events.length === 0 &&
      authReason?.ok === true &&
      after?.closed === null &&
      after.events.length === 1 &&
      sameEvent(after.events[0], dm),
    { event: plain(dm), published, before, auth: authReason, after, error },
  )
}

const watchdog = setTimeout(() => {
  report('watchdog', false, { error: `run took longer than ${WATCHDOG_MS} ms` })
  process.exit(2)
}, WATCHDOG_MS)

try {
  await main()
} catch (err) {
  report('crash', false, { error: err instanceof Error ? err.stack : String(err) })
  process.exitCode = 2
} finally {
  for (const relay of opened) {
    try {
      relay.close()
    } catch (err) {
      console.error('close failed:', err)
    }
  }
  clearTimeout(watchdog)
}
if (!process.exitCode) process.exitCode = failures ? 1 : 0
