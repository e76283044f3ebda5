// The kernelserver console: cells over the v1 API's NDJSON stream, the token only in a header.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "kernelserver.token";
const NS_KEY = "kernelserver.namespace";
const POLL_MS = 2000;
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;
// HTML outputs get the console's table style and frame.js, which reports their height: both by
// absolute URL, as a srcdoc frame has no URL of its own to resolve against.
const FRAME_HEAD = `<!doctype html><meta charset="utf-8">`
  + `<link rel="stylesheet" href="${location.origin}/console/frame.css">`
  + `<script src="${location.origin}/console/frame.js"></script>`;

let token = null;
let current = sessionStorage.getItem(NS_KEY) || "default";
let recalled = [];  // code run from this page, newest last (Ctrl+Up / Ctrl+Down)
let recallAt = 0;
let pollTimer = null;
let listAsked = 0;  // calls of refreshNamespaces so far
let listShown = 0;  // the newest of them whose answer the page shows

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// -- the token: from the URL fragment (never sent to the server), kept for this tab only --

function fragmentToken() {
  // The fragment's #token= ("" where it is empty), or null where it has none.
  const fragment = new URLSearchParams(location.hash.slice(1));
  return fragment.has("token") ? fragment.get("token").trim() : null;
}

function takeToken() {
  const given = fragmentToken();
  if (given !== null) {
    if (given) sessionStorage.setItem(TOKEN_KEY, given);
    // Out of the address bar once read, right or wrong: not to be bookmarked, shared or shown.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(json) {
  const found = {};
  if (token) found.Authorization = "Bearer " + token;
  if (json) found["Content-Type"] = "application/json";
  return found;
}

async function failure(response) {
  let code = "error";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) ({code, message} = body.error);
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) {
    showLogin(token ? ["wrong token: the server did not accept it. Use the URL ", codeNode("serve"),
                       " printed, or ", codeNode("kernelserver token"),
                       " on its machine (a restarted server has a new one)."]
                    : ["this server needs its token: paste it, or open the URL ", codeNode("serve"),
                       " printed."]);
  }
  return new ApiError(response.status, code, message);
}

async function api(method, path, body) {
  const init = {method, headers: headers(body !== undefined), cache: "no-store"};
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

function notice(text) {
  $("notice").textContent = text || "";
}

// -- login --

function signedIn(yes) {
  // The controls stay hidden until the server took the token: before, they could only fail.
  $("app").hidden = !yes;
  $("controls").hidden = !yes;
  $("login").hidden = yes;
}

function showLogin(message) {
  if (token) sessionStorage.removeItem(TOKEN_KEY);
  signedIn(false);
  // Text and <code> nodes, never markup: a server's message is no HTML.
  $("login-error").replaceChildren(...[].concat(message || []));
  $("token").focus();
  clearInterval(pollTimer);
}

async function connect() {
  try {
    await refreshNamespaces();
  } catch (error) {
    if (error.status !== 401) showLogin(`cannot reach the server: ${error.message}`);
    return;
  }
  signedIn(true);
  $("editor").focus();
  refreshHistory();
  clearInterval(pollTimer);
  pollTimer = setInterval(() => {
    if (!document.hidden) refreshNamespaces().catch(() => {});
  }, POLL_MS);
}

// -- text output: \r rewrites the line (progress bars), ANSI colours dropped --

class Term {
  constructor(pre) {
    this.done = pre.appendChild(document.createTextNode(""));
    this.line = pre.appendChild(document.createTextNode(""));
    this.text = "";
    this.carriage = false;
  }

  write(text) {
    for (const part of text.replace(ANSI, "").split(/(\r\n|\n|\r)/)) {
      if (part === "\n" || part === "\r\n") {
        this.done.appendData(this.text + "\n");
        this.text = "";
        this.carriage = false;
      } else if (part === "\r") {
        this.carriage = true;
      } else if (part) {
        if (this.carriage) this.text = "";
        this.carriage = false;
        this.text += part;
      }
    }
    this.line.data = this.text;
  }
}

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function codeNode(text) {
  return element("code", "", text);
}

function renderBundle(parent, data, className) {
  const box = parent.appendChild(element("div", className));
  if (data["image/png"] || data["image/jpeg"]) {
    const img = box.appendChild(element("img"));
    const type = data["image/png"] ? "image/png" : "image/jpeg";
    img.src = `data:${type};base64,${data[type].replace(/\s/g, "")}`;
    img.alt = data["text/plain"] || "image output";
    img.addEventListener("load", () => following(() => {}));  // its height is known only now
  } else if (data["image/svg+xml"]) {
    const img = box.appendChild(element("img"));
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(data["image/svg+xml"]);
    img.alt = data["text/plain"] || "image output";
  } else if (data["text/html"]) {
    // Never in the page itself: a sandboxed frame has no origin, so it can reach neither this
    // page nor its token. It inherits the page's CSP, so the only scripts that run there are the
    // console's own (frame.js, which posts the content's height); the output's are refused.
    // Never allow-same-origin next to allow-scripts: together they undo the sandbox.
    const frame = box.appendChild(element("iframe", "html-output"));
    frame.setAttribute("sandbox", "allow-scripts");
    frame.title = "HTML output";
    frame.srcdoc = FRAME_HEAD + data["text/html"];
  } else if (data["text/plain"] !== undefined) {
    box.appendChild(element("pre", "text", data["text/plain"].replace(ANSI, "")));
  } else {
    box.appendChild(element("pre", "note", `(output of type ${Object.keys(data).join(", ")})`));
  }
}

// -- cells --

// Output keeps the newest line in view, unless the reader has scrolled up to look at something.
let stick = true;

function following(change) {
  change();
  if (stick) $("cells").scrollTop = $("cells").scrollHeight;
}

function fitFrame(event) {
  // A number from one of the output frames (anything in a frame can post: check both), clamped.
  const height = Number(event.data && event.data.height);
  if (!Number.isFinite(height)) return;
  for (const frame of document.querySelectorAll("iframe.html-output")) {
    if (frame.contentWindow === event.source) {
      const fitted = Math.round(Math.min(Math.max(height, 20), window.innerHeight * 0.7));
      following(() => { frame.style.height = `${fitted + 2}px`; });  // + its 1px borders
      return;
    }
  }
}

class CellView {
  constructor(code, label) {
    this.root = element("div", "cell");
    const input = this.root.appendChild(element("div", "in"));
    this.prompt = input.appendChild(element("span", "prompt", "[*]"));
    const source = input.appendChild(element("pre", "code", code));
    source.title = "Click to copy into the editor";
    source.addEventListener("click", () => setEditor(code));
    if (label) input.appendChild(element("span", "label", label));
    this.out = this.root.appendChild(element("div", "out"));
    this.stream = null;
    this.term = null;
    following(() => $("cells").appendChild(this.root));
  }

  text(stream, text) {
    following(() => {
      if (this.stream !== stream) {
        this.term = new Term(this.out.appendChild(element("pre", stream)));
        this.stream = stream;
      }
      this.term.write(text);
    });
  }

  display(data) {
    this.stream = null;
    following(() => renderBundle(this.out, data, "display"));
  }

  finish(result) {
    following(() => this.finished(result));
  }

  finished(result) {
    this.stream = null;
    this.prompt.textContent = result.execution_count ? `[${result.execution_count}]` : "[ ]";
    this.root.dataset.status = result.status;
    if (result.result) renderBundle(this.out, result.result, "result");
    if (result.error) {
      const error = result.error;
      const shown = error.traceback ? error.traceback : `${error.ename}: ${error.evalue}`;
      const pre = this.out.appendChild(element("pre", "error", shown.replace(ANSI, "")));
      pre.dataset.ename = error.ename;
    }
    const notes = [];
    if (result.truncated) notes.push("output was cut at the server's limit");
    if (result.restarted) notes.push("the namespace was restarted: its variables are gone");
    if (result.status === "running" || result.status === "queued") notes.push(`still ${result.status}`);
    for (const text of notes) this.out.appendChild(element("p", "note", text));
  }

  fail(text) {
    this.prompt.textContent = "[!]";
    this.root.dataset.status = "failed";
    this.out.appendChild(element("pre", "error", text));
  }

  replay(result) {
    if (result.stdout) this.text("stdout", result.stdout);
    if (result.stderr) this.text("stderr", result.stderr);
    for (const data of result.displays || []) this.display(data);
    this.finish(result);
  }
}

async function run() {
  const editor = $("editor");
  const code = editor.value;
  if (!code.trim()) return;
  recalled.push(code);
  recallAt = recalled.length;
  editor.value = "";
  notice("");
  const namespace = current;
  const view = new CellView(code);
  let response;
  try {
    response = await fetch("/execute", {
      method: "POST", headers: headers(true), cache: "no-store",
      body: JSON.stringify({id: namespace, code, stream: true}),
    });
  } catch (error) {
    view.fail(`cannot reach the server: ${error.message}`);
    return;
  }
  if (!response.ok) {
    const error = await failure(response);
    view.fail(`${error.code}: ${error.message}`);
    return;
  }
  refreshNamespaces().catch(() => {});
  let finished = false;
  try {
    finished = await readStream(response, (event) => {
      if (event.event === "stdout" || event.event === "stderr") view.text(event.event, event.text);
      else if (event.event === "display") view.display(event.data);
      else if (event.event === "result") view.finish(event);
    });
  } catch (error) {
    view.fail(`the stream broke: ${error.message}`);
    return;
  }
  if (!finished) view.fail("the server closed the stream before the cell finished");
  if (namespace === current) refreshHistory();
  refreshNamespaces().catch(() => {});
}

async function readStream(response, handle) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  let finished = false;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    let from = pending.length;
    pending += decoder.decode(value, {stream: true});
    let end;
    while ((end = pending.indexOf("\n", from)) >= 0) {
      const line = pending.slice(0, end);
      pending = pending.slice(end + 1);
      from = 0;
      if (!line.trim()) continue;
      const event = JSON.parse(line);
      if (event.event === "result") finished = true;
      handle(event);
    }
  }
  return finished;
}

// -- namespaces and history --

function bytes(count) {
  if (count === null || count === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function armed(button, label, action) {
  // Two clicks: the first asks, the second (within 4 s) acts.
  let timer = null;
  const disarm = () => {
    clearTimeout(timer);
    delete button.dataset.armed;
    button.textContent = label;
  };
  button.addEventListener("click", () => {
    if (button.dataset.armed) {
      disarm();
      action();
      return;
    }
    button.dataset.armed = "1";
    button.textContent = "Sure?";
    timer = setTimeout(disarm, 4000);
  });
}

async function refreshNamespaces() {
  const asked = ++listAsked;
  const {envs} = await api("GET", "/env/list");
  // Answers can cross (the poll's, a run's): an older one must not undo what a newer one showed.
  if (asked < listShown) return envs;
  listShown = asked;
  const select = $("ns");
  const ids = envs.map((info) => info.id);
  if (!ids.includes(current)) ids.unshift(current);
  if ([...select.options].map((o) => o.value).join("\n") !== ids.join("\n")) {
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
  }
  select.value = current;
  showNamespaces(envs);
  const mine = envs.find((info) => info.id === current);
  const state = $("state");
  state.textContent = mine ? mine.state : "not created yet";
  state.className = `state ${mine ? mine.state : ""}`;
  return envs;
}

function namespaceRow(id) {
  const row = element("tr");
  row.dataset.id = id;
  const name = row.insertCell().appendChild(element("button", "link", id));
  name.title = `Use namespace ${id}`;
  name.addEventListener("click", () => choose(id));
  row.insertCell().appendChild(element("span", "state"));
  row.insertCell();
  const remove = row.insertCell().appendChild(element("button", "delete", "Delete"));
  remove.title = `Delete namespace ${id}`;
  armed(remove, "Delete", () => removeNamespace(id));
  return row;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function showNamespaces(envs) {
  // In place, row by row (keyed by id), never rebuilt: a poll must not swap a button out from
  // under a click, nor forget that a Delete waits for its "Sure?".
  const table = $("namespaces");
  const body = table.tBodies[0];
  const rows = new Map([...body.rows].map((row) => [row.dataset.id, row]));
  envs.forEach((info, index) => {
    const row = rows.get(info.id) || namespaceRow(info.id);
    rows.delete(info.id);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
    row.classList.toggle("current", info.id === current);
    const state = row.cells[1].firstChild;
    setText(state, info.state);
    if (state.className !== `state ${info.state}`) state.className = `state ${info.state}`;
    setText(row.cells[2], bytes(info.memory_rss));
  });
  for (const gone of rows.values()) gone.remove();
  // How many answers the list has shown: a test (or a person) can see that a poll happened.
  table.dataset.refreshes = String(Number(table.dataset.refreshes || 0) + 1);
}

async function refreshHistory() {
  $("history-of").textContent = current;
  const list = $("history");
  let executions = [];
  try {
    ({executions} = await api("GET", `/env/history?id=${encodeURIComponent(current)}&limit=50`));
  } catch (error) {
    if (error.code !== "namespace_not_found") notice(error.message);
  }
  list.replaceChildren();
  for (const past of executions.slice().reverse()) {
    const item = list.appendChild(element("li", `past ${past.status}`));
    const show = item.appendChild(element("button", "link show"));
    show.textContent = `[${past.execution_count}] ${past.code.split("\n")[0].slice(0, 60)}`;
    show.title = `Show the output of [${past.execution_count}] (${past.status})`;
    show.addEventListener("click", () => showPast(past.execution_count, past.code));
    const copy = item.appendChild(element("button", "copy", "Edit"));
    copy.title = "Copy its code into the editor";
    copy.addEventListener("click", () => setEditor(past.code));
  }
}

async function showPast(n, code) {
  try {
    const result = await api("GET", `/env/execution?id=${encodeURIComponent(current)}&n=${n}`);
    new CellView(code, `from history, ${current}`).replay(result);
  } catch (error) {
    notice(error.message);
  }
}

function choose(id) {
  current = id;
  sessionStorage.setItem(NS_KEY, id);
  refreshNamespaces().catch((error) => notice(error.message));
  refreshHistory();
  $("editor").focus();
}

async function removeNamespace(id) {
  try {
    await api("POST", "/env/delete", {id});
    if (id === current) choose("default");
    else refreshNamespaces();
  } catch (error) {
    notice(error.message);
  }
}

async function action(path, done) {
  notice("");
  try {
    const answer = await api("POST", path, {id: current});
    if (done) done(answer);
    refreshNamespaces().catch(() => {});
  } catch (error) {
    notice(error.message);
  }
}

// -- the editor: a textarea that knows Python's indentation --

function setEditor(code) {
  const editor = $("editor");
  editor.value = code;
  editor.focus();
  editor.setSelectionRange(code.length, code.length);
}

function insert(editor, text) {
  // execCommand keeps the browser's undo history; setRangeText where it is gone.
  if (!document.execCommand || !document.execCommand("insertText", false, text)) {
    editor.setRangeText(text, editor.selectionStart, editor.selectionEnd, "end");
  }
}

function onKey(event) {
  const editor = event.target;
  if (event.key === "Enter" && (event.shiftKey || event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    run();
  } else if (event.key === "Enter") {
    const before = editor.value.slice(0, editor.selectionStart);
    const line = before.slice(before.lastIndexOf("\n") + 1);
    let indent = line.match(/^\s*/)[0];
    if (/:\s*$/.test(line)) indent += "    ";
    event.preventDefault();
    insert(editor, "\n" + indent);
  } else if (event.key === "Tab" && !event.shiftKey && editor.selectionStart === editor.selectionEnd) {
    event.preventDefault();
    insert(editor, "    ");
  } else if (event.ctrlKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
    event.preventDefault();
    recallAt = Math.max(0, Math.min(recalled.length, recallAt + (event.key === "ArrowUp" ? -1 : 1)));
    setEditor(recalled[recallAt] ?? "");
  } else if (event.key === "Escape") {
    editor.blur();  // so Tab can leave the editor
  }
}

// -- wiring --

document.addEventListener("DOMContentLoaded", () => {
  $("editor").addEventListener("keydown", onKey);
  $("cells").addEventListener("scroll", () => {
    const cells = $("cells");
    stick = cells.scrollHeight - cells.scrollTop - cells.clientHeight < 60;
  });
  $("run").addEventListener("click", run);
  $("interrupt").addEventListener("click", () => action("/env/interrupt"));
  armed($("restart"), "Restart", () => action("/env/restart", () => refreshHistory()));
  $("ns").addEventListener("change", (event) => choose(event.target.value));
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    connect();
  });
  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("new-id").value.trim();
    if (!id) return;
    try {
      await api("POST", "/env/create", {id});
      $("new-id").value = "";
      choose(id);
    } catch (error) {
      notice(error.message);
    }
  });
  window.addEventListener("message", fitFrame);
  // A #token= pasted into the open page changes only the fragment: no reload, so read it here.
  window.addEventListener("hashchange", () => {
    if (fragmentToken() === null) return;
    token = takeToken();
    connect();
  });
  token = takeToken();
  connect();
});
