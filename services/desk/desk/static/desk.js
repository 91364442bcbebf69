// openlines desk: the operator workspace. Plain JS, no build step.
//
// The server is the truth: on every (re)connect the WebSocket sends a
// snapshot read from KV, and the page replaces what it shows with it, so a
// push missed while disconnected is repaired by the next snapshot.
(() => {
  "use strict";

  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const el = {
    list: $("chat-list"), listEmpty: $("list-empty"), count: $("chat-count"),
    placeholder: $("placeholder"), main: $("chat-main"), title: $("chat-title"), meta: $("chat-meta"),
    accept: $("accept"), close: $("close"), closeConfirm: $("close-confirm"),
    transcript: $("transcript"), composer: $("composer"), reply: $("reply"), send: $("send"),
    conn: $("conn"), toast: $("toast"), error: $("error"),
    cardName: $("card-name"), cardChannel: $("card-channel"), cardPhone: $("card-phone"), cardEmail: $("card-email"),
    cardCrm: $("card-crm"), cardPrevious: $("card-previous"), cardPreviousNote: $("card-previous-note"),
  };
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
    pendingReply: null, // {text, id}: a retried send reuses the id, so the router dedups it
  };

  // -- helpers ---------------------------------------------------------------

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
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d`;
  }
  function agoText(iso) {
    const a = ago(iso);
    return a === "just now" || !a ? a : `${a} ago`;
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

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = false;
    clearTimeout(showError.timer);
    showError.timer = setTimeout(() => { el.error.hidden = true; }, 8000);
  }

  function toast(chat) {
    el.toast.textContent = `New chat: ${clientName(chat)} (${chat.channel}, ${chat.line_name || chat.line_id})`;
    el.toast.dataset.sessionId = chat.id;
    el.toast.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.toast.hidden = true; }, 8000);
    if (window.Notification && Notification.permission === "granted" && document.visibilityState !== "visible") {
      try { new Notification("New chat", { body: `${clientName(chat)} — ${chat.line_name || chat.line_id}`, tag: chat.id }); } catch { /* unsupported */ }
    }
  }

  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
    if (body !== undefined) {
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
    document.title = state.newChats.size ? `(${n}) New chat · ${BASE_TITLE}` : n ? `(${n}) ${BASE_TITLE}` : BASE_TITLE;
  }

  function renderList() {
    const chats = Array.from(state.chats.values()).sort((a, b) => Date.parse(a.opened_at) - Date.parse(b.opened_at));
    el.list.replaceChildren();
    for (const chat of chats) {
      const li = node("li", "chat-item");
      li.dataset.testid = "chat-item";
      li.dataset.sessionId = chat.id;
      li.dataset.status = chat.status;
      li.tabIndex = 0;
      li.setAttribute("role", "button");
      if (chat.id === state.selected) li.classList.add("selected");
      if (state.newChats.has(chat.id)) li.classList.add("new");
      const top = node("div", "row");
      top.append(node("span", "name", clientName(chat)));
      const count = unread(chat);
      if (count) {
        const badge = node("span", "unread", String(count));
        badge.dataset.testid = "unread";
        top.append(badge);
      }
      const mid = node("div", "row small");
      mid.append(node("span", `badge ch-${chat.channel}`, chat.channel), node("span", "line", chat.line_name || chat.line_id));
      const bottom = node("div", "row small");
      const st = node("span", `st st-${chat.status}`, STATUS_LABEL[chat.status] || chat.status);
      st.dataset.testid = "chat-status";
      const since = chat.status === "assigned" ? chat.assigned_at || chat.opened_at : chat.opened_at;
      bottom.append(st, node("span", "age", (chat.status === "assigned" ? "waiting " : "open ") + ago(since)));
      li.append(top, mid, bottom);
      li.addEventListener("click", () => select(chat.id));
      li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(chat.id); } });
      el.list.append(li);
    }
    el.count.textContent = String(chats.length);
    el.listEmpty.hidden = chats.length > 0;
    el.listEmpty.textContent = state.status === "online" ? "No open chats. New ones appear here." : "No open chats. Go online to receive chats.";
    renderTitle();
  }

  function renderHead() {
    const chat = state.chats.get(state.selected);
    el.placeholder.hidden = Boolean(chat);
    el.main.hidden = !chat;
    if (!chat) return;
    el.main.dataset.sessionId = chat.id;
    el.title.textContent = clientName(chat);
    el.meta.textContent = `${chat.channel} · ${chat.line_name || chat.line_id} · ${STATUS_LABEL[chat.status] || chat.status} · opened ${agoText(chat.opened_at)}`;
    el.accept.hidden = chat.status !== "assigned";
    const canReply = chat.status === "assigned" || chat.status === "answered";
    el.reply.disabled = el.send.disabled = !canReply;
  }

  function renderTranscript() {
    const entries = Array.from((state.transcripts.get(state.selected) || new Map()).values())
      .sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    const atBottom = el.transcript.scrollHeight - el.transcript.scrollTop - el.transcript.clientHeight < 40;
    el.transcript.replaceChildren();
    for (const e of entries) {
      const li = node("li", `entry ${e.direction}`);
      li.dataset.testid = "transcript-entry";
      li.dataset.entryId = e.id;
      li.dataset.direction = e.direction;
      const who = e.direction === "in" ? clientName(state.chats.get(state.selected) || {}) :
        e.direction === "system" ? "" : e.author_name || (e.author_id === "auto" ? "Auto-reply" : "Operator");
      const head = node("div", "entry-head");
      if (who) head.append(node("span", "who", who));
      head.append(node("time", "at", clock(e.at)));
      const text = node("div", "text", e.text || (e.attachments && e.attachments.length ? `[${e.attachments.map((a) => a.kind).join(", ")}]` : ""));
      text.dataset.testid = "entry-text";
      li.append(head, text);
      el.transcript.append(li);
    }
    if (atBottom || entries.length < 30) el.transcript.scrollTop = el.transcript.scrollHeight;
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

  function removeChat(id) {
    state.chats.delete(id);
    state.newChats.delete(id);
    state.transcripts.delete(id);
    state.countedIn.delete(id);
    if (state.selected === id) {
      state.selected = null;
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

  function renderCard(id, data) {
    if (id !== state.selected) return;
    const c = data.client;
    el.cardName.textContent = c.name || "Client";
    el.cardChannel.textContent = c.username ? `${c.channel} · @${c.username}` : c.channel;
    el.cardPhone.textContent = c.phone || "—";
    el.cardEmail.textContent = c.email || "—";
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
    el.cardPrevious.replaceChildren();
    for (const p of data.previous) {
      const li = node("li");
      li.dataset.testid = "card-previous-item";
      const a = node("a", "", `${clock(p.opened_at)} ${new Date(p.opened_at).toLocaleDateString()} · ${p.line_name || p.line_id}`);
      a.href = `/transcript/${encodeURIComponent(p.id)}`;
      a.target = "_blank";
      li.append(a, node("span", "muted", ` · ${p.close_reason || p.status}`));
      el.cardPrevious.append(li);
    }
    if (!data.previous.length) el.cardPrevious.append(node("li", "muted", "none found"));
    el.cardPreviousNote.textContent =
      `Closed conversations among the last ${data.previous_limit.events_scanned.toLocaleString()} events; at most ${data.previous_limit.shown} shown.`;
  }

  async function loadCard(id) {
    try {
      renderCard(id, await api("GET", `/api/sessions/${encodeURIComponent(id)}/client`));
    } catch (err) {
      if (id === state.selected) el.cardCrm.textContent = `Could not load the client card: ${err.message}`;
    }
  }

  function select(id) {
    if (!state.chats.has(id)) return;
    const changed = state.selected !== id;
    state.selected = id;
    markSeen(id);
    cancelClose();
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
        render();
        // Re-read the open transcript: entries pushed while we were away are not lost.
        if (state.selected) loadHistory(state.selected);
        break;
      }
      case "chat":
        upsertChat(frame.chat, { notify: true });
        render();
        // crm_linked and other events re-push the chat: the card may have news.
        if (frame.chat.id === state.selected) loadCard(frame.chat.id);
        break;
      case "message": {
        const id = frame.session_id;
        const chat = state.chats.get(id);
        if (state.transcripts.has(id)) addEntries(id, [frame]);
        if (chat && frame.direction === "in") {
          const counted = state.countedIn.get(id) || new Set();
          if (!counted.has(frame.id)) {
            counted.add(frame.id);
            chat.messages_in = (chat.messages_in || 0) + 1;
          }
          state.countedIn.set(id, counted);
          chat.last_message_at = frame.at;
        }
        if (id === state.selected && document.visibilityState === "visible") markSeen(id);
        renderList();
        if (id === state.selected) renderTranscript();
        break;
      }
      case "closed":
        removeChat(frame.session_id);
        render();
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
      if (state.selected) markSeen(state.selected);
      renderList();
    }
  });
  window.addEventListener("online", () => { if (!socket) connect(); });

  // -- actions ---------------------------------------------------------------

  for (const b of statusButtons) {
    b.addEventListener("click", async () => {
      const wanted = b.dataset.status;
      if (wanted === "online" && window.Notification && Notification.permission === "default") {
        Notification.requestPermission().catch(() => {});
      }
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
    });
  }

  el.accept.addEventListener("click", async () => {
    const id = state.selected;
    if (!id) return;
    el.accept.disabled = true;
    try {
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/accept`);
      if (data.session) upsertChat(data.session, { notify: false });
      render();
      el.reply.focus();
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
  el.close.addEventListener("click", () => {
    // Two clicks: closing by accident ends the client's conversation.
    el.close.hidden = true;
    el.closeConfirm.hidden = false;
    el.closeConfirm.focus();
    clearTimeout(cancelClose.timer);
    cancelClose.timer = setTimeout(cancelClose, 5000);
  });
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

  async function sendReply() {
    const id = state.selected;
    const text = el.reply.value.trim();
    if (!id || !text || el.send.disabled) return;
    if (text.length > 4000) { showError(`The reply is ${text.length} characters; at most 4000.`); return; }
    if (!state.pendingReply || state.pendingReply.text !== text || state.pendingReply.session !== id) {
      state.pendingReply = { text, session: id, id: newId() };
    }
    el.send.disabled = true;
    try {
      const data = await api("POST", `/api/sessions/${encodeURIComponent(id)}/reply`, { text, client_msg_id: state.pendingReply.id });
      state.pendingReply = null;
      if (el.reply.value.trim() === text) el.reply.value = "";
      if (data.session) upsertChat(data.session, { notify: false });
      render();
      loadHistory(id);
    } catch (err) {
      showError(`Not sent: ${err.message}`);
    } finally {
      renderHead();
    }
  }

  el.composer.addEventListener("submit", (e) => { e.preventDefault(); sendReply(); });
  el.reply.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendReply(); }
  });
  el.toast.addEventListener("click", () => {
    el.toast.hidden = true;
    if (el.toast.dataset.sessionId) select(el.toast.dataset.sessionId);
  });

  setInterval(() => { renderList(); renderHead(); }, 15000);
  render();
  connect();
})();
