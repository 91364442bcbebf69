// The live wallboard of one line: asks the desk every few seconds what is waiting and who is online.
(function () {
  "use strict";
  var board = document.querySelector("[data-testid=wallboard]");
  if (!board) return;
  var url = "/stats/wallboard/" + encodeURIComponent(board.dataset.line) + "/live";
  var EVERY_MS = 3000;

  function set(id, text) { document.querySelector("[data-testid=" + id + "]").textContent = text; }

  function duration(s) {
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    return m < 60 ? m + " min " + (s % 60) + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function show(d) {
    set("wb-waiting", String(d.waiting));
    set("wb-longest", d.waiting ? duration(d.longest_wait_seconds) : "—");
    set("wb-online", String(d.online));
    set("wb-busy", String(d.busy));
    set("wb-today", String(d.today.sessions));
    set("wb-missed", String(d.today.missed));
    var body = document.querySelector("[data-testid=wb-operators] tbody");
    body.textContent = "";
    d.operators.forEach(function (o) {
      var tr = document.createElement("tr");
      tr.dataset.testid = "wb-operator";
      tr.setAttribute("data-testid", "wb-operator");
      tr.dataset.operator = o.id;
      [o.name, o.status, o.load + " / " + o.max_chats].forEach(function (t) {
        var td = document.createElement("td");
        td.textContent = t;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    set("wb-updated", "Updated " + new Date(d.at * 1000).toLocaleTimeString());
  }

  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401 || r.status === 403) { set("wb-updated", "Signed out or no access: reload the page."); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (d) { if (d) show(d); })
      .catch(function () { set("wb-updated", "The desk does not answer; trying again…"); })
      .finally(function () { setTimeout(tick, EVERY_MS); });
  }
  tick();
})();
