// BIP-340 Schnorr signatures over secp256k1 and the Nostr event id (NIP-01), for the
// relay's web page: BigInt arithmetic and WebCrypto's SHA-256, nothing else.
// Not constant-time: it signs with the throwaway keys the page makes, never a real one.

const P = 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2fn;
const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const G = [
  0x79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798n,
  0x483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8n,
  1n,
];

const mod = (a, m = P) => {
  const r = a % m;
  return r >= 0n ? r : r + m;
};

function powMod(base, exponent, m) {
  let result = 1n;
  base = mod(base, m);
  while (exponent > 0n) {
    if (exponent & 1n) result = (result * base) % m;
    base = (base * base) % m;
    exponent >>= 1n;
  }
  return result;
}

// Fermat: P is prime.
const invert = (a) => powMod(a, P - 2n, P);

// Points in Jacobian coordinates [X, Y, Z] (x = X/Z², y = Y/Z³), one inversion per
// multiplication instead of one per addition; null is the point at infinity.
function double(point) {
  if (point === null) return null;
  const [x, y, z] = point;
  if (y === 0n) return null;
  const a = mod(x * x);
  const b = mod(y * y);
  const c = mod(b * b);
  const d = mod(2n * (mod((x + b) * (x + b)) - a - c));
  const e = mod(3n * a);
  const x3 = mod(e * e - 2n * d);
  return [x3, mod(e * (d - x3) - 8n * c), mod(2n * y * z)];
}

function add(p1, p2) {
  if (p1 === null) return p2;
  if (p2 === null) return p1;
  const [x1, y1, z1] = p1;
  const [x2, y2, z2] = p2;
  const z1z1 = mod(z1 * z1);
  const z2z2 = mod(z2 * z2);
  const u1 = mod(x1 * z2z2);
  const u2 = mod(x2 * z1z1);
  const s1 = mod(y1 * z2 * z2z2);
  const s2 = mod(y2 * z1 * z1z1);
  if (u1 === u2) return s1 === s2 ? double(p1) : null;
  const h = mod(u2 - u1);
  const r = mod(s2 - s1);
  const h2 = mod(h * h);
  const h3 = mod(h * h2);
  const u1h2 = mod(u1 * h2);
  const x3 = mod(r * r - h3 - 2n * u1h2);
  return [x3, mod(r * (u1h2 - x3) - s1 * h3), mod(h * z1 * z2)];
}

function multiply(k, point) {
  let result = null;
  for (let bit = BigInt(k.toString(2).length - 1); bit >= 0n; bit--) {
    result = double(result);
    if ((k >> bit) & 1n) result = add(result, point);
  }
  return result;
}

function affine(point) {
  const zInverse = invert(point[2]);
  const z2 = mod(zInverse * zInverse);
  return [mod(point[0] * z2), mod(point[1] * z2 * zInverse)];
}

// The point with this x and an even y, or null when x is not on the curve.
function liftX(x) {
  if (x >= P) return null;
  const c = mod(x * x * x + 7n);
  const y = powMod(c, (P + 1n) / 4n, P); // a square root, as P = 3 mod 4
  if (mod(y * y) !== c) return null;
  return [x, y & 1n ? P - y : y, 1n];
}

export function hexToBytes(hex) {
  if (hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) throw new Error(`not hex: ${hex}`);
  return Uint8Array.from(hex.match(/../g) ?? [], (byte) => parseInt(byte, 16));
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

const bytesToNumber = (bytes) => (bytes.length ? BigInt("0x" + bytesToHex(bytes)) : 0n);
const numberToBytes = (n) => hexToBytes(n.toString(16).padStart(64, "0"));

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((size, part) => size + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// BIP-340's tagged hash: SHA-256(SHA-256(tag) || SHA-256(tag) || message).
async function taggedHash(tag, ...parts) {
  const tagHash = await sha256(new TextEncoder().encode(tag));
  return sha256(concat(tagHash, tagHash, ...parts));
}

export function publicKey(secretKey) {
  const d = bytesToNumber(secretKey);
  if (d < 1n || d >= N) throw new Error("the secret key is out of range");
  return numberToBytes(affine(multiply(d, G))[0]);
}

// 32 random bytes that make a valid secret key (almost every draw does).
export function randomSecretKey() {
  for (;;) {
    const key = crypto.getRandomValues(new Uint8Array(32));
    const d = bytesToNumber(key);
    if (d >= 1n && d < N) return key;
  }
}

export async function sign(message, secretKey, auxRand = crypto.getRandomValues(new Uint8Array(32))) {
  const d0 = bytesToNumber(secretKey);
  if (d0 < 1n || d0 >= N) throw new Error("the secret key is out of range");
  const [px, py] = affine(multiply(d0, G));
  const d = py & 1n ? N - d0 : d0;
  const pBytes = numberToBytes(px);
  const masked = numberToBytes(d);
  const auxHash = await taggedHash("BIP0340/aux", auxRand);
  for (let i = 0; i < 32; i++) masked[i] ^= auxHash[i];
  const k0 = mod(bytesToNumber(await taggedHash("BIP0340/nonce", masked, pBytes, message)), N);
  if (k0 === 0n) throw new Error("the nonce is zero; sign again");
  const [rx, ry] = affine(multiply(k0, G));
  const k = ry & 1n ? N - k0 : k0;
  const rBytes = numberToBytes(rx);
  const e = mod(bytesToNumber(await taggedHash("BIP0340/challenge", rBytes, pBytes, message)), N);
  const signature = concat(rBytes, numberToBytes(mod(k + e * d, N)));
  if (!(await verify(signature, message, pBytes))) throw new Error("the signature does not verify");
  return signature;
}

export async function verify(signature, message, publicKeyBytes) {
  if (signature.length !== 64 || publicKeyBytes.length !== 32) return false;
  const point = liftX(bytesToNumber(publicKeyBytes));
  const r = bytesToNumber(signature.subarray(0, 32));
  const s = bytesToNumber(signature.subarray(32, 64));
  if (point === null || r >= P || s >= N) return false;
  const e = mod(
    bytesToNumber(await taggedHash("BIP0340/challenge", signature.subarray(0, 32), publicKeyBytes, message)),
    N,
  );
  const sum = add(multiply(s, G), multiply(mod(N - e, N), point)); // sG - eP
  if (sum === null) return false;
  const [x, y] = affine(sum);
  return !(y & 1n) && x === r;
}

// NIP-01: the id is the SHA-256 of [0, pubkey, created_at, kind, tags, content] as JSON
// without spaces; JSON.stringify escapes exactly the characters NIP-01 asks for.
export async function eventId(event) {
  const fields = [0, event.pubkey, event.created_at, event.kind, event.tags, event.content];
  return bytesToHex(await sha256(new TextEncoder().encode(JSON.stringify(fields))));
}

export async function signEvent(secretKey, template) {
  const event = { ...template, pubkey: bytesToHex(publicKey(secretKey)) };
  event.id = await eventId(event);
  event.sig = bytesToHex(await sign(hexToBytes(event.id), secretKey));
  return event;
}
