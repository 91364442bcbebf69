// openlines desk: the supervisor view. Polls /api/supervisor every few seconds
// (the numbers are read from KV each time, so a missed poll loses nothing).
(() => {
  "use strict";

  const POLL_MS = 3000;
  const $ = (id) => document.getElementById(id);
  const el = {
    lines: $("lines"), conn: $("conn"), updated: $("updated"), error: $("error"),
    watch: $("watch"), watchTitle: $("watch-title"), watchTranscript: $("watch-transcript"),
    watchIntercept: $("watch-intercept"), watchClose: $("watch-close"),
  };
  let watching = null; // the session whose transcript is open, read again on every poll

  function node(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function dur(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }
  function table(testid, head, rows) {
    const t = node("table", "grid");
    t.dataset.testid = testid;
    const tr = node("tr");
    for (const h of head) tr.append(node("th", "", h));
    const thead = node("thead");
    thead.append(tr);
    const tbody = node("tbody");
    for (const r of rows) tbody.append(r);
    t.append(thead, tbody);
    return t;
  }
  function row(testid, cells, data) {
    const tr = node("tr");
    tr.dataset.testid = testid;
    for (const [k, v] of Object.entries(data || {})) tr.dataset[k] = v;
    for (const c of cells) {
      const td = node("td");
      if (c instanceof Node) td.append(c); else td.textContent = c;
      tr.append(td);
    }
    return tr;
  }

  const STATUS = { waiting: "waiting", assigned: "offered", answered: "in progress" };

  function render(data) {
    el.lines.replaceChildren();
    for (const line of data.lines) {
      const sec = node("section", "sup-line");
      sec.dataset.testid = "sup-line";
      sec.dataset.lineId = line.id;
      const h = node("h2", "", line.name);
      const meta = node("span", "muted", ` ${line.mode.replace("_", " ")} · answer within ${line.wait_seconds} s`);
      h.append(meta);
      sec.append(h);

      const q = node("h3", "", "Waiting ");
      const qc = node("span", "count", String(line.waiting.length));
      qc.dataset.testid = "sup-waiting-count";
      q.append(qc);
      sec.append(q);
      if (line.waiting.length) {
        sec.append(table("sup-waiting", ["#", "Client", "Channel", "Waiting for"], line.waiting.map((w, i) =>
          row("sup-waiting-item", [String(i + 1), w.client_name + (w.held ? " (held: line closed)" : ""), w.channel, dur(w.wait_seconds)],
            { sessionId: w.session_id }))));
      } else {
        sec.append(node("p", "muted", "Nobody is waiting."));
      }

      sec.append(node("h3", "", "Operators"));
      sec.append(table("sup-operators", ["Operator", "Status", "Load", "Offers", "Desk"], line.operators.map((o) => {
        const st = node("span", `st-dot st-${o.status}`, o.status);
        st.dataset.testid = "sup-operator-status";
        return row("sup-operator", [
          o.name + (o.in_queue ? "" : " (not in the queue)"), st, `${o.load} / ${o.max_chats}` + (o.unanswered ? ` (${o.unanswered} unanswered)` : ""),
          String(o.offers), o.connected ? "open" : "closed",
        ], { operatorId: o.id });
      })));

      sec.append(node("h3", "", `Live conversations (${line.sessions.length})`));
      if (line.sessions.length) {
        sec.append(table("sup-sessions", ["Client", "Channel", "State", "Operator", "Open for", "Messages", ""], line.sessions.map((s) => {
          const intercept = node("button", "", "Intercept");
          intercept.type = "button";
          intercept.title = data.intercept;
          intercept.dataset.testid = "sup-intercept";
          intercept.addEventListener("click", () => takeOver(s.id, intercept));
          const read = node("button", "", "Read");
          read.type = "button";
          read.title = "Read the conversation as it goes, before deciding to intercept";
          read.dataset.testid = "sup-read";
          read.addEventListener("click", async () => {
            watching = s.id;
            await readTranscript();
            el.watch.scrollIntoView({ block: "start" });
          });
          const acts = node("span");
          acts.append(read, " ", intercept);
          const who = s.operator_name || (s.offered_to.length ? `offered to ${s.offered_to.join(", ")}` : "—");
          const name = node("span", "", s.client_name);
          if (s.flagged) {
            const flag = node("span", "badge warn", s.flagged === "flood" ? "Flood" : s.flagged);
            flag.dataset.testid = "sup-flagged";
            flag.title = "Marked for a supervisor: messages beyond the flood limit are stored but not pushed to the operator";
            name.append(" ", flag);
          }
          if (s.sla && s.sla.breached) {
            // Past the line's response-time target, and nobody has answered since.
            const words = s.sla.target === "next_response" ? "next response" : "first response";
            const late = node("span", "badge danger", `SLA: ${words} overdue`);
            late.dataset.testid = "sup-sla";
            late.title = `Target ${dur(s.sla.limit)}, passed at ${new Date(s.sla.due).toLocaleTimeString()}`;
            name.append(" ", late);
          }
          return row("sup-session", [name, s.channel, STATUS[s.status] || s.status, who, dur(s.open_seconds), String(s.messages_in), acts],
            { sessionId: s.id });
        })));
      } else {
        sec.append(node("p", "muted", "No live conversations."));
      }
      el.lines.append(sec);
    }
    const note = node("p", "muted small", data.intercept);
    note.dataset.testid = "sup-intercept-note";
    el.lines.append(note);
  }

  const WHO = { in: "Client", system: "" };
  async function readTranscript() {
    const id = watching;
    if (!id) { el.watch.hidden = true; return; }
    try {
      const res = await fetch(`/api/sessions/${encodeURIComponent(id)}/history`, { credentials: "same-origin" });
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(data.detail || `request failed (${res.status})`);
      if (watching !== id) return;
      const chat = data.session;
      el.watchTitle.textContent = `${chat.client_name || "Client"} · ${chat.channel} · ${chat.line_name || chat.line_id} · ${STATUS[chat.status] || chat.status}`;
      el.watch.dataset.sessionId = id;
      el.watchIntercept.hidden = chat.status === "closed";
      el.watchTranscript.replaceChildren();
      for (const e of data.entries) {
        const li = node("li", `entry ${e.direction}`);
        li.dataset.testid = "sup-watch-entry";
        li.dataset.direction = e.direction;
        const who = e.direction in WHO ? (e.direction === "in" ? chat.client_name || WHO.in : "") : e.author_name || (e.author_id === "auto" ? "Auto-reply" : "Operator");
        const head = node("div", "entry-head");
        if (who) head.append(node("span", "who", who));
        head.append(node("time", "at", new Date(e.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
        const files = (e.attachments || []).map((a) => a.name || a.kind).join(", ");
        li.append(head, node("div", "text", e.text || (files ? `[${files}]` : "")));
        el.watchTranscript.append(li);
      }
      el.watch.hidden = false;
    } catch (err) {
      el.error.textContent = `Could not read the conversation: ${err.message}`;
      el.error.hidden = false;
    }
  }
  el.watchClose.addEventListener("click", () => { watching = null; el.watch.hidden = true; });
  el.watchIntercept.addEventListener("click", () => { if (watching) takeOver(watching, el.watchIntercept); });

  async function takeOver(sessionId, button) {
    button.disabled = true;
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    try {
      const res = await fetch(`/api/sessions/${encodeURIComponent(sessionId)}/intercept`, {
        method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf },
      });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.detail || `intercept failed (${res.status})`);
      button.textContent = "Yours";
      poll();
    } catch (err) {
      el.error.textContent = err.message;
      el.error.hidden = false;
      button.disabled = false;
    }
  }

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    try {
      const res = await fetch("/api/supervisor", { credentials: "same-origin" });
      if (res.status === 401) { location.href = "/login"; return; }
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(data.detail || `request failed (${res.status})`);
      render(data);
      if (watching) readTranscript();
      el.conn.dataset.state = "live";
      el.conn.textContent = "live";
      el.updated.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
      el.error.hidden = true;
    } catch (err) {
      el.conn.dataset.state = "down";
      el.conn.textContent = "not updating";
      el.error.textContent = `Could not refresh: ${err.message}`;
      el.error.hidden = false;
    }
    timer = setTimeout(poll, document.visibilityState === "visible" ? POLL_MS : POLL_MS * 5);
  }
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") poll(); });
  poll();
})();
