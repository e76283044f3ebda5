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
let kernels = new Map();  // name -> the server's GET /kernels row, once it answered

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
  // The picker keeps its python3 where the list does not come: the server's default still works.
  refreshKernels().catch(() => {});
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

// -- Markdown: a small, conservative converter straight to DOM nodes --
//
// No library is vendored, and what cells display (IPython's Markdown(), to_markdown() tables)
// needs little: headings, emphasis, code, links, lists, quotes, tables. Every character of the
// source ends up in a text node, so HTML written in it shows as text and never becomes markup;
// a link keeps its href only for http(s) and mailto. Math stays as written (that needs MathJax).

const MD_MAX = 100000;  // a longer source shows as text: the scans below are not built for it
const MD_DEPTH = 12;  // quotes, lists or emphasis nested deeper than this stay text
const SAFE_HREF = /^(https?:|mailto:)/i;
// An <img> runs no script, whatever it shows; other sources the page's CSP refuses anyway.
const SAFE_IMAGE = /^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*$/i;
const PUNCT = /[!-/:-@[-`{-~]/;
const ENTITIES = new Map(Object.entries({
  amp: "&", lt: "<", gt: ">", quot: "\"", apos: "'", nbsp: "\u00a0", copy: "\u00a9",
  mdash: "\u2014", ndash: "\u2013", hellip: "\u2026", times: "\u00d7"}));
const ENTITY = /&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|([a-z]+));/y;
const AUTOLINK = /<((?:https?|mailto):[^\s<>]*)>/iy;
// A link's (destination "title"), after its "]".
const LINK_TARGET = new RegExp([
  String.raw`[ \t\n]*(?:<([^<>\n]*)>|((?:[^\s()<>\\]|\\.|\([^\s()<>]*\))*))`,
  String.raw`(?:[ \t\n]+("[^"]*"|'[^']*'|\([^()]*\)))?[ \t\n]*\)`].join(""), "y");
const MD = {
  blank: /^[ \t]*$/,
  fence: /^( {0,3})(`{3,}|~{3,})(.*)$/,
  heading: /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/,
  rule: /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/,
  quote: /^ {0,3}> ?/,
  setext: /^ {0,3}(=+|-+)[ \t]*$/,
  indented: /^ {4}/,
  item: /^( {0,3})([-+*]|\d{1,9}[.)])(?:( +)(.*))?$/,
};

function markdown(source) {
  if (source.length > MD_MAX) return element("pre", "text", source);
  const lines = source.replace(/\r\n?/g, "\n").split("\n")
    .map((line) => line.replace(/^[ \t]+/, (lead) => lead.replace(/\t/g, "    ")));
  const root = element("div", "markdown");
  root.append(mdBlocks(lines, 0));
  return root;
}

function mdItem(line) {
  // A list item's first line: its marker, and how far its content is indented.
  const found = MD.item.exec(line);
  if (!found) return null;
  const [, lead, marker, gap = "", rest = ""] = found;
  const spaces = gap.length > 4 || !rest ? 1 : gap.length;  // more: an indented block in it
  return {ordered: /\d/.test(marker), kind: marker.slice(-1), start: parseInt(marker, 10),
          indent: lead.length + marker.length + spaces, first: gap.slice(spaces) + rest};
}

function mdInterrupts(line) {
  // Whether line starts a block even straight after a paragraph's line.
  if (MD.fence.test(line) || MD.heading.test(line) || MD.rule.test(line) || MD.quote.test(line)) {
    return true;
  }
  const item = mdItem(line);
  return Boolean(item && item.first.trim() && (!item.ordered || item.start === 1));
}

function mdCells(line) {
  let text = line.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|") && !text.endsWith("\\|")) text = text.slice(0, -1);
  return text.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function mdTable(lines, at) {
  // A pipe table starting at lines[at], and the index after it; null where there is none.
  if (at + 1 >= lines.length || !lines[at].includes("|") || !lines[at + 1].includes("-")) {
    return null;
  }
  const head = mdCells(lines[at]);
  const rule = mdCells(lines[at + 1]);
  if (head.length !== rule.length || !rule.every((cell) => /^:?-+:?$/.test(cell))) return null;
  const align = rule.map((cell) => (cell.endsWith(":") ? (cell.startsWith(":") ? "center" : "right")
                                                         : (cell.startsWith(":") ? "left" : "")));
  const table = element("table");
  const row = (section, tag, texts) => {
    const tr = section.appendChild(element("tr"));
    align.forEach((side, k) => {
      const cell = tr.appendChild(element(tag));
      if (side) cell.style.textAlign = side;
      cell.append(mdInline(texts[k] || ""));
    });
  };
  row(table.createTHead(), "th", head);
  const body = table.createTBody();
  let next = at + 2;
  while (next < lines.length && !MD.blank.test(lines[next]) && !mdInterrupts(lines[next])) {
    row(body, "td", mdCells(lines[next]));
    next += 1;
  }
  return [table, next];
}

function mdList(lines, at, out, depth) {
  // The list starting at lines[at] into out; the index after it.
  const first = mdItem(lines[at]);
  const list = out.appendChild(element(first.ordered ? "ol" : "ul"));
  if (first.ordered && first.start !== 1) list.start = first.start;
  const items = [];
  let loose = false;
  let next = at;
  while (next < lines.length) {
    const item = mdItem(lines[next]);
    if (!item || item.kind !== first.kind) break;
    const body = [item.first];
    next += 1;
    while (next < lines.length) {
      const line = lines[next];
      if (MD.blank.test(line)) {
        body.push("");
      } else if (line.length - line.trimStart().length >= item.indent) {
        body.push(line.slice(item.indent));
      } else if (body[body.length - 1] !== "" && !mdInterrupts(line) && !mdItem(line)) {
        body.push(line.trim());  // a paragraph's lazy continuation
      } else {
        break;
      }
      next += 1;
    }
    let gap = false;
    while (body.length > 1 && body[body.length - 1] === "") {
      body.pop();
      gap = true;
    }
    // A blank line between items or inside one makes the list loose: paragraphs in its items.
    const again = next < lines.length && mdItem(lines[next]);
    if (body.includes("") || (gap && again && again.kind === first.kind)) loose = true;
    items.push(body);
  }
  for (const body of items) {
    const li = list.appendChild(element("li"));
    li.append(mdBlocks(body, depth + 1));
    if (loose) continue;
    for (const para of [...li.children].filter((child) => child.tagName === "P")) {
      para.replaceWith(...para.childNodes);
    }
  }
  return next;
}

function mdCode(lines) {
  const pre = element("pre", "code-block");
  pre.appendChild(element("code", "", lines.join("\n")));
  return pre;
}

function mdBlocks(lines, depth) {
  const out = document.createDocumentFragment();
  if (depth > MD_DEPTH) {
    out.append(element("pre", "", lines.join("\n")));
    return out;
  }
  let at = 0;
  while (at < lines.length) {
    const line = lines[at];
    let found;
    if (MD.blank.test(line)) {
      at += 1;
    } else if ((found = MD.fence.exec(line)) && !(found[2][0] === "`" && found[3].includes("`"))) {
      const [, lead, fence] = found;
      const closing = new RegExp(`^ {0,3}${fence[0]}{${fence.length},}[ \\t]*$`);
      const body = [];
      for (at += 1; at < lines.length && !closing.test(lines[at]); at += 1) {
        body.push(lines[at].replace(new RegExp(`^ {0,${lead.length}}`), ""));
      }
      at += 1;  // past the closing fence (an unclosed one runs to the end)
      out.append(mdCode(body));
    } else if (MD.indented.test(line)) {
      const body = [];
      for (; at < lines.length && (MD.indented.test(lines[at]) || MD.blank.test(lines[at])); ) {
        body.push(lines[at].slice(4));
        at += 1;
      }
      while (MD.blank.test(body[body.length - 1])) body.pop();
      out.append(mdCode(body));
    } else if ((found = MD.heading.exec(line))) {
      out.appendChild(element(`h${found[1].length}`)).append(mdInline(found[2] || ""));
      at += 1;
    } else if (MD.rule.test(line)) {
      out.append(element("hr"));
      at += 1;
    } else if (MD.quote.test(line)) {
      const inner = [];
      for (; at < lines.length && MD.quote.test(lines[at]); at += 1) {
        inner.push(lines[at].replace(MD.quote, ""));
      }
      out.appendChild(element("blockquote")).append(mdBlocks(inner, depth + 1));
    } else if (mdItem(line)) {
      at = mdList(lines, at, out, depth);
    } else if ((found = mdTable(lines, at))) {
      out.append(found[0]);
      at = found[1];
    } else {
      const para = [line.trim()];
      let tag = "p";
      for (at += 1; at < lines.length; at += 1) {
        const setext = MD.setext.exec(lines[at]);
        if (setext) {
          tag = setext[1][0] === "=" ? "h1" : "h2";
          at += 1;
          break;
        }
        if (MD.blank.test(lines[at]) || mdInterrupts(lines[at])) break;
        para.push(lines[at].trimStart());
      }
      out.appendChild(element(tag)).append(mdInline(para.join("\n").trimEnd()));
    }
  }
  return out;
}

function matchAt(pattern, text, at) {
  // A sticky pattern's match starting exactly at text[at], or null.
  pattern.lastIndex = at;
  return pattern.exec(text);
}

function runOf(text, at) {
  // How many times text[at] repeats from at.
  let end = at;
  while (text[end] === text[at]) end += 1;
  return end - at;
}

function mdInline(text, depth = 0) {
  const out = document.createDocumentFragment();
  if (depth > MD_DEPTH) {
    out.append(text);
    return out;
  }
  // Searches that found no closer from some place find none from any later one either: kept,
  // so that a line of a thousand "*" or "`" is not scanned a thousand times.
  const failed = new Map();
  let brackets = null;
  let plain = "";
  const flush = () => {
    if (plain) out.append(plain);
    plain = "";
  };

  const codeSpan = (at) => {
    // The code span opening at text[at]: [its end, its text]; null where no run closes it.
    const size = runOf(text, at);
    const key = "`" + size;
    if (failed.has(key) && at >= failed.get(key)) return null;
    for (let j = at + size; j < text.length;) {
      if (text[j] !== "`") {
        j += 1;
        continue;
      }
      const run = runOf(text, j);
      if (run === size) {
        let inside = text.slice(at + size, j).replace(/\n/g, " ");
        if (/^ .*[^ ].* $/.test(inside) || /^ [^ ] $/.test(inside)) inside = inside.slice(1, -1);
        return [j + size, inside];
      }
      j += run;
    }
    failed.set(key, at);
    return null;
  };

  const skip = (j) => {
    // Past an escape or a code span starting at text[j]; j itself where neither does.
    if (text[j] === "\\") return j + 2;
    if (text[j] === "`") {
      const span = codeSpan(j);
      return span ? span[0] : j + runOf(text, j);
    }
    return j;
  };

  const closer = (from, mark, size) => {
    // Where the run closing an emphasis of size mark characters opened before from starts.
    const key = mark + size;
    if (failed.has(key) && from >= failed.get(key)) return -1;
    for (let j = from; j < text.length;) {
      const past = skip(j);
      if (past !== j) {
        j = past;
        continue;
      }
      if (text[j] !== mark) {
        j += 1;
        continue;
      }
      const run = runOf(text, j);
      const end = j + run;
      if (j > from && !/\s/.test(text[j - 1]) && (run === size || run >= 3)
          && (mark !== "_" || !/[\p{L}\p{N}]/u.test(text[end] || ""))) {
        return end - size;
      }
      j = end;
    }
    failed.set(key, from);
    return -1;
  };

  const bracket = (at) => {
    // The "]" matching the "[" at text[at], or -1: all pairs found in one pass, once.
    if (!brackets) {
      brackets = new Map();
      const open = [];
      for (let j = 0; j < text.length;) {
        const past = skip(j);
        if (past !== j) {
          j = past;
          continue;
        }
        if (text[j] === "[") open.push(j);
        else if (text[j] === "]" && open.length) brackets.set(open.pop(), j);
        j += 1;
      }
    }
    return brackets.has(at) ? brackets.get(at) : -1;
  };

  const link = (at) => {
    // A link or image whose "[" is at text[at]: [the node, where it ends]; null where none is.
    const image = text[at] === "!";
    const open = image ? at + 1 : at;
    const close = bracket(open);
    if (close < 0 || text[close + 1] !== "(") return null;
    const target = matchAt(LINK_TARGET, text, close + 2);
    if (!target) return null;
    const href = (target[1] ?? target[2]).replace(/\\([!-/:-@[-`{-~])/g, "$1");
    const title = target[3] ? target[3].slice(1, -1) : "";
    const label = text.slice(open + 1, close);
    let node;
    if (image && SAFE_IMAGE.test(href)) {
      node = element("img");
      node.src = href;
      node.alt = label;
    } else if (SAFE_HREF.test(href)) {
      node = element("a");
      node.href = href;
      node.target = "_blank";
      node.rel = "noopener noreferrer";
      node.append(image ? label : mdInline(label, depth + 1));
    } else {
      // javascript:, or a path here that would need the token: the words, not a link.
      node = element("span", "link-refused");
      node.append(image ? label : mdInline(label, depth + 1));
      node.title = href;
    }
    if (title) node.title = title;
    return [node, close + 2 + target[0].length];
  };

  for (let i = 0; i < text.length;) {
    const c = text[i];
    let found;
    if (c === "\\" && PUNCT.test(text[i + 1] || "")) {
      plain += text[i + 1];
      i += 2;
    } else if (c === "\n" || (c === "\\" && text[i + 1] === "\n")) {
      // A line ending in two spaces or a backslash breaks; any other joins the next with a space.
      const hard = c === "\\" || / {2}$/.test(plain);
      plain = plain.replace(/ +$/, "");
      if (hard) {
        flush();
        out.append(element("br"));
      } else {
        plain += "\n";
      }
      i += c === "\\" ? 2 : 1;
    } else if (c === "`") {
      const span = codeSpan(i);
      if (span) {
        flush();
        out.append(element("code", "", span[1]));
        i = span[0];
      } else {
        const run = runOf(text, i);
        plain += text.slice(i, i + run);
        i += run;
      }
    } else if (c === "*" || c === "_" || c === "~") {
      const run = runOf(text, i);
      const size = c === "~" ? 2 : Math.min(run, 2);
      const after = text[i + size] || " ";
      const end = (c !== "~" || run === 2) && !/\s/.test(after)
        && (c !== "_" || !/[\p{L}\p{N}]/u.test(text[i - 1] || "")) ? closer(i + size, c, size) : -1;
      if (end >= 0) {
        flush();
        const tag = c === "~" ? "del" : size === 2 ? "strong" : "em";
        out.appendChild(element(tag)).append(mdInline(text.slice(i + size, end), depth + 1));
        i = end + size;
      } else {
        plain += text.slice(i, i + run);
        i += run;
      }
    } else if ((c === "[" || (c === "!" && text[i + 1] === "[")) && (found = link(i))) {
      flush();
      out.append(found[0]);
      i = found[1];
    } else if (c === "<" && (found = matchAt(AUTOLINK, text, i))) {
      flush();
      const anchor = out.appendChild(element("a", "", found[1]));
      anchor.href = found[1];
      anchor.target = "_blank";
      anchor.rel = "noopener noreferrer";
      i += found[0].length;
    } else if (c === "&" && (found = matchAt(ENTITY, text, i))
               && (found[3] === undefined || ENTITIES.has(found[3]))) {
      const code = found[1] ? Number(found[1]) : found[2] ? parseInt(found[2], 16) : null;
      plain += code === null ? ENTITIES.get(found[3])
        : code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : "\ufffd";
      i += found[0].length;
    } else {
      plain += c;
      i += 1;
    }
  }
  flush();
  return out;
}

function renderBundle(parent, data, className) {
  const box = parent.appendChild(element("div", className));
  fill(box, data);
  return box;
}

function fill(box, data) {
  // Jupyter's order: the richest type first. LaTeX would need MathJax, so an image or the plain
  // text of the same value comes before its source.
  if (data["text/html"]) {
    // Never in the page itself: a sandboxed frame has no origin, so it can reach neither this
    // page nor its token. It inherits the page's CSP, so the only scripts that run there are the
    // console's own (frame.js, which posts the content's height); the output's are refused.
    // Never allow-same-origin next to allow-scripts: together they undo the sandbox.
    const frame = box.appendChild(element("iframe", "html-output"));
    frame.setAttribute("sandbox", "allow-scripts");
    frame.title = "HTML output";
    frame.srcdoc = FRAME_HEAD + data["text/html"];
  } else if (data["text/markdown"]) {
    box.appendChild(markdown(data["text/markdown"]));
  } else if (data["image/svg+xml"]) {
    const img = box.appendChild(element("img"));
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(data["image/svg+xml"]);
    img.alt = data["text/plain"] || "image output";
  } else if (data["image/png"] || data["image/jpeg"]) {
    const img = box.appendChild(element("img"));
    const type = data["image/png"] ? "image/png" : "image/jpeg";
    img.src = `data:${type};base64,${data[type].replace(/\s/g, "")}`;
    img.alt = data["text/plain"] || "image output";
    img.addEventListener("load", () => following(() => {}));  // its height is known only now
  } else if (data["text/plain"] !== undefined) {
    box.appendChild(element("pre", "text", data["text/plain"].replace(ANSI, "")));
  } else if (data["text/latex"] !== undefined) {
    box.appendChild(element("pre", "text", data["text/latex"]));
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

// The displays shown with an id (display(x, display_id=...)), on any cell still on the page: an
// update replaces every one of them in place.
const withId = new Map();  // display_id -> Set of its boxes

function updateDisplay(id, data) {
  following(() => {
    for (const box of withId.get(id) || []) {
      box.replaceChildren();
      fill(box, data);
    }
  });
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
    this.clearNext = false;  // clear_output(wait=True): clear when the next output comes
    following(() => $("cells").appendChild(this.root));
  }

  clear(wait) {
    if (wait) {
      this.clearNext = true;
    } else {
      following(() => this.cleared());
    }
  }

  cleared() {
    this.clearNext = false;
    // Gone from the page, so out of the map too: a loop that clears and shows anew keeps none.
    for (const box of this.out.querySelectorAll(".display[data-display-id]")) {
      const boxes = withId.get(box.dataset.displayId);
      boxes.delete(box);
      if (!boxes.size) withId.delete(box.dataset.displayId);
    }
    this.out.replaceChildren();
    this.stream = null;
    this.term = null;
  }

  text(stream, text) {
    following(() => {
      // Cleared and written in one task: the page never shows the area empty in between.
      if (this.clearNext) this.cleared();
      if (this.stream !== stream) {
        this.term = new Term(this.out.appendChild(element("pre", stream)));
        this.stream = stream;
      }
      this.term.write(text);
    });
  }

  display(data, id) {
    following(() => {
      if (this.clearNext) this.cleared();
      this.stream = null;
      const box = renderBundle(this.out, data, "display");
      if (typeof id === "string") {
        box.dataset.displayId = id;
        if (!withId.has(id)) withId.set(id, new Set());
        withId.get(id).add(box);
      }
    });
  }

  finish(result) {
    following(() => this.finished(result));
  }

  finished(result) {
    // A clear still waiting stays undone, as in the result the server keeps for this cell.
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
      else if (event.event === "display") view.display(event.data, event.display_id);
      else if (event.event === "update_display") updateDisplay(event.display_id, event.data);
      else if (event.event === "clear_output") view.clear(event.wait);
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

// -- kernels: the environments a namespace can run in (Pythons, and other Jupyter kernels) --

function kernelTitle(name) {
  const info = kernels.get(name);
  if (!info) return `kernel ${name}`;
  // A Jupyter kernel of another language has no Python of ours: say which language it is.
  const where = !info.python ? `, a ${info.language} Jupyter kernel`
    : info.display_name.includes(info.python) ? "" : `, ${info.python}`;
  const title = `kernel ${name}: ${info.display_name}${where}`;
  return info.why ? `${title} (${info.why})` : title;
}

async function refreshKernels() {
  const answer = await api("GET", "/kernels");
  kernels = new Map(answer.kernels.map((info) => [info.name, info]));
  const select = $("new-kernel");
  const chosen = select.value;
  select.replaceChildren(...answer.kernels.map((info) => {
    // Text only (new Option sets text, not markup). One that cannot start stays choosable, so
    // the server's own words say why when it is tried; the label warns first.
    const label = info.version ? `${info.name} (Python ${info.version})`
      : !info.python ? `${info.name} (${info.language})` : info.name;
    const option = new Option(info.starts === false ? `${label}: cannot start` : label, info.name);
    option.title = kernelTitle(info.name);
    return option;
  }));
  select.value = kernels.has(chosen) ? chosen : kernels.has("python3") ? "python3" : select.value;
  select.dataset.loaded = "1";
  // Titles of rows shown before the list came.
  refreshNamespaces().catch(() => {});
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
  const kernel = $("kernel");
  kernel.hidden = !(mine && mine.kernel);
  setText(kernel, mine && mine.kernel ? mine.kernel : "");
  kernel.title = mine && mine.kernel ? `${kernelTitle(mine.kernel)}: the Python this namespace runs in` : "";
  return envs;
}

function namespaceRow(id) {
  const row = element("tr");
  row.dataset.id = id;
  const name = row.insertCell().appendChild(element("button", "link", id));
  name.title = `Use namespace ${id}`;
  name.addEventListener("click", () => choose(id));
  row.insertCell().className = "kernel";
  row.insertCell().appendChild(element("span", "state"));
  row.insertCell().className = "memory";
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
    const kernel = row.cells[1];
    setText(kernel, info.kernel || "");
    const title = info.kernel ? kernelTitle(info.kernel) : "";
    if (kernel.title !== title) kernel.title = title;
    const state = row.cells[2].firstChild;
    setText(state, info.state);
    if (state.className !== `state ${info.state}`) state.className = `state ${info.state}`;
    setText(row.cells[3], bytes(info.memory_rss));
  });
  for (const gone of rows.values()) gone.remove();
  // A server with one kernel (most): no picker, no column that says python3 on every row; the
  // header still names it.
  const many = kernels.size > 1 || envs.some((info) => info.kernel && info.kernel !== "python3");
  $("app").classList.toggle("one-kernel", !many);
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

async function createNamespace(event) {
  event.preventDefault();
  const shown = $("create-error");
  const id = $("new-id").value.trim();
  const kernel = $("new-kernel").value;
  if (!id) return;
  shown.textContent = "";
  let answer;
  try {
    answer = await api("POST", "/env/create", kernel ? {id, kernel} : {id});
  } catch (error) {
    // By the form, in the server's words: an unknown kernel (400), one whose Python cannot
    // start (503), a bad id.
    shown.textContent = error.status === 401 ? "" : `${id}: ${error.message}`;
    return;
  }
  $("new-id").value = "";
  choose(id);
  // An id that exists keeps its kernel: create answers 200 with it, not an error.
  if (!answer.created && answer.kernel && kernel && answer.kernel !== kernel) {
    shown.textContent = `${id} exists already and runs in ${answer.kernel}, not ${kernel}`;
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
  $("create-form").addEventListener("submit", createNamespace);
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
