// Herse portal: WebAuthn ceremonies (security keys). Served from /static/herse.js; the
// page's data-csrf carries the session's CSRF token for these requests.
"use strict";
const b64u = {
  enc: (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""),
  dec: (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4)), (c) => c.charCodeAt(0)),
};
const herse = document.getElementById("herse");
function status(t) { document.getElementById("status").textContent = t; }
async function post(url, body) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": herse.dataset.csrf },
    body: JSON.stringify(body),
  });
  const t = await r.text();
  if (!r.ok) throw new Error(t);
  return JSON.parse(t || "{}");
}
// Adding or removing a key, once the user has one, starts with a touch of one of them.
async function keyProof() {
  return (await assertKey("/keys/verify")).proof;
}
async function addKey() {
  const name = document.getElementById("keyname").value;
  const proof = herse.dataset.haskeys === "1" ? await keyProof() : null;
  const s = await post("/keys/register/start", { name, proof });
  const o = s.options.publicKey;
  o.challenge = b64u.dec(o.challenge);
  o.user.id = b64u.dec(o.user.id);
  (o.excludeCredentials || []).forEach((c) => { c.id = b64u.dec(c.id); });
  const c = await navigator.credentials.create({ publicKey: o });
  await post("/keys/register/finish", {
    id: s.id, name,
    credential: {
      id: c.id, rawId: b64u.enc(c.rawId), type: c.type, extensions: {},
      response: { attestationObject: b64u.enc(c.response.attestationObject), clientDataJSON: b64u.enc(c.response.clientDataJSON) },
    },
  });
  status("key added: " + name);
}
// A security-key assertion: POST base + "/start" for the challenge, touch, POST the
// answer to base + "/finish"; the finish's JSON answer.
async function assertKey(base) {
  const s = await post(base + "/start", {});
  const o = s.options.publicKey;
  o.challenge = b64u.dec(o.challenge);
  (o.allowCredentials || []).forEach((c) => { c.id = b64u.dec(c.id); });
  const a = await navigator.credentials.get({ publicKey: o });
  return post(base + "/finish", {
    id: s.id,
    credential: {
      id: a.id, rawId: b64u.enc(a.rawId), type: a.type, extensions: {},
      response: {
        authenticatorData: b64u.enc(a.response.authenticatorData),
        clientDataJSON: b64u.enc(a.response.clientDataJSON),
        signature: b64u.enc(a.response.signature),
        userHandle: a.response.userHandle ? b64u.enc(a.response.userHandle) : null,
      },
    },
  });
}
async function approve() {
  await assertKey("/approve/" + herse.dataset.token);
  status("approved");
}
async function approveGrant(id) {
  const r = await assertKey("/grants/" + id + "/approve");
  status("grant " + id + ": " + r.status);
}
document.querySelectorAll("button[data-grant]").forEach((b) =>
  b.addEventListener("click", () => approveGrant(b.dataset.grant).catch((e) => status("error: " + e.message))));
const add = document.getElementById("add");
if (add) add.addEventListener("click", () => addKey().catch((e) => status("error: " + e.message)));
document.querySelectorAll("form.rmkey").forEach((f) =>
  f.addEventListener("submit", (ev) => {
    ev.preventDefault();
    keyProof()
      .then((proof) => { f.querySelector("input[name=proof]").value = proof; f.submit(); })
      .catch((e) => status("error: " + e.message));
  }));
const ok = document.getElementById("approve");
if (ok) ok.addEventListener("click", () => approve().catch((e) => status("error: " + e.message)));
