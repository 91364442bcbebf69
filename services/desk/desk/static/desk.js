// openlines desk: the operator workspace. Plain JS, no build step.
//
// The server is the truth: on every (re)connect the WebSocket sends a
// snapshot read from KV, and the page replaces what it shows with it, so a
// push missed while disconnected is repaired by the next snapshot.
(() => {
  "use strict";

  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const maxUpload = Number((document.querySelector('meta[name="max-upload"]') || {}).content || 0);
  const me = document.body.dataset.operatorId;
  const $ = (id) => document.getElementById(id);
  const el = {
    list: $("chat-list"), listEmpty: $("list-empty"), count: $("chat-count"),
    placeholder: $("placeholder"), main: $("chat-main"), title: $("chat-title"), meta: $("chat-meta"),
    accept: $("accept"), close: $("close"), closeConfirm: $("close-confirm"),
    skip: $("skip"), countdown: $("offer-countdown"), pin: $("pin"), spam: $("spam"), spamConfirm: $("spam-confirm"),
    transfer: $("transfer"), transferPanel: $("transfer-panel"), transferTarget: $("transfer-target"),
    transferCancel: $("transfer-cancel"), transferGo: $("transfer-go"),
    quick: $("quick-answers"), attachLabel: $("attach-label"), attachInput: $("attach-input"), files: $("attachments"),
    transcript: $("transcript"), composer: $("composer"), reply: $("reply"), send: $("send"),
    conn: $("conn"), toast: $("toast"), error: $("error"),
    cardName: $("card-name"), cardChannel: $("card-channel"), cardPhone: $("card-phone"), cardEmail: $("card-email"),
    cardCrm: $("card-crm"), cardPrevious: $("card-previous"), cardPreviousNote: $("card-previous-note"),
    windowBanner: $("window-banner"), templates: $("templates"), templatePanel: $("template-panel"),
    templateTitle: $("template-title"), templateFields: $("template-fields"), templatePreview: $("template-preview"),
    templateSend: $("template-send"), templateCancel: $("template-cancel"),
    take: $("take"), tags: $("tags"), tagAdd: $("tag-add"), tagInput: $("tag-input"), tagSuggestions: $("tag-suggestions"),
    viewList: $("view-list"), viewEmpty: $("view-empty"), finder: $("finder"), search: $("search"),
    filterLine: $("filter-line"), filterChannel: $("filter-channel"), filterStatus: $("filter-status"), filterTag: $("filter-tag"),
  };
  const viewButtons = Array.from(document.querySelectorAll(".views button"));
  const statusButtons = Array.from(document.querySelectorAll(".status-switch button"));

  const STATUS_LABEL = { waiting: "waiting", assigned: "new — accept?", answered: "in progress", closed: "closed" };
  const BASE_TITLE = "openlines desk";

  const state = {
    status: "offline",
    chats: new Map(), // session id -> session dict
    selected: null,
    transcripts: new Map(), // session id -> Map(entry id -> entry)
    countedIn: new Map(), // session id -> Set of inbound entry ids already counted
    newChats: new Set(),
    seen: loadSeen(), // session id -> messages_in the operator has seen
    snapshots: 0,
    pendingReply: null, // {key, session, id}: a retried send reuses the id, so the router dedups it
    directory: { lines: new Map(), operators: [] }, // from /api/directory: lines (quick answers), operators
    files: [], // attachments of the reply being written: {local, session, name, id (once uploaded)}
    drafts: loadDrafts(), // session id -> the reply being written in that chat (never shared between chats)
    marks: new Map(), // session id -> Map(outbound message id -> {status, reason}): what the channel said of it
    template: null, // {session, tpl, id}: the template being filled in (id: a retried send is the same message)
    view: "mine", // mine | queue | lines | closed: the list on the left
    others: new Map(), // session id -> chat of the view list that is not one of mine (read, take, tag)
    viewSeq: 0, // answers to older view requests are dropped
  };
  // A mark never hides a stronger one: callbacks arrive out of order, "failed" wins over all.
  const MARK_RANK = { sent: 0, delayed: 1, delivered: 2, read: 3, failed: 4 };
  const MARK_SIGN = { sent: "✓", delayed: "⏳", delivered: "✓✓", read: "✓✓", failed: "✗" };
  const MARK_TITLE = { sent: "sent", delayed: "delayed: the client's mail server is still trying", delivered: "delivered", read: "read", failed: "not delivered" };
  const WINDOW_MS = 24 * 3600 * 1000;

  // -- helpers ---------------------------------------------------------------

  // Each chat keeps its own unsent reply: text typed for one client never goes to another.
  // Kept for this tab (sessionStorage), so a reload does not lose a half-written answer.
  function loadDrafts() {
    try { return new Map(Object.entries(JSON.parse(sessionStorage.getItem("ol-desk-drafts") || "{}"))); } catch { return new Map(); }
  }
  function saveDrafts() {
    try { sessionStorage.setItem("ol-desk-drafts", JSON.stringify(Object.fromEntries(state.drafts))); } catch { /* private mode */ }
  }
  function keepDraft() {
    if (!state.selected) return;
    if (el.reply.value) state.drafts.set(state.selected, el.reply.value);
    else state.drafts.delete(state.selected);
    saveDrafts();
  }

  function loadSeen() {
    try { return JSON.parse(localStorage.getItem("ol-desk-seen") || "{}"); } catch { return {}; }
  }
  function saveSeen() {
    const keep = {};
    for (const id of state.chats.keys()) if (id in state.seen) keep[id] = state.seen[id];
    state.seen = keep;
    try { localStorage.setItem("ol-desk-seen", JSON.stringify(keep)); } catch { /* private mode */ }
  }
  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  function ago(iso) {
    if (!iso) return "";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    // Seconds under a minute, as the supervisor view counts them ("42 s", not "just now").
    if (s < 5) return "just now";
    if (s < 60) return `${Math.floor(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d`;
  }
  function agoText(iso) {
    const a = ago(iso);
    return a === "just now" || !a ? a : `${a} ago`;
  }
  function initials(name) {
    const words = String(name || "").trim().split(/\s+/).filter(Boolean);
    if (!words.length) return "?";
    const first = Array.from(words[0])[0] || "";
    const last = words.length > 1 ? Array.from(words[words.length - 1])[0] || "" : "";
    return (first + last).toUpperCase();
  }
  // The day an entry was written, in the operator's own time zone (the browser's): "Today", "Yesterday" or the date.
  function dayLabel(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "";
    const day = (x) => new Date(x.getFullYear(), x.getMonth(), x.getDate()).getTime();
    const diff = Math.round((day(new Date()) - day(d)) / 86400000);
    if (diff === 0) return "Today";
    if (diff === 1) return "Yesterday";
    return d.toLocaleDateString([], { weekday: "short", day: "numeric", month: "long", year: "numeric" });
  }
  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  function node(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function clientName(chat) { return chat.client_name || "Client"; }
  // The chat shown in the middle: one of mine, or one opened from a view (another's, waiting, closed).
  function current() { return state.chats.get(state.selected) || state.others.get(state.selected); }
  // WhatsApp's 24-hour window: free text only while it is open; afterwards only an approved template.
  function windowOpen(chat) {
    if (!chat || !chat.window) return true;
    const closes = chat.window.closes_at;
    return Boolean(closes) && Date.now() < Date.parse(closes);
  }
  function setMark(id, messageId, mark) {
    let m = state.marks.get(id);
    if (!m) { m = new Map(); state.marks.set(id, m); }
    const have = m.get(messageId);
    if (!have || MARK_RANK[mark.status] > MARK_RANK[have.status]) m.set(messageId, { status: mark.status, reason: mark.reason || "" });
  }
  // Seconds left to answer an offer before the line's no-answer timeout (wait_seconds) passes it on.
  function offerLeft(chat) {
    if (chat.status !== "assigned" || !chat.assigned_at || !chat.wait_seconds) return null;
    const left = Math.ceil((Date.parse(chat.assigned_at) + chat.wait_seconds * 1000 - Date.now()) / 1000);
    return Math.max(0, Math.min(chat.wait_seconds, left));
  }
  function unread(chat) {
    if (chat.id === state.selected && document.visibilityState === "visible") return 0;
    return Math.max(0, (chat.messages_in || 0) - (state.seen[chat.id] || 0));
  }
  function markSeen(id) {
    const chat = state.chats.get(id);
    if (!chat) return;
    state.seen[id] = chat.messages_in || 0;
    state.newChats.delete(id);
    saveSeen();
  }

  // ``topic`` ties an error to what failed (e.g. "upload"): when that works next, the error goes.
  function showError(text, topic = "") {
    el.error.textContent = text;
    el.error.dataset.topic = topic;
    el.error.hidden = false;
    clearTimeout(showError.timer);
    showError.timer = setTimeout(() => { el.error.hidden = true; }, 8000);
  }
  function clearError(topic) {
    if (!el.error.hidden && el.error.dataset.topic === topic) el.error.hidden = true;
  }

  // -- new-offer notification: a short beep (Web Audio) and a flashing title --
  // The audio context can only start after a user gesture (browsers' autoplay
  // rule); any click or key press on the page (e.g. "Online") unlocks it.
  const sound = { ctx: null };
  function unlockSound() {
    const AC = window.AudioContext || window.webkitAudioContext;
    if (!AC) return;
    try {
      if (!sound.ctx) sound.ctx = new AC();
      if (sound.ctx.state === "suspended") sound.ctx.resume().catch(() => {});
    } catch { sound.ctx = null; }
  }
  document.addEventListener("pointerdown", unlockSound);
  document.addEventListener("keydown", unlockSound);

  function beep() {
    if (!sound.ctx) unlockSound();
    const ctx = sound.ctx;
    if (!ctx) return;
    const t = ctx.currentTime;
    for (const [freq, start] of [[880, 0], [660, 0.18]]) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "sine";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t + start);
      gain.gain.exponentialRampToValueAtTime(0.25, t + start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + start + 0.16);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t + start);
      osc.stop(t + start + 0.17);
    }
    // What the page did, for anyone checking it (the browser tests read these).
    document.body.dataset.beeps = String(Number(document.body.dataset.beeps || 0) + 1);
    document.body.dataset.soundState = ctx.state;
  }

  const flash = { timer: null, on: false, text: "" };
  function flashTitle(chat) {
    flash.text = `● New chat: ${clientName(chat)}`;
    if (flash.timer) return;
    flash.timer = setInterval(() => {
      flash.on = !flash.on;
      document.title = flash.on ? flash.text : state.title || BASE_TITLE;
    }, 1000);
  }
  function stopFlash() {
    clearInterval(flash.timer);
    flash.timer = null;
    flash.on = false;
  }

  function toast(chat) {
    el.toast.textContent = `New chat: ${clientName(chat)} (${chat.channel}, ${chat.line_name || chat.line_id})`;
    el.toast.dataset.sessionId = chat.id;
    el.toast.hidden = false;
    el.toast.classList.remove("flash");
    void el.toast.offsetWidth; // restart the animation
    el.toast.classList.add("flash");
    beep();
    flashTitle(chat);
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.toast.hidden = true; }, 8000);
    if (window.Notification && Notification.permission === "granted" && document.visibilityState !== "visible") {
      try { new Notification("New chat", { body: `${clientName(chat)} — ${chat.line_name || chat.line_id}`, tag: chat.id }); } catch { /* unsupported */ }
    }
  }

  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
    if (body instanceof FormData) {
      opts.body = body;
    } else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch {
      throw new Error("The desk is not reachable; check your connection.");
    }
    if (res.status === 401) { location.href = "/login"; throw new Error("signed out"); }
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(data.detail || `request failed (${res.status})`);
    return data;
  }

  // -- rendering -------------------------------------------------------------

  function renderStatus() {
    for (const b of statusButtons) b.setAttribute("aria-pressed", String(b.dataset.status === state.status));
    document.body.dataset.status = state.status;
  }

  function renderTitle() {
    let n = state.newChats.size;
    for (const chat of state.chats.values()) if (!state.newChats.has(chat.id)) n += unread(chat) > 0 ? 1 : 0;
    state.title = state.newChats.size ? `(${n}) New chat · ${BASE_TITLE}` : n ? `(${n}) ${BASE_TITLE}` : BASE_TITLE;
    if (!state.newChats.size) stopFlash();
    document.body.classList.toggle("offer-alert", state.newChats.size > 0);
    document.title = flash.on ? flash.text : state.title;
  }

  // A chat in a list (My chats or a view): its item, the name row with the client's initials, and channel and line.
  function chatItem(chat, testid) {
    const li = node("li", "chat-item");
    li.dataset.testid = testid;
    li.dataset.sessionId = chat.id;
    li.dataset.status = chat.status;
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    if (chat.id === state.selected) li.classList.add("selected");
    const top = node("div", "row");
    const face = node("span", "avatar", initials(clientName(chat)));
    face.setAttribute("aria-hidden", "true");
    face.dataset.testid = "chat-avatar";
    top.append(face, node("span", "name", clientName(chat)));
    const mid = node("div", "row small");
    mid.append(node("span", `badge ch-${chat.channel}`, chat.channel), node("span", "line", chat.line_name || chat.line_id));
    return { li, top, mid };
  }

  function renderList() {
    const chats = Array.from(state.chats.values()).sort((a, b) => Date.parse(a.opened_at) - Date.parse(b.opened_at));
    el.list.replaceChildren();
    for (const chat of chats) {
      const { li, top, mid } = chatItem(chat, "chat-item");
      if (chat.pinned) li.classList.add("pinned");
      if (state.newChats.has(chat.id)) li.classList.add("new");
      if (chat.pinned) {
        const pin = node("span", "pin-mark", "pinned");
        pin.dataset.testid = "chat-pinned";
        top.append(pin);
      }
      const count = unread(chat);
      if (count) {
        const badge = node("span", "unread", String(count));
        badge.dataset.testid = "unread";
        top.append(badge);
      }
      const bottom = node("div", "row small");
      const st = node("span", `st st-${chat.status}`, STATUS_LABEL[chat.status] || chat.status);
      st.dataset.testid = "chat-status";
      // The client has waited since the chat opened while nobody answered it (offers passed on do not
      // restart that); a chat answered before and offered again waits since that offer.
      const since = chat.status === "assigned" && chat.answered_at ? chat.assigned_at || chat.opened_at : chat.opened_at;
      bottom.append(st, node("span", "age", (chat.status === "assigned" ? "waiting " : "open ") + ago(since)));
      if (offerLeft(chat) !== null) {
        const left = node("span", "countdown-small");
        left.dataset.countdown = chat.id;
        bottom.append(left);
      }
      li.append(top, mid, bottom);
      if (chat.preview && chat.preview.text) {
        // The last message and when: who wrote it ("You:" for an answer), cut to one line.
        const pv = node("div", "row small preview");
        pv.dataset.testid = "chat-preview";
        const said = node("span", "preview-text", (chat.preview.direction === "out" ? "↩ " : "") + chat.preview.text);
        pv.append(said, node("time", "at", clock(chat.preview.at)));
        li.append(pv);
      }
      if ((chat.tags || []).length) {
        const tags = node("div", "item-tags");
        for (const t of chat.tags) tags.append(node("span", "tag-chip", `#${t}`));
        li.append(tags);
      }
      if (chat.sla) {
        const sla = node("div", "row small");
        sla.append(slaClock(chat));
        li.append(sla);
      }
      li.addEventListener("click", () => select(chat.id));
      li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(chat.id); } });
      el.list.append(li);
    }
    el.count.textContent = String(chats.length);
    el.listEmpty.hidden = chats.length > 0 || el.list.hidden;
    el.listEmpty.textContent = state.status === "online" ? "No open chats. New ones appear here." : "No open chats. Go online to receive chats.";
    renderTitle();
  }

  function renderHead() {
    const chat = current();
    el.placeholder.hidden = Boolean(chat);
    el.main.hidden = !chat;
    if (!chat) return;
    el.main.dataset.sessionId = chat.id;
    el.title.textContent = clientName(chat);
    el.meta.textContent = `${chat.channel} · ${chat.line_name || chat.line_id} · ${STATUS_LABEL[chat.status] || chat.status} · opened ${agoText(chat.opened_at)}`;
    const held = state.chats.has(chat.id); // in My chats: mine, or offered to me
    const offered = held && chat.status === "assigned";
    const mine = held && chat.operator_id === me && (chat.status === "assigned" || chat.status === "answered");
    el.take.hidden = held || !chat.can_take || chat.status !== "waiting";
    if (!held) el.close.hidden = el.closeConfirm.hidden = true;
    else if (el.closeConfirm.hidden) el.close.hidden = false;
    renderTags(chat);
    el.accept.hidden = el.skip.hidden = !offered;
    el.transfer.hidden = el.pin.hidden = !mine;
    el.spam.hidden = !mine || !el.spamConfirm.hidden;
    if (!mine) el.transferPanel.hidden = true;
    el.pin.setAttribute("aria-pressed", String(Boolean(chat.pinned)));
    el.pin.textContent = chat.pinned ? "Pinned" : "Pin";
    const canReply = held && (chat.status === "assigned" || chat.status === "answered");
    const free = canReply && windowOpen(chat);
    // A colleague's chat, a waiting or a closed one (opened from a view or a mention): not ours to answer,
    // but a private note is, as for anyone of its line (the router checks who may).
    const noteOnly = !canReply;
    el.reply.disabled = el.send.disabled = !free && !noteOnly;
    forceNote(noteOnly);
    el.quick.disabled = !free;
    el.attachLabel.disabled = el.attachInput.disabled = !free;
    renderWindow(chat, canReply);
    renderQuick();
    renderFiles();
    tick();
  }

  // Once a second: the offers' countdowns.
  function tick() {
    const chat = state.chats.get(state.selected);
    const left = chat ? offerLeft(chat) : null;
    el.countdown.hidden = left === null;
    if (left !== null) {
      el.countdown.textContent = left > 0 ? `answer within ${left} s` : "passing on…";
      el.countdown.classList.toggle("urgent", left <= 10);
    }
    for (const span of el.list.querySelectorAll("[data-countdown]")) {
      const c = state.chats.get(span.dataset.countdown);
      const l = c ? offerLeft(c) : null;
      span.textContent = l === null ? "" : `${l} s`;
    }
    for (const span of el.list.querySelectorAll("[data-sla]")) {
      const c = state.chats.get(span.dataset.sla);
      if (c && c.sla) showSlaClock(span, c.sla);
    }
  }

  function renderWindow(chat, canReply) {
    const templates = (chat && chat.templates) || [];
    el.windowBanner.hidden = !chat || !chat.window;
    if (chat && chat.window) {
      const open = windowOpen(chat);
      el.windowBanner.classList.toggle("closed", !open);
      el.windowBanner.dataset.open = String(open);
      el.windowBanner.textContent = open
        ? `WhatsApp: free replies until ${clock(chat.window.closes_at)} (24 hours after the client's last message)`
        : templates.length
          ? "The client's 24-hour WhatsApp window is closed: only an approved template reaches them until they write again."
          : "The client's 24-hour WhatsApp window is closed and this number has no templates: you cannot write to them until they write again.";
      el.reply.placeholder = open ? "Write a reply — Enter sends, Shift+Enter for a new line" : "Closed window: choose a template above";
    }
    if (el.templates.dataset.session !== (chat ? chat.id : "") || el.templates.options.length !== templates.length + 1) {
      el.templates.dataset.session = chat ? chat.id : "";
      const first = node("option", "", `Templates (${templates.length})…`);
      first.value = "";
      el.templates.replaceChildren(first);
      templates.forEach((t, i) => {
        const opt = node("option", "", `${t.title} (${t.language})`);
        opt.value = String(i);
        el.templates.append(opt);
      });
    }
    el.templates.hidden = !templates.length;
    el.templates.disabled = !canReply;
    if (state.template && (!chat || state.template.session !== chat.id || !canReply)) closeTemplate();
  }

  function fillTemplate(t, values) {
    let i = 0;
    const names = [];
    t.text.replace(/\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g, (_, n) => { if (!names.includes(n)) names.push(n); return ""; });
    if (names.length && names.every((n) => /^\d+$/.test(n))) names.sort((a, b) => Number(a) - Number(b));
    return t.text.replace(/\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g, (whole, n) => {
      i = names.indexOf(n);
      const v = i >= 0 ? values[i] : "";
      return v ? v : whole;
    });
  }

  function openTemplate(t) {
    const chat = state.chats.get(state.selected);
    if (!chat) return;
    state.template = { session: chat.id, tpl: t, id: newId() };
    el.templateTitle.textContent = `${t.title} · ${t.language}`;
    el.templateFields.replaceChildren();
    t.variables.forEach((label, i) => {
      const wrap = node("label", "", label);
      const input = node("input");
      input.type = "text";
      input.required = true;
      input.maxLength = 1000;
      input.dataset.testid = "template-variable";
      input.dataset.index = String(i);
      // The first variable about a name starts as the client's (the operator can change it).
      if (chat.client_name && /name/i.test(label) && !el.templateFields.querySelector("input[data-named]")) {
        input.value = chat.client_name;
        input.dataset.named = "1";
      }
      input.addEventListener("input", previewTemplate);
      wrap.append(input);
      el.templateFields.append(wrap);
    });
    el.templatePanel.hidden = false;
    previewTemplate();
    const first = el.templateFields.querySelector("input");
    if (first) first.focus();
  }
  function templateValues() {
    return Array.from(el.templateFields.querySelectorAll("input")).map((x) => x.value.trim());
  }
  function previewTemplate() {
    if (!state.template) return;
    el.templatePreview.textContent = fillTemplate(state.template.tpl, templateValues());
  }
  function closeTemplate() {
    state.template = null;
    el.templatePanel.hidden = true;
    el.templateFields.replaceChildren();
  }

  function renderQuick() {
    const chat = state.chats.get(state.selected);
    const line = chat ? state.directory.lines.get(chat.line_id) : null;
    const answers = (line && line.quick_answers) || [];
    if (el.quick.dataset.line === (chat ? chat.line_id : "") && el.quick.options.length === answers.length + 1) {
      el.quick.hidden = !answers.length;
      return;
    }
    el.quick.dataset.line = chat ? chat.line_id : "";
    const first = node("option", "", answers.length ? `Quick answers (${answers.length})…` : "Quick answers…");
    first.value = "";
    el.quick.replaceChildren(first);
    answers.forEach((text, i) => {
      const opt = node("option", "", text.length > 70 ? `${text.slice(0, 67)}…` : text);
      opt.value = String(i);
      el.quick.append(opt);
    });
    el.quick.hidden = !answers.length;
  }

  function renderFiles() {
    const mineNow = state.files.filter((f) => f.session === state.selected);
    el.files.replaceChildren();
    for (const f of mineNow) {
      const li = node("li", f.id ? "" : "uploading");
      li.dataset.testid = "attachment-chip";
      li.dataset.ready = String(Boolean(f.id));
      li.append(node("span", "", f.id ? f.name : `${f.name} (uploading…)`));
      const x = node("button", "", "×");
      x.type = "button";
      x.title = `Remove ${f.name}`;
      x.dataset.testid = "attachment-remove";
      x.addEventListener("click", () => { state.files = state.files.filter((g) => g !== f); renderFiles(); });
      li.append(x);
      el.files.append(li);
    }
  }

  function renderTranscript() {
    const entries = Array.from((state.transcripts.get(state.selected) || new Map()).values())
      .sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    const atBottom = el.transcript.scrollHeight - el.transcript.scrollTop - el.transcript.clientHeight < 40;
    el.transcript.replaceChildren();
    let shownDay = "";
    for (const e of entries) {
      const dayOf = dayLabel(e.at);
      if (dayOf && dayOf !== shownDay) {
        shownDay = dayOf;
        const sep = node("li", "day-sep", dayOf);
        sep.dataset.testid = "day-separator";
        sep.setAttribute("role", "separator");
        el.transcript.append(sep);
      }
      const li = node("li", `entry ${e.direction}`);
      li.dataset.testid = "transcript-entry";
      li.dataset.entryId = e.id;
      li.dataset.direction = e.direction;
      if (e.note) { li.classList.add("note"); li.dataset.testid = "transcript-note"; }
      const who = e.direction === "in" ? clientName(current() || {}) :
        e.note ? `Note · ${e.author_name || e.author_id}` :
        e.direction === "system" ? "" : e.author_name || (e.author_id === "auto" ? "Auto-reply" : "Operator");
      const head = node("div", "entry-head");
      if (who) head.append(node("span", "who", who));
      head.append(node("time", "at", clock(e.at)));
      const files = e.attachments || [];
      const text = node("div", "text", e.text || "");
      text.dataset.testid = "entry-text";
      const mark = e.direction === "out" ? ((state.marks.get(state.selected) || new Map()).get(e.id)) : null;
      if (mark) {
        const sign = node("span", `mark mark-${mark.status}`, MARK_SIGN[mark.status] || "");
        sign.title = (MARK_TITLE[mark.status] || mark.status) + (mark.reason ? ` — ${mark.reason}` : "");
        sign.dataset.testid = "entry-mark";
        sign.dataset.status = mark.status;
        head.append(sign);
      }
      li.append(head, text);
      if (mark && mark.status === "failed") {
        const why = node("div", "delivery-failed", mark.reason ? `Not delivered — ${mark.reason}` : "Not delivered");
        why.dataset.testid = "entry-failed";
        li.append(why);
      }
      for (const a of files) li.append(attachmentNode(state.selected, a));
      el.transcript.append(li);
    }
    if (atBottom || entries.length < 30) el.transcript.scrollTop = el.transcript.scrollHeight;
    const newestIn = entries.filter((e) => e.direction === "in").pop();
    if (newestIn) tellSeen(state.selected, newestIn.id);
  }

  // The client's messages are on the screen of the operator answering them: their widget says "read".
  // Said once per message, only while this page is looked at; the desk checks the chat is ours.
  const seenSaid = new Map();
  function tellSeen(id, upto) {
    const chat = state.chats.get(id);
    if (!chat || chat.operator_id !== me || chat.status === "closed" || seenSaid.get(id) === upto) return;
    if (document.visibilityState !== "visible" || !socket || socket.readyState !== WebSocket.OPEN) return;
    seenSaid.set(id, upto);
    socket.send(JSON.stringify({ type: "seen", session_id: id, upto }));
  }

  // Files stored on our side (what clients sent, what operators sent) are read through the desk, which checks
  // that this operator may read the chat; a file a channel did not let us keep shows its kind, name and why.
  const STORED = /^ol-[a-z]+-files:/;
  const KIND_LABEL = { image: "image", file: "file", audio: "audio", voice: "voice message", video: "video",
    sticker: "sticker", location: "location", contact: "contact" };
  function fileUrl(session, a, download) {
    return `/api/sessions/${encodeURIComponent(session)}/file?ref=${encodeURIComponent(a.ref)}${download ? "&download=1" : ""}`;
  }
  function sizeLabel(bytes) {
    if (!bytes) return "";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }
  function attachmentNode(session, a) {
    const box = node("div", `attachment-box kind-${a.kind}`);
    box.dataset.testid = "entry-attachment";
    box.dataset.kind = a.kind;
    const label = a.name || KIND_LABEL[a.kind] || a.kind;
    const extra = a.extra || {};
    if (!STORED.test(a.ref || "")) {
      box.classList.add("not-stored");
      let what = `${KIND_LABEL[a.kind] || a.kind}${a.name ? ": " + a.name : ""}`;
      if (a.kind === "location" && extra.latitude) what = `📍 ${a.name ? a.name + " " : ""}${extra.latitude}, ${extra.longitude}`;
      if (a.kind === "contact") what = `👤 ${a.name}${extra.phone ? " " + extra.phone : ""}`;
      const why = extra.omitted || extra.not_stored || "";
      box.append(node("span", "attachment-label", `[${what}]${why ? " — not kept: " + why : ""}`));
      return box;
    }
    const mime = (a.mime || "").toLowerCase();
    if (a.kind === "image" || a.kind === "sticker" && mime.startsWith("image/")) {
      const open = node("a", "attachment-preview");
      open.href = fileUrl(session, a, false);
      open.target = "_blank";
      open.rel = "noopener";
      const img = node("img", "attachment-image");
      img.src = open.href;
      img.alt = label;
      img.loading = "lazy";
      img.dataset.testid = "attachment-image";
      open.append(img);
      box.append(open);
    } else if (a.kind === "voice" || a.kind === "audio") {
      const player = node("audio", "attachment-audio");
      player.controls = true;
      player.preload = "metadata";
      player.src = fileUrl(session, a, false);
      player.dataset.testid = "attachment-audio";
      box.append(player);
    } else if (a.kind === "video") {
      const player = node("video", "attachment-video");
      player.controls = true;
      player.preload = "metadata";
      player.src = fileUrl(session, a, false);
      player.dataset.testid = "attachment-video";
      box.append(player);
    }
    const link = node("a", "attachment", `📎 ${label}`);
    link.href = fileUrl(session, a, true);
    link.download = a.name || "";
    link.rel = "noopener";
    link.dataset.testid = "attachment-download";
    const size = sizeLabel(a.size);
    box.append(link);
    if (size) box.append(node("span", "attachment-size", size));
    return box;
  }

  function render() { renderStatus(); renderList(); renderHead(); }

  // -- state changes ---------------------------------------------------------

  function upsertChat(chat, { notify }) {
    const known = state.chats.has(chat.id);
    state.chats.set(chat.id, chat);
    if (!known && notify) {
      state.newChats.add(chat.id);
      toast(chat);
    }
    if (chat.id === state.selected) markSeen(chat.id);
  }

  // The answer to an operator's action on a chat (accept, pin, reply): it may come after the live push
  // that the chat was closed (another connection); it must not bring a closed chat back into the list.
  function refreshChat(chat) {
    if (chat && state.chats.has(chat.id)) upsertChat(chat, { notify: false });
  }

  function removeChat(id) {
    state.chats.delete(id);
    state.newChats.delete(id);
    state.transcripts.delete(id);
    state.countedIn.delete(id);
    if (state.drafts.delete(id)) saveDrafts();
    if (state.selected === id) {
      state.selected = null;
      el.reply.value = "";
      el.placeholder.textContent = "The chat was closed. Select another chat on the left.";
    }
    saveSeen();
  }

  function addEntries(id, entries) {
    let t = state.transcripts.get(id);
    if (!t) { t = new Map(); state.transcripts.set(id, t); }
    for (const e of entries) t.set(e.id, e);
  }

  async function loadHistory(id) {
    try {
      const data = await api("GET", `/api/sessions/${encodeURIComponent(id)}/history`);
      addEntries(id, data.entries);
      for (const [messageId, mark] of Object.entries(data.marks || {})) setMark(id, messageId, mark);
      const counted = state.countedIn.get(id) || new Set();
      for (const e of data.entries) if (e.direction === "in") counted.add(e.id);
      state.countedIn.set(id, counted);
      if (id === state.selected) renderTranscript();
    } catch (err) {
      showError(`Could not load the conversation: ${err.message}`);
    }
  }

  // -- client card -------------------------------------------------------------

  const CRM_KIND = { contact: "Contact", lead: "Lead", deal: "Deal" };

  // A web visitor's visit (page, where they came from, browser, language) and consent: rows shown only when known.
  function showVisit(c) {
    const rows = { page: c.page_url, referrer: c.referrer, browser: c.browser, language: c.language, consent: c.consent };
    for (const [name, value] of Object.entries(rows)) {
      const dd = $(`card-${name}`);
      dd.replaceChildren();
      if (value && (name === "page" || name === "referrer") && /^https?:\/\//.test(value)) {
        const a = node("a", "", value);
        a.href = value;
        a.target = "_blank"; // never leave the workspace: its WebSocket is the operator's presence
        a.rel = "noopener noreferrer";
        dd.append(a);
      } else {
        dd.textContent = value || "";
      }
      dd.hidden = !value;
      dd.previousElementSibling.hidden = !value;
    }
  }

  function renderCard(id, data) {
    if (id !== state.selected) return;
    const c = data.client;
    state.card = { session: id, client: c };
    el.cardName.textContent = c.name || "Client";
    el.cardChannel.textContent = c.username ? `${c.channel} · @${c.username}` : c.channel;
    el.cardPhone.textContent = c.phone || "—";
    // An e-mail conversation lists every address that wrote in it (a colleague in copy who replied).
    const emails = c.emails && c.emails.length ? c.emails : c.email ? [c.email] : [];
    el.cardEmail.textContent = emails.length ? emails.join(", ") : "—";
    showVisit(c);
    el.cardCrm.replaceChildren();
    if (!data.crm.linked || !data.crm.records.length) {
      el.cardCrm.append(node("span", "muted", data.crm.linked ? "linked, no record created" : "not linked yet"));
    }
    for (const r of data.crm.records) {
      const label = `${CRM_KIND[r.kind] || r.kind} #${r.id}`;
      const item = r.url ? node("a", "crm-ref", label) : node("span", "crm-ref", label);
      if (r.url) {
        item.href = r.url;
        item.target = "_blank"; // never leave the workspace: its WebSocket is the operator's presence
        item.rel = "noopener";
      }
      item.dataset.testid = "card-crm-record";
      item.dataset.kind = r.kind;
      el.cardCrm.append(item);
    }
    for (const text of data.crm.merged || []) {
      const note = node("span", "muted small crm-merged", text);
      note.dataset.testid = "card-crm-merged";
      el.cardCrm.append(note);
    }
    el.cardPrevious.replaceChildren();
    for (const p of data.previous) {
      const li = node("li");
      li.dataset.testid = "card-previous-item";
      const a = node("a", "", `${clock(p.opened_at)} ${new Date(p.opened_at).toLocaleDateString()} · ${p.line_name || p.line_id}`);
      a.href = `/transcript/${encodeURIComponent(p.id)}`;
      a.target = "_blank";
      li.append(a, node("span", "muted", ` · ${p.outcome || p.status}`));
      el.cardPrevious.append(li);
    }
    if (!data.previous.length) el.cardPrevious.append(node("li", "muted", "none found"));
    el.cardPreviousNote.textContent =
      data.previous_limit.from === "index"
        ? `Closed conversations of this client, from the desk's index; at most ${data.previous_limit.shown} shown.`
        : `Closed conversations among the last ${data.previous_limit.events_scanned.toLocaleString()} events; at most ${data.previous_limit.shown} shown.`;
  }

  async function loadCard(id) {
    try {
      renderCard(id, await api("GET", `/api/sessions/${encodeURIComponent(id)}/client`));
    } catch (err) {
      if (id === state.selected) el.cardCrm.textContent = `Could not load the client card: ${err.message}`;
    }
  }

  // -- editing the client and merging two clients (the router owns clients; decision 024) ----------

  const cardEl = {
    edit: $("card-edit"), form: $("card-edit-form"), name: $("card-edit-name"), phone: $("card-edit-phone"),
    email: $("card-edit-email"), error: $("card-edit-error"), cancel: $("card-edit-cancel"),
    merge: $("card-merge"), panel: $("card-merge-panel"), search: $("card-merge-search"), results: $("card-merge-results"),
    confirm: $("card-merge-confirm-text"), mergeError: $("card-merge-error"), go: $("card-merge-go"), mergeCancel: $("card-merge-cancel"),
  };
  let mergePick = null; // {session, name}: the other client's conversation chosen in the search
  let mergeSeq = 0;

  function closeCardForms() {
    cardEl.form.hidden = true;
    cardEl.panel.hidden = true;
    cardEl.error.hidden = true;
    cardEl.mergeError.hidden = true;
    mergePick = null;
  }

  cardEl.edit.addEventListener("click", () => {
    if (!state.card || state.card.session !== state.selected) return;
    const c = state.card.client;
    closeCardForms();
    cardEl.name.value = c.name || "";
    cardEl.phone.value = c.phone || "";
    cardEl.email.value = c.email || "";
    cardEl.form.hidden = false;
    cardEl.name.focus();
  });
  cardEl.cancel.addEventListener("click", () => { closeCardForms(); cardEl.edit.focus(); });
  cardEl.form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = state.selected;
    if (!state.card || state.card.session !== id) return;
    const c = state.card.client;
    const body = {};
    const fields = { name: cardEl.name.value.trim(), phone: cardEl.phone.value.trim(), email: cardEl.email.value.trim() };
    for (const [k, v] of Object.entries(fields)) if (v !== (c[k] || "")) body[k] = v;
    if (!Object.keys(body).length) { closeCardForms(); return; }
    try {
      await api("POST", `/api/sessions/${encodeURIComponent(id)}/client`, body);
      closeCardForms();
      loadCard(id);
    } catch (err) {
      cardEl.error.textContent = err.message; // the reason: nothing was changed
      cardEl.error.hidden = false;
    }
  });

  cardEl.merge.addEventListener("click", () => {
    if (!state.card || state.card.session !== state.selected) return;
    closeCardForms();
    cardEl.search.value = "";
    cardEl.results.replaceChildren();
    cardEl.confirm.hidden = true;
    cardEl.go.hidden = true;
    cardEl.panel.hidden = false;
    cardEl.search.focus();
  });
  cardEl.mergeCancel.addEventListener("click", () => { closeCardForms(); cardEl.merge.focus(); });

  // Other clients from the desk's index (only conversations this operator may see), one row per client.
  async function findClients() {
    const q = cardEl.search.value.trim();
    const seq = ++mergeSeq;
    mergePick = null;
    cardEl.go.hidden = true;
    cardEl.confirm.hidden = true;
    if (q.length < 2 || !state.card) { cardEl.results.replaceChildren(); return; }
    let data;
    try {
      data = await api("GET", `/api/conversations?view=all&limit=50&q=${encodeURIComponent(q)}`);
    } catch (err) {
      cardEl.mergeError.textContent = err.message;
      cardEl.mergeError.hidden = false;
      return;
    }
    if (seq !== mergeSeq) return;
    cardEl.mergeError.hidden = true;
    const mine = new Set([state.card.client.id, ...(state.card.client.merged_ids || [])]);
    const seen = new Set();
    cardEl.results.replaceChildren();
    for (const chat of data.chats) {
      if (!chat.client_id || mine.has(chat.client_id) || seen.has(chat.client_id)) continue;
      seen.add(chat.client_id);
      const li = node("li");
      const label = `${chat.client_name || "Client"} · ${chat.channel} · ${chat.line_name || chat.line_id} · ${new Date(chat.opened_at).toLocaleDateString()}`;
      const b = node("button", "", label);
      b.type = "button";
      b.dataset.testid = "card-merge-pick";
      b.setAttribute("aria-pressed", "false");
      b.addEventListener("click", () => {
        for (const other of cardEl.results.querySelectorAll("button")) other.setAttribute("aria-pressed", "false");
        b.setAttribute("aria-pressed", "true");
        mergePick = { session: chat.id, name: chat.client_name || "this client" };
        cardEl.confirm.textContent = `Merge ${mergePick.name} (${chat.channel}) into ${state.card.client.name || "this client"}? Their chats and conversations become this client's.`;
        cardEl.confirm.hidden = false;
        cardEl.go.hidden = false;
        cardEl.go.focus();
      });
      li.append(b);
      cardEl.results.append(li);
    }
    if (!seen.size) cardEl.results.append(node("li", "muted small", "no other client found"));
  }
  let mergeTimer = null;
  cardEl.search.addEventListener("input", () => {
    clearTimeout(mergeTimer);
    mergeTimer = setTimeout(findClients, 250);
  });
  cardEl.go.addEventListener("click", async () => {
    const id = state.selected;
    if (!mergePick || !state.card || state.card.session !== id) return;
    try {
      await api("POST", `/api/sessions/${encodeURIComponent(id)}/merge`, { other_session_id: mergePick.session });
      closeCardForms();
      loadCard(id);
    } catch (err) {
      cardEl.mergeError.textContent = err.message;
      cardEl.mergeError.hidden = false;
    }
  });

  function select(id) {
    if (!state.chats.has(id) && !state.others.has(id)) return;
    const changed = state.selected !== id;
    if (changed) {
      keepDraft(); // what was typed stays with the chat it was typed for
      el.reply.value = state.drafts.get(id) || "";
    }
    state.selected = id;
    showTyping();
    markSeen(id);
    cancelClose();
    cancelSpam();
    if (changed) {
      el.transferPanel.hidden = true;
      closeCardForms();
    }
    render();
    if (changed) {
      renderTranscript();
      loadCard(id);
      if (!el.reply.disabled) el.reply.focus();
    }
    loadHistory(id);
  }

  function handle(frame) {
    switch (frame.type) {
      case "snapshot": {
        const first = state.snapshots++ === 0;
        state.status = frame.operator.status;
        const before = new Set(state.chats.keys());
        const fresh = new Set(frame.chats.map((c) => c.id));
        for (const id of before) if (!fresh.has(id)) removeChat(id);
        for (const chat of frame.chats) upsertChat(chat, { notify: !first && !before.has(chat.id) });
        if (first) saveSeen();
        if (first && document.body.dataset.startOnline === "true") {
          // Just signed in as an operator: ready for chats, as in Bitrix24 and Chatwoot. Only this once:
          // a reload keeps whatever status they chose since.
          history.replaceState(null, "", location.pathname);
          if (state.status === "offline") setStatus("online");
        }
        render();
        // Re-read the open transcript: entries pushed while we were away are not lost.
        if (state.selected) loadHistory(state.selected);
        break;
      }
      case "chat":
        // A chat that reaches me answered is one I took (from the queue, or over): no "new chat" alarm.
        upsertChat(frame.chat, { notify: frame.chat.status !== "answered" });
        state.others.delete(frame.chat.id);
        render();
        refreshViewSoon();
        // crm_linked and other events re-push the chat: the card may have news.
        if (frame.chat.id === state.selected) loadCard(frame.chat.id);
        break;
      case "message": {
        const id = frame.session_id;
        const chat = state.chats.get(id);
        if (state.transcripts.has(id)) addEntries(id, [frame]);
        if (chat && (frame.direction === "in" || frame.direction === "out") && !frame.held && frame.author_id !== "auto") {
          const files = (frame.attachments || []).map((f) => f.name || f.kind).join(", ");
          const text = (frame.text || "").replace(/\s+/g, " ").trim() || (files ? `📎 ${files}` : "");
          if (text) chat.preview = { text: text.slice(0, 120), at: frame.at, direction: frame.direction };
        }
        if (chat && frame.direction === "in") {
          if (typingUntil.delete(id) && id === state.selected) showTyping(); // the message is here
          const counted = state.countedIn.get(id) || new Set();
          if (!counted.has(frame.id)) {
            counted.add(frame.id);
            chat.messages_in = (chat.messages_in || 0) + 1;
          }
          state.countedIn.set(id, counted);
          chat.last_message_at = frame.at;
          // The client wrote: WhatsApp's window opens again for 24 hours from now.
          if (chat.window) {
            const until = new Date(Date.parse(frame.at) + WINDOW_MS).toISOString();
            if (!chat.window.closes_at || Date.parse(until) > Date.parse(chat.window.closes_at)) {
              chat.window.closes_at = until;
              if (id === state.selected) renderHead();
            }
          }
        }
        if (id === state.selected && document.visibilityState === "visible") markSeen(id);
        renderList();
        if (id === state.selected) renderTranscript();
        break;
      }
      case "sla": {
        const chat = state.chats.get(frame.session_id);
        if (chat) { chat.sla = frame.sla; renderList(); tick(); }
        break;
      }
      case "sla_breached":
        slaAlert(frame);
        break;
      case "closed":
        // Only my chats leave: a conversation opened from a view (another's, a closed one being tagged) stays open.
        if (state.chats.has(frame.session_id)) {
          removeChat(frame.session_id);
          render();
        }
        refreshViewSoon();
        break;
      case "typing":
        clientTyping(frame.session_id);
        break;
      case "mention":
        mentioned(frame);
        break;
      case "mark":
        setMark(frame.session_id, frame.message_id, frame);
        if (frame.session_id === state.selected) renderTranscript();
        break;
      case "status":
        state.status = frame.status;
        renderStatus();
        renderList();
        break;
      default:
        break;
    }
  }

  // -- keyboard: Alt+↓/↑ next/previous chat, Alt+A accept, Alt+C close, Alt+Q quick answers, Alt+N note --------

  document.addEventListener("keydown", (e) => {
    if (!e.altKey || e.ctrlKey || e.metaKey || e.isComposing) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const visible = (b) => b && !b.hidden && !b.disabled && b.offsetParent !== null;
    let done = true;
    if (key === "ArrowDown" || key === "ArrowUp") {
      const items = Array.from(document.querySelectorAll('[data-testid="chat-item"]')).filter((li) => li.offsetParent !== null);
      if (!items.length) return;
      const at = items.findIndex((li) => li.dataset.sessionId === state.selected);
      const next = at < 0 ? 0 : (at + (key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      items[next].click();
      items[next].focus();
    } else if (key === "a" && visible(el.accept)) {
      el.accept.click();
    } else if (key === "c" && visible(document.getElementById("close-confirm"))) {
      document.getElementById("close-confirm").click(); // Alt+C twice: close, then confirm
    } else if (key === "c" && visible(document.getElementById("close"))) {
      document.getElementById("close").click();
    } else if (key === "q" && visible(el.quick)) {
      el.quick.focus();
    } else if (key === "n" && visible(noteToggle)) {
      noteToggle.click();
    } else {
      done = false;
    }
    if (done) e.preventDefault();
  });

  // -- typing: the client's shown for a few seconds; ours told at most every 3 s ---------------

  const typingUntil = new Map(); // session -> when its "typing…" goes
  let typingTimer = null;
  function clientTyping(id) {
    typingUntil.set(id, Date.now() + 6000);
    showTyping();
  }
  function showTyping() {
    clearTimeout(typingTimer);
    const until = typingUntil.get(state.selected) || 0;
    const line = document.getElementById("client-typing");
    if (!line) return;
    const on = until > Date.now();
    line.hidden = !on;
    if (on) {
      const chat = state.chats.get(state.selected);
      line.textContent = `${chat ? clientName(chat) : "The client"} is typing…`;
      typingTimer = setTimeout(showTyping, until - Date.now());
    }
  }
  let typedAt = 0;
  let typedIn = "";
  el.reply.addEventListener("input", () => {
    const now = Date.now();
    if (!state.selected || !el.reply.value.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
    if (typedIn === state.selected && now - typedAt < 3000) return;
    typedAt = now;
    typedIn = state.selected;
    socket.send(JSON.stringify({ type: "typing", session_id: state.selected }));
  });

  // -- SLA: each chat's response clock, and the alerts a supervisor of the line gets ----------

  const SLA_WORDS = { first_response: "first response", next_response: "next response" };

  function mmss(seconds) {
    const s = Math.abs(Math.round(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const rest = String(s % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
  }

  function slaClock(chat) {
    const span = node("span", "sla-clock");
    span.dataset.sla = chat.id;
    span.dataset.testid = "sla-clock";
    showSlaClock(span, chat.sla);
    return span;
  }

  // Time left to the line's target while it runs, then how long past it.
  function showSlaClock(span, sla) {
    const left = (Date.parse(sla.due) - Date.now()) / 1000;
    const words = SLA_WORDS[sla.target] || sla.target;
    span.textContent = left > 0 ? `${words} in ${mmss(left)}` : `${words} overdue ${mmss(left)}`;
    span.classList.toggle("overdue", left <= 0);
    span.title = `SLA target: ${words} within ${mmss(sla.limit)}`;
  }

  function slaAlert(frame) {
    let box = $("sla-alerts");
    if (!box) {
      box = node("div", "sla-alerts");
      box.id = "sla-alerts";
      box.setAttribute("role", "alert");
      document.body.append(box);
    }
    for (const old of box.querySelectorAll("[data-session-id]")) {
      if (old.dataset.sessionId === frame.session_id) old.remove(); // the newest word on a chat replaces the older
    }
    const item = node("div", "sla-alert");
    item.dataset.testid = "sla-alert";
    item.dataset.sessionId = frame.session_id;
    const who = frame.operator_id ? ` · ${frame.operator_name || frame.operator_id}` : " · nobody assigned";
    item.append(
      node("strong", "", `SLA: ${frame.client_name} on ${frame.line_name}${who}`),
      node("div", "small", frame.reason),
    );
    const dismiss = node("button", "link", "Dismiss");
    dismiss.type = "button";
    dismiss.addEventListener("click", () => item.remove());
    item.append(dismiss);
    box.prepend(item);
    beep();
  }

  // -- live connection -------------------------------------------------------

  let backoff = 500;
  let socket = null;
  let retryTimer = null;

  function setConn(kind, text) {
    el.conn.dataset.state = kind;
    el.conn.textContent = text;
  }

  function connect() {
    clearTimeout(retryTimer);
    if (socket && socket.readyState <= WebSocket.OPEN) return;
    setConn("connecting", "connecting…");
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`);
    socket = ws;
    ws.onmessage = (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      if (frame.type === "snapshot") { backoff = 500; setConn("live", "live"); }
      handle(frame);
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      const wait = Math.round(backoff * (0.75 + Math.random() * 0.5));
      backoff = Math.min(backoff * 2, 15000);
      setConn("down", `reconnecting in ${Math.ceil(wait / 1000)} s…`);
      retryTimer = setTimeout(connect, wait);
      // A refused handshake looks like any drop; ask the API whether we are still signed in.
      fetch("/api/chats", { credentials: "same-origin" }).then((r) => { if (r.status === 401) location.href = "/login"; }).catch(() => {});
    };
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      if (!socket) connect();
      if (state.selected) { markSeen(state.selected); renderTranscript(); }
      renderList();
    }
  });
  window.addEventListener("online", () => { if (!socket) connect(); });

  async function loadDirectory() {
    try {
      const data = await api("GET", "/api/directory");
      state.directory = { lines: new Map(data.lines.map((l) => [l.id, l])), operators: data.operators };
      renderQuick();
    } catch (err) {
      showError(`Could not load the lines and operators: ${err.message}`);
    }
  }

  // -- views, search, filters, tags -----------------------------------------------------

  // My chats is the live list; the other views (and any search or filter) come from the desk's index.
  function listingView() {
    const filtered = el.search.value.trim() || el.filterLine.value || el.filterChannel.value || el.filterStatus.value ||
      el.filterTag.value;
    if (state.view !== "mine") return state.view;
    return filtered ? "all" : null; // a search from My chats looks through everything I may see
  }

  function renderViews() {
    for (const b of viewButtons) b.setAttribute("aria-selected", String(b.dataset.view === state.view));
    const view = listingView();
    el.list.hidden = Boolean(view);
    el.listEmpty.hidden = Boolean(view) || state.chats.size > 0;
    el.viewList.hidden = !view;
    el.viewEmpty.hidden = !view || el.viewList.children.length > 0;
  }

  function fillSelect(select, items, label) {
    const keep = select.value;
    const options = [node("option", "", label)];
    options[0].value = "";
    for (const it of items) {
      const o = node("option", "", it.name);
      o.value = it.id;
      options.push(o);
    }
    if (keep && !items.some((it) => it.id === keep)) {
      const o = node("option", "", keep);
      o.value = keep;
      options.push(o);
    }
    select.replaceChildren(...options);
    select.value = keep;
  }

  const VIEW_EMPTY = { queue: "Nobody is waiting on your lines.", lines: "No open chats on your lines.",
    closed: "No closed conversations.", all: "Nothing found." };

  async function loadView() {
    const view = listingView();
    renderViews();
    if (!view) return;
    const seq = ++state.viewSeq;
    const params = new URLSearchParams({ view });
    const q = el.search.value.trim();
    if (q) params.set("q", q);
    for (const [key, input] of [["line", el.filterLine], ["channel", el.filterChannel], ["status", el.filterStatus], ["tag", el.filterTag]]) {
      if (input.value) params.set(key, input.value);
    }
    let data;
    try {
      data = await api("GET", `/api/conversations?${params}`);
    } catch (err) {
      showError(`Could not load the list: ${err.message}`, "view");
      return;
    }
    if (seq !== state.viewSeq) return;
    clearError("view");
    const f = data.filters;
    fillSelect(el.filterLine, f.lines, "All lines");
    fillSelect(el.filterChannel, f.channels.map((c) => ({ id: c, name: c })), "All channels");
    fillSelect(el.filterStatus, f.statuses.map((c) => ({ id: c, name: STATUS_LABEL[c] || c })), "Any status");
    fillSelect(el.filterTag, f.tags.map((t) => ({ id: t, name: `#${t}` })), "Any tag");
    el.tagSuggestions.replaceChildren(...f.tags.map((t) => { const o = node("option"); o.value = t; return o; }));
    for (const chat of data.chats) if (!state.chats.has(chat.id)) state.others.set(chat.id, chat);
    renderViewList(data.chats);
    // A conversation opened from a view is not pushed live to me: re-read it with the list.
    if (state.selected && state.others.has(state.selected) && !state.chats.has(state.selected)) {
      renderHead();
      loadHistory(state.selected);
    }
    el.viewEmpty.textContent = data.ready ? (q ? "Nothing found." : VIEW_EMPTY[view] || "Nothing here.")
      : "The search index is still loading; try again in a moment.";
    renderViews();
  }

  function renderViewList(chats) {
    el.viewList.replaceChildren();
    for (const chat of chats) {
      const { li, top, mid } = chatItem(chat, "view-item");
      const bottom = node("div", "row small");
      const st = node("span", `st st-${chat.status}`, STATUS_LABEL[chat.status] || chat.status);
      st.dataset.testid = "view-status";
      const who = chat.operator_name ? node("span", "who-has", chat.operator_id === me ? "you" : chat.operator_name) : null;
      const when = chat.status === "closed" ? `closed ${agoText(chat.closed_at || chat.opened_at)}`
        : chat.status === "waiting" ? `waiting ${ago(chat.opened_at)}` : `open ${ago(chat.opened_at)}`;
      bottom.append(st, ...(who ? [who] : []), node("span", "age", when));
      li.append(top, mid, bottom);
      if (chat.snippet) {
        const snip = node("div", "snippet", chat.snippet);
        snip.dataset.testid = "view-snippet";
        li.append(snip);
      }
      if ((chat.tags || []).length) {
        const tags = node("div", "item-tags");
        for (const t of chat.tags) tags.append(node("span", "tag-chip", `#${t}`));
        li.append(tags);
      }
      li.addEventListener("click", () => select(chat.id));
      li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(chat.id); } });
      el.viewList.append(li);
    }
  }

  let viewTimer = null;
  function refreshViewSoon(delay = 300) {
    clearTimeout(viewTimer);
    viewTimer = setTimeout(loadView, delay);
  }
  // The queue and the other lists change with everyone's work: re-read them while they are shown.
  setInterval(() => { if (listingView() && document.visibilityState === "visible") loadView(); }, 5000);

  for (const b of viewButtons) {
    b.addEventListener("click", () => {
      state.view = b.dataset.view;
      renderViews();
      loadView();
    });
  }
  el.search.addEventListener("input", () => refreshViewSoon(250));
  el.finder.addEventListener("submit", (e) => { e.preventDefault(); loadView(); });
  for (const f of [el.filterLine, el.filterChannel, el.filterStatus, el.filterTag]) f.addEventListener("change", () => loadView());

  function renderTags(chat) {
    el.tags.replaceChildren();
    for (const t of chat.tags || []) {
      const li = node("li", "tag-chip", `#${t}`);
      li.dataset.testid = "tag";
      li.dataset.tag = t;
      const x = node("button", "", "×");
      x.type = "button";
      x.title = `Remove the tag ${t}`;
      x.setAttribute("aria-label", `Remove the tag ${t}`);
      x.dataset.testid = "tag-remove";
      x.addEventListener("click", () => changeTags(chat.id, [], [t]));
      li.append(x);
      el.tags.append(li);
    }
  }

  async function changeTags(id, add, remove) {
    try {
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/tags`, { add, remove });
      clearError("tags");
      const chat = state.chats.get(id) || state.others.get(id);
      if (chat && data.session) chat.tags = data.session.tags || [];
      if (id === state.selected) {
        renderHead();
        if (!state.chats.has(id)) loadHistory(id); // not pushed live to me: read the new transcript line
      }
      renderList();
      refreshViewSoon();
    } catch (err) {
      showError(`Could not change the tags: ${err.message}`, "tags");
    }
  }

  el.tagAdd.addEventListener("submit", (e) => {
    e.preventDefault();
    const tag = el.tagInput.value.trim();
    if (!tag || !state.selected) return;
    el.tagInput.value = "";
    changeTags(state.selected, [tag], []);
  });

  el.take.addEventListener("click", async () => {
    const id = state.selected;
    if (!id) return;
    el.take.disabled = true;
    try {
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/take`);
      clearError("take");
      state.others.delete(id);
      if (data.session) upsertChat(data.session, { notify: false });
      render();
      loadHistory(id);
      refreshViewSoon(0);
      if (!el.reply.disabled) el.reply.focus();
    } catch (err) {
      showError(`Could not take the chat: ${err.message}`, "take");
      refreshViewSoon(0);
    } finally {
      el.take.disabled = false;
    }
  });

  // -- actions ---------------------------------------------------------------

  // After skip, transfer, spam: the chat is no longer this operator's; the live
  // push says so too, this only spares the wait.
  function leave(id, session) {
    if (session && session.operator_id === me && session.status !== "closed") {
      upsertChat(session, { notify: false });
    } else {
      removeChat(id);
      state.files = state.files.filter((f) => f.session !== id);
    }
    render();
  }

  el.skip.addEventListener("click", async () => {
    const id = state.selected;
    if (!id) return;
    el.skip.disabled = true;
    try {
      await api("POST", `/api/sessions/${encodeURIComponent(id)}/skip`);
      leave(id, null);
      el.placeholder.textContent = "You skipped the chat: it went to the next operator.";
    } catch (err) {
      showError(`Could not skip the chat: ${err.message}`);
    } finally {
      el.skip.disabled = false;
    }
  });

  el.pin.addEventListener("click", async () => {
    const id = state.selected;
    const chat = state.chats.get(id);
    if (!chat) return;
    el.pin.disabled = true;
    try {
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/pin`, { pinned: !chat.pinned });
      refreshChat(data.session);
      render();
    } catch (err) {
      showError(`Could not pin the chat: ${err.message}`);
    } finally {
      el.pin.disabled = false;
    }
  });

  // A button whose action cannot be undone first shows its confirm button; cancel() hides that again
  // after five seconds.
  function askTwice(button, confirm, cancel) {
    button.addEventListener("click", () => {
      button.hidden = true;
      confirm.hidden = false;
      confirm.focus();
      clearTimeout(cancel.timer);
      cancel.timer = setTimeout(cancel, 5000);
    });
  }

  function cancelSpam() {
    clearTimeout(cancelSpam.timer);
    el.spamConfirm.hidden = true;
    const chat = state.chats.get(state.selected);
    el.spam.hidden = !(chat && chat.operator_id === me);
  }
  askTwice(el.spam, el.spamConfirm, cancelSpam);
  el.spamConfirm.addEventListener("click", async () => {
    const id = state.selected;
    cancelSpam();
    if (!id) return;
    try {
      await api("POST", `/api/sessions/${encodeURIComponent(id)}/spam`);
      leave(id, null);
      el.placeholder.textContent = "Marked as spam: the chat is closed and the client's further messages are ignored.";
    } catch (err) {
      showError(`Could not mark the chat as spam: ${err.message}`);
    }
  });

  el.transfer.addEventListener("click", async () => {
    if (!el.transferPanel.hidden) { el.transferPanel.hidden = true; return; }
    await loadDirectory();
    const chat = state.chats.get(state.selected);
    if (!chat) return;
    el.transferTarget.replaceChildren();
    const ops = node("optgroup");
    ops.label = "Operators";
    for (const o of state.directory.operators) {
      const opt = node("option", "", `${o.name} (${o.status})`);
      opt.value = `op:${o.id}`;
      opt.disabled = o.status !== "online";
      ops.append(opt);
    }
    const lines = node("optgroup");
    lines.label = "Lines (the chat waits in the line's queue)";
    for (const l of state.directory.lines.values()) {
      const opt = node("option", "", l.id === chat.line_id ? `${l.name} (this line)` : l.name);
      opt.value = `line:${l.id}`;
      lines.append(opt);
    }
    el.transferTarget.append(ops, lines);
    const firstOnline = el.transferTarget.querySelector("option:not([disabled])");
    if (firstOnline) firstOnline.selected = true;
    el.transferPanel.hidden = false;
    el.transferTarget.focus();
  });
  el.transferCancel.addEventListener("click", () => { el.transferPanel.hidden = true; });
  el.transferPanel.addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = state.selected;
    const value = el.transferTarget.value;
    if (!id || !value) return;
    const [kind, target] = [value.slice(0, value.indexOf(":")), value.slice(value.indexOf(":") + 1)];
    const label = el.transferTarget.selectedOptions[0] ? el.transferTarget.selectedOptions[0].textContent : target;
    el.transferGo.disabled = true;
    try {
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/transfer`,
        { ...(kind === "op" ? { to_operator: target } : { to_line: target }), comment: transferComment.value.trim() });
      transferComment.value = "";
      el.transferPanel.hidden = true;
      leave(id, data.session);
      el.placeholder.textContent = `Transferred to ${label}.`;
    } catch (err) {
      showError(`Could not transfer the chat: ${err.message}`);
    } finally {
      el.transferGo.disabled = false;
    }
  });

  el.quick.addEventListener("change", () => {
    const chat = state.chats.get(state.selected);
    const line = chat ? state.directory.lines.get(chat.line_id) : null;
    const text = line && el.quick.value !== "" ? line.quick_answers[Number(el.quick.value)] : null;
    el.quick.value = "";
    if (!text) return;
    const r = el.reply;
    const at = r.selectionStart ?? r.value.length;
    r.value = r.value.slice(0, at) + text + r.value.slice(r.selectionEnd ?? at);
    r.focus();
    r.selectionStart = r.selectionEnd = at + text.length;
  });

  async function upload(file) {
    const id = state.selected;
    if (!id) return;
    if (maxUpload && file.size > maxUpload) {
      showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; at most ${(maxUpload / 1048576).toFixed(1)} MB.`, "upload");
      return;
    }
    const item = { local: newId(), session: id, name: file.name, id: null };
    state.files.push(item);
    renderFiles();
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/files`, form);
      item.id = data.file.id;
      item.name = data.file.name;
      clearError("upload");
    } catch (err) {
      state.files = state.files.filter((f) => f !== item);
      showError(`${file.name} was not attached: ${err.message}`, "upload");
    }
    renderFiles();
  }
  el.attachLabel.addEventListener("click", () => el.attachInput.click()); // a button: reached with Tab
  el.attachInput.addEventListener("change", () => {
    const picked = Array.from(el.attachInput.files || []);
    el.attachInput.value = "";
    for (const f of picked) upload(f);
  });

  async function setStatus(wanted) {
    statusButtons.forEach((x) => { x.disabled = true; });
    try {
      const data = await api("POST", "/api/status", { status: wanted });
      state.status = data.status;
      renderStatus();
      renderList();
    } catch (err) {
      showError(`Could not change your status: ${err.message}`);
    } finally {
      statusButtons.forEach((x) => { x.disabled = false; });
    }
  }

  for (const b of statusButtons) {
    b.addEventListener("click", () => {
      const wanted = b.dataset.status;
      if (wanted === "online" && window.Notification && Notification.permission === "default") {
        Notification.requestPermission().catch(() => {});
      }
      setStatus(wanted);
    });
  }

  el.accept.addEventListener("click", async () => {
    const id = state.selected;
    if (!id) return;
    el.accept.disabled = true;
    try {
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/accept`);
      refreshChat(data.session);
      render();
      // Into the reply box, unless the operator has already moved on to something else.
      if (document.activeElement === el.accept || document.activeElement === document.body) el.reply.focus();
    } catch (err) {
      showError(`Could not accept the chat: ${err.message}`);
    } finally {
      el.accept.disabled = false;
    }
  });

  function cancelClose() {
    clearTimeout(cancelClose.timer);
    el.closeConfirm.hidden = true;
    el.close.hidden = false;
  }
  // Two clicks: closing by accident ends the client's conversation.
  askTwice(el.close, el.closeConfirm, cancelClose);
  el.closeConfirm.addEventListener("click", async () => {
    const id = state.selected;
    cancelClose();
    if (!id) return;
    try {
      await api("POST", `/api/sessions/${encodeURIComponent(id)}/close`);
      removeChat(id);
      render();
    } catch (err) {
      showError(`Could not close the chat: ${err.message}`);
    }
  });

  // A private note instead of a reply: colleagues see it in the transcript, the client never gets it.
  let noteMode = false;
  const noteToggle = document.getElementById("note-toggle");
  const transferComment = document.getElementById("transfer-comment");
  const REPLY_HINT = el.reply.placeholder;
  function setNoteMode(on) {
    noteMode = on;
    noteToggle.setAttribute("aria-pressed", String(on));
    el.composer.classList.toggle("note-mode", on);
    el.reply.placeholder = on ? "Private note — only colleagues see it; @login tells a colleague" : REPLY_HINT;
  }
  noteToggle.addEventListener("click", () => { setNoteMode(!noteMode); el.reply.focus(); });

  // On a narrow screen (a phone) the client card opens over the transcript; Escape or "Client" again closes it.
  const cardToggle = document.getElementById("card-toggle");
  const clientCard = document.getElementById("client-card");
  function showCard(on) {
    clientCard.classList.toggle("open", on);
    cardToggle.setAttribute("aria-expanded", String(on));
    if (on) clientCard.focus();
  }
  clientCard.tabIndex = -1;
  cardToggle.addEventListener("click", () => showCard(!clientCard.classList.contains("open")));
  clientCard.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && clientCard.classList.contains("open")) { showCard(false); cardToggle.focus(); }
  });
  let noteForced = false;
  function forceNote(on) {
    noteToggle.disabled = on;
    if (on === noteForced) return;
    noteForced = on;
    setNoteMode(on);
  }

  // @login in a colleague's note: a toast that opens the conversation.
  function mentioned(frame) {
    const box = document.getElementById("toasts");
    const toast = node("a", "toast", `${frame.author_name} mentioned you: ${frame.text}`);
    toast.dataset.testid = "mention";
    toast.href = state.chats.has(frame.session_id) ? "#" : `/transcript/${encodeURIComponent(frame.session_id)}`;
    if (!state.chats.has(frame.session_id)) toast.target = "_blank"; // never leave the workspace
    toast.addEventListener("click", (e) => {
      if (state.chats.has(frame.session_id)) { e.preventDefault(); select(frame.session_id); }
      toast.remove();
    });
    box.append(toast);
    setTimeout(() => toast.remove(), 30000);
  }

  async function sendReply() {
    const id = state.selected;
    const text = el.reply.value.trim();
    const files = state.files.filter((f) => f.session === id);
    if (!id || (!text && !files.length) || el.send.disabled) return;
    if (files.some((f) => !f.id)) { showError("Wait until the files are uploaded."); return; }
    if (text.length > 4000) { showError(`The reply is ${text.length} characters; at most 4000.`); return; }
    const ids = files.map((f) => f.id);
    const key = `${text}\u0000${ids.join(",")}`;
    if (!state.pendingReply || state.pendingReply.key !== key || state.pendingReply.session !== id) {
      state.pendingReply = { key, session: id, id: newId() };
    }
    el.send.disabled = true;
    const asNote = noteMode && !ids.length;
    try {
      const body = { text, client_msg_id: state.pendingReply.id };
      if (ids.length) body.files = ids;
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/${asNote ? "note" : "reply"}`, body);
      if (asNote && !noteForced) setNoteMode(false);
      state.pendingReply = null;
      state.files = state.files.filter((f) => !files.includes(f));
      // Only the box of the chat it was sent to, and only if it still holds what was sent.
      if (state.selected === id && el.reply.value.trim() === text) el.reply.value = "";
      else if ((state.drafts.get(id) || "").trim() === text) state.drafts.delete(id);
      if (state.selected === id) keepDraft();
      else saveDrafts();
      refreshChat(data.session);
      render();
      loadHistory(id);
    } catch (err) {
      showError(`Not sent: ${err.message}`);
    } finally {
      renderHead();
    }
  }

  el.templates.addEventListener("change", () => {
    const chat = state.chats.get(state.selected);
    const t = chat && el.templates.value !== "" ? (chat.templates || [])[Number(el.templates.value)] : null;
    el.templates.value = "";
    if (t) openTemplate(t);
  });
  el.templateCancel.addEventListener("click", closeTemplate);
  el.templatePanel.addEventListener("submit", async (e) => {
    e.preventDefault();
    const pending = state.template;
    if (!pending) return;
    const values = templateValues();
    if (values.some((v) => !v)) { showError("Fill in every variable of the template."); return; }
    el.templateSend.disabled = true;
    try {
      const body = { template: { name: pending.tpl.name, language: pending.tpl.language, params: values }, client_msg_id: pending.id };
      const data = await api("POST", `/api/sessions/${encodeURIComponent(pending.session)}/reply`, body);
      if (state.template === pending) closeTemplate();
      refreshChat(data.session);
      render();
      loadHistory(pending.session);
    } catch (err) {
      showError(`Template not sent: ${err.message}`);
    } finally {
      el.templateSend.disabled = false;
    }
  });

  el.composer.addEventListener("submit", (e) => { e.preventDefault(); sendReply(); });
  el.reply.addEventListener("input", keepDraft);
  el.reply.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendReply(); }
  });
  el.toast.addEventListener("click", () => {
    el.toast.hidden = true;
    if (el.toast.dataset.sessionId) select(el.toast.dataset.sessionId);
  });

  setInterval(() => { renderList(); renderHead(); }, 5000);
  setInterval(tick, 1000);
  render();
  connect();
  loadDirectory();
})();
