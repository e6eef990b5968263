// Tidepool's web console: plain JavaScript over the REST API, with the
// bearer token of the API key the user signs in with (kept for this tab
// only). Every value shown goes through esc() or textContent.
"use strict";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let token = sessionStorage.getItem("tidepool_token");
let stopStream = null;
// Bumped on every page change: work that finishes after its page is gone
// (a slow fetch) sees it and drops its result.
let generation = 0;
const stale = (gen) => gen !== generation;

const esc = (v) =>
  String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const pretty = (v) => esc(JSON.stringify(natural(v), null, 2));

// Records come in the typed form (`{"type": "String", "value": "x"}`).
// Types JSON has of its own are shown plainly; the others (DateTime,
// Decimal, UUID, …) keep their envelope, so an edit saves them unchanged.
const NATURAL = new Set(["String", "Integer", "Float", "Number", "Boolean", "Null", "Object", "Array"]);
function natural(v) {
  if (Array.isArray(v)) return v.map(natural);
  if (v && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 2 && typeof v.type === "string" && "value" in v) {
      return NATURAL.has(v.type) ? natural(v.value) : v;
    }
    return Object.fromEntries(keys.map((k) => [k, natural(v[k])]));
  }
  return v;
}
const $ = (sel) => main.querySelector(sel);

function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = bad ? "show bad" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = ""), 4000);
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch (_) { /* plain text (/metrics) */ }
  if (r.status === 401 && path !== "/api/auth/token") {
    signOut("Your session ended: sign in again.");
    throw new Error("unauthorized");
  }
  if (!r.ok) throw new Error((data && data.message) || (data && data.error) || r.status + " " + text);
  return data;
}

function fail(e) {
  if (e.message !== "unauthorized") toast(e.message, true);
}

// Reads a text/event-stream response (fetch, so the Authorization header
// goes along), calling onEvent(name, data) per event until stopped.
function stream(method, path, body, onEvent) {
  const ctrl = new AbortController();
  const headers = { Accept: "text/event-stream", Authorization: "Bearer " + token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const done = (async () => {
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: ctrl.signal });
    if (!r.ok) throw new Error((await r.text()) || "stream refused: " + r.status);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) {
          let parsed = data;
          try { parsed = JSON.parse(data); } catch (_) { /* keep text */ }
          onEvent(name, parsed);
        }
      }
    }
  })().catch((e) => { if (e.name !== "AbortError") fail(e); });
  return { stop: () => ctrl.abort(), done };
}

function signOut(why) {
  token = null;
  sessionStorage.removeItem("tidepool_token");
  if (why) toast(why, true);
  location.hash = "#/signin";
  route();
}

// ---- pages ----

function signInPage() {
  nav.hidden = true;
  main.innerHTML = `
    <h1>Sign in</h1>
    <form id="signin" class="row">
      <label>API key <input id="api-key" type="password" autocomplete="current-password" required size="40"></label>
      <button type="submit">Sign in</button>
    </form>
    <p class="muted">The key is exchanged for a token kept in this tab only. A new server's key is in its data directory (<code>api_key</code>).</p>`;
  $("#signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/api/auth/token", { api_key: $("#api-key").value });
      token = r.token;
      sessionStorage.setItem("tidepool_token", token);
      location.hash = "#/collections";
    } catch (e) {
      toast("Sign-in failed: " + e.message, true);
    }
  });
  $("#api-key").focus();
}

async function collectionsPage() {
  main.innerHTML = `
    <h1>Collections</h1>
    <form id="new-collection" class="row">
      <label>New collection <input id="new-name" required placeholder="notes"></label>
      <label class="grow">First record (JSON)<input id="new-record" value='{"title": "hello"}'></label>
      <button type="submit">Create</button>
    </form>
    <div id="collection-list" class="cards" aria-live="polite">Loading…</div>`;
  $("#new-collection").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("#new-name").value.trim();
    try {
      await api("POST", "/api/insert/" + encodeURIComponent(name), JSON.parse($("#new-record").value));
      location.hash = "#/c/" + encodeURIComponent(name);
    } catch (e) { fail(e); }
  });
  const gen = generation;
  try {
    const { collections } = await api("GET", "/api/collections?exclude_internal=true");
    const counts = await Promise.all(collections.map((c) =>
      api("GET", "/api/collections/" + encodeURIComponent(c)).then((r) => r.analytics.record_count, () => "?")));
    if (stale(gen)) return;
    $("#collection-list").innerHTML = collections.length
      ? collections.map((c, i) => `<div class="card"><a href="#/c/${encodeURIComponent(c)}">${esc(c)}</a>
          <div class="muted">${esc(counts[i])} records</div></div>`).join("")
      : `<p class="muted">No collections yet: create one above.</p>`;
  } catch (e) { fail(e); }
}

async function collectionPage(name) {
  const path = encodeURIComponent(name);
  let skip = 0;
  main.innerHTML = `
    <h1>${esc(name)}</h1>
    <form id="query" class="row">
      <label class="grow">Filter (JSON, ekoDB filter)<input id="filter" placeholder='{"type":"Condition","content":{"field":"title","operator":"Eq","value":"hello"}}'></label>
      <label>Sort by <input id="sort" size="10" placeholder="field"></label>
      <label>Order <select id="order"><option value="asc">ascending</option><option value="desc">descending</option></select></label>
      <label>Per page <select id="limit"><option>10</option><option selected>25</option><option>100</option></select></label>
      <button type="submit">Find</button>
    </form>
    <div class="table-wrap"><table class="records"><thead><tr><th>id</th><th>record</th><th>actions</th></tr></thead><tbody id="records"></tbody></table></div>
    <div class="row pager"><button id="prev" class="plain" type="button">Previous</button><button id="next" class="plain" type="button">Next</button><span id="page" class="muted"></span></div>
    <h2>Insert a record</h2>
    <form id="insert"><textarea id="insert-json" aria-label="Record to insert (JSON)">{"title": "hello"}</textarea>
      <div class="row"><button type="submit">Insert</button></div></form>
    <details><summary>Schema</summary><pre id="schema" class="json">…</pre></details>
    <h2>Live changes</h2>
    <ul id="live-events" aria-live="polite"></ul>`;

  const gen = generation;
  async function load() {
    const body = { limit: Number($("#limit").value), skip };
    const f = $("#filter").value.trim();
    try {
      if (f) body.filter = JSON.parse(f);
      const s = $("#sort").value.trim();
      if (s) body.sort = [{ field: s, ascending: $("#order").value === "asc" }];
      const rows = await api("POST", "/api/find/" + path, body);
      if (stale(gen)) return;
      $("#records").innerHTML = rows.length ? rows.map((r) => `
        <tr data-id="${esc(r.id)}"><td>${esc(r.id)}</td><td><pre>${pretty(r)}</pre></td>
        <td><button class="plain edit" type="button">Edit</button> <button class="danger delete" type="button">Delete</button></td></tr>`).join("")
        : `<tr><td colspan="3" class="muted">No records.</td></tr>`;
      $("#page").textContent = `records ${skip + 1}–${skip + rows.length}`;
      $("#next").disabled = rows.length < body.limit;
      $("#prev").disabled = skip === 0;
    } catch (e) { fail(e); }
  }
  $("#query").addEventListener("submit", (ev) => { ev.preventDefault(); skip = 0; load(); });
  $("#next").addEventListener("click", () => { skip += Number($("#limit").value); load(); });
  $("#prev").addEventListener("click", () => { skip = Math.max(0, skip - Number($("#limit").value)); load(); });
  $("#records").addEventListener("click", async (ev) => {
    const row = ev.target.closest("tr");
    if (!row || !row.dataset.id) return;
    const id = row.dataset.id;
    if (ev.target.classList.contains("delete")) {
      if (!confirm(`Delete record ${id} from ${name}?`)) return;
      try { await api("DELETE", `/api/delete/${path}/${encodeURIComponent(id)}`); toast("Deleted " + id); load(); } catch (e) { fail(e); }
    } else if (ev.target.classList.contains("edit")) {
      const cell = row.children[1];
      const current = JSON.parse(cell.textContent);
      delete current.id;
      cell.innerHTML = `<textarea aria-label="Edit record ${esc(id)}">${pretty(current)}</textarea>
        <button class="save" type="button">Save</button> <button class="plain cancel" type="button">Cancel</button>`;
      cell.querySelector("textarea").focus();
      cell.querySelector(".cancel").addEventListener("click", load);
      cell.querySelector(".save").addEventListener("click", async () => {
        try {
          await api("PUT", `/api/update/${path}/${encodeURIComponent(id)}`, JSON.parse(cell.querySelector("textarea").value));
          toast("Saved " + id); load();
        } catch (e) { fail(e); }
      });
    }
  });
  $("#insert").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/api/insert/" + path, JSON.parse($("#insert-json").value));
      toast("Inserted " + (r.id || ""));
      load();
    } catch (e) { fail(e); }
  });
  api("GET", "/api/schemas/" + path).then(
    (s) => { if (!stale(gen)) $("#schema").innerHTML = pretty(s); },
    () => { if (!stale(gen)) $("#schema").textContent = "No schema."; });
  const live = stream("GET", "/api/subscribe/" + path, undefined, (event, data) => {
    if (event === "heartbeat") return;
    const li = document.createElement("li");
    li.innerHTML = `<strong>${esc(event)}</strong> <pre class="json">${pretty(data)}</pre>`;
    $("#live-events")?.prepend(li);
  });
  stopStream = live.stop;
  load();
}

async function searchPage() {
  main.innerHTML = `
    <h1>Search</h1>
    <form id="search" class="row">
      <label>Collection <select id="search-collection" required></select></label>
      <label class="grow">Query <input id="search-query" required></label>
      <label>Mode <select id="search-mode"><option value="text">text</option><option value="fuzzy">fuzzy</option><option value="vector">vector</option><option value="hybrid">hybrid</option></select></label>
      <label>Vector field <input id="vector-field" value="embedding" size="10"></label>
      <button type="submit">Search</button>
    </form>
    <div id="search-results" aria-live="polite"></div>`;
  $("#search").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const mode = $("#search-mode").value;
    const query = $("#search-query").value;
    const body = { limit: 20 };
    try {
      if (mode === "text" || mode === "fuzzy" || mode === "hybrid") body.query = query;
      if (mode === "fuzzy") body.fuzzy = true;
      if (mode === "vector" || mode === "hybrid") {
        body.vector = (await api("POST", "/api/embed", { text: query })).embeddings[0];
        body.vector_field = $("#vector-field").value;
      }
      const r = await api("POST", "/api/search/" + encodeURIComponent($("#search-collection").value), body);
      if (stale(gen)) return;
      $("#search-results").innerHTML = `<p class="muted">${esc(r.total)} results in ${esc(r.execution_time_ms)} ms</p>
        <div class="table-wrap"><table><thead><tr><th>score</th><th>matched fields</th><th>record</th></tr></thead><tbody>
        ${r.results.map((h) => `<tr class="hit"><td>${esc(h.score.toFixed(3))}</td><td>${esc(h.matched_fields.join(", "))}</td><td><pre>${pretty(h.record)}</pre></td></tr>`).join("")}
        </tbody></table></div>`;
    } catch (e) { fail(e); }
  });
  const gen = generation;
  try {
    const { collections } = await api("GET", "/api/collections?exclude_internal=true");
    if (stale(gen)) return;
    $("#search-collection").innerHTML = collections.map((c) => `<option>${esc(c)}</option>`).join("");
  } catch (e) { fail(e); }
}

async function kvPage() {
  main.innerHTML = `
    <h1>Key-value store</h1>
    <form id="kv-set" class="row">
      <label>Key <input id="kv-key" required></label>
      <label class="grow">Value (JSON) <input id="kv-value" value='"hello"'></label>
      <label>TTL (s) <input id="kv-ttl" size="6" inputmode="numeric"></label>
      <button type="submit">Set</button>
    </form>
    <form id="kv-find" class="row"><label class="grow">Keys matching (regular expression) <input id="kv-pattern" placeholder=".*"></label><button type="submit" class="plain">List</button></form>
    <div class="table-wrap"><table><thead><tr><th>key</th><th>value</th><th>actions</th></tr></thead><tbody id="kv-rows"></tbody></table></div>
    <div class="row pager"><button id="kv-prev" class="plain" type="button">Previous</button><button id="kv-next" class="plain" type="button">Next</button><span id="kv-page" class="muted"></span></div>`;
  const gen = generation;
  // Pages of KV_PAGE keys in key order: `after` is the last key of the
  // previous page; `starts` holds each shown page's `after`, for Previous.
  const KV_PAGE = 50;
  let starts = [null];
  let nextAfter = null;
  async function list() {
    const pattern = $("#kv-pattern").value.trim();
    const after = starts[starts.length - 1];
    try {
      const body = { limit: KV_PAGE + 1 };
      if (pattern) body.pattern = pattern;
      if (after !== null) body.after = after;
      const rows = await api("POST", "/api/kv/find", body);
      if (stale(gen)) return;
      const all = Array.isArray(rows) ? rows : rows.results || [];
      const items = all.slice(0, KV_PAGE);
      nextAfter = all.length > KV_PAGE ? items[items.length - 1].key : null;
      $("#kv-rows").innerHTML = items.length ? items.map((e) => `<tr data-key="${esc(e.key)}"><td>${esc(e.key)}</td><td><pre>${pretty(e.value)}</pre></td>
        <td><button class="danger kv-delete" type="button">Delete</button></td></tr>`).join("")
        : `<tr><td colspan="3" class="muted">No keys.</td></tr>`;
      const first = (starts.length - 1) * KV_PAGE;
      $("#kv-page").textContent = items.length ? `keys ${first + 1}–${first + items.length}` : "";
      $("#kv-prev").disabled = starts.length === 1;
      $("#kv-next").disabled = nextAfter === null;
    } catch (e) { fail(e); }
  }
  $("#kv-next").addEventListener("click", () => { if (nextAfter !== null) { starts.push(nextAfter); list(); } });
  $("#kv-prev").addEventListener("click", () => { if (starts.length > 1) { starts.pop(); list(); } });
  $("#kv-set").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const body = { value: JSON.parse($("#kv-value").value) };
      const ttl = $("#kv-ttl").value.trim();
      if (ttl) body.ttl = Number(ttl);
      await api("POST", "/api/kv/set/" + encodeURIComponent($("#kv-key").value), body);
      toast("Saved"); list();
    } catch (e) { fail(e); }
  });
  $("#kv-find").addEventListener("submit", (ev) => { ev.preventDefault(); starts = [null]; list(); });
  $("#kv-rows").addEventListener("click", async (ev) => {
    const row = ev.target.closest("tr");
    if (!row || !ev.target.classList.contains("kv-delete")) return;
    if (!confirm(`Delete key ${row.dataset.key}?`)) return;
    try { await api("DELETE", "/api/kv/delete/" + encodeURIComponent(row.dataset.key)); list(); } catch (e) { fail(e); }
  });
  list();
}

// One line of the tool-call log: a call with its arguments, or a result.
function toolLine(event, data) {
  const li = document.createElement("li");
  if (event === "tool_result") {
    li.className = data.success === false ? "tool-result bad" : "tool-result";
    li.innerHTML = `← <strong>${esc(data.tool || "")}</strong> ${data.success === false ? "failed" : "returned"}
      <pre class="json">${pretty(data.result)}</pre>`;
  } else {
    li.className = "tool-call";
    li.innerHTML = `→ <strong>${esc(data.tool || "")}</strong>${event === "__client_tool_call" ? " (for the client to run)" : ""}
      <pre class="json">${pretty(data.args)}</pre>`;
  }
  return li;
}

// The records the answer `messageId` was grounded in (its stored
// context_snippets): collection/id, score, matched fields, an excerpt.
async function showSources(session, messageId) {
  const list = $("#chat-sources");
  if (!list || !messageId) return;
  try {
    const msg = natural(await api("GET", `/api/chat/${encodeURIComponent(session)}/messages/${encodeURIComponent(messageId)}`));
    const snippets = Array.isArray(msg.context_snippets) ? msg.context_snippets : [];
    list.innerHTML = snippets.length ? snippets.map((sn) => {
      const rec = sn.record || {};
      const excerpt = JSON.stringify(rec).slice(0, 200);
      const score = typeof sn.score === "number" ? sn.score.toFixed(3) : "";
      return `<li><strong>${esc(sn.collection)}/${esc(rec.id || sn.id || "")}</strong>
        <span class="muted">score ${esc(score)}; matched ${esc((sn.matched_fields || []).join(", ") || "—")}</span>
        <pre class="json">${esc(excerpt)}</pre></li>`;
    }).join("") : `<li class="muted">No records were retrieved for this answer.</li>`;
  } catch (e) { fail(e); }
}

async function chatPage() {
  main.innerHTML = `
    <h1>Chat playground</h1>
    <form id="chat-new" class="row">
      <label>Retrieve from collection <select id="chat-collection"><option value="">(none)</option></select></label>
      <label>Provider <input id="chat-provider" size="10" placeholder="server default"></label>
      <label class="check"><input id="chat-tools" type="checkbox"> Tools</label>
      <button type="submit" class="plain">New session</button>
      <span id="chat-session" class="muted"></span>
    </form>
    <form id="chat-send" class="row">
      <label class="grow">Message <input id="chat-message" required></label>
      <button type="submit">Send</button>
    </form>
    <div id="chat-answer" class="answer" aria-live="polite"></div>
    <h2>Sources</h2>
    <ol id="chat-sources" class="sources"><li class="muted">The records an answer drew on appear here.</li></ol>
    <h2>Tool calls</h2>
    <ul id="chat-log"><li class="muted">None yet.</li></ul>`;
  let chatId = null;
  async function newSession() {
    const body = {};
    const c = $("#chat-collection").value;
    if (c) body.collections = [{ collection_name: c }];
    const p = $("#chat-provider").value.trim();
    if (p) body.llm_provider = p;
    if ($("#chat-tools").checked) body.tool_config = { enabled: true };
    const r = await api("POST", "/api/chat", body);
    chatId = r.chat_id;
    $("#chat-session").textContent = "session " + chatId;
  }
  $("#chat-new").addEventListener("submit", (ev) => { ev.preventDefault(); newSession().catch(fail); });
  $("#chat-send").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      if (!chatId) await newSession();
      const answer = $("#chat-answer");
      answer.textContent = "";
      delete answer.dataset.done;
      const log = $("#chat-log");
      log.innerHTML = "";
      const session = chatId;
      const s = stream("POST", `/api/chat/${encodeURIComponent(session)}/messages/stream`, { message: $("#chat-message").value }, (event, data) => {
        if (data && typeof data.token === "string") answer.textContent += data.token;
        else if (data && data.error) toast(String(data.error), true);
        else if (event === "tool_call" || event === "__client_tool_call" || event === "tool_result") {
          log.append(toolLine(event, data));
        } else if (event === "done") {
          if (!answer.textContent) answer.textContent = data.content || "";
          if (!log.children.length) log.innerHTML = `<li class="muted">No tools were called.</li>`;
          showSources(session, data.message_id).finally(() => { answer.dataset.done = "true"; });
        }
      });
      stopStream = s.stop;
    } catch (e) { fail(e); }
  });
  const gen = generation;
  try {
    const { collections } = await api("GET", "/api/collections?exclude_internal=true");
    if (stale(gen)) return;
    $("#chat-collection").innerHTML += collections.map((c) => `<option>${esc(c)}</option>`).join("");
  } catch (e) { fail(e); }
}

async function healthPage() {
  main.innerHTML = `<h1>Server health</h1><pre id="health" class="json card">…</pre><h2>Metrics</h2><pre id="metrics" class="json card">…</pre>`;
  const gen = generation;
  try {
    const health = await api("GET", "/api/health");
    if (stale(gen)) return;
    $("#health").innerHTML = pretty(health);
  } catch (e) { fail(e); }
  let text;
  try {
    text = String(await api("GET", "/metrics"));
  } catch (e) {
    text = "Metrics are not readable with this key (" + e.message + ").";
  }
  if (stale(gen)) return;
  const wanted = /^(tidepool_(requests_total|fsync|connections|subscribers|function_runs|chat)|process_)/;
  const lines = text.split("\n").filter((l) => wanted.test(l)).slice(0, 80);
  $("#metrics").textContent = lines.length ? lines.join("\n") : text;
}

// ---- routing ----

function route() {
  generation++;
  if (stopStream) { stopStream(); stopStream = null; }
  const hash = location.hash || "#/collections";
  if (!token) return signInPage();
  nav.hidden = false;
  for (const a of nav.querySelectorAll("a")) {
    if (hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const [, page, arg] = hash.split("/");
  const pages = { collections: collectionsPage, search: searchPage, kv: kvPage, chat: chatPage, health: healthPage };
  if (page === "c" && arg) collectionPage(decodeURIComponent(arg));
  else (pages[page] || collectionsPage)();
  main.focus();
}

document.getElementById("signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
