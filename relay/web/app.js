// The relay's web page: its NIP-11 document, its live figures, and a panel that shows the
// protocol by doing it (a key pair, a signed note, OK, a live subscription, a refusal).

import { bytesToHex, publicKey, randomSecretKey, signEvent } from "./schnorr.js";

const FIGURES_EVERY_MS = 5000;
const REPLY_TIMEOUT_MS = 10000;
const NIPS_URL = "https://github.com/nostr-protocol/nips/blob/master/";

const byId = (id) => document.getElementById(id);
const relayUrl = new URL(".", location.href);
relayUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

// --- What the relay says about itself (NIP-11) ---

async function showInformation() {
  const response = await fetch(".", { headers: { Accept: "application/nostr+json" } });
  const info = await response.json();
  if (info.name) {
    byId("name").textContent = info.name;
    document.title = `${info.name} · Nostr relay`;
  }
  byId("description").textContent = info.description ?? "";
  if (typeof info.icon === "string" && /^https?:\/\//.test(info.icon)) {
    byId("icon").src = info.icon;
    byId("icon").hidden = false;
  }
  const about = byId("about");
  const facts = [
    ["Contact", info.contact],
    ["Operator's public key", info.pubkey],
    ["Software", [info.software, info.version].filter(Boolean).join(" ")],
  ];
  for (const [label, value] of facts.filter(([, v]) => v)) {
    about.append(element("dt", label), element("dd", value));
  }
  const nips = byId("nips");
  for (const nip of info.supported_nips ?? []) {
    const number = String(nip).padStart(2, "0");
    const item = element("li");
    item.append(element("a", number, { href: `${NIPS_URL}${number}.md`, title: `NIP-${number}` }));
    nips.append(item);
  }
  const limits = byId("limits");
  for (const [name, value] of Object.entries(info.limitation ?? {})) {
    limits.append(element("dt", name.replaceAll("_", " ")), element("dd", String(value)));
  }
}

// --- Live figures (/stats) ---

async function showFigures() {
  try {
    const stats = await (await fetch("stats")).json();
    byId("events").textContent = stats.events === null ? "–" : stats.events.toLocaleString("en");
    byId("connections").textContent = stats.connections.toLocaleString("en");
    byId("rate").textContent = stats.events_per_minute.toLocaleString("en");
  } catch {
    // The relay may be restarting: the next round tries again.
  }
}

// --- A WebSocket that hands out the relay's messages as they are waited for ---

class RelaySocket {
  static open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => resolve(new RelaySocket(ws));
      ws.onerror = () => reject(new Error(`could not connect to ${url}`));
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.inbox = [];
    this.waiting = [];
    ws.onmessage = (message) => this.received(JSON.parse(message.data));
  }

  send(message) {
    const frame = JSON.stringify(message);
    this.ws.send(frame);
    return frame;
  }

  received(message) {
    const waiter = this.waiting.find((w) => w.matches(message));
    if (waiter) {
      this.waiting.splice(this.waiting.indexOf(waiter), 1);
      waiter.resolve(message);
    } else {
      this.inbox.push(message);
    }
  }

  // The first message (already here or still to come) for which `matches` is true.
  next(matches) {
    const index = this.inbox.findIndex(matches);
    if (index >= 0) return Promise.resolve(this.inbox.splice(index, 1)[0]);
    return new Promise((resolve, reject) => {
      const waiter = { matches, resolve };
      this.waiting.push(waiter);
      setTimeout(() => {
        if (this.waiting.includes(waiter)) {
          this.waiting.splice(this.waiting.indexOf(waiter), 1);
          reject(new Error("the relay did not answer in time"));
        }
      }, REPLY_TIMEOUT_MS);
    });
  }

  close() {
    this.ws.close();
  }
}

// --- The panel ---

function step(name) {
  const item = document.querySelector(`[data-step="${name}"]`);
  item.classList.add("active");
  const output = item.querySelector(".output");
  output.textContent = "";
  return {
    show(text) {
      output.textContent += (output.textContent ? "\n" : "") + text;
    },
    done(outcome = "ok") {
      item.classList.remove("active");
      item.classList.add(outcome);
    },
  };
}

function resetSteps() {
  for (const item of document.querySelectorAll("[data-step]")) {
    item.className = "";
    item.querySelector(".output").textContent = "";
  }
}

// The content with one character changed: the first letter or digit changes case or
// value (an "H" becomes an "h"), so the change is easy to spot.
function changeOneCharacter(text) {
  const chars = Array.from(text);
  const at = chars.findIndex((c) => /[A-Za-z0-9]/.test(c));
  if (at < 0) return "!" + chars.slice(1).join("");
  const c = chars[at];
  chars[at] = /[0-9]/.test(c)
    ? String((Number(c) + 1) % 10)
    : c === c.toUpperCase()
      ? c.toLowerCase()
      : c.toUpperCase();
  return chars.join("");
}

const pretty = (value) => JSON.stringify(value, null, 1).replace(/\n\s*/g, " ");

async function runDemo(content) {
  const keys = step("keys");
  const secret = randomSecretKey();
  const pubkey = bytesToHex(publicKey(secret));
  keys.show(`public key  ${pubkey}`);
  keys.show(`secret key  ${bytesToHex(secret).slice(0, 8)}… (kept in this page only)`);
  keys.done();

  const subscribe = step("subscribe");
  const relay = await RelaySocket.open(relayUrl.href);
  try {
    const subId = `demo-${bytesToHex(crypto.getRandomValues(new Uint8Array(4)))}`;
    subscribe.show(`→ ${relay.send(["REQ", subId, { authors: [pubkey], kinds: [1], limit: 0 }])}`);
    const eose = await relay.next((m) => m[0] === "EOSE" && m[1] === subId);
    subscribe.show(`← ${JSON.stringify(eose)}   (nothing stored yet; new notes will follow)`);
    subscribe.done();

    const sign = step("sign");
    const note = await signEvent(secret, {
      kind: 1,
      created_at: Math.floor(Date.now() / 1000),
      tags: [],
      content,
    });
    sign.show(pretty(note));
    sign.done();

    const publish = step("publish");
    publish.show(`→ ["EVENT", {"id": "${note.id.slice(0, 16)}…", …}]`);
    relay.send(["EVENT", note]);
    const ok = await relay.next((m) => m[0] === "OK" && m[1] === note.id);
    publish.show(`← ${JSON.stringify(ok)}`);
    publish.done(ok[2] === true ? "ok" : "refused");

    const live = step("live");
    const arrived = await relay.next((m) => m[0] === "EVENT" && m[1] === subId && m[2].id === note.id);
    live.show(`← ["EVENT", "${subId}", {"content": ${JSON.stringify(arrived[2].content)}, …}]`);
    live.done();

    const tamper = step("tamper");
    const forged = { ...note, content: changeOneCharacter(note.content) };
    tamper.show(`content  ${JSON.stringify(note.content)}`);
    tamper.show(`becomes  ${JSON.stringify(forged.content)}   (same id, same signature)`);
    relay.send(["EVENT", forged]);
    const refused = await relay.next((m) => m[0] === "OK" && m[1] === note.id);
    tamper.show(`← ${JSON.stringify(refused)}`);
    tamper.done(refused[2] === false ? "refused" : "ok");
    relay.send(["CLOSE", subId]);
  } finally {
    relay.close();
  }
  showFigures();
}

function startPanel() {
  const form = byId("demo-form");
  form.addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const button = byId("run");
    button.disabled = true;
    resetSteps();
    try {
      await runDemo(byId("content").value || "Hello, Nostr!");
      document.body.dataset.demo = "done";
    } catch (error) {
      const active = document.querySelector("[data-step].active");
      if (active) {
        active.querySelector(".output").textContent += `\n${error.message}`;
        active.classList.add("failed");
      }
      document.body.dataset.demo = "failed";
    } finally {
      button.disabled = false;
    }
  });
}

byId("relay-url").textContent = relayUrl.href;
startPanel();
showInformation().catch(() => {
  byId("description").textContent = "The relay's information document could not be read.";
});
showFigures();
setInterval(showFigures, FIGURES_EVERY_MS);
