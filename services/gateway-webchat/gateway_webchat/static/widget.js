/*! openlines web chat widget — plain JS, no build step.
 * Embed with ONE tag:
 *   <script src="https://chat.example.com/widget.js" data-account="demo" async></script>
 * Optional attributes: data-title, data-color, data-greeting, data-away-greeting (shown while nobody can answer),
 * data-sound="off" (no chime on a reply while the chat is closed or the tab hidden),
 * data-prechat="name email phone" (a form before the first message; any of the three), data-prechat-required="email",
 * data-consent="I agree that…" and data-consent-url="https://…/privacy" (a box the visitor must tick first).
 * Protocol: docs/channels/webchat.md
 */
(function () {
  "use strict";
  if (window.openlinesWidget && window.openlinesWidget.__loaded) return;

  var script = document.currentScript || document.querySelector('script[src*="widget.js"][data-account]');
  if (!script) return;
  var account = script.getAttribute("data-account") || "";
  var title = script.getAttribute("data-title") || "Chat with us";
  var color = script.getAttribute("data-color") || "#2563eb";
  var greeting = script.getAttribute("data-greeting") || "Hi! Send us a message — we usually reply within minutes.";
  var awayGreeting = script.getAttribute("data-away-greeting") ||
    "Our team is away right now. Leave a message and we will answer as soon as we are back.";
  var sound = script.getAttribute("data-sound") !== "off";
  // "{place}" is replaced by the visitor's place in the queue (told only when the line tells places)
  var queueText = script.getAttribute("data-queue-text") || "You are number {place} in the queue. Thank you for waiting.";
  function words(attr) { return (script.getAttribute(attr) || "").toLowerCase().split(/[\s,]+/).filter(Boolean); }
  var prechat = words("data-prechat").filter(function (f) { return f === "name" || f === "email" || f === "phone"; });
  var prechatRequired = words("data-prechat-required");
  var consentText = (script.getAttribute("data-consent") || "").trim().slice(0, 400);
  var consentUrl = script.getAttribute("data-consent-url") || "";
  if (consentUrl && !/^https?:\/\//i.test(consentUrl)) consentUrl = "";  // a link, never javascript:
  var available = true;  // someone can answer now (the gateway says so at every connection and on change)
  var closed = false;  // ... and if not, because the line is outside its business hours (closedText: its own words)
  var closedText = "";
  var src = new URL(script.src, document.baseURI);
  var wsBase = (src.protocol === "https:" ? "wss:" : "ws:") + "//" + src.host + "/ws/" + encodeURIComponent(account);
  var httpBase = src.protocol + "//" + src.host;  // files are uploaded to and served by this gateway
  var storeKey = "openlines:" + src.host + ":" + account;
  var MAX_TRANSCRIPT = 200;

  // ---- state kept in localStorage: token, last reply seq, transcript, name ----
  function load() {
    try {
      var raw = window.localStorage.getItem(storeKey);
      if (raw) return JSON.parse(raw);
    } catch (e) { /* private mode or bad JSON: start fresh */ }
    return {};
  }
  var saved = load();
  var state = {
    token: saved.token || "",
    visitor: saved.visitor || "",
    lastSeq: saved.lastSeq || 0,
    name: saved.name || "",
    operator: saved.operator || "",  // who answered last: shown in the header
    contact: saved.contact || null,  // the pre-chat form as sent: {email, phone, consent}
    items: Array.isArray(saved.items) ? saved.items : [],
    open: !!saved.open
  };
  function save() {
    state.items = state.items.slice(-MAX_TRANSCRIPT);
    try {
      window.localStorage.setItem(storeKey, JSON.stringify({
        token: state.token, visitor: state.visitor, lastSeq: state.lastSeq,
        name: state.name, operator: state.operator, contact: state.contact, items: state.items, open: state.open
      }));
    } catch (e) { /* storage full or blocked: the chat still works for this page */ }
  }

  // ---- DOM (in a shadow root so the host page's CSS cannot break it) ----
  var host = document.createElement("div");
  host.id = "openlines-widget";
  host.setAttribute("data-testid", "ol-widget");
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var css = [
    ":host{all:initial}",
    "*{box-sizing:border-box;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}",
    ".launcher{position:fixed;right:20px;bottom:20px;width:60px;height:60px;border-radius:50%;border:0;cursor:pointer;",
    "background:var(--ol-color);color:#fff;box-shadow:0 6px 20px rgba(0,0,0,.25);display:flex;align-items:center;",
    "justify-content:center;z-index:2147483000;transition:transform .15s}",
    ".launcher:hover{transform:scale(1.06)}.launcher:focus-visible{outline:3px solid #111;outline-offset:3px}",
    ".badge{position:absolute;top:-2px;right:-2px;min-width:20px;height:20px;border-radius:10px;background:#dc2626;",
    "color:#fff;font-size:12px;line-height:20px;text-align:center;padding:0 5px;font-weight:600}",
    ".panel{position:fixed;right:20px;bottom:92px;width:370px;max-width:calc(100vw - 40px);height:560px;",
    "max-height:calc(100vh - 120px);background:#fff;border-radius:16px;box-shadow:0 12px 40px rgba(0,0,0,.25);",
    "display:flex;flex-direction:column;overflow:hidden;z-index:2147483000;color:#111827;font-size:14px}",
    ".panel[hidden]{display:none}",
    "header{background:var(--ol-color);color:#fff;padding:14px 16px;display:flex;align-items:center;gap:10px}",
    "header h2{font-size:16px;margin:0;font-weight:600}",
    ".conn{font-size:12px;opacity:.9;display:flex;align-items:center;gap:6px}",
    ".dot{width:8px;height:8px;border-radius:50%;background:#fbbf24}.dot.on{background:#4ade80}",
    ".x{background:transparent;border:0;color:#fff;font-size:22px;cursor:pointer;line-height:1;padding:4px 8px;border-radius:6px}",
    ".x:focus-visible{outline:2px solid #fff}",
    ".namebar{display:flex;gap:6px;padding:8px 12px;border-bottom:1px solid #e5e7eb;background:#f9fafb;align-items:center}",
    ".namebar label{font-size:12px;color:#4b5563;white-space:nowrap}",
    ".namebar input{flex:1;border:1px solid #d1d5db;border-radius:8px;padding:6px 8px;font-size:13px;min-width:0}",
    ".log{flex:1;overflow-y:auto;padding:14px 12px;display:flex;flex-direction:column;gap:8px;background:#f3f4f6}",
    ".greet{align-self:center;text-align:center;color:#6b7280;font-size:13px;padding:6px 12px}",
    ".msg{max-width:80%;display:flex;flex-direction:column;gap:2px}",
    ".msg .bubble{padding:8px 12px;border-radius:14px;white-space:pre-wrap;word-wrap:break-word;overflow-wrap:anywhere;line-height:1.4}",
    ".msg.out{align-self:flex-end;align-items:flex-end}.msg.out .bubble{background:var(--ol-color);color:#fff;border-bottom-right-radius:4px}",
    ".msg.in{align-self:flex-start}.msg.in .bubble{background:#fff;border:1px solid #e5e7eb;border-bottom-left-radius:4px}",
    ".files{display:flex;flex-direction:column;gap:4px;margin-top:4px}.files a{color:inherit;font-weight:600}",
    ".files img{display:block;max-width:220px;max-height:160px;border-radius:8px}",
    ".files audio{max-width:220px;height:36px}",
    ".attach{display:flex;align-items:center;justify-content:center;width:40px;height:40px;border:1px solid #d1d5db;",
    "border-radius:10px;cursor:pointer;font-size:18px;background:#fff;flex:none}.attach:focus-within{outline:2px solid var(--ol-color)}",
    ".meta{font-size:11px;color:#6b7280;display:flex;gap:6px;align-items:center}",
    ".msg.failed .bubble{opacity:.7}.msg.failed .meta{color:#b91c1c}",
    ".retry{border:1px solid #b91c1c;background:#fff;color:#b91c1c;border-radius:6px;font-size:11px;padding:1px 8px;cursor:pointer}",
    ".notice{font-size:12px;color:#b91c1c;padding:4px 12px;background:#fef2f2}.notice:empty{display:none}",
    ".typing{font-size:12px;color:#6b7280;padding:2px 14px;background:#f3f4f6;font-style:italic}.typing[hidden]{display:none}",
    ".queue{font-size:12px;color:#374151;padding:4px 14px;background:#fef3c7;border-top:1px solid #fde68a}.queue[hidden]{display:none}",
    "form{display:flex;gap:8px;padding:10px 12px;border-top:1px solid #e5e7eb;background:#fff;align-items:flex-end}",
    "textarea{flex:1;resize:none;border:1px solid #d1d5db;border-radius:10px;padding:9px 10px;font-size:14px;",
    "max-height:120px;min-height:40px;line-height:1.35}",
    "textarea:focus,.namebar input:focus{outline:2px solid var(--ol-color);outline-offset:0;border-color:transparent}",
    ".send{background:var(--ol-color);color:#fff;border:0;border-radius:10px;padding:0 16px;height:40px;font-size:14px;",
    "font-weight:600;cursor:pointer}.send:disabled{opacity:.5;cursor:default}",
    ".send:focus-visible{outline:3px solid #111;outline-offset:2px}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}",
    ".agent{display:flex;align-items:center;gap:6px;font-size:12px;opacity:.95}.agent[hidden]{display:none}",
    ".avatar{width:26px;height:26px;border-radius:50%;background:rgba(255,255,255,.25);display:flex;align-items:center;",
    "justify-content:center;font-size:11px;font-weight:700;letter-spacing:.5px}",
    ".titles{flex:1;min-width:0}.titles h2{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}",
    ".rate{display:flex;gap:4px;margin-top:6px;flex-wrap:wrap}.rate button{border:1px solid #d1d5db;background:#fff;",
    "border-radius:8px;min-width:34px;height:34px;font-size:14px;cursor:pointer}.rate button:hover{border-color:var(--ol-color)}",
    ".rate button:focus-visible{outline:2px solid var(--ol-color)}.thanks{margin-top:6px;font-size:12px;color:#047857}",
    ".emoji{display:flex;align-items:center;justify-content:center;width:40px;height:40px;border:1px solid #d1d5db;",
    "border-radius:10px;cursor:pointer;font-size:18px;background:#fff;flex:none}.emoji:focus-visible{outline:2px solid var(--ol-color)}",
    ".emojis{display:grid;grid-template-columns:repeat(8,1fr);gap:2px;padding:6px 10px;border-top:1px solid #e5e7eb;background:#fff}",
    ".emojis[hidden]{display:none}.emojis button{border:0;background:transparent;font-size:20px;height:34px;cursor:pointer;border-radius:6px}",
    ".emojis button:hover,.emojis button:focus-visible{background:#f3f4f6;outline:none}",
    ".prechat{flex:1;overflow-y:auto;padding:16px;display:flex;flex-direction:column;gap:10px;background:#f9fafb}",
    ".prechat[hidden]{display:none}.prechat p{margin:0;color:#374151}.prechat label{display:flex;flex-direction:column;gap:4px;font-size:13px;color:#374151}",
    ".prechat input[type=text],.prechat input[type=email],.prechat input[type=tel]{border:1px solid #d1d5db;border-radius:8px;padding:8px;font-size:14px}",
    ".prechat .consent{flex-direction:row;align-items:flex-start;gap:8px}.prechat .consent a{color:var(--ol-color)}",
    ".prechat button{background:var(--ol-color);color:#fff;border:0;border-radius:10px;height:40px;font-size:14px;font-weight:600;cursor:pointer}",
    ".prechat .err{color:#b91c1c;font-size:12px;min-height:1em}",
    ".chat[hidden]{display:none}.chat{display:flex;flex-direction:column;flex:1;min-height:0}",
    // A phone: the open chat takes the whole screen (inset, not 100vw, which counts a scroll bar and
    // shifts the panel), and the launcher steps aside so it covers neither the text box nor Send.
    "@media (max-width:480px){.panel{left:0;right:0;top:0;bottom:0;width:auto;max-width:none;height:auto;",
    "max-height:none;border-radius:0}.launcher{right:14px;bottom:14px}.launcher.open{display:none}}"
  ].join("");
  root.innerHTML =
    '<style>' + css + '</style>' +
    '<button class="launcher" id="ol-launcher" data-testid="ol-launcher" type="button" aria-haspopup="dialog" aria-expanded="false" aria-controls="ol-panel" aria-label="Open chat">' +
    '<svg width="28" height="28" viewBox="0 0 24 24" fill="none" aria-hidden="true"><path d="M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v8a2.5 2.5 0 0 1-2.5 2.5H10l-4.2 3.6c-.5.4-1.3.1-1.3-.6V16A2.5 2.5 0 0 1 4 13.5v-8Z" fill="currentColor"/></svg>' +
    '<span class="badge" id="ol-badge" data-testid="ol-badge" hidden></span></button>' +
    '<section class="panel" id="ol-panel" data-testid="ol-panel" role="dialog" aria-modal="false" aria-labelledby="ol-title" hidden>' +
    '<header><div class="titles"><h2 id="ol-title"></h2>' +
    '<div class="agent" id="ol-agent" data-testid="ol-agent" hidden><span class="avatar" id="ol-avatar" data-testid="ol-avatar" aria-hidden="true"></span><span id="ol-agent-name"></span></div></div>' +
    '<span class="conn" id="ol-conn" data-testid="ol-conn" aria-live="polite"><span class="dot" id="ol-dot"></span><span id="ol-conn-text">Connecting…</span></span>' +
    '<button class="x" id="ol-close" data-testid="ol-close" type="button" aria-label="Close chat">×</button></header>' +
    '<form class="prechat" id="ol-prechat" data-testid="ol-prechat" aria-label="Before we start" novalidate hidden></form>' +
    '<div class="chat" id="ol-chat">' +
    '<div class="namebar"><label for="ol-name">Your name</label><input id="ol-name" data-testid="ol-name" type="text" maxlength="100" autocomplete="name" placeholder="optional"></div>' +
    '<div class="log" id="ol-log" data-testid="ol-log" role="log" aria-live="polite" aria-relevant="additions"><div class="greet" id="ol-greet"></div></div>' +
    '<div class="queue" id="ol-queue" data-testid="ol-queue" role="status" aria-live="polite" hidden></div>' +
    '<div class="typing" id="ol-typing" data-testid="ol-typing" hidden></div>' +
    '<div class="notice" id="ol-notice" data-testid="ol-notice" role="status"></div>' +
    '<div class="emojis" id="ol-emojis" data-testid="ol-emojis" role="group" aria-label="Emoji" hidden></div>' +
    '<form id="ol-form" data-testid="ol-form">' +
    '<label class="attach" title="Attach a file" data-testid="ol-attach"><svg aria-hidden="true" width="20" height="20" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5"/></svg>' +
    '<span class="sr">Attach a file</span><input id="ol-file" data-testid="ol-file" type="file" multiple hidden></label>' +
    '<button class="emoji" id="ol-emoji" data-testid="ol-emoji" type="button" aria-label="Insert emoji" aria-expanded="false" aria-controls="ol-emojis"><span aria-hidden="true">\uD83D\uDE0A</span></button>' +
    '<label class="sr" for="ol-input">Message</label>' +
    '<textarea id="ol-input" data-testid="ol-input" rows="1" placeholder="Type a message…" maxlength="4000"></textarea>' +
    '<button class="send" id="ol-send" data-testid="ol-send" type="submit">Send</button></form></div></section>';
  host.style.setProperty("--ol-color", color);
  function $(id) { return root.getElementById ? root.getElementById(id) : root.querySelector("#" + id); }
  var el = {
    launcher: $("ol-launcher"), badge: $("ol-badge"), panel: $("ol-panel"), title: $("ol-title"),
    dot: $("ol-dot"), connText: $("ol-conn-text"), close: $("ol-close"), name: $("ol-name"),
    log: $("ol-log"), greet: $("ol-greet"), notice: $("ol-notice"), form: $("ol-form"),
    input: $("ol-input"), send: $("ol-send"), file: $("ol-file"),
    agent: $("ol-agent"), avatar: $("ol-avatar"), agentName: $("ol-agent-name"), emoji: $("ol-emoji"), emojis: $("ol-emojis"),
    prechat: $("ol-prechat"), chat: $("ol-chat"), typing: $("ol-typing"), queue: $("ol-queue")
  };
  el.title.textContent = title;
  el.greet.textContent = greeting;
  el.name.value = state.name;

  // ---- rendering ----
  var STATUS_TEXT = { sending: "sending…", sent: "sent", read: "read", failed: "not sent – retry" };
  var unread = 0;
  function fmtTime(at) {
    var d = new Date(at);
    return isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  function render(item) {
    var node = el.log.querySelector('[data-key="' + item.kind + ":" + item.id + '"]');
    if (!node) {
      node = document.createElement("div");
      node.setAttribute("data-key", item.kind + ":" + item.id);
      node.setAttribute("data-id", item.id);
      node.setAttribute("data-testid", item.kind === "out" ? "ol-msg-out" : "ol-msg-in");
      node.innerHTML = '<div class="bubble"></div><div class="meta"></div>';
      el.log.appendChild(node);
    }
    node.className = "msg " + item.kind + (item.status === "failed" ? " failed" : "");
    var bubble = node.querySelector(".bubble");
    bubble.textContent = item.text || "";
    renderFiles(bubble, item.attachments);
    var meta = node.querySelector(".meta");
    meta.textContent = "";
    if (item.kind === "out") {
      node.setAttribute("data-status", item.status);
      var st = document.createElement("span");
      st.className = "status";
      st.setAttribute("data-testid", "ol-status");
      st.textContent = STATUS_TEXT[item.status] || item.status;
      meta.appendChild(st);
      if (item.status === "failed" && item.retryable !== false) {
        var b = document.createElement("button");
        b.type = "button";
        b.className = "retry";
        b.setAttribute("data-testid", "ol-retry");
        b.textContent = "Retry";
        b.addEventListener("click", function () { retry(item.id); });
        meta.appendChild(b);
      }
      if (item.error) node.setAttribute("title", item.error);
    } else {
      var who = document.createElement("span");
      who.textContent = (item.operator || (item.auto ? "Auto-reply" : "Support")) + (item.at ? " · " + fmtTime(item.at) : "");
      meta.appendChild(who);
      if (item.rating) renderRating(node, item);
    }
    return node;
  }
  // A request to rate the chat: 1-5 as buttons (typing the digit works too), then a thank-you.
  function renderRating(node, item) {
    var old = node.querySelector(".rate,.thanks");
    if (old) old.remove();
    if (item.rated) {
      var thanks = document.createElement("div");
      thanks.className = "thanks";
      thanks.setAttribute("data-testid", "ol-rating-thanks");
      thanks.setAttribute("role", "status");
      thanks.textContent = "Thank you for your rating (" + item.rated + " of 5)!";
      node.appendChild(thanks);
      return;
    }
    if (item.passed || latestRating() !== item) return;  // only the newest request, until the visitor moves on
    var box = document.createElement("div");
    box.className = "rate";
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Rate this chat from 1 (bad) to 5 (excellent)");
    box.setAttribute("data-testid", "ol-rating");
    for (var n = 1; n <= 5; n++) {
      (function (score) {
        var b = document.createElement("button");
        b.type = "button";
        b.textContent = score + "\u2605";
        b.setAttribute("aria-label", score + " of 5");
        b.setAttribute("data-testid", "ol-rate-" + score);
        b.addEventListener("click", function () { rate(item, score); });
        box.appendChild(b);
      })(n);
    }
    node.appendChild(box);
  }
  function latestRating() {
    for (var i = state.items.length - 1; i >= 0; i--) {
      if (state.items[i].kind === "in" && state.items[i].rating) return state.items[i];
    }
    return null;
  }
  function rate(item, score) {
    if (!item.rated && send(String(score))) el.input.focus();
  }
  // Who answers: the last operator's name and initials in the header.
  function initials(name) {
    var words = String(name || "").trim().split(/\s+/).filter(Boolean);
    if (!words.length) return "";
    var first = Array.from(words[0])[0] || "";
    var last = words.length > 1 ? (Array.from(words[words.length - 1])[0] || "") : "";
    return (first + last).toUpperCase();
  }
  function renderAgent() {
    el.agent.hidden = !state.operator;
    el.agentName.textContent = state.operator;
    el.avatar.textContent = initials(state.operator);
  }
  // Files: links this gateway signed for this visitor (relative to it), images shown small, voice and audio playable.
  function fileUrl(u) {
    if (!u) return "";
    try {
      var x = new URL(u, httpBase);
      return /^https?:$/.test(x.protocol) ? x.href : "";
    } catch (e) { return ""; }
  }
  function renderFiles(bubble, files) {
    if (!files || !files.length) return;
    var box = document.createElement("div");
    box.className = "files";
    files.forEach(function (a) {
      var url = fileUrl(a.url);
      if (!url) {
        var label = document.createElement("span");
        label.setAttribute("data-testid", "ol-attachment-pending");
        label.textContent = "\uD83D\uDCCE " + (a.name || "file");
        box.appendChild(label);
        return;
      }
      if (a.kind === "voice" || a.kind === "audio") {
        var player = document.createElement("audio");
        player.controls = true;
        player.preload = "none";
        player.src = url;
        player.setAttribute("data-testid", "ol-attachment-audio");
        box.appendChild(player);
      }
      var link = document.createElement("a");
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.setAttribute("data-testid", "ol-attachment");
      if (a.kind === "image") {
        var img = document.createElement("img");
        // An image takes its height only once loaded: keep the newest message in view if it was.
        img.addEventListener("load", function () {
          var gap = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight;
          if (gap <= img.offsetHeight + 80) scrollDown();
        });
        img.src = url;
        img.alt = a.name || "image";
        link.appendChild(img);
      } else {
        link.textContent = "\uD83D\uDCCE " + (a.name || "file");
      }
      box.appendChild(link);
    });
    if (box.childNodes.length) bubble.appendChild(box);
  }
  function scrollDown() { el.log.scrollTop = el.log.scrollHeight; }
  function renderAll() { state.items.forEach(render); scrollDown(); }
  function find(kind, id) {
    for (var i = state.items.length - 1; i >= 0; i--) {
      if (state.items[i].kind === kind && state.items[i].id === id) return state.items[i];
    }
    return null;
  }
  function setNotice(text) { el.notice.textContent = text || ""; }
  function setBadge() {
    el.badge.hidden = unread === 0;
    el.badge.textContent = String(unread);
    el.launcher.setAttribute("aria-label", unread ? "Open chat (" + unread + " new)" : "Open chat");
  }

  // ---- connection ----
  var ws = null;
  var connected = false;
  var attempts = 0;
  var timer = null;
  var stopped = false;
  var maxText = 4000;
  var maxUpload = 0;
  function setConnected(on, text) {
    connected = on;
    el.dot.className = "dot" + (on && available ? " on" : "");
    el.connText.textContent = text || (on ? (available ? "Online" : closed ? "Closed" : "Away") : "Connecting…");
    el.greet.textContent = available ? greeting : (closed && closedText) || awayGreeting;
    host.setAttribute("data-available", available ? "true" : "false");
    host.setAttribute("data-closed", !available && closed ? "true" : "false");
    host.setAttribute("data-connected", on ? "true" : "false");
  }
  function schedule(delay) {
    if (stopped || timer) return;
    timer = setTimeout(function () { timer = null; connect(); }, delay);
  }
  function backoff() {
    attempts += 1;
    var base = Math.min(15000, 500 * Math.pow(2, attempts - 1));
    return Math.round(base / 2 + Math.random() * base / 2);
  }
  var comeBackAfter = 0;  // seconds: the server said when a refused new visit may try again
  function connect() {
    if (stopped || (ws && ws.readyState <= 1)) return;
    var sock;
    // The token never goes in the URL (URLs end up in logs): it is the first frame.
    try { sock = new WebSocket(wsBase); } catch (e) { schedule(backoff()); return; }
    ws = sock;
    comeBackAfter = 0;
    sock.onopen = function () {
      if (ws !== sock) return;
      var hello = { type: "hello", since: state.lastSeq || 0 };
      if (state.token) hello.token = state.token;
      sock.send(JSON.stringify(hello));
    };
    sock.onmessage = function (ev) { if (ws === sock) onFrame(ev.data); };
    sock.onclose = function (ev) {
      if (ws !== sock) return;
      ws = null;
      setConnected(false, "Reconnecting…");
      // Messages still "sending" may have reached the server: they are resent
      // with the same id on the next connection, and the server deduplicates.
      if (ev.code === 4429 && comeBackAfter > 0) {
        // Too many new chats from this address: come back when the server said.
        schedule(Math.round(comeBackAfter * 1000 * (1 + Math.random() / 2)));
      } else if (ev.code === 4401) {
        // Token refused (other account, bad signature): start as a new visitor.
        state.token = ""; state.visitor = ""; state.lastSeq = 0; state.items = [];
        el.log.querySelectorAll(".msg").forEach(function (n) { n.remove(); });
        save();
        schedule(0);
      } else if (ev.code === 4404) {
        stopped = true;
        setConnected(false, "Unavailable");
        setNotice("This chat is not available.");
      } else if (ev.code === 1001) {
        schedule(Math.round(200 + Math.random() * 800));  // a replica is stopping: go to another one now
      } else {
        schedule(backoff());
      }
    };
  }
  function sendFrame(obj) {
    if (!ws || ws.readyState !== 1 || !connected) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }
  function onFrame(data) {
    var f;
    try { f = JSON.parse(data); } catch (e) { return; }
    if (f.type === "welcome") {
      attempts = 0;
      if (f.visitor !== state.visitor) {
        state.lastSeq = 0;
      }
      state.token = f.token; state.visitor = f.visitor;  // a fresh token on every connection: it never runs out while used
      if (f.max_text) { maxText = f.max_text; el.input.maxLength = maxText; }
      if (f.max_upload) maxUpload = f.max_upload;
      available = f.available !== false;
      closed = !!f.closed; closedText = String(f.closed_text || "");
      save();
      setConnected(true);
      setNotice("");
      reportRead();
      state.items.forEach(function (it) { if (it.kind === "out" && it.status === "sending") transmit(it); });
    } else if (f.type === "availability") {
      available = !!f.available;
      closed = !!f.closed; closedText = String(f.closed_text || "");
      setConnected(connected);
    } else if (f.type === "ack") {
      var it = find("out", f.id);
      if (it) { it.status = "sent"; it.error = ""; save(); render(it); }
      if (!state.items.some(function (x) { return x.kind === "out" && x.status === "sending"; })) setNotice("");
    } else if (f.type === "reply") {
      if (f.seq <= state.lastSeq || find("in", f.id)) { state.lastSeq = Math.max(state.lastSeq, f.seq); save(); return; }
      var item = { kind: "in", id: f.id, text: f.text, operator: f.operator, auto: !!f.auto, at: f.at, seq: f.seq,
        attachments: f.attachments || [], rating: !!f.rating };
      var previous = latestRating();
      state.items.push(item);
      state.lastSeq = f.seq;
      if (f.operator && !f.auto) { state.operator = f.operator; renderAgent(); showPlace(0); }
      showTyping(null);  // the reply is here
      save();
      if (previous && item.rating) render(previous);  // an older request loses its buttons
      render(item);
      scrollDown();
      if (!state.open) { unread += 1; setBadge(); }
      if (!state.open || document.hidden) chime();
      reportRead();
    } else if (f.type === "typing") {
      showTyping(f.operator);
    } else if (f.type === "queue") {
      showPlace(f.place);
    } else if (f.type === "read") {
      // The operator has read our messages up to this one: it and every earlier one sent say "read".
      var upto = -1;
      for (var r = 0; r < state.items.length; r++) if (state.items[r].kind === "out" && state.items[r].id === f.id) upto = r;
      for (var q = 0; q <= upto; q++) {
        var sent = state.items[q];
        if (sent.kind === "out" && sent.status === "sent") { sent.status = "read"; render(sent); }
      }
      if (upto >= 0) save();
    } else if (f.type === "error") {
      var failed = f.id ? find("out", f.id) : null;
      if (f.code === "token_expired" && f.renewable && ws) {
        // Our token is past its validity: prove we hold it and get a fresh one, same visitor.
        ws.send(JSON.stringify({ type: "renew", token: state.token }));
      } else if (failed && f.code === "rate_limited" && f.retry_after > 0) {
        // Too fast: nothing was stored. Say so, stay "sending" and send the same id after retry_after.
        setNotice("You are sending messages too fast. Sending again in " + f.retry_after + " s…");
        resendLater(failed, f.retry_after);
      } else if (f.code === "rate_limited" && f.retry_after > 0) {
        comeBackAfter = f.retry_after;
        setNotice("Too many new chats from your network. Trying again in " + f.retry_after + " s…");
      } else if (failed && f.code === "unavailable" && f.retry_after > 0) {
        // The server is busy and stored nothing: stay "sending" and send the
        // same id again after retry_after seconds (+ jitter, so widgets spread out).
        resendLater(failed, f.retry_after);
      } else if (failed) {
        failed.status = "failed";
        failed.error = f.detail || f.code;
        failed.retryable = f.code === "unavailable";
        save(); render(failed);
      } else if (f.code !== "bad_token") {
        setNotice(f.detail || f.code);
      }
    }
  }
  function newId() {
    var a = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(a);
    return "m" + Date.now().toString(36) + Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function transmit(item) {
    if (item.uploading) return false;
    var frame = { type: "message", id: item.id, text: item.text };
    if (item.files && item.files.length) frame.files = item.files;
    if (state.name) frame.name = state.name;
    // Where the visitor writes from, for the operator (the gateway keeps no query string or fragment).
    frame.page = String(window.location.href || "");
    if (document.referrer) frame.referrer = String(document.referrer);
    if (state.contact) {
      if (state.contact.email) frame.email = state.contact.email;
      if (state.contact.phone) frame.phone = state.contact.phone;
      if (state.contact.consent) frame.consent = state.contact.consent;
    }
    return sendFrame(frame);
  }
  function kindOf(type) {
    if (/^image\//.test(type)) return "image";
    if (type === "audio/ogg") return "voice";
    if (/^audio\//.test(type)) return "audio";
    if (/^video\//.test(type)) return "video";
    return "file";
  }
  // A file: uploaded with the visitor token, then sent as a message that names it (the same id on a resend).
  function sendFile(file) {
    if (maxUpload && file.size > maxUpload) {
      setNotice(file.name + " is too large (max " + Math.floor(maxUpload / 1048576) + " MB).");
      return null;
    }
    var item = { kind: "out", id: newId(), text: "", status: "sending", at: new Date().toISOString(), uploading: true,
      attachments: [{ kind: kindOf(file.type), name: file.name, url: "" }] };
    state.items.push(item);
    save();
    render(item);
    scrollDown();
    var failed = function (why) {
      item.uploading = false; item.status = "failed"; item.error = why; item.retryable = false;
      save(); render(item); setNotice(file.name + " was not sent: " + why);
    };
    if (!state.token) { failed("not connected yet"); return item.id; }
    var form = new FormData();
    form.append("file", file, file.name);
    fetch(httpBase + "/files/" + encodeURIComponent(account), {
      method: "POST", headers: { Authorization: "Bearer " + state.token }, body: form, credentials: "omit"
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; }, function () { return { ok: false, body: {} }; });
    }).then(function (res) {
      if (!res.ok || !res.body.file) { failed((res.body && res.body.detail) || "upload refused"); return; }
      var f = res.body.file;
      item.uploading = false;
      item.files = [f.id];
      item.attachments = [{ kind: f.kind, name: f.name, mime: f.mime, size: f.size, url: f.url }];
      save(); render(item);
      transmit(item);  // if offline it stays "sending" and goes out on reconnect
    }, function () { failed("the upload did not reach the server"); });
    return item.id;
  }
  function send(text) {
    text = String(text || "");
    if (!text.trim()) return null;
    if (text.length > maxText) { setNotice("Message is too long (max " + maxText + " characters)."); return null; }
    var item = { kind: "out", id: newId(), text: text, status: "sending", at: new Date().toISOString() };
    var request = latestRating();
    var score = /^\s*([1-5])\s*$/.exec(text);
    state.items.push(item);
    // A digit right after a rating request answers it, typed or clicked: the buttons give way to a thank-you.
    // Anything else moves on (the router closes the request too): the buttons go.
    if (request && !request.rated && !request.passed) {
      if (score) request.rated = Number(score[1]); else request.passed = true;
      render(request);
    }
    save();
    render(item);
    scrollDown();
    transmit(item);  // if offline it stays "sending" and goes out on reconnect
    return item.id;
  }
  function resendLater(item, seconds) {
    var delay = Math.round(seconds * 1000 * (1 + Math.random() / 2));
    setTimeout(function () { if (item.status === "sending") transmit(item); }, delay);
  }
  function retry(id) {
    var it = find("out", id);
    if (!it) return;
    it.status = "sending"; it.error = "";
    save(); render(it);
    transmit(it);  // the SAME id: the server and the router deduplicate
  }

  // A short chime for a reply the visitor may not be looking at (browsers allow sound only after
  // the visitor interacted with the page, which they did to write).
  var chimes = 0;
  var audio = null;
  function chime() {
    if (!sound) return;
    chimes += 1;
    try {
      var Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return;
      audio = audio || new Ctx();
      var osc = audio.createOscillator();
      var gain = audio.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.08, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.25);
      osc.connect(gain); gain.connect(audio.destination);
      osc.start(); osc.stop(audio.currentTime + 0.25);
    } catch (e) { /* no sound: the badge still counts */ }
  }

  // ---- emoji: a small set, inserted where the cursor is ----
  var EMOJI = ["\uD83D\uDE0A", "\uD83D\uDE42", "\uD83D\uDE00", "\uD83D\uDE02", "\uD83D\uDE09", "\uD83D\uDE0D", "\uD83D\uDE0E", "\uD83E\uDD14",
    "\uD83D\uDE22", "\uD83D\uDE2E", "\uD83D\uDE21", "\uD83D\uDE4F", "\uD83D\uDC4D", "\uD83D\uDC4E", "\uD83D\uDC4B", "\uD83D\uDC4C",
    "\uD83D\uDE4C", "\uD83D\uDC4F", "\u2764\uFE0F", "\uD83D\uDD25", "\u2705", "\u274C", "\u2B50", "\uD83C\uDF89"];
  EMOJI.forEach(function (e) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = e;
    b.setAttribute("aria-label", "Insert " + e);
    b.setAttribute("data-testid", "ol-emoji-choice");
    b.addEventListener("click", function () { insertText(e); showEmojis(false); el.input.focus(); });
    el.emojis.appendChild(b);
  });
  function insertText(t) {
    var i = el.input;
    var start = i.selectionStart == null ? i.value.length : i.selectionStart;
    var end = i.selectionEnd == null ? start : i.selectionEnd;
    if (i.value.length - (end - start) + t.length > maxText) return;
    i.value = i.value.slice(0, start) + t + i.value.slice(end);
    i.selectionStart = i.selectionEnd = start + t.length;
    autosize();
  }
  function showEmojis(on) {
    el.emojis.hidden = !on;
    el.emoji.setAttribute("aria-expanded", on ? "true" : "false");
    if (on) { var first = el.emojis.querySelector("button"); if (first) first.focus(); }
  }
  el.emoji.addEventListener("click", function () { showEmojis(el.emojis.hidden); });
  el.emojis.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { e.stopPropagation(); showEmojis(false); el.emoji.focus(); }
  });

  // ---- the pre-chat form: asked once, before the first message, only when the site configured it ----
  var FIELDS = {
    name: { label: "Your name", type: "text", auto: "name", max: 100 },
    email: { label: "E-mail", type: "email", auto: "email", max: 254 },
    phone: { label: "Phone (with country code, e.g. +44 20 7946 0018)", type: "tel", auto: "tel", max: 32 }
  };
  function needsPrechat() {
    return (prechat.length > 0 || !!consentText) && !state.contact && !state.items.length;
  }
  function buildPrechat() {
    var f = el.prechat;
    f.textContent = "";
    var intro = document.createElement("p");
    intro.textContent = "Before we start, please tell us how to reach you.";
    f.appendChild(intro);
    prechat.forEach(function (name) {
      var d = FIELDS[name];
      var label = document.createElement("label");
      var required = prechatRequired.indexOf(name) >= 0;
      label.appendChild(document.createTextNode(d.label + (required ? " *" : "")));
      var input = document.createElement("input");
      input.type = d.type; input.name = name; input.maxLength = d.max; input.autocomplete = d.auto;
      input.required = required;
      input.setAttribute("data-testid", "ol-prechat-" + name);
      if (name === "name") input.value = state.name;
      label.appendChild(input);
      f.appendChild(label);
    });
    if (consentText) {
      var c = document.createElement("label");
      c.className = "consent";
      var box = document.createElement("input");
      box.type = "checkbox"; box.name = "consent"; box.required = true;
      box.setAttribute("data-testid", "ol-prechat-consent");
      c.appendChild(box);
      var span = document.createElement("span");
      span.textContent = consentText + " ";
      if (consentUrl) {
        var a = document.createElement("a");
        a.href = consentUrl; a.target = "_blank"; a.rel = "noopener noreferrer"; a.textContent = "Privacy policy";
        span.appendChild(a);
      }
      c.appendChild(span);
      f.appendChild(c);
    }
    var err = document.createElement("div");
    err.className = "err"; err.setAttribute("role", "alert"); err.setAttribute("data-testid", "ol-prechat-error");
    f.appendChild(err);
    var go = document.createElement("button");
    go.type = "submit"; go.textContent = "Start the chat"; go.setAttribute("data-testid", "ol-prechat-start");
    f.appendChild(go);
  }
  function prechatValue(name) {
    var input = el.prechat.querySelector('[name="' + name + '"]');
    return input ? String(input.value || "").trim() : "";
  }
  el.prechat.addEventListener("submit", function (e) {
    e.preventDefault();
    var err = el.prechat.querySelector(".err");
    var bad = null;
    var email = prechatValue("email");
    var phone = prechatValue("phone");
    prechat.forEach(function (name) {
      if (!bad && prechatRequired.indexOf(name) >= 0 && !prechatValue(name)) bad = [name, FIELDS[name].label.split(" (")[0] + " is required."];
    });
    if (!bad && email && !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email)) bad = ["email", "Please check the e-mail address."];
    if (!bad && phone && !/^\+[0-9][0-9 ().-]{5,24}$/.test(phone)) bad = ["phone", "Please give the phone number with its country code, like +44 20 7946 0018."];
    var box = el.prechat.querySelector('[name="consent"]');
    if (!bad && box && !box.checked) bad = ["consent", "Please agree to continue."];
    if (bad) {
      err.textContent = bad[1];
      var field = el.prechat.querySelector('[name="' + bad[0] + '"]');
      if (field) { field.setAttribute("aria-invalid", "true"); field.focus(); }
      return;
    }
    var name = prechatValue("name");
    if (name) { state.name = name.slice(0, 100); el.name.value = state.name; }
    state.contact = {
      email: email, phone: phone,
      consent: box ? (consentText + (consentUrl ? " (" + consentUrl + ")" : "")).slice(0, 500) : ""
    };
    save();
    showPrechat(false);
    el.input.focus();
  });
  function showPrechat(on) {
    el.prechat.hidden = !on;
    el.chat.hidden = on;
    if (on) {
      buildPrechat();
      var first = el.prechat.querySelector("input");
      if (first) first.focus();
    }
  }

  // ---- the queue: "You are number 3 in the queue" while waiting, as the router tells it ----
  function showPlace(place) {
    var n = Math.floor(Number(place) || 0);
    el.queue.hidden = n < 1;
    el.queue.textContent = n < 1 ? "" : queueText.split("{place}").join(String(n));
    host.setAttribute("data-queue-place", String(Math.max(0, n)));
  }

  // ---- typing: "Anna is typing…" for a few seconds after the desk says so; ours at most every 3 s ----
  var typingTimer = null;
  function showTyping(operator) {
    if (typingTimer) { clearTimeout(typingTimer); typingTimer = null; }
    el.typing.hidden = operator === null;
    if (operator === null) return;
    el.typing.textContent = (operator || "Support") + " is typing…";
    typingTimer = setTimeout(function () { el.typing.hidden = true; typingTimer = null; }, 6000);
  }
  var typingSent = 0;
  el.input.addEventListener("input", function () {
    var now = Date.now();
    if (el.input.value.trim() && now - typingSent >= 3000 && sendFrame({ type: "typing" })) typingSent = now;
  });

  // ---- read marks: the operator sees that the visitor has seen their replies (✓✓) ----
  function reportRead() {
    if (!state.open || document.hidden || !connected) return;
    var ids = [];
    state.items.forEach(function (it) { if (it.kind === "in" && !it.auto && !it.readSent) ids.push(it); });
    if (!ids.length) return;
    if (sendFrame({ type: "read", ids: ids.slice(-50).map(function (it) { return it.id; }) })) {
      ids.forEach(function (it) { it.readSent = true; });
      save();
    }
  }
  document.addEventListener("visibilitychange", reportRead);

  // ---- UI events ----
  function setOpen(open) {
    state.open = open;
    el.panel.hidden = !open;
    el.launcher.setAttribute("aria-expanded", open ? "true" : "false");
    el.launcher.classList.toggle("open", open);
    if (open) {
      unread = 0; setBadge();
      setTimeout(reportRead, 0);
      if (needsPrechat()) { showPrechat(true); } else { showPrechat(false); scrollDown(); el.input.focus(); }
    }
    save();
  }
  el.launcher.addEventListener("click", function () { setOpen(el.panel.hidden); });
  el.close.addEventListener("click", function () { setOpen(false); el.launcher.focus(); });
  el.panel.addEventListener("keydown", function (e) { if (e.key === "Escape") { setOpen(false); el.launcher.focus(); } });
  el.form.addEventListener("submit", function (e) {
    e.preventDefault();
    if (send(el.input.value)) { el.input.value = ""; autosize(); }
    el.input.focus();
  });
  el.input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); el.form.requestSubmit ? el.form.requestSubmit() : el.send.click(); }
  });
  function autosize() { el.input.style.height = "auto"; el.input.style.height = Math.min(120, el.input.scrollHeight) + "px"; }
  el.input.addEventListener("input", autosize);
  el.file.addEventListener("change", function () {
    var picked = Array.prototype.slice.call(el.file.files || []);
    el.file.value = "";
    picked.forEach(sendFile);
  });
  el.name.addEventListener("input", function () { state.name = el.name.value.trim().slice(0, 100); save(); });

  function start() {
    // An upload the page was closed during is gone: say so rather than wait for it.
    state.items.forEach(function (it) {
      if (it.uploading) { it.uploading = false; it.status = "failed"; it.error = "upload interrupted"; it.retryable = false; }
    });
    document.body.appendChild(host);
    renderAll();
    renderAgent();
    if (state.open) setOpen(true);
    setConnected(false);
    connect();
  }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
  // A tab coming back from sleep or the network returning: reconnect now, not after the backoff.
  window.addEventListener("online", function () { if (timer) { clearTimeout(timer); timer = null; } attempts = 0; connect(); });

  window.openlinesWidget = {
    __loaded: true,
    get connected() { return connected; },
    get visitor() { return state.visitor; },
    get token() { return state.token; },
    get lastSeq() { return state.lastSeq; },
    get transcript() { return state.items.slice(); },
    get chimes() { return chimes; },
    open: function () { setOpen(true); },
    get contact() { return state.contact; },
    close: function () { setOpen(false); },
    send: send,
    sendFile: sendFile,
    retry: retry,
    setName: function (n) { state.name = String(n || "").trim().slice(0, 100); el.name.value = state.name; save(); },
    disconnect: function () { if (ws) ws.close(); }
  };
})();
