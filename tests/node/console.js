// The web console in a real headless browser (Debian's chromium, driven by
// puppeteer-core): sign in, create a collection, insert a record through
// the form and see it arrive in the live view, edit and delete it, run a
// text search, set a KV entry, read health, and see a streamed chat
// answer. A screenshot of each page goes to TIDEPOOL_SCREENSHOTS.
"use strict";

const path = require("path");
const fs = require("fs");
const puppeteer = require("puppeteer-core");

const base = process.env.TIDEPOOL_HTTP;
const key = process.env.TIDEPOOL_API_KEY;
const shots = process.env.TIDEPOOL_SCREENSHOTS;
const browserPath = process.env.TIDEPOOL_CHROMIUM || "/usr/bin/chromium";

function check(cond, what) {
  if (!cond) throw new Error("console check failed: " + what);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, name + ".png"), fullPage: true });
}

async function textOf(page, sel) {
  return page.$eval(sel, (el) => el.textContent);
}

// A fake OpenAI-compatible provider (a hosted LLM lives outside the machine;
// this speaks its streaming wire format): the first turn asks for the
// server's count_records tool, the turn after the tool's result answers
// with the count it was given.
function fakeOpenAi(port) {
  const http = require("http");
  const sse = (res, chunks) => {
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    for (const c of chunks) res.write("data: " + JSON.stringify(c) + "\n\n");
    res.end("data: [DONE]\n\n");
  };
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const messages = (JSON.parse(body || "{}").messages) || [];
      const tool = messages.find((m) => m.role === "tool");
      if (tool) {
        let count = "?";
        try { count = JSON.parse(tool.content).count; } catch (_) { /* stays ? */ }
        sse(res, [
          { choices: [{ index: 0, delta: { content: "Notes counted: " + count + "." } }] },
          { choices: [{ index: 0, delta: {}, finish_reason: "stop" }] },
        ]);
      } else {
        const args = JSON.stringify({ collection: "console_notes" });
        sse(res, [
          { choices: [{ index: 0, delta: { role: "assistant", tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "count_records", arguments: args } }] } }] },
          { choices: [{ index: 0, delta: {}, finish_reason: "tool_calls" }] },
        ]);
      }
    });
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

(async () => {
  fs.mkdirSync(shots, { recursive: true });
  const browser = await puppeteer.launch({
    executablePath: browserPath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const errors = [];
  try {
    const page = await browser.newPage();
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("dialog", (d) => d.accept());
    await page.setViewport({ width: 1100, height: 800 });

    // Sign in with a wrong key: refused, still on the sign-in page.
    await page.goto(base + "/", { waitUntil: "load" });
    await page.waitForSelector("#api-key");
    await shot(page, "1-signin");
    await page.type("#api-key", "not-the-key");
    await page.click("#signin button");
    await page.waitForFunction(() => document.getElementById("toast").textContent.includes("Sign-in failed"));
    await page.$eval("#api-key", (el) => (el.value = ""));
    await page.type("#api-key", key);
    await page.keyboard.press("Enter");
    await page.waitForSelector("#new-collection");

    // Create a collection through the form.
    await page.type("#new-name", "console_notes");
    await page.$eval("#new-record", (el) => (el.value = '{"title": "first note", "body": "written from the console"}'));
    await page.click("#new-collection button");
    await page.waitForSelector("#records tr[data-id]");
    check((await textOf(page, "#records")).includes("first note"), "the first record is listed");

    // Insert through the form; the live view shows the change.
    await page.waitForFunction(() => document.getElementById("live-events") !== null);
    await new Promise((r) => setTimeout(r, 300)); // the subscription is open
    await page.$eval("#insert-json", (el) => (el.value = '{"title": "tide tables", "body": "high water at noon"}'));
    await page.click("#insert button");
    await page.waitForFunction(
      () => document.getElementById("live-events").textContent.includes("tide tables"),
      { timeout: 10000 },
    );
    await page.waitForFunction(() => document.getElementById("records").textContent.includes("tide tables"));
    await shot(page, "2-collection-live");

    // Edit the first record, then delete it (the confirm is accepted).
    const firstId = await page.$eval("#records tr[data-id]", (tr) => tr.dataset.id);
    await page.click(`#records tr[data-id="${firstId}"] .edit`);
    await page.$eval(`#records tr[data-id="${firstId}"] textarea`, (el) => {
      el.value = JSON.stringify({ title: "first note, edited", body: "written from the console" });
    });
    await page.click(`#records tr[data-id="${firstId}"] .save`);
    await page.waitForFunction(() => document.getElementById("records").textContent.includes("first note, edited"));
    await page.click(`#records tr[data-id="${firstId}"] .delete`);
    await page.waitForFunction(
      (id) => !document.querySelector(`#records tr[data-id="${id}"]`),
      {},
      firstId,
    );

    // Collections page lists it with its count.
    await page.goto(base + "/#/collections");
    await page.waitForFunction(() => document.getElementById("collection-list").textContent.includes("console_notes"));
    check((await textOf(page, "#collection-list")).includes("1 records"), "the count after the delete");
    await shot(page, "3-collections");

    // Text search with scores and matched fields.
    await page.goto(base + "/#/search");
    await page.waitForFunction(() => [...document.querySelectorAll("#search-collection option")].some((o) => o.value === "console_notes"));
    await page.select("#search-collection", "console_notes");
    await page.type("#search-query", "tide");
    await page.click("#search button");
    await page.waitForSelector("#search-results tr.hit");
    const hit = await textOf(page, "#search-results");
    check(hit.includes("tide tables") && hit.includes("title"), "a hit with its matched field: " + hit);
    await shot(page, "4-search");

    // KV: set, then listed.
    await page.goto(base + "/#/kv");
    await page.waitForSelector("#kv-set");
    await page.type("#kv-key", "console:greeting");
    await page.click("#kv-set button");
    await page.waitForFunction(() => document.getElementById("kv-rows").textContent.includes("console:greeting"));
    await shot(page, "5-kv");
    // KV paging: 55 keys show as a page of 50, then 5.
    await page.evaluate(async () => {
      const headers = { Authorization: "Bearer " + sessionStorage.getItem("tidepool_token"), "Content-Type": "application/json" };
      for (let i = 0; i < 55; i++) {
        const r = await fetch("/api/kv/set/page:" + String(i).padStart(2, "0"), { method: "POST", headers, body: JSON.stringify({ value: i }) });
        if (!r.ok) throw new Error("kv set " + r.status);
      }
    });
    await page.$eval("#kv-pattern", (el) => (el.value = "^page:"));
    await page.click("#kv-find button");
    await page.waitForFunction(() => document.getElementById("kv-page").textContent === "keys 1–50");
    check((await page.$$("#kv-rows tr[data-key]")).length === 50, "a first page of 50 keys");
    check(await page.$eval("#kv-prev", (b) => b.disabled), "no page before the first");
    await page.click("#kv-next");
    await page.waitForFunction(() => document.getElementById("kv-page").textContent === "keys 51–55");
    const lastPage = await page.$$eval("#kv-rows tr[data-key]", (rows) => rows.map((r) => r.dataset.key));
    check(lastPage.join(",") === "page:50,page:51,page:52,page:53,page:54", "the second page: " + lastPage);
    check(await page.$eval("#kv-next", (b) => b.disabled), "no page after the last");
    await page.click("#kv-prev");
    await page.waitForFunction(() => document.getElementById("kv-page").textContent === "keys 1–50");

    // Health and metrics.
    await page.goto(base + "/#/health");
    await page.waitForFunction(() => document.getElementById("health").textContent.includes('"status"'));
    await shot(page, "6-health");

    // Chat: a streamed answer (the offline provider, grounded in the notes).
    await page.goto(base + "/#/chat");
    // The collection list loads after the page: wait for it, or the select
    // below picks nothing and the chat retrieves from no collection.
    await page.waitForFunction(() => [...document.querySelectorAll("#chat-collection option")].some((o) => o.value === "console_notes"));
    await page.select("#chat-collection", "console_notes");
    // The server also has an OpenAI provider configured (below): ask for the
    // offline one by name.
    await page.type("#chat-provider", "offline");
    await page.type("#chat-message", "When is high water?");
    await page.click("#chat-send button");
    await page.waitForFunction(() => document.getElementById("chat-answer").dataset.done === "true", { timeout: 20000 });
    const answer = await textOf(page, "#chat-answer");
    check(answer.trim().length > 0, "a chat answer");
    // The records it drew on, with scores, and the (empty) tool-call log.
    const sources = await textOf(page, "#chat-sources");
    check(sources.includes("console_notes/") && sources.includes("score"), "the answer's sources: " + sources + " (answer: " + answer + ")");
    check((await textOf(page, "#chat-log")).includes("No tools were called"), "the tool-call log");
    await shot(page, "7-chat");

    // Tool calls: a session on the (fake) OpenAI provider with tools on.
    const fake = await fakeOpenAi(Number(process.env.TIDEPOOL_FAKE_OPENAI_PORT));
    try {
      await page.$eval("#chat-provider", (el) => (el.value = "openai"));
      await page.click("#chat-tools");
      const before = await textOf(page, "#chat-session");
      await page.click("#chat-new button");
      await page.waitForFunction((old) => document.getElementById("chat-session").textContent !== old, {}, before);
      await page.$eval("#chat-message", (el) => (el.value = "How many notes are there?"));
      await page.click("#chat-send button");
      await page.waitForFunction(() => document.getElementById("chat-answer").dataset.done === "true", { timeout: 20000 });
      const calls = await textOf(page, "#chat-log");
      check(calls.includes("count_records") && calls.includes("console_notes"), "the tool call: " + calls);
      check(calls.includes("returned"), "the tool's result: " + calls);
      // The fake answers with the count the server's tool returned to it.
      const told = await textOf(page, "#chat-answer");
      check(told.includes("Notes counted: 1."), "the answer after the tool: " + told);
      await shot(page, "7b-chat-tools");
    } finally {
      fake.close();
    }

    // A phone-sized screen: the collection page still works.
    await page.setViewport({ width: 375, height: 740, isMobile: true });
    await page.goto(base + "/#/c/console_notes");
    await page.waitForSelector("#records tr[data-id]");
    await shot(page, "8-phone");

    // Signing out forgets the token.
    await page.click("#signout");
    await page.waitForSelector("#api-key");
    check(errors.length === 0, "no script errors: " + errors.join("; "));
    console.log("console ok: " + fs.readdirSync(shots).length + " screenshots in " + shots);
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
