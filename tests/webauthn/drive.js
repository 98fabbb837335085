// A browser for one user, driven line by line on stdin (tests/tests/webauthn.rs):
//   login USER PASSWORD CODE | enrol NAME | approve URL | grant ID | remove NAME | quit
//   | bare-enrol NAME | bare-remove NAME (the requests alone, without a key's touch)
// Each answer is one line: "ok ..." or "err ...". Debian's chromium, with a Chrome
// DevTools Protocol virtual authenticator (CTAP2, USB, user verification).
"use strict";
const { chromium } = require("playwright-core");
const readline = require("readline");

const [base, resolverRule] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", `--host-resolver-rules=${resolverRule}`],
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "usb", hasResidentKey: true, hasUserVerification: true, isUserVerified: true },
  });
  const say = (s) => process.stdout.write(s.replace(/\n/g, " ") + "\n");
  const statusText = async () => {
    await page.waitForFunction(() => document.getElementById("status")?.textContent, null, { timeout: 15000 });
    return page.textContent("#status");
  };
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, ...args] = line.trim().split(" ");
    try {
      if (cmd === "login") {
        await page.goto(`${base}/login`);
        await page.fill("input[name=user]", args[0]);
        await page.fill("input[name=password]", args[1]);
        await page.fill("input[name=code]", args[2]);
        await Promise.all([page.waitForLoadState(), page.click("button")]);
        const body = await page.textContent("body");
        say(body.includes("Signed in as") ? "ok logged in" : `err ${body}`);
      } else if (cmd === "enrol") {
        await page.goto(`${base}/keys`);
        await page.fill("#keyname", args[0]);
        await page.click("#add");
        const s = await statusText();
        say(s.startsWith("key added") ? `ok ${s}` : `err ${s}`);
      } else if (cmd === "approve") {
        const resp = await page.goto(args[0]);
        if (!(await page.$("#approve"))) {
          say(`err ${resp.status()} ${await page.textContent("body")}`);
          continue;
        }
        await page.click("#approve");
        const s = await statusText();
        say(s === "approved" ? "ok approved" : `err ${s}`);
      } else if (cmd === "grant") {
        await page.goto(`${base}/grants`);
        const b = await page.$(`#approve-${args[0]}`);
        if (!b) {
          say(`err ${await page.textContent("body")}`);
          continue;
        }
        await b.click();
        const s = await statusText();
        say(s.startsWith(`grant ${args[0]}: `) ? `ok ${s}` : `err ${s}`);
      } else if (cmd === "remove") {
        // The page asks for a touch of a key first, then sends the form.
        await page.goto(`${base}/keys`);
        const li = page.locator("li", { hasText: args[0] });
        await li.locator("button").click();
        await page.waitForURL(/\/keys\/remove$/, { timeout: 15000 });
        say(`ok ${await page.textContent("body")}`);
      } else if (cmd === "bare-enrol" || cmd === "bare-remove") {
        await page.goto(`${base}/keys`);
        const r = await page.evaluate(async ([cmd, name]) => {
          const csrf = document.getElementById("herse").dataset.csrf;
          const r = cmd === "bare-enrol"
            ? await fetch("/keys/register/start", {
                method: "POST",
                headers: { "content-type": "application/json", "x-csrf-token": csrf },
                body: JSON.stringify({ name }),
              })
            : await fetch("/keys/remove", { method: "POST", body: new URLSearchParams({ csrf, name }) });
          return `${r.status} ${await r.text()}`;
        }, [cmd, args[0]]);
        say(r.startsWith("200") ? `ok ${r}` : `err ${r}`);
      } else if (cmd === "quit") {
        break;
      } else {
        say(`err unknown command ${cmd}`);
      }
    } catch (e) {
      say(`err ${e.message}`);
    }
  }
  await browser.close();
})().catch((e) => {
  process.stdout.write(`err ${e.message}\n`);
  process.exit(1);
});
